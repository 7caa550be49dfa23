"""The store's issue-5 tables: app passwords, the append-only audit log, user search."""

from __future__ import annotations

import sqlite3
from functools import partial
from pathlib import Path

import pytest

from gateway.errors import Conflict, NotFound, StorageError
from gateway.factors import app_passwords as ap
from gateway.models import AppPassword, AuditEvent, Level, User
from gateway.store import migrations
from gateway.store.contract import AppPasswordLimit, Storage
from gateway.store.sqlite import Store
from tests.pg import MakeStore

PEPPER = b"pepper-for-tests-0123456789abcdef"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "authgate.sqlite3"


@pytest.fixture
async def store(make_store: MakeStore) -> Storage:
    return await make_store(clock=lambda: 1000.0)


@pytest.fixture
async def bob(store: Storage) -> User:
    return await store.create_user("bob", "bob@example.com", "Bob Builder", ["dev"], "hash")


@pytest.fixture
async def alice(store: Storage) -> User:
    return await store.create_user("alice", "alice@example.org", "Alice Liddell", [], "hash")


async def new_token(
    store: Storage,
    user_id: int,
    name: str = "Thunderbird on laptop",
    *,
    token: str | None = None,
    domains: tuple[str, ...] = (),
    expires_at: float | None = None,
    max_per_user: int | None = None,
) -> tuple[int, str]:
    """Create an app password the way the settings page will; return (row id, token)."""
    token = token or ap.generate_token()
    pk = await store.create_app_password(
        user_id,
        token_id=str(ap.token_id_of(token)),
        token_hash=ap.hash_token(token, pepper=PEPPER),
        name=name,
        domains=domains,
        level=Level.TWO_FACTOR,
        created_at=1000.0,
        expires_at=expires_at,
        max_per_user=max_per_user,
    )
    return pk, token


def database_bytes(path: Path) -> bytes:
    """Return the bytes of the database and its -wal/-shm files, wherever SQLite put the rows."""
    return b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))


