"""Directory-user store methods on both engines: one row per stable id, never merged with local ones."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import Conflict
from gateway.models import User
from gateway.store.contract import Storage
from tests.pg import MakeStore
from tests.unit.test_store import add_bob, session


@pytest.fixture
async def store(make_store: MakeStore) -> Storage:
    """A store on each engine (SQLite, and PostgreSQL when tests/pg.py can run one)."""
    return await make_store(clock=lambda: 1000.0)


async def upsert(store: Storage, **changes: Any) -> User:
    values: dict[str, Any] = {
        "external_id": "uuid-1",
        "username": "alice",
        "email": "alice@example.test",
        "display_name": "Alice",
        "groups": ("admins",),
        "disabled": False,
        "stamp": "",
        "checked_at": 1000.0,
    }
    return await store.upsert_directory_user(**{**values, **changes})


async def test_upsert_creates_then_refreshes_the_same_row(store: Storage) -> None:
    """The stable id keys the row: a rename or a group change updates it in place."""
    first = await upsert(store)
    second = await upsert(store, username="alice2", groups=("devs",), display_name="A. L.")

    assert first.source == "ldap" and first.id == second.id
    assert (second.username, second.groups, second.display_name) == ("alice2", ("devs",), "A. L.")
    assert await store.get_user_by_name("alice") is None
    assert await store.directory_link(first.id) == ("uuid-1", "")


async def test_directory_mail_is_not_a_login_or_a_local_address(store: Storage) -> None:
    """A directory user's mail finds no row at login and cannot collide with a local account's e-mail."""
    await add_bob(store)
    user = await upsert(store, email="Bob@Example.com")

    assert user.email == "Bob@Example.com"
    found = await store.find_login("bob@example.com")
    assert found is not None and found[0].source == "local"
    by_mail = await store.find_user_by_email("bob@example.com")
    assert by_mail is not None and by_mail.source == "local"


async def test_a_directory_user_cannot_take_a_local_username(store: Storage) -> None:
    """A directory entry named like a local user is a Conflict, and the local row stays as it was."""
    bob = await add_bob(store)

    with pytest.raises(Conflict):
        await upsert(store, username="bob", external_id="uuid-bob")
    assert await store.get_user(bob.id) == bob
    assert await store.directory_link(bob.id) is None


async def test_due_users_are_the_enabled_ones_with_a_live_session_checked_long_ago(store: Storage) -> None:
    """directory_users_due skips users without sessions, disabled ones and those checked recently."""
    alice = await upsert(store, checked_at=100.0)
    carol = await upsert(store, username="carol", external_id="uuid-3", checked_at=100.0)
    recent = await upsert(store, username="dave", external_id="uuid-4", checked_at=900.0)
    await upsert(store, username="erin", external_id="uuid-5", checked_at=100.0)  # no session
    for n, user in enumerate((alice, carol, recent)):
        await store.create_session(session(f"s{n}", user.id))
    await store.set_disabled(carol.id, True)

    due = await store.directory_users_due(checked_before=500.0, now=1000.0)

    assert [(user.username, external_id) for user, external_id, _stamp in due] == [("alice", "uuid-1")]
    await store.set_directory_checked(alice.id, 950.0)
    assert await store.directory_users_due(checked_before=500.0, now=1000.0) == []
