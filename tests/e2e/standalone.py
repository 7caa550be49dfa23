"""A real `python -m gateway serve` with no proxy in front, for the race and fault tests.

The server runs in its own process group, so a test can SIGKILL the supervisor and every
worker at once (as the OOM killer or `systemctl kill` would) and start it again on the same
data folder. Clients talk to it straight on 127.0.0.1 with `Host: localhost:PORT`, the
portal URL of its one cookie domain.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.config import load_config
from gateway.factors.passwords import PasswordHasher
from gateway.store.engine import open_store
from tests.e2e.support import (
    CSRF_COOKIE,
    HTML,
    PASSWORDS,
    ROOT,
    SESSION_COOKIE,
    STARTUP_TIMEOUT,
    ProxyClient,
    Reply,
    free_ports,
    http_ok,
    log_tail,
)

_LINK = re.compile(r"http://localhost:\d+(/auth/(?:reset|recover)/[A-Za-z0-9_-]+)")
_RECOVERY_CODE = re.compile(r"<li><code>([0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{4})</code></li>")


def write_config(directory: Path, port: int, overrides: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write an authgate.yml for a proxy-less server on `port` with cheap argon2 and two workers."""
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "workers": 2},
        "log": {"level": "info", "format": "json"},
        "storage": {"data_dir": str(directory / "data")},
        "session": {
            "secure": False,
            "cookies": [{"domain": "localhost", "portal_url": f"http://localhost:{port}/auth"}],
        },
        "password": {"time_cost": 1, "memory_cost": 64, "parallelism": 1},
        "notifier": {"type": "file", "file": {"directory": str(directory / "mail")}},
        "access_control": {"default_policy": "one_factor", "rules": []},
    }
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values}
    path = directory / "authgate.yml"
    path.write_text(yaml.safe_dump(config))
    return path


USERS = {
    "alice": ("alice@example.com", "Alice", ("admins",), PASSWORDS["alice"]),
    "bob": ("bob@example.com", "Bob", (), PASSWORDS["bob"]),
}


def add_users(config: Path, extra: Mapping[str, str] | None = None) -> None:
    """Create alice (an admin), bob and `extra` {name: password} in the server's database.

    In this process through the store, as `authgate users add` does (a CLI process per user
    would cost a second of start-up each on a loaded machine).
    """
    loaded = load_config(str(config), {})
    hasher = PasswordHasher(loaded.password)
    users = dict(USERS)
    for name, password in (extra or {}).items():
        users[name] = (f"{name}@example.com", name.title(), (), password)

    async def create() -> None:
        store = await open_store(loaded.storage)
        try:
            for name, (mail, display, groups, password) in users.items():
                await store.create_user(name, mail, display, groups, hasher.hash(password))
        finally:
            await store.close()

    asyncio.run(create())


@dataclass
class Gateway:
    """One authgate server (supervisor + workers) and the folder it keeps its data in."""

    directory: Path
    config: Path
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    workers: int = 2  # as server.workers in its configuration
    _logs: list[Any] = field(default_factory=list)

    @property
    def database(self) -> Path:
        return self.directory / "data" / "authgate.sqlite3"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, preexec: Any = None) -> None:
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
            start_new_session=True,  # its own process group: one killpg reaches every worker
            preexec_fn=preexec,  # noqa: PLW1509 - only resource limits, set before exec
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not http_ok(f"{self.base_url}/api/health"):
            if self.process.poll() is not None:
                pytest.fail(f"authgate exited with {self.process.returncode}:\n{log_tail(self.log_path)}")
            if time.monotonic() > deadline:
                pytest.fail(f"authgate did not answer /api/health:\n{log_tail(self.log_path)}")
            time.sleep(0.05)
        # Every worker listens once each has logged worker_started (SO_REUSEPORT spreads the load).
        while (
            self.log_text().split(f"--- start {self.starts}\n")[-1].count('"worker_started"') < self.workers
        ):
            if time.monotonic() > deadline:
                pytest.fail(f"the second worker did not start:\n{log_tail(self.log_path)}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the supervisor and every worker at once, and reap the supervisor."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        self._wait_group_gone()

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM the supervisor (it forwards to the workers); return its exit status."""
        assert self.process is not None
        self.process.terminate()
        code = self.process.wait(timeout=timeout)
        self._wait_group_gone()
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # any worker left behind
            except ProcessLookupError:
                pass
        for log in self._logs:
            log.close()
        self._logs.clear()

    def _wait_group_gone(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
        pytest.fail("authgate workers outlived their supervisor")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self, event: str) -> list[dict[str, Any]]:
        import json  # noqa: PLC0415 - only the log readers need it

        found = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event") == event:
                    found.append(entry)
        return found

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the database from the test, as an operator's sqlite3 shell would."""
        db = sqlite3.connect(self.database, timeout=10)
        try:
            return list(db.execute(sql, params).fetchall())
        finally:
            db.close()

    def client(self, http: aiohttp.ClientSession) -> ProxyClient:
        return ProxyClient(http, self.port)

    def mails(self) -> list[str]:
        """Return the plain-text bodies of the mails the file notifier wrote, oldest first."""
        bodies = []
        for path in sorted((self.directory / "mail").glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            body = message.get_body(preferencelist=("plain",))
            assert body is not None
            bodies.append(str(body.get_content()))
        return bodies


def start_gateway(
    directory: Path,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    users: Mapping[str, str] | None = None,
    preexec: Any = None,
) -> Gateway:
    """Configure, create alice, bob and `users`, and start a two-worker server in `directory`."""
    (port,) = free_ports(1)
    config = write_config(directory, port, overrides or {})
    add_users(config, users)
    workers = int((overrides or {}).get("server", {}).get("workers", 2))
    gateway = Gateway(directory, config, port, directory / "authgate.log", workers=workers)
    gateway.start(preexec=preexec)
    return gateway


def link_in(body: str) -> str:
    """Return the portal path of the reset or recovery link in a mail body."""
    found = _LINK.search(body)
    assert found is not None, body
    return found.group(1)


def recovery_codes_in(page: str) -> list[str]:
    codes = _RECOVERY_CODE.findall(page)
    assert codes, page
    return codes


async def form_post(
    client: ProxyClient, page: str, action: str, fields: Mapping[str, str], cookies: Mapping[str, str]
) -> Reply:
    """Load `page` for its CSRF token, then post `fields` to `action` with the same cookies."""
    secret, token = await client.csrf(page, cookies=cookies)
    return await client.post(
        action, cookies={**cookies, CSRF_COOKIE: secret}, data={"csrf_token": token, **fields}
    )


async def password_login(client: ProxyClient, username: str, password: str | None = None) -> Reply:
    """Post the login form once; return the reply (303 with a session or a pending cookie, or an error)."""
    secret, token = await client.csrf("/auth/login")
    return await client.post(
        "/auth/login",
        cookies={CSRF_COOKIE: secret},
        data={"csrf_token": token, "username": username, "password": password or PASSWORDS[username]},
    )


def session_of(reply: Reply) -> str:
    assert reply.status == 303, reply.text
    return reply.cookies[SESSION_COOKIE].value


__all__ = ["HTML", "Gateway", "form_post", "link_in", "password_login", "recovery_codes_in", "start_gateway"]
