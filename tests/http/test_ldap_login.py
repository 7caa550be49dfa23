"""Directory users through the portal and forward-auth, against a real (throwaway) slapd."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests import slapd as ldap
from tests.http.helpers import (
    PASSWORD,
    SESSION_COOKIE,
    MakeClient,
    add_user,
    forward_auth,
    login,
    portal_get,
    services,
    signed_in,
)

Client = TestClient[Any, Any]
ALICE = ldap.PASSWORDS["alice"]


@pytest.fixture(scope="module")
def directory() -> Iterator[ldap.Slapd]:
    """One slapd for the read-only tests of this module."""
    server = ldap.launch_or_skip()
    yield server
    server.cleanup()


@pytest.fixture
def own_directory() -> Iterator[ldap.Slapd]:
    """A slapd of the test's own, for tests that change the directory."""
    server = ldap.launch_or_skip()
    yield server
    server.cleanup()


async def ldap_client(make_client: MakeClient, server: ldap.Slapd, **overrides: Any) -> Client:
    return await make_client({"authentication_backend": {"ldap": ldap.ldap_section(server, **overrides)}})


async def test_directory_user_signs_in_with_groups_in_identity_headers(
    make_client: MakeClient, directory: ldap.Slapd
) -> None:
    """A directory user signs in with their directory password; forward-auth sends their groups."""
    client = await ldap_client(make_client, directory)

    session = await signed_in(client, "alice", password=ALICE)
    response = await forward_auth(client, session)

    assert response.status == 200
    assert response.headers["Remote-User"] == "alice"
    assert response.headers["Remote-Email"] == "alice@example.test"
    assert response.headers["Remote-Name"] == "Alice Liddell"
    assert response.headers["Remote-Groups"] == "admins,devs"
    user = await services(client).store.get_user_by_name("alice")
    assert user is not None and user.source == "ldap"


async def test_directory_groups_feed_group_rules(make_client: MakeClient, directory: ldap.Slapd) -> None:
    """group:admins in an access rule matches directory groups exactly like local ones."""
    client = await ldap_client(make_client, directory)

    alice = await signed_in(client, "alice", password=ALICE)
    bob = await signed_in(client, "bob", password=ldap.PASSWORDS["bob"])

    assert (await forward_auth(client, alice, host="admin.localhost")).status == 200
    assert (await forward_auth(client, bob, host="admin.localhost")).status == 403
    assert (await forward_auth(client, bob)).status == 200


async def test_login_by_mail(make_client: MakeClient, directory: ldap.Slapd) -> None:
    """The preset's users_filter matches the mail attribute too."""
    client = await ldap_client(make_client, directory)

    session = await signed_in(client, "alice@example.test", password=ALICE)

    assert (await forward_auth(client, session)).headers["Remote-User"] == "alice"


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("alice", "wrong password"),
        ("carol", ldap.PASSWORDS["carol"]),  # locked by ppolicy: disabled
        ("dave@example.test", ldap.PASSWORDS["dave"]),  # two entries share this mail
        ("nobody-here", "whatever-password"),
    ],
)
async def test_refused_logins(
    make_client: MakeClient, directory: ldap.Slapd, username: str, password: str
) -> None:
    """A wrong password, a disabled entry, an ambiguous login and an unknown name all get the same 401."""
    client = await ldap_client(make_client, directory)

    response = await login(client, username, password)

    assert response.status == 401
    assert "Incorrect username or password." in await response.text()
    assert SESSION_COOKIE not in response.cookies


HOSTILE = [
    "*",
    "a*",
    "*)(uid=*",
    "*)(|(uid=*",
    ")(|(objectClass=*)",
    "alice)(|(objectClass=*)",
    "alice\x00",
    "\x00",
    "alice\\2a",
    "(uid=alice)",
    "alice*",
    "*@example.test",
    "uid=alice,ou=people,dc=example,dc=test",
    "a" * 5000,
    "al\xffice",
    "alice\u200b",  # zero-width space
    "\u0430lice",  # Cyrillic a
]


@pytest.mark.parametrize("username", HOSTILE)
async def test_hostile_usernames_never_sign_anyone_in(
    make_client: MakeClient, directory: ldap.Slapd, username: str
) -> None:
    """Filter syntax in a username is a literal: with alice's password, none of these signs in."""
    client = await ldap_client(make_client, directory)

    response = await login(client, username, ALICE)

    assert response.status in (400, 401), await response.text()
    assert SESSION_COOKIE not in response.cookies
    assert await services(client).store.get_user_by_name("alice") is None