def raw_rows(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


# -- schema ----------------------------------------------------------------------------------------


@pytest.mark.sqlite_only
async def test_migration_creates_tables(store: Storage, db_path: Path) -> None:
    """The current schema has the app password and audit tables and their indexes."""
    names = {row[0] for row in raw_rows(db_path, "SELECT name FROM sqlite_master")}
    assert {
        "app_passwords",
        "audit_log",
        "audit_log_at",
        "audit_log_target_at",
        "audit_log_actor_at",
    } <= names
    assert {"audit_log_event_at", "app_passwords_user_name", "audit_log_no_update"} <= names
    assert raw_rows(db_path, "PRAGMA user_version")[0][0] == migrations.SCHEMA_VERSION >= 4


async def test_version_three_database_is_upgraded(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database at schema 3 keeps its users and gains the issue-5 tables."""
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", 3)
    old = await Store.open(db_path)
    user = await old.create_user("carol", "carol@example.com", "Carol", [], None)
    await old.close()
    monkeypatch.undo()
    store = await Store.open(db_path)
    try:
        assert await store.get_user(user.id) == user
        assert (await new_token(store, user.id))[0] > 0
        assert await store.add_audit(at=1.0, event="x", actor=None, target=None, ip=None) > 0
    finally:
        await store.close()


# -- app passwords ---------------------------------------------------------------------------------


async def test_create_and_find(store: Storage, bob: User) -> None:
    """A created token is found by its id in one joined query, with its user and stored hash."""
    pk, token = await new_token(
        store, bob.id, domains=("dav.example.com", "*.example.org"), expires_at=5000.0
    )
    before = store.statement_count
    found = await store.find_app_password(str(ap.token_id_of(token)))
    assert store.statement_count == before + 1
    assert found is not None
    record, user, stored_hash = found
    assert user == bob
    assert record == AppPassword(
        id=pk,
        user_id=bob.id,
        token_id=str(ap.token_id_of(token)),
        name="Thunderbird on laptop",
        domains=("dav.example.com", "*.example.org"),
        level=Level.TWO_FACTOR,
        created_at=1000.0,
        expires_at=5000.0,
        last_used_at=None,
        last_used_ip=None,
    )
    assert ap.verify_token(token, stored_hash, pepper=PEPPER)
    assert ap.check_app_password(
        ap.Credentials("basic", "bob", token), found, pepper=PEPPER, host="dav.example.com", now=2000.0
    ) == (record, bob)


async def test_read_app_password_matches_find(store: Storage, bob: User) -> None:
    """The hot-path read (read-only connection) sees the same row as find, and sees revocation."""
    pk, token = await new_token(store, bob.id)
    token_id = str(ap.token_id_of(token))
    before = store.statement_count
    assert await store.read_app_password(token_id) == await store.find_app_password(token_id)
    assert store.statement_count == before + 2
    await store.revoke_app_password(bob.id, pk, 1100.0)
    assert await store.read_app_password(token_id) is None


async def test_find_unknown_is_none(store: Storage, bob: User) -> None:
    """An id nobody has gives None."""
    await new_token(store, bob.id)
    assert await store.find_app_password("AAAAAAAA") is None


@pytest.mark.sqlite_only
async def test_plaintext_token_never_stored(store: Storage, bob: User, db_path: Path) -> None:
    """Only the token id and keyed hash reach the database file; the secret part never does."""
    _, token = await new_token(store, bob.id)
    data = database_bytes(db_path)
    assert token.encode() not in data
    assert token[len(ap.PREFIX) + ap.ID_LENGTH :].encode() not in data
    assert str(ap.token_id_of(token)).encode() in data


async def test_list_newest_first_and_only_live(store: Storage, bob: User, alice: User) -> None:
    """Listing shows the user's own non-revoked tokens, newest first."""
    first, _ = await new_token(store, bob.id, "one")
    second, _ = await new_token(store, bob.id, "two")
    third, _ = await new_token(store, bob.id, "three")
    await new_token(store, alice.id, "alice's")
    assert await store.revoke_app_password(bob.id, second, 1100.0)
    assert [t.id for t in await store.list_app_passwords(bob.id)] == [third, first]


async def test_revoked_token_is_not_found(store: Storage, bob: User) -> None:
    """After revocation the token's id no longer finds anything, and revoking again says False."""
    pk, token = await new_token(store, bob.id)
    assert await store.revoke_app_password(bob.id, pk, 1100.0)
    assert await store.find_app_password(str(ap.token_id_of(token))) is None
    assert not await store.revoke_app_password(bob.id, pk, 1200.0)


async def test_cannot_revoke_another_users_token(store: Storage, bob: User, alice: User) -> None:
    """Revoking by id checks the owner."""
    pk, token = await new_token(store, bob.id)
    assert not await store.revoke_app_password(alice.id, pk, 1100.0)
    assert await store.find_app_password(str(ap.token_id_of(token))) is not None


async def test_revoke_all(store: Storage, bob: User, alice: User) -> None:
    """Revoke-all ends every live token of one user and counts them."""
    for name in ("a", "b", "c"):
        await new_token(store, bob.id, name)
    await new_token(store, alice.id, "a")
    assert await store.revoke_all_app_passwords(bob.id, 1100.0) == 3
    assert await store.revoke_all_app_passwords(bob.id, 1100.0) == 0
    assert await store.list_app_passwords(bob.id) == []
    assert len(await store.list_app_passwords(alice.id)) == 1


async def test_name_unique_among_live_tokens_any_case(store: Storage, bob: User, alice: User) -> None:
    """A live name cannot repeat in any case; a revoked one frees it; other users are separate."""
    pk, _ = await new_token(store, bob.id, "Phone")
    with pytest.raises(Conflict, match="already exists"):
        await new_token(store, bob.id, "PHONE")
    await new_token(store, alice.id, "phone")
    await store.revoke_app_password(bob.id, pk, 1100.0)
    await new_token(store, bob.id, "phone")


async def test_token_id_collision_is_conflict(store: Storage, bob: User) -> None:
    """Two tokens with the same lookup id cannot both exist."""
    _, token = await new_token(store, bob.id, "a")
    clash = token[: len(ap.PREFIX) + ap.ID_LENGTH] + "z" * ap.SECRET_LENGTH
    with pytest.raises(Conflict, match="collision"):
        await new_token(store, bob.id, "b", token=clash)


async def test_unknown_user_is_not_found(store: Storage) -> None:
    """Creating a token for a missing user raises NotFound."""
    with pytest.raises(NotFound):
        await new_token(store, 999)


async def test_max_per_user(store: Storage, bob: User) -> None:
    """The limit counts live tokens only, and is checked with the insert."""
    create = partial(new_token, store, bob.id, max_per_user=2)
    pk, _ = await create("a")
    await create("b")
    with pytest.raises(AppPasswordLimit):
        await create("c")
    assert issubclass(AppPasswordLimit, Conflict)
    await store.revoke_app_password(bob.id, pk, 1100.0)
    await create("c")


async def test_domains_must_be_a_sequence(store: Storage, bob: User) -> None:
    """A bare string for domains is a bug, not one domain per letter."""
    with pytest.raises(TypeError):
        await store.create_app_password(
            bob.id,
            token_id="x",
            token_hash="h",
            name="n",
            domains="example.com",
            level=Level.ONE_FACTOR,
            created_at=0.0,
            expires_at=None,
        )


async def test_touch_only_moves_forward(store: Storage, bob: User) -> None:
    """Batched last-use updates write time and IP, and an older time never overwrites a newer one."""
    first, _ = await new_token(store, bob.id, "a")
    second, _ = await new_token(store, bob.id, "b")
    await store.touch_app_passwords({first: (2000.0, "192.0.2.1"), second: (1500.0, "2001:db8::1")})
    await store.touch_app_passwords({first: (1800.0, "192.0.2.99")})
    await store.touch_app_passwords({})
    tokens = {t.id: t for t in await store.list_app_passwords(bob.id)}
    assert (tokens[first].last_used_at, tokens[first].last_used_ip) == (2000.0, "192.0.2.1")
    assert (tokens[second].last_used_at, tokens[second].last_used_ip) == (1500.0, "2001:db8::1")


@pytest.mark.sqlite_only
async def test_deleting_user_removes_tokens(store: Storage, bob: User, db_path: Path) -> None:
    """Tokens go with their account."""
    await new_token(store, bob.id)
    await store.delete_user(bob.id)
    assert raw_rows(db_path, "SELECT COUNT(*) FROM app_passwords")[0][0] == 0


# -- audit log -------------------------------------------------------------------------------------


async def add(store: Storage, at: float, event: str, actor: str | None, target: str | None) -> int:
    return await store.add_audit(at=at, event=event, actor=actor, target=target, ip="192.0.2.1", detail="d")


async def test_add_and_list_audit(store: Storage) -> None:
    """Rows come back newest first with every field."""
    first = await add(store, 10.0, "login_succeeded", "bob", "bob")
    second = await add(store, 20.0, "logout", "bob", "bob")
    rows = await store.list_audit()
    assert [r.id for r in rows] == [second, first]
    assert rows[1] == AuditEvent(
        id=first, at=10.0, event="login_succeeded", actor="bob", target="bob", ip="192.0.2.1", detail="d"
    )


@pytest.fixture
async def audit_rows(store: Storage) -> dict[str, int]:
    return {
        "a": await add(store, 10.0, "login_failed", None, "bob"),
        "b": await add(store, 20.0, "login_succeeded", "bob", "bob"),
        "c": await add(store, 30.0, "admin_user_disabled", "root", "alice"),
        "d": await add(store, 40.0, "admin_token_revoked", "root", "bob"),
        "e": await add(store, 50.0, "login_succeeded", "alice", "alice"),
    }


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, "edcba"),
        ({"actor": "root"}, "dc"),
        ({"target": "bob"}, "dba"),
        ({"event": "login_succeeded"}, "eb"),
        ({"since": 20.0}, "edcb"),
        ({"until": 30.0}, "ba"),
        ({"since": 20.0, "until": 50.0}, "dcb"),
        ({"actor": "root", "target": "bob"}, "d"),
        ({"target": "bob", "event": "login_succeeded", "since": 15.0}, "b"),
        ({"actor": "nobody"}, ""),
        ({"limit": 2}, "ed"),
        ({"limit": 2, "offset": 2}, "cb"),
        ({"target": "bob", "limit": 1, "offset": 1}, "b"),
    ],
)
async def test_list_audit_filters(
    store: Storage, audit_rows: dict[str, int], filters: dict[str, object], expected: str
) -> None:
    """Filters combine (AND), since is inclusive, until exclusive; limit and offset page."""
    rows = await store.list_audit(**filters)  # type: ignore[arg-type]
    assert [r.id for r in rows] == [audit_rows[key] for key in expected]


