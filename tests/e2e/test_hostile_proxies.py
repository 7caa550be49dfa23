"""Hostile and ambiguous requests through real nginx and Caddy: a clean 4xx, never a 500 or a bypass.

Each request is written byte for byte on a raw socket (no HTTP client would send most of them).
Through nginx the test also reads nginx's error log: auth_request turns any answer but 2xx, 401 and
403 into a 500 and logs "auth request unexpected status", which must never happen.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.support import Stack

pytestmark = pytest.mark.e2e

# The admin rule folds case (as for an IIS upstream), the secret rule does not; everything else
# is served anonymously, so a request that is neither refused nor denied shows as a 200.
HOSTILE_RULES = [
    {"domain": "localhost", "path": r"^/public(/|$)", "policy": "bypass"},
    {"domain": "localhost", "path": r"^/admin(/|$)", "path_case": "insensitive", "policy": "deny"},
    {"domain": "localhost", "path": r"^/secret(/|$)", "policy": "deny"},
    {"domain": "localhost", "policy": "bypass"},
]
RESPONSE_TIMEOUT = 15.0  # seconds; generous, the machine is shared


@pytest.fixture(scope="module")
def nginx_hostile(start_stack: Callable[..., Stack], nginx_bin: str) -> Stack:
    return start_stack("nginx-hostile", nginx_bin, rules=HOSTILE_RULES)


@pytest.fixture(scope="module")
def caddy_hostile(start_stack: Callable[..., Stack], caddy_bin: str) -> Stack:
    return start_stack("caddy-hostile", caddy_bin, rules=HOSTILE_RULES)


@pytest.fixture(params=["nginx", "caddy"])
def proxy(request: pytest.FixtureRequest) -> Stack:
    """Each real proxy in turn, in front of an authgate with HOSTILE_RULES."""
    stack: Stack = request.getfixturevalue(f"{request.param}_hostile")
    return stack


async def send_raw(port: int, request: bytes) -> tuple[int, bytes]:
    """Write request to 127.0.0.1:port as is; return the answer's status and its whole text."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), RESPONSE_TIMEOUT)
    finally:
        writer.close()
        await writer.wait_closed()
    assert answer.startswith(b"HTTP/1."), f"no HTTP answer: {answer[:200]!r}"
    return int(answer.split(b" ", 2)[1]), answer


def build(
    target: bytes = b"/", host: bytes = b"localhost:PORT", extra: bytes = b""
) -> Callable[[Stack], bytes]:
    """A GET of target with a Host header in which PORT stands for the proxy's port."""

    def make(stack: Stack) -> bytes:
        host_value = host.replace(b"PORT", str(stack.port).encode())
        return (
            b"GET "
            + target
            + b" HTTP/1.1\r\nHost: "
            + host_value
            + b"\r\n"
            + extra
            + b"Connection: close\r\n\r\n"
        )

    return make


def error_log(stack: Stack) -> Path:
    return stack.authgate_log.parent / "error.log"


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


async def through(stack: Stack, make: Callable[[Stack], bytes]) -> tuple[int, bytes, str, str]:
    """Send one raw request through the proxy; return (status, answer, new nginx errors, new authgate log)."""
    errors, log = error_log(stack), stack.authgate_log
    errors_before, log_before = len(read(errors)), len(read(log))
    status, answer = await send_raw(stack.port, make(stack))
    return status, answer, read(errors)[errors_before:], read(log)[log_before:]


HOSTILE = {
    "encoded-tab": build(b"/admin%09"),
    "encoded-nul": build(b"/admin%00"),
    "encoded-newline": build(b"/public%0a"),
    "fragment-in-request-line": build(b"/admin#x"),
    "host-with-two-ports": build(host=b"localhost:PORT:1"),
    "host-with-userinfo": build(host=b"a@b"),
    "path-not-utf8": build(b"/admin\xff"),
    "encoded-path-not-utf8": build(b"/admin%ff"),
    "host-not-utf8": build(host=b"local\xffhost:PORT"),
    "300-headers": build(extra=b"".join(b"X-H%d: v\r\n" % i for i in range(300))),
    "header-line-20k": build(extra=b"X-Big: " + b"a" * 20_000 + b"\r\n"),
    "request-line-9k": build(b"/" + b"a" * 9_000),
    "host-8k-and-path-8k": build(b"/" + b"a" * 8_000, host=b"h" * 8_000),
    "three-8k-cookie-headers": build(
        extra=b"".join(b"Cookie: c%d=" % i + b"v" * 7_900 + b"\r\n" for i in range(3))
    ),
    "repeated-content-type": build(extra=b"Content-Type: text/plain\r\nContent-Type: text/html\r\n"),
    "invalid-percent-encoding": build(b"/admin%zz"),
    "host-with-del": build(host=b"local\x7fhost:PORT"),
    "host-with-backslash": build(host=b"local\\host:PORT"),
    "host-with-space": build(host=b"local host:PORT"),
    "host-overlong": build(host=b"h" * 300),
    "cookie-not-utf8": build(b"/admin", extra=b"Cookie: authgate_session=\xff\xfe\r\n"),
    "authorization-not-utf8": build(b"/admin", extra=b"Authorization: Basic \xff\xfe\r\n"),
    "authorization-8k": build(b"/admin", extra=b"Authorization: Bearer " + b"t" * 8_000 + b"\r\n"),
    "portal-300-headers": build(b"/auth/login", extra=b"".join(b"X-H%d: v\r\n" % i for i in range(300))),
}


