"""The audit log: one row and one structured log line per event, JSON lines for export."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.accounts import audit
from gateway.accounts.audit import AuditLog, iso_time, to_json_line
from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.logs import logger
from gateway.models import AuditEvent
from gateway.store.sqlite import Store


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(saved)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "authgate.sqlite3", clock=lambda: 1000.0)
    yield opened
    await opened.close()


async def test_record_writes_one_row_and_one_log_line(store: Store, captured: Captured) -> None:
    """record() appends exactly one row and logs the same fields."""
    log = AuditLog(store, clock=lambda: 1234.5)
    event = await log.record(
        audit.TOKEN_CREATED, actor="bob", target="bob", ip="192.0.2.7", detail="app password 'dav'"
    )
    rows = await store.list_audit()
    assert rows == [event]
    assert event == AuditEvent(
        id=event.id,
        at=1234.5,
        event="token_created",
        actor="bob",
        target="bob",
        ip="192.0.2.7",
        detail="app password 'dav'",
    )
    [record] = captured.records
    assert record.getMessage() == "token_created"
    assert record.levelno == logging.INFO
    assert record.fields == {  # type: ignore[attr-defined]
        "event": "token_created",
        "audit_id": event.id,
        "actor": "bob",
        "target": "bob",
        "client_ip": "192.0.2.7",
        "detail": "app password 'dav'",
    }


async def test_record_uses_given_time(store: Store) -> None:
    """An explicit `at` wins over the clock."""
    event = await AuditLog(store, clock=lambda: 1.0).record(audit.LOGOUT, actor="bob", at=42.0)
    assert event.at == 42.0 and event.target is None and event.ip is None


@pytest.mark.parametrize("event", [audit.LOGIN_FAILED, audit.LOGIN_BANNED, audit.TOKEN_FAILED])
async def test_failures_log_as_warnings(store: Store, captured: Captured, event: str) -> None:
    """Failures and bans are warnings in the structured log."""
    await AuditLog(store).record(event, actor=None, target="bob", ip="192.0.2.7")
    assert captured.records[0].levelno == logging.WARNING


async def test_detail_is_one_bounded_line(store: Store) -> None:
    """A detail with newlines or huge length is flattened and cut, so it cannot forge lines."""
    event = await AuditLog(store).record(
        audit.ADMIN_USER_MODIFIED, actor="root", target="bob", detail="a\nb\r\n  c" + "x" * 2000
    )
    assert event.detail.startswith("a b c")
    assert len(event.detail) == audit.MAX_DETAIL_LENGTH
    assert (await store.list_audit())[0].detail == event.detail


def test_event_names_are_distinct_snake_case() -> None:
    """Every event constant is a unique snake_case name."""
    names = [v for k, v in vars(audit).items() if k.isupper() and isinstance(v, str) and k != "CLI_ACTOR"]
    assert len(names) == len(set(names)) >= 30
    assert all(name.replace("_", "").isalpha() and name.islower() for name in names)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1738324800.25, "2025-01-31T12:00:00.250Z"),
        (1738324800.9996, "2025-01-31T12:00:01.000Z"),
    ],
)
def test_iso_time(at: float, expected: str) -> None:
    """Times are UTC ISO 8601 with milliseconds."""
    assert iso_time(at) == expected


def test_to_json_line() -> None:
    """An event becomes one JSON object on one line, with ISO time and the raw timestamp."""
    event = AuditEvent(
        id=3, at=1738324800.25, event="login_failed", actor=None, target="jürgen", ip="::1", detail="x\u2028y"
    )
    line = to_json_line(event)
    assert "\n" not in line and "\u2028" not in line
    assert json.loads(line) == {
        "id": 3,
        "at": "2025-01-31T12:00:00.250Z",
        "timestamp": 1738324800.25,
        "event": "login_failed",
        "actor": None,
        "target": "jürgen",
        "ip": "::1",
        "detail": "x\u2028y",
    }


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, 0.0), (0, 0.0), ("90d", 90 * 86400.0), ("1d", 86400.0)]
)
def test_retention_config(value: object, seconds: float) -> None:
    """Audit rows are kept forever by default; a retention is at least a day."""
    assert parse_config({"audit": {"retention": value}}).audit.retention == seconds


@pytest.mark.parametrize("value", ["1h", "-1", "forever"])
def test_retention_config_errors(value: object) -> None:
    """A retention under a day, negative or not a duration is refused."""
    with pytest.raises(ConfigError) as info:
        parse_config({"audit": {"retention": value}})
    assert [where for where, _ in info.value.problems] == ["audit.retention"]
