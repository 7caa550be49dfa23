"""deploy/authgate.service: its system call filter lets authgate do what it does.

systemd kills a service (SIGSYS) that makes a system call its SystemCallFilter= leaves
out, so a call the filter misses is a crash in production, not an error message. The
groups (@system-service, @resources, ...) are expanded with systemd-analyze, the same
tables systemd applies.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "authgate.service"

# Calls authgate makes that the hardening groups single out (the rest of Python's and
# aiohttp's needs are in @system-service): password hashing threads read and lower their own
# priority (password.niceness) and keep to password.cpus.
NEEDED = {"setpriority", "getpriority", "sched_setaffinity", "sched_getaffinity"}


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        message = (
            "systemd-analyze not found; run `bash deploy/ensure-test-tools.sh` or `apt-get install systemd`"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@functools.cache
def _expand(name: str) -> frozenset[str]:
    """The system calls a filter entry names: a call itself, or a @group with its nested groups."""
    if not name.startswith("@"):
        return frozenset({name})
    listing = subprocess.run(
        [_systemd_analyze(), "syscall-filter", name], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    calls: set[str] = set()
    for line in listing.splitlines()[1:]:  # the first line is the group's own name
        entry = line.strip()
        if entry and not entry.startswith("#"):
            calls |= _expand(entry)
    return frozenset(calls)


def allowed_calls(unit_text: str) -> frozenset[str]:
    """Apply the unit's SystemCallFilter= lines in order, as systemd does for an allow list."""
    allowed: set[str] | None = None
    for line in unit_text.splitlines():
        if not line.startswith("SystemCallFilter="):
            continue
        value = line.removeprefix("SystemCallFilter=")
        deny = value.startswith("~")
        calls = set().union(*(_expand(entry) for entry in value.removeprefix("~").split()))
        if allowed is None:
            assert not deny, "the first SystemCallFilter= line must be an allow list"
            allowed = calls
        elif deny:
            allowed -= calls
        else:
            allowed |= calls
    assert allowed is not None, "the unit has no SystemCallFilter="
    return frozenset(allowed)


def test_the_unit_allows_what_password_hashing_calls() -> None:
    assert NEEDED <= allowed_calls(UNIT.read_text())


def test_the_check_would_catch_a_filter_that_forgets_them() -> None:
    """Without its last filter line the unit denies the two setters (they are in @resources)."""
    text = UNIT.read_text().replace("SystemCallFilter=setpriority sched_setaffinity\n", "")
    assert NEEDED - allowed_calls(text) == {"setpriority", "sched_setaffinity"}


def test_privileged_calls_stay_denied() -> None:
    assert not {"setuid", "mount", "setrlimit", "sched_setscheduler"} & allowed_calls(UNIT.read_text())
