"""Chromium through real nginx: create an app password, copy it with the page's button, use it."""

from __future__ import annotations

import re

import aiohttp
import pytest
from playwright.async_api import async_playwright, expect

from tests.e2e.support import PASSWORDS, ProxyClient, Stack, basic

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 10_000


async def test_browser_creates_copies_and_a_client_uses_a_token(
    nginx_tokens_stack: Stack, chromium_bin: str, http: aiohttp.ClientSession
) -> None:
    """bob creates a token in Chromium, clicks Copy, and an HTTP client gets in with it over Basic."""
    stack = nginx_tokens_stack
    portal = stack.portal_url
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_bin, args=["--disable-gpu", "--disable-quic"], timeout=TIMEOUT_MS
        )
        try:
            context = await browser.new_context()
            await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack.origin)
            context.set_default_timeout(TIMEOUT_MS)
            page = await context.new_page()

            await page.goto(f"{portal}/")
            await page.fill("#username", "bob")
            await page.fill("#password", PASSWORDS["bob"])
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{portal}/")
            await page.get_by_role("link", name="App passwords").click()
            await page.wait_for_url(f"{portal}/settings/tokens")
            await page.get_by_label("Name").fill("Thunderbird on laptop")
            await page.get_by_role("button", name="Create").click()

            shown = page.locator("#new-token")
            await expect(shown).to_have_text(re.compile(r"agp_[0-9A-Za-z]{48}"))
            copy = page.locator("button[data-copy='new-token']")
            await copy.click()
            # copy.js writes to the clipboard, or else selects the token for Ctrl+C and says so.
            await expect(copy).to_have_text(re.compile("Copied|Selected"))
            if await copy.inner_text() == "Copied":
                copied = (await page.evaluate("navigator.clipboard.readText()")).strip()
            else:
                copied = (await page.evaluate("window.getSelection().toString()")).strip()
            assert copied == (await shown.inner_text()).strip()

            await page.goto(f"{portal}/settings/tokens")  # shown once: not on the next visit
            await expect(page.locator("#new-token")).to_have_count(0)
            await expect(page.locator("#tokens")).to_contain_text("Thunderbird on laptop")
        finally:
            await browser.close()

    client = ProxyClient(http, stack.port)
    reply = await client.request("PROPFIND", "/dav/calendars/bob/?format=json", headers=basic("bob", copied))

    assert reply.status == 200, reply.text
    assert reply.json()["headers"]["Remote-User"] == "bob"
