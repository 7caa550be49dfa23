"""argon2id password hashing, new-password rules and the executor wrapper."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterator

import argon2
import pytest

from gateway.config import Argon2Config
from gateway.factors.passwords import (
    AsyncPasswordHasher,
    PasswordHasher,
    lower_thread_priority,
    pin_thread,
    validate_new_password,
)

CHEAP = Argon2Config(time_cost=1, memory_cost=64, parallelism=1, max_concurrent=2)


@pytest.fixture(scope="module")
def hasher() -> PasswordHasher:
    return PasswordHasher(CHEAP)


@pytest.fixture
def argon2_verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the hash every argon2 verify is run against."""
    calls: list[str] = []
    real_verify = argon2.PasswordHasher.verify

    def spy(self: argon2.PasswordHasher, hash: str | bytes, password: str | bytes) -> bool:
        calls.append(str(hash))
        return real_verify(self, hash, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", spy)
    return calls


def test_hash_is_argon2id_with_configured_parameters(hasher: PasswordHasher) -> None:
    """Hashes are argon2id PHC strings carrying the configured cost."""
    password_hash = hasher.hash("correct horse")

    assert password_hash.startswith("$argon2id$")
    assert "m=64,t=1,p=1" in password_hash
    assert hasher.hash("correct horse") != password_hash  # fresh salt each time


def test_verify_right_and_wrong(hasher: PasswordHasher) -> None:
    """The right password verifies, a wrong one does not."""
    password_hash = hasher.hash("correct horse")

    assert hasher.verify(password_hash, "correct horse") is True
    assert hasher.verify(password_hash, "correct horsE") is False


def test_verify_none_hash_does_the_same_work(hasher: PasswordHasher, argon2_verify_calls: list[str]) -> None:
    """A missing hash is False, after a real argon2 verify against a dummy hash."""
    assert hasher.verify(None, "anything") is False
    assert len(argon2_verify_calls) == 1
    assert argon2_verify_calls[0].startswith("$argon2id$v=19$m=64,t=1,p=1$")


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "not a hash",
        "$argon2id$v=19$m=64,t=1,p=1$xx$yy",
        "$2b$12$abcdefghijklmnopqrstuuKhGqFQ7Y0sM9NfU1vB3b8a1Yy9o7W9e",
    ],
)
def test_verify_garbage_hash_is_false(hasher: PasswordHasher, garbage: str) -> None:
    """An unparseable stored hash is False, never an exception."""
    assert hasher.verify(garbage, "anything") is False


def test_verify_non_argon2_hash_still_costs_a_verify(
    hasher: PasswordHasher, argon2_verify_calls: list[str]
) -> None:
    """A stored hash argon2 cannot even parse is answered after verifying the dummy hash."""
    assert hasher.verify("not a hash", "anything") is False
    assert argon2_verify_calls[-1].startswith("$argon2id$v=19$m=64,t=1,p=1$")


def test_verify_accepts_hashes_made_with_other_parameters(hasher: PasswordHasher) -> None:
    """Old hashes keep working after the cost is raised (they are rehashed at login)."""
    old = PasswordHasher(Argon2Config(time_cost=2, memory_cost=128, parallelism=1)).hash("pw-12345")

    assert hasher.verify(old, "pw-12345") is True


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        (CHEAP, False),
        (Argon2Config(time_cost=2, memory_cost=64, parallelism=1), True),
        (Argon2Config(time_cost=1, memory_cost=128, parallelism=1), True),
        (Argon2Config(time_cost=1, memory_cost=64, parallelism=2), True),
    ],
)
def test_needs_rehash_when_parameters_change(
    hasher: PasswordHasher, other: Argon2Config, expected: bool
) -> None:
    """A hash made with different parameters needs rehashing; one with the same does not."""
    assert hasher.needs_rehash(PasswordHasher(other).hash("pw-12345")) is expected