@pytest.mark.parametrize("name", HOSTILE)
async def test_unparseable_request_is_a_clean_4xx(proxy: Stack, name: str) -> None:
    """Input authgate (or the proxy) cannot parse ends as a 4xx, with no 500 and no nginx error."""
    status, answer, nginx_errors, authgate_log = await through(proxy, HOSTILE[name])

    assert 400 <= status < 500, answer[:300]
    assert "unexpected status" not in nginx_errors
    assert "Traceback" not in authgate_log


# (raw path, status for an anonymous client). The admin rule is case-insensitive, the secret rule
# case-sensitive: /SECRET is another path to it and falls through to the catch-all (documented in
# docs/access-control.md: use path_case: insensitive when the upstream folds case).
CANONICAL = [
    (b"/admin", 403),
    (b"/ADMIN", 403),
    (b"/Admin/users", 403),
    (b"/secret", 403),
    (b"/SECRET", 200),
    (b"/public/x", 200),
    (b"/admin;x", 400),
    (b"/admin%3bx", 400),
    (b"/admin%20", 400),
    (b"/public\\..\\admin", 400),
    (b"/public/%5c..%5cadmin", 400),
    (b"/public/../admin", 403),
    (b"/public/%2e%2e/admin", 403),
    (b"/admin%2f", 400),
    (b"/admin%3fx", 400),
    (b"/%61dmin", 403),
]


@pytest.mark.parametrize(("target", "status"), CANONICAL, ids=[t.decode() for t, _ in CANONICAL])
async def test_rules_match_the_canonical_path(proxy: Stack, target: bytes, status: int) -> None:
    """Rules see the decoded, dot-resolved path; ambiguous paths are a 400; nothing reaches a 500."""
    got, answer, nginx_errors, _ = await through(proxy, build(target))

    assert got == status, answer[:300]
    assert "unexpected status" not in nginx_errors


async def test_nginx_turns_authgates_refusal_into_a_400(nginx_hostile: Stack) -> None:
    """authgate's marked 403 becomes the example config's 400 page, and authgate logs the reason."""
    status, answer, nginx_errors, log = await through(nginx_hostile, build(b"/admin;x"))

    assert status == 400
    assert answer.endswith(b"\r\n\r\n400 bad request\n")
    assert b"X-Authgate-Error" not in answer
    assert nginx_errors == ""
    assert "ambiguous path '/admin;x'" in log


async def test_nginx_answers_431_for_cookies_authgate_cannot_read(nginx_hostile: Stack) -> None:
    """Cookies nginx joins into more than authgate reads never reach authgate: nginx answers 431."""
    cookies = b"".join(b"Cookie: c%d=" % i + b"v" * 7_900 + b"\r\n" for i in range(3))

    status, answer, nginx_errors, log = await through(nginx_hostile, build(b"/x", extra=cookies))

    assert status == 431
    assert b"cookies over 16 KiB" in answer
    assert nginx_errors == "" and log == ""


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(b"X-Big: " + b"a" * 20_000 + b"\r\n", id="header-line-20k"),
        pytest.param(b"Cookie: authgate_session=" + b"s" * 20_000 + b"\r\n", id="cookie-20k"),
        pytest.param(b"".join(b"X-H%d: v\r\n" % i for i in range(300)), id="300-headers"),
    ],
)
async def test_oversized_request_is_one_log_line(nginx_hostile: Stack, extra: bytes) -> None:
    """A request aiohttp's parser refuses, sent straight at authgate, is a 400 and one log line."""
    log = nginx_hostile.authgate_log
    before = len(read(log))
    request = (
        b"GET /api/authz/auth-request HTTP/1.1\r\nHost: localhost\r\n" + extra + b"Connection: close\r\n\r\n"
    )

    status, _ = await send_raw(nginx_hostile.authgate_port, request)

    lines = read(log)[before:].splitlines()
    assert status == 400
    assert "Traceback" not in read(log)
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["event"] == "http_bad_request"
    assert entry["status"] == 400 and entry["peer"] == "127.0.0.1"
    assert "sss" not in lines[0]  # the refused bytes (here a cookie) are never logged
