"""Two authgate instances behind one real nginx `upstream` (round robin), sharing one database.

The harness for tests/e2e/test_multi_instance.py and the bench's multi-instance scenario:

- two `python -m gateway serve` processes (one worker each, each in its own process group so a
  test can SIGKILL one whole instance), on their own ports, with the same secrets (so a cookie
  or CSRF token made by one is valid on the other) and the same database;
- nginx.conf.example with its `upstream authgate` block replaced by
  deploy/scaling/nginx-upstream.conf (the file docs/scaling.md shows), plus an access log that
  also records auth_request subrequests with the instance that answered them (`log_subrequest`):
  that log is how a test proves which instance served which step;
- the demo app behind nginx, as in the other e2e stacks.

The database is a `Backend`: one SQLite file in a folder both instances use as their data_dir
(works for two processes on one machine), or PostgreSQL (tests/pg.py).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO
from urllib.parse import quote

import aiohttp
import pytest
import yaml

from tests.e2e.support import (
    PASSWORDS,
    ROOT,
    STARTUP_TIMEOUT,
    STOP_TIMEOUT,
    ProxyClient,
    Reply,
    Service,
    free_ports,
    http_ok,
    log_tail,
)
from tests.pg import PostgresServer

UPSTREAM_SNIPPET = ROOT / "deploy" / "scaling" / "nginx-upstream.conf"
# The instances' addresses in the snippet, replaced by the test's free ports.
SNIPPET_ADDRESSES = ("127.0.0.1:9091", "127.0.0.1:9092")

# One line per request nginx handles, auth subrequests included: "<uri> <status> <upstream>".
ACCESS_FORMAT = "log_format upstreams '$uri $status $upstream_addr';"

USERS = {
    "alice": ("alice@example.com", "Alice Liddell", "admins"),
    "bob": ("bob@example.com", "Bob", ""),
}


class Backend(Protocol):
    """The database the two instances share."""

    name: str

    def storage(self, instance_dir: Path) -> dict[str, Any]:
        """Return the `storage` section of one instance's configuration."""
        ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read-only statement as an operator's shell would (SQL written for both engines)."""
        ...


@dataclass
class SharedSqlite:
    """One SQLite file (WAL) in a folder both instances use as storage.data_dir."""

    data_dir: Path
    name: str = "sqlite"

    def storage(self, instance_dir: Path) -> dict[str, Any]:
        return {"data_dir": str(self.data_dir)}

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.data_dir / "authgate.sqlite3", timeout=10)
        try:
            return list(db.execute(sql.replace("%s", "?"), tuple(params)).fetchall())
        finally:
            db.close()


@dataclass
class SharedPostgres:
    """One database of the test session's throwaway PostgreSQL cluster (tests/pg.py)."""

    server: PostgresServer
    dsn: str
    name: str = "postgres"

    @classmethod
    def create(cls, server: PostgresServer) -> SharedPostgres:
        return cls(server, server.create_database(migrated=False))

    def storage(self, instance_dir: Path) -> dict[str, Any]:
        # Nothing but the database is shared: each instance has its own data_dir.
        return {"data_dir": str(instance_dir / "data"), "postgres": {"dsn": self.dsn}}

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        literals = tuple("'" + str(value).replace("'", "''") + "'" for value in params)
        out = self.server.psql(sql % literals, database=self.dsn.rsplit("/", 1)[1])
        return [
            tuple(int(v) if v.lstrip("-").isdigit() else v for v in line.split("|"))
            for line in out.splitlines()
        ]


