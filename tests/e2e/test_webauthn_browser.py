"""Passkeys and security keys in a real Chromium (virtual authenticators over CDP) through real nginx."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_der_private_key
from playwright.async_api import Browser, CDPSession, Page, async_playwright, expect

from tests.e2e.conftest import TWO_FACTOR_RULES
from tests.e2e.support import PASSWORDS, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

TIMEOUT_MS = 10_000
AUTHENTICATOR = {
    "protocol": "ctap2",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "automaticPresenceSimulation": True,
}


@pytest.fixture(scope="module")
def webauthn_stack(start_stack: Callable[..., Stack], nginx_bin: str) -> Stack:
    """nginx + authgate of this module's own (its users get keys); portal at http://localhost:PORT/auth.

    authgate derives rp_id "localhost" from the cookie domain and the origin from the portal URL,
    the only combination Chromium accepts over plain http.
    """
    return start_stack("nginx-webauthn", nginx_bin, rules=TWO_FACTOR_RULES)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium_bin: str) -> AsyncIterator[Browser]:
    """One Chromium for the module; each test opens its own context."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_bin, args=["--disable-gpu", "--disable-quic"], timeout=TIMEOUT_MS
        )
        try:
            yield browser
        finally:
            await browser.close()


# Chromium's virtual authenticator answers a conditional (autofill) request at once, as if the user
# had picked the passkey from the username field's suggestions; to exercise the button, hide autofill.
NO_AUTOFILL = "PublicKeyCredential.isConditionalMediationAvailable = async () => false;"


async def page_with_authenticator(
    browser: Browser, *, autofill: bool = True, **options: Any
) -> tuple[Page, CDPSession, str]:
    """Open a fresh context and page with a virtual authenticator; return (page, CDP session, its id)."""
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    if not autofill:
        await context.add_init_script(NO_AUTOFILL)
    page = await context.new_page()
    cdp = await context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable")
    added = await cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {**AUTHENTICATOR, **options}})
    return page, cdp, added["authenticatorId"]


async def password_sign_in(page: Page, stack: Stack, username: str, target: str) -> None:
    await page.goto(target)
    assert page.url == stack.login_url(target)
    await page.fill("#username", username)
    await page.fill("#password", PASSWORDS[username])
    await page.click("#password-fallback button[type=submit]")


async def add_key_in_settings(page: Page, stack: Stack) -> None:
    await page.goto(f"{stack.portal_url}/settings")
    await expect(page).to_have_title("Security settings · authgate")
    await page.click("text=Add a security key or passkey")
    await page.wait_for_url(re.compile(re.escape(f"{stack.portal_url}/settings?named=") + r"\d+$"))
    await expect(page.locator("#webauthn-devices .device")).to_have_count(1)


async def sign_out(page: Page, stack: Stack) -> None:
    await page.goto(f"{stack.portal_url}/")
    await page.click("button:has-text('Sign out')")
    await page.wait_for_url(f"{stack.portal_url}/login?signed_out=1")


async def expect_identity(page: Page, username: str) -> None:
    identity = page.locator("#identity")
    await expect(identity.locator("tr", has_text="Remote-User").locator("td")).to_have_text(username)


async def test_passkey_registered_in_settings_signs_in_without_password(
    webauthn_stack: Stack, browser: Browser
) -> None:
    """Alice adds a passkey in settings, signs out, and "Sign in with a passkey" opens a two_factor area."""
    stack = webauthn_stack
    page, cdp, authenticator = await page_with_authenticator(browser, autofill=False)
    try:
        await password_sign_in(page, stack, "alice", f"{stack.origin}/hello")
        await page.wait_for_url(f"{stack.origin}/hello")
        assert page.url.startswith("http://localhost:")

        await add_key_in_settings(page, stack)
        await expect(page.locator("#webauthn-devices")).to_contain_text("Passkey")
        [credential] = (await cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator}))[
            "credentials"
        ]
        assert credential["isResidentCredential"] is True
        # py_webauthn offers EdDSA first, so Chromium made an Ed25519 key; the server must verify it.
        key = load_der_private_key(base64.b64decode(credential["privateKey"]), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        await sign_out(page, stack)

        vault = f"{stack.origin}/vault/passkey?x=1"
        await page.goto(vault)
        assert page.url == stack.login_url(vault)
        await page.click("#passkey-button")

        await page.wait_for_url(vault)
        await expect_identity(page, "alice")
        [credential] = (await cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator}))[
            "credentials"
        ]
        assert credential["signCount"] >= 1
    finally:
        await page.context.close()

    # The same passkey (with its current counter) in another browser, offered through autofill.
    page, cdp, authenticator = await page_with_authenticator(browser)
    try:
        await cdp.send("WebAuthn.addCredential", {"authenticatorId": authenticator, "credential": credential})
        target = f"{stack.origin}/vault/autofill"
        await page.goto(target)
        await page.wait_for_url(target)
        await expect_identity(page, "alice")
    finally:
        await page.context.close()


async def test_security_key_as_second_factor_after_password(webauthn_stack: Stack, browser: Browser) -> None:
    """Bob registers a non-discoverable key on a second authenticator, then uses it after his password."""
    stack = webauthn_stack
    page, cdp, authenticator = await page_with_authenticator(browser, hasResidentKey=False)
    try:
        await password_sign_in(page, stack, "bob", f"{stack.origin}/hello")
        await page.wait_for_url(f"{stack.origin}/hello")
        await add_key_in_settings(page, stack)
        [credential] = (await cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator}))[
            "credentials"
        ]
        assert credential["isResidentCredential"] is False
        await sign_out(page, stack)

        vault = f"{stack.origin}/vault/key"
        await password_sign_in(page, stack, "bob", vault)
        await page.wait_for_url(f"{stack.portal_url}/2fa")
        await expect(page).to_have_title("Second factor · authgate")
        await page.click("#webauthn-second-factor")

        await page.wait_for_url(vault)
        await expect_identity(page, "bob")
    finally:
        await page.context.close()
