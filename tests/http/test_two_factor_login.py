"""TOTP enrolment through the portal and the second-factor login step, with codes from oathtool."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.models import Level
from tests.http.helpers import (
    PASSWORD,
    PENDING_COOKIE,
    SESSION_COOKIE,
    Clock,
    MakeClient,
    add_totp_device,
    add_user,
    confirm_enrolment,
    enrol_totp,
    login,
    open_enrolment,
    password_step,
    portal_get,
    services,
    signed_in,
    submit_code,
    totp_code,
    wrong_code,
)
from tests.pg import both_storage_engines  # noqa: F401 - runs this module on SQLite and PostgreSQL

Client = TestClient[Any, Any]
PERIOD = 30


async def session_level(client: Client, cookie: str) -> Level | None:
    session = await services(client).sessions.resolve(cookie)
    return session.level if session else None


async def test_enrolment_confirmed_with_oathtool_code_stores_device(client: Client, clock: Clock) -> None:
    """The page's secret plus an oathtool code for it store one device and upgrade the session."""
    user = await add_user(client)
    session = await signed_in(client)
    secret, token = await open_enrolment(client, session)

    response = await confirm_enrolment(client, session, token, totp_code(secret, clock()))

    assert response.status == 200, await response.text()
    devices = await services(client).store.list_totp_devices(user.id)
    assert [d.name for d in devices] == ["pixel-7 authy"]
    new_session = response.cookies[SESSION_COOKIE].value
    assert new_session != session
    assert await session_level(client, new_session) is Level.TWO_FACTOR
    assert await session_level(client, session) is None


async def test_nothing_is_stored_before_confirmation(client: Client) -> None:
    """Showing (and regenerating) an enrolment secret stores no device and no recovery code."""
    user = await add_user(client)
    session = await signed_in(client)

    first, _ = await open_enrolment(client, session)
    second, _ = await open_enrolment(client, session)

    assert first != second
    store = services(client).store
    assert await store.list_totp_devices(user.id) == []
    assert await store.count_unused_recovery_codes(user.id) == 0


@pytest.mark.parametrize("wrong", ["password", "code"])
async def test_enrolment_with_wrong_password_or_code_stores_nothing(
    client: Client, clock: Clock, wrong: str
) -> None:
    """A wrong current password or a wrong code at enrolment is refused and stores no device."""
    user = await add_user(client)
    session = await signed_in(client)
    secret, token = await open_enrolment(client, session)
    code = wrong_code(secret, clock()) if wrong == "code" else totp_code(secret, clock())
    password = "not the password" if wrong == "password" else PASSWORD

    response = await confirm_enrolment(client, session, token, code, password=password)

    assert response.status in (400, 401)
    assert SESSION_COOKIE not in response.cookies
    store = services(client).store
    assert await store.list_totp_devices(user.id) == []
    assert await store.count_unused_recovery_codes(user.id) == 0


async def test_login_with_oathtool_code_gives_level_two_session(client: Client, clock: Clock) -> None:
    """Password, then /2fa, then an oathtool code for the enrolled secret gives a level-two session."""
    await add_user(client)
    _, secret, _ = await enrol_totp(client, await signed_in(client), clock)
    clock.advance(PERIOD)

    pending = await password_step(client)
    page = await portal_get(client, "/auth/2fa", pending=pending)
    assert page.status == 200
    assert 'name="method" value="totp"' in await page.text()
    response = await submit_code(client, totp_code(secret, clock()), pending=pending)

    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/auth/"
    assert await session_level(client, response.cookies[SESSION_COOKIE].value) is Level.TWO_FACTOR
    assert response.cookies[PENDING_COOKIE].value == ""  # the pending login is cleared


async def test_same_code_twice_is_refused(client: Client, clock: Clock) -> None:
    """A TOTP code accepted once is refused when replayed in a second login."""
    await add_user(client)
    _, secret, _ = await enrol_totp(client, await signed_in(client), clock)
    clock.advance(PERIOD)
    code = totp_code(secret, clock())
    first = await submit_code(client, code, pending=await password_step(client))
    assert first.status == 303

    again = await submit_code(client, code, pending=await password_step(client))

    assert again.status == 401
    assert SESSION_COOKIE not in again.cookies


async def test_enrolment_code_cannot_be_replayed_at_login(client: Client, clock: Clock) -> None:
    """The code that confirmed the enrolment is already used: the first login refuses it."""
    await add_user(client)
    session = await signed_in(client)
    secret, token = await open_enrolment(client, session)
    code = totp_code(secret, clock())
    assert (await confirm_enrolment(client, session, token, code)).status == 200

    response = await submit_code(client, code, pending=await password_step(client))

    assert response.status == 401


@pytest.mark.parametrize("skew", [1, 2])
@pytest.mark.parametrize("direction", ["past", "future"])
async def test_code_just_outside_skew_window_is_refused(
    make_client: MakeClient, clock: Clock, skew: int, direction: str
) -> None:
    """A code skew+1 steps away from the server's time (moved with the clock) is refused."""
    client = await make_client({"two_factor": {"totp": {"skew": skew}}})
    await add_user(client)
    _, secret, _ = await enrol_totp(client, await signed_in(client), clock)
    clock.advance(10 * PERIOD)
    pending = await password_step(client)

    if direction == "past":
        code = totp_code(secret, clock())
        clock.advance((skew + 1) * PERIOD)
    else:
        code = totp_code(secret, clock() + (skew + 1) * PERIOD)
    response = await submit_code(client, code, pending=pending)

    assert response.status == 401
    assert SESSION_COOKIE not in response.cookies


