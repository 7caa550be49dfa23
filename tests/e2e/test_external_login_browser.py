"""External sign-in in a real Chromium through real Caddy, against a real OIDC provider process.

oidc-provider-mock serves its own authorization page on 127.0.0.1; Chromium presses our button,
types a subject there, and comes back to authgate's callback through Caddy. Each page on the way
(login with provider buttons, link confirmation with and without an error, the refusal page,
settings with a linked provider) is checked with axe-core as in test_accessibility.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, Route, async_playwright, expect

from tests.e2e.support import PASSWORDS, TOTP_PERIOD, ProxyClient, Stack, oathtool_code
from tests.e2e.test_accessibility import Axe, new_context
from tests.e2e.test_two_factor import enrol_through_portal
from tests.external.providers import oidc_provider, oidc_provider_config, put_oidc_user

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

TIMEOUT_MS = 15_000
CALLBACK = re.compile(r"/auth/login/external/mock/callback\?")
HAND_OVER = re.compile(r"/auth/2fa$")
PROVIDER_FORM = re.compile(r"^http://127\.0\.0\.1:\d+/oauth2/authorize\?")


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with oidc_provider(tmp_path_factory.mktemp("oidc-browser")) as url:
        yield url


@pytest.fixture(scope="module")
def external_stack(start_stack: Callable[..., Stack], caddy_bin: str, issuer: str) -> Stack:
    """Caddy + authgate with oidc-provider-mock as "Mock IdP" (example.com addresses allowed)."""
    provider = oidc_provider_config(issuer)
    return start_stack("caddy-external", caddy_bin, overrides={"external_login": {"providers": [provider]}})


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


async def to_provider(page: Page, stack: Stack, target: str) -> None:
    """Open the app, land on the login page, press the provider's button, reach its form."""
    await page.goto(target)
    assert page.url == stack.login_url(target)
    await page.click("button:has-text('Sign in with Mock IdP')")
    await page.wait_for_url(re.compile(r"^http://127\.0\.0\.1:\d+/oauth2/authorize\?"))


async def authorize(page: Page, sub: str) -> None:
    await page.fill("input[name=sub]", sub)
    await page.click("button:has-text('Authorize')")


async def test_link_with_password_then_sign_in_with_the_button(
    external_stack: Stack, issuer: str, browser: Browser, axe_script: Path
) -> None:
    """First sign-in finds alice's e-mail: her password links it; the next sign-in is one click."""
    stack, axe = external_stack, Axe(axe_script)
    put_oidc_user(
        issuer, "idp-alice", {"email": "alice@example.com", "email_verified": True, "name": "Alice"}
    )
    context = await new_context(browser)
    page = await context.new_page()
    target = f"{stack.origin}/hello"
    try:
        await page.goto(target)
        await expect(page.locator("#external-providers button")).to_have_text("Sign in with Mock IdP")
        await axe.check(page, "login with a provider button")
        await to_provider(page, stack, target)
        await authorize(page, "idp-alice")
        await page.wait_for_url(f"{stack.portal_url}/login/external/link")
        await expect(page.locator("main")).to_contain_text("alice@example.com")
        await axe.check(page, "link confirmation")
        await page.fill("#password", "wrong password")
        await page.click("button:has-text('Link and sign in')")
        await expect(page.locator("#link-error")).to_have_attribute("role", "alert")
        await axe.check(page, "link confirmation with an error")
        await page.fill("#password", PASSWORDS["alice"])
        await page.click("button:has-text('Link and sign in')")
        await page.wait_for_url(target)
        identity = page.locator("#identity")
        await expect(identity.locator("tr", has_text="Remote-User").locator("td")).to_have_text("alice")

        await page.goto(f"{stack.portal_url}/settings")
        await expect(page.locator("#external-links")).to_contain_text("Mock IdP")
        await axe.check(page, "settings with a linked provider")

        # Signed out, the button alone signs alice in again: the link is used, no password asked.
        await page.goto(f"{stack.portal_url}/")
        await page.click("button:has-text('Sign out')")
        await page.wait_for_url(f"{stack.portal_url}/login?signed_out=1")
        await to_provider(page, stack, target)
        await authorize(page, "idp-alice")
        await page.wait_for_url(target)
        await expect(identity.locator("tr", has_text="Remote-User").locator("td")).to_have_text("alice")
        assert axe.found == [], "\n".join(axe.found)
    finally:
        await context.close()
    assert [entry["detail"] for entry in stack.log_events("external_account_linked")] == [
        "mock (alice@example.com)"
    ]


async def test_allow_list_refusal_is_a_clear_page(
    external_stack: Stack, issuer: str, browser: Browser, axe_script: Path
) -> None:
    """An address outside the allowed domains ends on a refusal page with an alert; no session."""
    stack, axe = external_stack, Axe(axe_script)
    put_oidc_user(issuer, "idp-mallory", {"email": "mallory@evil.example.org", "email_verified": True})
    context = await new_context(browser)
    page = await context.new_page()
    try:
        await to_provider(page, stack, f"{stack.origin}/hello")
        await authorize(page, "idp-mallory")
        await page.wait_for_url(re.compile(re.escape(f"{stack.portal_url}/login/external/mock/callback?")))
        await expect(page.locator("#external-error")).to_have_attribute("role", "alert")
        await expect(page.locator("#external-error")).to_contain_text("not allowed to sign in here")
        await axe.check(page, "external sign-in refused")
        assert "authgate_session" not in {c["name"] for c in await context.cookies(stack.origin)}
        await page.click("text=Back to sign-in")
        await page.wait_for_url(re.compile(re.escape(f"{stack.portal_url}/login")))
        assert axe.found == [], "\n".join(axe.found)
    finally:
        await context.close()


