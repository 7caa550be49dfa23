"""Hostile input never produces a 500: odd forms, cookies, headers and query strings."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
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
    signed_in,
)

Client = TestClient[Any, Any]


async def raw_request(client: Client, request: bytes) -> tuple[int, bytes]:
    """Send bytes the HTTP client library would refuse to produce; return (status, head)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
        await writer.wait_closed()
    return int(head.split(b" ", 2)[1]), head


async def _post_form(client: Client, body: bytes, content_type: str, **extra: str) -> int:
    secret, _ = await csrf_pair(client)
    response = await client.post(
        "/auth/login",
        data=body,
        headers={"Content-Type": content_type, **cookie_header(**{CSRF_COOKIE: secret}), **extra},
        allow_redirects=False,
    )
    return response.status


async def test_huge_username_is_a_400(client: Client) -> None:
    """A username far over any sane length is treated as missing, not looked up."""
    await add_user(client)
    secret, token = await csrf_pair(client)

    response = await client.post(
        "/auth/login",
        data={"csrf_token": token, "username": "a" * 60_000, "password": PASSWORD},
        headers=cookie_header(**{CSRF_COOKIE: secret}),
        allow_redirects=False,
    )

    assert response.status == 400


async def test_body_over_the_size_limit_is_a_413(client: Client) -> None:
    """A form larger than the client_max_size is refused before parsing."""
    await add_user(client)

    status = await _post_form(client, b"username=" + b"a" * 200_000, "application/x-www-form-urlencoded")

    assert status == 413


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(b"\xff\xfe\x00garbage=\x80\x81", "application/x-www-form-urlencoded", id="not utf-8"),
        pytest.param(b"username=%ff%fe&password=%80", "application/x-www-form-urlencoded", id="bad escapes"),
        pytest.param(b"username=a", "application/x-www-form-urlencoded; charset=no-such", id="bad charset"),
        pytest.param(b"&&&===&=&", "application/x-www-form-urlencoded", id="empty pairs"),
        pytest.param(b"{}", "application/json", id="json body"),
        pytest.param(b"--x\r\nbroken", "multipart/form-data; boundary=x", id="broken multipart"),
        pytest.param(b"junk", "multipart/form-data", id="multipart without boundary"),
    ],
)
async def test_garbage_login_body_is_never_a_500(client: Client, body: bytes, content_type: str) -> None:
    """Undecodable or malformed form bodies get a 4xx answer."""
    await add_user(client)

    status = await _post_form(client, body, content_type)

    assert 400 <= status < 500


@pytest.mark.parametrize("path", ["/auth/login", "/auth/logout", "/auth/setup"])
async def test_undecodable_form_is_a_400_on_every_form(client: Client, path: str) -> None:
    """Every portal form answers a non-UTF-8 body with 400."""
    response = await client.post(
        path,
        data=b"a=\xff\xfe",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        allow_redirects=False,
    )

    assert response.status == 400


async def test_file_in_the_username_field_is_refused(client: Client) -> None:
    """A multipart upload in place of the username is treated as no username."""
    await add_user(client)
    secret, token = await csrf_pair(client)
    form = aiohttp.FormData()
    form.add_field("csrf_token", token)
    form.add_field("username", b"alice", filename="alice.txt", content_type="text/plain")
    form.add_field("password", PASSWORD)

    response = await client.post(
        "/auth/login", data=form, headers=cookie_header(**{CSRF_COOKIE: secret}), allow_redirects=False
    )

    assert response.status == 400
    assert SESSION_COOKIE not in response.cookies


async def test_non_utf8_cookie_is_ignored(client: Client) -> None:
    """Raw non-UTF-8 bytes in the Cookie header count as no session, at forward-auth and the portal."""
    await add_user(client)
    cookie = (
        b"Cookie: "
        + SESSION_COOKIE.encode()
        + b"=\xff\xfe\x80.abc; "
        + CSRF_COOKIE.encode()
        + b"=\xc3\x28\r\n"
    )
    forward = (
        b"GET /api/authz/forward-auth HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: app.localhost\r\nX-Forwarded-Uri: /\r\nAccept: text/html\r\n"
        + cookie
        + b"Connection: close\r\n\r\n"
    )
    portal = b"GET /auth/login HTTP/1.1\r\nHost: localhost\r\n" + cookie + b"Connection: close\r\n\r\n"

    assert (await raw_request(client, forward))[0] == 302
    assert (await raw_request(client, portal))[0] == 200


