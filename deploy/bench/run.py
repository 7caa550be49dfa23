"""`make bench`: forward-auth throughput and latency through real nginx, side by side in one run.

Scenarios (each at -c8 and -c64, wrk -t2 on 127.0.0.1, content from a static file):
  L     nginx auth_request to an internal `return 204` location (the limit for any gateway)
  F     nginx -> an empty aiohttp handler in authgate's process model (the framework floor)
  G     nginx -> authgate: valid session cookie, a rule match, identity headers copied
  G401  the same without a cookie (authgate's 401 + Location, nginx's 302 to the portal)
  GB    the same with an app password over Basic instead of a cookie (CalDAV, git, scripts)
Plus: G's p99 while a login storm runs (5 password logins/s, default argon2 parameters),
G with --workers 1 vs --workers N, and an in-process micro-benchmark of the decision
(10 vs 10,000 rules; 1 vs 100,000 cached sessions).
Plus (--multi, deploy/bench/multi.py): G2-<engine>, G through an nginx upstream over two
one-worker instances sharing one database per engine, in rounds next to F and G; per engine
the cost of a cache miss and the revocation latency from a logout on A until B refuses.

Every process started here is stopped at the end; all traffic is bounded in time.
Prints a table and writes bench-results/bench-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import gc
import json
import os
import random
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

import multi  # noqa: E402 - deploy/bench/multi.py, next to this script

from gateway.config import AccessControlConfig, AccessRule, Argon2Config, SessionConfig  # noqa: E402
from gateway.models import Level, OriginalRequest, Policy, SessionRecord, Subject  # noqa: E402

COOKIE_NAME = "authgate_session"
APP_HOST = "app.localhost"
APP_PATH = "/app/dashboard?tab=overview"
PASSWORD = "bench-password-1"  # noqa: S105 - a throwaway account in a throwaway database
USERS = 1000
# Expected statuses nginx sends the client per scenario. 499 = wrk closed a
# connection with a request in flight when its time was up (at most one per connection).
EXPECTED = {"L": {200}, "F": {200}, "G": {200}, "G401": {302}, "GB": {200}}
GB_USER = "user0001"  # scenario GB's app password belongs to this seeded user


# --- small process helpers -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, seconds: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {seconds} s")


class Processes:
    """Every process the bench starts; stop_all() ends them (process groups we created)."""

    def __init__(self) -> None:
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], *, log: Path, env: dict[str, str] | None = None) -> Any:
        out = log.open("ab")
        proc = subprocess.Popen(  # noqa: S603 - argv built here from fixed parts
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=ROOT
        )
        out.close()
        self._procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 10.0) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        # Each child leads its own session: signal the group so spawned workers go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        # Workers of a stopped parent may still be exiting; make sure the group is gone.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def pid(self, name: str) -> int | None:
        proc = self._procs.get(name)
        return None if proc is None else proc.pid

    def stop_all(self) -> None:
        for name in list(self._procs):
            self.stop(name)


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds used so far by a process and its live descendants (Linux /proc).

    Throughput on a shared machine moves with whatever else runs; CPU time spent per request
    by each part (backend, nginx, wrk) does not, so the bench reports both.
    """
    parents: dict[int, int] = {}
    used: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # Fields after the parenthesised command name: state, ppid, ..., utime (14th), stime (15th).
        fields = text[text.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        used[pid] = int(fields[11]) + int(fields[12])
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(used.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds per part between start() and stop(): process trees by root pid, and wrk
    (this process's reaped children, which between the two calls are only the wrk run)."""

    def __init__(self, roots: dict[str, int | None]) -> None:
        self._roots = {name: pid for name, pid in roots.items() if pid is not None}
        self._before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        now = {name: tree_cpu_seconds(pid) for name, pid in self._roots.items()}
        now["wrk"] = children.ru_utime + children.ru_stime
        return now

    def start(self) -> None:
        self._before = self._now()

    def per_request_us(self, requests: int) -> dict[str, float]:
        after = self._now()
        return {name: round((after[name] - self._before[name]) * 1e6 / max(requests, 1), 1) for name in after}


# --- seeding --------------------------------------------------------------------------------------


def rules_yaml() -> str:
    """A realistic rule set of 20 rules: public paths, admin areas, networks, groups, a catch-all."""
    return """
  default_policy: deny
  rules:
    - {domain: public.localhost, policy: bypass}
    - {domain: app.localhost, path: '^/static/', policy: bypass}
    - {domain: app.localhost, path: '^/healthz$', policy: bypass}
    - {domain: api.localhost, methods: OPTIONS, policy: bypass}
    - {domain: app.localhost, path: '^/admin(/|$)', subject: 'group:contractors', policy: deny}
    - {domain: app.localhost, path: '^/admin(/|$)', subject: 'group:admins', policy: one_factor}
    - {domain: app.localhost, path: '^/admin(/|$)', policy: deny}
    - {domain: '*.internal.localhost', networks: [10.0.0.0/8, 192.168.0.0/16], policy: one_factor}
    - {domain: grafana.localhost, subject: 'group:ops', policy: one_factor}
    - {domain: grafana.localhost, policy: deny}
    - {domain: wiki.localhost, path: '^/(special|admin)/', subject: 'group:editors', policy: one_factor}
    - {domain: wiki.localhost, path: '^/(special|admin)/', policy: deny}
    - {domain: git.localhost, path: '^/[^/]+/[^/]+/(info/lfs|git-upload-pack)', policy: bypass}
    - {domain: git.localhost, methods: [POST, PUT, DELETE], subject: 'group:devs', policy: one_factor}
    - {domain: media.localhost, path: '^/api/', methods: [GET, HEAD], policy: one_factor}
    - {domain: [photos.localhost, files.localhost], subject: ['group:family', 'user:user0001'],
       policy: one_factor}
    - {domain: [photos.localhost, files.localhost], policy: deny}
    - {domain: app.localhost, path: '^/api/v[0-9]+/', methods: [GET, POST, PUT, DELETE], policy: one_factor}
    - {domain: app.localhost, path: '\\.(php|cgi|env)$', policy: deny}
    - {domain: '*.localhost', policy: one_factor}
"""


METRICS_TOKEN = "bench-metrics-token-0123456789abcdef"  # noqa: S105 - a throwaway bench token


def write_config(
    path: Path,
    *,
    data_dir: Path,
    port: int,
    portal_port: int,
    workers: int,
    key: str,
    metrics_port: int | None = None,
    storage_extra: str = "",
) -> None:
    metrics = (
        f"metrics: {{enabled: true, listen: '127.0.0.1:{metrics_port}', token: '{METRICS_TOKEN}'}}\n"
        if metrics_port is not None
        else ""
    )
    path.write_text(
        metrics
        + f"""# Generated by deploy/bench/run.py
server:
  host: 127.0.0.1
  port: {port}
  workers: {workers}
log:
  level: warning
storage:
  data_dir: {data_dir}
{storage_extra}secrets:
  session_keys: ['{key}']
session:
  cookies:
    - domain: localhost
      portal_url: http://localhost:{portal_port}/auth
  cookie_name: {COOKIE_NAME}
  secure: false
  expiration: 12h
  inactivity: 1h
  cache_ttl: 5s
  activity_flush_interval: 10s
regulation:
  max_retries: 0
access_control:{rules_yaml()}"""
    )


async def seed(
    config_path: Path, cookie_file: Path, *, extra_file: Path | None = None, extra: int = 0
) -> dict[str, Any]:
    """Create USERS users (one shared default-cost argon2 hash) and one session each.

    `extra` more sessions (of the first users) go to `extra_file`: sessions no load has touched,
    for the multi-instance scenario's cache-miss timings.
    """
    from gateway.app import session_keys
    from gateway.config import load_config
    from gateway.factors.passwords import PasswordHasher
    from gateway.sessions.codec import SessionCodec
    from gateway.sessions.service import SessionService
    from gateway.store.engine import open_store

    config = load_config(str(config_path), {})
    started = time.perf_counter()
    # One hash at the default cost for everyone: hashing 1,000 passwords would take minutes.
    password_hash = PasswordHasher(Argon2Config()).hash(PASSWORD)
    store = await open_store(config.storage)
    cfg = config.session
    codec = SessionCodec(session_keys(config), max_age=max(cfg.expiration, cfg.remember_me))
    service = SessionService(store, codec, cfg, config.identity_headers, time.time)
    cookies = []
    more = []
    try:
        for i in range(USERS):
            groups = ["users"] + (["admins"] if i % 100 == 0 else []) + (["family"] if i % 3 == 0 else [])
            user = await store.create_user(
                f"user{i:04d}", f"user{i:04d}@example.com", f"User Number {i}", groups, password_hash
            )
            cookies.append(
                await service.create(
                    user, Level.ONE_FACTOR, remember_me=False, ip="127.0.0.1", user_agent="seed"
                )
            )
            if i < extra:
                more.append(
                    await service.create(
                        user, Level.ONE_FACTOR, remember_me=False, ip="127.0.0.1", user_agent="seed"
                    )
                )
    finally:
        await store.close()
    cookie_file.write_text("\n".join(cookies) + "\n")
    if extra_file is not None:
        extra_file.write_text("\n".join(more) + "\n")
    return {"users": USERS, "sessions": len(cookies), "seconds": round(time.perf_counter() - started, 2)}


async def seed_app_password(config_path: Path) -> str:
    """Store one app password for GB_USER as the portal would; return its Basic Authorization value."""
    from gateway.config import load_config
    from gateway.factors import app_passwords
    from gateway.factors.secretbox import derive_key, load_storage_key
    from gateway.store.sqlite import Store

    config = load_config(str(config_path), {})
    # The pepper exactly as gateway/app.py derives it, so the authgate started later accepts the token.
    root = load_storage_key(data_dir=config.storage.data_dir, configured=config.secrets.storage_key)
    pepper = derive_key(root, purpose=app_passwords.PEPPER_PURPOSE)
    token = app_passwords.generate_token()
    token_id = app_passwords.token_id_of(token)
    if token_id is None:
        raise RuntimeError("generate_token made a malformed token")
    store = await Store.open(config.storage.database_path)
    try:
        user = await store.get_user_by_name(GB_USER)
        if user is None:
            raise RuntimeError(f"{GB_USER} was not seeded")
        await store.create_app_password(
            user.id,
            token_id=token_id,
            token_hash=app_passwords.hash_token(token, pepper=pepper),
            name="bench",
            domains=(),
            level=Level.ONE_FACTOR,  # like a token made in the seeded (password-only) sessions
            created_at=time.time(),
            expires_at=None,
        )
    finally:
        await store.close()
    return "Basic " + base64.b64encode(f"{GB_USER}:{token}".encode()).decode("ascii")


# --- nginx -----------------------------------------------------------------------------------------


def _backend(upstream: str | None) -> str:
    if upstream is None:
        return "            return 204;"
    return f"""            proxy_pass http://{upstream}/api/authz/auth-request;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Forwarded-For $remote_addr;"""


def fill(template: str, values: dict[str, Any]) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", str(value))
    leftover = re.search(r"@[A-Z_]+@", template)
    if leftover:
        raise ValueError(f"unfilled placeholder {leftover.group()}")
    return template


def write_nginx(
    run_dir: Path,
    ports: dict[str, int],
    *,
    floor_port: int,
    authgate_port: int,
    pairs: dict[str, list[int]] | None = None,
) -> Path:
    """`pairs`: scenario name -> the ports of the instances its own upstream spreads over."""
    ngx = run_dir / "nginx"
    for sub in ("tmp", "logs", "www"):
        (ngx / sub).mkdir(parents=True, exist_ok=True)
    (ngx / "www" / "page.html").write_text("<!doctype html><title>app</title><p>hello from the app</p>\n")
    # Started as root, nginx workers run as `nobody`: they must reach the page and their logs.
    # The run directory stays closed to listing (the database has its own 0700 directory).
    run_dir.chmod(0o711)
    for path in (ngx, ngx / "tmp", ngx / "logs", ngx / "www"):
        path.chmod(0o777)
    (ngx / "www" / "page.html").chmod(0o644)
    server_template = (HERE / "server.conf.template").read_text()
    backends = {"L": ("return 204", None), "F": ("floor", "floor"), "G": ("authgate", "authgate")}
    backends["G401"] = backends["GB"] = backends["G"]
    upstreams = ""
    for name, pair_ports in (pairs or {}).items():
        upstream = name.lower().replace("-", "_")
        backends[name] = (f"{name} (two instances)", upstream)
        upstreams += multi.upstream_block(upstream, pair_ports)
    servers = [
        fill(
            server_template,
            {
                "NAME": name,
                "PORT": port,
                "DIR": ngx,
                "BACKEND_NAME": backends[name][0],
                "AUTH_BACKEND": _backend(backends[name][1]),
            },
        )
        for name, port in ports.items()
    ]
    conf = fill(
        (HERE / "nginx.conf.template").read_text(),
        {
            "NGINX_WORKERS": "auto",
            "DIR": ngx,
            "FLOOR_PORT": floor_port,
            "AUTHGATE_PORT": authgate_port,
            "SERVERS": upstreams + "\n".join(servers),
        },
    )
    path = ngx / "nginx.conf"
    path.write_text(conf)
    return path


class StatusLog:
    """Counts the statuses nginx logged for one scenario between two reopen points."""

    def __init__(self, ngx_dir: Path, nginx_pid_file: Path) -> None:
        self._dir = ngx_dir / "logs"
        self._pid_file = nginx_pid_file

    def rotate(self, name: str) -> Counter[str]:
        """Move the scenario's log aside, make nginx flush and reopen it, return its counts."""
        log = self._dir / f"{name}.log"
        moved = self._dir / f"{name}.{time.monotonic_ns()}.old"
        if log.exists():
            log.rename(moved)
        os.kill(int(self._pid_file.read_text().strip()), signal.SIGUSR1)
        # Workers flush their buffers and reopen asynchronously; give them a moment.
        time.sleep(0.4)
        if not moved.exists():
            return Counter()
        counts = Counter(line.strip() for line in moved.read_text().splitlines() if line.strip())
        moved.unlink()
        return counts


# --- wrk -------------------------------------------------------------------------------------------


def run_wrk(
    port: int, *, connections: int, seconds: float, cookie_file: Path | None, authorization: str = ""
) -> dict[str, Any]:
    argv = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(HERE / "wrk.lua"),
        f"http://127.0.0.1:{port}{APP_PATH}",
        "--",
        APP_HOST,
        COOKIE_NAME,
        str(cookie_file) if cookie_file else "",
        authorization,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)  # noqa: S603
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    raw = json.loads(line.removeprefix("BENCHJSON "))
    secs = raw["duration_us"] / 1e6
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    return {
        "rps": round(raw["requests"] / secs, 1),
        "requests": raw["requests"],
        "p50_ms": raw["latency_us"]["p50"] / 1000,
        "p90_ms": raw["latency_us"]["p90"] / 1000,
        "p99_ms": raw["latency_us"]["p99"] / 1000,
        "p999_ms": raw["latency_us"]["p999"] / 1000,
        "max_ms": raw["latency_us"]["max"] / 1000,
        "wrk_non_2xx_3xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": raw["errors"],
    }


# --- login storm -----------------------------------------------------------------------------------


class LoginStorm:
    """A bounded background client: `rate` password logins per second, at most `max_in_flight` open."""

    def __init__(self, port: int, rate: float, *, max_in_flight: int = 8) -> None:
        self._port = port
        self._rate = rate
        self._max_in_flight = max_in_flight
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="login-storm", daemon=True)
        self.started = 0
        self.skipped = 0
        self.results: list[tuple[int, float]] = []  # (status, seconds)

    def __enter__(self) -> LoginStorm:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()) as http:
            tasks: set[asyncio.Task[None]] = set()
            next_at = time.monotonic()
            while not self._stop.is_set():
                if len(tasks) < self._max_in_flight:
                    task = asyncio.create_task(self._login(http, f"user{secrets.randbelow(USERS):04d}"))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    self.started += 1
                else:
                    self.skipped += 1
                next_at += 1 / self._rate
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if tasks:
                await asyncio.wait(tasks, timeout=20)
            for task in tasks:
                task.cancel()

    async def _login(self, http: Any, username: str) -> None:
        base = f"http://127.0.0.1:{self._port}/auth"
        headers = {"Host": f"localhost:{self._port}"}
        started = time.perf_counter()
        status = 0
        try:
            async with http.get(f"{base}/login", headers=headers) as page:
                html = await page.text()
                csrf_cookie = page.cookies["authgate_csrf"].value
            token = re.search(r'name="csrf_token" value="([^"]+)"', html)
            if token is None:
                raise RuntimeError("no csrf token on the login page")
            form = {"username": username, "password": PASSWORD, "csrf_token": token.group(1), "rd": ""}
            async with http.post(
                f"{base}/login",
                data=form,
                headers={**headers, "Cookie": f"authgate_csrf={csrf_cookie}"},
                allow_redirects=False,
            ) as answer:
                status = answer.status
                if status == 303 and COOKIE_NAME not in answer.cookies:
                    status = -303  # redirected without a session: not a login
        except Exception:  # a failed login is a result to report, not a crash
            status = -1
        self.results.append((status, time.perf_counter() - started))

    def summary(self) -> dict[str, Any]:
        times = sorted(t for s, t in self.results if s == 303)
        return {
            "rate_per_s": self._rate,
            "started": self.started,
            "skipped_in_flight_cap": self.skipped,
            "succeeded": len(times),
            "statuses": dict(Counter(str(s) for s, _ in self.results)),
            "login_p50_ms": round(statistics.median(times) * 1000, 1) if times else None,
            "login_max_ms": round(times[-1] * 1000, 1) if times else None,
        }


