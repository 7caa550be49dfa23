"""The store contract on both engines: schema, users, sessions, login attempts (SQLite-only parts marked)."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from pathlib import Path

import pytest

from gateway.errors import Conflict, NotFound, StorageError
from gateway.models import Level, SessionRecord, User
from gateway.store import migrations
from gateway.store.contract import Storage
from gateway.store.sqlite import Store
from tests.pg import MakeStore


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "authgate.sqlite3"


@pytest.fixture
async def store(make_store: MakeStore) -> Storage:
    return await make_store(clock=lambda: 1000.0)


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {row[0] for row in rows}


def session(
    id_hash: str, user_id: int, *, last_active: float = 100.0, expires_at: float = 5000.0
) -> SessionRecord:
    return SessionRecord(
        id_hash=id_hash,
        user_id=user_id,
        level=Level.TWO_FACTOR,
        created_at=100.0,
        authenticated_at=100.0,
        last_active=last_active,
        expires_at=expires_at,
        remember_me=False,
        ip="192.0.2.1",
        user_agent="test-agent",
    )


BOB_HASH = "hash-bob"


async def add_bob(store: Storage, *, password_hash: str | None = BOB_HASH) -> User:
    return await store.create_user("Bob", "Bob@Example.com", "Bob B", ["admins", "dev"], password_hash)


# -- schema ------------------------------------------------------------------


@pytest.mark.sqlite_only
async def test_open_migrates_an_empty_database(store: Storage, db_path: Path) -> None:
    """Opening a new file creates every table and records the schema version."""
    assert user_version(db_path) == migrations.SCHEMA_VERSION == len(migrations.MIGRATIONS)
    assert {"users", "sessions", "login_attempts"} <= tables(db_path)


async def test_reopening_is_idempotent(db_path: Path) -> None:
    """Opening an up-to-date database again keeps its data and version."""
    first = await Store.open(db_path)
    await first.create_user("bob", "bob@example.com", "Bob", [], None)
    await first.close()

    second = await Store.open(db_path)
    try:
        assert await second.count_users() == 1
    finally:
        await second.close()
    assert user_version(db_path) == migrations.SCHEMA_VERSION


async def test_database_from_the_future_is_refused(db_path: Path) -> None:
    """A schema newer than the code raises StorageError naming both versions."""
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {migrations.SCHEMA_VERSION + 7}")

    with pytest.raises(StorageError, match=rf"version {migrations.SCHEMA_VERSION + 7} is newer"):
        await Store.open(db_path)


async def test_failed_migration_leaves_nothing_behind(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration that fails halfway is rolled back entirely, version included."""
    broken = "CREATE TABLE half_done (x INTEGER);\nTHIS IS NOT SQL;"
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, broken))
    monkeypatch.setattr(migrations, "SCHEMA_VERSION", len(migrations.MIGRATIONS))

    with pytest.raises(StorageError):
        await Store.open(db_path)

    assert user_version(db_path) == 0
    assert tables(db_path) == set()


@pytest.mark.sqlite_only
async def test_database_file_is_private(store: Storage, db_path: Path) -> None:
    """The database file is created readable by its owner only."""
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600


@pytest.mark.sqlite_only
async def test_connection_settings(store: Storage) -> None:
    """The store runs in WAL mode with foreign keys on and a busy timeout."""
    assert (await store._sql("PRAGMA journal_mode")).rows[0][0] == "wal"
    assert (await store._sql("PRAGMA foreign_keys")).rows[0][0] == 1
    assert (await store._sql("PRAGMA busy_timeout")).rows[0][0] == 5000


@pytest.mark.sqlite_only
async def test_statement_count_counts_every_statement(store: Storage) -> None:
    """Each statement increments statement_count; a transaction counts BEGIN and COMMIT too."""
    before = store.statement_count
    await store.ping()
    assert store.statement_count == before + 1

    await store.touch_sessions({})
    assert store.statement_count == before + 1

    await store.touch_sessions({"a": 1.0, "b": 2.0})
    assert store.statement_count == before + 4


