"""A real `authgate serve` on PostgreSQL: the database stopped and started under it, and the move
from SQLite with `authgate db copy` (the same cookie, TOTP device and app password work after it).

These tests stop and start their own PostgreSQL cluster (not the session's shared one).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.e2e.standalone import (
    Gateway,
    form_post,
    password_login,
    recovery_codes_in,
    session_of,
    start_gateway,
)
from tests.e2e.support import (
    HTML,
    PASSWORDS,
    ROOT,
    SESSION_COOKIE,
    TOTP_PERIOD,
    ProxyClient,
    Stack,
    basic,
    enrolment_fields,
    oathtool_code,
)
from tests.pg import PG_PASSWORD, PostgresServer, start_postgres

pytestmark = pytest.mark.e2e

# Long enough that the answer cached before the stop is still within its bound after
# pg_ctl stop returns, even on a loaded machine.
CACHE_TTL = 8.0
PENDING_COOKIE = "authgate_2fa"


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A cluster of this module's own, since these tests stop it."""
    server = start_postgres()
    yield server
    server.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout) as session:
        yield session


def _pg_settings(dsn: str) -> dict[str, Any]:
    return {
        "server": {"workers": 1},  # one cache, so "cached" is well defined for the test
        "storage": {"postgres": {"dsn": dsn, "connect_timeout": "1s", "statement_timeout": "2s"}},
        "session": {"cache_ttl": f"{CACHE_TTL:g}s"},
        "regulation": {"max_retries": 0},
    }


async def _forward_auth(gateway: Gateway, http: aiohttp.ClientSession, **credentials: str) -> int:
    headers = {
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": f"localhost:{gateway.port}",
        "X-Forwarded-Uri": "/app/",
    }
    cookies = None
    if "session" in credentials:
        cookies = {SESSION_COOKIE: credentials["session"]}
    else:
        headers.update(basic(credentials["username"], credentials["token"]))
    reply = await gateway.client(http).get("/api/authz/forward-auth", headers=headers, cookies=cookies)
    return reply.status


