"""The store's WebAuthn tables: credentials, user handles, challenges, recovery tokens, password login."""

from __future__ import annotations

import asyncio
import os

import pytest

from gateway.errors import Conflict, NotFound
from gateway.models import User, WebAuthnCredential
from gateway.store.contract import Storage
from tests.pg import MakeStore


@pytest.fixture
async def store(make_store: MakeStore) -> Storage:
    return await make_store(clock=lambda: 1000.0)


@pytest.fixture
async def bob(store: Storage) -> User:
    return await store.create_user("bob", "Bob@Example.com", "Bob", [], "hash")


@pytest.fixture
async def alice(store: Storage) -> User:
    return await store.create_user("alice", "alice@example.com", "Alice", [], "hash")


async def add_credential(store: Storage, user_id: int, name: str = "YubiKey", **overrides: object) -> int:
    args: dict[str, object] = {
        "credential_id": os.urandom(32),
        "public_key": b"\xa5cose-key",
        "sign_count": 0,
        "transports": ("usb", "nfc"),
        "aaguid": "00000000-0000-0000-0000-000000000000",
        "backup_eligible": False,
        "backed_up": False,
        "device_type": "single_device",
        "name": name,
        **overrides,
    }
    return await store.add_webauthn_credential(user_id, **args)  # type: ignore[arg-type]


async def test_new_user_may_use_password(store: Storage, bob: User) -> None:
    """Accounts start with password login allowed, and the flag round-trips through every read."""
    assert bob.password_login is True
    await store.set_password_login(bob.id, False)
    assert (await store.get_user(bob.id)).password_login is False  # type: ignore[union-attr]
    found = await store.find_login("bob")
    assert found is not None and found[0].password_login is False
    assert (await store.list_users())[0].password_login is False


async def test_set_password_login_unknown_user(store: Storage) -> None:
    """Switching password login for a user that does not exist is NotFound."""
    with pytest.raises(NotFound):
        await store.set_password_login(999, False)


async def test_credential_round_trip(store: Storage, bob: User) -> None:
    """A stored credential reads back with every field, by owner and by credential id."""
    raw_id = os.urandom(16)
    pk = await add_credential(
        store, bob.id, credential_id=raw_id, sign_count=3, backup_eligible=True, backed_up=True
    )
    expected = WebAuthnCredential(
        id=pk,
        user_id=bob.id,
        credential_id=raw_id,
        public_key=b"\xa5cose-key",
        sign_count=3,
        transports=("usb", "nfc"),
        aaguid="00000000-0000-0000-0000-000000000000",
        backup_eligible=True,
        backed_up=True,
        device_type="single_device",
        name="YubiKey",
        created_at=1000.0,
        last_used_at=None,
    )
    assert await store.list_webauthn_credentials(bob.id) == [expected]
    assert await store.get_webauthn_credential_by_id(raw_id) == expected
    assert await store.get_webauthn_credential_by_id(b"unknown") is None


async def test_duplicate_credential_id_conflicts(store: Storage, bob: User, alice: User) -> None:
    """A credential id can be registered once, even across accounts."""
    raw_id = os.urandom(32)
    await add_credential(store, bob.id, credential_id=raw_id)
    with pytest.raises(Conflict, match="already registered"):
        await add_credential(store, alice.id, "Other", credential_id=raw_id)


async def test_duplicate_name_conflicts_in_any_case(store: Storage, bob: User, alice: User) -> None:
    """Names are unique per user regardless of case, but two users may use the same name."""
    await add_credential(store, bob.id, "YubiKey")
    with pytest.raises(Conflict, match="named"):
        await add_credential(store, bob.id, "yubikey")
    await add_credential(store, alice.id, "YubiKey")


async def test_add_for_unknown_user(store: Storage) -> None:
    """Adding a credential for a missing user is NotFound."""
    with pytest.raises(NotFound):
        await add_credential(store, 999)


async def test_rename(store: Storage, bob: User, alice: User) -> None:
    """Rename changes the name; a taken name conflicts; another user's credential is NotFound."""
    first = await add_credential(store, bob.id, "Key 1")
    await add_credential(store, bob.id, "Key 2")
    await store.rename_webauthn_credential(bob.id, first, "Laptop")
    assert [c.name for c in await store.list_webauthn_credentials(bob.id)] == ["Laptop", "Key 2"]
    with pytest.raises(Conflict):
        await store.rename_webauthn_credential(bob.id, first, "KEY 2")
    with pytest.raises(NotFound):
        await store.rename_webauthn_credential(alice.id, first, "Mine now")


