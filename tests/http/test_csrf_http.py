"""CSRF protection of the portal forms: token bound to a cookie, and Origin checked."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.http.helpers import (
    CSRF_COOKIE,
    PASSWORD,
    SESSION_COOKIE,
    add_user,
    cookie_header,
    csrf_pair,
    forward_auth,
    services,
    signed_in,
)

Client = TestClient[Any, Any]


async def _post_login(client: Client, *, token: str | None, cookie: str | None, **headers: str) -> Any:
    form = {"username": "alice", "password": PASSWORD}
    if token is not None:
        form["csrf_token"] = token
    if cookie is not None:
        headers.update(cookie_header(**{CSRF_COOKIE: cookie}))
    return await client.post("/auth/login", data=form, headers=headers, allow_redirects=False)


async def _nothing_changed(client: Client) -> None:
    store = services(client).store
    user = await store.get_user_by_name("alice")
    assert user is not None
    assert await store.list_user_sessions(user.id) == []
    assert await store.failures_since(username="alice", since=0) == []


@pytest.mark.parametrize(
    ("use_token", "use_cookie"),
    [
        pytest.param(False, True, id="no token"),
        pytest.param(True, False, id="no cookie"),
        pytest.param(False, False, id="neither"),
    ],
)
async def test_login_without_csrf_is_403(client: Client, use_token: bool, use_cookie: bool) -> None:
    """A login POST missing the CSRF token or cookie is refused and changes nothing."""
    await add_user(client)
    secret, token = await csrf_pair(client)

    response = await _post_login(
        client, token=token if use_token else None, cookie=secret if use_cookie else None
    )

    assert response.status == 403
    assert SESSION_COOKIE not in response.cookies
    await _nothing_changed(client)


@pytest.mark.parametrize(
    "bad_token",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param("", id="empty"),
        pytest.param(None, id="token of another cookie"),
    ],
)
async def test_login_with_a_wrong_csrf_token_is_403(client: Client, bad_token: str | None) -> None:
    """A token that was not issued for this browser's CSRF cookie is refused."""
    await add_user(client)
    secret, _ = await csrf_pair(client)
    _, other_token = await csrf_pair(client)

    response = await _post_login(client, token=other_token if bad_token is None else bad_token, cookie=secret)

    assert response.status == 403
    assert SESSION_COOKIE not in response.cookies
    await _nothing_changed(client)


@pytest.mark.parametrize("origin", ["http://evil.example", "http://localhost:8081", "https://localhost:8080"])
async def test_login_from_a_foreign_origin_is_403(client: Client, origin: str) -> None:
    """A valid token does not help a POST whose Origin is not the portal's."""
    await add_user(client)
    secret, token = await csrf_pair(client)

    response = await _post_login(client, token=token, cookie=secret, Origin=origin)

    assert response.status == 403
    await _nothing_changed(client)


async def test_login_from_the_portal_origin_passes(client: Client) -> None:
    """The portal's own Origin is accepted."""
    await add_user(client)
    secret, token = await csrf_pair(client)

    response = await _post_login(client, token=token, cookie=secret, Origin="http://localhost:8080")

    assert response.status == 303


async def test_logout_without_csrf_keeps_the_session(client: Client) -> None:
    """A cross-site logout POST without a token is refused and the session survives."""
    await add_user(client)
    session = await signed_in(client)

    response = await client.post(
        "/auth/logout", headers=cookie_header(**{SESSION_COOKIE: session}), allow_redirects=False
    )

    assert response.status == 403
    assert (await forward_auth(client, session)).status == 200


async def test_csrf_cookie_is_strict_and_httponly(client: Client) -> None:
    """The CSRF cookie is HttpOnly, SameSite=Strict and scoped to the portal path."""
    await add_user(client)

    response = await client.get("/auth/login")

    morsel = response.cookies[CSRF_COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/auth"
