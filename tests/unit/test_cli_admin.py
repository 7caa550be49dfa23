"""CLI administration for issue 5: tokens, sessions, audit export, and an audit row per admin action."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import yaml

from gateway.__main__ import main
from gateway.config import load_config
from gateway.factors import app_passwords as ap
from gateway.models import AuditEvent, Level, SessionRecord
from gateway.store.sqlite import Store

Run = Callable[..., Awaitable[tuple[int, str, str]]]
PEPPER = b"pepper-for-tests-0123456789abcdef"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1"
)


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.startswith("AUTHGATE_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "authgate.yml"
    config = {
        "storage": {"data_dir": str(tmp_path / "data")},
        "password": {"time_cost": 1, "memory_cost": 64, "parallelism": 1},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def run(config_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """Return a runner: await run("users", "tokens", "list", "bob", stdin="") -> (code, stdout, stderr)."""

    async def runner(*args: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        # The CLI runs its own event loop, so it gets a thread of its own.
        code = await asyncio.to_thread(main, ["--config", str(config_file), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return runner


Db = Callable[[Callable[[Store], Awaitable[object]]], Awaitable[object]]


@pytest.fixture
def db(config_file: Path) -> Db:
    """Return a helper that runs a coroutine against the CLI's database, opened and closed around it."""

    async def with_store(action: Callable[[Store], Awaitable[object]]) -> object:
        config = load_config(str(config_file), {})
        store = await Store.open(config.storage.database_path)
        try:
            return await action(store)
        finally:
            await store.close()

    return with_store


async def audit_rows(db: Db) -> list[AuditEvent]:
    """Return every audit row, oldest first."""

    async def collect(store: Store) -> list[AuditEvent]:
        return [event async for event in store.iter_audit()]

    return await db(collect)  # type: ignore[return-value]


@pytest.fixture
async def bob(db: Db) -> int:
    async def create(store: Store) -> int:
        user = await store.create_user("bob", "bob@example.com", "Bob", [], "hash")
        return user.id

    return await db(create)  # type: ignore[return-value]


@pytest.fixture
async def tokens(db: Db, bob: int) -> dict[str, tuple[int, str]]:
    """Give bob two app passwords; return name -> (row id, token)."""

    async def create(store: Store) -> dict[str, tuple[int, str]]:
        made = {}
        for name, domains in (("Thunderbird", ("dav.example.com",)), ("backup script", ())):
            token = ap.generate_token()
            pk = await store.create_app_password(
                bob,
                token_id=str(ap.token_id_of(token)),
                token_hash=ap.hash_token(token, pepper=PEPPER),
                name=name,
                domains=domains,
                level=Level.TWO_FACTOR,
                created_at=time.time(),
                expires_at=None,
            )
            made[name] = (pk, token)
        await store.touch_app_passwords({made["Thunderbird"][0]: (time.time(), "192.0.2.44")})
        return made

    return await db(create)  # type: ignore[return-value]


@pytest.fixture
async def sessions(db: Db, bob: int) -> list[str]:
    """Give bob two sessions (Firefox on Linux, Safari on iPhone); return their id hashes."""
    hashes = ["a1" * 32, "b2" * 32]

    async def create(store: Store) -> list[str]:
        now = time.time()
        for id_hash, agent, ip in zip(hashes, (FIREFOX, IPHONE), ("192.0.2.1", "2001:db8::7"), strict=True):
            await store.create_session(
                SessionRecord(
                    id_hash=id_hash,
                    user_id=bob,
                    level=Level.TWO_FACTOR,
                    created_at=now,
                    authenticated_at=now,
                    last_active=now,
                    expires_at=now + 3600,
                    remember_me=False,
                    ip=ip,
                    user_agent=agent,
                )
            )
        return hashes

    return await db(create)  # type: ignore[return-value]


# -- users tokens ----------------------------------------------------------------------------------


async def test_tokens_list_shows_names_never_secrets(run: Run, tokens: dict[str, tuple[int, str]]) -> None:
    """`users tokens list` shows names, domains and last use, never a token."""
    code, out, _ = await run("users", "tokens", "list", "bob")
    assert code == 0
    assert "Thunderbird" in out and "backup script" in out
    assert "dav.example.com" in out and "192.0.2.44" in out
    for _, token in tokens.values():
        assert token not in out
        assert token[len(ap.PREFIX) + ap.ID_LENGTH :] not in out