async def test_non_utf8_forwarded_host_is_a_400(client: Client) -> None:
    """Raw non-ASCII bytes in X-Forwarded-Host are refused, not decoded into some host."""
    request = (
        b"GET /api/authz/forward-auth HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: app\xff.localhost\r\nConnection: close\r\n\r\n"
    )

    status, _ = await raw_request(client, request)

    assert status == 400


async def test_ten_cookies_of_the_same_name(client: Client) -> None:
    """Ten session cookies of which one is valid: the valid one is found; ten bad ones mean anonymous."""
    await add_user(client)
    session = await signed_in(client)
    bad = [f"{SESSION_COOKIE}=junk{i}.x.y" for i in range(9)]

    with_valid = await forward_auth(
        client, extra={"Cookie": "; ".join([*bad, f"{SESSION_COOKIE}={session}"])}
    )
    all_bad = await forward_auth(client, extra={"Cookie": "; ".join([*bad, f"{SESSION_COOKIE}=junk"])})

    assert with_valid.status == 200
    assert all_bad.status == 302


@pytest.mark.parametrize(
    "cookie",
    [
        f"{SESSION_COOKIE}",
        f"{SESSION_COOKIE}=",
        f'{SESSION_COOKIE}="',
        f"{SESSION_COOKIE}====",
        f"{SESSION_COOKIE}=a.b.c.d.e",
        f"{SESSION_COOKIE}=" + "A" * 4000,
        ";;;;=;=",
    ],
)
async def test_malformed_cookie_is_anonymous(client: Client, cookie: str) -> None:
    """A malformed session cookie is simply not a session."""
    response = await forward_auth(client, extra={"Cookie": cookie})

    assert response.status == 302


async def test_very_long_forwarded_uri_is_never_a_500(client: Client) -> None:
    """A long X-Forwarded-Uri ends in a redirect carrying it, or a 4xx; never a 500."""
    response = await forward_auth(client, uri="/" + "a" * 8000)

    assert response.status in (302, 400, 431)


async def test_forwarded_uri_over_the_header_limit_is_a_4xx(client: Client) -> None:
    """A header longer than the server accepts is refused by the HTTP parser."""
    response = await forward_auth(client, uri="/" + "a" * 20_000)

    assert 400 <= response.status < 500


@pytest.mark.parametrize(
    "rd",
    [
        "http://app.localhost/\r\nSet-Cookie: pwned=1",
        "http://app.localhost/\x00",
        "http://app.localhost/\x1b[31m",
        "\x7fhttp://app.localhost/",
    ],
)
async def test_rd_with_control_characters(client: Client, rd: str) -> None:
    """Control characters in rd are dropped from the page and never reach a header."""
    await add_user(client)

    page = await client.get("/auth/login", params={"rd": rd})
    posted = await _login_with_rd(client, rd)

    assert page.status == 200
    assert 'name="rd" value=""' in await page.text()
    assert posted.status == 303
    assert posted.headers["Location"] == "/auth/"


async def _login_with_rd(client: Client, rd: str) -> Any:
    secret, token = await csrf_pair(client)
    return await client.post(
        "/auth/login",
        data={"csrf_token": token, "username": "alice", "password": PASSWORD, "rd": rd},
        headers=cookie_header(**{CSRF_COOKIE: secret}),
        allow_redirects=False,
    )


async def test_unknown_portal_path_is_404(client: Client) -> None:
    """Paths outside the route table are 404, not errors."""
    response = await client.get("/auth/../../etc/passwd")

    assert response.status == 404


async def test_non_utf8_csrf_cookie_on_a_form_post_is_403(client: Client) -> None:
    """A form POST whose CSRF cookie holds raw non-UTF-8 bytes is refused as a CSRF failure."""
    await add_user(client)
    body = b"username=alice&password=whatever1&csrf_token=abc"
    request = (
        b"POST /auth/login HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Cookie: " + CSRF_COOKIE.encode() + b"=\xc3\x28\xff\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )

    status, _ = await raw_request(client, request)

    assert status == 403
