"""A store that cannot take a request (locked, full, failing) gives clean 503s, never a 500."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.errors import StoreUnavailable
from tests.http.helpers import (
    CSRF_COOKIE,
    MakeClient,
    add_user,
    auth_request,
    cookie_header,
    csrf_pair,
    forward_auth,
    login,
    services,
    signed_in,
)

Client = TestClient[Any, Any]


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client({"storage": {"busy_timeout": "0.2s"}})


def _hold_write_lock(client: Client) -> sqlite3.Connection:
    holder = sqlite3.connect(services(client).config.storage.database_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO login_attempts (username, ip, success, at) VALUES ('x', 'y', 0, 0)")
    return holder


async def test_login_while_another_process_holds_the_database_is_a_503_page(client: Client) -> None:
    """The login form answers 503 "Temporarily unavailable" with Retry-After, then works once released."""
    await add_user(client)
    holder = _hold_write_lock(client)
    try:
        response = await login(client)
        assert response.status == 503
        assert "Temporarily unavailable" in await response.text()
        assert response.headers["Retry-After"] == "5"
        assert response.headers["Content-Type"].startswith("text/html")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (await login(client)).status == 303


async def test_portal_json_calls_get_a_json_503(client: Client) -> None:
    """The portal's fetch() endpoints get their 503 as JSON (here: storing a passkey challenge)."""
    await add_user(client)
    secret, token = await csrf_pair(client)
    holder = _hold_write_lock(client)
    try:
        response = await client.post(
            "/auth/login/passkey/options",
            json={},
            headers={"X-CSRF-Token": token, **cookie_header(**{CSRF_COOKIE: secret})},
        )
        assert response.status == 503
        assert "cannot reach its database" in (await response.json())["error"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.parametrize("ask", [forward_auth, auth_request])
async def test_forward_auth_answers_503_when_sessions_cannot_be_read(
    client: Client, monkeypatch: pytest.MonkeyPatch, ask: Any
) -> None:
    """An uncached session whose read fails (I/O error) gets a 503 naming the reason, not a 500."""
    user = await add_user(client)
    session = await signed_in(client)
    services(client).sessions.cache.evict_user(user.id)  # as another worker would: not cached

    async def failing(*_args: Any, **_kwargs: Any) -> Any:
        raise StoreUnavailable("disk I/O error")

    monkeypatch.setattr(services(client).store, "read_session", failing)
    monkeypatch.setattr(services(client).store, "read_sessions", failing)
    response = await ask(client, session)

    # nginx's auth_request cannot carry a 503: a marked 403 that nginx.conf.example maps back.
    expected = (403, "unavailable") if ask is auth_request else (503, None)
    assert (response.status, response.headers.get("X-Authgate-Error")) == expected
    assert await response.text() == "503 service unavailable: disk I/O error; try again shortly\n"
    assert response.headers["Retry-After"] == "5"