def test_split_statements_respects_literals_and_triggers() -> None:
    """Semicolons inside strings and trigger bodies do not end a statement."""
    script = """
    INSERT INTO t VALUES ('a;b');
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM u; DELETE FROM v; END;
    """
    assert migrations.split_statements(script) == [
        "INSERT INTO t VALUES ('a;b');",
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM u; DELETE FROM v; END;",
    ]


def test_split_statements_rejects_unterminated_text() -> None:
    """A script whose last statement lacks its semicolon is an error, not silently dropped."""
    with pytest.raises(ValueError, match="unterminated"):
        migrations.split_statements("SELECT 1; SELECT 2")


# -- users -------------------------------------------------------------------


async def test_create_user_normalises_and_returns_the_row(store: Storage) -> None:
    """Usernames are stored lower case; e-mail keeps its case; groups round-trip."""
    bob = await add_bob(store)

    assert bob.username == "bob"
    assert bob.email == "Bob@Example.com"
    assert bob.groups == ("admins", "dev")
    assert bob.disabled is False
    assert bob.created_at == 1000.0
    assert await store.get_user(bob.id) == bob
    assert await store.get_user_by_name("BOB") == bob


@pytest.mark.parametrize(
    ("username", "email", "message"),
    [
        ("BOB", "other@example.com", "username 'bob' is already taken"),
        ("robert", "bob@EXAMPLE.com", "e-mail 'bob@EXAMPLE.com' is already taken"),
    ],
)
async def test_create_user_conflicts_case_insensitively(
    store: Storage, username: str, email: str, message: str
) -> None:
    """A username or e-mail that differs only in case is taken."""
    await add_bob(store)

    with pytest.raises(Conflict, match=message):
        await store.create_user(username, email, "X", [], None)
    assert await store.count_users() == 1


async def test_groups_must_not_be_a_string(store: Storage) -> None:
    """Passing a bare string as groups is a programming error, not one group per letter."""
    with pytest.raises(TypeError):
        await store.create_user("bob", "bob@example.com", "Bob", "admins", None)


async def test_create_first_user_only_when_empty(store: Storage) -> None:
    """The first-user bootstrap succeeds once and then returns None."""
    first = await store.create_first_user("admin", "admin@example.com", "Admin", ["admins"], "h")
    second = await store.create_first_user("eve", "eve@example.com", "Eve", ["admins"], "h")

    assert first is not None and first.username == "admin"
    assert second is None
    assert await store.count_users() == 1


async def test_create_first_user_races_to_one_winner(store: Storage) -> None:
    """Concurrent bootstraps create exactly one user."""
    results = await asyncio.gather(
        *(store.create_first_user(f"u{i}", f"u{i}@example.com", "U", [], None) for i in range(5))
    )
    assert sum(result is not None for result in results) == 1
    assert await store.count_users() == 1


@pytest.mark.parametrize("login", ["bob", "BoB", "bob@example.com", "BOB@EXAMPLE.COM"])
async def test_find_login_by_name_or_email(store: Storage, login: str) -> None:
    """A login matches the username or the e-mail, in any case, and returns the hash."""
    bob = await add_bob(store)

    assert await store.find_login(login) == (bob, "hash-bob")


async def test_find_login_unknown_and_passwordless(store: Storage) -> None:
    """Unknown logins give None; passwordless users give a None hash."""
    bob = await add_bob(store, password_hash=None)

    assert await store.find_login("nobody") is None
    assert await store.find_login("bob") == (bob, None)


async def test_find_login_prefers_username_over_someone_elses_email(store: Storage) -> None:
    """When a username equals another user's e-mail, the username wins."""
    await store.create_user("alice", "carol@example.com", "Alice", [], "hash-alice")
    carol = await store.create_user("carol@example.com", "c@example.com", "Carol", [], "hash-carol")

    assert await store.find_login("CAROL@example.com") == (carol, "hash-carol")


async def test_get_user_missing(store: Storage) -> None:
    """Missing users are None, not errors."""
    assert await store.get_user(42) is None
    assert await store.get_user_by_name("ghost") is None


