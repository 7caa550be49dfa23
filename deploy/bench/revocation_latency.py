"""Measure revocation latency across two authgate instances on PostgreSQL (LISTEN/NOTIFY).

Instance A and instance B are two processes, each with its own PostgresStore (pool and
listening connection) on one throwaway cluster (tests/pg.py starts it: initdb in a temp dir,
127.0.0.1, a free port). A ends N sessions one at a time; B's revocation listener drops its
cached entry for each. Reported, in milliseconds:
- ack -> drop: from A's delete_session returning (the commit is acknowledged) to B's cache
  drop; negative when B heard the NOTIFY before A's client read the commit reply;
- call -> drop: from A calling delete_session to B's cache drop (includes the commit itself).
Both processes read CLOCK_MONOTONIC, which Linux shares between processes.

Run: python deploy/bench/revocation_latency.py [--count 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.models import Level, SessionRecord  # noqa: E402
from gateway.store.contract import Revocation  # noqa: E402
from gateway.store.postgres import PostgresStore  # noqa: E402
from tests.pg import start_postgres  # noqa: E402


def _instance_b(dsn: str, ready: multiprocessing.synchronize.Event, results: multiprocessing.Queue) -> None:
    async def run() -> None:
        store = await PostgresStore.open(dsn)
        cache = {f"s{i}": object() for i in range(100_000)}  # stands for B's session cache
        done = asyncio.Event()

        def drop(revocation: Revocation) -> None:
            if revocation.kind == "session" and cache.pop(revocation.key, None) is not None:
                results.put((revocation.key, time.monotonic()))
            if revocation.key == "stop":
                done.set()

        store.subscribe_revocations(drop)
        if not await store.wait_listening(10.0):
            raise SystemExit("instance B could not listen")
        ready.set()
        await done.wait()
        await store.close()

    asyncio.run(run())


async def _instance_a(dsn: str, count: int) -> dict[str, tuple[float, float]]:
    store = await PostgresStore.open(dsn)
    try:
        user = await store.create_user("bench", "bench@example.com", "Bench", [], None)
        for i in range(count):
            await store.create_session(
                SessionRecord(
                    f"s{i}", user.id, Level.ONE_FACTOR, 0.0, 0.0, 0.0, 9e9, False, "192.0.2.1", "bench"
                )
            )
        await store.create_session(
            SessionRecord("stop", user.id, Level.ONE_FACTOR, 0.0, 0.0, 0.0, 9e9, False, "", "")
        )
        times = {}
        for i in range(count):
            called = time.monotonic()
            await store.delete_session(f"s{i}")
            times[f"s{i}"] = (called, time.monotonic())
            await asyncio.sleep(0.002)  # revocations one by one, as users sign out
        await store.delete_session("stop")
        return times
    finally:
        await store.close()


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    cut = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": round(cut[49], 3), "p99": round(cut[98], 3), "max": round(ordered[-1], 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="revocations to time")
    args = parser.parse_args()
    server = start_postgres()
    try:
        dsn = server.create_database()
        ready = multiprocessing.Event()
        results: multiprocessing.Queue = multiprocessing.Queue()
        b = multiprocessing.Process(target=_instance_b, args=(dsn, ready, results))
        b.start()
        if not ready.wait(30):
            raise SystemExit("instance B did not start listening")
        sent = asyncio.run(_instance_a(dsn, args.count))
        heard = dict(results.get(timeout=30) for _ in range(args.count))
        b.join(30)
        ack = [(heard[k] - acked) * 1000 for k, (_called, acked) in sent.items()]
        call = [(heard[k] - called) * 1000 for k, (called, _acked) in sent.items()]
        print(
            json.dumps(
                {
                    "revocations": args.count,
                    "ack_to_drop_ms": _percentiles(ack),
                    "call_to_drop_ms": _percentiles(call),
                }
            )
        )
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