async def _health(gateway: Gateway, http: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
    reply = await gateway.client(http).get("/api/health")
    return reply.status, reply.json()


async def _until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_postgres_stopped_and_started_under_a_running_authgate(
    own_postgres: PostgresServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """pg_ctl stop -m fast while serving: cached forward-auth answers until cache_ttl, then 503 (never
    200), the portal shows its 503 page, /api/health is unhealthy; after pg_ctl start everything works
    again with no restart, and the session signed in before the outage is still valid."""
    gateway = await asyncio.to_thread(start_gateway, tmp_path, _pg_settings(own_postgres.create_database()))
    try:
        client = gateway.client(http)
        session = session_of(await password_login(client, "alice"))
        assert await _forward_auth(gateway, http, session=session) == 200  # read, now cached

        async def listening() -> bool:
            return (await _health(gateway, http))[1].get("revocations") == "live"

        await _until(listening)  # the channel connects just after start-up

        own_postgres.stop("fast")
        try:
            assert await _forward_auth(gateway, http, session=session) == 200  # from the cache
            status, body = await _health(gateway, http)
            assert (status, body["status"]) == (503, "error")
            page = await client.get("/auth/login", headers=HTML)
            assert page.status == 503 and "Temporarily unavailable" in page.text
            assert page.headers["Retry-After"] == "5"
            # a background re-read may have renewed the entry just before the stop: wait a whole bound
            await asyncio.sleep(CACHE_TTL + 1.0)
            # past the cache bound the session cannot be checked: refused, never let through
            assert await _forward_auth(gateway, http, session=session) == 503
            assert await _forward_auth(gateway, http, session="forged-cookie") in (302, 401)
        finally:
            own_postgres.start()

        async def healthy() -> bool:
            return (await _health(gateway, http)) == (
                200,
                {"status": "ok", "engine": "postgres", "revocations": "live"},
            )

        await _until(healthy)
        assert await _forward_auth(gateway, http, session=session) == 200
        assert session_of(await password_login(client, "bob"))
        log = gateway.log_text()
        assert "Traceback" not in log, log[log.find("Traceback") - 1500 : log.find("Traceback") + 3000]
        assert PG_PASSWORD not in log
        assert gateway.log_events("revocation_channel_up")
    finally:
        gateway.stop()


async def _enrol_totp(gateway: Gateway, http: aiohttp.ClientSession, oathtool_bin: str) -> tuple[str, float]:
    """Sign bob in and enrol an authenticator app; return (secret, enrolment time)."""
    client = gateway.client(http)
    cookies = {SESSION_COOKIE: session_of(await password_login(client, "bob"))}
    page = await client.get("/auth/settings/totp/new", cookies=cookies, headers=HTML)
    secret, token = enrolment_fields(page.text)
    enrolled_at = time.time()
    fields = {
        "token": token,
        "name": "phone",
        "password": PASSWORDS["bob"],
        "code": oathtool_code(oathtool_bin, secret, enrolled_at),
    }
    reply = await form_post(client, "/auth/settings/totp/new", "/auth/settings/totp/new", fields, cookies)
    assert reply.status == 200, reply.text
    recovery_codes_in(reply.text)
    return secret, enrolled_at


async def _totp_login(gateway: Gateway, http: aiohttp.ClientSession, code: str) -> str:
    """Password then TOTP code for bob; return the session cookie."""
    client = gateway.client(http)
    first = await password_login(client, "bob")
    assert first.status == 303 and first.headers["Location"].endswith("/2fa"), first.text
    pending = {PENDING_COOKIE: first.cookies[PENDING_COOKIE].value}
    reply = await form_post(client, "/auth/2fa", "/auth/2fa", {"code": code, "method": "totp"}, pending)
    return session_of(reply)


async def _app_password(gateway: Gateway, http: aiohttp.ClientSession, session: str) -> str:
    reply = await form_post(
        gateway.client(http),
        "/auth/settings/tokens",
        "/auth/settings/tokens",
        {"name": "mail", "domains": "", "expiry": "0"},
        {SESSION_COOKIE: session},
    )
    assert reply.status == 200 and 'id="new-token"' in reply.text, reply.text
    return reply.text.split('id="new-token"', 1)[1].split(">", 1)[1].split("<", 1)[0]


async def test_db_copy_moves_a_live_install_to_postgres(
    own_postgres: PostgresServer, tmp_path: Path, http: aiohttp.ClientSession, oathtool_bin: str
) -> None:
    """Sign in on SQLite (password + TOTP), stop, `authgate db copy`, start on PostgreSQL with the same
    data_dir secrets: the same cookie still works, the TOTP device verifies (and its used step stays
    used), the app password verifies, and signing in again works."""
    gateway = await asyncio.to_thread(
        start_gateway, tmp_path, {"server": {"workers": 1}, "regulation": {"max_retries": 0}}
    )
    try:
        secret, enrolled_at = await _enrol_totp(gateway, http, oathtool_bin)
        used_at = max(time.time(), enrolled_at + TOTP_PERIOD)  # a step after the enrolment's own
        code = oathtool_code(oathtool_bin, secret, used_at)
        session = await _totp_login(gateway, http, code)
        token = await _app_password(gateway, http, session)
        assert await _forward_auth(gateway, http, session=session) == 200
    finally:
        gateway.stop()

    dsn = own_postgres.create_database(migrated=False)
    copied = subprocess.run(  # noqa: S603 - our own CLI
        [
            sys.executable,
            "-m",
            "gateway",
            "--config",
            str(gateway.config),
            "db",
            "copy",
            "--from",
            f"sqlite://{gateway.database}",
            "--to",
            dsn,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert copied.returncode == 0, copied.stderr
    assert "row counts verified" in copied.stdout
    assert PG_PASSWORD not in copied.stdout + copied.stderr

    config = yaml.safe_load(gateway.config.read_text())
    config["storage"]["postgres"] = {"dsn": dsn}
    gateway.config.write_text(yaml.safe_dump(config))
    gateway.database.rename(gateway.database.with_suffix(".moved"))  # nothing can read SQLite now
    await asyncio.to_thread(gateway.start)
    try:
        assert (await _health(gateway, http))[0] == 200
        assert (await _health(gateway, http))[1]["engine"] == "postgres"
        assert await _forward_auth(gateway, http, session=session) == 200
        assert await _forward_auth(gateway, http, username="bob", token=token) == 200
        assert await _forward_auth(gateway, http, username="bob", token=token + "x") == 401
        # the step used on SQLite is still used; the next one signs in
        replay = await password_login(gateway.client(http), "bob")
        pending = {PENDING_COOKIE: replay.cookies[PENDING_COOKIE].value}
        refused = await form_post(
            gateway.client(http), "/auth/2fa", "/auth/2fa", {"code": code, "method": "totp"}, pending
        )
        assert refused.status == 401
        later = max(time.time(), used_at + TOTP_PERIOD)  # the next step...
        await asyncio.sleep(max(0.0, later - TOTP_PERIOD - time.time()))  # ...once within the accepted skew
        assert await _totp_login(gateway, http, oathtool_code(oathtool_bin, secret, later))
    finally:
        gateway.stop()


async def test_nginx_answers_503_for_an_uncached_session_while_postgres_is_stopped(
    own_postgres: PostgresServer,
    start_stack: Callable[..., Stack],
    nginx_bin: str,
    http: aiohttp.ClientSession,
) -> None:
    """Behind the shipped nginx.conf.example, a session authgate cannot check because PostgreSQL is
    down reaches the client as a 503 with Retry-After (authgate's marked 403), never nginx's 500 and
    never the app; after pg_ctl start the same session is let through again."""
    overrides = {
        "storage": {"postgres": {"dsn": own_postgres.create_database(), "connect_timeout": "1s"}},
        "session": {"cache_ttl": "1s"},
    }
    stack = await asyncio.to_thread(start_stack, "nginx-pg", nginx_bin, overrides=overrides)
    proxy = ProxyClient(http, stack.port)
    session = await proxy.session_for("alice")
    page = {"cookies": {SESSION_COOKIE: session}, "headers": HTML}
    assert (await proxy.get("/", **page)).status == 200
    own_postgres.stop("fast")
    try:
        await asyncio.sleep(1.5)  # past cache_ttl: the session must be read again
        refused = await proxy.get("/", **page)
        assert refused.status == 503, refused.text
        assert refused.headers["Retry-After"] == "5"
        assert "cannot reach its database" in refused.text
        assert "unexpected status" not in (stack.authgate_log.parent / "error.log").read_text()
    finally:
        own_postgres.start()

    async def let_through() -> bool:
        return (await proxy.get("/", **page)).status == 200

    await _until(let_through)
