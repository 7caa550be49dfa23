"""Helpers for HTTP tests: config, clock, users, login and forward-auth requests."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from gateway.config import Config, parse_config
from gateway.factors.passwords import PasswordHasher
from gateway.models import User
from gateway.services import SERVICES, Services

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


def build_config(tmp_path: Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """Return a test configuration: cheap argon2, http cookies on localhost, apps under *.localhost."""
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
    return parse_config(_merge(base, overrides or {}))


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
