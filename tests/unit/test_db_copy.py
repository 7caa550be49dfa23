"""`authgate db copy`: every row from SQLite into an empty PostgreSQL database, verified, never twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.__main__ import main
from gateway.models import Level, SessionRecord
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import Store
from tests.pg import PG_PASSWORD


async def fill(path: Path) -> dict[str, object]:
    """Write one or more rows into every table; return what the checks compare."""
    store = await Store.open(path, clock=lambda: 1000.0)
    try:
        bob = await store.create_user("bob", "Bob@Example.com", "Bob", ["dev"], "argon-hash")
        alice = await store.create_user("alice", "alice@example.com", "Alice", [], None)
        await store.create_session(
            SessionRecord(
                id_hash="sess-1",
                user_id=bob.id,
                level=Level.TWO_FACTOR,
                created_at=1000,  # an int in a REAL column, as SQLite allows
                authenticated_at=1000.5,
                last_active=1001.25,
                expires_at=5000.0,
                remember_me=True,
                ip="192.0.2.1",
                user_agent="Firefox",
            )
        )
        gone = await store.add_totp_device(
            bob.id, name="old", secret_sealed="sealed-0", digits=6, period=30, algorithm="SHA1"
        )
        await store.delete_totp_device(bob.id, gone)  # AUTOINCREMENT remembers this id
        device = await store.add_totp_device(
            bob.id,
            name="Phone",
            secret_sealed="sealed-1",
            digits=6,
            period=30,
            algorithm="SHA1",
            last_step=77,
        )
        await store.replace_recovery_codes(bob.id, ["rc-1", "rc-2", "rc-3"])
        codes = await store.unused_recovery_hashes(bob.id)
        await store.use_recovery_code(codes[0][0], 1002.0)
        await store.set_last_method(bob.id, "totp")
        handle = await store.get_or_create_user_handle(alice.id)
        await store.add_webauthn_credential(
            alice.id,
            credential_id=b"\x00cred\xff",
            public_key=b"\xa5cose",
            sign_count=7,
            transports=["internal"],
            aaguid="00000000-0000-0000-0000-000000000000",
            backup_eligible=True,
            backed_up=False,
            device_type="multi_device",
            name="Laptop",
        )
        await store.put_challenge(
            "ch-1", purpose="login", challenge=b"\x01\x02", user_id=None, expires_at=9e9
        )
        await store.create_recovery_token("rt-1", alice.id, created_at=1000.0, expires_at=9e9)
        await store.create_password_reset_token(
            "pr-1", bob.id, created_by="root", created_at=1000.0, expires_at=9e9
        )
        token_pk = await store.create_app_password(
            bob.id,
            token_id="tokid",
            token_hash="tok-hash",
            name="mail",
            domains=["mail.example.com"],
            level=Level.ONE_FACTOR,
            created_at=1000.0,
            expires_at=None,
        )
        await store.record_attempt("bob", "192.0.2.1", False, 990.0)
        await store.record_attempt("bob", "192.0.2.1", True, 995.0)
        await store.add_audit(at=1000.0, event="login", actor="bob", target="bob", ip="192.0.2.1", detail="x")
        link = await store.add_external_link(alice.id, "google", "g-42", email="alice@gmail.com", at=1000.0)
        await store.touch_external_link(link.id, 1001.0)
        return {
            "bob": bob.id,
            "alice": alice.id,
            "device": device,
            "gone": gone,
            "handle": handle,
            "token_pk": token_pk,
            "session": await store.get_session("sess-1"),
            "devices": await store.list_totp_devices(bob.id),
            "codes": await store.unused_recovery_hashes(bob.id),
            "credentials": await store.list_webauthn_credentials(alice.id),
            "token": await store.find_app_password("tokid"),
            "audit": await store.list_audit(),
            "failures": await store.failures_since(username="bob", since=0.0),
            "external": await store.find_external_link("google", "g-42"),
        }
    finally:
        await store.close()


async def cli(*args: str) -> int:
    """Run the CLI in a thread: it starts its own event loop, as on the command line."""
    return await asyncio.to_thread(main, list(args))


async def test_copy_moves_every_row_and_keeps_them_working(
    tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the copy, PostgreSQL answers every read exactly as SQLite did; ids are not reused."""
    path = tmp_path / "authgate.sqlite3"
    before = await fill(path)

    assert await cli("db", "copy", "--from", f"sqlite://{path}", "--to", pg_dsn) == 0
    out = capsys.readouterr()
    assert PG_PASSWORD not in out.out + out.err
    assert "row counts verified" in out.out
    assert "users" in out.out and "webauthn_credentials" in out.out

    pg = await PostgresStore.open(pg_dsn, clock=lambda: 2000.0)
    try:
        bob, alice = int(before["bob"]), int(before["alice"])  # type: ignore[call-overload]
        assert await pg.get_session("sess-1") == before["session"]
        assert await pg.list_totp_devices(bob) == before["devices"]
        assert await pg.unused_recovery_hashes(bob) == before["codes"]
        assert await pg.list_webauthn_credentials(alice) == before["credentials"]
        assert await pg.find_app_password("tokid") == before["token"]
        assert await pg.list_audit() == before["audit"]
        assert await pg.failures_since(username="bob", since=0.0) == before["failures"]
        assert await pg.get_or_create_user_handle(alice) == before["handle"]
        assert await pg.get_last_method(bob) == "totp"
        assert await pg.find_external_link("google", "g-42") == before["external"]
        assert await pg.take_challenge("ch-1", purpose="login", now=2000.0) == (b"\x01\x02", None)
        assert await pg.use_recovery_token("rt-1", now=2000.0) == alice
        assert await pg.use_password_reset_token("pr-1", now=2000.0) == bob
        # TOTP replay state came along: the last used step is still used
        assert await pg.use_totp_step(int(before["device"]), 77, 2000.0) is False  # type: ignore[call-overload]
        # sequences continue past every id SQLite handed out, the deleted device's included
        newer = await pg.add_totp_device(
            bob, name="Tablet", secret_sealed="s", digits=6, period=30, algorithm="SHA1"
        )
        assert newer > int(before["device"]) > int(before["gone"])  # type: ignore[call-overload]
        carol = await pg.create_user("carol", "carol@example.com", "Carol", [], None)
        assert carol.id > alice
    finally:
        await pg.close()


