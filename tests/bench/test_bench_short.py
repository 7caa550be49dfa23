"""`make bench` in short mode: every scenario answers with the expected statuses and yields numbers.

No speed assertions: the machine running the tests decides the numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pg import find_pg_bin, missing_postgres

ROOT = Path(__file__).resolve().parents[2]
TOOLS_MISSING = [
    tool for tool in ("wrk", "nginx") if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()
]

pytestmark = pytest.mark.e2e

EXPECTED = {"L": {"200"}, "F": {"200"}, "G": {"200"}, "G401": {"302", "401"}, "GB": {"200"}}
# The two-instance scenario's rows: G through an nginx upstream over two instances per engine.
PAIRS = {"G2-sqlite", "G2-postgres"}
EXPECTED.update({name: {"200"} for name in PAIRS})


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if find_pg_bin() is None:
        missing_postgres()  # the G2-postgres scenario needs the server binaries
    if TOOLS_MISSING:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"the bench needs {', '.join(TOOLS_MISSING)} (deploy/ensure-test-tools.sh installs them)"
            )
        pytest.skip(f"missing {', '.join(TOOLS_MISSING)}")
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        # --metrics: authgate runs with metrics on, as an operator would, and is scraped at the end.
        [sys.executable, str(ROOT / "deploy/bench/run.py"), "--short", "--metrics", "--out-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    files = list(out.glob("bench-*.json"))
    assert len(files) == 1, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    data = json.loads(files[0].read_text())
    data["_exit"] = done.returncode
    data["_output"] = done.stdout + done.stderr
    return data


def test_every_scenario_answers_with_the_expected_statuses(results: dict) -> None:
    """L/F/G/GB answer 200 only, G401 only redirects (302 from nginx for authgate's 401)."""
    runs = {name: r for name, r in results["scenarios"].items() if "skipped" not in r}
    assert {name.split()[0] for name in runs} == set(EXPECTED)
    for name, run in runs.items():
        expected = EXPECTED[name.split()[0]]
        # 499: wrk hung up on a request in flight when its time ran out (at most one per connection).
        others = {s: n for s, n in run["statuses"].items() if s not in expected and s != "499"}
        assert not others, f"{name}: unexpected statuses {run['statuses']}"
        assert sum(n for s, n in run["statuses"].items() if s in expected) >= run["requests"] > 0, name
        assert run["wrk_non_2xx_3xx"] == 0, name
        assert sum(run["socket_errors"].values()) - run["socket_errors"]["status"] == 0, name
    assert results["_exit"] == 0, results["_output"]


def test_every_scenario_produced_numbers(results: dict) -> None:
    """Requests/s, p50 and p99 exist for every scenario at both connection counts, plus the extras."""
    scenarios = results["scenarios"]
    for name in ("L", "F", "G", "G401", "GB"):
        for conns in (8, 64):
            run = scenarios[f"{name} c{conns}"]
            assert run["rps"] > 0 and 0 < run["p50_ms"] <= run["p99_ms"], (name, conns)
    storm = scenarios["G c8 +storm"]
    assert storm["p99_ms"] > 0 and storm["storm"]["succeeded"] > 0
    assert scenarios["G c64 workers=1"]["rps"] > 0
    for key in ("G/F c8", "G/F c64", "G/L c8", "G/L c64", "GB/G c8", "GB/G c64", "G p99 storm/base c8"):
        assert results["ratios"][key] > 0
    micro = results["micro"]
    assert set(micro["decide_ns"]) == {"10", "10000", "10_unseen_paths", "10000_unseen_paths"}
    assert all(v > 0 for v in micro["decide_ns"].values())
    assert set(micro["resolve_hit_ns"]) == {"1", "100000", "100000_1000_active"}
    assert set(micro["metrics_ns"]) == {"empty", "tick_decided", "timed_every_request"}


def test_metrics_counted_every_decision_of_every_worker(results: dict) -> None:
    """The scrape after the main runs sums all workers and holds at least every answered G/G401/GB request."""
    scrape = results["metrics_scrape"]
    assert scrape["ok"], scrape
    assert scrape["workers"] == results["workers"]
    answered = sum(
        run["requests"]
        for name, run in results["scenarios"].items()
        if name.split()[0] in ("G", "G401", "GB")
        and not any(part in name for part in ("storm", "workers=1", "multi"))
    )
    assert scrape["decisions"] >= answered > 0
    assert scrape["timed"] > 0


def test_protected_location_really_consults_authgate(results: dict) -> None:
    """No cookie or a forged one redirects, a valid one passes with identity (no `return` trap)."""
    probes = results["probes"]
    assert probes["G_with_cookie"]["status"] == 200
    assert probes["G_with_cookie"]["user"].startswith("user")
    assert probes["G_without_cookie"]["status"] == 302
    assert "/auth/login?rd=" in probes["G_without_cookie"]["location"]
    assert probes["G_forged_cookie"]["status"] == 302


def test_app_password_scenario_really_uses_the_token(results: dict) -> None:
    """GB's token opens the page as its user; the same header with a wrong secret does not."""
    probes = results["probes"]
    assert probes["GB_with_token"]["status"] == 200
    assert probes["GB_with_token"]["user"] == "user0001"
    assert probes["GB_forged_token"]["status"] == 302


@pytest.mark.parametrize(
    "argv", [["--rounds", "0"], ["--storm-rounds", "-1"], ["--rounds", "x"], ["--multi", "mysql"]]
)
def test_bad_round_counts_are_refused_before_anything_starts(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy/bench/run.py"), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert argv[0] in done.stderr


def test_two_instances_per_engine_answer_next_to_f_and_g(results: dict) -> None:
    """G2-<engine> ran through its own upstream beside F and G of the same rounds, with ratios."""
    scenarios = results["scenarios"]
    summary = results["multi"]
    assert summary["ok"], summary
    for conns in (8,):  # the short run measures the pairs at its lower connection count only
        for name in (*PAIRS, "F", "G"):
            label = f"{name} c{conns}" if name in PAIRS else f"{name} c{conns} multi"
            run = scenarios[label]
            assert run["rps"] > 0 and 0 < run["p50_ms"] <= run["p99_ms"], label
            assert run["cpu_us_per_request"]["backend"] > 0, label
        for name in PAIRS:
            assert summary[f"{name}/F c{conns}"] > 0 and summary[f"G/F c{conns}"] > 0


def test_each_pair_was_probed_and_measured_for_misses_and_revocation(results: dict) -> None:
    """A seeded cookie passes through the pair; cache misses, hits and revocation waits were timed."""
    engines = results["multi"]["engines"]
    assert set(engines) == PAIRS
    for name, engine in engines.items():
        assert engine["probe"]["status"] == 200 and engine["probe"]["user"].startswith("user"), name
        miss = engine["cache_miss"]
        assert miss["ok"] and miss["miss"]["n"] == miss["hit"]["n"] > 0, name
        revocation = engine["revocation"]
        assert revocation["ok"] and revocation["failures"] == [] and revocation["n"] > 0, name
        assert 0 < revocation["p50_ms"] <= revocation["p99_ms"], name
