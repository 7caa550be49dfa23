"""App passwords through the real nginx (nginx.conf.example) and Caddy (Caddyfile.example).

A CalDAV-style client (no cookies, no portal) sends `Authorization: Basic user:token` or
`Bearer token`. bob stays password-only, so his tokens are one_factor; alice enrols TOTP once per
stack, so tokens made in her two-factor session satisfy the /vault two_factor rule.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import aiohttp
import pytest

from tests.e2e.conftest import TOKEN_CACHE_TTL, TOKEN_HOST
from tests.e2e.support import (
    CSRF_COOKIE,
    HTML,
    PASSWORDS,
    ROOT,
    SESSION_COOKIE,
    ProxyClient,
    Reply,
    Stack,
    basic,
    bearer,
    create_app_password,
    enrolment_fields,
    oathtool_code,
)

pytestmark = pytest.mark.e2e

CHALLENGE = 'Basic realm="authgate", charset="UTF-8"'
DAV = "/dav/calendars/{user}/?format=json"
# alice's two-factor session per stack: TOTP codes cannot be replayed, so she enrols only once.
_TWO_FACTOR_SESSIONS: dict[str, str] = {}


@pytest.fixture
def client(http: aiohttp.ClientSession, tokens_stack: Stack) -> ProxyClient:
    return ProxyClient(http, tokens_stack.port)


async def propfind(client: ProxyClient, path: str, headers: dict[str, str]) -> Reply:
    """Ask like a CalDAV client: PROPFIND, no cookies, no HTML."""
    return await client.request("PROPFIND", path, headers={"Depth": "1", **headers})


def assert_challenged(reply: Reply) -> None:
    """A real 401 the client can answer with credentials, not a redirect to a login page."""
    assert reply.status == 401, reply.text
    assert reply.headers.getall("WWW-Authenticate") == [CHALLENGE]
    assert "Location" not in reply.headers


async def two_factor_session(stack: Stack, client: ProxyClient, oathtool_bin: str) -> str:
    """Return a session of alice's at level two (she enrols TOTP on this stack the first time)."""
    if stack.kind not in _TWO_FACTOR_SESSIONS:
        session = await client.session_for("alice")
        page = await client.get("/auth/settings/totp/new", cookies={SESSION_COOKIE: session}, headers=HTML)
        assert page.status == 200, page.text
        secret, token = enrolment_fields(page.text)
        csrf_secret, csrf_token = await client.csrf("/auth/login")
        data = {
            "csrf_token": csrf_token,
            "token": token,
            "name": "phone",
            "password": PASSWORDS["alice"],
            "code": oathtool_code(oathtool_bin, secret, time.time()),
        }
        reply = await client.post(
            "/auth/settings/totp/new", cookies={SESSION_COOKIE: session, CSRF_COOKIE: csrf_secret}, data=data
        )
        assert reply.status == 200, reply.text
        # Password and code were just checked: the enrolment raised the session to two factors.
        _TWO_FACTOR_SESSIONS[stack.kind] = reply.cookies[SESSION_COOKIE].value
    return _TWO_FACTOR_SESSIONS[stack.kind]