async def test_copy_refuses_a_target_that_holds_rows(
    tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second copy into the same database is refused, names the tables, and changes nothing."""
    path = tmp_path / "authgate.sqlite3"
    await fill(path)
    assert await cli("db", "copy", "--from", f"sqlite://{path}", "--to", pg_dsn) == 0
    capsys.readouterr()

    assert await cli("db", "copy", "--from", f"sqlite://{path}", "--to", pg_dsn) == 1
    err = capsys.readouterr().err
    assert "not empty" in err and "users" in err
    assert PG_PASSWORD not in err
    pg = await PostgresStore.open(pg_dsn)
    try:
        assert await pg.count_users() == 2
    finally:
        await pg.close()


def test_copy_needs_an_existing_source(
    tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing SQLite file is an error naming it; nothing is created."""
    missing = tmp_path / "nope.sqlite3"
    assert main(["db", "copy", "--from", f"sqlite://{missing}", "--to", pg_dsn]) == 1
    assert "no SQLite database" in capsys.readouterr().err
    assert not missing.exists()


def test_copy_checks_the_target_dsn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A target that is not a postgresql:// URI is refused before anything is opened."""
    assert main(["db", "copy", "--from", f"sqlite://{tmp_path}/x", "--to", "host=db password=hunter2"]) == 2
    err = capsys.readouterr().err
    assert "must start with postgresql://" in err and "hunter2" not in err
