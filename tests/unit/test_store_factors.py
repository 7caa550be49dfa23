"""The store's second-factor tables: TOTP devices, recovery codes, preferences, security events."""

from __future__ import annotations

import asyncio
import sqlite3
from functools import partial
from pathlib import Path

import pytest

from gateway.errors import Conflict, NotFound
from gateway.factors import recovery, totp
from gateway.factors.secretbox import SecretBox
from gateway.models import TotpDevice, User
from gateway.store import migrations
from gateway.store.contract import Storage
from gateway.store.sqlite import Store
from tests.pg import MakeStore

PEPPER = b"pepper-for-tests-0123456789abcdef"
BOX = SecretBox(bytes(range(32)))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "authgate.sqlite3"


@pytest.fixture
async def store(make_store: MakeStore) -> Storage:
    return await make_store(clock=lambda: 1000.0)


@pytest.fixture
async def bob(store: Storage) -> User:
    return await store.create_user("bob", "bob@example.com", "Bob", [], "hash")


@pytest.fixture
async def alice(store: Storage) -> User:
    return await store.create_user("alice", "alice@example.com", "Alice", [], "hash")


def add_device(store: Storage, user_id: int, name: str = "pixel-7 authy", **overrides: object):  # type: ignore[no-untyped-def]
    secret = totp.generate_secret()
    args: dict[str, object] = {
        "name": name,
        "secret_sealed": BOX.seal(secret, context=totp.sealing_context(user_id)),
        "digits": 6,
        "period": 30,
        "algorithm": "SHA1",
        **overrides,
    }
    return store.add_totp_device(user_id, **args)  # type: ignore[arg-type]


def database_bytes(path: Path) -> bytes:
    """Return the bytes of the database and its -wal/-shm files, wherever SQLite put the rows."""
    return b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))


def raw_rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


# -- schema ------------------------------------------------------------------


