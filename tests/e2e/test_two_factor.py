"""Second factors end to end: a two_factor rule behind real nginx, and TOTP enrolment in Chromium."""

from __future__ import annotations

import time
from urllib.parse import quote

import aiohttp
import pytest
from playwright.async_api import async_playwright, expect

from tests.e2e.support import (
    CSRF_COOKIE,
    HTML,
    PASSWORDS,
    SESSION_COOKIE,
    TOTP_PERIOD,
    ProxyClient,
    Stack,
    enrolment_fields,
    oathtool_code,
)

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 10_000


async def enrol_through_portal(
    client: ProxyClient, session: str, username: str, oathtool: str
) -> tuple[str, float]:
    """Enrol a TOTP device through the proxy; return its secret and the time its code was made."""
    page = await client.get("/auth/settings/totp/new", cookies={SESSION_COOKIE: session}, headers=HTML)
    assert page.status == 200, page.text
    secret, token = enrolment_fields(page.text)
    csrf_secret, csrf_token = await client.csrf("/auth/login")
    now = time.time()
    data = {
        "csrf_token": csrf_token,
        "token": token,
        "name": "pixel-7 authy",
        "password": PASSWORDS[username],
        "code": oathtool_code(oathtool, secret, now),
    }
    reply = await client.post(
        "/auth/settings/totp/new", cookies={SESSION_COOKIE: session, CSRF_COOKIE: csrf_secret}, data=data
    )
    assert reply.status == 200, reply.text
    assert 'id="recovery-codes"' in reply.text
    return secret, now


async def test_nginx_two_factor_rule_demands_totp_then_serves_app(
    nginx_2fa_stack: Stack, http: aiohttp.ClientSession, oathtool_bin: str
) -> None:
    """A level-one session hitting /vault goes to /auth/2fa; after an oathtool code nginx serves the app."""
    stack = nginx_2fa_stack
    client = ProxyClient(http, stack.port)
    level_one = await client.session_for("bob")  # this browser signed in before bob had a factor
    secret, enrolled_at = await enrol_through_portal(
        client, await client.session_for("bob"), "bob", oathtool_bin
    )
    target = f"{stack.origin}/vault/report?format=json"

    gate = await client.get("/vault/report?format=json", cookies={SESSION_COOKIE: level_one}, headers=HTML)
    assert gate.status == 302
    assert gate.headers["Location"] == f"{stack.portal_url}/2fa?rd={quote(target, safe='')}"
    step = await client.get(
        gate.headers["Location"].removeprefix(stack.origin), cookies={SESSION_COOKIE: level_one}, headers=HTML
    )
    assert step.status == 200
    assert "Confirm it" in step.text
    csrf_secret, csrf_token = await client.csrf("/auth/login")
    # The next time step: the enrolment already used the code of its own step.
    code = oathtool_code(oathtool_bin, secret, enrolled_at + TOTP_PERIOD)
    done = await client.post(
        "/auth/2fa",
        cookies={SESSION_COOKIE: level_one, CSRF_COOKIE: csrf_secret},
        data={"csrf_token": csrf_token, "code": code, "method": "totp", "rd": target},
    )

    assert done.status == 303, done.text
    assert done.headers["Location"] == target
    session = done.cookies[SESSION_COOKIE].value
    assert session != level_one
    app = await client.get("/vault/report?format=json", cookies={SESSION_COOKIE: session}, headers=HTML)
    assert app.status == 200
    received = app.json()
    assert received["path"] == "/vault/report"
    assert received["headers"]["Remote-User"] == "bob"
    assert received["headers"]["Remote-Email"] == "bob@example.com"
    assert received["headers"]["Remote-Name"] == "Bob"


async def test_browser_enrols_totp_then_signs_in_with_code(
    nginx_2fa_stack: Stack, chromium_bin: str, oathtool_bin: str
) -> None:
    """Chromium enrols TOTP from the secret on the page, signs out, and signs in with password + code."""
    stack = nginx_2fa_stack
    target = f"{stack.origin}/hello"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_bin, args=["--disable-gpu", "--disable-quic"], timeout=TIMEOUT_MS
        )
        try:
            context = await browser.new_context()
            context.set_default_timeout(TIMEOUT_MS)
            page = await context.new_page()

            await page.goto(target)
            await page.fill("#username", "alice")
            await page.fill("#password", PASSWORDS["alice"])
            await page.click("button[type=submit]")
            await page.wait_for_url(target)

            await page.goto(f"{stack.portal_url}/settings")
            await page.click("a[href='/auth/settings/totp/new']")
            await page.wait_for_url(f"{stack.portal_url}/settings/totp/new")
            secret = (await page.locator("#totp-secret").inner_text()).replace(" ", "")
            enrolled_at = time.time()
            await page.fill("#name", "chromium phone")
            await page.fill("#password", PASSWORDS["alice"])
            await page.fill("#code", oathtool_code(oathtool_bin, secret, enrolled_at))
            await page.click("form[action='/auth/settings/totp/new'] button[type=submit]")
            await expect(page.locator("#recovery-codes li")).to_have_count(10)
            await page.click("text=I have saved them, continue")
            await page.wait_for_url(f"{stack.portal_url}/settings?done=added")
            await expect(page.locator(".devices")).to_contain_text("chromium phone")

            await page.goto(f"{stack.portal_url}/")
            await page.click("button:has-text('Sign out')")
            await page.wait_for_url(f"{stack.portal_url}/login?signed_out=1")

            await page.goto(target)
            assert page.url == stack.login_url(target)
            await page.fill("#username", "alice")
            await page.fill("#password", PASSWORDS["alice"])
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{stack.portal_url}/2fa")
            await page.fill("#code", oathtool_code(oathtool_bin, secret, enrolled_at + TOTP_PERIOD))
            await page.click("button[type=submit]")

            await page.wait_for_url(target)
            identity = page.locator("#identity")
            await expect(identity.locator("tr", has_text="Remote-User").locator("td")).to_have_text("alice")
        finally:
            await browser.close()