@dataclass
class Instance:
    """One authgate server process (one worker) in its own process group."""

    name: str  # "a" or "b"
    port: int
    metrics_port: int
    config: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _logs: list[TextIO] = field(default_factory=list)

    @property
    def address(self) -> str:
        """host:port as nginx's $upstream_addr shows it."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until /api/health answers."""
        self.starts += 1
        log = self.log_path.open("a")
        self._logs.append(log)
        log.write(f"--- start {self.starts}\n")
        log.flush()
        self.process = subprocess.Popen(  # noqa: S603 - our own server
            [sys.executable, "-m", "gateway", "--config", str(self.config), "serve"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: one killpg ends the whole instance
        )

    def wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not http_ok(f"http://127.0.0.1:{self.port}/api/health"):
            if self.process.poll() is not None:
                pytest.fail(f"authgate {self.name} exited with {self.process.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"authgate {self.name} did not answer /api/health:\n{self.tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the instance (as a crash, the OOM killer or a pulled plug would) and reap it."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        for log in self._logs:
            log.close()
        self._logs.clear()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self) -> str:
        return log_tail(self.log_path)

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """Return this instance's JSON log entries for one event (audit events are logged too)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event") == event:
                    found.append(entry)
        return found

    def metrics(self) -> str:
        """Scrape this instance's own /metrics listener (not through nginx)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - fixed local URL
            return str(response.read().decode())

    def forward_auth_decisions(self) -> float:
        """Return how many forward-auth decisions this instance has made (its metrics)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("authgate_forward_auth_decisions_total"):
                total += float(line.rsplit(" ", 1)[1])
        return total


@dataclass
class MultiStack:
    """nginx (one upstream, two authgate instances) + the demo app, over one shared database."""

    backend: Backend
    directory: Path
    port: int  # nginx: what browsers talk to
    demo_port: int
    instances: tuple[Instance, Instance]
    services: list[Service] = field(default_factory=list)

    @property
    def a(self) -> Instance:
        return self.instances[0]

    @property
    def b(self) -> Instance:
        return self.instances[1]

    @property
    def origin(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def portal_url(self) -> str:
        return f"{self.origin}/auth"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    def login_url(self, target: str) -> str:
        return f"{self.portal_url}/login?rd={quote(target, safe='')}"

    def client(self, http: aiohttp.ClientSession) -> ProxyClient:
        """A client of the site through nginx."""
        return ProxyClient(http, self.port)

    def direct(self, http: aiohttp.ClientSession, instance: Instance) -> DirectClient:
        """A client of one instance, skipping nginx, sending the site's Host (as nginx does)."""
        return DirectClient(http, self.port, instance.port)

    def access_entries(self) -> list[tuple[str, int, str]]:
        """Return nginx's access log so far as (uri, status, upstream address) tuples."""
        entries = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            uri, status, upstream = line.split(" ", 2)
            entries.append((uri, int(status), upstream))
        return entries

    def log_mark(self) -> int:
        """Return how many access log lines exist now (to read only what a test caused)."""
        return len(self.access_entries())

    def settled_entries(self) -> list[tuple[str, int, str]]:
        """Return the access log once it stops growing (nginx writes a line after the answer)."""
        deadline = time.monotonic() + STOP_TIMEOUT
        entries = self.access_entries()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            again = self.access_entries()
            if len(again) == len(entries):
                break
            entries = again
        return entries

    def answered_by(self, since: int) -> dict[str, list[str]]:
        """Return {instance name: [uri, ...]} for authgate requests nginx logged since `since`."""
        names = {instance.address: instance.name for instance in self.instances}
        found: dict[str, list[str]] = {instance.name: [] for instance in self.instances}
        for uri, _status, upstream in self.settled_entries()[since:]:
            # A failed-over request lists every address tried ("A, B"); the last one answered.
            last = upstream.split(", ")[-1].split(" : ")[-1]
            if last in names:
                found[names[last]].append(uri)
        return found

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        for instance in self.instances:
            instance.stop()


class DirectClient(ProxyClient):
    """Talk to one instance's port while sending `Host: localhost:<nginx port>`, as nginx would."""

    def __init__(self, session: aiohttp.ClientSession, site_port: int, connect_port: int) -> None:
        super().__init__(session, site_port)
        self.connect_port = connect_port

    async def request(
        self,
        method: str,
        path: str,
        *,
        cookies: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: Mapping[str, str] | None = None,
    ) -> Reply:
        sent = {"Host": f"localhost:{self.port}", **(headers or {})}
        if cookies:
            sent["Cookie"] = "; ".join(f"{name}={value}" for name, value in cookies.items())
        async with self.session.request(
            method,
            f"http://127.0.0.1:{self.connect_port}{path}",
            headers=sent,
            data=data,
            allow_redirects=False,
        ) as response:
            text = await response.text()
            return Reply(response.status, response.headers, text, dict(response.cookies))

    async def auth_request(self, cookie: str, path: str = "/hello") -> int:
        """Ask this instance's nginx endpoint what nginx would ask for `path`; return the status."""
        reply = await self.get(
            "/api/authz/auth-request",
            headers={
                "Cookie": f"authgate_session={cookie}",
                "X-Original-URL": f"http://localhost:{self.port}{path}",
                "X-Original-Method": "GET",
                "X-Forwarded-For": "127.0.0.1",
            },
        )
        return int(reply.status)


def write_instance_config(
    path: Path,
    *,
    port: int,
    metrics_port: int,
    site_port: int,
    storage: Mapping[str, Any],
    keys: Mapping[str, Any],
    mail_dir: Path,
    rules: list[dict[str, Any]],
    overrides: Mapping[str, Mapping[str, Any]],
) -> None:
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "workers": 1},
        "log": {"level": "info", "format": "json"},
        "storage": dict(storage),
        "secrets": dict(keys),
        "session": {
            "secure": False,
            "cookies": [{"domain": "localhost", "portal_url": f"http://localhost:{site_port}/auth"}],
        },
        "password": {"time_cost": 1, "memory_cost": 64, "parallelism": 1},
        "notifier": {"type": "file", "file": {"directory": str(mail_dir)}},
        "metrics": {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"},
        "access_control": {"default_policy": "deny", "rules": rules},
    }
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values}
    path.write_text(yaml.safe_dump(config))