async def test_list_users_ordered_by_username(store: Storage) -> None:
    """list_users returns everyone sorted by username."""
    await store.create_user("zed", "z@example.com", "Z", [], None)
    await store.create_user("amy", "a@example.com", "A", [], None)

    assert [user.username for user in await store.list_users()] == ["amy", "zed"]


async def test_update_user_changes_only_given_fields(store: Storage) -> None:
    """update_user leaves fields passed as None untouched."""
    bob = await add_bob(store)

    updated = await store.update_user(bob.id, display_name="Robert")
    assert updated.display_name == "Robert"
    assert (updated.email, updated.groups) == (bob.email, bob.groups)

    updated = await store.update_user(bob.id, email="rob@example.com", groups=[])
    assert (updated.email, updated.groups, updated.display_name) == ("rob@example.com", (), "Robert")
    assert await store.find_login("ROB@example.com") == (updated, "hash-bob")
    assert await store.find_login("bob@example.com") is None


async def test_update_user_errors(store: Storage) -> None:
    """Updating a missing user is NotFound; taking another user's e-mail is Conflict."""
    bob = await add_bob(store)
    await store.create_user("amy", "amy@example.com", "Amy", [], None)

    with pytest.raises(NotFound):
        await store.update_user(999, display_name="X")
    with pytest.raises(Conflict, match="e-mail 'AMY@example.com' is already taken"):
        await store.update_user(bob.id, email="AMY@example.com")


async def test_set_password_hash(store: Storage) -> None:
    """The new hash is what find_login returns; a missing user is NotFound."""
    bob = await add_bob(store)

    await store.set_password_hash(bob.id, "new-hash")

    assert await store.find_login("bob") == (bob, "new-hash")
    with pytest.raises(NotFound):
        await store.set_password_hash(999, "x")


async def test_disabling_deletes_sessions(store: Storage) -> None:
    """Disabling a user ends their sessions; enabling again keeps the flag consistent."""
    bob = await add_bob(store)
    await store.create_session(session("s1", bob.id))
    await store.create_session(session("s2", bob.id))

    await store.set_disabled(bob.id, True)

    assert await store.list_user_sessions(bob.id) == []
    user = await store.get_user(bob.id)
    assert user is not None and user.disabled is True

    await store.set_disabled(bob.id, False)
    user = await store.get_user(bob.id)
    assert user is not None and user.disabled is False
    with pytest.raises(NotFound):
        await store.set_disabled(999, True)


async def test_delete_user_cascades_to_sessions(store: Storage) -> None:
    """Deleting a user deletes their sessions with them."""
    bob = await add_bob(store)
    await store.create_session(session("s1", bob.id))

    await store.delete_user(bob.id)

    assert await store.get_user(bob.id) is None
    assert await store.get_session("s1") is None
    with pytest.raises(NotFound):
        await store.delete_user(bob.id)


# -- sessions ----------------------------------------------------------------


async def test_get_session_returns_record_and_user_in_one_query(store: Storage) -> None:
    """get_session joins the user in and runs a single statement."""
    bob = await add_bob(store)
    rec = session("s1", bob.id)
    await store.create_session(rec)

    before = store.statement_count
    found = await store.get_session("s1")

    assert found == (rec, bob)
    assert store.statement_count == before + 1
    assert await store.get_session("nope") is None


async def test_create_session_for_unknown_user(store: Storage) -> None:
    """A session for a user that does not exist is NotFound, thanks to the foreign key."""
    with pytest.raises(NotFound):
        await store.create_session(session("s1", 999))


async def test_delete_session(store: Storage) -> None:
    """delete_session reports whether there was something to delete."""
    bob = await add_bob(store)
    await store.create_session(session("s1", bob.id))

    assert await store.delete_session("s1") is True
    assert await store.delete_session("s1") is False


async def test_delete_user_sessions_can_keep_one(store: Storage) -> None:
    """'Log out everywhere else' keeps the current session only."""
    bob = await add_bob(store)
    amy = await store.create_user("amy", "amy@example.com", "Amy", [], None)
    for id_hash in ("s1", "s2", "s3"):
        await store.create_session(session(id_hash, bob.id))
    await store.create_session(session("a1", amy.id))

    assert await store.delete_user_sessions(bob.id, keep_id_hash="s2") == 2
    assert [rec.id_hash for rec in await store.list_user_sessions(bob.id)] == ["s2"]
    assert await store.delete_user_sessions(bob.id) == 1
    assert len(await store.list_user_sessions(amy.id)) == 1


