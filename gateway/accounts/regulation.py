"""Brute-force regulation: when a run of failed logins bans further attempts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.config import RegulationConfig


def banned_until(failure_times: Sequence[float], *, now: float, cfg: RegulationConfig) -> float | None:
    """Return when the ban on further attempts ends, or None when attempts are allowed.

    `failure_times` are the failures since the latest success (any order). As in
    Authelia, the most recent `max_retries` failures trigger a ban when they all
    fall within `find_time`; it lasts `ban_time` from the latest of them.
    """
    if cfg.max_retries <= 0:
        return None
    if len(failure_times) < cfg.max_retries:
        return None
    recent = sorted(failure_times)[-cfg.max_retries :]
    latest = recent[-1]
    if latest - recent[0] > cfg.find_time:
        return None
    until = latest + cfg.ban_time
    if now >= until:
        return None
    return until


def count_banned(failures_by_key: Mapping[str, Sequence[float]], *, now: float, cfg: RegulationConfig) -> int:
    """Count the keys (accounts or addresses) whose failures ban them at `now`."""
    return sum(1 for times in failures_by_key.values() if banned_until(times, now=now, cfg=cfg) is not None)
