"""WebAuthn-only accounts: password sign-in switched off, the login page's fallback, the last device."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from portal.views.login import PASSWORDLESS_FAILURE
from tests.http.helpers import (
    LAST_LOGIN_COOKIE,
    PASSWORD,
    SESSION_COOKIE,
    add_user,
    cookie_header,
    login,
    passkey_login,
    portal_get,
    portal_post,
    recovery_codes_in,
    registered_session,
    services,
    signed_in,
)
from tests.webauthn_authenticator import SoftAuthenticator

Client = TestClient[Any, Any]
FALLBACK = 'id="password-fallback"'


async def passwordless_alice(client: Client) -> tuple[Any, SoftAuthenticator, str, str]:
    """Register a key for alice and turn her password sign-in off.

    Return (user, authenticator, session, the authgate_last cookie this browser got).
    """
    user = await add_user(client)
    authenticator = SoftAuthenticator()
    session = await registered_session(client, await signed_in(client), authenticator)
    response = await portal_post(
        client, "/auth/settings/password-login", {"enabled": "", "password": PASSWORD}, session=session
    )
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/auth/settings?done=password_off"
    return user, authenticator, session, response.cookies[LAST_LOGIN_COOKIE].value


async def test_turning_password_off_needs_a_device(client: Client) -> None:
    """Without a registered key or passkey, password sign-in cannot be switched off."""
    user = await add_user(client)
    session = await signed_in(client)

    response = await portal_post(
        client, "/auth/settings/password-login", {"enabled": "", "password": PASSWORD}, session=session
    )

    assert response.status == 409
    assert (await services(client).store.get_user(user.id)).password_login is True


async def test_turning_password_off_needs_the_password(client: Client) -> None:
    """A wrong current password leaves password sign-in on."""
    user = await add_user(client)
    session = await registered_session(client, await signed_in(client), SoftAuthenticator())

    response = await portal_post(
        client, "/auth/settings/password-login", {"enabled": "", "password": "wrong"}, session=session
    )

    assert response.status == 401
    assert (await services(client).store.get_user(user.id)).password_login is True


async def test_password_login_refused_for_webauthn_only_account(client: Client) -> None:
    """With password sign-in off, even the right password is refused with the passkey-only message."""
    user, authenticator, _, _ = await passwordless_alice(client)
    assert (await services(client).store.get_user(user.id)).password_login is False

    response = await login(client)

    assert response.status == 401
    assert PASSWORDLESS_FAILURE in await response.text()
    assert SESSION_COOKIE not in response.cookies
    assert (await passkey_login(client, authenticator)).status == 200


async def test_login_page_offers_password_only_where_allowed(client: Client) -> None:
    """The browser that remembers a passkey-only account gets no password form; another browser does."""
    await add_user(client, "bob")
    _, _, _, remembered = await passwordless_alice(client)

    here = await client.get("/auth/login", headers=cookie_header(**{LAST_LOGIN_COOKIE: remembered}))
    elsewhere = await client.get("/auth/login")
    asked = await client.get(
        "/auth/login?password=1", headers=cookie_header(**{LAST_LOGIN_COOKIE: remembered})
    )
    bob_browser = (await login(client, "bob")).cookies[LAST_LOGIN_COOKIE].value
    bobs = await client.get("/auth/login", headers=cookie_header(**{LAST_LOGIN_COOKIE: bob_browser}))

    here_text = await here.text()
    assert here.status == 200
    assert FALLBACK not in here_text
    assert 'name="password"' not in here_text
    assert 'data-webauthn="passkey"' in here_text
    assert "uses passkeys only" in here_text
    assert 'href="/auth/login?password=1"' in here_text
    assert FALLBACK in await elsewhere.text()
    assert FALLBACK in await asked.text()
    assert FALLBACK in await bobs.text()


async def test_revoking_the_last_device_is_refused_while_password_is_off(client: Client) -> None:
    """The only key of a passkey-only account cannot be revoked; with a second key, one can go."""
    user, _, session, _ = await passwordless_alice(client)
    [key] = await services(client).store.list_webauthn_credentials(user.id)

    refused = await portal_post(
        client, f"/auth/settings/webauthn/{key.id}/delete", {"password": PASSWORD}, session=session
    )

    assert refused.status == 409
    assert "only way to sign in" in await refused.text()
    assert len(await services(client).store.list_webauthn_credentials(user.id)) == 1
    await registered_session(client, session, SoftAuthenticator(transports=("usb",)))
    allowed = await portal_post(
        client, f"/auth/settings/webauthn/{key.id}/delete", {"password": PASSWORD}, session=session
    )
    assert allowed.status == 303
    assert [k.name for k in await services(client).store.list_webauthn_credentials(user.id)] == [
        "Security key"
    ]


async def test_passkey_account_without_an_app_is_offered_recovery_codes(client: Client) -> None:
    """With a passkey and no authenticator app, settings offers to create recovery codes and the mail link."""
    await add_user(client)
    session = await registered_session(client, await signed_in(client), SoftAuthenticator())

    html = await (await portal_get(client, "/auth/settings", session=session)).text()

    assert "Recovery codes are created when you add your first authenticator app" not in html
    assert 'id="recovery-none"' in html
    assert '<button type="submit" class="primary" id="recovery-create">Create recovery codes</button>' in html
    assert 'id="recovery-link-hint"' in html and "alice@example.com" in html


async def test_passkey_account_creates_recovery_codes_on_their_own(client: Client) -> None:
    """A passkey alone is enough to create codes: shown once, stored hashed, single-use, audited."""
    user = await add_user(client)
    session = await registered_session(client, await signed_in(client), SoftAuthenticator())
    assert await services(client).store.list_totp_devices(user.id) == []

    response = await portal_post(client, "/auth/settings/recovery", {"password": PASSWORD}, session=session)

    codes = recovery_codes_in(await response.text())
    assert response.status == 200
    assert len(codes) == services(client).config.two_factor.recovery_codes
    stored = [h for _, h in await services(client).store.unused_recovery_hashes(user.id)]
    assert len(stored) == len(codes) and not set(codes) & set(stored)
    assert await services(client).two_factor.verify_recovery(user.id, codes[0]) is True
    assert await services(client).two_factor.verify_recovery(user.id, codes[0]) is False
    events = await services(client).store.list_audit(target="alice", event="recovery_codes_generated")
    assert len(events) == 1
    again = await (await portal_get(client, "/auth/settings", session=session)).text()
    assert recovery_codes_in(again) == []  # shown once: the settings page only counts them
    assert f'<p id="recovery-left">{len(codes) - 1} unused recovery codes.</p>' in again


async def test_account_without_a_factor_is_told_what_recovery_codes_need(client: Client) -> None:
    """A password-only account sees why it has no codes yet, and the server refuses to create any."""
    await add_user(client)
    session = await signed_in(client)

    html = await (await portal_get(client, "/auth/settings", session=session)).text()
    response = await portal_post(client, "/auth/settings/recovery", {"password": PASSWORD}, session=session)

    assert 'id="recovery-needs-factor"' in html
    assert response.status == 400
    assert recovery_codes_in(await response.text()) == []


async def test_passwordless_account_is_told_its_recovery_path(client: Client) -> None:
    """With password sign-in off, settings says codes need the password and points to the mail link."""
    _user, _authenticator, session, _ = await passwordless_alice(client)

    html = await (await portal_get(client, "/auth/settings", session=session)).text()

    assert 'id="recovery-codes-need-password"' in html
    assert 'id="recovery-link-hint"' in html
