"""authgate as an OpenID Provider end to end: a real relying party, real Caddy and nginx, real Chromium.

The relying party (tests/e2e/oidc_rp.py: aiohttp + joserfc, no authgate code) discovers the
provider through the proxy, sends Chromium to the authorization endpoint, and verifies the ID
token against the published JWKS. Alice signs in with a passkey (virtual authenticator);
Bob, signed in with his password only, is stepped up with a TOTP code from oathtool when the
relying party asks for acr two_factor.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from gateway.config import Argon2Config
from gateway.factors.passwords import PasswordHasher
from tests.e2e.support import (
    CSRF_COOKIE,
    HTML,
    PASSWORDS,
    ROOT,
    SESSION_COOKIE,
    ProxyClient,
    Service,
    Stack,
    enrolment_fields,
    free_ports,
    oathtool_code,
)
from tests.e2e.test_accessibility import Axe

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

TIMEOUT_MS = 15_000
RP_SECRET = "relying-party-secret-0123456789abcdefghij"
AUTHENTICATOR = {
    "protocol": "ctap2",
    "transport": "internal",
    "hasResidentKey": True,
    "hasUserVerification": True,
    "isUserVerified": True,
    "automaticPresenceSimulation": True,
}
NO_AUTOFILL = "PublicKeyCredential.isConditionalMediationAvailable = async () => false;"


class OidcStack:
    def __init__(self, stack: Stack, rp_port: int) -> None:
        self.stack = stack
        self.rp = f"http://localhost:{rp_port}"


@pytest.fixture(scope="module", params=["caddy", "nginx"])
def oidc_stack(
    request: pytest.FixtureRequest,
    start_stack: Callable[..., Stack],
    tmp_path_factory: pytest.TempPathFactory,
) -> Any:
    """A proxy (Caddy, then nginx, each with the shipped example config) + authgate with one
    confidential client, and the relying party process."""
    kind = request.param
    proxy_bin = request.getfixturevalue(f"{kind}_bin")
    (rp_port,) = free_ports(1)
    rp = f"http://localhost:{rp_port}"
    secret_hash = PasswordHasher(Argon2Config(time_cost=1, memory_cost=64, parallelism=1)).hash(RP_SECRET)
    stack = start_stack(
        f"{kind}-oidc",
        proxy_bin,
        overrides={
            "oidc_provider": {
                "clients": [
                    {
                        "client_id": "rp",
                        "client_name": "Test relying party",
                        "client_secret": secret_hash,
                        "redirect_uris": [f"{rp}/callback"],
                        "post_logout_redirect_uris": [f"{rp}/signed-out"],
                        "scopes": ["openid", "profile", "email", "groups", "offline_access"],
                        "grant_types": ["authorization_code", "refresh_token"],
                        "authorization_policy": "one_factor",
                    }
                ]
            }
        },
    )
    directory = tmp_path_factory.mktemp("rp")
    service = Service.start(
        "relying party",
        [
            sys.executable,
            str(ROOT / "tests/e2e/oidc_rp.py"),
            *("--port", str(rp_port), "--issuer", stack.portal_url, "--proxy", f"127.0.0.1:{stack.port}"),
            *("--client-id", "rp"),
        ],
        directory / "rp.log",
        env={**os.environ, "RP_CLIENT_SECRET": RP_SECRET},
    )
    stack.services.append(service)
    service.wait_for_port(rp_port)
    return OidcStack(stack, rp_port)


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


async def result_of(page: Page) -> dict[str, Any]:
    return dict(json.loads(await page.locator("#result").inner_text()))


async def allow_consent(page: Page) -> None:
    await expect(page.locator("#oidc-consent")).to_be_visible()
    await expect(page.locator("h1")).to_have_text("Allow Test relying party?")
    await page.click("#oidc-consent button[value=allow]")


async def test_passkey_sign_in_at_a_relying_party(oidc_stack: OidcStack, browser: Browser) -> None:
    """Alice adds a passkey, signs out, and signs in at the app with the passkey alone; the app
    verifies the ID token (amr hwk) against the JWKS, refreshes (rotation) and logs her out."""
    stack = oidc_stack.stack
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    await context.add_init_script(NO_AUTOFILL)
    page = await context.new_page()
    cdp = await context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable")
    await cdp.send("WebAuthn.addVirtualAuthenticator", {"options": AUTHENTICATOR})
    try:
        await page.goto(f"{stack.portal_url}/login")
        await page.fill("#username", "alice")
        await page.fill("#password", PASSWORDS["alice"])
        await page.click("#password-fallback button[type=submit]")
        await page.goto(f"{stack.portal_url}/settings")
        await page.click("text=Add a security key or passkey")
        await page.wait_for_url(re.compile(re.escape(f"{stack.portal_url}/settings?named=") + r"\d+$"))
        await page.goto(f"{stack.portal_url}/")
        await page.click("button:has-text('Sign out')")
        await page.wait_for_url(f"{stack.portal_url}/login?signed_out=1")

        await page.goto(f"{oidc_stack.rp}/login")
        await page.wait_for_url(re.compile(re.escape(f"{stack.portal_url}/login?rd=")))
        await page.click("#passkey-button")
        await allow_consent(page)
        await page.wait_for_url(re.compile(re.escape(f"{oidc_stack.rp}/callback?")))
        await expect(page.locator("h1")).to_have_text("Signed in")
        result = await result_of(page)
        claims = result["id_token"]
        assert claims["preferred_username"] == "alice" and claims["email"] == "alice@example.com"
        assert claims["groups"] == ["admins"]
        assert "hwk" in claims["amr"] and "pwd" not in claims["amr"] and claims["acr"] == "two_factor"
        assert result["userinfo_status"] == 200 and result["userinfo"]["sub"] == claims["sub"]

        await page.click("#refresh")
        await expect(page.locator("h1")).to_have_text("Refreshed")
        assert (await result_of(page))["rotated"] is True

        await page.click("#logout")
        await page.wait_for_url(f"{oidc_stack.rp}/signed-out?state=rp-logout")
        await page.goto(f"{stack.portal_url}/")
        await page.wait_for_url(re.compile(re.escape(f"{stack.portal_url}/login")))
    finally:
        await context.close()


async def test_a_replayed_callback_is_refused_by_the_app(oidc_stack: OidcStack, browser: Browser) -> None:
    """A callback carrying another sign-in's state (and a used code) is refused: state mismatch.

    Runs before bob gets a TOTP device in the step-up test.
    """
    stack = oidc_stack.stack
    first = await browser.new_context()
    first.set_default_timeout(TIMEOUT_MS)
    page = await first.new_page()
    try:
        await page.goto(f"{oidc_stack.rp}/login?scope=openid")
        await page.fill("#username", "bob")
        await page.fill("#password", PASSWORDS["bob"])
        await page.click("#password-fallback button[type=submit]")
        await allow_consent(page)
        await expect(page.locator("h1")).to_have_text("Signed in")
        used_callback = page.url
    finally:
        await first.close()
    second = await browser.new_context()
    second.set_default_timeout(TIMEOUT_MS)
    page = await second.new_page()
    try:
        await page.goto(f"{oidc_stack.rp}/login?scope=openid")  # a new sign-in with a new state
        await page.wait_for_url(re.compile(re.escape(f"{stack.portal_url}/login?rd=")))
        await page.goto(used_callback)
        await expect(page.locator("h1")).to_have_text("State mismatch")
    finally:
        await second.close()


async def test_consent_and_connected_apps_pages_pass_axe(
    oidc_stack: OidcStack, browser: Browser, axe_script: Path
) -> None:
    """axe-core finds nothing on the consent screen, the settings page's connected apps, and the
    sign-out confirmation (light and dark). Runs before bob gets a TOTP device."""
    stack = oidc_stack.stack
    axe = Axe(axe_script)
    context = await browser.new_context(bypass_csp=True)  # axe is injected as an inline script
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    try:
        await page.goto(f"{oidc_stack.rp}/login?scope=openid%20email%20groups")
        await page.fill("#username", "bob")
        await page.fill("#password", PASSWORDS["bob"])
        await page.click("#password-fallback button[type=submit]")
        await expect(page.locator("#oidc-consent")).to_be_visible()
        await axe.check(page, "consent")
        await page.click("#oidc-consent button[value=allow]")
        await expect(page.locator("h1")).to_have_text("Signed in")
        await page.goto(f"{stack.portal_url}/settings")
        await expect(page.locator("#connected-apps")).to_contain_text("Test relying party")
        await axe.check(page, "settings with connected apps")
        await page.goto(f"{stack.portal_url}/api/oidc/logout")
        await expect(page.locator("h1")).to_have_text("Sign out?")
        await axe.check(page, "sign-out confirmation")
    finally:
        await context.close()
    assert axe.checked == ["consent", "settings with connected apps", "sign-out confirmation"]
    assert not axe.found, f"axe found {len(axe.found)} violation(s):\n  " + "\n  ".join(axe.found)


async def _enrol_totp_elsewhere(stack: Stack, oathtool: str) -> tuple[str, float]:
    """Enrol a TOTP device for bob from another (HTTP) session; the browser's session stays level one."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        client = ProxyClient(http, stack.port)
        session = await client.session_for("bob")
        page = await client.get("/auth/settings/totp/new", cookies={SESSION_COOKIE: session}, headers=HTML)
        secret, token = enrolment_fields(page.text)
        csrf_secret, csrf_token = await client.csrf("/auth/login")
        now = time.time()
        reply = await client.post(
            "/auth/settings/totp/new",
            cookies={SESSION_COOKIE: session, CSRF_COOKIE: csrf_secret},
            data={
                "csrf_token": csrf_token,
                "token": token,
                "name": "phone",
                "password": PASSWORDS["bob"],
                "code": oathtool_code(oathtool, secret, now),
            },
        )
        assert reply.status == 200, reply.text
    return secret, now


