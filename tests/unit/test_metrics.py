"""The metrics' counting and folding: slots, sampling, merging workers' totals, the exposition."""

from __future__ import annotations

import json
import sqlite3
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.accounts import audit
from gateway.authz.decision import VERDICT_ORDER, Verdict, decide, decision_slot
from gateway.authz.rules import CompiledRules
from gateway.config import parse_config
from gateway.metrics import (
    LATENCY_BOUNDS_NS,
    LATENCY_SAMPLE_EVERY,
    Metrics,
    SnapshotFiles,
    exposition,
    login_of,
    merge,
    prepare_directory,
    read_gauges,
    verdict_and_rule,
)
from gateway.models import Level, OriginalRequest, SessionRecord, Subject
from gateway.store.sqlite import Store


def make_session(
    user_id: int,
    name: str,
    now: float,
    *,
    last_active: float | None = None,
    expires_at: float | None = None,
    remember_me: bool = False,
) -> SessionRecord:
    return SessionRecord(
        id_hash=name,
        user_id=user_id,
        level=Level.ONE_FACTOR,
        created_at=now - 60,
        authenticated_at=now - 60,
        last_active=now if last_active is None else last_active,
        expires_at=now + 3600 if expires_at is None else expires_at,
        remember_me=remember_me,
        ip="192.0.2.9",
        user_agent="test",
    )


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def test_every_slot_names_its_verdict_and_rule() -> None:
    """decision_slot and verdict_and_rule are inverses, the default policy labelled `default`."""
    seen = set()
    for rule in (None, 0, 1, 7):
        for verdict in VERDICT_ORDER:
            slot = decision_slot(verdict, rule)
            assert verdict_and_rule(slot) == (verdict.value, "default" if rule is None else str(rule))
            seen.add(slot)
    assert len(seen) == 16  # no two pairs share a slot


def test_decide_sets_the_slot_of_its_verdict_and_rule() -> None:
    """Each decision carries the slot of its own verdict and rule, so counting is one increment."""
    config = parse_config(
        {
            "access_control": {
                "default_policy": "deny",
                "rules": [
                    {"domain": "public.localhost", "policy": "bypass"},
                    {"domain": "app.localhost", "policy": "two_factor"},
                ],
            }
        }
    )
    rules = CompiledRules.from_config(config.access_control)
    alice = Subject("alice", frozenset({"dev"}))

    def request(host: str) -> OriginalRequest:
        return OriginalRequest("GET", "http", host, None, "/", "", ip_address("127.0.0.1"))

    cases = [
        (decide(rules, request("public.localhost"), None, Level.ANONYMOUS), Verdict.ALLOW, 0),
        (decide(rules, request("app.localhost"), None, Level.ANONYMOUS), Verdict.LOGIN, 1),
        (decide(rules, request("app.localhost"), alice, Level.ONE_FACTOR), Verdict.STEP_UP, 1),
        (decide(rules, request("app.localhost"), alice, Level.TWO_FACTOR), Verdict.ALLOW, 1),
        (decide(rules, request("other.localhost"), alice, Level.TWO_FACTOR), Verdict.DENY, None),
    ]
    for decision, verdict, rule in cases:
        assert decision.verdict is verdict
        assert decision.slot == decision_slot(verdict, rule)


def test_decisions_are_counted_and_one_in_sixteen_timed() -> None:
    """Every decision is counted; only every LATENCY_SAMPLE_EVERY-th request is timed, into its bucket."""
    clock = FakeClock()
    metrics = Metrics(rule_count=2, clock_ns=clock)
    rules = CompiledRules.from_config(parse_config({}).access_control)
    request = OriginalRequest("GET", "http", "a.localhost", None, "/", "", ip_address("::1"))
    decision = decide(rules, request, None, Level.ANONYMOUS)
    timed = 0
    for _ in range(LATENCY_SAMPLE_EVERY * 3):
        started = metrics.tick()
        clock.now += 30_000  # 30 µs in the handler
        timed += bool(started)
        metrics.decided(decision, started)
    assert timed == 3
    assert metrics.decisions[decision.slot] == LATENCY_SAMPLE_EVERY * 3
    assert sum(metrics.decisions) == LATENCY_SAMPLE_EVERY * 3
    bucket = next(i for i, bound in enumerate(LATENCY_BOUNDS_NS) if bound >= 30_000)
    assert metrics.latency[bucket] == 3
    assert sum(metrics.latency) == 3
    assert metrics.latency_sum_ns == 3 * 30_000


