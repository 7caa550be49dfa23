"""The store's atomic contracts (issue 11): attempt reservation, link use with its password, and
StoreUnavailable with bounded waits for a locked, full or failing database.

Two stores on one database stand for two workers (SQLite: one file) or two instances
(PostgreSQL: two pools): each has its own connections, so only the database's locking (not a
per-store asyncio lock) can keep them apart. The lock and full-disk tests are SQLite's own.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.errors import StorageError, StoreUnavailable
from gateway.store.contract import Storage as Store
from tests.pg import MakeStore


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "authgate.sqlite3"


@pytest.fixture
async def workers(make_store: MakeStore) -> tuple[Store, Store]:
    # On PostgreSQL: two pools, as two authgate instances have.
    first = await make_store(clock=lambda: 1000.0, busy_timeout=0.3)
    second = await make_store(clock=lambda: 1000.0, busy_timeout=0.3)
    return first, second


def three_strikes(failures: Sequence[float]) -> float | None:
    """A ban for an hour once three failures are on record (what max_retries 3 amounts to here)."""
    return 1000.0 + 3600 if len(failures) >= 3 else None


async def test_reserve_attempt_lets_three_of_thirty_concurrent_attempts_through(
    workers: tuple[Store, Store],
) -> None:
    """Thirty reservations at once over two connections: exactly three get a slot, the rest a ban."""
    stores = [workers[index % 2] for index in range(30)]
    slots = await asyncio.gather(
        *(
            store.reserve_attempt("Alice", "192.0.2.1", at=1000.0, since=0.0, ban_end=three_strikes)
            for store in stores
        )
    )

    granted = [slot for slot in slots if slot.attempt_id is not None]
    assert len(granted) == 3
    assert {slot.banned_until for slot in slots if slot.attempt_id is None} == {4600.0}
    assert await workers[0].failures_since(username="alice", since=0.0) == [1000.0] * 3


async def test_reserve_attempt_bans_by_address_too(workers: tuple[Store, Store]) -> None:
    """Failures from one address under other names ban a fourth name from it as well."""
    store = workers[0]
    for name in ("a", "b", "c"):
        assert (
            await store.reserve_attempt(name, "192.0.2.9", at=1000.0, since=0.0, ban_end=three_strikes)
        ).attempt_id
    refused = await store.reserve_attempt("d", "192.0.2.9", at=1000.0, since=0.0, ban_end=three_strikes)
    assert refused.attempt_id is None and refused.banned_until == 4600.0


async def test_marking_a_reservation_succeeded_wipes_the_slate(workers: tuple[Store, Store]) -> None:
    """A reserved attempt that turns out right counts as the success that resets the failure count."""
    store = workers[0]
    slots = [
        await store.reserve_attempt("bob", "192.0.2.2", at=1000.0 + i, since=0.0, ban_end=three_strikes)
        for i in range(2)
    ]
    assert slots[1].attempt_id is not None
    await store.mark_attempt_succeeded(slots[1].attempt_id)
    assert await store.failures_since(username="bob", since=0.0) == []


async def test_withdrawn_reservation_counts_neither_way(workers: tuple[Store, Store]) -> None:
    """A withdrawn attempt (password right, second factor pending) leaves no row behind."""
    store = workers[0]
    slot = await store.reserve_attempt("carol", "192.0.2.3", at=1000.0, since=0.0, ban_end=None)
    assert slot.attempt_id is not None
    await store.withdraw_attempt(slot.attempt_id)
    assert await store.failures_since(username="carol", since=0.0) == []


async def test_reset_link_use_sets_the_password_of_the_one_winner(workers: tuple[Store, Store]) -> None:
    """Five concurrent uses of one reset link, each with its own hash: one wins, its hash is stored."""
    first, second = workers
    user = await first.create_user("dave", "dave@example.com", "Dave", [], "old-hash")
    await first.create_password_reset_token(
        "link", user.id, created_by="admin", created_at=999, expires_at=2000
    )

    results = await asyncio.gather(
        *(
            (first if i % 2 else second).use_password_reset_token(
                "link", now=1000.0, password_hash=f"hash-{i}"
            )
            for i in range(5)
        )
    )

    assert results.count(user.id) == 1 and results.count(None) == 4
    winner = results.index(user.id)
    found = await first.find_login("dave")
    assert found is not None and found[1] == f"hash-{winner}"


async def test_a_lost_reset_link_changes_no_password(workers: tuple[Store, Store]) -> None:
    """Using a link already used returns None and leaves the password as it was."""
    store = workers[0]
    user = await store.create_user("erin", "erin@example.com", "Erin", [], "old-hash")
    await store.create_password_reset_token(
        "once", user.id, created_by="admin", created_at=999, expires_at=2000
    )
    assert await store.use_password_reset_token("once", now=1000.0, password_hash="first") == user.id
    assert await store.use_password_reset_token("once", now=1000.0, password_hash="second") is None
    found = await store.find_login("erin")
    assert found is not None and found[1] == "first"


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO login_attempts (username, ip, success, at) VALUES ('x', 'y', 0, 0)")
    return holder


@pytest.mark.sqlite_only
async def test_a_write_under_another_writers_lock_raises_store_unavailable(
    workers: tuple[Store, Store], db_path: Path
) -> None:
    """A write waits busy_timeout for a lock another process holds, then raises StoreUnavailable."""
    store = workers[0]
    holder = _hold_write_lock(db_path)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.record_attempt("alice", "192.0.2.1", False, 1000.0)
        assert caught.value.reason == "database is locked by another writer"
        assert isinstance(caught.value, StorageError)
        # Reads are not writers: in WAL mode they go on.
        assert await store.count_users() == 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await store.record_attempt("alice", "192.0.2.1", False, 1000.0)


@pytest.mark.sqlite_only
async def test_calls_queued_behind_a_stuck_write_each_wait_one_bound(
    workers: tuple[Store, Store], db_path: Path
) -> None:
    """Twenty writes queued on one connection under a held lock all fail within about one busy
    timeout each, not twenty of them in a row."""
    store = workers[0]
    holder = _hold_write_lock(db_path)
    try:
        started = time.monotonic()
        results = await asyncio.gather(
            *(store.record_attempt(f"u{i}", "192.0.2.1", False, 1000.0) for i in range(20)),
            return_exceptions=True,
        )
        took = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert all(isinstance(result, StoreUnavailable) for result in results), results
    reasons = {result.reason for result in results if isinstance(result, StoreUnavailable)}
    assert reasons == {
        "database is locked by another writer",
        "database busy: no turn on the connection within 0.3s",
    }
    assert took < 20 * 0.3  # a hang check, not a speed target: far below the queue's sum


@pytest.mark.sqlite_only
async def test_a_full_database_raises_store_unavailable_and_writes_again_when_space_is_back(
    workers: tuple[Store, Store], db_path: Path
) -> None:
    """SQLITE_FULL (here from max_page_count) is StoreUnavailable; the store works once room is back."""
    store = workers[0]
    pages = int((await store._locked("PRAGMA page_count")).rows[0][0])
    await store._locked(f"PRAGMA max_page_count = {pages:d}")
    await store._locked("PRAGMA wal_checkpoint(TRUNCATE)")
    with pytest.raises(StoreUnavailable) as caught:
        for index in range(2000):
            await store.add_audit(
                at=1000.0, event="fill", actor=None, target=None, ip=None, detail="x" * 400 + str(index)
            )
    assert caught.value.reason == "database or disk is full"
    await store._locked("PRAGMA max_page_count = 1073741823")
    assert await store.add_audit(at=1000.0, event="after", actor=None, target=None, ip=None) > 0


async def test_an_empty_address_is_not_a_regulation_key(workers: tuple[Store, Store]) -> None:
    """Counter rows without an address (a pending login's wrong codes) never ban each other by ip."""
    store = workers[0]
    for nonce in range(3):
        await store.reserve_attempt(f"2fa:{nonce}", "", at=1000.0, since=0.0, ban_end=three_strikes)
    slot = await store.reserve_attempt("2fa:other", "", at=1000.0, since=0.0, ban_end=three_strikes)
    assert slot.attempt_id is not None
