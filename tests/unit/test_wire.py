"""Prepared forward-auth answers: the bytes (gateway/authz/wire.py) and how they are sent (prepared.py)."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

import pytest

from gateway.authz.prepared import PreparedAnswer
from gateway.authz.wire import DateLine, answer_head


def test_answer_head_holds_status_length_and_headers_in_order() -> None:
    head = answer_head(200, (("Remote-User", "alice"), ("Remote-Groups", "dev,ops"), ("Remote-Name", "Zoë")))
    assert head == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
        b"Remote-User: alice\r\nRemote-Groups: dev,ops\r\nRemote-Name: Zo\xc3\xab\r\n"
    )


def test_answer_head_without_headers_and_for_401() -> None:
    assert answer_head(200) == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
    assert answer_head(401, (("Location", "https://auth.example.com/login"),)).startswith(
        b"HTTP/1.1 401 Unauthorized\r\n"
    )


def test_an_empty_value_is_still_sent() -> None:
    """aiohttp sends `Name: ` for an empty value too; proxies then copy an empty identity field."""
    assert answer_head(200, (("Remote-Email", ""),)).endswith(b"Remote-Email: \r\n")


@pytest.mark.parametrize(
    ("status", "headers", "message"),
    [
        (204, (), "no prepared status line for 204; allowed: [200, 401]"),
        (200, (("Remote User", "x"),), "header name 'Remote User' is not an HTTP token"),
        (200, (("Remote-User:", "x"),), "is not an HTTP token"),
        (200, (("", "x"),), "is not an HTTP token"),
        (200, (("Remote-User", "alice\r\nRemote-Groups: admins"),), "Remote-User has a control character"),
        (200, (("Remote-User", "alice\nx"),), "control character"),
        (200, (("Remote-User", "a\x00"),), "control character"),
        (200, (("Remote-User", "a\x7f"),), "control character"),
    ],
)
def test_answer_head_refuses_what_could_forge_a_header(
    status: int, headers: tuple[tuple[str, str], ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        answer_head(status, headers)


def test_a_tab_inside_a_value_is_allowed() -> None:
    assert answer_head(200, (("Remote-Name", "a\tb"),)).endswith(b"Remote-Name: a\tb\r\n")


def test_date_line_is_formatted_once_per_second() -> None:
    now = [1_700_000_000.2]
    line = DateLine(lambda: now[0])
    first = line()
    assert first == b"Date: Tue, 14 Nov 2023 22:13:20 GMT\r\n\r\n"
    now[0] += 0.5
    assert line() is first  # the same second: the same bytes object, nothing formatted
    now[0] += 1
    second = line()
    assert second == b"Date: Tue, 14 Nov 2023 22:13:21 GMT\r\n\r\n"
    parsedate_to_datetime(second.decode()[6:-4])


class _Transport:
    def __init__(self, *, closing: bool = False, buffered: int = 0) -> None:
        self.closing = closing
        self.buffered = buffered
        self.written: list[bytes] = []

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered


class _Writer:
    def __init__(self) -> None:
        self.drained = 0

    async def drain(self) -> None:
        self.drained += 1


class _Request:
    def __init__(self, transport: _Transport | None) -> None:
        self.transport = transport
        self.writer = _Writer()


async def test_a_prepared_answer_is_written_once_with_a_date() -> None:
    """prepare() twice writes once (aiohttp's contract for prepare); write_eof() adds nothing."""
    request = _Request(_Transport())
    answer = PreparedAnswer(200, answer_head(200, (("Remote-User", "alice"),)))
    await answer.prepare(request)  # type: ignore[arg-type]
    await answer.prepare(request)  # type: ignore[arg-type]
    await answer.write_eof()
    assert request.transport is not None
    [data] = request.transport.written
    assert data.startswith(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nRemote-User: alice\r\nDate: ")
    assert data.endswith(b" GMT\r\n\r\n")
    assert answer.prepared and answer.keep_alive and answer.status == 200
    assert request.writer.drained == 0  # nothing left in the buffer: no wait


async def test_a_prepared_answer_waits_for_a_slow_reader() -> None:
    """Bytes left in the transport's buffer: wait on the writer's drain, as aiohttp's answers do."""
    request = _Request(_Transport(buffered=300))
    await PreparedAnswer(200, answer_head(200)).prepare(request)  # type: ignore[arg-type]
    assert request.writer.drained == 1


@pytest.mark.parametrize("transport", [None, _Transport(closing=True)])
async def test_a_closed_connection_raises_a_connection_error(transport: _Transport | None) -> None:
    """aiohttp catches ConnectionError from prepare() and drops the connection quietly."""
    with pytest.raises(ConnectionError):
        await PreparedAnswer(200, answer_head(200)).prepare(_Request(transport))  # type: ignore[arg-type]
    if transport is not None:
        assert transport.written == []


async def test_a_prepared_answer_has_no_body() -> None:
    answer = PreparedAnswer(200, answer_head(200))
    with pytest.raises(RuntimeError, match="no body"):
        await answer.write_eof(b"x")
