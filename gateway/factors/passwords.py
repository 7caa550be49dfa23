"""Password hashing with argon2id, and the rules for choosing a new password."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import argon2
from argon2.exceptions import Argon2Error, InvalidHashError, UnsupportedParametersError

from gateway.config import Argon2Config
from gateway.logs import log_event

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024

_T = TypeVar("_T")


class PasswordHasher:
    """Hash and verify passwords with argon2id at the configured cost."""

    def __init__(self, cfg: Argon2Config) -> None:
        self._argon2 = argon2.PasswordHasher(
            time_cost=cfg.time_cost,
            memory_cost=cfg.memory_cost,
            parallelism=cfg.parallelism,
            type=argon2.Type.ID,
        )
        # Verified in place of a missing hash, so unknown users and passwordless
        # accounts cost exactly as much as a real wrong password.
        self._dummy_hash = self._argon2.hash(secrets.token_urlsafe(32))

    def hash(self, password: str) -> str:
        """Return an argon2id hash of `password` in PHC string form."""
        return self._argon2.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        """Return whether `password` matches `password_hash`; always False when the hash is None."""
        if password_hash is None:
            self._verify_dummy(password)
            return False
        try:
            return self._argon2.verify(password_hash, password)
        except InvalidHashError:
            # A corrupt stored hash must not answer measurably faster than a real one.
            self._verify_dummy(password)
            return False
        except Argon2Error:
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """Return whether the hash was made with other parameters (or cannot be parsed)."""
        try:
            return self._argon2.check_needs_rehash(password_hash)
        except (InvalidHashError, UnsupportedParametersError):
            return True

    def _verify_dummy(self, password: str) -> None:
        try:
            self._argon2.verify(self._dummy_hash, password)
        except Argon2Error:
            pass


def validate_new_password(password: str) -> str | None:
    """Return why `password` is not acceptable as a new password, or None when it is."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"The password must be at least {MIN_PASSWORD_LENGTH} characters long."
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"The password must be at most {MAX_PASSWORD_LENGTH} characters long."
    if not password.strip():
        return "The password must not consist of spaces only."
    return None


def lower_thread_priority(steps: int) -> int | None:
    """Make the calling thread `steps` nice levels lower in priority; return its nice value.

    Linux keeps a nice value per thread (setpriority with a thread id) and threads inherit
    it, so argon2's own lane threads started from here run at the lowered priority too.
    Returns None where that is not possible (other systems, a sandbox refusing it).
    """
    if steps <= 0 or not sys.platform.startswith("linux"):
        return None
    thread = threading.get_native_id()
    try:
        nice = min(19, os.getpriority(os.PRIO_PROCESS, thread) + steps)
        os.setpriority(os.PRIO_PROCESS, thread, nice)
    except OSError as exc:
        log_event("password_niceness_unavailable", logging.WARNING, error=str(exc))
        return None
    return nice


def pin_thread(cpus: Sequence[int]) -> frozenset[int] | None:
    """Let the calling thread run only on `cpus`; return the CPUs it may use now.

    Linux keeps an affinity per thread and new threads inherit it, so argon2's lane
    threads stay on these CPUs too. Empty `cpus`: no change. Returns None where that
    is not possible (other systems, CPUs outside this process's cpuset).
    """
    if not cpus:
        return None
    try:
        os.sched_setaffinity(0, cpus)  # 0: the calling thread
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError) as exc:
        log_event("password_cpus_unavailable", logging.WARNING, cpus=list(cpus), error=str(exc))
        return None


def _start_hashing_thread(niceness: int, cpus: Sequence[int]) -> None:
    lower_thread_priority(niceness)
    pin_thread(cpus)


class AsyncPasswordHasher:
    """Run a PasswordHasher in worker threads so hashing never blocks the event loop."""

    def __init__(
        self, hasher: PasswordHasher, max_concurrent: int, *, niceness: int = 0, cpus: Sequence[int] = ()
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        if not 0 <= niceness <= 19:
            raise ValueError(f"niceness must be 0-19, got {niceness}")
        if any(cpu < 0 for cpu in cpus):
            raise ValueError(f"cpus must be CPU numbers >= 0, got {list(cpus)}")
        self._hasher = hasher
        # argon2 releases the GIL, so threads give real parallelism. Excess logins
        # wait on the semaphore, where they stay cancellable and hold no argon2
        # memory; the pool size still caps running hashes when a cancelled caller
        # has released its slot while its hash finishes in the thread.
        self._semaphore = asyncio.Semaphore(max_concurrent)
        # At a lower priority, a hash running on a busy machine gives way to the event loop
        # (forward-auth answers) instead of sharing the cores with it evenly. While the CPU is
        # saturated a login takes longer (~1 s instead of ~0.3 s in the bench's storm), and
        # forward-auth keeps about twice the throughput (docs/performance.md). Kept to `cpus`,
        # hashes never run on the cores left to forward-auth: the one thing that kept a login
        # storm from raising forward-auth's p99 in the bench (argon2's memory sweeps slow
        # everything sharing a core, whatever its priority).
        self._executor = ThreadPoolExecutor(
            max_workers=max_concurrent,
            thread_name_prefix="argon2",
            initializer=_start_hashing_thread,
            initargs=(niceness, tuple(cpus)),
        )

    async def hash(self, password: str) -> str:
        """Hash `password` in a worker thread."""
        return await self._run(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Verify `password` in a worker thread; same semantics as PasswordHasher.verify."""
        return await self._run(self._hasher.verify, password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        """Cheap (no hashing): whether the hash was made with other parameters."""
        return self._hasher.needs_rehash(password_hash)

    def close(self) -> None:
        """Stop the worker threads, dropping queued work and waiting for running hashes."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        async with self._semaphore:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, fn, *args)
