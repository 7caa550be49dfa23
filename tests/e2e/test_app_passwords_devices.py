"""Signed-in devices through real nginx and Caddy (two authgate workers): ending a session from the
devices page closes it at the proxy within session.cache_ttl; "sign out everywhere else" keeps this one."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest

from tests.e2e.conftest import TOKEN_CACHE_TTL
from tests.e2e.support import CSRF_COOKIE, HTML, PASSWORDS, SESSION_COOKIE, ProxyClient, Reply, Stack

pytestmark = pytest.mark.e2e

DEVICES = "/auth/settings/devices"
_ROW = re.compile(
    r'<li class="device( current)?"[^>]*>\s*<strong>([^<]*).*?/settings/devices/([0-9a-f]{64})/revoke', re.S
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)


@pytest.fixture
def client(http: aiohttp.ClientSession, tokens_stack: Stack) -> ProxyClient:
    return ProxyClient(http, tokens_stack.port)


async def other_sessions(client: ProxyClient, session: str) -> dict[str, str]:
    """Return {id hash: device} of the sessions on the devices page other than this one."""
    page = await client.get(DEVICES, cookies={SESSION_COOKIE: session}, headers=HTML)
    assert page.status == 200, page.text
    return {id_hash: device.strip() for current, device, id_hash in _ROW.findall(page.text) if not current}


async def sign_in_on_iphone(client: ProxyClient, username: str) -> str:
    """Sign in through the portal's form with an iPhone's User-Agent; return the session cookie."""
    secret, token = await client.csrf("/auth/login")
    reply = await client.post(
        "/auth/login",
        cookies={CSRF_COOKIE: secret},
        headers={"User-Agent": IPHONE},
        data={"csrf_token": token, "username": username, "password": PASSWORDS[username]},
    )
    assert reply.status == 303, reply.text
    return reply.cookies[SESSION_COOKIE].value


async def post_from_devices_page(client: ProxyClient, session: str, path: str) -> Reply:
    secret, token = await client.csrf(DEVICES, cookies={SESSION_COOKIE: session})
    return await client.post(
        path, cookies={SESSION_COOKIE: session, CSRF_COOKIE: secret}, data={"csrf_token": token}
    )


async def status_settles(client: ProxyClient, session: str, *, away_from: int) -> tuple[int, float]:
    """Poll a protected page with a session until its status changes; return it and the time taken."""
    started = time.monotonic()
    deadline = started + TOKEN_CACHE_TTL + 3.0
    while True:
        reply = await client.get("/calendar", cookies={SESSION_COOKIE: session}, headers=HTML)
        if reply.status != away_from or time.monotonic() > deadline:
            return reply.status, time.monotonic() - started
        await asyncio.sleep(0.05)


async def test_revoking_a_session_ends_it_at_the_proxy(client: ProxyClient) -> None:
    """The phone's session, ended on the laptop's devices page, is redirected to the login page."""
    laptop = await client.session_for("bob")
    phone = await sign_in_on_iphone(client, "bob")
    for _ in range(4):  # in the cache of whichever workers answer
        assert (await client.get("/calendar", cookies={SESSION_COOKIE: phone}, headers=HTML)).status == 200
    [phone_id] = [
        id_hash for id_hash, device in (await other_sessions(client, laptop)).items() if "iPhone" in device
    ]

    reply = await post_from_devices_page(client, laptop, f"{DEVICES}/{phone_id}/revoke")
    status, took = await status_settles(client, phone, away_from=200)

    assert reply.status == 303, reply.text
    assert status == 302
    assert took <= TOKEN_CACHE_TTL + 1.0, took
    assert (await client.get("/calendar", cookies={SESSION_COOKIE: laptop}, headers=HTML)).status == 200


async def test_sign_out_everywhere_else_keeps_this_session(client: ProxyClient) -> None:
    """After "sign out everywhere else" the other sessions are redirected and this one still gets in."""
    others = [await client.session_for("bob"), await sign_in_on_iphone(client, "bob")]
    laptop = await client.session_for("bob")

    reply = await post_from_devices_page(client, laptop, f"{DEVICES}/revoke-others")
    settled = [await status_settles(client, session, away_from=200) for session in others]

    assert reply.status == 303
    assert [status for status, _ in settled] == [302, 302]
    assert all(took <= TOKEN_CACHE_TTL + 1.0 for _, took in settled), settled
    assert (await client.get("/calendar", cookies={SESSION_COOKIE: laptop}, headers=HTML)).status == 200
    assert await other_sessions(client, laptop) == {}