async def test_delete_one_and_all(store: Storage, bob: User, alice: User) -> None:
    """Revoking deletes only the owner's credential; delete_all reports how many went."""
    first = await add_credential(store, bob.id, "Key 1")
    await add_credential(store, bob.id, "Key 2")
    await add_credential(store, bob.id, "Key 3")
    with pytest.raises(NotFound):
        await store.delete_webauthn_credential(alice.id, first)
    await store.delete_webauthn_credential(bob.id, first)
    with pytest.raises(NotFound):
        await store.delete_webauthn_credential(bob.id, first)
    assert await store.delete_all_webauthn_credentials(bob.id) == 2
    assert await store.list_webauthn_credentials(bob.id) == []


async def test_update_use_never_lowers_the_counter(store: Storage, bob: User) -> None:
    """A use records the time, backup state and counter; a lower counter written later is ignored."""
    pk = await add_credential(store, bob.id, sign_count=5)
    await store.update_webauthn_use(pk, sign_count=9, backed_up=True, at=1234.0)
    await store.update_webauthn_use(pk, sign_count=7, backed_up=True, at=1235.0)
    (cred,) = await store.list_webauthn_credentials(bob.id)
    assert (cred.sign_count, cred.backed_up, cred.last_used_at) == (9, True, 1235.0)


async def test_user_handle_is_stable_and_random(store: Storage, bob: User, alice: User) -> None:
    """Each user gets one 32-byte handle, the same every time, that leads back to them."""
    handle = await store.get_or_create_user_handle(bob.id)
    assert len(handle) == 32
    assert await store.get_or_create_user_handle(bob.id) == handle
    assert await store.get_or_create_user_handle(alice.id) != handle
    assert (await store.find_user_by_handle(handle)) == bob
    assert await store.find_user_by_handle(os.urandom(32)) is None


async def test_user_handle_unknown_user(store: Storage) -> None:
    """A handle cannot be created for a user that does not exist."""
    with pytest.raises(NotFound):
        await store.get_or_create_user_handle(999)


async def test_concurrent_handle_creation_agrees(store: Storage, bob: User) -> None:
    """Two ceremonies starting at once get the same handle."""
    handles = await asyncio.gather(*(store.get_or_create_user_handle(bob.id) for _ in range(5)))
    assert len(set(handles)) == 1


async def test_challenge_is_single_use(store: Storage, bob: User) -> None:
    """A challenge can be taken once; the second take finds nothing."""
    await store.put_challenge("h1", purpose="register", challenge=b"c" * 32, user_id=bob.id, expires_at=1060)
    assert await store.take_challenge("h1", purpose="register", now=1010) == (b"c" * 32, bob.id)
    assert await store.take_challenge("h1", purpose="register", now=1010) is None


async def test_concurrent_takes_hand_out_one(store: Storage) -> None:
    """Of several simultaneous takes of one challenge, exactly one gets it."""
    await store.put_challenge("h1", purpose="passkey-login", challenge=b"c", user_id=None, expires_at=1060)
    taken = await asyncio.gather(
        *(store.take_challenge("h1", purpose="passkey-login", now=1010) for _ in range(5))
    )
    assert taken.count((b"c", None)) == 1
    assert taken.count(None) == 4


async def test_expired_challenge_is_refused_and_gone(store: Storage) -> None:
    """A challenge taken at or after its expiry is None, and is deleted all the same."""
    await store.put_challenge("h1", purpose="register", challenge=b"c", user_id=None, expires_at=1060)
    assert await store.take_challenge("h1", purpose="register", now=1060) is None
    assert await store.take_challenge("h1", purpose="register", now=1000) is None


async def test_challenge_for_another_purpose_is_refused_and_gone(store: Storage) -> None:
    """A registration challenge cannot complete a login, and trying burns it."""
    await store.put_challenge("h1", purpose="register", challenge=b"c", user_id=None, expires_at=1060)
    assert await store.take_challenge("h1", purpose="passkey-login", now=1010) is None
    assert await store.take_challenge("h1", purpose="register", now=1010) is None


