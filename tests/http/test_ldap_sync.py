"""Directory changes reach existing sessions through the background re-check; directory faults."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.errors import DirectoryUnavailable
from tests import slapd as ldap
from tests.http.helpers import Clock, MakeClient, forward_auth, login, services, signed_in

Client = TestClient[Any, Any]
ALICE = ldap.PASSWORDS["alice"]
REFRESH = 30.0


@pytest.fixture
def directory() -> Iterator[ldap.Slapd]:
    server = ldap.launch_or_skip()
    yield server
    server.cleanup()


async def ldap_client(make_client: MakeClient, server: ldap.Slapd) -> Client:
    section = ldap.ldap_section(server, refresh_interval=f"{REFRESH:g}s")
    return await make_client({"authentication_backend": {"ldap": section}})


async def recheck(client: Client, clock: Clock) -> int:
    """Move past refresh_interval and run one round of the background re-check."""
    clock.advance(REFRESH + 1)
    directory = services(client).directory
    assert directory is not None
    return await directory.sync_due()


async def test_a_user_disabled_in_the_directory_loses_access(
    make_client: MakeClient, directory: ldap.Slapd, clock: Clock
) -> None:
    """Locking alice in slapd ends her session at the next re-check, not before a refresh_interval."""
    client = await ldap_client(make_client, directory)
    session = await signed_in(client, "alice", password=ALICE)
    directory.disable("alice")

    assert await services(client).directory.sync_due() == 0  # type: ignore[union-attr]
    assert (await forward_auth(client, session)).status == 200  # checked less than refresh_interval ago
    assert await recheck(client, clock) == 1

    assert (await forward_auth(client, session)).status == 302
    user = await services(client).store.get_user_by_name("alice")
    assert user is not None and user.disabled
    assert (await login(client, "alice", ALICE)).status == 401


async def test_a_user_deleted_from_the_directory_loses_access(
    make_client: MakeClient, directory: ldap.Slapd, clock: Clock
) -> None:
    """An entry deleted from the directory ends the user's sessions at the next re-check."""
    client = await ldap_client(make_client, directory)
    session = await signed_in(client, "bob", password=ldap.PASSWORDS["bob"])
    directory.modify(f"dn: uid=bob,ou=people,{ldap.BASE_DN}\nchangetype: delete\n")

    await recheck(client, clock)

    assert (await forward_auth(client, session)).status == 302


async def test_a_group_removed_in_the_directory_changes_headers_and_rules(
    make_client: MakeClient, directory: ldap.Slapd, clock: Clock
) -> None:
    """Removing alice from admins drops the group from Remote-Groups and from group:admins rules."""
    client = await ldap_client(make_client, directory)
    session = await signed_in(client, "alice", password=ALICE)
    assert (await forward_auth(client, session, host="admin.localhost")).status == 200
    directory.remove_from_group("alice", "admins")

    await recheck(client, clock)

    assert (await forward_auth(client, session, host="admin.localhost")).status == 403
    response = await forward_auth(client, session)
    assert response.status == 200
    assert response.headers["Remote-Groups"] == "devs"


async def test_a_password_changed_in_the_directory_ends_sessions(
    make_client: MakeClient, directory: ldap.Slapd, clock: Clock
) -> None:
    """A password reset by the directory's operator ends the sessions made with the old one."""
    client = await ldap_client(make_client, directory)
    session = await signed_in(client, "alice", password=ALICE)
    ldap.set_password_as_root(directory, "alice", "a-brand-new-password")

    await recheck(client, clock)

    assert (await forward_auth(client, session)).status == 302
    assert (await login(client, "alice", ALICE)).status == 401
    session = await signed_in(client, "alice", password="a-brand-new-password")
    await recheck(client, clock)
    assert (await forward_auth(client, session)).status == 200  # no change since: the session stays


async def test_directory_down_login_says_so_and_sessions_keep_answering(
    make_client: MakeClient, directory: ldap.Slapd, clock: Clock
) -> None:
    """With slapd stopped: the portal answers 503 "directory is unavailable", cached sessions still
    answer, a re-check fails cleanly; after a restart the same app signs users in again."""
    client = await ldap_client(make_client, directory)
    session = await signed_in(client, "alice", password=ALICE)
    directory.stop()

    response = await login(client, "bob", ldap.PASSWORDS["bob"])
    assert response.status == 503
    assert "The directory is unavailable" in await response.text()
    assert response.headers["Retry-After"].isdigit()
    assert (await forward_auth(client, session)).status == 200
    with pytest.raises(DirectoryUnavailable):
        await recheck(client, clock)
    assert (await forward_auth(client, session)).status == 200

    directory.start()
    assert (await login(client, "bob", ldap.PASSWORDS["bob"])).status == 303
    assert await recheck(client, clock) == 2  # alice (from before) and bob


async def test_a_hung_directory_is_given_up_on_after_the_timeout(
    make_client: MakeClient, directory: ldap.Slapd
) -> None:
    """A slapd that accepts connections but never answers (SIGSTOP) gives a 503, not a hang."""
    client = await ldap_client(make_client, directory)
    directory.pause()
    try:
        response = await login(client, "bob", ldap.PASSWORDS["bob"])
    finally:
        directory.resume()

    assert response.status == 503
    assert "The directory is unavailable" in await response.text()


async def test_directory_outage_is_not_counted_as_a_failed_login(
    make_client: MakeClient, directory: ldap.Slapd
) -> None:
    """Logins refused because the directory is down do not count towards a ban."""
    client = await ldap_client(make_client, directory)
    directory.stop()
    for _ in range(4):
        assert (await login(client, "bob", ldap.PASSWORDS["bob"])).status == 503
    directory.start()

    assert (await login(client, "bob", ldap.PASSWORDS["bob"])).status == 303