async def test_touch_sessions_only_moves_forward(store: Storage) -> None:
    """Batched activity updates never move last_active backwards and ignore unknown ids."""
    bob = await add_bob(store)
    await store.create_session(session("s1", bob.id, last_active=500.0))
    await store.create_session(session("s2", bob.id, last_active=500.0))

    await store.touch_sessions({"s1": 600.0, "s2": 400.0, "gone": 700.0})

    s1, _ = await store.get_session("s1") or pytest.fail("s1 missing")
    s2, _ = await store.get_session("s2") or pytest.fail("s2 missing")
    assert (s1.last_active, s2.last_active) == (600.0, 500.0)


async def test_delete_expired_sessions(store: Storage) -> None:
    """Sessions whose absolute end has passed are removed; the rest stay."""
    bob = await add_bob(store)
    await store.create_session(session("old", bob.id, expires_at=1000.0))
    await store.create_session(session("new", bob.id, expires_at=3000.0))

    assert await store.delete_expired_sessions(2000.0) == 1
    assert [rec.id_hash for rec in await store.list_user_sessions(bob.id)] == ["new"]


# -- login attempts ----------------------------------------------------------


async def test_failures_since_resets_after_success(store: Storage) -> None:
    """Only failures after both `since` and the latest success count."""
    for at, ok in [(10.0, False), (20.0, False), (30.0, True), (40.0, False), (50.0, False)]:
        await store.record_attempt("Bob", "192.0.2.1", ok, at)

    assert await store.failures_since(username="bob", since=0.0) == [40.0, 50.0]
    assert await store.failures_since(username="BOB", since=45.0) == [50.0]
    assert await store.failures_since(ip="192.0.2.1", since=0.0) == [40.0, 50.0]


async def test_failures_since_keys_are_separate(store: Storage) -> None:
    """A success from one IP does not reset another IP's failures, and vice versa for users."""
    await store.record_attempt("bob", "192.0.2.1", False, 10.0)
    await store.record_attempt("amy", "192.0.2.1", False, 11.0)
    await store.record_attempt("bob", "192.0.2.2", True, 12.0)

    assert await store.failures_since(username="bob", since=0.0) == []
    assert await store.failures_since(username="amy", since=0.0) == [11.0]
    assert await store.failures_since(ip="192.0.2.1", since=0.0) == [10.0, 11.0]
    assert await store.failures_since(ip="192.0.2.9", since=0.0) == []


async def test_failures_since_needs_exactly_one_key(store: Storage) -> None:
    """Asking by neither or both keys is a programming error."""
    with pytest.raises(ValueError):
        await store.failures_since(since=0.0)
    with pytest.raises(ValueError):
        await store.failures_since(username="bob", ip="192.0.2.1", since=0.0)


async def test_prune_attempts(store: Storage) -> None:
    """Pruning removes attempts older than the cut-off only."""
    await store.record_attempt("bob", "192.0.2.1", False, 10.0)
    await store.record_attempt("bob", "192.0.2.1", False, 20.0)

    assert await store.prune_attempts(15.0) == 1
    assert await store.failures_since(username="bob", since=0.0) == [20.0]


async def test_concurrent_writes_do_not_interleave_transactions(store: Storage) -> None:
    """Many coroutines sharing the store never trip over each other's transactions."""
    bob = await add_bob(store)
    for i in range(20):
        await store.create_session(session(f"s{i}", bob.id))

    await asyncio.gather(
        *(store.touch_sessions({f"s{i}": 2000.0 + i}) for i in range(20)),
        store.set_disabled(bob.id, True),
        *(store.record_attempt("bob", "192.0.2.1", False, float(i)) for i in range(20)),
    )

    assert await store.list_user_sessions(bob.id) == []
    assert len(await store.failures_since(username="bob", since=-1.0)) == 20
