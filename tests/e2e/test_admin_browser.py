"""A real phone-sized Chromium runs the admin console through nginx: create, search, audit row."""

from __future__ import annotations

import pytest
from playwright.async_api import async_playwright, expect

from tests.e2e.support import PASSWORDS, Stack

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 10_000
PHONE = {"width": 390, "height": 844}


async def test_admin_creates_a_user_finds_it_and_sees_the_audit_row(
    nginx_stack: Stack, chromium_bin: str
) -> None:
    """alice (an admin) creates erin on a phone-sized window, finds her by search, sees the audit row."""
    portal = nginx_stack.portal_url
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_bin, args=["--disable-gpu", "--disable-quic"], timeout=TIMEOUT_MS
        )
        try:
            context = await browser.new_context(viewport=PHONE)
            context.set_default_timeout(TIMEOUT_MS)
            page = await context.new_page()

            await page.goto(f"{portal}/admin/users")
            assert page.url.startswith(f"{portal}/login")  # anonymous: sign in first
            await page.fill("#username", "alice")
            await page.fill("#password", PASSWORDS["alice"])
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{portal}/")
            await page.get_by_role("link", name="Users").click()
            await page.get_by_role("link", name="New user").click()

            await page.get_by_label("Username", exact=True).fill("erin")
            await page.get_by_label("E-mail", exact=True).fill("erin@example.com")
            await page.get_by_label("Groups", exact=True).fill("dev")
            await page.get_by_label("Set an initial password").check()
            await page.get_by_label("Initial password (when setting one)").fill("erin-correct-horse")
            await page.get_by_role("button", name="Create user").click()
            await page.wait_for_url(f"{portal}/admin/users/erin?done=created")
            await expect(page.locator("#notice")).to_have_text("User created.")
            width = await page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], f"the page scrolls sideways on a phone: {width}"

            await page.goto(f"{portal}/admin/users")
            await page.get_by_label("Search users").fill("ERIN@example")
            await page.get_by_role("button", name="Search").click()
            await expect(page.locator("#users tbody tr")).to_have_count(1)
            await expect(page.locator("#users tbody")).to_contain_text("erin@example.com")

            await page.goto(f"{portal}/admin/audit?target=erin")
            row = page.locator("#audit tbody tr", has_text="admin user created")
            await expect(row).to_have_count(1)
            await expect(row).to_contain_text("alice")
        finally:
            await browser.close()