def test_needs_rehash_for_garbage(hasher: PasswordHasher) -> None:
    """A hash that cannot be parsed should be replaced."""
    assert hasher.needs_rehash("not a hash") is True


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("", "at least 8"),
        ("1234567", "at least 8"),
        ("12345678", None),
        ("pässwörd", None),
        ("correct horse battery staple", None),
        ("x" * 1024, None),
        ("x" * 1025, "at most 1024"),
        (" " * 8, "spaces only"),
        ("\t\n \u00a0    ", "spaces only"),
        ("  pass  ", None),
    ],
)
def test_validate_new_password(password: str, problem: str | None) -> None:
    """New passwords need 8 to 1024 characters and something besides whitespace."""
    message = validate_new_password(password)

    if problem is None:
        assert message is None
    else:
        assert message is not None and problem in message


@pytest.fixture
def async_hasher(hasher: PasswordHasher) -> Iterator[AsyncPasswordHasher]:
    wrapped = AsyncPasswordHasher(hasher, max_concurrent=2)
    yield wrapped
    wrapped.close()


async def test_async_hash_and_verify(async_hasher: AsyncPasswordHasher) -> None:
    """The async wrapper hashes and verifies like the sync hasher."""
    password_hash = await async_hasher.hash("correct horse")

    assert password_hash.startswith("$argon2id$")
    assert await async_hasher.verify(password_hash, "correct horse") is True
    assert await async_hasher.verify(password_hash, "wrong horse") is False
    assert await async_hasher.verify(None, "correct horse") is False


async def test_async_runs_off_the_event_loop_thread(
    hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hashing happens in a worker thread, not on the loop's thread."""
    threads: list[int] = []

    def recording_hash(password: str) -> str:
        threads.append(threading.get_ident())
        return "h"

    monkeypatch.setattr(hasher, "hash", recording_hash)
    wrapped = AsyncPasswordHasher(hasher, max_concurrent=1)
    try:
        assert await wrapped.hash("x") == "h"
    finally:
        wrapped.close()

    assert threads and threads[0] != threading.get_ident()


async def test_async_respects_the_concurrency_bound(hasher: PasswordHasher) -> None:
    """No more than max_concurrent hashes run at once, however many are requested."""

    class SlowHasher(PasswordHasher):
        def __init__(self) -> None:
            self.running = 0
            self.peak = 0
            self.lock = threading.Lock()

        def verify(self, password_hash: str | None, password: str) -> bool:
            with self.lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            threading.Event().wait(0.02)
            with self.lock:
                self.running -= 1
            return True

    slow = SlowHasher()
    wrapped = AsyncPasswordHasher(slow, max_concurrent=2)
    try:
        results = await asyncio.gather(*(wrapped.verify("h", "pw") for _ in range(8)))
    finally:
        wrapped.close()

    assert results == [True] * 8
    assert slow.peak == 2


def test_async_rejects_a_zero_bound(hasher: PasswordHasher) -> None:
    """max_concurrent below 1 would deadlock every login, so it is refused."""
    with pytest.raises(ValueError):
        AsyncPasswordHasher(hasher, max_concurrent=0)


def _thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class NiceRecordingHasher(PasswordHasher):
    """Records the nice value of the thread each verify runs on."""

    def __init__(self) -> None:
        self.nice_values: list[int] = []

    def verify(self, password_hash: str | None, password: str) -> bool:
        self.nice_values.append(_thread_nice())
        return True


linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread nice values are a Linux feature"
)


@linux_only
async def test_async_hashes_run_at_a_lower_priority_than_the_event_loop() -> None:
    """With niceness N, hashing threads run N nice levels below the event loop, which keeps its own."""
    loop_nice = _thread_nice()
    recording = NiceRecordingHasher()
    wrapped = AsyncPasswordHasher(recording, max_concurrent=2, niceness=5)
    try:
        await asyncio.gather(*(wrapped.verify("h", "pw") for _ in range(4)))
    finally:
        wrapped.close()

    assert recording.nice_values == [min(19, loop_nice + 5)] * 4
    assert _thread_nice() == loop_nice


