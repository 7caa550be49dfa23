"""Helpers for the end-to-end tests: processes, ports, and an HTTP client that talks through a proxy.

Everything listens on 127.0.0.1. Browsers and authgate see the site as http://localhost:PORT, so the
client connects to 127.0.0.1 and sends `Host: localhost:PORT` itself (aiohttp would otherwise resolve
localhost, possibly to ::1, where nothing listens).
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.cookies import Morsel
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp
import pytest
from multidict import CIMultiDictProxy

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 20.0  # seconds a process may take to start answering
STOP_TIMEOUT = 5.0  # seconds a process may take to exit after SIGTERM

PASSWORDS = {"alice": "alice-correct-horse", "bob": "bob-battery-staple"}
SESSION_COOKIE = "authgate_session"
CSRF_COOKIE = "authgate_csrf"
HTML = {"Accept": "text/html,application/xhtml+xml,application/xhtml+xml;q=0.9,*/*;q=0.8"}
JSON = {"Accept": "application/json"}
IDENTITY_HEADERS = ("Remote-User", "Remote-Email", "Remote-Groups", "Remote-Name")

_CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def free_ports(count: int) -> list[int]:
    """Return `count` distinct ports that were free on 127.0.0.1 a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Service:
    """A child process whose stdout and stderr go to one log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: TextIO

    @classmethod
    def start(
        cls, name: str, command: list[str], log_path: Path, *, env: Mapping[str, str] | None = None
    ) -> Service:
        log = log_path.open("w")
        try:
            process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        except BaseException:
            log.close()
            raise
        return cls(name, process, log_path, log)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        self._log.close()

    def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        """Poll `ready` until it is true; fail with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{log_tail(self.log_path)}")
            if ready():
                return
            time.sleep(0.05)
        pytest.fail(f"{self.name}: {what} not within {STARTUP_TIMEOUT}s:\n{log_tail(self.log_path)}")

    def wait_for_port(self, port: int) -> None:
        self.wait_until(lambda: port_answers(port), f"port {port} did not answer")


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - fixed local URL
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class Stack:
    """authgate + the demo app + one real proxy in front of both."""

    kind: str  # "nginx" or "caddy"
    port: int  # the proxy: what browsers talk to
    authgate_port: int
    demo_port: int
    authgate_log: Path
    services: list[Service] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def portal_url(self) -> str:
        return f"{self.origin}/auth"

    def login_url(self, target: str) -> str:
        return f"{self.portal_url}/login?rd={quote(target, safe='')}"

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """Return authgate's JSON log entries for one event."""
        entries = []
        for line in self.authgate_log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry.get("event") == event:
                entries.append(entry)
        return entries


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    text: str
    cookies: dict[str, Morsel[str]]

    def json(self) -> Any:
        return json.loads(self.text)


class ProxyClient:
    """Send requests to one proxy as a browser at http://localhost:PORT would; never follows redirects."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.port = port

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
            method, f"http://127.0.0.1:{self.port}{path}", headers=sent, data=data, allow_redirects=False
        ) as response:
            text = await response.text()
            return Reply(response.status, response.headers, text, dict(response.cookies))

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Reply:
        return await self.request("POST", path, **kwargs)

    async def csrf(self, path: str, cookies: Mapping[str, str] | None = None) -> tuple[str, str]:
        """Load a portal page and return (CSRF cookie value, form token)."""
        page = await self.get(path, cookies=cookies, headers=HTML)
        assert page.status == 200, page.text
        match = _CSRF_FIELD.search(page.text)
        assert match, page.text
        secret = (
            page.cookies[CSRF_COOKIE].value if CSRF_COOKIE in page.cookies else (cookies or {})[CSRF_COOKIE]
        )
        return secret, match.group(1)

    async def login(self, username: str, target: str) -> tuple[Reply, str]:
        """Sign in through the portal's form; return the POST reply and the session cookie value."""
        secret, token = await self.csrf(f"/auth/login?rd={quote(target, safe='')}")
        reply = await self.post(
            "/auth/login",
            cookies={CSRF_COOKIE: secret},
            data={"csrf_token": token, "username": username, "password": PASSWORDS[username], "rd": target},
        )
        assert reply.status == 303, reply.text
        return reply, reply.cookies[SESSION_COOKIE].value

    async def session_for(self, username: str) -> str:
        _, cookie = await self.login(username, f"http://localhost:{self.port}/")
        return cookie


# Second factors: TOTP codes from oathtool and the enrolment page read like a user would.

TOTP_PERIOD = 30
_TOTP_SECRET = re.compile(r'id="totp-secret"[^>]*>([^<]+)<')
_ENROL_TOKEN = re.compile(r'name="token" value="([^"]+)"')


def oathtool_code(oathtool: str, secret: str, at: float) -> str:
    """Return the 6-digit SHA1 code oathtool computes for a base32 secret at Unix time `at`."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
    done = subprocess.run(  # noqa: S603 - fixed binary, arguments from the test
        [oathtool, "--totp", "-b", "--now", when, secret.replace(" ", "")],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def enrolment_fields(page_html: str) -> tuple[str, str]:
    """Return (base32 secret shown in #totp-secret, signed enrolment token) from the enrolment page."""
    secret = _TOTP_SECRET.search(page_html)
    token = _ENROL_TOKEN.search(page_html)
    assert secret is not None and token is not None, page_html
    return secret.group(1).replace(" ", "").strip(), token.group(1)


# App passwords: created through the portal's settings page, sent like a CalDAV client would.

TOKENS_PAGE = "/auth/settings/tokens"
_NEW_TOKEN = re.compile(r'id="new-token"[^>]*>(agp_[0-9A-Za-z]+)<')
_TOKEN_ROW = re.compile(r"<strong>([^<]+)</strong>.*?/settings/tokens/(\d+)/revoke", re.S)


def basic(username: str, secret: str) -> dict[str, str]:
    """Return an Authorization header for HTTP Basic."""
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_rows(page_html: str) -> dict[str, int]:
    """Return {name: id} of the app passwords listed on the tokens page."""
    listed = page_html.split('id="tokens"', 1)[1] if 'id="tokens"' in page_html else ""
    return {name: int(token_id) for name, token_id in _TOKEN_ROW.findall(listed)}


async def create_app_password(
    client: ProxyClient, session: str, name: str, *, domains: str = "", expiry: str = "0"
) -> str:
    """Create an app password on the tokens page through the proxy; return the token shown once."""
    cookies = {SESSION_COOKIE: session}
    secret, form_token = await client.csrf(TOKENS_PAGE, cookies=cookies)
    reply = await client.post(
        TOKENS_PAGE,
        cookies={**cookies, CSRF_COOKIE: secret},
        data={"csrf_token": form_token, "name": name, "domains": domains, "expiry": expiry},
    )
    assert reply.status == 200, reply.text
    found = _NEW_TOKEN.search(reply.text)
    assert found is not None, reply.text
    return found.group(1)
