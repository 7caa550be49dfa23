"""Brute-force regulation: which runs of failures ban, and for how long."""

from __future__ import annotations

import pytest

from gateway.accounts.regulation import banned_until
from gateway.config import RegulationConfig

CFG = RegulationConfig(max_retries=3, find_time=120.0, ban_time=300.0)


@pytest.mark.parametrize(
    ("failures", "now", "expected"),
    [
        pytest.param([], 1000.0, None, id="no failures"),
        pytest.param([1000.0, 1010.0], 1010.0, None, id="below threshold"),
        pytest.param([1000.0, 1010.0, 1020.0], 1020.0, 1320.0, id="at threshold"),
        pytest.param([1020.0, 1000.0, 1010.0], 1020.0, 1320.0, id="order does not matter"),
        pytest.param([1000.0, 1060.0, 1120.0], 1120.0, 1420.0, id="spread exactly find_time"),
        pytest.param([1000.0, 1060.0, 1120.5], 1120.5, None, id="spread wider than find_time"),
        pytest.param([500.0, 1000.0, 1010.0, 1020.0], 1020.0, 1320.0, id="only the latest run counts"),
        pytest.param([1000.0, 1010.0, 1020.0, 1500.0], 1500.0, None, id="old run plus one new failure"),
        pytest.param([1000.0, 1010.0, 1020.0], 1319.0, 1320.0, id="ban still on"),
        pytest.param([1000.0, 1010.0, 1020.0], 1320.0, None, id="ban lifts after ban_time"),
    ],
)
def test_banned_until(failures: list[float], now: float, expected: float | None) -> None:
    """The latest max_retries failures within find_time ban until the latest + ban_time."""
    assert banned_until(failures, now=now, cfg=CFG) == expected


def test_zero_retries_disables_regulation() -> None:
    """max_retries = 0 never bans, however many failures there were."""
    cfg = RegulationConfig(max_retries=0, find_time=120.0, ban_time=300.0)

    assert banned_until([1000.0] * 50, now=1000.0, cfg=cfg) is None


def test_single_retry_bans_at_first_failure() -> None:
    """With max_retries = 1 one failure is enough (its spread is zero)."""
    cfg = RegulationConfig(max_retries=1, find_time=0.0, ban_time=60.0)

    assert banned_until([1000.0], now=1000.0, cfg=cfg) == 1060.0
