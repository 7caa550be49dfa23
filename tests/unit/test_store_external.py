"""The store's external_identities table: (provider, subject) -> local user (both engines)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import Conflict, NotFound
from gateway.models import User
from gateway.store.contract import Storage
from tests.pg import MakeStore


@pytest.fixture
async def store(make_store: MakeStore) -> Storage:
    return await make_store(clock=lambda: 1000.0)


@pytest.fixture
async def alice(store: Storage) -> User:
    return await store.create_user("alice", "alice@example.com", "Alice", [], "hash")


async def test_link_find_list_touch_delete(store: Storage, alice: User) -> None:
    """A link is found with its user, listed, touched on use, and removed by its owner only."""
    link = await store.add_external_link(alice.id, "google", "1234", email="alice@gmail.com", at=10.0)
    assert (link.provider, link.subject, link.user_id, link.email) == (
        "google",
        "1234",
        alice.id,
        "alice@gmail.com",
    )
    assert link.last_used_at is None
    assert await store.find_external_link("google", "1234") == (link, alice)
    assert await store.find_external_link("google", "12345") is None
    assert await store.find_external_link("github", "1234") is None
    await store.touch_external_link(link.id, 20.0)
    [listed] = await store.list_external_links(alice.id)
    assert listed.last_used_at == 20.0
    bob = await store.create_user("bob", "bob@example.com", "Bob", [], "hash")
    assert await store.delete_external_link(bob.id, link.id) is None
    assert (await store.delete_external_link(alice.id, link.id)) == listed
    assert await store.list_external_links(alice.id) == []


async def test_one_identity_links_one_account(store: Storage, alice: User) -> None:
    """(provider, subject) is unique: a second link, even to another user, is a Conflict."""
    bob = await store.create_user("bob", "bob@example.com", "Bob", [], "hash")
    await store.add_external_link(alice.id, "google", "1234", email="", at=1.0)
    with pytest.raises(Conflict):
        await store.add_external_link(bob.id, "google", "1234", email="", at=2.0)
    results = await asyncio.gather(
        store.add_external_link(alice.id, "kc", "x", email="", at=3.0),
        store.add_external_link(bob.id, "kc", "x", email="", at=3.0),
        return_exceptions=True,
    )
    assert sum(isinstance(result, Conflict) for result in results) == 1
    # Several providers (or accounts at one provider) may link to one user.
    await store.add_external_link(alice.id, "google", "5678", email="", at=4.0)
    linked = {(link.provider, link.subject) for link in await store.list_external_links(alice.id)}
    assert {("google", "1234"), ("google", "5678")} <= linked


async def test_links_go_with_their_user(store: Storage, alice: User) -> None:
    """Deleting the account deletes its links; linking to no account is NotFound."""
    await store.add_external_link(alice.id, "google", "1234", email="", at=1.0)
    await store.delete_user(alice.id)
    assert await store.find_external_link("google", "1234") is None
    with pytest.raises(NotFound):
        await store.add_external_link(alice.id, "google", "1234", email="", at=1.0)
