"""Prometheus metrics: plain per-worker counts, folded into Prometheus families at scrape time.

The forward-auth hot path only adds to plain ints and lists (a decision is one list
increment at its precomputed slot; 1 request in LATENCY_SAMPLE_EVERY is timed). Nothing
here touches prometheus_client until a scrape asks for the exposition.

Several workers (`serve --workers N`, SO_REUSEPORT) each count their own requests. Each
worker publishes its totals every PUBLISH_INTERVAL seconds to its own file in the metrics
directory (written to a temporary name, then renamed: a reader sees a whole file or the
previous one). The worker that answers a scrape adds its live counts to the other workers'
latest files. Every number is a per-worker total that only grows, so the sum only grows
too (a stopped worker's file stays and keeps its counts); `serve` empties the directory
at start, which Prometheus sees as the counter reset of a restart.

Gauges that describe shared state (active sessions, current bans) are computed at scrape
time from the store, once, not summed over workers.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from gateway.accounts import audit
from gateway.accounts.regulation import count_banned
from gateway.authz.decision import VERDICT_COUNT, VERDICT_ORDER, Decision
from gateway.config import Config

# -- what is counted --------------------------------------------------------------------------

FACTORS: Final = ("password", "totp", "recovery", "passkey", "app_password", "external")
RESULTS: Final = ("success", "failure")
# Forward-auth requests answered before any rule was consulted.
REJECT_REASONS: Final = (
    "bad_request",
    "ambiguous_path",
    "invalid_app_password",
    "app_password_banned",
    "app_password_domain",
)
STORE_ERROR_KINDS: Final = ("busy", "full", "io", "readonly", "corrupt", "other")

# Handler time, upper bounds in nanoseconds: a cached answer takes microseconds, a session
# read from the database milliseconds, a database under a lock up to its busy timeout (5 s).
LATENCY_BOUNDS_NS: Final = (
    *(10_000, 25_000, 50_000, 100_000, 250_000, 500_000),
    *(1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000),
    *(100_000_000, 250_000_000, 500_000_000, 1_000_000_000, 5_000_000_000),
)
# Timing a request (two clock reads and a bisect) costs several times counting it, so only
# every 16th forward-auth request is timed: a power of two, tested with a mask.
LATENCY_SAMPLE_EVERY: Final = 16
SAMPLE_MASK: Final = LATENCY_SAMPLE_EVERY - 1
PUBLISH_INTERVAL: Final = 1.0
SNAPSHOT_VERSION: Final = 1

# Audit events that are sign-in steps: (event, detail) -> (factor, result). The detail of a
# second-factor event is its method; a passkey login's detail starts with "passkey".
_SECOND_FACTOR_METHODS: Final = {"totp": "totp", "recovery": "recovery", "webauthn": "passkey"}


def login_of(event: str, detail: str) -> tuple[str, str] | None:
    """Map an audit event to the (factor, result) it counts as, or None when it is no sign-in step."""
    if event in (audit.LOGIN_SUCCEEDED, audit.LOGIN_FAILED):
        factor = "passkey" if detail.startswith("passkey") else "password"
        return factor, "success" if event == audit.LOGIN_SUCCEEDED else "failure"
    if event in (audit.SECOND_FACTOR_SUCCEEDED, audit.SECOND_FACTOR_FAILED):
        method = _SECOND_FACTOR_METHODS.get(detail)
        if method is None:
            return None
        return method, "success" if event == audit.SECOND_FACTOR_SUCCEEDED else "failure"
    if event == audit.TOKEN_FAILED:
        return "app_password", "failure"
    if event in (audit.EXTERNAL_LOGIN_SUCCEEDED, audit.EXTERNAL_LOGIN_FAILED):
        return "external", "success" if event == audit.EXTERNAL_LOGIN_SUCCEEDED else "failure"
    return None


def verdict_and_rule(slot: int) -> tuple[str, str]:
    """The labels of a decision slot (gateway.authz.decision.decision_slot)."""
    rule_slot, verdict = divmod(slot, VERDICT_COUNT)
    return VERDICT_ORDER[verdict].value, "default" if rule_slot == 0 else str(rule_slot - 1)


class Metrics:
    """One worker's counts; the hot path touches only `decisions`, `tick` and `decided`."""

    def __init__(self, rule_count: int, *, clock_ns: Any = time.perf_counter_ns) -> None:
        self.decisions = [0] * (VERDICT_COUNT * (rule_count + 1))
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)
        self.latency = [0] * (len(LATENCY_BOUNDS_NS) + 1)  # per bucket, not cumulative; last = +Inf
        self.latency_sum_ns = 0
        self.logins = {(factor, result): 0 for factor in FACTORS for result in RESULTS}
        self.regulation_refusals = 0
        self.store_errors: Mapping[str, int] = dict.fromkeys(STORE_ERROR_KINDS, 0)
        self.ticker = itertools.count(1)  # next() on it is cheaper than += on an attribute
        self.clock_ns = clock_ns

    # -- the forward-auth hot path --

    def tick(self) -> int:
        """Start a forward-auth request: its start time when it is to be timed, else 0."""
        return 0 if next(self.ticker) & SAMPLE_MASK else self.clock_ns()

    def decided(self, decision: Decision, started: int) -> None:
        """Count a decision; time the request when tick() chose it."""
        self.decisions[decision.slot] += 1
        if started:
            self.timed(started)

    def timed(self, started: int) -> None:
        """Record the time since `started` (a tick() value other than 0)."""
        elapsed = self.clock_ns() - started
        self.latency[bisect.bisect_left(LATENCY_BOUNDS_NS, elapsed)] += 1
        self.latency_sum_ns += elapsed

    # -- everything else (portal, failures): not per request --

    def reject(self, reason: str) -> None:
        """Count a forward-auth request refused before any rule (one of REJECT_REASONS)."""
        self.rejected[reason] += 1

    def audit_event(self, event: str, detail: str) -> None:
        """Count the sign-in step an audit event records (gateway.accounts.audit calls this)."""
        login = login_of(event, detail)
        if login is not None:
            self.logins[login] += 1

    def first_factor_accepted(self, factor: str) -> None:
        """Count a first factor that passed while a second one is still owed (no audit event yet)."""
        self.logins[factor, "success"] += 1

    def app_password_used(self) -> None:
        """Count a forward-auth request authenticated by a valid app password."""
        self.logins["app_password", "success"] += 1

    def refused_by_regulation(self) -> None:
        """Count an attempt refused because its account or address is banned."""
        self.regulation_refusals += 1

    def snapshot(self) -> dict[str, Any]:
        """This worker's totals as plain JSON-ready data."""
        return {
            "version": SNAPSHOT_VERSION,
            "decisions": list(self.decisions),
            "rejected": dict(self.rejected),
            "latency": list(self.latency),
            "latency_sum_ns": self.latency_sum_ns,
            "logins": {f"{factor}:{result}": n for (factor, result), n in self.logins.items()},
            "regulation_refusals": self.regulation_refusals,
            "store_errors": {kind: self.store_errors.get(kind, 0) for kind in STORE_ERROR_KINDS},
        }


