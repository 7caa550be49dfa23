"""Count the CPU instructions authgate spends on one cached forward-auth request, with callgrind.

Wall-clock benchmarks on a shared machine drift by tens of percent from run to run (see
docs/performance.md); instruction counts do not depend on what else the machine is doing. This
runs one authgate worker (the real server: uvloop, aiohttp, prepared answers) under
`valgrind --tool=callgrind` with collection off, warms it up, then counts the instructions of two
batches of nginx-style `auth-request` subrequests on one keep-alive connection and reports the
difference per request (the least of three batches of each size), which cancels startup and
the batch edges out.

    python deploy/bench/instructions.py                      # this checkout, metrics off
    python deploy/bench/instructions.py --metrics            # metrics enabled (listener + files)
    python deploy/bench/instructions.py --checkout ../other  # another checkout (e.g. a worktree
                                                             # of an older commit), same harness

Only time-driven work (the per-second metrics file, activity flushes) depends on the clock; under
callgrind's ~50x slowdown it happens more often per request than in real life, so a small excess
with `--metrics` is an upper bound.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COOKIE_NAME = "authgate_session"
WARMUP = 300
SMALL, LARGE = 300, 1300
ROUNDS = 3  # the least of each batch size: timer-driven work (cache refresh) lands in few batches

# Seeds one user and one session with the checkout's own store and session code, so the same
# harness measures older commits too.
_SEED = """
import asyncio, sys, time
from gateway.app import session_keys
from gateway.config import load_config
from gateway.models import Level
from gateway.sessions.codec import SessionCodec
from gateway.sessions.service import SessionService
from gateway.store.sqlite import Store

async def main() -> None:
    config = load_config(sys.argv[1], {})
    store = await Store.open(config.storage.database_path)
    cfg = config.session
    codec = SessionCodec(session_keys(config), max_age=max(cfg.expiration, cfg.remember_me))
    service = SessionService(store, codec, cfg, config.identity_headers, time.time)
    try:
        user = await store.create_user("bench", "bench@example.com", "Bench User", ["users"], None)
        cookie = await service.create(
            user, Level.ONE_FACTOR, remember_me=False, ip="127.0.0.1", user_agent="seed"
        )
        print(cookie)
    finally:
        await store.close()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, data_dir: Path, port: int, metrics_port: int | None) -> None:
    metrics = f"metrics: {{enabled: true, listen: '127.0.0.1:{metrics_port}'}}\n" if metrics_port else ""
    path.write_text(
        metrics
        + f"""server: {{host: 127.0.0.1, port: {port}, workers: 1}}
log: {{level: warning}}
storage: {{data_dir: {data_dir}}}
session:
  cookies: [{{domain: localhost, portal_url: 'http://localhost:8080/auth'}}]
  cookie_name: {COOKIE_NAME}
  secure: false
  cache_ttl: 60s
  activity_flush_interval: 1h
regulation: {{max_retries: 0}}
access_control:
  default_policy: deny
  rules:
    - {{domain: localhost, path: '^/public([/?]|$)', policy: bypass}}
    - {{domain: localhost, path: '^/admin([/?]|$)', subject: 'group:admins', policy: one_factor}}
    - {{domain: localhost, path: '^/admin([/?]|$)', policy: deny}}
    - {{domain: localhost, policy: one_factor}}
"""
    )


def wait_for(port: int, proc: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"authgate exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"authgate did not listen on {port} within {seconds:.0f}s")


def send(conn: http.client.HTTPConnection, cookie: str, count: int) -> None:
    headers = {
        "X-Original-URL": "http://localhost:8080/dashboard",
        "X-Original-Method": "GET",
        "X-Forwarded-For": "127.0.0.1",
        "Cookie": f"{COOKIE_NAME}={cookie}",
    }
    for _ in range(count):
        conn.request("GET", "/api/authz/auth-request", headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"forward-auth answered {response.status}, expected 200")


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def batch_instructions(pid: int, conn: http.client.HTTPConnection, cookie: str, count: int, out: Path) -> int:
    """Zero the counters, answer `count` requests, dump; return the dump's instruction total."""
    before = set(out.parent.glob(out.name + "*"))
    control(pid, "--zero")
    send(conn, cookie, count)
    control(pid, "--dump")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = set(out.parent.glob(out.name + "*")) - before
        for path in new:
            match = re.search(r"^(?:summary|totals): (\d+)", path.read_text(errors="replace"), re.M)
            if match:
                return int(match.group(1))
        time.sleep(0.2)
    raise SystemExit("callgrind wrote no dump")


def measure(checkout: Path, metrics: bool) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="authgate-instr-"))
    try:
        port = free_port()
        config = work / "authgate.yml"
        write_config(config, work / "data", port, free_port() if metrics else None)
        env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONHASHSEED": "0"}
        python = sys.executable
        seeded = subprocess.run(
            [python, "-m", "gateway", "config", "check", str(config)],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if seeded.returncode != 0:
            raise SystemExit(f"config check failed:\n{seeded.stdout}{seeded.stderr}")
        # `serve` migrates; seed after one short start so the schema exists.
        first = subprocess.Popen(
            [python, "-m", "gateway", "--config", str(config), "serve"], cwd=checkout, env=env
        )
        wait_for(port, first, 60)
        first.terminate()
        first.wait(timeout=30)
        cookie = subprocess.run(
            [python, "-c", _SEED, str(config)],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.strip()
        out = work / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            python,
            "-m",
            "gateway",
            "--config",
            str(config),
            "serve",
        ]
        log = (work / "valgrind.log").open("w")
        proc = subprocess.Popen(command, cwd=checkout, env=env, stdout=log, stderr=log)
        try:
            wait_for(port, proc, 600)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            control(proc.pid, "--instr=on")
            send(conn, cookie, WARMUP)
            smalls, larges = [], []
            for _ in range(ROUNDS):
                smalls.append(batch_instructions(proc.pid, conn, cookie, SMALL, out))
                larges.append(batch_instructions(proc.pid, conn, cookie, LARGE, out))
            small, large = min(smalls), min(larges)
            conn.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        per_request = (large - small) / (LARGE - SMALL)
        return {
            "checkout": str(checkout),
            "metrics": metrics,
            "instructions_per_request": round(per_request),
            "batches": {SMALL: smalls, LARGE: larges},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the authgate checkout to measure")
    parser.add_argument("--metrics", action="store_true", help="enable metrics (listener + per-second file)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind not found: apt-get install valgrind")
    print(json.dumps(measure(args.checkout.resolve(), args.metrics), indent=2))


if __name__ == "__main__":
    main()
