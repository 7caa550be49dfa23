"""axe-core over every portal page in a real Chromium, light and dark, through real nginx.

One walk from first-run setup to the admin console visits each page the way a user reaches it;
at every stop axe (pinned in deploy/test-tools) checks the page as rendered, and the test fails
listing each violation's rule id, impact and the elements concerned.
"""

from __future__ import annotations

import asyncio
import email
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from tests.e2e.conftest import TWO_FACTOR_RULES
from tests.e2e.support import Stack, oathtool_code
from tests.e2e.test_webauthn_browser import NO_AUTOFILL

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

TIMEOUT_MS = 15_000
ADMIN_PASSWORD = "first-admin-passphrase"  # noqa: S105 - a test account
BOB_PASSWORD = "bob-new-passphrase"  # noqa: S105 - a test account
AUTHENTICATOR = {
    "protocol": "ctap2",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "automaticPresenceSimulation": True,
}
# Violations as plain data: rule id, impact, help text and "selector: what is wrong" per element.
AXE_RUN = """async () => {
  const result = await axe.run(document, { resultTypes: ["violations"] });
  return result.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map((n) => n.target.join(" ") + ": " + (n.failureSummary || "").replace(/\\s+/g, " ")),
  }));
}"""
_LINK = re.compile(r"(http://localhost:\d+/auth/(?:reset|recover)/[A-Za-z0-9_\-]+)")


@pytest.fixture(scope="module")
def fresh_stack(start_stack: Callable[..., Stack], nginx_bin: str) -> Stack:
    """nginx + an authgate with no account yet, so the walk starts at first-run setup."""
    return start_stack("nginx-a11y", nginx_bin, rules=TWO_FACTOR_RULES, users=False)


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


class Axe:
    """Run axe on the current page in the light and the dark colour scheme; keep what it finds."""

    def __init__(self, script: Path) -> None:
        self.script = script
        self.checked: list[str] = []
        self.found: list[str] = []

    async def check(self, page: Page, name: str) -> None:
        await page.wait_for_load_state("load")
        await page.add_script_tag(path=str(self.script))
        for scheme in ("light", "dark"):
            await page.emulate_media(color_scheme=scheme)
            for violation in await page.evaluate(AXE_RUN):
                nodes = "\n      ".join(violation["nodes"])
                self.found.append(
                    f"{name} ({scheme}): {violation['id']} [{violation['impact']}] {violation['help']}\n"
                    f"      {nodes}"
                )
        await page.emulate_media(color_scheme="light")
        self.checked.append(name)


async def new_context(browser: Browser) -> BrowserContext:
    # axe is injected as an inline script, which the portal's CSP (script-src 'self') would refuse.
    context = await browser.new_context(bypass_csp=True)
    context.set_default_timeout(TIMEOUT_MS)
    # The virtual authenticator would answer the login page's autofill request at once and sign in.
    await context.add_init_script(NO_AUTOFILL)
    return context


def mailed_link(stack: Stack, kind: str) -> str:
    """Return the newest /reset/ or /recover/ link the file notifier wrote."""
    mail = stack.authgate_log.parent / "data" / "mail"
    for path in sorted(mail.glob("*.eml"), reverse=True):
        message = email.message_from_bytes(path.read_bytes())
        body = str(message.get_payload(decode=True), "utf-8")
        found = _LINK.search(body)
        if found and f"/auth/{kind}/" in found.group(1):
            return found.group(1)
    raise AssertionError(f"no {kind} link in {mail}")


async def sign_out(page: Page, stack: Stack) -> None:
    await page.goto(f"{stack.portal_url}/")
    await page.click("button:has-text('Sign out')")
    await page.wait_for_url(f"{stack.portal_url}/login?signed_out=1")


