"""Directory users end to end: a real slapd, authgate, the demo upstream, real nginx and Caddy, Chromium."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright, expect

from tests import slapd as ldap
from tests.e2e.conftest import ACCESS_RULES
from tests.e2e.support import CSRF_COOKIE, HTML, SESSION_COOKIE, ProxyClient, Reply, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

REFRESH = 2.0  # refresh_interval of these stacks
CACHE_TTL = 1.0
LDAP_TIMEOUT = 2.0
# Documented bound (docs/ldap.md): refresh_interval + one re-check tick (>= 1 s) + the LDAP
# timeout + session.cache_ttl. Waiting loops below give it a generous margin on a busy machine.
BOUND = REFRESH + 1.0 + LDAP_TIMEOUT + CACHE_TTL
WAIT = BOUND * 4
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def directory() -> Iterator[ldap.Slapd]:
    server = ldap.launch_or_skip()
    yield server
    server.cleanup()


def _overrides(server: ldap.Slapd) -> dict[str, dict[str, object]]:
    section = ldap.ldap_section(server, refresh_interval=f"{REFRESH:g}s", timeout=f"{LDAP_TIMEOUT:g}s")
    return {"authentication_backend": {"ldap": section}, "session": {"cache_ttl": f"{CACHE_TTL:g}s"}}


@pytest.fixture(scope="module")
def ldap_nginx(start_stack: Callable[..., Stack], nginx_bin: str, directory: ldap.Slapd) -> Stack:
    return start_stack("nginx-ldap", nginx_bin, users=False, overrides=_overrides(directory))


@pytest.fixture(scope="module")
def ldap_caddy(start_stack: Callable[..., Stack], caddy_bin: str, directory: ldap.Slapd) -> Stack:
    return start_stack("caddy-ldap", caddy_bin, users=False, overrides=_overrides(directory))


@pytest.fixture(params=["nginx", "caddy"])
def ldap_stack(request: pytest.FixtureRequest) -> Stack:
    stack: Stack = request.getfixturevalue(f"ldap_{request.param}")
    return stack


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout) as session:
        yield session


async def submit_login(client: ProxyClient, username: str, password: str, target: str) -> Reply:
    secret, token = await client.csrf(f"/auth/login?rd={quote(target, safe='')}")
    return await client.post(
        "/auth/login",
        cookies={CSRF_COOKIE: secret},
        data={"csrf_token": token, "username": username, "password": password, "rd": target},
    )


async def sign_in(client: ProxyClient, username: str) -> str:
    reply = await submit_login(client, username, ldap.PASSWORDS[username], f"http://localhost:{client.port}/")
    assert reply.status == 303, reply.text
    return reply.cookies[SESSION_COOKIE].value


async def upstream(client: ProxyClient, cookie: str, path: str = "/some/page?format=json") -> Reply:
    return await client.get(path, cookies={SESSION_COOKIE: cookie}, headers=HTML)


async def test_directory_user_identity_reaches_the_upstream(
    ldap_stack: Stack, http: aiohttp.ClientSession
) -> None:
    """alice from slapd signs in through the proxy; the upstream receives her directory identity."""
    client = ProxyClient(http, ldap_stack.port)
    cookie = await sign_in(client, "alice")

    reply = await upstream(client, cookie)

    assert reply.status == 200
    assert reply.json()["headers"] == {
        "Remote-User": "alice",
        "Remote-Email": "alice@example.test",
        "Remote-Groups": "admins,devs",
        "Remote-Name": "Alice Liddell",
    }


async def test_directory_groups_decide_group_rules(ldap_stack: Stack, http: aiohttp.ClientSession) -> None:
    """/admin needs group:admins: alice (admins in slapd) passes, bob (devs only) is refused."""
    assert any(rule.get("subject") == "group:admins" for rule in ACCESS_RULES)
    client = ProxyClient(http, ldap_stack.port)

    assert (await upstream(client, await sign_in(client, "alice"), "/admin/x?format=json")).status == 200
    assert (await upstream(client, await sign_in(client, "bob"), "/admin/x?format=json")).status == 403


async def test_hostile_username_through_the_proxy(ldap_stack: Stack, http: aiohttp.ClientSession) -> None:
    """`*)(uid=*` with alice's password signs nobody in through the real proxy."""
    client = ProxyClient(http, ldap_stack.port)

    reply = await submit_login(
        client, "*)(uid=*", ldap.PASSWORDS["alice"], f"http://localhost:{client.port}/"
    )

    assert reply.status == 401
    assert SESSION_COOKIE not in reply.cookies