@pytest.mark.parametrize(
    ("event", "detail", "expected"),
    [
        (audit.LOGIN_SUCCEEDED, "password", ("password", "success")),
        (audit.LOGIN_SUCCEEDED, "password, remember me", ("password", "success")),
        (audit.LOGIN_FAILED, "", ("password", "failure")),
        (audit.LOGIN_SUCCEEDED, "passkey with user verification", ("passkey", "success")),
        (audit.LOGIN_FAILED, "passkey: the signature does not verify", ("passkey", "failure")),
        (audit.SECOND_FACTOR_SUCCEEDED, "totp", ("totp", "success")),
        (audit.SECOND_FACTOR_FAILED, "totp", ("totp", "failure")),
        (audit.SECOND_FACTOR_SUCCEEDED, "recovery", ("recovery", "success")),
        (audit.SECOND_FACTOR_FAILED, "webauthn", ("passkey", "failure")),
        (audit.TOKEN_FAILED, "unknown token", ("app_password", "failure")),
        (audit.SECOND_FACTOR_FAILED, "something new", None),
        (audit.LOGOUT, "", None),
        (audit.LOGIN_BANNED, "", None),
        (audit.PASSWORD_CHANGED, "", None),
    ],
)
def test_audit_events_map_to_factor_and_result(event: str, detail: str, expected: Any) -> None:
    """Sign-in steps count under their factor; other events, and unknown details, count nowhere."""
    assert login_of(event, detail) == expected


async def test_the_audit_log_counts_sign_in_steps(tmp_path: Path) -> None:
    """AuditLog.record hands every event to the counter, which counts the sign-in steps."""
    store = await Store.open(tmp_path / "a.sqlite3")
    metrics = Metrics(0)
    log = audit.AuditLog(store, counter=metrics)
    try:
        await log.record(audit.LOGIN_FAILED, actor=None, target="bob")
        await log.record(audit.LOGIN_FAILED, actor=None, target="bob")
        await log.record(audit.SECOND_FACTOR_SUCCEEDED, actor="bob", target="bob", detail="totp")
        await log.record(audit.LOGOUT, actor="bob", target="bob")
    finally:
        await store.close()
    assert metrics.logins["password", "failure"] == 2
    assert metrics.logins["totp", "success"] == 1
    assert sum(metrics.logins.values()) == 3


