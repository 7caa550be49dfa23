"""The signed-in devices page: every session with its device and "this device", revoking one,
"sign out everywhere else", and what forward-auth then says to the ended sessions."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.accounts import audit
from gateway.models import AuditEvent
from tests.http.helpers import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    add_user,
    csrf_pair,
    forward_auth,
    portal_get,
    portal_post,
    services,
    signed_in,
    with_cookies,
)

Client = TestClient[Any, Any]
DEVICES = "/auth/settings/devices"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
_ROW = re.compile(
    r'<li class="device( current)?" data-session="[0-9a-f]+">\s*<strong>(.*?)</strong>.*?'
    r"/settings/devices/([0-9a-f]{64})/revoke",
    re.S,
)


def rows(text: str) -> list[tuple[str, bool, str]]:
    """Return (device text, is this device, session id hash) for each session on the page."""
    listed = text.split('id="sessions"', 1)[1].split("</ul>", 1)[0]
    return [
        (re.sub(r"<[^>]+>", "", device).strip(), bool(current), id_hash)
        for current, device, id_hash in _ROW.findall(listed)
    ]


async def devices_page(client: Client, session: str) -> str:
    response = await portal_get(client, DEVICES, session=session)
    assert response.status == 200
    return await response.text()


async def session_from(client: Client, user_agent: str, ip: str, username: str = "alice") -> str:
    return await signed_in(client, username, headers={"User-Agent": user_agent, "X-Forwarded-For": ip})


async def audit_rows(client: Client, event: str) -> list[AuditEvent]:
    return await services(client).store.list_audit(event=event, limit=1000)


async def test_page_lists_sessions_with_device_and_this_device(client: Client) -> None:
    """Each session shows its parsed device and address; the current one comes first, marked."""
    await add_user(client)
    laptop = await session_from(client, FIREFOX, "198.51.100.7")
    await session_from(client, IPHONE, "203.0.113.9")

    text = await devices_page(client, laptop)
    listed = rows(text)

    assert [(device, current) for device, current, _ in listed] == [
        ("Firefox 128 on Linux this device", True),
        ("Safari 17 on iPhone", False),
    ]
    assert "from 198.51.100.7" in text and "from 203.0.113.9" in text
    assert text.count('<span class="badge">this device</span>') == 1


async def test_page_shows_only_the_users_own_sessions(client: Client) -> None:
    """bob's sessions never appear on alice's page."""
    await add_user(client)
    await add_user(client, "bob")
    alice = await session_from(client, FIREFOX, "198.51.100.7")
    await session_from(client, IPHONE, "203.0.113.9", "bob")

    assert len(rows(await devices_page(client, alice))) == 1


async def test_revoking_a_session_ends_it_at_forward_auth(client: Client) -> None:
    """The phone's session, ended from the laptop, gets 302/401 at forward-auth; the laptop stays in."""
    await add_user(client)
    laptop = await session_from(client, FIREFOX, "198.51.100.7")
    phone = await session_from(client, IPHONE, "203.0.113.9")
    assert (await forward_auth(client, phone)).status == 200
    [(_, _, phone_id)] = [row for row in rows(await devices_page(client, laptop)) if not row[1]]

    response = await portal_post(client, f"{DEVICES}/{phone_id}/revoke", {}, session=laptop)

    assert (response.status, response.headers["Location"]) == (303, f"{DEVICES}?done=one")
    browser = await forward_auth(client, phone)
    api = await forward_auth(client, phone, accept="application/json")
    assert browser.status == 302 and browser.headers["Location"].startswith(
        "http://localhost:8080/auth/login?rd="
    )
    assert api.status == 401
    assert (await forward_auth(client, laptop)).status == 200
    assert [device for device, _, _ in rows(await devices_page(client, laptop))] == [
        "Firefox 128 on Linux this device"
    ]
    [row] = await audit_rows(client, audit.SESSION_REVOKED)
    assert (row.actor, row.target, row.detail) == ("alice", "alice", phone_id[:16])