async def test_every_portal_page_passes_axe(
    fresh_stack: Stack, browser: Browser, axe_script: Path, oathtool_bin: str
) -> None:
    """Setup, the welcome step, settings, factors, tokens, devices, admin, recovery and reset pass axe."""
    stack, portal, axe = fresh_stack, fresh_stack.portal_url, Axe(axe_script)
    context = await new_context(browser)
    page = await context.new_page()
    try:
        # First run: setup (clean, then with errors), then the welcome step without a platform
        # authenticator: the authenticator app is the one recommended action.
        await page.goto(f"{stack.origin}/")
        await page.wait_for_url(re.compile(re.escape(f"{portal}/setup")))
        await axe.check(page, "setup")
        await page.fill("#username", "root")
        await page.fill("#email", "root@example.com")
        await page.fill("#password", ADMIN_PASSWORD)
        await page.fill("#password_confirm", ADMIN_PASSWORD + "x")
        await page.click("button[type=submit]")
        await expect(page.locator("#setup-errors")).to_have_attribute("role", "alert")
        await axe.check(page, "setup with errors")
        await page.fill("#password", ADMIN_PASSWORD)
        await page.fill("#password_confirm", ADMIN_PASSWORD)
        await page.click("button[type=submit]")
        await page.wait_for_url(re.compile(re.escape(f"{portal}/settings?done=welcome")))
        await expect(page.locator("#recommend-totp")).to_be_visible()
        await expect(page.locator("#recommend-passkey")).to_be_hidden()
        await axe.check(page, "welcome step (authenticator app)")

        # A device with a built-in authenticator: the passkey becomes the recommended action.
        cdp = await context.new_cdp_session(page)
        await cdp.send("WebAuthn.enable")
        added = await cdp.send("WebAuthn.addVirtualAuthenticator", {"options": AUTHENTICATOR})
        await page.reload()
        await expect(page.locator("#recommend-passkey")).to_be_visible()
        await expect(page.locator("#recommend-totp")).to_be_hidden()
        await axe.check(page, "welcome step (passkey)")
        await page.click("#recommend-passkey button[data-webauthn=register]")
        await page.wait_for_url(re.compile(re.escape(f"{portal}/settings?named=") + r"\d+$"))
        await axe.check(page, "settings (new passkey)")

        # Recovery codes on their own (no authenticator app yet), shown once.
        await page.fill("#recovery-password", ADMIN_PASSWORD)
        await page.click("#recovery-create")
        await expect(page.locator("#recovery-codes li")).to_have_count(10)
        await axe.check(page, "recovery codes")
        await page.click("text=I have saved them, continue")
        await expect(page.locator("#security-events")).to_contain_text("account created")
        await axe.check(page, "settings")

        # Authenticator app enrolment, with a wrong code first.
        await page.goto(f"{portal}/settings/totp/new")
        await axe.check(page, "TOTP enrolment")
        secret = (await page.locator("#totp-secret").inner_text()).replace(" ", "")
        await page.fill("#password", ADMIN_PASSWORD)
        await page.fill("#code", "000000")
        await page.click("button:has-text('Add device')")
        await expect(page.locator("#enrol-error")).to_have_attribute("role", "alert")
        await axe.check(page, "TOTP enrolment with an error")
        await page.fill("#password", ADMIN_PASSWORD)
        await page.fill("#code", oathtool_code(oathtool_bin, secret, time.time()))
        await page.click("button:has-text('Add device')")
        await page.wait_for_url(f"{portal}/settings?done=added")

        # App passwords (the list and the token shown once), signed-in devices, the account page.
        await page.goto(f"{portal}/settings/tokens")
        await axe.check(page, "app passwords")
        await page.fill("#token-name", "calendar")
        await page.click("form.stack button[type=submit]")
        await expect(page.locator("#new-token")).to_be_visible()
        await axe.check(page, "app password created")
        for path, name in (("/settings/devices", "signed-in devices"), ("/", "account")):
            await page.goto(f"{portal}{path}")
            await axe.check(page, name)
        await page.goto(f"{portal}/reauth?rd={portal}/")
        await axe.check(page, "re-authentication")

        # The admin console: users, a new user (with errors, then created), a user, the audit log.
        await page.goto(f"{portal}/admin/users")
        await axe.check(page, "admin users")
        await page.goto(f"{portal}/admin/users/new")
        await axe.check(page, "admin new user")
        await page.fill("#username", "Bad Name")
        await page.click("button:has-text('Create user')")
        await expect(page.locator("#form-errors")).to_be_visible()
        await axe.check(page, "admin new user with errors")
        await page.fill("#username", "bob")
        await page.fill("#email", "bob@example.com")
        await page.fill("#password", "bob-initial-passphrase")
        await page.click("button:has-text('Create user')")
        await page.wait_for_url(re.compile(re.escape(f"{portal}/admin/users/bob")))
        await axe.check(page, "admin user")
        await page.click("button:has-text('Send password reset link')")
        await expect(page.locator("#notice")).to_be_visible()
        await page.goto(f"{portal}/admin/audit")
        await axe.check(page, "admin audit log")

        # Second-factor pages: sign out, password, then each method.
        await sign_out(page, stack)
        await axe.check(page, "login (signed out, passkey button)")
        # A failed passkey ceremony is announced as an alert (progress is only a status).
        verified = {"authenticatorId": added["authenticatorId"], "isUserVerified": False}
        await cdp.send("WebAuthn.setUserVerified", verified)
        await page.click("#passkey-button")
        await expect(page.locator("#passkey-status")).to_have_text("The request was cancelled or timed out.")
        await expect(page.locator("#passkey-status")).to_have_attribute("role", "alert")
        await axe.check(page, "login with a passkey error")
        await page.fill("#username", "root")
        await page.fill("#password", "wrong password")
        await page.click("#password-fallback button[type=submit]")
        await expect(page.locator("#login-error")).to_have_attribute("role", "alert")
        await axe.check(page, "login with an error")
        await page.fill("#password", ADMIN_PASSWORD)
        await page.click("#password-fallback button[type=submit]")
        await page.wait_for_url(re.compile(re.escape(f"{portal}/2fa")))
        for method in ("webauthn", "totp", "recovery"):
            await page.goto(f"{portal}/2fa?method={method}")
            await axe.check(page, f"second factor ({method})")
        await page.fill("#code", "0000-0000-0000")
        await page.click("button:has-text('Verify')")
        await expect(page.locator("#code-error")).to_have_attribute("role", "alert")
        await axe.check(page, "second factor with an error")
    finally:
        await context.close()

    # Pages reached from mail, in a browser that is not signed in: reset and recovery links.
    context = await new_context(browser)
    page = await context.new_page()
    try:
        await page.goto(mailed_link(stack, "reset"))
        await axe.check(page, "password reset")
        await page.fill("#password", BOB_PASSWORD)
        await page.fill("#confirm", BOB_PASSWORD + "x")
        await page.click("button:has-text('Set password')")
        await expect(page.locator("#reset-error")).to_have_attribute("role", "alert")
        await axe.check(page, "password reset with an error")
        await page.goto(f"{portal}/recover")
        await axe.check(page, "recovery request")
        await page.fill("#email", "root@example.com")
        await page.click("button:has-text('Send me a link')")
        await expect(page.locator("#recover-sent")).to_be_visible()
        await axe.check(page, "recovery request sent")
        await _wait_for_link(stack, "recover")  # the mail is sent in the background
        await page.goto(mailed_link(stack, "recover"))
        await axe.check(page, "recovery link")
        await page.goto(f"{portal}/recover/no-such-link")
        await expect(page.locator("h1")).to_have_text("This link no longer works")
        await axe.check(page, "message page")
        await page.goto(f"{portal}/login")
        await axe.check(page, "login (fresh browser)")
    finally:
        await context.close()

    assert not axe.found, f"axe found {len(axe.found)} violation(s):\n  " + "\n  ".join(axe.found)
    assert len(axe.checked) >= 30, axe.checked


async def _wait_for_link(stack: Stack, kind: str) -> None:
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        try:
            mailed_link(stack, kind)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.1)


async def test_axe_reports_planted_faults(fresh_stack: Stack, browser: Browser, axe_script: Path) -> None:
    """The checker is live: an image without alt text and faint text on a portal page are reported."""
    context = await new_context(browser)
    page = await context.new_page()
    try:
        await page.goto(f"{fresh_stack.portal_url}/recover")
        await page.evaluate(
            """() => {
              const main = document.querySelector("main");
              main.insertAdjacentHTML("beforeend", '<img src="data:," width="4" height="4">');
              main.insertAdjacentHTML("beforeend", '<p style="color:#ccc;background:#fff">faint</p>');
            }"""
        )
        axe = Axe(axe_script)
        await axe.check(page, "recover with planted faults")
    finally:
        await context.close()

    reported = " ".join(axe.found)
    assert "image-alt" in reported and "color-contrast" in reported, reported