# --- micro-benchmarks --------------------------------------------------------------------------------


def _time_interleaved(cases: dict[str, Any], iterations: int, repeats: int = 7) -> dict[str, float]:
    """Best-of-`repeats` time of one call per case, in ns; cases alternate so drift hits all alike."""
    for fn in cases.values():
        fn(iterations // 10)  # warm up: caches, branch predictors, lazily built state
    best = dict.fromkeys(cases, float("inf"))
    gc.collect()
    gc.freeze()  # the setup's many objects stay out of the collector's way, as in a running worker
    try:
        for _ in range(repeats):
            for name, fn in cases.items():
                started = time.perf_counter_ns()
                fn(iterations)
                best[name] = min(best[name], (time.perf_counter_ns() - started) / iterations)
    finally:
        gc.unfreeze()
    return {name: round(value, 1) for name, value in best.items()}


def micro_bench(short: bool) -> dict[str, Any]:
    from dataclasses import replace
    from ipaddress import ip_address, ip_network

    from gateway.authz.decision import decide
    from gateway.authz.rules import MATCH_MEMO_SIZE, CompiledRules
    from gateway.config import IdentityHeadersConfig
    from gateway.models import User
    from gateway.sessions.codec import CachedSession, SessionCodec, build_identity_headers
    from gateway.sessions.service import SessionService

    iterations = 20_000 if short else 200_000
    tail = [
        AccessRule(Policy.BYPASS, domains=("app.localhost",), paths=("^/static/",)),
        AccessRule(Policy.DENY, domains=("app.localhost",), paths=("^/admin(/|$)",), subjects=("group:x",)),
        AccessRule(Policy.ONE_FACTOR, domains=("app.localhost",), paths=("^/api/v[0-9]+/",)),
        AccessRule(Policy.ONE_FACTOR, domains=("*.localhost",)),
    ]

    def filler(i: int) -> AccessRule:
        # Other apps: exact and wildcard domains, paths, networks, subjects.
        if i % 4 == 0:
            return AccessRule(Policy.ONE_FACTOR, domains=(f"*.team{i}.example.com",))
        if i % 4 == 1:
            return AccessRule(Policy.BYPASS, domains=(f"app{i}.example.com",), paths=(f"^/p{i}/",))
        if i % 4 == 2:
            return AccessRule(
                Policy.ONE_FACTOR, domains=(f"svc{i}.example.org",), networks=(ip_network("10.0.0.0/8"),)
            )
        return AccessRule(Policy.DENY, domains=(f"old{i}.example.net",), subjects=(f"user:u{i}",))

    request = OriginalRequest(
        method="GET",
        scheme="https",
        host="app.localhost",
        port=None,
        path="/app/dashboard",
        query="tab=overview",
        client_ip=ip_address("192.0.2.10"),
        raw_path="/app/dashboard",
    )
    subject = Subject("user0001", frozenset({"users"}))
    decide_cases: dict[str, Any] = {}
    for count in (10, 10_000):
        rules = CompiledRules.from_config(
            AccessControlConfig(Policy.DENY, tuple(filler(i) for i in range(count - len(tail))) + tuple(tail))
        )
        if not decide(rules, request, subject, Level.ONE_FACTOR).with_identity:
            raise RuntimeError("the micro-benchmark request must be allowed with identity")

        def loop(n: int, rules: CompiledRules = rules) -> None:
            for _ in range(n):
                decide(rules, request, subject, Level.ONE_FACTOR)

        # Every call a path the rule memo has not seen (more distinct paths than it holds):
        # the cost of really matching, which the memo hides for repeated requests.
        unseen = [replace(request, path=f"/app/item/{i}") for i in range(3 * MATCH_MEMO_SIZE)]

        def loop_unseen(n: int, rules: CompiledRules = rules, unseen: list[OriginalRequest] = unseen) -> None:
            m = len(unseen)
            for i in range(n):
                decide(rules, unseen[i % m], subject, Level.ONE_FACTOR)

        decide_cases[str(count)] = loop
        decide_cases[f"{count}_unseen_paths"] = loop_unseen

    cfg = SessionConfig(expiration=3600, inactivity=300)
    codec = SessionCodec(["k" * 40], max_age=cfg.remember_me)
    now = time.time()
    user = User(1, "user0001", "u@example.com", "User", ("users",), False, now)
    record = SessionRecord("h", 1, Level.ONE_FACTOR, now, now, now, now + 3600, False, "127.0.0.1", "ua")
    names = ("Remote-User", "Remote-Email", "Remote-Groups", "Remote-Name")
    resolve_cases: dict[str, Any] = {}
    for count in (1, 100_000):
        service = SessionService(None, codec, cfg, IdentityHeadersConfig(), time.time)  # type: ignore[arg-type]
        keys = [secrets.token_urlsafe(60) for _ in range(count)]
        for key in keys:
            service.cache.put(
                key,
                CachedSession(
                    id_hash=key[:16],
                    user_id=1,
                    subject=Subject("user0001", frozenset({"users"})),
                    level=Level.ONE_FACTOR,
                    headers=build_identity_headers(user, names),
                    expires_at=now + 3600,
                    remember_me=False,
                    last_active=now,
                    refresh_at=now + 3600,
                    record=record,
                ),
            )
        # Every cached session gets hit, in an order unrelated to insertion; the join below makes
        # a fresh header string per call, as a real request brings (its hash not cached yet).
        headers = [f"_ga=GA1.1.1; {COOKIE_NAME}={key}; theme=dark" for key in keys]
        random.Random(7).shuffle(headers)  # noqa: S311 - a fixed order, not a secret
        variants = {str(count): headers}
        if count > 1000:
            # The usual shape: many cached sessions, a thousand of them active right now.
            variants[f"{count}_1000_active"] = headers[:1000]

        for label, batch in variants.items():

            async def hits(n: int, service: SessionService = service, batch: list[str] = batch) -> None:
                m = len(batch)
                for i in range(n):
                    if await service.resolve_header("".join((batch[i % m], ""))) is None:
                        raise RuntimeError("a cached session was not found")

            def run_hits(n: int, hits: Any = hits) -> None:
                asyncio.run(hits(n))

            resolve_cases[label] = run_hits
    decisions = _time_interleaved(decide_cases, iterations)
    resolves = _time_interleaved(resolve_cases, iterations)
    counted = _time_interleaved(_metrics_cases(request, subject), iterations)
    return {
        "iterations": iterations,
        "decide_ns": decisions,
        "decide_ratio_10000_vs_10": round(decisions["10000"] / decisions["10"], 2),
        "decide_unseen_ratio_10000_vs_10": round(
            decisions["10000_unseen_paths"] / decisions["10_unseen_paths"], 2
        ),
        "resolve_hit_ns": resolves,
        "resolve_ratio_100000_vs_1": round(resolves["100000"] / resolves["1"], 2),
        "resolve_ratio_100000_1000_active_vs_1": round(resolves["100000_1000_active"] / resolves["1"], 2),
        # What the metrics add to one forward-auth request: tick() at the start, decided() at
        # the end (1 in 16 also timed), minus the same loop without them.
        "metrics_ns": counted,
        "metrics_per_request_ns": round(counted["tick_decided"] - counted["empty"], 1),
        "metrics_timed_request_ns": round(counted["timed_every_request"] - counted["empty"], 1),
    }


def _metrics_cases(request: OriginalRequest, subject: Subject) -> dict[str, Any]:
    from gateway.authz.decision import decide
    from gateway.authz.rules import CompiledRules
    from gateway.metrics import Metrics

    rules = CompiledRules.from_config(
        AccessControlConfig(Policy.DENY, (AccessRule(Policy.ONE_FACTOR, domains=("*.localhost",)),))
    )
    decision = decide(rules, request, subject, Level.ONE_FACTOR)

    def empty(n: int) -> None:
        for _ in range(n):
            pass

    counting, timing = Metrics(len(rules)), Metrics(len(rules))

    def tick_decided(n: int, metrics: Metrics = counting) -> None:
        for _ in range(n):
            started = metrics.tick()
            metrics.decided(decision, started)

    def timed_every_request(n: int, metrics: Metrics = timing) -> None:
        clock = time.perf_counter_ns
        for _ in range(n):
            started = clock()
            metrics.decided(decision, started)

    return {"empty": empty, "tick_decided": tick_decided, "timed_every_request": timed_every_request}


# --- the run ---------------------------------------------------------------------------------------


def probe(port: int, cookie: str | None, authorization: str = "") -> dict[str, Any]:
    """One request as a browser (or a client with credentials) sends it: status, Location, identity."""
    headers = {"Host": APP_HOST, "Accept": "text/html"}
    if cookie:
        headers["Cookie"] = f"{COOKIE_NAME}={cookie}"
    if authorization:
        headers["Authorization"] = authorization
    req = urllib.request.Request(f"http://127.0.0.1:{port}{APP_PATH}", headers=headers)  # noqa: S310

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=5) as answer:
            status, got = answer.status, answer.headers
    except urllib.error.HTTPError as exc:
        status, got = exc.code, exc.headers
    return {"status": status, "location": got.get("Location"), "user": got.get("X-Bench-User")}


