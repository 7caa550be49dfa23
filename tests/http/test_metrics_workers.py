"""Metrics with `serve --workers 2` (real processes sharing the ports): a scrape sums both workers."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.bench.test_hot_path import _config, _free_port, _portal_login, _request, _seed_user, _serving

TOKEN = "workers-metrics-token-0123456789"
ALLOWED = 40
ANONYMOUS = 10


def _scrape(port: int, token: str | None) -> Any:
    headers = {"Connection": "close"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return _request(port, "GET", "/metrics", headers)


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}", "Connection": "close"})
        answer = conn.getresponse()
        assert answer.status == 200
        text = answer.read().decode()
    finally:
        conn.close()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _ask(port: int, cookie: str | None) -> int:
    headers = {
        "X-Original-URL": "http://app.localhost/page",
        "X-Original-Method": "GET",
        "Connection": "close",
    }
    if cookie is not None:
        headers["Cookie"] = f"authgate_session={cookie}"
    return int(_request(port, "GET", "/api/authz/auth-request", headers).status)


async def test_a_scrape_sums_the_counts_of_both_workers(tmp_path: Path) -> None:
    """Requests spread over two workers by SO_REUSEPORT all appear in one scrape of either worker."""
    port, metrics_port = _free_port(), _free_port()
    config = _config(tmp_path, port)
    config.write_text(
        config.read_text()
        + f"metrics: {{enabled: true, listen: '127.0.0.1:{metrics_port}', token: '{TOKEN}'}}\n"
    )
    await _seed_user(tmp_path)
    metrics_dir = tmp_path / "data" / "metrics"
    metrics_dir.mkdir(parents=True)
    (metrics_dir / "worker-1.json").write_text("{}")  # left by an earlier run: removed at start
    with _serving(config, port):
        assert _scrape(metrics_port, None).status == 401
        assert _scrape(metrics_port, "wrong-token-0123456789").status == 401
        cookie, _, _ = _portal_login(port)
        for _ in range(ALLOWED):  # a fresh connection each, so the kernel spreads them
            assert await asyncio.to_thread(_ask, port, cookie) == 200
        for _ in range(ANONYMOUS):
            assert await asyncio.to_thread(_ask, port, None) == 401

        # Each worker publishes its totals within a second; poll until both have.
        deadline = time.monotonic() + 20
        while True:
            found = await asyncio.to_thread(_samples, metrics_port)
            allow = found.get(
                ("authgate_forward_auth_decisions_total", (("rule", "0"), ("verdict", "allow")))
            )
            login = found.get(
                ("authgate_forward_auth_decisions_total", (("rule", "0"), ("verdict", "login")))
            )
            if allow == ALLOWED and login == ANONYMOUS:
                break
            assert time.monotonic() < deadline, f"scrape never summed both workers: {allow}, {login}"
            await asyncio.sleep(0.2)

        assert found["authgate_metrics_workers", ()] == 2
        assert found["authgate_logins_total", (("factor", "password"), ("result", "success"))] == 1
        assert found["authgate_sessions_active", ()] == 1
        await asyncio.sleep(1.5)  # the answering worker's own file, too, is at most a second old
        files = sorted(metrics_dir.glob("worker-*.json"))
        assert len(files) == 2, files
        per_worker = [sum(json.loads(path.read_text())["decisions"]) for path in files]
        # Both workers answered some of the 50 requests (all on one: a 2**-49 chance), and the
        # scrape's sum is theirs.
        assert all(count > 0 for count in per_worker), per_worker
        assert sum(per_worker) == ALLOWED + ANONYMOUS
