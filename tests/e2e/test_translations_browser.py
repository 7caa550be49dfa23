"""A real Chromium switches the portal to German with the picker and signs in, through nginx."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from tests.e2e.support import PASSWORDS, Stack
from tests.e2e.test_accessibility import Axe

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 10_000


async def test_picker_switches_to_german_and_login_completes(nginx_stack: Stack, chromium_bin: str) -> None:
    """An English browser picks Deutsch, gets the German login page (rd kept), signs in and stays German."""
    target = f"{nginx_stack.origin}/hello"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_bin, args=["--disable-gpu", "--disable-quic"], timeout=TIMEOUT_MS
        )
        try:
            context = await browser.new_context(locale="en-US")
            context.set_default_timeout(TIMEOUT_MS)
            page = await context.new_page()

            await page.goto(target)
            assert page.url == nginx_stack.login_url(target)
            await expect(page.locator("html")).to_have_attribute("lang", "en")
            await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")

            # The picker is a labelled <select> whose options name each language in itself.
            picker = page.get_by_label("Language")
            await expect(picker.locator("option[lang=de]")).to_have_text("Deutsch")
            await picker.select_option("de")
            async with page.expect_navigation():
                await page.get_by_role("button", name="Change language").click()

            assert page.url == nginx_stack.login_url(target)  # back on the same page, rd kept
            await expect(page.locator("html")).to_have_attribute("lang", "de")
            await expect(page.get_by_role("heading", level=1)).to_have_text("Anmelden")
            await expect(page.get_by_label("Sprache")).to_have_value("de")
            # The scripts' messages (static/i18n.js) speak German too, placeholders filled.
            said = await page.evaluate('authgateText("The server answered %(status)s", {status: 503})')
            assert said == "Der Server antwortete mit 503"
            cookies = {c["name"]: c for c in await context.cookies(f"{nginx_stack.portal_url}/login")}
            assert cookies["authgate_lang"]["value"] == "de"
            assert cookies["authgate_lang"]["httpOnly"] is True
            assert cookies["authgate_lang"]["sameSite"] == "Lax"

            await page.get_by_label("Benutzername oder E-Mail").fill("alice")
            await page.get_by_label("Passwort").fill(PASSWORDS["alice"])
            await page.get_by_role("button", name="Anmelden", exact=True).click()
            await page.wait_for_url(target)
            await expect(page.locator("#identity")).to_contain_text("alice")

            await page.goto(f"{nginx_stack.portal_url}/")
            await expect(page.locator("html")).to_have_attribute("lang", "de")
            await expect(page.get_by_role("status")).to_contain_text("Sie sind als alice angemeldet.")
            await page.get_by_role("button", name="Abmelden").click()
            await expect(page.get_by_role("status")).to_have_text("Sie wurden abgemeldet.")
        finally:
            await browser.close()


async def test_browser_language_is_used_without_a_choice(nginx_stack: Stack, chromium_bin: str) -> None:
    """A French Chromium (its Accept-Language) gets the French login page with no cookie set."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_bin, args=["--disable-gpu", "--disable-quic"], timeout=TIMEOUT_MS
        )
        try:
            context = await browser.new_context(locale="fr-FR")
            context.set_default_timeout(TIMEOUT_MS)
            page = await context.new_page()
            await page.goto(f"{nginx_stack.portal_url}/login")
            await expect(page.locator("html")).to_have_attribute("lang", "fr")
            await expect(page.get_by_role("heading", level=1)).to_have_text("Se connecter")
            await expect(page.get_by_label("Langue")).to_have_value("fr")
            assert "authgate_lang" not in {
                c["name"] for c in await context.cookies(f"{nginx_stack.portal_url}/login")
            }
        finally:
            await browser.close()


@pytest.mark.parametrize("language", ["de", "fr", "es"])
async def test_translated_pages_pass_axe(
    nginx_stack: Stack, chromium_bin: str, axe_script: Path, language: str
) -> None:
    """axe-core finds nothing on the translated login and account pages (lang attributes, labels)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_bin, args=["--disable-gpu", "--disable-quic"], timeout=TIMEOUT_MS
        )
        try:
            # axe is injected as an inline script, which the portal's CSP would refuse.
            context = await browser.new_context(locale=language, bypass_csp=True)
            context.set_default_timeout(TIMEOUT_MS)
            page = await context.new_page()
            axe = Axe(axe_script)
            await page.goto(f"{nginx_stack.portal_url}/login")
            await expect(page.locator("html")).to_have_attribute("lang", language)
            await axe.check(page, f"login ({language})")
            await page.fill("#username", "alice")
            await page.fill("#password", PASSWORDS["alice"])
            async with page.expect_navigation():
                await page.click("#password-fallback button[type=submit]")
            for path in ("/", "/settings", "/settings/devices", "/settings/tokens", "/recover"):
                await page.goto(f"{nginx_stack.portal_url}{path}")
                await expect(page.locator("html")).to_have_attribute("lang", language)
                await axe.check(page, f"{path} ({language})")
            assert not axe.found, f"axe found {len(axe.found)} violation(s):\n  " + "\n  ".join(axe.found)
        finally:
            await browser.close()