async def test_tokens_list_json(run: Run, tokens: dict[str, tuple[int, str]]) -> None:
    """`--json` gives one object per live token, newest first."""
    code, out, _ = await run("users", "tokens", "list", "bob", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [t["name"] for t in listed] == ["backup script", "Thunderbird"]
    assert listed[1]["domains"] == ["dav.example.com"]
    assert listed[1]["last_used_ip"] == "192.0.2.44"
    assert listed[0]["expires_at"] is None and listed[0]["expired"] is False
    assert listed[0]["level"] == "two_factor"


@pytest.mark.parametrize("which", ["name", "NAME", "id"])
async def test_tokens_revoke_one(run: Run, db: Db, tokens: dict[str, tuple[int, str]], which: str) -> None:
    """`users tokens revoke` takes the token's id or name (any case) and writes one audit row."""
    pk, token = tokens["Thunderbird"]
    argument = {"name": "thunderbird", "NAME": "THUNDERBIRD", "id": str(pk)}[which]
    code, out, _ = await run("users", "tokens", "revoke", "bob", argument)
    assert code == 0, out
    assert "revoked app password 'Thunderbird'" in out

    async def find(store: Store) -> object:
        return await store.find_app_password(str(ap.token_id_of(token)))

    assert await db(find) is None
    [row] = await audit_rows(db)
    assert (row.event, row.actor, row.target, row.ip) == ("admin_token_revoked", "cli", "bob", None)
    assert "Thunderbird" in row.detail and token not in row.detail


async def test_tokens_revoke_unknown(run: Run, db: Db, tokens: dict[str, tuple[int, str]]) -> None:
    """An unknown name exits 2 and writes no audit row."""
    code, _, err = await run("users", "tokens", "revoke", "bob", "nope")
    assert code == 2 and "no live app password" in err
    assert await audit_rows(db) == []


async def test_tokens_revoke_all(run: Run, db: Db, tokens: dict[str, tuple[int, str]]) -> None:
    """`--all` revokes every token of the user in one action and one audit row."""
    code, out, _ = await run("users", "tokens", "revoke", "bob", "--all")
    assert code == 0 and "revoked 2 app password(s)" in out
    _, listed, _ = await run("users", "tokens", "list", "bob", "--json")
    assert json.loads(listed) == []
    [row] = await audit_rows(db)
    assert (row.event, row.target, row.detail) == ("admin_tokens_revoked", "bob", "2 app password(s)")


async def test_tokens_revoke_needs_a_target(run: Run, tokens: dict[str, tuple[int, str]]) -> None:
    """Neither a token nor --all, or both, is an error."""
    assert (await run("users", "tokens", "revoke", "bob"))[0] == 2
    assert (await run("users", "tokens", "revoke", "bob", "Thunderbird", "--all"))[0] == 2


async def test_tokens_unknown_user(run: Run) -> None:
    """An unknown user exits 2."""
    code, _, err = await run("users", "tokens", "list", "nobody")
    assert code == 2 and "no user named" in err


# -- users sessions --------------------------------------------------------------------------------


async def test_sessions_list(run: Run, sessions: list[str]) -> None:
    """`users sessions list` shows an id prefix, the device and the address of each session."""
    code, out, _ = await run("users", "sessions", "list", "bob")
    assert code == 0
    assert "Firefox 128 on Linux" in out and "Safari 17 on iPhone" in out
    assert "2001:db8::7" in out
    assert sessions[0][:16] in out and sessions[0] not in out


async def test_sessions_list_json(run: Run, sessions: list[str]) -> None:
    """`--json` gives the same fields as objects."""
    code, out, _ = await run("users", "sessions", "list", "bob", "--json")
    assert code == 0
    listed = {s["id"]: s for s in json.loads(out)}
    assert listed[sessions[1][:16]]["device"] == "Safari 17 on iPhone"
    assert listed[sessions[1][:16]]["level"] == "two_factor"


async def test_sessions_revoke_one(run: Run, db: Db, sessions: list[str]) -> None:
    """Revoking by id prefix ends that session only and writes one audit row."""
    code, out, _ = await run("users", "sessions", "revoke", "bob", sessions[1][:12])
    assert code == 0, out

    async def remaining(store: Store) -> list[str]:
        return [s.id_hash for s in await store.list_user_sessions(1)]

    assert await db(remaining) == [sessions[0]]
    [row] = await audit_rows(db)
    assert (row.event, row.actor, row.target) == ("admin_session_revoked", "cli", "bob")
    assert row.detail == "Safari 17 on iPhone from 2001:db8::7"


@pytest.mark.parametrize("argument", ["a1a1", "ffffffffff"])
async def test_sessions_revoke_refuses_short_or_unknown_ids(
    run: Run, db: Db, sessions: list[str], argument: str
) -> None:
    """Fewer than 8 characters, or no matching session, exits 2 and ends nothing."""
    code, _, _ = await run("users", "sessions", "revoke", "bob", argument)
    assert code == 2
    assert await audit_rows(db) == []


async def test_sessions_revoke_all(run: Run, db: Db, sessions: list[str]) -> None:
    """`--all` ends every session with one audit row."""
    code, out, _ = await run("users", "sessions", "revoke", "bob", "--all")
    assert code == 0 and "ended 2 session(s)" in out
    [row] = await audit_rows(db)
    assert (row.event, row.detail) == ("admin_sessions_revoked", "2 session(s)")


# -- an audit row for every admin action -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "stdin", "event"),
    [
        (
            ("users", "add", "carol", "--email", "carol@example.com", "--password-stdin"),
            "long enough pw 1\n",
            None,
        ),
        (("users", "passwd", "bob", "--password-stdin"), "long enough pw 1\n", "admin_password_set"),
        (("users", "disable", "bob"), "", "admin_user_disabled"),
        (("users", "enable", "bob"), "", "admin_user_enabled"),
        (("users", "modify", "bob", "--groups", "dev,ops"), "", "admin_user_modified"),
        (("users", "delete", "bob", "--yes"), "", "admin_user_deleted"),
        (("users", "2fa", "reset", "bob", "--yes"), "", "admin_second_factors_reset"),
    ],
)
async def test_each_cli_admin_action_writes_one_audit_row(
    run: Run, db: Db, bob: int, args: tuple[str, ...], stdin: str, event: str | None
) -> None:
    """Every changing `users` command records exactly one row with actor cli and the target user."""
    code, out, err = await run(*args, stdin=stdin)
    assert code == 0, err
    [row] = await audit_rows(db)
    target = "carol" if args[1] == "add" else "bob"
    assert (row.event, row.actor, row.target, row.ip) == (event or "admin_user_created", "cli", target, None)
    assert "long enough" not in row.detail