@pytest.mark.parametrize("skew", [1, 2])
@pytest.mark.parametrize("direction", ["past", "future"])
async def test_code_at_edge_of_skew_window_is_accepted(
    make_client: MakeClient, clock: Clock, skew: int, direction: str
) -> None:
    """A code exactly skew steps away from the server's time (moved with the clock) is accepted."""
    client = await make_client({"two_factor": {"totp": {"skew": skew}}})
    await add_user(client)
    _, secret, _ = await enrol_totp(client, await signed_in(client), clock)
    clock.advance(10 * PERIOD)
    pending = await password_step(client)

    if direction == "past":
        code = totp_code(secret, clock())
        clock.advance(skew * PERIOD)
    else:
        code = totp_code(secret, clock() + skew * PERIOD)
    response = await submit_code(client, code, pending=pending)

    assert response.status == 303, await response.text()
    assert SESSION_COOKIE in response.cookies


async def test_pending_login_expires_after_ttl(make_client: MakeClient, clock: Clock) -> None:
    """After pending_ttl a valid code no longer helps: the user is sent to the login page with a notice."""
    client = await make_client({"two_factor": {"pending_ttl": "2m"}})
    user = await add_user(client)
    secret = await add_totp_device(client, user)
    pending = await password_step(client)

    clock.advance(121)
    response = await submit_code(client, totp_code(secret, clock()), pending=pending)

    assert response.status == 303
    assert response.headers["Location"] == "/auth/login?expired=1"
    assert SESSION_COOKIE not in response.cookies
    page = await portal_get(client, response.headers["Location"])
    assert "Sign-in took too long" in await page.text()
    assert (
        (await portal_get(client, "/auth/2fa", pending=pending))
        .headers["Location"]
        .startswith("/auth/login?expired=1")
    )


async def test_pending_login_caps_wrong_codes(make_client: MakeClient, clock: Clock) -> None:
    """After pending_max_attempts wrong codes the user starts over at the login page."""
    client = await make_client({"two_factor": {"pending_max_attempts": 3}, "regulation": {"max_retries": 10}})
    user = await add_user(client)
    secret = await add_totp_device(client, user)
    pending = await password_step(client)
    bad = wrong_code(secret, clock())

    first = await submit_code(client, bad, pending=pending)
    second = await submit_code(client, bad, pending=pending)
    third = await submit_code(client, bad, pending=pending)

    assert (first.status, second.status) == (401, 401)
    assert "2 attempts left" in await first.text()
    assert "1 attempt left" in await second.text()
    assert third.status == 303
    assert third.headers["Location"] == "/auth/login?retry=1"
    assert third.cookies[PENDING_COOKIE].value == ""
    page = await portal_get(client, third.headers["Location"])
    assert "Too many wrong codes" in await page.text()


async def test_replayed_pending_cookie_gives_no_more_attempts(make_client: MakeClient, clock: Clock) -> None:
    """Replaying the pending cookie after the cap is refused even with the right code (server-side count)."""
    client = await make_client({"two_factor": {"pending_max_attempts": 2}, "regulation": {"max_retries": 10}})
    user = await add_user(client)
    secret = await add_totp_device(client, user)
    pending = await password_step(client)
    bad = wrong_code(secret, clock())
    await submit_code(client, bad, pending=pending)
    assert (await submit_code(client, bad, pending=pending)).status == 303

    replayed = await submit_code(client, totp_code(secret, clock()), pending=pending)
    page = await portal_get(client, "/auth/2fa", pending=pending)

    assert replayed.status == 303
    assert replayed.headers["Location"].startswith("/auth/login")
    assert SESSION_COOKIE not in replayed.cookies
    assert page.status == 303
    assert page.headers["Location"].startswith("/auth/login")


async def test_wrong_codes_count_toward_regulation(make_client: MakeClient, clock: Clock) -> None:
    """regulation.max_retries wrong codes ban the user: even the right code and the password are refused."""
    client = await make_client({"two_factor": {"pending_max_attempts": 10}, "regulation": {"max_retries": 3}})
    user = await add_user(client)
    secret = await add_totp_device(client, user)
    pending = await password_step(client)
    bad = wrong_code(secret, clock())
    for _ in range(3):
        assert (await submit_code(client, bad, pending=pending)).status == 401

    right = await submit_code(client, totp_code(secret, clock()), pending=pending)
    relogin = await login(client)

    assert right.status == 429
    assert "Too many failed sign-in attempts" in await right.text()
    assert SESSION_COOKIE not in right.cookies
    assert relogin.status == 429


async def test_chooser_offers_the_other_method(client: Client, clock: Clock) -> None:
    """A user with TOTP and recovery codes sees a link to the other method, which switches the form."""
    await add_user(client)
    await enrol_totp(client, await signed_in(client), clock)
    pending = await password_step(client)

    totp_page = await (await portal_get(client, "/auth/2fa", pending=pending)).text()
    recovery_page = await (await portal_get(client, "/auth/2fa?method=recovery", pending=pending)).text()

    assert 'name="method" value="totp"' in totp_page
    assert 'href="/auth/2fa?method=recovery"' in totp_page
    assert 'name="method" value="recovery"' in recovery_page
    assert 'href="/auth/2fa?method=totp"' in recovery_page


async def test_last_used_kind_is_offered_first(client: Client, clock: Clock) -> None:
    """After signing in with a recovery code, the next second-factor step offers recovery codes first."""
    await add_user(client)
    _, _, codes = await enrol_totp(client, await signed_in(client), clock)
    used = await submit_code(client, codes[0], pending=await password_step(client), method="recovery")
    assert used.status == 303

    page = await (await portal_get(client, "/auth/2fa", pending=await password_step(client))).text()

    assert 'name="method" value="recovery"' in page
    assert 'href="/auth/2fa?method=totp"' in page