async def test_totp_step_up_when_the_app_asks_for_two_factors(
    oidc_stack: OidcStack, browser: Browser, oathtool_bin: str
) -> None:
    """Bob's password session is enough for acr one_factor; acr_values=two_factor sends him to the
    second-factor page, and the app gets acr two_factor with amr pwd+otp."""
    stack = oidc_stack.stack
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    try:
        await page.goto(f"{oidc_stack.rp}/login?scope=openid%20profile")
        await page.wait_for_url(re.compile(re.escape(f"{stack.portal_url}/login?rd=")))
        await page.fill("#username", "bob")
        await page.fill("#password", PASSWORDS["bob"])
        await page.click("#password-fallback button[type=submit]")
        await allow_consent(page)
        await expect(page.locator("h1")).to_have_text("Signed in")
        first = (await result_of(page))["id_token"]
        assert first["amr"] == ["pwd"] and first["acr"] == "one_factor"

        secret, enrolled_at = await _enrol_totp_elsewhere(stack, oathtool_bin)
        await page.goto(f"{oidc_stack.rp}/login?scope=openid%20profile&acr=two_factor")
        await page.wait_for_url(re.compile(re.escape(f"{stack.portal_url}/2fa?rd=")))
        await expect(page.locator("h1")).to_have_text("Confirm it's you")
        # the next time step: the enrolment used the code of its own
        await page.fill("#code", oathtool_code(oathtool_bin, secret, enrolled_at + 30))
        await page.click("form[action='/auth/2fa'] button[type=submit]")
        await page.wait_for_url(re.compile(re.escape(f"{oidc_stack.rp}/callback?")))
        await expect(page.locator("h1")).to_have_text("Signed in")
        claims = (await result_of(page))["id_token"]
        assert claims["acr"] == "two_factor" and claims["amr"] == ["pwd", "otp", "mfa"]
    finally:
        await context.close()


async def test_rp_module_has_no_authgate_imports() -> None:
    """The relying party is independent of authgate's code: it checks the tokens on its own."""
    text = Path(ROOT / "tests/e2e/oidc_rp.py").read_text()
    assert "gateway" not in re.findall(r"^(?:from|import) (\w+)", text, re.M)
