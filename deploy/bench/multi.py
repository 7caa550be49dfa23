"""The bench's multi-instance scenario: two authgate instances per database engine behind nginx.

run.py starts, per engine (`--multi sqlite,postgres`), two one-worker instances sharing that
engine's database, seeded like the main run (users, one session each), and an nginx server
("G2-<engine>") whose `upstream` lists both (round robin, as deploy/scaling/nginx-upstream.conf).
It measures G through that server next to F and the single-instance G in the same rounds, and
here, straight against the instances (no nginx, one request at a time):

- the cost of a cache miss: the first forward-auth request for a session the instance has not
  seen (read from the database) against the second (answered from its cache), p50/p99;
- revocation latency: a real logout (portal form, CSRF) on instance A, then B polled until it
  refuses the cookie; p50/p99 over the rounds. SQLite has no notification channel, so there
  the bound is `session.cache_ttl`.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COOKIE_NAME = "authgate_session"
APP_URL = "http://app.localhost/app/dashboard?tab=overview"
POLL_INTERVAL = 0.002  # seconds between B's polls while waiting for the refusal
REVOCATION_TIMEOUT = 15.0  # seconds: a round that takes longer failed (cache_ttl is 5 s)
_CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Engine:
    """One database engine both instances of a pair use."""

    name: str  # "sqlite" or "postgres"
    data_dir: Path  # shared by the pair: the SQLite file (or nothing but generated secrets)
    storage_extra: str = ""  # more YAML lines under `storage:` (indented two spaces)
    close: Callable[[], None] = lambda: None  # stops what prepare_engine started


# Engines this checkout can run the pair on.
ENGINES = ("sqlite", "postgres")


def available_engines() -> list[str]:
    """The engines whose tools are installed here (the default of --multi)."""
    from tests.pg import find_pg_bin

    return [name for name in ENGINES if name != "postgres" or find_pg_bin() is not None]


def prepare_engine(name: str, directory: Path) -> Engine:
    """Create the shared database of one pair under `directory` (PostgreSQL: a throwaway cluster)."""
    directory.mkdir(parents=True)
    data_dir = directory / "data"
    if name == "sqlite":
        # Both instances use one data_dir: one SQLite file (WAL), as two processes on one machine can.
        return Engine(name, data_dir)
    if name != "postgres":
        raise ValueError(f"unknown engine {name!r}")
    # The test suite's throwaway cluster (tests/pg.py): initdb as `nobody` when run as root,
    # 127.0.0.1 on a free port, fsync off (sessions are read, not written, on the hot path).
    from tests.pg import PostgresServer, find_pg_bin

    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    server = PostgresServer(bin_dir)
    try:
        server.init()
        server.start()
        server.psql("CREATE DATABASE authgate_bench")
    except BaseException:
        server.cleanup()
        raise
    dsn = server.dsn("authgate_bench")
    stopped: list[bool] = []

    def close() -> None:
        if not stopped:  # called at the end of the phase, and again at exit
            stopped.append(True)
            server.cleanup()

    return Engine(name, data_dir, f"  postgres: {{dsn: '{dsn}'}}\n", close=close)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds (nearest rank; few samples make p99 the maximum)."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p * len(ordered) + 0.5) - 1))]

    return {
        "n": len(ordered),
        "p50_ms": round(rank(0.50) * 1000, 3),
        "p99_ms": round(rank(0.99) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


def _auth_headers(port: int, cookie: str) -> dict[str, str]:
    return {
        "Host": f"localhost:{port}",
        "Cookie": f"{COOKIE_NAME}={cookie}",
        "X-Original-URL": APP_URL,
        "X-Original-Method": "GET",
        "X-Forwarded-For": "127.0.0.1",
    }


async def _status(http: Any, port: int, cookie: str) -> int:
    url = f"http://127.0.0.1:{port}/api/authz/auth-request"
    async with http.get(url, headers=_auth_headers(port, cookie)) as answer:
        await answer.read()
        return int(answer.status)


async def _cache_miss(port: int, cookies: Sequence[str]) -> dict[str, Any]:
    import aiohttp

    misses: list[float] = []
    hits: list[float] = []
    statuses: list[int] = []
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()) as http:
        await _status(http, port, cookies[0])  # open the keep-alive connection first
        for cookie in cookies[1:]:
            for into in (misses, hits):
                started = time.perf_counter()
                statuses.append(await _status(http, port, cookie))
                into.append(time.perf_counter() - started)
    miss, hit = percentiles(misses), percentiles(hits)
    return {
        "miss": miss,
        "hit": hit,
        "miss_minus_hit_p50_ms": round(miss["p50_ms"] - hit["p50_ms"], 3),
        "ok": set(statuses) == {200},
    }


def cache_miss_cost(port: int, cookies: Sequence[str]) -> dict[str, Any]:
    """Time the first (database) and second (cached) request for sessions an instance never saw."""
    return asyncio.run(_cache_miss(port, cookies))


async def _logout(http: Any, port: int, cookie: str) -> None:
    """Sign out as the browser would: the portal's page for the CSRF token, then the form."""
    headers = {"Host": f"localhost:{port}", "Cookie": f"{COOKIE_NAME}={cookie}", "Accept": "text/html"}
    async with http.get(f"http://127.0.0.1:{port}/auth/", headers=headers) as page:
        html = await page.text()
        csrf = page.cookies["authgate_csrf"].value
    token = _CSRF_FIELD.search(html)
    if token is None:
        raise RuntimeError(f"no CSRF token on the portal's home page ({page.status})")
    form = {"csrf_token": token.group(1)}
    cookies = {**headers, "Cookie": f"{COOKIE_NAME}={cookie}; authgate_csrf={csrf}"}
    url = f"http://127.0.0.1:{port}/auth/logout"
    async with http.post(url, data=form, headers=cookies, allow_redirects=False) as answer:
        await answer.read()
        if answer.status != 303:
            raise RuntimeError(f"logout answered {answer.status}")


async def _revocation(a_port: int, b_port: int, cookies: Sequence[str]) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    failures: list[str] = []
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()) as http:
        for cookie in cookies:
            # B has the session cached, as it would after serving the user's pages.
            if await _status(http, b_port, cookie) != 200 or await _status(http, a_port, cookie) != 200:
                failures.append("a seeded session was refused before its logout")
                continue
            await _logout(http, a_port, cookie)
            done = time.perf_counter()
            while True:
                status = await _status(http, b_port, cookie)
                waited = time.perf_counter() - done
                if status == 401:
                    latencies.append(waited)
                    break
                if status != 200 or waited > REVOCATION_TIMEOUT:
                    failures.append(f"B answered {status} {waited:.1f} s after the logout")
                    break
                await asyncio.sleep(POLL_INTERVAL)
    return {**percentiles(latencies), "failures": failures, "ok": bool(latencies) and not failures}


def revocation_latency(a_port: int, b_port: int, cookies: Sequence[str]) -> dict[str, Any]:
    """Log out on A, poll B until it refuses the cookie; p50/p99 of that wait over the rounds."""
    return asyncio.run(_revocation(a_port, b_port, cookies))


def upstream_block(name: str, ports: Sequence[int]) -> str:
    """An nginx upstream over a pair of instances, as deploy/scaling/nginx-upstream.conf has it."""
    servers = "".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n" for port in ports)
    return (
        f"    upstream {name} {{\n{servers}"
        "        keepalive 128;\n        keepalive_requests 10000000;\n    }\n"
    )