async def wait_for_status(client: ProxyClient, cookie: str, wanted: int, within: float) -> float:
    """Poll the upstream until it answers `wanted`; return the seconds it took (fail after `within`)."""
    start = time.monotonic()
    while True:
        reply = await upstream(client, cookie)
        if reply.status == wanted:
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"still {reply.status} after {within:g}s"
        await asyncio.sleep(0.25)


async def test_a_user_disabled_in_slapd_loses_access(
    ldap_nginx: Stack, directory: ldap.Slapd, http: aiohttp.ClientSession
) -> None:
    """dave is locked in slapd while signed in: within the documented bound the proxy sends him to login."""
    client = ProxyClient(http, ldap_nginx.port)
    cookie = await sign_in(client, "dave")
    assert (await upstream(client, cookie)).status == 200

    directory.disable("dave")
    took = await wait_for_status(client, cookie, 302, WAIT)
    print(f"dave lost access {took:.1f}s after the change in slapd (bound {BOUND:g}s)")  # noqa: T201

    reply = await submit_login(client, "dave", ldap.PASSWORDS["dave"], f"http://localhost:{client.port}/")
    assert reply.status == 401


async def test_slapd_stopped_and_restarted(
    ldap_nginx: Stack, directory: ldap.Slapd, http: aiohttp.ClientSession
) -> None:
    """With slapd down, a signed-in user keeps access, a new sign-in gets the 503 "directory is
    unavailable" page; once slapd is back, sign-in works again without restarting authgate."""
    client = ProxyClient(http, ldap_nginx.port)
    cookie = await sign_in(client, "alice")
    directory.stop()
    try:
        reply = await submit_login(client, "bob", ldap.PASSWORDS["bob"], f"http://localhost:{client.port}/")
        assert reply.status == 503
        assert "The directory is unavailable" in reply.text
        # Cached sessions keep answering: re-checks fail and are retried, the session stays.
        for _ in range(3):
            assert (await upstream(client, cookie)).status == 200
            await asyncio.sleep(BOUND / 2)
        assert ldap_nginx.log_events("ldap_sync_failed")
    finally:
        directory.start()

    reply = await submit_login(client, "bob", ldap.PASSWORDS["bob"], f"http://localhost:{client.port}/")
    assert reply.status == 303, reply.text
    assert (await upstream(client, cookie)).status == 200


# -- Chromium ---------------------------------------------------------------------------------------

AUTHENTICATOR = {
    "protocol": "ctap2",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "automaticPresenceSimulation": True,
}
NO_AUTOFILL = "PublicKeyCredential.isConditionalMediationAvailable = async () => false;"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium_bin: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_bin, args=["--disable-gpu", "--disable-quic"], timeout=TIMEOUT_MS
        )
        try:
            yield browser
        finally:
            await browser.close()


async def test_chromium_directory_user_enrols_a_passkey_and_signs_in_with_it(
    ldap_nginx: Stack, browser: Browser
) -> None:
    """o'brien (from slapd) signs in with the directory password in Chromium, adds a passkey in
    settings, signs out, and signs back in with the passkey alone."""
    stack = ldap_nginx
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    await context.add_init_script(NO_AUTOFILL)
    page = await context.new_page()
    cdp = await context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable")
    added = await cdp.send("WebAuthn.addVirtualAuthenticator", {"options": AUTHENTICATOR})
    try:
        target = f"{stack.origin}/hello"
        await page.goto(target)
        assert page.url == stack.login_url(target)
        await page.fill("#username", "o'brien")
        await page.fill("#password", ldap.PASSWORDS["o'brien"])
        await page.click("#password-fallback button[type=submit]")
        await page.wait_for_url(target)
        await expect(page.locator("#identity tr", has_text="Remote-User").locator("td")).to_have_text(
            "o'brien"
        )

        await page.goto(f"{stack.portal_url}/settings")
        await page.click("text=Add a security key or passkey")
        await page.wait_for_url(re.compile(re.escape(f"{stack.portal_url}/settings?named=") + r"\d+$"))
        await expect(page.locator("#webauthn-devices .device")).to_have_count(1)
        credentials = await cdp.send("WebAuthn.getCredentials", {"authenticatorId": added["authenticatorId"]})
        assert len(credentials["credentials"]) == 1

        await page.goto(f"{stack.portal_url}/")
        await page.click("button:has-text('Sign out')")
        await page.wait_for_url(f"{stack.portal_url}/login?signed_out=1")
        await page.goto(target)
        await page.click("#passkey-button")
        await page.wait_for_url(target)
        await expect(page.locator("#identity tr", has_text="Remote-User").locator("td")).to_have_text(
            "o'brien"
        )
    finally:
        await context.close()
