"""Helpers for HTTP tests: config, clock, users, login and forward-auth requests."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from gateway.config import Config, parse_config
from gateway.factors import totp
from gateway.factors.passwords import PasswordHasher
from gateway.models import User
from gateway.services import SERVICES, Services
from tests.webauthn_authenticator import SoftAuthenticator

SESSION_COOKIE = "authgate_session"
CSRF_COOKIE = "authgate_csrf"
PASSWORD = "correct horse battery"
KEY_A = "a" * 40
KEY_B = "b" * 40

_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class Clock:
    """A clock the test moves by hand; starts at the real time so signed timestamps agree."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(
    tmp_path: Path, overrides: Mapping[str, Any] | None = None, *, engine: Mapping[str, Any] | None = None
) -> Config:
    """Return a test configuration: cheap argon2, http cookies on localhost, apps under *.localhost.

    `engine`: settings that pick the storage engine (tests/http/conftest.py's storage_engine).
    """
    base: dict[str, Any] = {
        "storage": {"data_dir": str(tmp_path / "data")},
        "secrets": {"session_keys": [KEY_A]},
        "password": {"time_cost": 1, "memory_cost": 64, "parallelism": 1},
        "session": {
            "secure": False,
            "cookies": [{"domain": "localhost", "portal_url": "http://localhost:8080/auth"}],
            "expiration": "1h",
            "inactivity": "5m",
            "remember_me": "1d",
            "cache_ttl": "5s",
            "activity_flush_interval": "10s",
        },
        "regulation": {"max_retries": 3, "find_time": "2m", "ban_time": "5m"},
        "access_control": {
            "default_policy": "deny",
            "rules": [
                {"domain": "public.localhost", "policy": "bypass"},
                {"domain": "admin.localhost", "subject": "group:admins", "policy": "one_factor"},
                {"domain": "admin.localhost", "policy": "deny"},
                {"domain": "*.localhost", "policy": "one_factor"},
            ],
        },
    }
    return parse_config(_merge(_merge(base, engine or {}), overrides or {}))


MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


def services(client: TestClient[Any, Any]) -> Services:
    return client.server.app[SERVICES]


async def add_user(
    client: TestClient[Any, Any],
    username: str = "alice",
    *,
    password: str = PASSWORD,
    email: str | None = None,
    groups: tuple[str, ...] = ("dev",),
    name: str | None = None,
) -> User:
    """Create a user straight in the store."""
    svc = services(client)
    password_hash = PasswordHasher(svc.config.password).hash(password)
    return await svc.store.create_user(
        username, email or f"{username}@example.com", name or username.title(), groups, password_hash
    )


def cookie_header(**cookies: str) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{name}={value}" for name, value in cookies.items())}


async def csrf_pair(client: TestClient[Any, Any], path: str = "/auth/login") -> tuple[str, str]:
    """Return (CSRF cookie value, form token) from a fresh portal page."""
    response = await client.get(path, allow_redirects=False)
    assert response.status == 200, await response.text()
    match = _TOKEN.search(await response.text())
    assert match is not None
    return response.cookies[CSRF_COOKIE].value, match.group(1)