async def held_callback(page: Page) -> str:
    """Submit the provider's form, but keep its redirect back from the browser; return the callback URL.

    Playwright routes see only the first request of a redirect chain, so the provider's answer is
    fetched by the route itself (without following it) and replaced by a blank page.
    """
    seen: list[str] = []

    async def hold(route: Route) -> None:
        if route.request.method != "POST":
            await route.continue_()
            return
        answer = await route.fetch(max_redirects=0)
        seen.append(answer.headers["location"])
        await route.fulfill(status=200, content_type="text/html", body="<!doctype html><title>held</title>")

    await page.route(PROVIDER_FORM, hold)
    await authorize(page, "idp-alice")
    await expect(page).to_have_title("held")
    await page.unroute(PROVIDER_FORM)
    assert len(seen) == 1 and CALLBACK.search(seen[0]), seen
    return seen[0]


def changed(url: str, name: str, value: str) -> str:
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    return parts._replace(query=urlencode({**query, name: value})).geturl()


@pytest.mark.parametrize("tampered", ["state", "code"])
async def test_tampered_callback_signs_nobody_in(
    external_stack: Stack, issuer: str, browser: Browser, tampered: str
) -> None:
    """A callback with a changed state or code is refused with a clear page, and no session is made."""
    stack = external_stack
    put_oidc_user(issuer, "idp-alice", {"email": "alice@example.com", "email_verified": True})
    context = await new_context(browser)
    page = await context.new_page()
    try:
        await to_provider(page, stack, f"{stack.origin}/hello")
        genuine = await held_callback(page)
        await page.goto(changed(genuine, tampered, "tampered-by-an-attacker"))
        await expect(page.locator("#external-error")).to_contain_text("could not be verified")
        assert "authgate_session" not in {c["name"] for c in await context.cookies(stack.origin)}
        # The state is used up with the refusal: the genuine URL no longer works in this browser.
        await page.goto(genuine)
        await expect(page.locator("#external-error")).to_be_visible()
        assert "authgate_session" not in {c["name"] for c in await context.cookies(stack.origin)}
    finally:
        await context.close()
    reasons = [entry["detail"] for entry in stack.log_events("external_login_failed")]
    expected = "state mismatch" if tampered == "state" else "invalid_grant"
    assert any(expected in reason for reason in reasons), reasons


async def test_link_from_settings_then_our_second_factor(
    external_stack: Stack, issuer: str, browser: Browser, axe_script: Path, oathtool_bin: str
) -> None:
    """bob links the provider in settings; after he enrols TOTP, the provider's sign-in asks for it.

    The pending-login cookie is SameSite=Strict, so the callback hands over to /2fa with a page of
    its own (meta refresh): this checks that a real browser really sends the cookie there.
    """
    stack, axe = external_stack, Axe(axe_script)
    put_oidc_user(issuer, "idp-bob", {"email": "bob.work@example.com", "email_verified": True})
    context = await new_context(browser)
    page = await context.new_page()
    target = f"{stack.origin}/hello"
    try:
        await page.goto(target)
        await page.fill("#username", "bob")
        await page.fill("#password", PASSWORDS["bob"])
        await page.click("#password-fallback button[type=submit]")
        await page.wait_for_url(target)
        await page.goto(f"{stack.portal_url}/settings")
        await page.click("button:has-text('Link a Mock IdP account')")
        await page.wait_for_url(re.compile(r"^http://127\.0\.0\.1:\d+/oauth2/authorize\?"))
        await authorize(page, "idp-bob")
        await page.wait_for_url(f"{stack.portal_url}/settings?done=linked")
        await expect(page.locator("#external-links")).to_contain_text("bob.work@example.com")
    finally:
        await context.close()

    # bob enrols an authenticator app (over plain HTTP through Caddy, as in test_two_factor.py).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        client = ProxyClient(http, stack.port)
        session = await client.session_for("bob")
        secret, enrolled_at = await enrol_through_portal(client, session, "bob", oathtool_bin)

    context = await new_context(browser)
    page = await context.new_page()
    try:
        await to_provider(page, stack, target)
        await authorize(page, "idp-bob")
        # The hand-over page moves on by itself, and /2fa sees the pending login.
        await page.wait_for_url(f"{stack.portal_url}/2fa")
        await page.fill("#code", oathtool_code(oathtool_bin, secret, enrolled_at + TOTP_PERIOD))
        await page.click("button[type=submit]")
        await page.wait_for_url(target)
        identity = page.locator("#identity")
        await expect(identity.locator("tr", has_text="Remote-User").locator("td")).to_have_text("bob")
    finally:
        await context.close()

    # Once more, held at the hand-over page (a 204 for /2fa keeps it on screen) for axe.
    context = await new_context(browser)
    page = await context.new_page()
    try:
        await page.route(HAND_OVER, lambda route: route.fulfill(status=204))
        await to_provider(page, stack, target)
        await authorize(page, "idp-bob")
        await expect(page.locator("#continue")).to_be_visible()
        await axe.check(page, "hand-over to the second factor")
        assert axe.found == [], "\n".join(axe.found)
    finally:
        await context.close()
