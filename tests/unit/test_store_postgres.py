"""What only the PostgreSQL store does: migrations under an advisory lock, errors that never show
the password, a dropped connection, the audit trigger, and the revocation channel (LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.errors import StorageError, StoreUnavailable
from gateway.models import Level, SessionRecord
from gateway.store import migrations
from gateway.store.contract import Revocation
from gateway.store.postgres import PostgresStore
from tests.pg import PG_PASSWORD, PostgresServer


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    store = await PostgresStore.open(pg_dsn, clock=lambda: 1000.0)
    yield store
    await store.close()


def session(id_hash: str, user_id: int) -> SessionRecord:
    return SessionRecord(
        id_hash=id_hash,
        user_id=user_id,
        level=Level.ONE_FACTOR,
        created_at=100.0,
        authenticated_at=100.0,
        last_active=100.0,
        expires_at=5000.0,
        remember_me=False,
        ip="192.0.2.1",
        user_agent="test",
    )


class Heard:
    """Collects revocations delivered to a store's listener, and waits for them."""

    def __init__(self) -> None:
        self.items: list[Revocation] = []
        self._changed = asyncio.Event()

    def __call__(self, revocation: Revocation) -> None:
        self.items.append(revocation)
        self._changed.set()

    async def wait_for(self, expected: Revocation, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while expected not in self.items:
                self._changed.clear()
                await self._changed.wait()


async def test_instances_starting_at_once_migrate_once(postgres_server: PostgresServer) -> None:
    """Three stores opened at the same moment on an empty database: every migration runs once."""
    dsn = postgres_server.create_database(migrated=False)
    stores = await asyncio.gather(*(PostgresStore.open(dsn) for _ in range(3)))
    try:
        assert [await store.schema_version() for store in stores] == [migrations.SCHEMA_VERSION] * 3
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM schema_version") == 1
            # v1 has run exactly once: a second run would have failed on CREATE TABLE users
            assert await conn.fetchval("SELECT count(*) FROM users") == 0
        finally:
            await conn.close()
    finally:
        for store in stores:
            await store.close()


async def test_database_from_the_future_is_refused(pg_dsn: str) -> None:
    """A schema newer than the code raises StorageError naming both versions."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("UPDATE schema_version SET version = $1", migrations.SCHEMA_VERSION + 3)
    finally:
        await conn.close()
    with pytest.raises(StorageError, match=rf"version {migrations.SCHEMA_VERSION + 3} is newer"):
        await PostgresStore.open(pg_dsn)


async def test_connection_errors_never_show_the_password(postgres_server: PostgresServer) -> None:
    """A refused connection is a StorageError whose text shows the DSN with *** for the password."""
    dsn = postgres_server.dsn("nosuchdb")
    with pytest.raises(StorageError) as caught:
        await PostgresStore.open(dsn, connect_timeout=2.0)
    assert PG_PASSWORD not in str(caught.value)
    assert ":***@127.0.0.1" in str(caught.value)
    assert "nosuchdb" in str(caught.value)


async def test_a_cut_connection_is_store_unavailable_then_recovers(
    pg: PostgresStore, postgres_server: PostgresServer
) -> None:
    """Backends killed under the pool: calls fail as StoreUnavailable (never a raw driver error) and
    the next ones work on fresh connections, without reopening the store."""
    await pg.create_user("bob", "bob@example.com", "Bob", [], "h")
    assert postgres_server.terminate_backends() >= 1
    outcomes = []
    for _ in range(4):  # each pooled connection fails once at most
        try:
            outcomes.append(await pg.count_users())
        except StoreUnavailable as exc:
            assert PG_PASSWORD not in str(exc)
            outcomes.append(None)
    assert outcomes[-1] == 1
    assert pg.error_counts["io"] == outcomes.count(None)


async def test_audit_log_is_append_only_in_the_database(pg: PostgresStore, pg_dsn: str) -> None:
    """An UPDATE of an audit row is refused by the database's own trigger."""
    await pg.add_audit(at=1.0, event="login", actor="bob", target="bob", ip=None)
    conn = await asyncpg.connect(pg_dsn)
    try:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("UPDATE audit_log SET event = 'nothing'")
    finally:
        await conn.close()


async def test_names_are_unique_in_any_case(pg: PostgresStore) -> None:
    """As SQLite's COLLATE NOCASE: two TOTP devices named Phone and PHONE conflict."""
    bob = await pg.create_user("bob", "bob@example.com", "Bob", [], "h")
    await pg.add_totp_device(bob.id, name="Phone", secret_sealed="x", digits=6, period=30, algorithm="SHA1")
    with pytest.raises(StorageError, match="already exists"):
        await pg.add_totp_device(
            bob.id, name="PHONE", secret_sealed="y", digits=6, period=30, algorithm="SHA1"
        )


async def test_revocations_reach_the_other_instance(pg_dsn: str) -> None:
    """Each revoking write on instance A is heard by instance B, after A's commit."""
    a = await PostgresStore.open(pg_dsn)
    b = await PostgresStore.open(pg_dsn)
    heard = Heard()
    try:
        b.subscribe_revocations(heard)
        assert await b.wait_listening(10.0)
        bob = await a.create_user("bob", "bob@example.com", "Bob", [], "h")
        uid = str(bob.id)
        for name in ("s1", "s2", "s3"):
            await a.create_session(session(name, bob.id))

        await a.delete_session("s1")
        await heard.wait_for(Revocation("session", "s1"))
        await a.delete_user_sessions(bob.id, keep_id_hash="s2")
        await heard.wait_for(Revocation("user", uid, keep="s2"))
        heard.items.clear()
        await a.set_disabled(bob.id, True)
        await heard.wait_for(Revocation("user", uid))
        heard.items.clear()
        await a.set_password_hash(bob.id, "new")
        await heard.wait_for(Revocation("user", uid))
        heard.items.clear()
        await a.reset_second_factors(bob.id)
        await heard.wait_for(Revocation("user", uid))

        pk = await a.create_app_password(
            bob.id,
            token_id="tok1",
            token_hash="h",
            name="mail",
            domains=(),
            level=Level.ONE_FACTOR,
            created_at=1.0,
            expires_at=None,
        )
        await a.revoke_app_password(bob.id, pk, 2.0)
        await heard.wait_for(Revocation("token", "tok1"))
        heard.items.clear()
        await a.delete_user(bob.id)
        await heard.wait_for(Revocation("user", uid))
    finally:
        await a.close()
        await b.close()


async def test_a_rolled_back_write_notifies_nobody(pg: PostgresStore, pg_dsn: str) -> None:
    """NOTIFY is sent at commit: a revoking write that fails (NotFound) is never heard."""
    other = await PostgresStore.open(pg_dsn)
    heard = Heard()
    try:
        other.subscribe_revocations(heard)
        assert await other.wait_listening(10.0)
        with pytest.raises(StorageError):
            await pg.set_disabled(424242, True)
        await pg.create_user("marker", "m@example.com", "M", [], None)
        bob = await pg.create_user("bob", "bob@example.com", "Bob", [], "h")
        await pg.set_password_hash(bob.id, "x")
        await heard.wait_for(Revocation("user", str(bob.id)))
        assert Revocation("user", "424242") not in heard.items
    finally:
        await other.close()


async def test_the_listener_reconnects_after_its_backend_is_terminated(
    pg: PostgresStore, pg_dsn: str, postgres_server: PostgresServer
) -> None:
    """pg_terminate_backend on the LISTEN connection: the store says so, reconnects by itself,
    tells its listener to drop everything (revocations may have been missed), and hears again."""
    listener = await PostgresStore.open(pg_dsn)
    heard = Heard()
    try:
        listener.subscribe_revocations(heard)
        assert await listener.wait_listening(10.0)
        pid = listener.listener_pid()
        assert pid is not None
        assert postgres_server.psql(f"SELECT pg_terminate_backend({int(pid)})") == "t"

        await heard.wait_for(Revocation("all", ""))
        assert listener.revocations_live
        assert listener.listen_reconnects == 1
        assert listener.listener_pid() != pid

        bob = await pg.create_user("bob", "bob@example.com", "Bob", [], "h")
        await pg.create_session(session("s1", bob.id))
        await pg.delete_session("s1")
        await heard.wait_for(Revocation("session", "s1"))
    finally:
        await listener.close()


def test_both_engines_offer_the_same_methods() -> None:
    """Every public method of the SQLite store exists on PostgreSQL with the same signature."""
    import inspect

    from gateway.store.sqlite import Store

    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in vars(cls).items()
            if not name.startswith("_") and callable(member) and name != "open"
        }

    sqlite, postgres = public(Store), public(PostgresStore)
    missing = sorted(set(sqlite) - set(postgres))
    assert not missing, missing
    differ = [name for name in sqlite if str(sqlite[name]) != str(postgres[name])]
    # close() takes an optional timeout on PostgreSQL (the pool's shutdown bound)
    assert differ == ["close"], differ
