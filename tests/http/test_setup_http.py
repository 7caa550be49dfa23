"""First-run setup: the portal creates the first account (an admin) only while none exists."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from gateway.accounts import audit
from gateway.factors.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from tests.http.helpers import CSRF_COOKIE, SESSION_COOKIE, cookie_header, csrf_pair, forward_auth, services
from tests.pg import both_storage_engines  # noqa: F401 - runs this module on SQLite and PostgreSQL

Client = TestClient[Any, Any]

GOOD = {
    "username": "root",
    "email": "root@example.com",
    "display_name": "Root User",
    "password": "s3cret-enough",
    "password_confirm": "s3cret-enough",
}


async def _submit_setup(client: Client, form: dict[str, str]) -> Any:
    secret, token = await csrf_pair(client, "/auth/setup")
    return await client.post(
        "/auth/setup",
        data={**form, "csrf_token": token},
        headers=cookie_header(**{CSRF_COOKIE: secret}),
        allow_redirects=False,
    )


async def test_login_redirects_to_setup_without_users(client: Client) -> None:
    """With no account yet, the login page sends the visitor to setup."""
    response = await client.get("/auth/login", allow_redirects=False)

    assert response.status == 303
    assert response.headers["Location"] == "/auth/setup"


async def test_setup_creates_an_admin_and_signs_in(client: Client) -> None:
    """Submitting setup creates the user in the admin group and starts a session."""
    response = await _submit_setup(client, GOOD)

    assert response.status == 303
    # The first account is offered a second factor at once (issue 4: register after setup).
    assert response.headers["Location"] == "/auth/settings?done=welcome"
    user = await services(client).store.get_user_by_name("root")
    assert user is not None
    assert "admins" in user.groups
    assert user.email == "root@example.com"
    assert user.display_name == "Root User"
    check = await forward_auth(client, response.cookies[SESSION_COOKIE].value, host="admin.localhost")
    assert check.status == 200
    assert check.headers["Remote-User"] == "root"


async def test_setup_offers_a_second_factor_then_the_original_url(client: Client) -> None:
    """After setup the settings page offers passkeys/TOTP and links on to the URL the user asked for."""
    target = "http://localhost:8080/wiki/start"
    response = await _submit_setup(client, {**GOOD, "rd": target})

    location = response.headers["Location"]
    assert location.startswith("/auth/settings?done=welcome&next=")
    page = await client.get(
        location, headers=cookie_header(**{SESSION_COOKIE: response.cookies[SESSION_COOKIE].value})
    )
    html = await page.text()
    assert page.status == 200
    assert 'data-webauthn="register"' in html
    assert f"/auth/settings/totp/new?rd={quote(target)}" in html
    assert f'id="welcome-continue"><a class="skip" href="{target}"' in html


async def test_welcome_step_has_one_recommended_action_and_a_quiet_skip(client: Client) -> None:
    """Without JavaScript the welcome step shows one primary action (the app), the passkey one hidden."""
    response = await _submit_setup(client, GOOD)
    cookie = cookie_header(**{SESSION_COOKIE: response.cookies[SESSION_COOKIE].value})

    html = await (await client.get(response.headers["Location"], headers=cookie)).text()

    # webauthn.js swaps the two blocks when the device has a platform authenticator.
    assert '<div id="recommend-passkey" hidden>' in html
    assert '<div id="recommend-totp">' in html
    shown = html.split('<div id="recommend-totp">')[1].split("</div>")[0]
    assert shown.count('class="button primary') == 1
    assert 'class="skip"' in html and "Skip for now and continue" in html
    # Only the step: the full settings page (with its other primary buttons) waits for later.
    assert "Recent security activity" not in html


async def test_setup_page_states_the_password_rules_before_the_field(client: Client) -> None:
    """The rules validate_new_password applies are written above the password field."""
    html = await (await client.get("/auth/setup")).text()

    rules = f"At least {MIN_PASSWORD_LENGTH} and at most {MAX_PASSWORD_LENGTH} characters, not only spaces."
    assert rules in html
    assert html.index(rules) < html.index('<input id="password"')
    assert 'aria-describedby="password-rules"' in html


async def test_account_created_shows_in_recent_security_activity(client: Client) -> None:
    """Setup writes an account_created audit row, which the settings page lists."""
    response = await _submit_setup(client, GOOD)
    cookie = cookie_header(**{SESSION_COOKIE: response.cookies[SESSION_COOKIE].value})

    html = await (await client.get("/auth/settings", headers=cookie)).text()

    events = html.split('id="security-events"')[1]
    assert '<span class="event">account created</span>: first account, administrator' in events
    rows = await services(client).store.list_audit(event=audit.ACCOUNT_CREATED)
    assert [(r.actor, r.target) for r in rows] == [("root", "root")]


async def test_setup_closes_once_a_user_exists(client: Client) -> None:
    """After setup, the setup page redirects to login and a second POST creates nothing."""
    secret, token = await csrf_pair(client, "/auth/setup")
    await _submit_setup(client, GOOD)

    page = await client.get("/auth/setup", allow_redirects=False)
    again = await client.post(
        "/auth/setup",
        data={**GOOD, "username": "mallory", "email": "m@example.com", "csrf_token": token},
        headers=cookie_header(**{CSRF_COOKIE: secret}),
        allow_redirects=False,
    )

    assert page.status == 303
    assert page.headers["Location"] == "/auth/login"
    assert again.status == 303
    assert again.headers["Location"] == "/auth/login"
    assert SESSION_COOKIE not in again.cookies
    assert [u.username for u in await services(client).store.list_users()] == ["root"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"username": "Bad Name!"}, "is not allowed", id="bad username"),
        pytest.param({"username": ""}, "is not allowed", id="empty username"),
        pytest.param({"email": "not-an-email"}, "is not a valid address", id="bad e-mail"),
        pytest.param({"password_confirm": "something-else"}, "The two passwords differ.", id="mismatch"),
        pytest.param(
            {"password": "short", "password_confirm": "short"}, "at least 8 characters", id="short password"
        ),
    ],
)
async def test_setup_validation_errors(client: Client, changes: dict[str, str], message: str) -> None:
    """Invalid setup input gets 400 with the message, and no user is stored."""
    response = await _submit_setup(client, {**GOOD, **changes})

    assert response.status == 400
    assert message in await response.text()
    assert SESSION_COOKIE not in response.cookies
    assert await services(client).store.count_users() == 0


async def test_setup_lists_every_problem_at_once(client: Client) -> None:
    """Several invalid fields are all reported in one answer."""
    form = {**GOOD, "username": "Bad Name!", "email": "nope", "password_confirm": "x"}

    response = await _submit_setup(client, form)

    text = await response.text()
    assert response.status == 400
    assert "is not allowed" in text
    assert "is not a valid address" in text
    assert "The two passwords differ." in text


async def test_setup_without_csrf_is_403(client: Client) -> None:
    """Setup needs the CSRF token like every portal form, and creates nothing without it."""
    response = await client.post("/auth/setup", data=GOOD, allow_redirects=False)

    assert response.status == 403
    assert await services(client).store.count_users() == 0
