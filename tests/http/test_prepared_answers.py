"""Prepared forward-auth answers on the wire: what a proxy reads, byte for byte.

Most 200s are written from bytes serialised once per session (gateway/authz/prepared.py).
These tests talk raw HTTP/1.x over a socket, so they see exactly what nginx, Traefik
and Caddy see, including keep-alive, pipelining and the requests that must get
aiohttp's own answer instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

from tests.http.helpers import SESSION_COOKIE, add_user, forward_auth, signed_in

IDENTITY = {
    "remote-user": "alice",
    "remote-email": "alice@example.com",
    "remote-groups": "dev,ops",
    "remote-name": "Alice Liddell",
}


def _request(session: str, *, method: str = "GET", version: str = "1.1", extra: str = "") -> bytes:
    return (
        f"{method} /api/authz/auth-request HTTP/{version}\r\n"
        "Host: authgate\r\n"
        "X-Original-URL: http://app.localhost/page?x=1\r\n"
        "X-Original-Method: GET\r\n"
        f"Cookie: theme=dark; {SESSION_COOKIE}={session}\r\n"
        f"{extra}\r\n"
    ).encode()


async def _read_answer(
    reader: asyncio.StreamReader, *, head_only: bool = False
) -> tuple[str, dict[str, str], bytes]:
    """Read one answer: status line, headers (lower-cased names) and its body."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = raw.decode().split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"{name} sent twice"
            headers[name.lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5)
    return lines[0], headers, body


@contextlib.asynccontextmanager
async def _connection(client: Any) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw TCP connection to the test server, closed afterwards."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def _session(client: Any) -> str:
    """Alice's session cookie value (her identity is IDENTITY)."""
    await add_user(client, "alice", groups=("dev", "ops"), name="Alice Liddell")
    return await signed_in(client, "alice")


async def test_keep_alive_answers_carry_identity_and_a_current_date(client: Any) -> None:
    """Two requests on one connection: both 200 with the identity, Content-Length 0, a valid Date."""
    session = await _session(client)
    async with _connection(client) as (reader, writer):
        for _ in range(2):
            writer.write(_request(session))
            status, headers, body = await _read_answer(reader)
            assert status == "HTTP/1.1 200 OK"
            assert {k: headers[k] for k in IDENTITY} == IDENTITY
            assert headers["content-length"] == "0"
            assert body == b""
            assert "connection" not in headers  # HTTP/1.1 keeps the connection by default
            parsedate_to_datetime(headers["date"])  # an IMF-fixdate, or this raises
            assert re.fullmatch(r"\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT", headers["date"])


async def test_prepared_answer_matches_aiohttps_own(client: Any) -> None:
    """The prepared 200 holds the same headers as aiohttp's answer to the same request (Server aside)."""
    session = await _session(client)
    async with _connection(client) as (reader, writer):
        writer.write(_request(session))
        _, prepared, _ = await _read_answer(reader)
        # Connection: close takes aiohttp's own path (the prepared head says keep-alive).
        writer.write(_request(session, extra="Connection: close\r\n"))
        status, built, _ = await _read_answer(reader)
        assert status == "HTTP/1.1 200 OK"
        assert built.pop("connection") == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and the server closed
    for headers in (prepared, built):
        headers.pop("date")
    built.pop("server")  # aiohttp's version banner; the prepared answer leaves it out
    assert prepared == built


async def test_pipelined_requests_are_answered_in_order(client: Any) -> None:
    """GET, HEAD, another user's session and GET again, sent at once: four answers, in order."""
    session = await _session(client)
    await add_user(client, "bob")
    other = await signed_in(client, "bob")
    async with _connection(client) as (reader, writer):
        writer.write(
            _request(session) + _request(session, method="HEAD") + _request(other) + _request(session)
        )
        answers = [await _read_answer(reader) for _ in range(4)]
    assert [status for status, _, _ in answers] == ["HTTP/1.1 200 OK"] * 4
    assert [headers["remote-user"] for _, headers, _ in answers] == ["alice", "alice", "bob", "alice"]
    assert all(body == b"" for _, _, body in answers)


async def test_http_1_0_gets_aiohttps_answer(client: Any) -> None:
    """HTTP/1.0 closes after the answer unless asked otherwise: aiohttp's own answer, still with identity."""
    session = await _session(client)
    async with _connection(client) as (reader, writer):
        writer.write(_request(session, version="1.0"))
        status, headers, _ = await _read_answer(reader)
        assert status == "HTTP/1.0 200 OK"
        assert {k: headers[k] for k in IDENTITY} == IDENTITY
        assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_other_methods_get_aiohttps_answer(client: Any) -> None:
    """A proxy that forwards the original method (here POST with a body) gets the same identity."""
    session = await _session(client)
    async with _connection(client) as (reader, writer):
        writer.write(_request(session, method="POST", extra="Content-Length: 5\r\n") + b"hello")
        status, headers, _ = await _read_answer(reader)
        assert status == "HTTP/1.1 200 OK"
        assert {k: headers[k] for k in IDENTITY} == IDENTITY
        assert "server" in headers  # built by aiohttp, not prepared
        # The connection still serves the next request.
        writer.write(_request(session))
        status, headers, _ = await _read_answer(reader)
        assert status == "HTTP/1.1 200 OK"
        assert headers["remote-user"] == "alice"


async def test_forward_auth_uses_the_prepared_answer_too(client: Any) -> None:
    """Traefik's and Caddy's endpoint: the aiohttp client sees the identity from the prepared bytes."""
    session = await _session(client)
    answer = await forward_auth(client, session)
    assert answer.status == 200
    assert answer.headers["Remote-User"] == "alice"
    assert answer.headers["Remote-Groups"] == "dev,ops"
    assert "Server" not in answer.headers
    assert await answer.read() == b""


async def test_nginx_401_is_prepared_and_matches_aiohttps_own(client: Any) -> None:
    """No session: the prepared 401 names the portal like aiohttp's answer does, with no body."""
    anonymous = _request("").replace(f"Cookie: theme=dark; {SESSION_COOKIE}=\r\n".encode(), b"")
    async with _connection(client) as (reader, writer):
        answers = []
        for _ in range(2):  # the second one comes from the memo
            writer.write(anonymous)
            answers.append(await _read_answer(reader))
        writer.write(anonymous.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        status, built, _ = await _read_answer(reader)
    for status_line, prepared, body in answers:
        assert status_line == "HTTP/1.1 401 Unauthorized"
        assert body == b""
        assert prepared["location"].endswith("/login?rd=http%3A%2F%2Fapp.localhost%2Fpage%3Fx%3D1")
        prepared.pop("date")
    assert status == "HTTP/1.1 401 Unauthorized"
    for name in ("date", "server", "connection"):
        built.pop(name)
    assert answers[0][1] == answers[1][1] == built