def measure(
    name: str,
    port: int,
    *,
    connections: int,
    seconds: float,
    warmup: float,
    cookie_file: Path | None,
    logs: StatusLog,
    authorization: str = "",
    cpu_roots: dict[str, int | None] | None = None,
) -> dict[str, Any]:
    run_wrk(
        port, connections=connections, seconds=warmup, cookie_file=cookie_file, authorization=authorization
    )
    logs.rotate(name)
    meter = CpuMeter(cpu_roots or {})
    meter.start()
    result = run_wrk(
        port, connections=connections, seconds=seconds, cookie_file=cookie_file, authorization=authorization
    )
    result["cpu_us_per_request"] = meter.per_request_us(result["requests"])
    statuses = logs.rotate(name)
    result["statuses"] = dict(statuses)
    expected = EXPECTED["G" if name.startswith("G2-") else name]
    unexpected = {s: n for s, n in statuses.items() if int(s) not in expected and s != "499"}
    result["ok"] = bool(
        result["requests"] > 0
        and not unexpected
        and statuses.get("499", 0) <= connections
        and sum(n for s, n in statuses.items() if int(s) in expected) >= result["requests"]
    )
    cpu = " ".join(f"{part} {us:.0f}" for part, us in result["cpu_us_per_request"].items())
    print(
        f"  {name:5} -c{connections:<3} {result['rps']:>9.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
        f"p99 {result['p99_ms']:6.2f} ms  CPU us/req: {cpu}  statuses {dict(statuses)}",
        flush=True,
    )
    return result


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median req/s, carrying every round's req/s, p99 and CPU figures."""
    chosen = dict(sorted(runs, key=lambda r: r["rps"])[len(runs) // 2])
    chosen["ok"] = all(r["ok"] for r in runs)
    if len(runs) > 1:
        chosen["rounds"] = [
            {
                "rps": r["rps"],
                "p50_ms": r["p50_ms"],
                "p99_ms": r["p99_ms"],
                "cpu_us_per_request": r["cpu_us_per_request"],
            }
            for r in runs
        ]
    return chosen


def cpu_roots(procs: Processes, scenario: str) -> dict[str, int | None]:
    """Whose CPU time a scenario is charged: the backend nginx asks (none for L), and nginx."""
    backend = {"L": None, "F": "floor"}.get(scenario, "authgate")
    return {"backend": procs.pid(backend) if backend else None, "nginx": procs.pid("nginx")}


def start_authgate(procs: Processes, config: Path, workers: int, port: int, log: Path) -> None:
    proc = procs.start(
        "authgate",
        [sys.executable, "-m", "gateway", "--config", str(config), "serve", "--workers", str(workers)],
        log=log,
    )
    wait_port(port, 30, proc)
    # Every worker must be up before load starts; SO_REUSEPORT spreads connections only to bound sockets.
    time.sleep(0.5 + 0.2 * workers)


def extras(
    results: dict[str, Any],
    procs: Processes,
    args: argparse.Namespace,
    ports: dict[str, int],
    config: Path,
    key: str,
    cookie_file: Path,
    run_dir: Path,
    logs: StatusLog,
    conns: list[int],
    seconds: float,
    warmup: float,
) -> None:
    """G during a login storm, and G with one worker."""
    scenarios = results["scenarios"]
    authgate_port = int(re.search(r"port: (\d+)", config.read_text())[1])  # type: ignore[index]
    # G's latency while password logins run (argon2 at the default cost, off the event loop),
    # against G without them measured just before, in rounds: other load on the machine moves
    # p99 from one run to the next, so each storm run gets a baseline next to it, and the
    # medians of both are compared.
    storm_conns = min(conns)
    rounds = 1 if args.short else args.storm_rounds

    def run_g() -> dict[str, Any]:
        return measure(
            "G",
            ports["G"],
            connections=storm_conns,
            seconds=seconds,
            warmup=0.5,
            cookie_file=cookie_file,
            logs=logs,
            cpu_roots=cpu_roots(procs, "G"),
        )

    baselines: list[dict[str, Any]] = []
    storms: list[dict[str, Any]] = []
    for _ in range(rounds):
        baselines.append(run_g())
        with LoginStorm(authgate_port, args.storm_rate) as storm:
            time.sleep(1.0)  # let the storm reach its rate before measuring
            storm_run = run_g()
        storm_run["storm"] = storm.summary()
        # A storm whose logins failed measured nothing: the portal is broken, say so.
        storm_run["ok"] = storm_run["ok"] and storm_run["storm"]["succeeded"] > 0
        storms.append(storm_run)
        print(f"  storm {storm_run['storm']}", flush=True)
    base_run = sorted(baselines, key=lambda r: r["p99_ms"])[len(baselines) // 2]
    storm_run = sorted(storms, key=lambda r: r["p99_ms"])[len(storms) // 2]
    storm_run["pairs"] = [
        {"baseline_p99_ms": b["p99_ms"], "storm_p99_ms": s["p99_ms"], "storm": s["storm"]}
        for b, s in zip(baselines, storms, strict=True)
    ]
    storm_run["ok"] = all(s["ok"] for s in storms) and all(b["ok"] for b in baselines)
    scenarios[f"G c{storm_conns} storm baseline"] = base_run
    scenarios[f"G c{storm_conns} +storm"] = storm_run

    # Workers: G with one worker against G with `workers` (the main runs above).
    if args.workers != 1:
        procs.stop("authgate")
        write_config(
            config,
            data_dir=run_dir / "data",
            port=authgate_port,
            portal_port=ports["G"],
            workers=1,
            key=key,
        )
        start_authgate(procs, config, 1, authgate_port, run_dir / "authgate.out")
        scenarios[f"G c{max(conns)} workers=1"] = measure(
            "G",
            ports["G"],
            connections=max(conns),
            seconds=seconds,
            warmup=warmup,
            cookie_file=cookie_file,
            logs=logs,
            cpu_roots=cpu_roots(procs, "G"),
        )


class _Skip(Exception):
    """--only-multi: the extras are not run."""


def multi_phase(
    results: dict[str, Any],
    procs: Processes,
    args: argparse.Namespace,
    ports: dict[str, int],
    pairs: dict[str, list[int]],
    run_dir: Path,
    key: str,
    cookie_file: Path,
    logs: StatusLog,
    conns: list[int],
    seconds: float,
) -> None:
    """G through two instances per engine, next to F and G (one instance, SQLite) in the same rounds.

    Then, straight against each pair: the cost of a cache miss, and revocation latency.
    """
    scenarios = results["scenarios"]
    summary: dict[str, Any] = {"engines": {}}
    results["multi"] = summary
    extra = 60 if args.short else 300
    closers: list[Callable[[], None]] = []
    for name, (a_port, b_port) in pairs.items():
        engine = multi.prepare_engine(name.removeprefix("G2-"), run_dir / name)
        atexit.register(engine.close)  # also when a later step raises
        closers.append(engine.close)
        for instance, port in (("a", a_port), ("b", b_port)):
            write_config(
                run_dir / name / f"{instance}.yml",
                data_dir=engine.data_dir,
                port=port,
                portal_port=ports[name],
                workers=1,
                key=key,
                storage_extra=engine.storage_extra,
            )
        started = time.perf_counter()
        seeded = asyncio.run(
            seed(
                run_dir / name / "a.yml",
                run_dir / name / "cookies.txt",
                extra_file=run_dir / name / "fresh.txt",
                extra=extra,
            )
        )
        summary["engines"][name] = {"seed": seeded, "seed_seconds": round(time.perf_counter() - started, 1)}
        # One after the other: the first migrates and writes the generated secrets.
        for instance, port in (("a", a_port), ("b", b_port)):
            argv = [sys.executable, "-m", "gateway", "--config", str(run_dir / name / f"{instance}.yml")]
            proc = procs.start(f"{name}-{instance}", [*argv, "serve"], log=run_dir / name / f"{instance}.out")
            wait_port(port, 30, proc)
        probe_cookie = (run_dir / name / "cookies.txt").read_text().split("\n", 1)[0]
        summary["engines"][name]["probe"] = probe(ports[name], probe_cookie)
        print(f"bench: {name} seeded {seeded}, probe {summary['engines'][name]['probe']}", flush=True)

    # F, G and each G2 back to back in every round, as in the main table.
    rounds = 1 if args.short else args.rounds
    # A cache miss costs ~1 ms more on PostgreSQL than on SQLite, and every instance (every
    # worker, for G) starts a round with its sessions expired (the other scenarios ran for
    # longer than cache_ttl): a longer warm-up lets each one see every session first, so the
    # measured part is the cached hot path on both engines, not their miss costs.
    warmup = 2.0 if args.short else 3.0
    order = ["F", "G", *pairs]
    # The short run (CI) exercises the scenario at one connection count only.
    for c in [min(conns)] if args.short else conns:
        passes: dict[str, list[dict[str, Any]]] = {name: [] for name in order}
        for _ in range(rounds):
            for name in order:
                cookies = run_dir / name / "cookies.txt" if name in pairs else cookie_file
                roots = {"nginx": procs.pid("nginx")}
                if name in pairs:
                    roots.update({f"backend_{i}": procs.pid(f"{name}-{i}") for i in ("a", "b")})
                else:
                    roots.update(cpu_roots(procs, name))
                run = measure(
                    name,
                    ports[name],
                    connections=c,
                    seconds=seconds,
                    warmup=warmup,
                    cookie_file=cookies,
                    logs=logs,
                    cpu_roots=roots,
                )
                if name in pairs:  # one backend figure: both instances together
                    cpu = run["cpu_us_per_request"]
                    cpu["backend"] = round(cpu.pop("backend_a") + cpu.pop("backend_b"), 1)
                passes[name].append(run)
        chosen = {name: median_run(runs) for name, runs in passes.items()}
        for name, run in chosen.items():
            label = f"{name} c{c}" if name in pairs else f"{name} c{c} multi"
            scenarios[label] = run
        for name in pairs:
            g2, g, f = chosen[name], chosen["G"], chosen["F"]
            summary[f"{name}/F c{c}"] = round(_round_ratio(g2, f), 3)
            summary[f"G/F c{c}"] = round(_round_ratio(g, f), 3)
            summary[f"{name}/G c{c}"] = round(_round_ratio(g2, g), 3)

    # Without a notification channel a round waits up to cache_ttl (5 s): fewer rounds there.
    revocation_rounds = {"sqlite": 2 if args.short else 12, "postgres": 3 if args.short else 60}
    for name, (a_port, b_port) in pairs.items():
        engine_name = name.removeprefix("G2-")
        fresh = [line for line in (run_dir / name / "fresh.txt").read_text().splitlines() if line]
        count = revocation_rounds[engine_name]
        miss = multi.cache_miss_cost(a_port, fresh[count:])
        revocation = multi.revocation_latency(a_port, b_port, fresh[:count])
        summary["engines"][name].update({"cache_miss": miss, "revocation": revocation})
        print(f"bench: {name} cache miss {miss}", flush=True)
        print(f"bench: {name} revocation A -> B {revocation}", flush=True)
        for instance in ("a", "b"):
            procs.stop(f"{name}-{instance}")
    for close in closers:
        close()
    summary["ok"] = all(
        e["probe"]["status"] == 200 and e["cache_miss"]["ok"] and e["revocation"]["ok"]
        for e in summary["engines"].values()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured scenario")
    parser.add_argument("--short", action="store_true", help="CI mode: ~2 s per scenario, fewer iterations")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="authgate and floor workers")
    parser.add_argument("--connections", default="8,64", help="comma-separated wrk -c values")
    parser.add_argument("--storm-rate", type=float, default=5.0, help="password logins per second")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="passes over the main scenarios, medians reported (1 in --short)",
    )
    parser.add_argument(
        "--storm-rounds", type=int, default=3, help="baseline + storm pairs for G's p99 (1 in --short)"
    )
    parser.add_argument(
        "--only-storm", action="store_true", help="skip the main table: only the login storm and workers=1"
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="run authgate with metrics enabled (a loopback listener) and scrape it at the end",
    )
    parser.add_argument(
        "--multi",
        default=",".join(multi.available_engines()),
        help="engines for the two-instance scenario G2-<engine>, comma-separated "
        f"(default: {','.join(multi.available_engines())}; 'none' skips it)",
    )
    parser.add_argument(
        "--only-multi", action="store_true", help="skip the main table and extras: only the G2 scenario"
    )
    parser.add_argument("--out-dir", default=str(ROOT / "bench-results"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary run directory")
    args = parser.parse_args(argv)
    for flag, value in (("--rounds", args.rounds), ("--storm-rounds", args.storm_rounds)):
        if value < 1:
            parser.error(f"{flag} must be 1 or more, not {value}")
    engines = [] if args.multi == "none" else [e for e in args.multi.split(",") if e]
    for engine in engines:
        if engine not in multi.ENGINES:
            parser.error(f"--multi: {engine!r} is not an engine; use {', '.join(multi.ENGINES)} or none")
    if args.only_multi and not engines:
        parser.error("--only-multi needs at least one engine in --multi")
    seconds = 2.0 if args.short else args.duration
    warmup = 1.0
    conns = [int(c) for c in args.connections.split(",")]
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench: {tool} is not installed (apt-get install {tool})", file=sys.stderr)
            return 2
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"

    run_dir = Path(tempfile.mkdtemp(prefix="authgate-bench-"))
    if not args.keep:
        # Also when a scenario raises: no run directories (databases, logs) left behind in /tmp.
        atexit.register(shutil.rmtree, run_dir, ignore_errors=True)
    procs = Processes()
    started_at = time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, Any] = {
        "started": started_at,
        "mode": "short" if args.short else "full",
        "seconds_per_scenario": seconds,
        "cores": os.cpu_count(),
        "workers": args.workers,
        "wrk_threads": 2,
        "python": sys.version.split()[0],
        # Other work on the machine skews absolute numbers: record how busy it was.
        "load_average_at_start": list(os.getloadavg()),
        "metrics": args.metrics,
        "scenarios": {},
    }
    try:
        ports = {name: free_port() for name in ("L", "F", "G", "G401", "GB")}
        pairs = {f"G2-{engine}": [free_port(), free_port()] for engine in engines}
        ports.update({name: free_port() for name in pairs})
        floor_port, authgate_port = free_port(), free_port()
        metrics_port = free_port() if args.metrics else None
        config = run_dir / "authgate.yml"
        key = secrets.token_hex(32)
        cookie_file = run_dir / "cookies.txt"
        write_config(
            config,
            data_dir=run_dir / "data",
            port=authgate_port,
            portal_port=ports["G"],
            workers=args.workers,
            key=key,
            metrics_port=metrics_port,
        )
        print(f"bench: run directory {run_dir}", flush=True)
        results["seed"] = asyncio.run(seed(config, cookie_file))
        print(f"bench: seeded {results['seed']}", flush=True)
        first_cookie = cookie_file.read_text().split("\n", 1)[0]
        authorization = asyncio.run(seed_app_password(config))

        nginx_conf = write_nginx(
            run_dir, ports, floor_port=floor_port, authgate_port=authgate_port, pairs=pairs
        )
        ngx_dir = nginx_conf.parent
        procs.start(
            "nginx",
            [nginx_bin, "-p", str(ngx_dir), "-c", str(nginx_conf), "-g", "daemon off;"],
            log=run_dir / "nginx.out",
        )
        wait_port(ports["L"], 10)
        logs = StatusLog(ngx_dir, ngx_dir / "nginx.pid")
        procs.start(
            "floor",
            [
                sys.executable,
                str(HERE / "floor.py"),
                "--port",
                str(floor_port),
                "--workers",
                str(args.workers),
            ],
            log=run_dir / "floor.out",
        )
        wait_port(floor_port, 30)
        start_authgate(procs, config, args.workers, authgate_port, run_dir / "authgate.out")

        # The nginx trap: prove the protected location really asks authgate.
        results["probes"] = {
            "G_with_cookie": probe(ports["G"], first_cookie),
            "G_without_cookie": probe(ports["G401"], None),
            "G_forged_cookie": probe(ports["G"], first_cookie[:-2] + "xx"),
            "GB_with_token": probe(ports["GB"], None, authorization),
            "GB_forged_token": probe(ports["GB"], None, authorization[:-4] + "AAA="),
        }
        print(f"bench: probes {results['probes']}", flush=True)

        scenarios = results["scenarios"]
        # Scenarios that are compared run back to back (L, F, G, G401 at one connection count,
        # then the next count), so a change in background load skews a ratio as little as possible.
        runs: tuple[tuple[str, Path | None, str], ...] = (
            ("L", cookie_file, ""),
            ("F", cookie_file, ""),
            ("G", cookie_file, ""),
            ("G401", None, ""),
            ("GB", None, authorization),  # one app password, no cookie: a CalDAV client or a script
        )
        # In rounds, each a pass over every scenario, and medians: a scenario's numbers are
        # from its median round by req/s, and a ratio is the median of the rounds' own ratios
        # (scenarios within a round ran seconds apart, under the same background load).
        rounds = 1 if args.short else args.rounds
        for c in conns if not (args.only_storm or args.only_multi) else ():
            passes: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in runs}
            for _ in range(rounds):
                for name, cookies, credentials in runs:
                    passes[name].append(
                        measure(
                            name,
                            ports[name],
                            connections=c,
                            seconds=seconds,
                            warmup=warmup,
                            cookie_file=cookies,
                            logs=logs,
                            authorization=credentials,
                            cpu_roots=cpu_roots(procs, name),
                        )
                    )
            for name, runs_of_name in passes.items():
                scenarios[f"{name} c{c}"] = median_run(runs_of_name)

        if metrics_port is not None:
            results["metrics_scrape"] = scrape_metrics(metrics_port, args.workers)
            print(f"bench: metrics scrape {results['metrics_scrape']}", flush=True)
        if engines:
            try:
                multi_phase(
                    results, procs, args, ports, pairs, run_dir, key, cookie_file, logs, conns, seconds
                )
            except Exception as exc:  # reported like a failed extra; the main table stays
                results["scenarios"]["multi"] = {"error": f"{type(exc).__name__}: {exc}", "ok": False}
                print(f"bench: multi-instance scenario failed: {exc}", file=sys.stderr, flush=True)
        try:
            if args.only_multi:
                raise _Skip
            extras(
                results, procs, args, ports, config, key, cookie_file, run_dir, logs, conns, seconds, warmup
            )
        except _Skip:
            pass
        except Exception as exc:  # an extra that breaks is reported, the main table stays
            results["scenarios"]["extras"] = {"error": f"{type(exc).__name__}: {exc}", "ok": False}
            print(f"bench: extras failed: {exc}", file=sys.stderr, flush=True)
    finally:
        procs.stop_all()

    print("bench: micro-benchmarks (in process)", flush=True)
    results["load_average_at_end"] = list(os.getloadavg())
    results["micro"] = micro_bench(args.short)
    results["ratios"] = ratios(results, conns)
    results["ok"] = (
        all(s.get("ok", True) for s in results["scenarios"].values())
        and probes_ok(results)
        and results.get("metrics_scrape", {}).get("ok", True)
        and results.get("multi", {}).get("ok", True)
    )
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"bench-{started_at}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results, conns))
    print(f"bench: results written to {out}")
    return 0 if results["ok"] else 1


def scrape_metrics(port: int, workers: int) -> dict[str, Any]:
    """Scrape the metrics listener once: the decisions counted over the main runs, from every worker."""
    from prometheus_client.parser import text_string_to_metric_families

    time.sleep(1.5)  # every worker publishes its totals once a second
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - our own loopback listener
        text = answer.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (
                "authgate_forward_auth_decisions_total",
                "authgate_forward_auth_duration_seconds_count",
                "authgate_metrics_workers",
            ):
                values[sample.name] = values.get(sample.name, 0) + sample.value
    decisions = int(values.get("authgate_forward_auth_decisions_total", 0))
    seen_workers = int(values.get("authgate_metrics_workers", 0))
    return {
        "decisions": decisions,
        "timed": int(values.get("authgate_forward_auth_duration_seconds_count", 0)),
        "workers": seen_workers,
        "ok": decisions > 0 and seen_workers == workers,
    }


def probes_ok(results: dict[str, Any]) -> bool:
    p = results.get("probes", {})
    return (
        p.get("G_with_cookie", {}).get("status") == 200
        and (p.get("G_with_cookie", {}).get("user") or "").startswith("user")
        and p.get("G_without_cookie", {}).get("status") == 302
        and "/auth/login?rd=" in (p.get("G_without_cookie", {}).get("location") or "")
        and p.get("G_forged_cookie", {}).get("status") == 302
        and p.get("GB_with_token", {}).get("status") == 200
        and p.get("GB_with_token", {}).get("user") == GB_USER
        # A wrong token gets authgate's 401, which this bench nginx turns into a redirect.
        and p.get("GB_forged_token", {}).get("status") == 302
    )


def _rps(run: dict[str, Any]) -> float:
    return float(run["rps"])


def _cpu_total(run: dict[str, Any]) -> float:
    return float(sum(run["cpu_us_per_request"].values()))


def _round_ratio(
    a: dict[str, Any], b: dict[str, Any], key: Callable[[dict[str, Any]], float] = _rps
) -> float:
    """Median over rounds of key(a) / key(b) from the same round (one round: the plain ratio)."""
    a_rounds, b_rounds = a.get("rounds"), b.get("rounds")
    if not a_rounds or not b_rounds or len(a_rounds) != len(b_rounds):
        return key(a) / key(b)
    return float(statistics.median(key(x) / key(y) for x, y in zip(a_rounds, b_rounds, strict=True)))


def ratios(results: dict[str, Any], conns: list[int]) -> dict[str, Any]:
    s = results["scenarios"]
    out: dict[str, Any] = {}
    for c in conns:
        g, f, ll = s.get(f"G c{c}"), s.get(f"F c{c}"), s.get(f"L c{c}")
        if g and f and ll:
            out[f"G/F c{c}"] = round(_round_ratio(g, f), 3)
            out[f"G/L c{c}"] = round(_round_ratio(g, ll), 3)
            # The same from CPU time per request of everything involved (backend, nginx, wrk):
            # what G/F would be with the machine to themselves. Steadier than req/s under other
            # load, not immune to it (less batching per wake-up costs CPU per request too).
            if g.get("cpu_us_per_request") and f.get("cpu_us_per_request"):
                out[f"G/F by CPU c{c}"] = round(_round_ratio(f, g, key=_cpu_total), 3)
            out[f"G401/F c{c}"] = round(_round_ratio(s[f"G401 c{c}"], f), 3)
            if f"GB c{c}" in s:
                out[f"GB/G c{c}"] = round(_round_ratio(s[f"GB c{c}"], g), 3)
    storm = next((v for k, v in s.items() if k.endswith("+storm")), None)
    base = s.get(f"G c{min(conns)} storm baseline")
    if storm and base:
        out[f"G p99 storm/base c{min(conns)}"] = round(storm["p99_ms"] / base["p99_ms"], 2)
    one = s.get(f"G c{max(conns)} workers=1")
    if one and f"G c{max(conns)}" in s:
        out[f"G workers={results['workers']}/workers=1 c{max(conns)}"] = round(
            s[f"G c{max(conns)}"]["rps"] / one["rps"], 2
        )
    return out


def table(results: dict[str, Any], conns: list[int]) -> str:
    lines = [
        "",
        f"{'scenario':<26}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}  CPU us/req backend/nginx/wrk  statuses",
    ]
    for name, r in results["scenarios"].items():
        if "skipped" in r:
            lines.append(f"{name:<22}skipped: {r['skipped']}")
            continue
        cpu = r.get("cpu_us_per_request", {})
        parts = "/".join(f"{cpu[k]:.0f}" if k in cpu else "-" for k in ("backend", "nginx", "wrk"))
        nonok = f"  wrk non-2xx/3xx: {r['wrk_non_2xx_3xx']}" if r["wrk_non_2xx_3xx"] else ""
        lines.append(
            f"{name:<26}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}  {parts:<29}"
            f"  {r['statuses']}{'' if r['ok'] else '  UNEXPECTED'}"
            f"{nonok}"
        )
    lines.append("")
    lines.append(
        f"load average (1/5/15 min) at start {results['load_average_at_start']}, "
        f"at end {results['load_average_at_end']}"
    )
    lines.extend(f"{k:<34}{v}" for k, v in results["ratios"].items())
    m = results["micro"]
    lines.append(
        f"decide() ns: 10 rules {m['decide_ns']['10']}, 10,000 rules {m['decide_ns']['10000']} "
        f"(x{m['decide_ratio_10000_vs_10']}); every path unseen: "
        f"10 rules {m['decide_ns']['10_unseen_paths']}, "
        f"10,000 rules {m['decide_ns']['10000_unseen_paths']} "
        f"(x{m['decide_unseen_ratio_10000_vs_10']})"
    )
    lines.append(
        f"resolve() cache hit ns: 1 session {m['resolve_hit_ns']['1']}, 100,000 sessions "
        f"{m['resolve_hit_ns']['100000']} (x{m['resolve_ratio_100000_vs_1']}, all hit in random order); "
        f"100,000 with 1,000 active {m['resolve_hit_ns']['100000_1000_active']} "
        f"(x{m['resolve_ratio_100000_1000_active_vs_1']})"
    )
    if "metrics_per_request_ns" in m:
        lines.append(
            f"metrics per forward-auth request ns: {m['metrics_per_request_ns']} "
            f"(timing every request instead: {m['metrics_timed_request_ns']})"
        )
    if "metrics_scrape" in results:
        lines.append(f"metrics scrape after the runs: {results['metrics_scrape']}")
    storm = next((v for k, v in results["scenarios"].items() if k.endswith("+storm")), None)
    if storm:
        lines.append(f"login storm: {storm['storm']}")
    summary = results.get("multi", {})
    lines.extend(f"{k:<34}{v}" for k, v in summary.items() if "/" in k)
    for name, engine in summary.get("engines", {}).items():
        miss, revocation = engine.get("cache_miss", {}), engine.get("revocation", {})
        if miss:
            lines.append(
                f"{name} cache miss p50/p99 ms {miss['miss']['p50_ms']}/{miss['miss']['p99_ms']} "
                f"(hit {miss['hit']['p50_ms']}/{miss['hit']['p99_ms']}, n={miss['miss']['n']})"
            )
        if revocation.get("n"):
            lines.append(
                f"{name} revocation A->B p50/p99 ms {revocation['p50_ms']}/{revocation['p99_ms']} "
                f"(max {revocation['max_ms']}, n={revocation['n']})"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
