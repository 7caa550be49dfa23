"""aiohttp's record of a request its parser refused becomes one authgate log line, without the bytes."""

from __future__ import annotations

import logging
import sys

import pytest
from aiohttp.http_exceptions import BadHttpMessage, InvalidHeader, LineTooLong

from gateway.server import _PROTOCOL_ERRORS


def aiohttp_record(exc: BaseException | None) -> logging.LogRecord:
    """Build the record aiohttp's RequestHandler.handle_error logs for exc."""
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord(
        "aiohttp.server",
        logging.ERROR,
        __file__,
        1,
        "Error handling request from %s",
        ("203.0.113.9",),
        exc_info,
    )


@pytest.mark.parametrize(
    ("exc", "error", "reason"),
    [
        (LineTooLong(b"Cookie: authgate_session=secret", 18432), "LineTooLong", "a line over 18432 bytes"),
        (BadHttpMessage("Too many headers received"), "BadHttpMessage", "Too many headers received"),
        (
            BadHttpMessage("Invalid header value char:\n\n  b'Cookie: secret\\x01'\n  ^"),
            "BadHttpMessage",
            "Invalid header value char",
        ),
        (InvalidHeader(b"Cookie: secret\x00"), "InvalidHeader", "an invalid header"),
    ],
)
def test_refused_request_is_one_line_without_its_bytes(
    caplog: pytest.LogCaptureFixture, exc: BadHttpMessage, error: str, reason: str
) -> None:
    """The aiohttp record is dropped; authgate logs what was refused and from where, never the bytes."""
    with caplog.at_level(logging.WARNING, logger="authgate"):
        kept = _PROTOCOL_ERRORS.filter(aiohttp_record(exc))

    assert kept is False
    [entry] = [r for r in caplog.records if r.name == "authgate"]
    assert entry.fields == {  # type: ignore[attr-defined]
        "event": "http_bad_request",
        "status": 400,
        "error": error,
        "reason": reason,
        "peer": "203.0.113.9",
    }
    assert entry.exc_info is None
    assert "secret" not in caplog.text


def test_other_server_errors_keep_their_traceback() -> None:
    """A real failure inside a handler is not an HTTP parse error: its record passes untouched."""
    try:
        raise RuntimeError("bug")
    except RuntimeError:
        record = aiohttp_record(sys.exc_info()[1])

    assert _PROTOCOL_ERRORS.filter(record) is True
    assert _PROTOCOL_ERRORS.filter(aiohttp_record(None)) is True