@linux_only
async def test_async_niceness_zero_leaves_the_priority_alone() -> None:
    recording = NiceRecordingHasher()
    wrapped = AsyncPasswordHasher(recording, max_concurrent=1, niceness=0)
    try:
        await wrapped.verify("h", "pw")
    finally:
        wrapped.close()

    assert recording.nice_values == [_thread_nice()]


@linux_only
def test_lower_thread_priority_changes_only_the_calling_thread() -> None:
    """setpriority with a thread id lowers that thread alone, not the whole process."""
    seen: dict[str, int | None] = {}

    def lower() -> None:
        seen["returned"] = lower_thread_priority(3)
        seen["thread"] = _thread_nice()

    before = _thread_nice()
    worker = threading.Thread(target=lower)
    worker.start()
    worker.join()

    assert seen["returned"] == seen["thread"] == min(19, before + 3)
    assert _thread_nice() == before


def test_lower_thread_priority_by_zero_does_nothing() -> None:
    assert lower_thread_priority(0) is None


@pytest.mark.parametrize("niceness", [-1, 20])
def test_async_rejects_a_niceness_outside_0_to_19(hasher: PasswordHasher, niceness: int) -> None:
    with pytest.raises(ValueError, match="niceness"):
        AsyncPasswordHasher(hasher, max_concurrent=1, niceness=niceness)


class CpuRecordingHasher(PasswordHasher):
    """Records the CPUs the thread of each verify may run on."""

    def __init__(self) -> None:
        self.cpus: list[frozenset[int]] = []

    def verify(self, password_hash: str | None, password: str) -> bool:
        self.cpus.append(frozenset(os.sched_getaffinity(0)))
        return True


linux_affinity = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="per-thread CPU affinity is a Linux feature"
)


@linux_affinity
async def test_async_hashes_run_only_on_the_configured_cpus() -> None:
    """With cpus, hashing threads are kept to them and the event loop keeps every CPU it had."""
    loop_cpus = frozenset(os.sched_getaffinity(0))
    chosen = (min(loop_cpus),)
    recording = CpuRecordingHasher()
    wrapped = AsyncPasswordHasher(recording, max_concurrent=2, cpus=chosen)
    try:
        await asyncio.gather(*(wrapped.verify("h", "pw") for _ in range(4)))
    finally:
        wrapped.close()

    assert recording.cpus == [frozenset(chosen)] * 4
    assert frozenset(os.sched_getaffinity(0)) == loop_cpus


@linux_affinity
async def test_async_without_cpus_leaves_the_affinity_alone() -> None:
    recording = CpuRecordingHasher()
    wrapped = AsyncPasswordHasher(recording, max_concurrent=1)
    try:
        await wrapped.verify("h", "pw")
    finally:
        wrapped.close()

    assert recording.cpus == [frozenset(os.sched_getaffinity(0))]


def test_pin_thread_to_nothing_does_nothing() -> None:
    assert pin_thread(()) is None


@linux_affinity
def test_pin_thread_to_a_cpu_outside_the_machine_warns_and_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A CPU the kernel refuses (here one that does not exist) is logged; hashing still works."""
    seen: dict[str, object] = {}

    def pin() -> None:
        seen["returned"] = pin_thread((4095,))
        seen["cpus"] = frozenset(os.sched_getaffinity(0))

    worker = threading.Thread(target=pin)
    worker.start()
    worker.join()

    assert seen["returned"] is None
    assert seen["cpus"] == frozenset(os.sched_getaffinity(0))
    assert "password_cpus_unavailable" in caplog.text


def test_async_rejects_a_negative_cpu(hasher: PasswordHasher) -> None:
    with pytest.raises(ValueError, match="cpus"):
        AsyncPasswordHasher(hasher, max_concurrent=1, cpus=(-1,))