def _worker(decisions: list[int], password_failures: int, latency_bucket: int) -> dict[str, Any]:
    metrics = Metrics(rule_count=len(decisions) // 4 - 1)
    metrics.decisions[:] = decisions
    metrics.logins["password", "failure"] = password_failures
    metrics.latency[latency_bucket] = 1
    metrics.latency_sum_ns = 1000
    metrics.reject("bad_request")
    return metrics.snapshot()


def test_merge_sums_workers_and_counts_them() -> None:
    """Totals of several workers add up per slot, per label and per bucket."""
    one = _worker([1, 2, 0, 0, 5, 0, 0, 1], 2, 0)
    two = _worker([10, 0, 0, 0, 0, 0, 0, 3], 1, 3)
    total = merge([one, two])
    assert total["decisions"] == [11, 2, 0, 0, 5, 0, 0, 4]
    assert total["logins"]["password:failure"] == 3
    assert total["rejected"]["bad_request"] == 2
    assert total["latency"][0] == 1 and total["latency"][3] == 1
    assert total["latency_sum_ns"] == 2000
    assert total["workers"] == 2


def test_merge_pads_a_worker_with_more_rules() -> None:
    """A snapshot with more slots (another rule count) is added without losing any slot."""
    total = merge([{**_worker([1] * 4, 0, 0)}, _worker([1] * 8, 0, 0)])
    assert total["decisions"] == [2, 2, 2, 2, 1, 1, 1, 1]


def test_exposition_holds_every_series_with_its_labels() -> None:
    """The text format has the decisions by verdict and rule, the histogram, logins and the gauges."""
    metrics = Metrics(rule_count=2)
    metrics.decisions[decision_slot(Verdict.ALLOW, 1)] = 7
    metrics.decisions[decision_slot(Verdict.DENY, None)] = 2
    metrics.latency[0] = 4
    metrics.latency[-1] = 1
    metrics.latency_sum_ns = 6_000_000_000
    metrics.logins["password", "success"] = 3
    metrics.refused_by_regulation()
    metrics.store_errors = {"busy": 2}
    totals = merge([metrics.snapshot()])
    text = exposition(totals, {"sessions_active": 5, "banned": {"account": 1, "address": 0}})
    found = _samples(text)
    assert found["authgate_forward_auth_decisions_total", (("rule", "1"), ("verdict", "allow"))] == 7
    assert found["authgate_forward_auth_decisions_total", (("rule", "default"), ("verdict", "deny"))] == 2
    # Slots never used are left out, so a rule set of any size adds only the series it uses.
    assert ("authgate_forward_auth_decisions_total", (("rule", "0"), ("verdict", "allow"))) not in found
    assert found["authgate_forward_auth_duration_seconds_bucket", (("le", "1e-05"),)] == 4
    assert found["authgate_forward_auth_duration_seconds_bucket", (("le", "5.0"),)] == 4
    assert found["authgate_forward_auth_duration_seconds_bucket", (("le", "+Inf"),)] == 5
    assert found["authgate_forward_auth_duration_seconds_count", ()] == 5
    assert found["authgate_forward_auth_duration_seconds_sum", ()] == 6.0
    assert found["authgate_logins_total", (("factor", "password"), ("result", "success"))] == 3
    assert found["authgate_logins_total", (("factor", "app_password"), ("result", "failure"))] == 0
    assert found["authgate_regulation_refusals_total", ()] == 1
    assert found["authgate_store_errors_total", (("kind", "busy"),)] == 2
    assert found["authgate_store_errors_total", (("kind", "full"),)] == 0
    assert found["authgate_forward_auth_rejected_total", (("reason", "bad_request"),)] == 0
    assert found["authgate_sessions_active", ()] == 5
    assert found["authgate_regulation_banned", (("scope", "account"),)] == 1
    assert found["authgate_metrics_workers", ()] == 1


def test_exposition_without_the_database_leaves_out_only_its_gauges() -> None:
    """When the store cannot be read, the counters are still served and its gauges are absent."""
    names = {name for name, _ in _samples(exposition(merge([Metrics(0).snapshot()]), {}))}
    assert "authgate_sessions_active" not in names
    assert "authgate_regulation_banned" not in names
    assert "authgate_logins_total" in names


def test_snapshot_files_publish_whole_files_and_read_the_others(tmp_path: Path) -> None:
    """Each worker writes its own file; the others' latest files are read, its own and junk skipped."""
    directory = prepare_directory(tmp_path / "metrics")
    one, two = SnapshotFiles(directory, pid=101), SnapshotFiles(directory, pid=102)
    first = _worker([1, 0, 0, 0], 0, 0)
    one.publish(first)
    two.publish(_worker([0, 3, 0, 0], 1, 0))
    (directory / "worker-999.json").write_text("{not json")
    (directory / "worker-998.json").write_text(json.dumps({"version": 0}))
    assert one.others() == [json.loads((directory / "worker-102.json").read_text())]
    assert [snap["decisions"] for snap in two.others()] == [[1, 0, 0, 0]]
    assert not list(directory.glob(".worker-*"))
    assert (directory.stat().st_mode & 0o777) == 0o700


def test_a_restart_empties_the_directory(tmp_path: Path) -> None:
    """Totals of an earlier run are removed at start, so counters restart from zero (a reset)."""
    directory = prepare_directory(tmp_path / "metrics")
    SnapshotFiles(directory, pid=5).publish(_worker([1, 0, 0, 0], 0, 0))
    (directory / ".worker-5.json.tmp").write_text("partial")
    prepare_directory(directory)
    assert list(directory.iterdir()) == []


async def test_gauges_count_active_sessions_and_current_bans(tmp_path: Path) -> None:
    """Active sessions exclude expired and idle ones; bans count accounts and addresses apart."""
    config = parse_config(
        {
            "session": {"inactivity": "5m", "activity_flush_interval": "10s"},
            "regulation": {"max_retries": 3, "find_time": "2m", "ban_time": "5m"},
        }
    )
    now = 100_000.0
    store = await Store.open(tmp_path / "g.sqlite3")
    try:
        user = await store.create_user("alice", "alice@example.com", "Alice", ["dev"], None)
        await store.create_session(make_session(user.id, "live", now, last_active=now - 10))
        await store.create_session(make_session(user.id, "idle", now, last_active=now - 3600))
        await store.create_session(
            make_session(user.id, "remembered", now, last_active=now - 3600, remember_me=True)
        )
        await store.create_session(make_session(user.id, "expired", now, expires_at=now - 1))
        for i in range(3):
            await store.record_attempt("bob", "192.0.2.1", False, now - 10 + i)
            await store.record_attempt("2fa:nonce", "", False, now - 10 + i)
            await store.record_attempt("carol", "192.0.2.2", False, now - 10 + i)
        await store.record_attempt("carol", "192.0.2.2", True, now - 1)  # a success wipes the slate
        gauges = await read_gauges(store, config, now)
    finally:
        await store.close()
    assert gauges == {"sessions_active": 2, "banned": {"account": 1, "address": 1}}


async def test_store_errors_are_counted_by_kind(tmp_path: Path) -> None:
    """A failed statement counts under its SQLite result code's kind."""
    store = await Store.open(tmp_path / "e.sqlite3")
    try:
        with pytest.raises(Exception, match="database error"):
            await store._locked("SELEC nothing")
        full = sqlite3.OperationalError("database or disk is full")
        full.sqlite_errorcode = 13  # type: ignore[attr-defined]
        store._storage_error(full)
    finally:
        await store.close()
    assert store.error_counts["other"] == 1
    assert store.error_counts["full"] == 1
    assert store.error_counts["busy"] == 0


# -- configuration ---------------------------------------------------------------------------------

TOKEN = "t" * 32


@pytest.mark.parametrize(
    ("metrics", "key", "message"),
    [
        ({"enabled": "yes"}, "metrics.enabled", "not a boolean"),
        ({"enabled": True, "listen": ""}, "metrics.token", "required when metrics.listen is empty"),
        ({"enabled": True, "listen": "0.0.0.0:9959"}, "metrics.listen", "can be reached from other hosts"),
        ({"enabled": True, "listen": "[::]:9959"}, "metrics.listen", "can be reached from other hosts"),
        ({"enabled": True, "listen": "9959"}, "metrics.listen", "is not host:port"),
        ({"enabled": True, "listen": "127.0.0.1:0"}, "metrics.listen", "is not host:port"),
        ({"enabled": True, "listen": "::1:9959"}, "metrics.listen", "goes in brackets"),
        ({"enabled": True, "listen": "[nope]:9959"}, "metrics.listen", "is not an IPv6 address"),
        ({"enabled": True, "listen": "http://x:9959"}, "metrics.listen", "host is a URL"),
        ({"enabled": True, "listen": "127.0.0.1:9091"}, "metrics.listen", "is server.port"),
        ({"enabled": True, "token": "short"}, "metrics.token", "at least 16 printable characters"),
        ({"enabled": True, "token": 12345}, "metrics.token", "not a string"),
        ({"listen": 9959}, "metrics.listen", "is not a string"),
        ({"enabeld": True}, "metrics.enabeld", "did you mean"),
    ],
)
def test_metrics_configuration_errors_name_the_key(metrics: dict[str, Any], key: str, message: str) -> None:
    """Bad metrics settings, and metrics anyone could scrape, are refused naming the key."""
    from gateway.errors import ConfigError  # noqa: PLC0415

    with pytest.raises(ConfigError) as caught:
        parse_config({"metrics": metrics})
    assert any(path == key and message in text for path, text in caught.value.problems), caught.value.problems
    assert "t" * 16 not in str(caught.value)


@pytest.mark.parametrize(
    "metrics",
    [
        {},
        {"enabled": True},
        {"enabled": True, "listen": "localhost:9959"},
        {"enabled": True, "listen": "[::1]:9959"},
        {"enabled": True, "listen": "0.0.0.0:9959", "token": TOKEN},
        {"enabled": True, "listen": "", "token": TOKEN},
        {"enabled": False, "listen": "0.0.0.0:9959"},
    ],
)
def test_metrics_configurations_that_are_accepted(metrics: dict[str, Any]) -> None:
    """Off, loopback without a token, or anything with a token, is a valid configuration."""
    parse_config({"metrics": metrics})


def test_metrics_are_off_by_default() -> None:
    """Without configuration nothing is served."""
    assert parse_config({}).metrics.enabled is False


def test_the_token_may_come_from_a_file(tmp_path: Path) -> None:
    """AUTHGATE_METRICS_TOKEN_FILE reads the token (container secrets), one newline stripped."""
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    config = parse_config(
        {"metrics": {"enabled": True, "listen": ""}}, {"AUTHGATE_METRICS_TOKEN_FILE": str(secret)}
    )
    assert config.metrics.token == TOKEN
    assert TOKEN not in repr(config)