async def test_iter_audit_oldest_first_across_pages(store: Storage) -> None:
    """Export order is insertion order, across page boundaries, optionally from `since`."""
    ids = [await add(store, float(i), "login_succeeded", "bob", "bob") for i in range(7)]
    assert [e.id async for e in store.iter_audit(page=3)] == ids
    assert [e.id async for e in store.iter_audit(page=7)] == ids
    assert [e.id async for e in store.iter_audit(since=4.0, page=2)] == ids[4:]
    assert [e.id async for e in store.iter_audit(since=100.0)] == []


async def test_audit_has_no_update_or_delete_method() -> None:
    """The store offers no way to change audit rows, and deleting is only retention pruning."""
    names = [name for name in dir(Store) if "audit" in name]
    assert sorted(names) == ["add_audit", "iter_audit", "list_audit", "prune_audit"]


@pytest.mark.sqlite_only
async def test_audit_update_is_refused_by_the_database(store: Storage, db_path: Path) -> None:
    """Even raw SQL cannot rewrite an audit row: a trigger aborts every UPDATE."""
    row_id = await add(store, 10.0, "login_failed", None, "bob")
    with sqlite3.connect(db_path) as conn, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit_log SET event = 'login_succeeded' WHERE id = ?", (row_id,))
    assert (await store.list_audit())[0].event == "login_failed"


