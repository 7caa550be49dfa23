"""A real Chromium signs in through nginx and the portal and lands on the app."""

from __future__ import annotations

import pytest
from playwright.async_api import async_playwright, expect

from tests.e2e.support import PASSWORDS, Stack

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 10_000


async def test_browser_login_lands_on_app_with_identity(nginx_stack: Stack, chromium_bin: str) -> None:
    """Chromium is sent to the login page, signs in as alice and sees alice in the app's identity table."""
    target = f"{nginx_stack.origin}/hello"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_bin, args=["--disable-gpu", "--disable-quic"], timeout=TIMEOUT_MS
        )
        try:
            context = await browser.new_context()
            context.set_default_timeout(TIMEOUT_MS)
            page = await context.new_page()

            await page.goto(target)
            assert page.url == nginx_stack.login_url(target)
            await page.fill("#username", "alice")
            await page.fill("#password", PASSWORDS["alice"])
            await page.click("button[type=submit]")

            await page.wait_for_url(target)
            identity = page.locator("#identity")
            await expect(identity.locator("tr", has_text="Remote-User").locator("td")).to_have_text("alice")
            await expect(identity).to_contain_text("alice@example.com")
            cookies = {c["name"]: c for c in await context.cookies(target)}
            assert cookies["authgate_session"]["httpOnly"] is True
        finally:
            await browser.close()
