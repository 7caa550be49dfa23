"""Send a forward-auth answer whose head was serialised in advance (gateway/authz/wire.py).

aiohttp calls a handler's response `prepare(request)` and then `write_eof()`; this
response does both with one write of the prepared bytes. It is used only where those
bytes are exactly right: HTTP/1.1, a connection that stays open, GET or HEAD (what
nginx, Traefik and Caddy send for their auth subrequests). Anything else gets an
ordinary `web.Response` with the same status and headers.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from aiohttp.http import HttpVersion11

from gateway.authz.wire import answer_head, date_line

_BODYLESS_METHODS = frozenset({"GET", "HEAD"})
# A 200 without identity headers (a bypass rule, or a rule that sends none).
PLAIN_OK_HEAD = answer_head(200)


class PreparedAnswer(web.StreamResponse):
    """A body-less answer written as one prepared block of bytes."""

    def __init__(self, status: int, head: bytes) -> None:
        super().__init__(status=status)
        self._head = head

    async def prepare(self, request: web.BaseRequest) -> None:
        if self._eof_sent:
            return
        self._eof_sent = True
        self._keep_alive = True
        # Straight to the transport: aiohttp's writer costs ~0.5 µs more per answer and adds
        # nothing to a block of bytes. A closing transport raises a ConnectionError, after
        # which aiohttp drops the connection, as for its own answers.
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the connection closed before the answer was sent")
        transport.write(self._head + date_line())
        if transport.get_write_buffer_size():
            # The peer reads slowly (or pipelines without reading): wait as aiohttp's own
            # answers do, so a client cannot make this worker buffer without bound.
            await request.writer.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        if data:
            raise RuntimeError("a prepared answer has no body")


def prepared_fits(request: web.BaseRequest) -> bool:
    """True when a prepared HTTP/1.1 keep-alive head is exactly the answer to send."""
    return request.version == HttpVersion11 and request.keep_alive and request.method in _BODYLESS_METHODS


def answer(
    request: web.BaseRequest, status: int, head: bytes, headers: Iterable[tuple[str, str]] = ()
) -> web.StreamResponse:
    """The prepared answer when it fits the request, else the same answer built by aiohttp."""
    if prepared_fits(request):
        return PreparedAnswer(status, head)
    return web.Response(status=status, headers=tuple(headers))