async def test_audit_rows_survive_their_user(store: Storage, bob: User) -> None:
    """Audit rows name users as text, so deleting the account keeps its history."""
    await add(store, 10.0, "login_succeeded", "bob", "bob")
    await store.delete_user(bob.id)
    assert [r.target for r in await store.list_audit()] == ["bob"]


async def test_prune_audit(store: Storage) -> None:
    """Pruning (used only with audit.retention) deletes rows strictly older than the cut-off."""
    await add(store, 10.0, "a", None, None)
    keep = await add(store, 20.0, "b", None, None)
    assert await store.prune_audit(20.0) == 1
    assert [r.id for r in await store.list_audit()] == [keep]


async def test_audit_ids_are_never_reused(store: Storage) -> None:
    """AUTOINCREMENT: a pruned last row's id is not handed out again."""
    first = await add(store, 10.0, "a", None, None)
    await store.prune_audit(100.0)
    assert await add(store, 200.0, "b", None, None) > first


async def test_add_audit_rejects_missing_event(store: Storage) -> None:
    """The event name is required."""
    with pytest.raises((sqlite3.IntegrityError, StorageError)):
        await store.add_audit(at=1.0, event=None, actor=None, target=None, ip=None)  # type: ignore[arg-type]


# -- user search -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["alice", "bob", "under_score"]),
        ("bob", ["bob"]),
        ("BOB", ["bob"]),
        ("example.org", ["alice"]),
        ("liddell", ["alice"]),
        ("BUILDER", ["bob"]),
        ("%", ["under_score"]),
        ("_", ["under_score"]),
        ("r_s", ["under_score"]),
        ("\\", ["under_score"]),
        ("nobody", []),
    ],
)
async def test_search_users(store: Storage, bob: User, alice: User, query: str, expected: list[str]) -> None:
    """Username, e-mail and display name match by substring in any case; % _ and \\ match literally."""
    await store.create_user("under_score", "x@example.net", "100% \\ sure", [], None)
    assert [u.username for u in await store.search_users(query)] == expected


async def test_search_users_limit(store: Storage, bob: User, alice: User) -> None:
    """The limit caps the result, in username order."""
    assert [u.username for u in await store.search_users("", limit=1)] == ["alice"]