@pytest.mark.sqlite_only
async def test_migration_creates_the_factor_tables(store: Storage, db_path: Path) -> None:
    """The current schema has the four second-factor tables."""
    names = {row[0] for row in raw_rows(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"totp_devices", "recovery_codes", "user_factor_prefs", "audit_log"} <= names
    assert "security_events" not in names  # v5 moved them into the one audit table
    assert raw_rows(db_path, "PRAGMA user_version")[0][0] == migrations.SCHEMA_VERSION >= 2


async def test_version_one_database_is_upgraded_in_place(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database created by the first schema keeps its users and gains the new tables."""
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 1)
    old = await Store.open(db_path)
    user = await old.create_user("carol", "carol@example.com", "Carol", [], None)
    await old.close()
    monkeypatch.undo()
    store = await Store.open(db_path)
    try:
        assert raw_rows(db_path, "PRAGMA user_version")[0][0] == migrations.SCHEMA_VERSION
        assert await store.get_user(user.id) == user
        assert await add_device(store, user.id) > 0
    finally:
        await store.close()


# -- TOTP devices ----------------------------------------------------------------


async def test_add_and_list_devices(store: Storage, bob: User) -> None:
    """Added devices come back with their settings, oldest first, with no step used yet."""
    first = await add_device(store, bob.id, "phone")
    second = await add_device(store, bob.id, "tablet", digits=8, period=60, algorithm="SHA256", last_step=42)
    devices = await store.list_totp_devices(bob.id)
    assert [d.id for d in devices] == [first, second]
    phone, tablet = devices
    assert isinstance(phone, TotpDevice)
    assert (phone.name, phone.digits, phone.period, phone.algorithm) == ("phone", 6, 30, "SHA1")
    assert (phone.last_step, phone.last_used_at, phone.created_at) == (None, None, 1000.0)
    assert (tablet.digits, tablet.period, tablet.algorithm, tablet.last_step) == (8, 60, "SHA256", 42)


async def test_sealed_secret_round_trips(store: Storage, bob: User) -> None:
    """The stored secret opens with the user's context and is not in the database in clear."""
    secret = totp.generate_secret()
    sealed = BOX.seal(secret, context=totp.sealing_context(bob.id))
    device_id = await store.add_totp_device(
        bob.id, name="phone", secret_sealed=sealed, digits=6, period=30, algorithm="SHA1"
    )
    device = await store.get_totp_device(bob.id, device_id)
    assert device is not None
    assert BOX.open(device.secret_sealed, context=totp.sealing_context(bob.id)) == secret


@pytest.mark.sqlite_only
async def test_totp_secret_not_in_database_file(store: Storage, bob: User, db_path: Path) -> None:
    """The plain base32 secret appears nowhere in the SQLite files."""
    secret = totp.generate_secret()
    await store.add_totp_device(
        bob.id,
        name="phone",
        secret_sealed=BOX.seal(secret, context=totp.sealing_context(bob.id)),
        digits=6,
        period=30,
        algorithm="SHA1",
    )
    assert secret.encode() not in database_bytes(db_path)


async def test_duplicate_device_name_conflicts(store: Storage, bob: User, alice: User) -> None:
    """A user cannot have two devices of the same name (in any case); another user can."""
    await add_device(store, bob.id, "Phone")
    with pytest.raises(Conflict, match="Phone|phone"):
        await add_device(store, bob.id, "phone")
    await add_device(store, alice.id, "Phone")


async def test_device_for_unknown_user(store: Storage) -> None:
    """Adding a device for a missing user is NotFound."""
    with pytest.raises(NotFound):
        await add_device(store, 999)


async def test_get_device_belongs_to_user(store: Storage, bob: User, alice: User) -> None:
    """Another user's device id is not found."""
    device_id = await add_device(store, bob.id)
    assert await store.get_totp_device(bob.id, device_id) is not None
    assert await store.get_totp_device(alice.id, device_id) is None
    assert await store.get_totp_device(bob.id, device_id + 100) is None


async def test_rename_device(store: Storage, bob: User, alice: User) -> None:
    """Rename changes the name; NotFound for others' devices; Conflict for a taken name."""
    phone = await add_device(store, bob.id, "phone")
    await add_device(store, bob.id, "tablet")
    await store.rename_totp_device(bob.id, phone, "old phone")
    device = await store.get_totp_device(bob.id, phone)
    assert device is not None and device.name == "old phone"
    with pytest.raises(Conflict):
        await store.rename_totp_device(bob.id, phone, "tablet")
    with pytest.raises(NotFound):
        await store.rename_totp_device(alice.id, phone, "mine now")
    await store.rename_totp_device(bob.id, phone, "OLD PHONE")  # its own name in another case


async def test_delete_device(store: Storage, bob: User, alice: User) -> None:
    """Delete removes only the named device of that user; NotFound otherwise."""
    phone = await add_device(store, bob.id, "phone")
    tablet = await add_device(store, bob.id, "tablet")
    with pytest.raises(NotFound):
        await store.delete_totp_device(alice.id, phone)
    await store.delete_totp_device(bob.id, phone)
    assert [d.id for d in await store.list_totp_devices(bob.id)] == [tablet]
    with pytest.raises(NotFound):
        await store.delete_totp_device(bob.id, phone)


async def test_use_step_is_compare_and_set(store: Storage, bob: User) -> None:
    """A step is recorded only when newer than the last one: the same or an older step is refused."""
    device_id = await add_device(store, bob.id)
    assert await store.use_totp_step(device_id, 100, 3000.0) is True
    assert await store.use_totp_step(device_id, 100, 3001.0) is False
    assert await store.use_totp_step(device_id, 99, 3002.0) is False
    assert await store.use_totp_step(device_id, 101, 3030.0) is True
    device = await store.get_totp_device(bob.id, device_id)
    assert device is not None
    assert (device.last_step, device.last_used_at) == (101, 3030.0)


async def test_enrolment_step_cannot_be_used_again(store: Storage, bob: User) -> None:
    """The step stored at enrolment blocks the confirming code from being used to log in."""
    device_id = await add_device(store, bob.id, last_step=500)
    assert await store.use_totp_step(device_id, 500, 1.0) is False
    assert await store.use_totp_step(device_id, 501, 1.0) is True


async def test_concurrent_use_of_one_code_succeeds_once(store: Storage, bob: User) -> None:
    """Many requests racing with the same code: exactly one wins the replay guard."""
    device_id = await add_device(store, bob.id)
    results = await asyncio.gather(*(store.use_totp_step(device_id, 777, 1.0) for _ in range(20)))
    assert results.count(True) == 1


async def test_concurrent_use_across_connections(store: Storage, bob: User, make_store: MakeStore) -> None:
    """Two workers or instances (separate connections to one database) cannot both accept the same step."""
    device_id = await add_device(store, bob.id)
    other = await make_store()
    results = await asyncio.gather(*(s.use_totp_step(device_id, 55, 1.0) for s in (store, other) * 10))
    assert results.count(True) == 1


async def test_device_ids_are_not_reused(store: Storage, bob: User) -> None:
    """A deleted device's id never names a later device, so a stale use_totp_step misses."""
    old = await add_device(store, bob.id, "phone")
    await store.delete_totp_device(bob.id, old)
    new = await add_device(store, bob.id, "phone")
    assert new != old
    assert await store.use_totp_step(old, 1, 1.0) is False


async def test_use_step_unknown_device(store: Storage) -> None:
    """A missing device never accepts a step."""
    assert await store.use_totp_step(12345, 1, 1.0) is False


# -- recovery codes -------------------------------------------------------------


async def store_codes(store: Storage, user_id: int, count: int = 10) -> list[str]:
    codes = recovery.generate_codes(count)
    await store.replace_recovery_codes(user_id, [recovery.hash_code(c, pepper=PEPPER) for c in codes])
    return codes


async def redeem(store: Storage, user_id: int, code: str) -> bool:
    rows = await store.unused_recovery_hashes(user_id)
    index = recovery.match_code(code, [h for _, h in rows], pepper=PEPPER)
    if index is None:
        return False
    return await store.use_recovery_code(rows[index][0], 2000.0)


async def test_each_recovery_code_works_once(store: Storage, bob: User) -> None:
    """Every code redeems once; the second time it is refused and the count drops."""
    codes = await store_codes(store, bob.id)
    assert await store.count_unused_recovery_codes(bob.id) == 10
    for used, code in enumerate(codes, start=1):
        assert await redeem(store, bob.id, code) is True
        assert await redeem(store, bob.id, code) is False
        assert await store.count_unused_recovery_codes(bob.id) == 10 - used


async def test_use_recovery_code_is_atomic(store: Storage, bob: User) -> None:
    """Racing requests with the same code id: only one marks it used."""
    await store_codes(store, bob.id, 1)
    [(code_id, _)] = await store.unused_recovery_hashes(bob.id)
    results = await asyncio.gather(*(store.use_recovery_code(code_id, 1.0) for _ in range(10)))
    assert results.count(True) == 1


async def test_regeneration_invalidates_the_old_set(store: Storage, bob: User) -> None:
    """After replace_recovery_codes only the new codes work."""
    old = await store_codes(store, bob.id)
    await redeem(store, bob.id, old[0])
    new = await store_codes(store, bob.id, 4)
    assert await store.count_unused_recovery_codes(bob.id) == 4
    assert await redeem(store, bob.id, old[1]) is False
    assert await redeem(store, bob.id, new[0]) is True


async def test_old_code_id_cannot_be_used_after_regeneration(store: Storage, bob: User) -> None:
    """A code id read before regeneration no longer redeems."""
    await store_codes(store, bob.id, 1)
    [(code_id, _)] = await store.unused_recovery_hashes(bob.id)
    await store_codes(store, bob.id, 1)
    assert await store.use_recovery_code(code_id, 1.0) is False


async def test_recovery_codes_are_per_user(store: Storage, bob: User, alice: User) -> None:
    """Bob's codes do not work for Alice, and replacing Alice's keeps Bob's."""
    bobs = await store_codes(store, bob.id)
    await store_codes(store, alice.id)
    assert await redeem(store, alice.id, bobs[0]) is False
    await store_codes(store, alice.id, 5)
    assert await store.count_unused_recovery_codes(bob.id) == 10


async def test_replace_codes_for_unknown_user(store: Storage) -> None:
    """Storing codes for a missing user is NotFound and stores nothing."""
    with pytest.raises(NotFound):
        await store.replace_recovery_codes(999, ["hs256$x"])
    assert await store.count_unused_recovery_codes(999) == 0


async def test_replace_refuses_a_bare_string(store: Storage, bob: User) -> None:
    """A single hash string is not a list of hashes."""
    with pytest.raises(TypeError):
        await store.replace_recovery_codes(bob.id, "hs256$abc")


@pytest.mark.sqlite_only
async def test_recovery_codes_only_hashed_in_database_file(store: Storage, bob: User, db_path: Path) -> None:
    """The SQLite files (database, WAL) hold the hashes but no recovery code in any form."""
    codes = await store_codes(store, bob.id)
    await redeem(store, bob.id, codes[0])
    hashes = [row[0] for row in raw_rows(db_path, "SELECT code_hash FROM recovery_codes")]
    assert sorted(hashes) == sorted(recovery.hash_code(code, pepper=PEPPER) for code in codes)
    blob = database_bytes(db_path)
    for code in codes:
        for form in (code, code.replace("-", ""), code.upper(), code.replace("-", "").upper()):
            assert form.encode() not in blob, form
    dump = "\n".join(sqlite3.connect(db_path).iterdump())
    for code in codes:
        assert code not in dump and code.replace("-", "") not in dump


# -- kinds, reset, preferences ----------------------------------------------------


async def test_second_factor_kinds(store: Storage, bob: User) -> None:
    """Kinds reflect TOTP devices and unused recovery codes."""
    assert await store.second_factor_kinds(bob.id) == ()
    codes = await store_codes(store, bob.id, 1)
    assert await store.second_factor_kinds(bob.id) == ("recovery",)
    await add_device(store, bob.id)
    assert await store.second_factor_kinds(bob.id) == ("totp", "recovery")
    await redeem(store, bob.id, codes[0])
    assert await store.second_factor_kinds(bob.id) == ("totp",)


async def test_reset_removes_every_factor(store: Storage, bob: User, alice: User) -> None:
    """reset_second_factors deletes the user's devices, codes and preference, and nobody else's."""
    await add_device(store, bob.id, "phone")
    await add_device(store, bob.id, "tablet")
    await store_codes(store, bob.id)
    await store.set_last_method(bob.id, "totp")
    await add_device(store, alice.id)
    await store_codes(store, alice.id)
    await store.reset_second_factors(bob.id)
    assert await store.list_totp_devices(bob.id) == []
    assert await store.count_unused_recovery_codes(bob.id) == 0
    assert await store.get_last_method(bob.id) is None
    assert await store.second_factor_kinds(alice.id) == ("totp", "recovery")


async def test_last_method(store: Storage, bob: User) -> None:
    """The last used kind is remembered and overwritten."""
    assert await store.get_last_method(bob.id) is None
    await store.set_last_method(bob.id, "totp")
    await store.set_last_method(bob.id, "recovery")
    assert await store.get_last_method(bob.id) == "recovery"
    with pytest.raises(NotFound):
        await store.set_last_method(999, "totp")


# -- security events ---------------------------------------------------------------


async def own_event(store: Storage, user: User, event: str, detail: str, ip: str, at: float) -> None:
    """An audit row of something the user did on their own account (what AuditLog.record writes)."""
    await store.add_audit(at=at, event=event, actor=user.username, target=user.username, ip=ip, detail=detail)


async def test_security_events_newest_first(store: Storage, bob: User, alice: User) -> None:
    """Events come back newest first, limited, and only the user's own."""
    for at in (10.0, 30.0, 20.0):
        await own_event(store, bob, "recovery_code_used", f"at {at}", "192.0.2.1", at)
    await own_event(store, alice, "totp_added", "phone", "192.0.2.2", 40.0)
    events = await store.list_security_events(bob.id, limit=2)
    assert [(e.event, e.at) for e in events] == [("recovery_code_used", 30.0), ("recovery_code_used", 20.0)]
    assert events[0].detail == "at 30.0" and events[0].ip == "192.0.2.1" and events[0].user_id == bob.id
    assert len(await store.list_security_events(bob.id)) == 3


# -- cascade ------------------------------------------------------------------------


@pytest.mark.sqlite_only
async def test_deleting_a_user_deletes_their_factors(
    store: Storage, bob: User, alice: User, db_path: Path
) -> None:
    """Devices, codes and preference of a deleted user are gone (audit history stays); others' remain."""
    await add_device(store, bob.id)
    await store_codes(store, bob.id)
    await store.set_last_method(bob.id, "totp")
    await own_event(store, bob, "totp_added", "phone", "192.0.2.1", 1.0)
    await add_device(store, alice.id)
    await store.delete_user(bob.id)
    count = partial(raw_rows, db_path)
    for table in ("totp_devices", "recovery_codes", "user_factor_prefs"):
        assert count(f"SELECT COUNT(*) FROM {table} WHERE user_id = {bob.id}")[0][0] == 0, table  # noqa: S608
    # The audit log is append-only history: the event outlives the account.
    assert count("SELECT COUNT(*) FROM audit_log WHERE target = 'bob' AND event = 'totp_added'")[0][0] == 1
    assert len(await store.list_totp_devices(alice.id)) == 1