def _add_lists(total: list[int], more: Sequence[int]) -> list[int]:
    if len(more) > len(total):
        total = total + [0] * (len(more) - len(total))
    for i, n in enumerate(more):
        total[i] += int(n)
    return total


def _add_maps(total: dict[str, int], more: Mapping[str, int]) -> dict[str, int]:
    for key, n in more.items():
        total[key] = total.get(key, 0) + int(n)
    return total


def merge(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum workers' snapshots; the result has the snapshot's shape plus the number of workers."""
    total: dict[str, Any] = {
        "version": SNAPSHOT_VERSION,
        "decisions": [],
        "rejected": {},
        "latency": [],
        "latency_sum_ns": 0,
        "logins": {},
        "regulation_refusals": 0,
        "store_errors": {},
        "workers": 0,
    }
    for snap in snapshots:
        total["decisions"] = _add_lists(total["decisions"], snap["decisions"])
        total["latency"] = _add_lists(total["latency"], snap["latency"])
        total["latency_sum_ns"] += int(snap["latency_sum_ns"])
        total["regulation_refusals"] += int(snap["regulation_refusals"])
        for key in ("rejected", "logins", "store_errors"):
            total[key] = _add_maps(total[key], snap[key])
        total["workers"] += 1
    return total


# -- several workers: one snapshot file each ----------------------------------------------------


class SnapshotFiles:
    """The workers' published totals in one directory, one `worker-<pid>.json` each."""

    def __init__(self, directory: str | os.PathLike[str], pid: int | None = None) -> None:
        self.directory = Path(directory)
        self.pid = os.getpid() if pid is None else pid
        self._last: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return self.directory / f"worker-{self.pid}.json"

    def publish(self, snapshot: dict[str, Any]) -> None:
        """Write this worker's totals, unless they are what was written last."""
        if snapshot == self._last:
            return
        temporary = self.directory / f".worker-{self.pid}.json.tmp"
        temporary.write_text(json.dumps(snapshot, separators=(",", ":")), encoding="utf-8")
        os.replace(temporary, self.path)
        self._last = snapshot

    def others(self) -> list[dict[str, Any]]:
        """The latest totals of every other worker (unreadable or foreign files are skipped)."""
        found = []
        for path in sorted(self.directory.glob("worker-*.json")):
            if path == self.path:
                continue
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict) and data.get("version") == SNAPSHOT_VERSION:
                    found.append(data)
        return found


def prepare_directory(directory: str | os.PathLike[str]) -> Path:
    """Create the metrics directory (owner only) and remove what an earlier run left in it."""
    path = Path(directory)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in (*path.glob("worker-*.json"), *path.glob(".worker-*.json.tmp")):
        stale.unlink(missing_ok=True)
    return path


# -- exposition -------------------------------------------------------------------------------------