def nginx_conf(directory: Path, proxy: int, instances: Sequence[Instance], demo: int) -> Path:
    """nginx.conf.example with the two-instance upstream snippet and a subrequest access log."""
    text = (ROOT / "nginx.conf.example").read_text()
    snippet = UPSTREAM_SNIPPET.read_text()
    for address, instance in zip(SNIPPET_ADDRESSES, instances, strict=True):
        assert snippet.count(address) == 1, f"{UPSTREAM_SNIPPET} no longer names {address} once"
        snippet = snippet.replace(address, instance.address)
    upstream = re.compile(r"    upstream authgate \{\n.*?\n    \}\n", re.S)
    assert len(upstream.findall(text)) == 1, "nginx.conf.example: no single `upstream authgate` block"
    text = upstream.sub(lambda _m: snippet, text)
    replacements = {
        "127.0.0.1:9080": f"127.0.0.1:{demo}",
        "listen 127.0.0.1:8080": f"listen 127.0.0.1:{proxy}",
        "worker_processes auto;": "worker_processes 1;",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"nginx.conf.example no longer contains {old!r} exactly once"
        text = text.replace(old, new)
    temp = directory / "temp"
    temp.mkdir()
    paths = "".join(
        f"    {kind}_temp_path {temp / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    logging_ = (
        f"    {ACCESS_FORMAT}\n    access_log {directory / 'access.log'} upstreams;\n    log_subrequest on;\n"
    )
    text = text.replace("http {\n", f"http {{\n{paths}{logging_}", 1)
    path = directory / "nginx.conf"
    path.write_text(text)
    return path


CADDYFILE = ROOT / "deploy" / "scaling" / "Caddyfile"


def start_caddy(stack: MultiStack, caddy: str) -> int:
    """Start Caddy with deploy/scaling/Caddyfile in front of the stack's pair; return its port.

    The stack's portal URL stays nginx's; the session cookie (host-only on localhost) is sent
    to either proxy, so requests with a cookie are what this front is for.
    """
    (port,) = free_ports(1)
    directory = stack.directory / "caddy"
    directory.mkdir()
    env = {
        **os.environ,
        "AUTHGATE_SITE": f"http://localhost:{port}",
        "AUTHGATE_OTHER_HOSTS": f"http://:{port}",
        "AUTHGATE_A": stack.a.address,
        "AUTHGATE_B": stack.b.address,
        "APP_UPSTREAM": f"127.0.0.1:{stack.demo_port}",
        "XDG_DATA_HOME": str(directory / "xdg-data"),
        "XDG_CONFIG_HOME": str(directory / "xdg-config"),
    }
    command = [caddy, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    service = Service.start("caddy", command, directory / "caddy.log", env=env)
    stack.services.append(service)
    service.wait_for_port(port)
    return port


def add_users(config: Path, extra: Mapping[str, str]) -> None:
    """Create alice (admin), bob and `extra` {name: password} with `authgate users add`, in parallel.

    The CLI speaks to whatever database the configuration names, so this works for every backend.
    """
    users = {name: (*USERS[name], PASSWORDS[name]) for name in USERS}
    for name, password in extra.items():
        users[name] = (f"{name}@example.com", name.title(), "", password)
    running = []
    for name, (mail, display, groups, password) in users.items():
        command = [sys.executable, "-m", "gateway", "--config", str(config), "users", "add", name]
        command += ["--email", mail, "--name", display, "--groups", groups, "--password-stdin"]
        process = subprocess.Popen(  # noqa: S603 - our own CLI
            command,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        running.append((name, process, password))
    for name, process, password in running:
        output, _ = process.communicate(password + "\n", timeout=60)
        assert process.returncode == 0, f"users add {name} failed:\n{output}"


def start_multi_stack(
    directory: Path,
    backend: Backend,
    nginx: str,
    *,
    rules: list[dict[str, Any]],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    users: Mapping[str, str] | None = None,
) -> MultiStack:
    """Start two instances on `backend`, the demo app and nginx; return once all answer."""
    proxy_port, demo_port, a_port, b_port, a_metrics, b_metrics = free_ports(6)
    # Explicit secrets, the same for both (what several machines need): generated ones would
    # differ per data_dir.
    keys = {"session_keys": [secrets.token_hex(32)], "storage_key": secrets.token_hex(32)}
    instances = []
    for name, port, metrics_port in (("a", a_port, a_metrics), ("b", b_port, b_metrics)):
        instance_dir = directory / name
        instance_dir.mkdir()
        config = instance_dir / "authgate.yml"
        write_instance_config(
            config,
            port=port,
            metrics_port=metrics_port,
            site_port=proxy_port,
            storage=backend.storage(instance_dir),
            keys=keys,
            mail_dir=directory / "mail",
            rules=rules,
            overrides=overrides or {},
        )
        instances.append(Instance(name, port, metrics_port, config, instance_dir / "authgate.log"))
    stack = MultiStack(backend, directory, proxy_port, demo_port, (instances[0], instances[1]))
    try:
        add_users(stack.a.config, users or {})
        for instance in stack.instances:
            instance.start()
        demo_command = [sys.executable, str(ROOT / "deploy/demo/app.py"), "--port", str(demo_port)]
        demo = Service.start(
            "demo app", [*demo_command, "--portal", stack.portal_url], directory / "demo.log"
        )
        stack.services.append(demo)
        conf = nginx_conf(directory, proxy_port, stack.instances, demo_port)
        base = ["-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")]
        globals_ = f"daemon off; pid {directory / 'nginx.pid'};"
        checked = subprocess.run(  # noqa: S603 - the test's nginx
            [nginx, *base, "-g", globals_, "-t"], capture_output=True, text=True, timeout=30, check=False
        )
        assert checked.returncode == 0, f"nginx -t failed:\n{checked.stdout}{checked.stderr}"
        proxy = Service.start("nginx", [nginx, *base, "-g", globals_], directory / "nginx.out")
        stack.services.append(proxy)
        for instance in stack.instances:
            instance.wait_ready()
        demo.wait_for_port(demo_port)
        proxy.wait_for_port(proxy_port)
    except BaseException:
        stack.stop()
        raise
    return stack