async def test_revoking_this_device_signs_this_browser_out(client: Client) -> None:
    """Ending the current session clears the cookie and sends the browser to the login page."""
    await add_user(client)
    laptop = await session_from(client, FIREFOX, "198.51.100.7")
    [(_, _, own_id)] = rows(await devices_page(client, laptop))

    response = await portal_post(client, f"{DEVICES}/{own_id}/revoke", {}, session=laptop)

    assert (response.status, response.headers["Location"]) == (303, "/auth/login?signed_out=1")
    assert response.cookies[SESSION_COOKIE].value == ""
    assert (await forward_auth(client, laptop)).status == 302


async def test_sign_out_everywhere_else_keeps_the_current_session(client: Client) -> None:
    """ "Sign out everywhere else" ends every other session of the user, and only those."""
    await add_user(client)
    await add_user(client, "bob")
    laptop = await session_from(client, FIREFOX, "198.51.100.7")
    others = [
        await session_from(client, IPHONE, "203.0.113.9"),
        await session_from(client, FIREFOX, "192.0.2.1"),
    ]
    bob = await session_from(client, FIREFOX, "192.0.2.2", "bob")
    assert "Sign out everywhere else" in await devices_page(client, laptop)

    response = await portal_post(client, f"{DEVICES}/revoke-others", {}, session=laptop)

    assert (response.status, response.headers["Location"]) == (303, f"{DEVICES}?done=others")
    assert [(await forward_auth(client, s)).status for s in others] == [302, 302]
    assert (await forward_auth(client, laptop)).status == 200
    assert (await forward_auth(client, bob)).status == 200
    text = await devices_page(client, laptop)
    assert [current for _, current, _ in rows(text)] == [True]
    assert "Sign out everywhere else" not in text
    [row] = await audit_rows(client, audit.SESSIONS_REVOKED)
    assert (row.actor, row.target, row.detail) == ("alice", "alice", "2 other session(s)")


async def test_revoking_another_users_session_is_not_found(client: Client) -> None:
    """An id hash of bob's session in alice's form answers 404 and bob stays signed in."""
    await add_user(client)
    await add_user(client, "bob")
    alice = await session_from(client, FIREFOX, "198.51.100.7")
    bob = await session_from(client, IPHONE, "203.0.113.9", "bob")
    [(_, _, bob_id)] = rows(await devices_page(client, bob))

    response = await portal_post(client, f"{DEVICES}/{bob_id}/revoke", {}, session=alice)

    assert response.status == 404
    assert (await forward_auth(client, bob)).status == 200
    assert await audit_rows(client, audit.SESSION_REVOKED) == []


@pytest.mark.parametrize("action", ["one", "others"])
async def test_revocations_without_csrf_token_are_403(client: Client, action: str) -> None:
    """Without the form's CSRF token no session ends."""
    await add_user(client)
    laptop = await session_from(client, FIREFOX, "198.51.100.7")
    phone = await session_from(client, IPHONE, "203.0.113.9")
    [(_, _, phone_id)] = [row for row in rows(await devices_page(client, laptop)) if not row[1]]
    secret, _token = await csrf_pair(client)
    path = f"{DEVICES}/{phone_id}/revoke" if action == "one" else f"{DEVICES}/revoke-others"

    response = await client.post(
        path, data={}, headers=with_cookies(laptop, **{CSRF_COOKIE: secret}), allow_redirects=False
    )

    assert response.status == 403
    assert (await forward_auth(client, phone)).status == 200


async def test_devices_page_needs_a_session(client: Client) -> None:
    """Anonymous visitors are sent to the login page."""
    await add_user(client)

    page = await portal_get(client, DEVICES)
    others = await portal_post(client, f"{DEVICES}/revoke-others", {})

    assert (page.status, page.headers["Location"]) == (303, "/auth/login")
    assert (others.status, others.headers["Location"]) == (303, "/auth/login")