def families(totals: Mapping[str, Any], gauges: Mapping[str, Any]) -> list[Metric]:
    """Build the Prometheus metric families from merged totals and scrape-time gauges."""
    decisions = CounterMetricFamily(
        "authgate_forward_auth_decisions",
        "Forward-auth decisions by verdict and by the access rule that decided (its index in "
        "access_control.rules, or default).",
        labels=("verdict", "rule"),
    )
    for slot, count in enumerate(totals["decisions"]):
        if count:
            decisions.add_metric(verdict_and_rule(slot), count)
    rejected = CounterMetricFamily(
        "authgate_forward_auth_rejected",
        "Forward-auth requests refused before any rule was consulted, by reason.",
        labels=("reason",),
    )
    for reason in REJECT_REASONS:
        rejected.add_metric((reason,), totals["rejected"].get(reason, 0))

    latency = totals["latency"] or [0] * (len(LATENCY_BOUNDS_NS) + 1)
    cumulative, buckets = 0, []
    for bound, count in zip((*LATENCY_BOUNDS_NS, None), latency, strict=False):
        cumulative += count
        buckets.append(("+Inf" if bound is None else repr(bound / 1e9), cumulative))
    duration = HistogramMetricFamily(
        "authgate_forward_auth_duration_seconds",
        f"Time from a forward-auth request's start in authgate's handler to its decision, for "
        f"1 in {LATENCY_SAMPLE_EVERY} requests.",
        buckets=buckets,
        sum_value=totals["latency_sum_ns"] / 1e9,
    )

    logins = CounterMetricFamily(
        "authgate_logins",
        "Sign-in steps by factor and result (app_password: forward-auth requests with an app password).",
        labels=("factor", "result"),
    )
    for factor in FACTORS:
        for result in RESULTS:
            logins.add_metric((factor, result), totals["logins"].get(f"{factor}:{result}", 0))
    refusals = CounterMetricFamily(
        "authgate_regulation_refusals",
        "Sign-in attempts refused because the account or client address is banned.",
        value=totals["regulation_refusals"],
    )
    store_errors = CounterMetricFamily("authgate_store_errors", "Database errors by kind.", labels=("kind",))
    for kind in STORE_ERROR_KINDS:
        store_errors.add_metric((kind,), totals["store_errors"].get(kind, 0))
    workers = GaugeMetricFamily(
        "authgate_metrics_workers",
        "Worker processes whose counts this scrape includes.",
        value=totals["workers"],
    )
    found: list[Metric] = [decisions, rejected, duration, logins, refusals, store_errors, workers]

    if "sessions_active" in gauges:
        found.append(
            GaugeMetricFamily(
                "authgate_sessions_active",
                "Sessions in the store that have neither expired nor gone idle (read at scrape time).",
                value=gauges["sessions_active"],
            )
        )
    if "banned" in gauges:
        banned = GaugeMetricFamily(
            "authgate_regulation_banned",
            "Accounts and client addresses banned right now by brute-force regulation (read at scrape time).",
            labels=("scope",),
        )
        for scope, count in gauges["banned"].items():
            banned.add_metric((scope,), count)
        found.append(banned)
    return found


class _Families(Collector):
    def __init__(self, found: list[Metric]) -> None:
        self._found = found

    def collect(self) -> Iterator[Metric]:
        return iter(self._found)


def exposition(totals: Mapping[str, Any], gauges: Mapping[str, Any]) -> bytes:
    """The text exposition format of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families(totals, gauges)))
    return generate_latest(registry)


class GaugeStore(Protocol):
    async def count_active_sessions(self, now: float, *, idle_since: float | None) -> int: ...
    async def failures_by_key(self, column: str, *, since: float) -> dict[str, list[float]]: ...


# login_attempts keys that name no account: a pending login's wrong codes, and passkey
# failures before any account is known (those count under their address).
_NOT_ACCOUNT_PREFIXES: Final = ("2fa:", "ip:")


async def read_gauges(store: GaugeStore, config: Config, now: float) -> dict[str, Any]:
    """The scrape-time gauges: active sessions and current bans, read from the store."""
    session = config.session
    # last_active reaches the store once per flush interval, so allow for one.
    idle = session.inactivity + session.activity_flush_interval
    idle_since = None if session.inactivity <= 0 else now - idle
    gauges: dict[str, Any] = {
        "sessions_active": await store.count_active_sessions(now, idle_since=idle_since)
    }
    regulation = config.regulation
    if regulation.max_retries > 0:
        since = now - regulation.find_time - regulation.ban_time
        accounts = await store.failures_by_key("username", since=since)
        accounts = {k: v for k, v in accounts.items() if not k.startswith(_NOT_ACCOUNT_PREFIXES)}
        addresses = await store.failures_by_key("ip", since=since)
        gauges["banned"] = {
            "account": count_banned(accounts, now=now, cfg=regulation),
            "address": count_banned(addresses, now=now, cfg=regulation),
        }
    return gauges
