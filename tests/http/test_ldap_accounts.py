"""Directory users in the admin console, settings (password change), reset links, passkeys and the CLI."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.__main__ import main
from tests import slapd as ldap
from tests.http.helpers import (
    MakeClient,
    add_totp_device,
    forward_auth,
    login,
    portal_get,
    portal_post,
    services,
    signed_in,
)
from tests.http.test_admin_console import mailed_links

Client = TestClient[Any, Any]
ALICE = ldap.PASSWORDS["alice"]
BOB = ldap.PASSWORDS["bob"]
NEW = "a new directory passphrase"


@pytest.fixture
def directory() -> Iterator[ldap.Slapd]:
    server = ldap.launch_or_skip()
    yield server
    server.cleanup()


async def ldap_client(make_client: MakeClient, server: ldap.Slapd, **overrides: Any) -> Client:
    return await make_client({"authentication_backend": {"ldap": ldap.ldap_section(server, **overrides)}})


def directory_bind_ok(server: ldap.Slapd, uid: str, password: str) -> bool:
    """Ask slapd itself (ldapwhoami) whether this password works."""
    done = subprocess.run(  # noqa: S603
        [
            "/usr/bin/ldapwhoami",
            "-x",
            "-H",
            server.url,
            "-D",
            f"uid={uid},ou=people,{ldap.BASE_DN}",
            "-w",
            password,
        ],
        capture_output=True,
        timeout=15,
        check=False,
    )
    return done.returncode == 0


async def test_admin_sees_directory_users_read_only(make_client: MakeClient, directory: ldap.Slapd) -> None:
    """A directory admin (group admins in slapd) sees bob as a directory account without edit forms,
    and edits, disabling and deleting are refused with a clear message."""
    client = await ldap_client(make_client, directory)
    await signed_in(client, "bob", password=BOB)
    alice = await signed_in(client, "alice", password=ALICE)

    page = await portal_get(client, "/auth/admin/users/bob", session=alice)
    text = await page.text()
    assert page.status == 200
    assert 'id="directory-badge"' in text
    assert 'action="/auth/admin/users/bob"' not in text  # no details form
    assert "/auth/admin/users/bob/disable" not in text
    for path, form in (
        ("/auth/admin/users/bob", {"email": "x@y.z", "display_name": "X", "groups": "admins"}),
        ("/auth/admin/users/bob/disable", {}),
        ("/auth/admin/users/bob/delete", {"confirm": "bob"}),
    ):
        response = await portal_post(client, path, form, session=alice)
        assert response.status == 409, path
        assert "comes from the directory" in await response.text()
    bob = await services(client).store.get_user_by_name("bob")
    assert bob is not None and bob.groups == ("devs",) and not bob.disabled


async def test_admin_resets_a_directory_users_second_factors_and_sessions(
    make_client: MakeClient, directory: ldap.Slapd
) -> None:
    """Second factors and sessions of directory users stay with authgate: an admin can reset and end them."""
    client = await ldap_client(make_client, directory)
    bob_session = await signed_in(client, "bob", password=BOB)
    bob = await services(client).store.get_user_by_name("bob")
    assert bob is not None
    await add_totp_device(client, bob)
    alice = await signed_in(client, "alice", password=ALICE)

    assert (await portal_post(client, "/auth/admin/users/bob/2fa/reset", {}, session=alice)).status == 303
    assert await services(client).store.second_factor_kinds(bob.id) == ()
    assert (
        await portal_post(client, "/auth/admin/users/bob/sessions/revoke-all", {}, session=alice)
    ).status == 303
    assert (await forward_auth(client, bob_session)).status == 302


async def test_directory_user_changes_password_in_settings(
    make_client: MakeClient, directory: ldap.Slapd
) -> None:
    """The settings form changes the password in slapd (Password Modify) and keeps this session."""
    client = await ldap_client(make_client, directory)
    session = await signed_in(client, "bob", password=BOB)
    page = await portal_get(client, "/auth/settings", session=session)
    assert 'id="directory-password-form"' in await page.text()

    wrong = await portal_post(
        client,
        "/auth/settings/directory-password",
        {"password": "not it", "new_password": NEW, "confirm": NEW},
        session=session,
    )
    assert wrong.status == 401
    response = await portal_post(
        client,
        "/auth/settings/directory-password",
        {"password": BOB, "new_password": NEW, "confirm": NEW},
        session=session,
    )

    assert response.status == 303, await response.text()
    assert directory_bind_ok(directory, "bob", NEW)
    assert not directory_bind_ok(directory, "bob", BOB)
    assert (await forward_auth(client, session)).status == 200
    clock_skip = services(client).directory
    assert clock_skip is not None
    services(client).clock.advance(60)  # type: ignore[attr-defined]
    await clock_skip.sync_due()
    assert (await forward_auth(client, session)).status == 200  # its own change does not end it


async def test_password_change_refused_by_the_directory_is_explained(
    make_client: MakeClient, directory: ldap.Slapd
) -> None:
    """A directory whose access rules forbid the change gives a clear message, not a 500."""
    client = await ldap_client(make_client, directory)
    session = await signed_in(client, "bob", password=BOB)
    directory.modify(
        "dn: olcDatabase={1}mdb,cn=config\nchangetype: modify\nreplace: olcAccess\n"
        "olcAccess: {0}to attrs=userPassword by anonymous auth by * none\n"
        "olcAccess: {1}to * by users read by * none\n",
        config=True,
    )

    response = await portal_post(
        client,
        "/auth/settings/directory-password",
        {"password": BOB, "new_password": NEW, "confirm": NEW},
        session=session,
    )

    assert response.status == 409
    assert "does not let this password be changed here" in await response.text()
    assert directory_bind_ok(directory, "bob", BOB)


async def test_reset_link_sets_the_directory_password(make_client: MakeClient, directory: ldap.Slapd) -> None:
    """An admin's reset link for a directory user sets the password in slapd, where the service
    account may (here: refused by slapd's rules, so the page says so clearly)."""
    client = await ldap_client(make_client, directory)
    await signed_in(client, "bob", password=BOB)
    alice = await signed_in(client, "alice", password=ALICE)

    assert (
        await portal_post(client, "/auth/admin/users/bob/password-reset", {}, session=alice)
    ).status == 303
    (link,) = mailed_links(client)
    response = await portal_post(client, link, {"password": NEW, "confirm": NEW})

    # The test directory grants the service account read access only.
    assert response.status == 409
    assert "does not let this password be changed here" in await response.text()
    assert directory_bind_ok(directory, "bob", BOB)


async def test_reset_link_with_a_service_account_allowed_to_write(
    make_client: MakeClient, directory: ldap.Slapd
) -> None:
    """With write access for the service account, the link sets the new directory password."""
    directory.modify(
        "dn: olcDatabase={1}mdb,cn=config\nchangetype: modify\nreplace: olcAccess\n"
        f'olcAccess: {{0}}to attrs=userPassword by self write by dn.exact="{ldap.SERVICE_DN}" write '
        "by anonymous auth by * none\n"
        "olcAccess: {1}to attrs=pwdAccountLockedTime by * read\n"
        "olcAccess: {2}to * by users read by * none\n",
        config=True,
    )
    client = await ldap_client(make_client, directory)
    bob_session = await signed_in(client, "bob", password=BOB)
    alice = await signed_in(client, "alice", password=ALICE)
    assert (
        await portal_post(client, "/auth/admin/users/bob/password-reset", {}, session=alice)
    ).status == 303
    (link,) = mailed_links(client)

    response = await portal_post(client, link, {"password": NEW, "confirm": NEW})

    assert response.status == 200, await response.text()
    assert directory_bind_ok(directory, "bob", NEW)
    assert (await forward_auth(client, bob_session)).status == 302  # sessions end, as for local users
    assert (await login(client, "bob", NEW)).status == 303


async def test_cli_refuses_to_edit_directory_users(
    make_client: MakeClient, directory: ldap.Slapd, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    """`users modify/passwd/disable` name the directory as the place to change a directory user."""
    client = await ldap_client(make_client, directory)
    await signed_in(client, "bob", password=BOB)
    config = tmp_path / "cli.yml"
    config.write_text(f"storage:\n  data_dir: {tmp_path / 'data'}\n")
    await client.close()

    # The CLI runs its own event loop: give it a thread, as a shell would give it a process.
    code = await asyncio.to_thread(
        main, ["--config", str(config), "users", "modify", "bob", "--groups", "admins"]
    )

    assert code != 0
    assert "comes from the LDAP directory" in capsys.readouterr().err
    await asyncio.to_thread(main, ["--config", str(config), "users", "show", "bob"])
    assert '"source": "ldap"' in capsys.readouterr().out


async def test_passkey_login_of_a_user_disabled_in_the_directory_is_refused(
    make_client: MakeClient, directory: ldap.Slapd
) -> None:
    """A passkey sign-in asks the directory first: a user locked there is refused at once."""
    client = await ldap_client(make_client, directory)
    await signed_in(client, "bob", password=BOB)
    bob = await services(client).store.get_user_by_name("bob")
    assert bob is not None
    directory_service = services(client).directory
    assert directory_service is not None
    assert await directory_service.confirm(bob) is not None
    directory.disable("bob")

    assert await directory_service.confirm(bob) is None
    refreshed = await services(client).store.get_user_by_name("bob")
    assert refreshed is not None and refreshed.disabled


async def test_removing_the_directory_ends_directory_sessions(
    make_client: MakeClient, directory: ldap.Slapd, tmp_path: Any
) -> None:
    """Restarted without authentication_backend.ldap, authgate ends directory users' sessions
    (nothing would re-check them) and refuses their sign-in; local users are unaffected."""
    client = await ldap_client(make_client, directory)
    session = await signed_in(client, "bob", password=BOB)
    await client.close()

    restarted = await make_client()  # same data directory, no directory configured

    assert (await forward_auth(restarted, session)).status == 302
    assert (await login(restarted, "bob", BOB)).status == 401


async def test_reauth_checks_the_directory_password(make_client: MakeClient, directory: ldap.Slapd) -> None:
    """Re-authentication (before admin actions, app passwords ...) binds a directory user to slapd:
    the directory password passes, a wrong one does not, and with slapd down the page says why."""
    client = await ldap_client(make_client, directory)
    session = await signed_in(client, "bob", password=BOB)

    assert (await portal_post(client, "/auth/reauth", {"password": "not it"}, session=session)).status == 401
    assert (await portal_post(client, "/auth/reauth", {"password": BOB}, session=session)).status == 303
    directory.stop()
    try:
        response = await portal_post(client, "/auth/reauth", {"password": BOB}, session=session)
    finally:
        directory.start()
    assert response.status == 503
    assert "The directory is unavailable" in await response.text()