def revoke_with_cli(stack: Stack, username: str, name: str) -> None:
    """Revoke from another process, as an admin would: the server's cache is not told."""
    config = stack.authgate_log.parent / "authgate.yml"
    command = [sys.executable, "-m", "gateway", "--config", str(config), "users", "tokens", "revoke"]
    done = subprocess.run(  # noqa: S603 - fixed interpreter and arguments
        [*command, username, name], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_basic_token_reaches_protected_path(client: ProxyClient) -> None:
    """PROPFIND with Basic bob:token reaches the app with the identity bob's browser session gets."""
    session = await client.session_for("bob")
    token = await create_app_password(client, session, "DAVx5 on phone")

    reply = await propfind(client, DAV.format(user="bob"), basic("bob", token))

    assert reply.status == 200, reply.text
    assert reply.json()["path"] == "/dav/calendars/bob/"
    assert reply.json()["method"] == "PROPFIND"
    received = reply.json()["headers"]
    assert received["Remote-User"] == "bob"
    assert received["Remote-Email"] == "bob@example.com"
    browser = await client.get(DAV.format(user="bob"), cookies={SESSION_COOKIE: session}, headers=HTML)
    assert received == browser.json()["headers"]


async def test_bearer_token_reaches_protected_path(client: ProxyClient) -> None:
    """GET with Authorization: Bearer token reaches the app as bob."""
    token = await create_app_password(client, await client.session_for("bob"), "backup script")

    reply = await client.get("/api/items?format=json", headers=bearer(token))

    assert reply.status == 200, reply.text
    assert reply.json()["headers"]["Remote-User"] == "bob"


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
async def test_wrong_token_gets_401_with_challenge(client: ProxyClient, scheme: str) -> None:
    """An unknown token gets 401 + WWW-Authenticate through the proxy, never a redirect."""
    wrong = "agp_" + "x" * 48
    headers = basic("bob", wrong) if scheme == "basic" else bearer(wrong)

    reply = await propfind(client, DAV.format(user="bob"), headers)

    assert_challenged(reply)


@pytest.mark.parametrize("path", ["/dav/calendars/bob/", "/vault/report"], ids=["one_factor", "two_factor"])
async def test_account_password_over_basic_is_refused(client: ProxyClient, path: str) -> None:
    """bob's real password over Basic gets 401 + WWW-Authenticate, on a two_factor rule too."""
    reply = await propfind(client, path, basic("bob", PASSWORDS["bob"]))

    assert_challenged(reply)


async def test_password_only_token_is_refused_on_two_factor_rule(client: ProxyClient) -> None:
    """A token made in a password-only session is one_factor: /vault answers 403, other paths 200."""
    token = await create_app_password(client, await client.session_for("bob"), "one-factor token")

    vault = await propfind(client, "/vault/report?format=json", basic("bob", token))
    dav = await propfind(client, DAV.format(user="bob"), basic("bob", token))

    assert vault.status == 403
    assert dav.status == 200


async def test_two_factor_token_satisfies_two_factor_rule(
    tokens_stack: Stack, client: ProxyClient, oathtool_bin: str
) -> None:
    """A token made in alice's two-factor session opens /vault with her identity."""
    session = await two_factor_session(tokens_stack, client, oathtool_bin)
    token = await create_app_password(client, session, "vault sync")

    reply = await propfind(client, "/vault/report?format=json", basic("alice", token))

    assert reply.status == 200, reply.text
    assert reply.json()["path"] == "/vault/report"
    assert reply.json()["headers"]["Remote-User"] == "alice"
    assert (await client.get("/vault/x?format=json", headers=bearer(token))).status == 200


async def test_revoked_token_stops_within_cache_ttl(tokens_stack: Stack, client: ProxyClient) -> None:
    """A token revoked by another process (the CLI) gets 401 within session.cache_ttl."""
    token = await create_app_password(client, await client.session_for("bob"), "revoke me")
    headers = basic("bob", token)
    for _ in range(4):  # a few requests, so the workers have it cached
        assert (await propfind(client, DAV.format(user="bob"), headers)).status == 200

    revoke_with_cli(tokens_stack, "bob", "revoke me")
    revoked_at = time.monotonic()
    deadline = revoked_at + TOKEN_CACHE_TTL + 3.0
    reply = await propfind(client, DAV.format(user="bob"), headers)
    while reply.status == 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        reply = await propfind(client, DAV.format(user="bob"), headers)
    stopped_after = time.monotonic() - revoked_at

    assert_challenged(reply)
    # The bound plus the time of one poll and request.
    assert stopped_after <= TOKEN_CACHE_TTL + 1.0, stopped_after
    for _ in range(4):  # and it stays refused on every worker
        assert (await propfind(client, DAV.format(user="bob"), headers)).status == 401


async def test_domain_limited_token_is_refused_on_another_host(
    tokens_stack: Stack, client: ProxyClient
) -> None:
    """A token limited to cal.localhost works there and gets 403 on localhost."""
    token = await create_app_password(client, await client.session_for("bob"), "calendar", domains=TOKEN_HOST)
    on_cal = {"Host": f"{TOKEN_HOST}:{tokens_stack.port}"}

    allowed = await propfind(client, DAV.format(user="bob"), {**basic("bob", token), **on_cal})
    refused = await propfind(client, DAV.format(user="bob"), basic("bob", token))

    assert allowed.status == 200, allowed.text
    assert allowed.json()["headers"]["Remote-User"] == "bob"
    assert refused.status == 403
    assert "WWW-Authenticate" not in refused.headers


async def test_browser_without_credentials_is_still_redirected(
    tokens_stack: Stack, client: ProxyClient
) -> None:
    """Only a 401 with a challenge stays a 401: browser navigation still goes to the portal."""
    page = await client.get("/dav/calendars/bob/", headers=HTML)
    vault = await client.get(
        "/vault/report", cookies={SESSION_COOKIE: await client.session_for("bob")}, headers=HTML
    )

    assert page.status == 302
    assert page.headers["Location"] == tokens_stack.login_url(f"{tokens_stack.origin}/dav/calendars/bob/")
    assert "WWW-Authenticate" not in page.headers
    assert vault.status == 302  # the two-factor step-up, not a bare 401
    assert vault.headers["Location"].startswith(f"{tokens_stack.portal_url}/2fa?rd=")