async def test_hostile_bytes_in_the_form_are_refused(make_client: MakeClient, directory: ldap.Slapd) -> None:
    """A login sent as bytes that are not UTF-8 signs nobody in and is not a 500."""
    client = await ldap_client(make_client, directory)
    from tests.http.helpers import CSRF_COOKIE, cookie_header, csrf_pair

    secret, token = await csrf_pair(client)
    body = b"csrf_token=" + token.encode() + b"&username=%FF%FE*&password=" + ALICE.encode()

    response = await client.post(
        "/auth/login",
        data=body,
        headers={
            **cookie_header(**{CSRF_COOKIE: secret}),
            "Content-Type": "application/x-www-form-urlencoded",
        },
        allow_redirects=False,
    )

    assert response.status in (400, 401)
    assert SESSION_COOKIE not in response.cookies


async def test_local_users_come_first(make_client: MakeClient, directory: ldap.Slapd) -> None:
    """A local account with a directory user's name wins: only its own password signs in."""
    client = await ldap_client(make_client, directory)
    await add_user(client, "alice", groups=("local",))

    assert (await login(client, "alice", ALICE)).status == 401
    session = await signed_in(client, "alice", password=PASSWORD)
    assert (await forward_auth(client, session)).headers["Remote-Groups"] == "local"


async def test_directory_user_cannot_take_a_local_name_by_mail(
    make_client: MakeClient, directory: ldap.Slapd
) -> None:
    """Signing in by mail as a directory user whose uid is a local username is refused, not merged."""
    client = await ldap_client(make_client, directory)
    await add_user(client, "bob", groups=("local",))

    response = await login(client, "bob@example.test", ldap.PASSWORDS["bob"])

    assert response.status == 401
    local = await services(client).store.get_user_by_name("bob")
    assert local is not None and local.source == "local" and local.groups == ("local",)


async def test_regulation_counts_directory_failures(make_client: MakeClient, directory: ldap.Slapd) -> None:
    """Wrong directory passwords count towards the ban like local ones (max_retries 3 here)."""
    client = await ldap_client(make_client, directory)

    for _ in range(3):
        assert (await login(client, "bob", "wrong password")).status == 401
    response = await login(client, "bob", ldap.PASSWORDS["bob"])

    assert response.status == 429


async def test_setup_is_off_with_a_directory(make_client: MakeClient, directory: ldap.Slapd) -> None:
    """With a directory and no local user, the first visitor cannot claim the gateway through /setup."""
    client = await ldap_client(make_client, directory)

    assert (await portal_get(client, "/auth/login")).status == 200
    response = await portal_get(client, "/auth/setup")

    assert response.status == 303
    assert response.headers["Location"].endswith("/auth/login")


async def test_no_directory_password_is_logged(
    make_client: MakeClient, directory: ldap.Slapd, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the service account's password nor a user's (right or wrong) appears in any log line."""
    caplog.set_level("DEBUG")
    client = await ldap_client(make_client, directory)
    wrong = "Wr0ng-But-Secret-Password"

    await login(client, "alice", wrong)
    await login(client, "dave@example.test", ldap.PASSWORDS["dave"])
    await signed_in(client, "alice", password=ALICE)
    directory.stop()
    try:
        await login(client, "bob", ldap.PASSWORDS["bob"])
    finally:
        directory.start()

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "login_failed" in logged  # the log was captured
    for secret in (ldap.SERVICE_PASSWORD, ALICE, wrong, ldap.PASSWORDS["dave"], ldap.PASSWORDS["bob"]):
        assert secret not in logged


async def test_memberof_group_mode(make_client: MakeClient, directory: ldap.Slapd) -> None:
    """group_search_mode memberof reads the groups from the user's memberOf (kept by slapd's overlay)."""
    client = await ldap_client(make_client, directory, group_search_mode="memberof")

    session = await signed_in(client, "alice", password=ALICE)

    assert (await forward_auth(client, session)).headers["Remote-Groups"] == "admins,devs"
    assert (await forward_auth(client, session, host="admin.localhost")).status == 200
