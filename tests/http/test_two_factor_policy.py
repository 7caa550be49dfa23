"""The 2FA modes (disabled, optional, required), enrol on first use, and step-up to a two_factor rule."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from gateway.errors import ConfigError
from gateway.models import Level
from tests.http.helpers import (
    SESSION_COOKIE,
    Clock,
    MakeClient,
    add_totp_device,
    add_user,
    auth_request,
    build_config,
    confirm_enrolment,
    forward_auth,
    login,
    open_enrolment,
    portal_get,
    services,
    signed_in,
    submit_code,
    totp_code,
)

Client = TestClient[Any, Any]
PORTAL = "http://localhost:8080/auth"
VAULT_URL = "http://app.localhost/vault/secret?x=1"
RULES = {
    "access_control": {
        "rules": [
            {"domain": "app.localhost", "path": r"^/vault([/?]|$)", "policy": "two_factor"},
            {"domain": "*.localhost", "policy": "one_factor"},
        ]
    }
}


def two_factor_url(target: str) -> str:
    return f"{PORTAL}/2fa?rd={quote(target, safe='')}"


async def add_totp_user(client: Client) -> Any:
    """Create alice with a TOTP device stored straight through the service."""
    user = await add_user(client)
    await add_totp_device(client, user)
    return user


async def level_of(client: Client, cookie: str) -> Level | None:
    session = await services(client).sessions.resolve(cookie)
    return session.level if session else None


async def test_disabled_mode_does_not_ask_a_user_with_a_device(make_client: MakeClient) -> None:
    """With 2FA disabled a user who has a TOTP device signs in with the password alone."""
    client = await make_client({"two_factor": {"mode": "disabled"}})
    user = await add_totp_user(client)

    response = await login(client)

    assert response.status == 303
    assert response.headers["Location"] == "/auth/"
    assert await level_of(client, response.cookies[SESSION_COOKIE].value) is Level.ONE_FACTOR
    assert len(await services(client).store.list_totp_devices(user.id)) == 1


async def test_disabled_mode_settings_say_off_and_refuse_enrolment(make_client: MakeClient) -> None:
    """With 2FA disabled the settings page says it is off, enrolment is refused, and devices stay stored."""
    client = await make_client({"two_factor": {"mode": "disabled"}})
    user = await add_totp_user(client)
    session = await signed_in(client)

    settings = await portal_get(client, "/auth/settings", session=session)
    enrol = await portal_get(client, "/auth/settings/totp/new", session=session)

    assert settings.status == 200
    assert "turned two-factor authentication off" in await settings.text()
    assert enrol.status == 403
    assert "Two-factor authentication is off" in await enrol.text()
    assert 'id="totp-secret"' not in await enrol.text()
    assert [d.name for d in await services(client).store.list_totp_devices(user.id)] == ["pixel-7 authy"]


async def test_two_factor_rule_with_disabled_mode_is_a_config_error(tmp_path: Any) -> None:
    """A two_factor rule while two_factor.mode is disabled is refused, naming the rule."""
    with pytest.raises(ConfigError) as caught:
        build_config(tmp_path, {**RULES, "two_factor": {"mode": "disabled"}})

    assert "access_control.rules[0].policy" in str(caught.value)


async def test_optional_mode_user_without_factor_uses_password_only(make_client: MakeClient) -> None:
    """With 2FA optional a user without factors gets a level-one session and reaches apps."""
    client = await make_client(RULES)
    await add_user(client)

    response = await login(client)
    cookie = response.cookies[SESSION_COOKIE].value

    assert response.headers["Location"] == "/auth/"
    assert await level_of(client, cookie) is Level.ONE_FACTOR
    assert (await forward_auth(client, cookie)).status == 200


async def test_optional_mode_user_with_device_is_asked(make_client: MakeClient) -> None:
    """With 2FA optional a user who has a device goes to /2fa after the password, without a session."""
    client = await make_client(RULES)
    await add_totp_user(client)

    response = await login(client)

    assert response.status == 303
    assert response.headers["Location"] == "/auth/2fa"
    assert SESSION_COOKIE not in response.cookies


async def test_optional_mode_two_factor_rule_demands_enrolment(make_client: MakeClient) -> None:
    """With 2FA optional a two_factor rule sends a user without factors through /2fa to enrolment."""
    client = await make_client(RULES)
    await add_user(client)
    cookie = await signed_in(client)

    gate = await forward_auth(client, cookie, uri="/vault/secret?x=1")
    step = await portal_get(
        client, gate.headers["Location"].removeprefix("http://localhost:8080"), session=cookie
    )

    assert gate.status == 302
    assert gate.headers["Location"] == two_factor_url(VAULT_URL)
    assert step.status == 303
    assert step.headers["Location"] == f"/auth/settings/totp/new?rd={quote(VAULT_URL, safe='')}"


async def test_required_mode_enrol_on_first_use_blocks_apps_until_done(
    make_client: MakeClient, clock: Clock
) -> None:
    """With 2FA required a user without a factor is sent to enrolment and reaches no app until done."""
    client = await make_client({"two_factor": {"mode": "required"}})
    user = await add_user(client)
    target = "http://app.localhost/page"

    response = await login(client, rd=target)
    cookie = response.cookies[SESSION_COOKIE].value
    blocked = await forward_auth(client, cookie, uri="/page")
    blocked_nginx = await auth_request(client, cookie, url=target)
    settings = await portal_get(client, "/auth/settings", session=cookie)

    assert response.status == 303
    assert response.headers["Location"] == f"/auth/settings/totp/new?rd={quote(target, safe='')}"
    assert blocked.status == 302
    assert blocked.headers["Location"] == two_factor_url(target)
    assert blocked_nginx.status == 401
    assert blocked_nginx.headers["Location"] == two_factor_url(target)
    assert "Two-factor authentication is required here" in await settings.text()

    secret, token = await open_enrolment(client, cookie)
    enrolled = await confirm_enrolment(client, cookie, token, totp_code(secret, clock()), rd=target)
    new_cookie = enrolled.cookies[SESSION_COOKIE].value

    assert enrolled.status == 200
    assert f'href="{target}"' in await enrolled.text()  # "continue" leads back to the app
    assert len(await services(client).store.list_totp_devices(user.id)) == 1
    allowed = await forward_auth(client, new_cookie, uri="/page")
    assert allowed.status == 200
    assert allowed.headers["Remote-User"] == "alice"
    assert (await forward_auth(client, cookie, uri="/page")).status == 302  # the old session is gone


async def test_required_mode_user_with_factor_is_asked_for_it(make_client: MakeClient, clock: Clock) -> None:
    """With 2FA required a user who has a device goes to /2fa and then reaches apps at level two."""
    client = await make_client({"two_factor": {"mode": "required"}})
    user = await add_user(client)
    secret = await add_totp_device(client, user)

    response = await login(client)
    done = await submit_code(
        client, totp_code(secret, clock()), pending=response.cookies["authgate_2fa"].value
    )

    assert response.headers["Location"] == "/auth/2fa"
    assert done.status == 303
    assert (await forward_auth(client, done.cookies[SESSION_COOKIE].value)).status == 200


async def test_step_up_sends_level_one_session_to_2fa_with_original_url(make_client: MakeClient) -> None:
    """A level-one session on a two_factor rule gets 302 (forward-auth) or 401 (auth-request) to /2fa?rd=."""
    client = await make_client(RULES)
    user = await add_user(client)
    cookie = await signed_in(client)  # level one: the device is added afterwards (e.g. from another browser)
    await add_totp_device(client, user)

    gate = await forward_auth(client, cookie, uri="/vault/secret?x=1")
    nginx = await auth_request(client, cookie, url=VAULT_URL)
    elsewhere = await forward_auth(client, cookie, uri="/page")

    assert gate.status == 302
    assert gate.headers["Location"] == two_factor_url(VAULT_URL)
    assert nginx.status == 401
    assert nginx.headers["Location"] == two_factor_url(VAULT_URL)
    assert elsewhere.status == 200


async def test_step_up_returns_to_original_url_with_a_new_session(
    make_client: MakeClient, clock: Clock
) -> None:
    """After the code (no password asked) the browser returns to exactly the original URL, new session id."""
    client = await make_client(RULES)
    user = await add_user(client)
    cookie = await signed_in(client)
    secret = await add_totp_device(client, user)
    gate = await forward_auth(client, cookie, uri="/vault/secret?x=1")

    page = await portal_get(
        client, gate.headers["Location"].removeprefix("http://localhost:8080"), session=cookie
    )
    text = await page.text()
    assert page.status == 200
    assert 'name="password"' not in text
    assert f'name="rd" value="{VAULT_URL}"' in text
    response = await submit_code(client, totp_code(secret, clock()), session=cookie, rd=VAULT_URL)

    assert response.status == 303
    assert response.headers["Location"] == VAULT_URL
    new_cookie = response.cookies[SESSION_COOKIE].value
    assert new_cookie != cookie
    assert await level_of(client, new_cookie) is Level.TWO_FACTOR
    vault = await forward_auth(client, new_cookie, uri="/vault/secret?x=1")
    assert vault.status == 200
    assert vault.headers["Remote-User"] == "alice"
    assert (await forward_auth(client, cookie, uri="/page")).headers["Location"].startswith(f"{PORTAL}/login")