async def login(
    client: TestClient[Any, Any],
    username: str = "alice",
    password: str = PASSWORD,
    *,
    rd: str | None = None,
    remember: bool = False,
    session: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ClientResponse:
    """Submit the login form as a browser would (CSRF cookie and token included)."""
    secret, token = await csrf_pair(client)
    form = {"csrf_token": token, "username": username, "password": password}
    if rd is not None:
        form["rd"] = rd
    if remember:
        form["remember_me"] = "on"
    cookies = {CSRF_COOKIE: secret}
    if session is not None:
        cookies[SESSION_COOKIE] = session
    return await client.post(
        "/auth/login",
        data=form,
        headers={**cookie_header(**cookies), **(headers or {})},
        allow_redirects=False,
    )


async def signed_in(client: TestClient[Any, Any], username: str = "alice", **kwargs: Any) -> str:
    """Log in and return the session cookie value."""
    response = await login(client, username, **kwargs)
    assert response.status == 303, await response.text()
    return response.cookies[SESSION_COOKIE].value


BROWSER = "text/html,application/xhtml+xml,*/*;q=0.8"


async def forward_auth(
    client: TestClient[Any, Any],
    session: str | None = None,
    *,
    host: str = "app.localhost",
    uri: str = "/page?x=1",
    method: str = "GET",
    proto: str = "http",
    accept: str = BROWSER,
    extra: Mapping[str, str] | None = None,
) -> ClientResponse:
    """Ask forward-auth about a request, as Traefik or Caddy would."""
    headers = CIMultiDict(
        {
            "X-Forwarded-Method": method,
            "X-Forwarded-Proto": proto,
            "X-Forwarded-Host": host,
            "X-Forwarded-Uri": uri,
            "Accept": accept,
        }
    )
    if session is not None:
        headers["Cookie"] = f"{SESSION_COOKIE}={session}"
    headers.update(extra or {})
    return await client.get("/api/authz/forward-auth", headers=headers, allow_redirects=False)


async def auth_request(
    client: TestClient[Any, Any],
    session: str | None = None,
    *,
    url: str = "http://app.localhost/page?x=1",
    accept: str = BROWSER,
) -> ClientResponse:
    """Ask auth-request about a request, as nginx would."""
    headers = {"X-Original-URL": url, "X-Original-Method": "GET", "Accept": accept}
    if session is not None:
        headers["Cookie"] = f"{SESSION_COOKIE}={session}"
    return await client.get("/api/authz/auth-request", headers=headers, allow_redirects=False)


# Second factors: TOTP codes from oathtool, enrolment through the portal, the 2FA step.

PENDING_COOKIE = "authgate_2fa"
_TOTP_SECRET = re.compile(r'id="totp-secret"[^>]*>([^<]+)<')
_ENROL_TOKEN = re.compile(r'name="token" value="([^"]+)"')
_RECOVERY_CODE = re.compile(r"<code>([0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{4})</code>")


def oathtool_path() -> str:
    """Return the oathtool binary; fail under CI (it must run there), skip elsewhere."""
    found = shutil.which("oathtool")
    if found is None:
        message = "oathtool not found; run `bash deploy/ensure-test-tools.sh` or `apt-get install oathtool`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def totp_code(secret: str, at: float, *, digits: int = 6, period: int = 30, algorithm: str = "SHA1") -> str:
    """Return the code oathtool computes for a base32 secret at Unix time `at` (an independent TOTP)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
    command = [oathtool_path(), f"--totp={algorithm}", "-b", "-d", str(digits), "-s", f"{period}s"]
    done = subprocess.run(  # noqa: S603 - fixed binary, arguments from the test
        [*command, "--now", when, secret.replace(" ", "")],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def with_cookies(session: str | None = None, pending: str | None = None, **others: str) -> dict[str, str]:
    """Return a Cookie header holding the given session, pending-login and other cookies."""
    cookies = dict(others)
    if session is not None:
        cookies[SESSION_COOKIE] = session
    if pending is not None:
        cookies[PENDING_COOKIE] = pending
    return cookie_header(**cookies) if cookies else {}


async def portal_get(
    client: TestClient[Any, Any], path: str, *, session: str | None = None, pending: str | None = None
) -> ClientResponse:
    """GET a portal page with the given cookies, never following redirects."""
    return await client.get(path, headers=with_cookies(session, pending), allow_redirects=False)


async def portal_post(
    client: TestClient[Any, Any],
    path: str,
    data: Mapping[str, str],
    *,
    session: str | None = None,
    pending: str | None = None,
) -> ClientResponse:
    """POST a portal form as a browser would (a fresh CSRF cookie and token included)."""
    secret, token = await csrf_pair(client)
    return await client.post(
        path,
        data={"csrf_token": token, **data},
        headers=with_cookies(session, pending, **{CSRF_COOKIE: secret}),
        allow_redirects=False,
    )


async def open_enrolment(client: TestClient[Any, Any], session: str) -> tuple[str, str]:
    """Load the "add an authenticator app" page; return (secret read from #totp-secret, signed token)."""
    response = await portal_get(client, "/auth/settings/totp/new", session=session)
    text = await response.text()
    assert response.status == 200, text
    secret = _TOTP_SECRET.search(text)
    token = _ENROL_TOKEN.search(text)
    assert secret is not None and token is not None, text
    return secret.group(1).strip(), token.group(1)


async def confirm_enrolment(
    client: TestClient[Any, Any],
    session: str,
    token: str,
    code: str,
    *,
    password: str = PASSWORD,
    name: str = "pixel-7 authy",
    rd: str | None = None,
) -> ClientResponse:
    """Submit the enrolment form (password + current code)."""
    data = {"token": token, "code": code, "password": password, "name": name}
    if rd is not None:
        data["rd"] = rd
    return await portal_post(client, "/auth/settings/totp/new", data, session=session)


def recovery_codes_in(text: str) -> list[str]:
    """Return the recovery codes shown on a page (#recovery-codes)."""
    return _RECOVERY_CODE.findall(text.split('id="recovery-codes"', 1)[1]) if "recovery-codes" in text else []


async def enrol_totp(
    client: TestClient[Any, Any], session: str, clock: Clock, *, name: str = "pixel-7 authy"
) -> tuple[str, str, list[str]]:
    """Enrol a TOTP device through the portal; return (new session, secret, first recovery codes)."""
    secret, token = await open_enrolment(client, session)
    response = await confirm_enrolment(client, session, token, totp_code(secret, clock()), name=name)
    text = await response.text()
    assert response.status in (200, 303), text
    return response.cookies[SESSION_COOKIE].value, secret, recovery_codes_in(text)


async def password_step(client: TestClient[Any, Any], username: str = "alice", **kwargs: Any) -> str:
    """Pass the password form of a user who has a second factor; return the pending-login cookie."""
    response = await login(client, username, **kwargs)
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/auth/2fa"
    assert SESSION_COOKIE not in response.cookies
    return response.cookies[PENDING_COOKIE].value


async def submit_code(
    client: TestClient[Any, Any],
    code: str,
    *,
    pending: str | None = None,
    session: str | None = None,
    method: str = "totp",
    rd: str | None = None,
) -> ClientResponse:
    """Submit the second-factor form with a TOTP or recovery code."""
    data = {"code": code, "method": method}
    if rd is not None:
        data["rd"] = rd
    return await portal_post(client, "/auth/2fa", data, session=session, pending=pending)


async def add_totp_device(
    client: TestClient[Any, Any], user: User, *, name: str = "pixel-7 authy", secret: str | None = None
) -> str:
    """Store a TOTP device for a user straight through the service (no portal); return its secret."""
    two_factor = services(client).two_factor
    secret = secret or two_factor.new_enrolment(account=user.username).secret
    await two_factor.add_totp(user.id, name, secret, 0)
    return secret


def wrong_code(secret: str, at: float, *, period: int = 30) -> str:
    """Return a 6-digit code that is valid for no time step within ten steps of `at`."""
    step = int(at // period)
    valid = {totp.code_at(secret, s, digits=6, algorithm="SHA1") for s in range(step - 10, step + 11)}
    return next(c for c in ("123456", "654321", "000000", "111111", "999999") if c not in valid)


# WebAuthn: ceremonies through the portal's JSON endpoints, answered by tests/webauthn_authenticator.py.

PORTAL_ORIGIN = "http://localhost:8080"  # the origin of build_config's portal_url (RP ID localhost)
CSRF_HEADER = "X-CSRF-Token"
LAST_LOGIN_COOKIE = "authgate_last"


async def json_post(
    client: TestClient[Any, Any],
    path: str,
    body: Any,
    *,
    session: str | None = None,
    pending: str | None = None,
    csrf: bool = True,
    headers: Mapping[str, str] | None = None,
    raw: bytes | None = None,
) -> ClientResponse:
    """POST JSON as static/webauthn.js does: CSRF cookie plus the page's token in X-CSRF-Token."""
    secret, token = await csrf_pair(client)
    sent = {
        "Content-Type": "application/json",
        **with_cookies(session, pending, **{CSRF_COOKIE: secret}),
        **({CSRF_HEADER: token} if csrf else {}),
        **(headers or {}),
    }
    data = raw if raw is not None else json.dumps(body).encode()
    return await client.post(path, data=data, headers=sent, allow_redirects=False)


async def ceremony(
    client: TestClient[Any, Any],
    path: str,
    body: Mapping[str, Any] | None = None,
    *,
    session: str | None = None,
    pending: str | None = None,
) -> tuple[str, str]:
    """Start a WebAuthn ceremony; return (challenge id, options JSON as the browser receives it)."""
    response = await json_post(client, path, dict(body or {}), session=session, pending=pending)
    data = await response.json()
    assert response.status == 200, data
    return data["challenge_id"], json.dumps(data["options"])


async def register_key(
    client: TestClient[Any, Any],
    session: str,
    authenticator: SoftAuthenticator,
    *,
    origin: str = PORTAL_ORIGIN,
) -> ClientResponse:
    """Register a device from settings (options, the authenticator's answer, register)."""
    challenge_id, options = await ceremony(client, "/auth/settings/webauthn/options", session=session)
    credential = authenticator.register(options, origin=origin)
    body = {"challenge_id": challenge_id, "credential": credential}
    return await json_post(client, "/auth/settings/webauthn/register", body, session=session)


async def registered_session(
    client: TestClient[Any, Any], session: str, authenticator: SoftAuthenticator
) -> str:
    """Register a device and return the session to use afterwards (a new id when the level rose)."""
    response = await register_key(client, session, authenticator)
    assert response.status == 200, await response.text()
    return response.cookies[SESSION_COOKIE].value if SESSION_COOKIE in response.cookies else session


async def passkey_login(
    client: TestClient[Any, Any],
    authenticator: SoftAuthenticator,
    *,
    rd: str = "",
    challenge_id: str | None = None,
    options: str | None = None,
) -> ClientResponse:
    """Sign in with a passkey: empty allowCredentials, the authenticator picks its discoverable key."""
    if challenge_id is None or options is None:
        challenge_id, options = await ceremony(client, "/auth/login/passkey/options", {"rd": rd})
    credential = authenticator.assert_(options, origin=PORTAL_ORIGIN)
    body = {"challenge_id": challenge_id, "credential": credential, "rd": rd}
    return await json_post(client, "/auth/login/passkey", body)


async def key_second_factor(
    client: TestClient[Any, Any],
    authenticator: SoftAuthenticator,
    *,
    pending: str | None = None,
    session: str | None = None,
    rd: str = "",
) -> ClientResponse:
    """Complete the second-factor step (or a step-up) with a security key."""
    challenge_id, options = await ceremony(
        client, "/auth/2fa/webauthn/options", {"rd": rd}, session=session, pending=pending
    )
    credential = authenticator.assert_(options, origin=PORTAL_ORIGIN)
    body = {"challenge_id": challenge_id, "credential": credential, "rd": rd}
    return await json_post(client, "/auth/2fa/webauthn", body, session=session, pending=pending)


# App passwords: created on the settings page, sent as Basic or Bearer credentials.

TOKENS_PAGE = "/auth/settings/tokens"
_NEW_TOKEN = re.compile(r'id="new-token"[^>]*>(agp_[0-9A-Za-z]+)<')
_TOKEN_ROW = re.compile(r"<strong>([^<]+)</strong>.*?/settings/tokens/(\d+)/revoke", re.S)


def basic_auth(username: str, secret: str) -> dict[str, str]:
    """Return an Authorization header for HTTP Basic."""
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode()}


def bearer_auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_token_in(text: str) -> str | None:
    """Return the app password shown once in #new-token, or None."""
    found = _NEW_TOKEN.search(text)
    return found.group(1) if found else None


def token_rows(text: str) -> dict[str, int]:
    """Return {name: id} of the app passwords listed on the tokens page (#tokens)."""
    listed = text.split('id="tokens"', 1)[1] if 'id="tokens"' in text else ""
    return {name: int(token_id) for name, token_id in _TOKEN_ROW.findall(listed)}


async def submit_token_form(
    client: TestClient[Any, Any], session: str, name: str, *, domains: str = "", expiry: str = "0"
) -> ClientResponse:
    """POST the "create an app password" form."""
    data = {"name": name, "domains": domains, "expiry": expiry}
    return await portal_post(client, TOKENS_PAGE, data, session=session)


async def create_token(
    client: TestClient[Any, Any], session: str, name: str = "thunderbird", **kwargs: str
) -> str:
    """Create an app password through the portal; return the token shown once."""
    response = await submit_token_form(client, session, name, **kwargs)
    text = await response.text()
    assert response.status == 200, text
    token = new_token_in(text)
    assert token is not None, text
    return token
