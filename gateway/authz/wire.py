"""Forward-auth answers serialised in advance (pure, no I/O).

A proxy asks authgate about every request, and nearly every answer is one of a few
byte-for-byte repeats: "200, here is this session's identity" or "200, no identity".
aiohttp builds each answer from scratch: a response object, a header multidict copied
from the session's, a check of the standard headers, a status line formatted and the
whole block serialised. Here the head of such an answer is built once (per session, or
once for all) and only the Date line is added per request. That took authgate's CPU
per request over an empty aiohttp handler from 10.5-13.4 µs to 2.0-4.5 µs in the
bench's direct A/B (docs/performance.md).

The head holds exactly what aiohttp would send for the same `web.Response` on an
HTTP/1.1 keep-alive connection (status line, the headers, `Content-Length: 0`, Date),
except aiohttp's `Server` header, which only names software versions.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate

_STATUS_LINES = {
    200: b"HTTP/1.1 200 OK\r\n",
    401: b"HTTP/1.1 401 Unauthorized\r\n",
}
# RFC 9110 token characters: what a header name may hold.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def answer_head(status: int, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """Return the head of a body-less HTTP/1.1 answer, up to (not including) its Date line.

    Raises ValueError for a status without a prepared line, a header name that is not
    an RFC 9110 token, or a value with a control character (a line break would let a
    value forge headers of its own).
    """
    try:
        parts = [_STATUS_LINES[status], b"Content-Length: 0\r\n"]
    except KeyError:
        raise ValueError(f"no prepared status line for {status}; allowed: {sorted(_STATUS_LINES)}") from None
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"header name {name!r} is not an HTTP token")
        if _FORBIDDEN_IN_VALUE.search(value):
            raise ValueError(f"header {name} has a control character in its value")
        parts.append(f"{name}: {value}\r\n".encode())
    return b"".join(parts)


class DateLine:
    """The Date header and the blank line that ends a head, formatted once per second."""

    __slots__ = ("_clock", "_line", "_second")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second = -1
        self._line = b""

    def __call__(self) -> bytes:
        second = int(self._clock())
        if second != self._second:
            self._line = f"Date: {formatdate(second, usegmt=True)}\r\n\r\n".encode()
            self._second = second
        return self._line


# Every worker's answers share one: the date is the same for all of them.
date_line = DateLine()