async def test_refused_action_writes_no_row(run: Run, db: Db, bob: int) -> None:
    """A command that changes nothing (delete without --yes) records nothing."""
    assert (await run("users", "delete", "bob"))[0] == 2
    assert await audit_rows(db) == []


async def test_audit_line_goes_to_stderr_as_json(run: Run, bob: int) -> None:
    """The structured log line of a CLI admin action reaches stderr, in the configured (json) format."""
    _, _, err = await run("users", "disable", "bob")
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(line["event"] == "admin_user_disabled" and line["actor"] == "cli" for line in lines)


# -- audit export ----------------------------------------------------------------------------------


@pytest.fixture
async def history(db: Db) -> list[int]:
    async def create(store: Store) -> list[int]:
        return [
            await store.add_audit(at=at, event=event, actor="bob", target="bob", ip="192.0.2.1", detail="")
            for at, event in (
                (1738324800.0, "login_succeeded"),  # 2025-01-31T12:00:00Z
                (1738411200.0, "token_created"),  # 2025-02-01T12:00:00Z
                (1738497600.0, "logout"),  # 2025-02-02T12:00:00Z
            )
        ]

    return await db(create)  # type: ignore[return-value]


async def test_export_to_stdout_oldest_first(run: Run, history: list[int]) -> None:
    """`audit export` writes one JSON object per line, oldest first."""
    code, out, _ = await run("audit", "export")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["id"] for line in lines] == history
    assert lines[0] == {
        "id": history[0],
        "at": "2025-01-31T12:00:00.000Z",
        "timestamp": 1738324800.0,
        "event": "login_succeeded",
        "actor": "bob",
        "target": "bob",
        "ip": "192.0.2.1",
        "detail": "",
    }


@pytest.mark.parametrize(
    ("since", "count"),
    [
        ("2025-02-01", 2),
        ("2025-02-01T12:00:00Z", 2),
        ("2025-02-01T12:00:01+00:00", 1),
        ("2025-02-01T13:00+02:00", 2),
    ],
)
async def test_export_since(run: Run, history: list[int], since: str, count: int) -> None:
    """--since takes an ISO date or date-time, UTC unless an offset is given, inclusive."""
    code, out, _ = await run("audit", "export", "--since", since)
    assert code == 0
    assert len(out.splitlines()) == count


async def test_export_bad_since(run: Run, history: list[int]) -> None:
    """A --since that is not ISO 8601 exits 2."""
    code, _, err = await run("audit", "export", "--since", "yesterday")
    assert code == 2 and "ISO 8601" in err


async def test_export_to_private_file_and_is_audited(
    run: Run, db: Db, history: list[int], tmp_path: Path
) -> None:
    """--output writes a 0600 file; the export itself is recorded after the rows it wrote."""
    target = tmp_path / "audit.jsonl"
    code, out, _ = await run("audit", "export", "--output", str(target))
    assert code == 0 and out == ""
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [json.loads(line)["id"] for line in target.read_text().splitlines()] == history
    rows = await audit_rows(db)
    assert rows[-1].event == "admin_audit_exported" and rows[-1].actor == "cli"
    assert rows[-1].detail == "3 row(s)"