async def test_duplicate_challenge_id_conflicts(store: Storage) -> None:
    """Challenge ids are unique."""
    await store.put_challenge("h1", purpose="register", challenge=b"c", user_id=None, expires_at=1060)
    with pytest.raises(Conflict):
        await store.put_challenge("h1", purpose="register", challenge=b"d", user_id=None, expires_at=1060)


async def test_prune_challenges(store: Storage) -> None:
    """Pruning deletes expired challenges only."""
    await store.put_challenge("old", purpose="register", challenge=b"c", user_id=None, expires_at=1000)
    await store.put_challenge("new", purpose="register", challenge=b"c", user_id=None, expires_at=2000)
    assert await store.prune_challenges(1500) == 1
    assert await store.take_challenge("new", purpose="register", now=1500) == (b"c", None)


async def test_recovery_token_is_single_use(store: Storage, bob: User) -> None:
    """A recovery link works once and returns its user."""
    await store.create_recovery_token("t1", bob.id, created_at=1000, expires_at=1900)
    assert await store.use_recovery_token("t1", now=1100) == bob.id
    assert await store.use_recovery_token("t1", now=1100) is None


async def test_recovery_token_expires(store: Storage, bob: User) -> None:
    """A recovery link used at or after its expiry is None; an unknown one too."""
    await store.create_recovery_token("t1", bob.id, created_at=1000, expires_at=1900)
    assert await store.use_recovery_token("t1", now=1900) is None
    assert await store.use_recovery_token("unknown", now=1000) is None


async def test_concurrent_recovery_token_use(store: Storage, bob: User) -> None:
    """Opening the same link twice at once lets one request through."""
    await store.create_recovery_token("t1", bob.id, created_at=1000, expires_at=1900)
    results = await asyncio.gather(*(store.use_recovery_token("t1", now=1100) for _ in range(4)))
    assert results.count(bob.id) == 1


async def test_recovery_token_unknown_user(store: Storage) -> None:
    """A token for a missing user is NotFound."""
    with pytest.raises(NotFound):
        await store.create_recovery_token("t1", 999, created_at=1000, expires_at=1900)


async def test_find_user_by_email(store: Storage, bob: User) -> None:
    """The e-mail lookup ignores case and surrounding spaces; unknown addresses are None."""
    assert await store.find_user_by_email(" bob@EXAMPLE.com ") == bob
    assert await store.find_user_by_email("nobody@example.com") is None


async def test_deleting_the_user_cascades(store: Storage, bob: User) -> None:
    """Deleting a user deletes their credentials, handle, challenges and recovery tokens."""
    raw_id = os.urandom(32)
    await add_credential(store, bob.id, credential_id=raw_id)
    handle = await store.get_or_create_user_handle(bob.id)
    await store.put_challenge("h1", purpose="register", challenge=b"c", user_id=bob.id, expires_at=1060)
    await store.create_recovery_token("t1", bob.id, created_at=1000, expires_at=1900)
    await store.delete_user(bob.id)
    assert await store.get_webauthn_credential_by_id(raw_id) is None
    assert await store.find_user_by_handle(handle) is None
    assert await store.take_challenge("h1", purpose="register", now=1010) is None
    assert await store.use_recovery_token("t1", now=1100) is None


async def test_second_factor_kinds_include_webauthn(store: Storage, bob: User) -> None:
    """A user with a credential has the "webauthn" kind; without one they do not."""
    assert await store.second_factor_kinds(bob.id) == ()
    pk = await add_credential(store, bob.id)
    await store.replace_recovery_codes(bob.id, ["h1"])
    assert await store.second_factor_kinds(bob.id) == ("webauthn", "recovery")
    await store.delete_webauthn_credential(bob.id, pk)
    assert await store.second_factor_kinds(bob.id) == ("recovery",)


async def test_reset_second_factors_removes_credentials(store: Storage, bob: User, alice: User) -> None:
    """Resetting deletes the user's WebAuthn credentials (not others') and restores password login."""
    await add_credential(store, bob.id)
    await add_credential(store, alice.id)
    await store.set_password_login(bob.id, False)
    await store.reset_second_factors(bob.id)
    assert await store.list_webauthn_credentials(bob.id) == []
    assert len(await store.list_webauthn_credentials(alice.id)) == 1
    assert (await store.get_user(bob.id)).password_login is True  # type: ignore[union-attr]
