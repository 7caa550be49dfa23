"""`make run`'s launcher (deploy/devstack.py) on free ports: ready means ready, Ctrl-C stops everything."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.support import ROOT, free_ports

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 120.0  # seconds for all three processes on a loaded machine
EXIT_TIMEOUT = 45.0  # seconds for the launcher to stop everything and exit


@dataclass
class Launcher:
    """A running devstack.py whose console (stdout and stderr) is collected line by line."""

    process: subprocess.Popen[str]
    proxy: int
    authgate: int
    app: int
    data: Path
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def console(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.console:
                return True
            if self.process.poll() is not None:
                time.sleep(0.2)  # let the reader take the last lines
                return text in self.console
            time.sleep(0.1)
        return False


def start_launcher(tmp_path: Path) -> Launcher:
    proxy, authgate, app = free_ports(3)
    data = tmp_path / "data"
    command = [sys.executable, str(ROOT / "deploy/devstack.py"), "--proxy-port", str(proxy)]
    command += ["--authgate-port", str(authgate), "--app-port", str(app), "--data", str(data)]
    process = subprocess.Popen(  # noqa: S603 - our own launcher
        command,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    launcher = Launcher(process, proxy, authgate, app, data)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            launcher.lines.append(line)

    launcher.reader = threading.Thread(target=read, daemon=True)
    launcher.reader.start()
    return launcher


@pytest.fixture
def launcher(tmp_path: Path, caddy_bin: str) -> Iterator[Launcher]:
    started = start_launcher(tmp_path)
    yield started
    if started.process.poll() is None:  # a failed test must not leave the stack running
        started.process.send_signal(signal.SIGINT)
        try:
            started.process.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            started.process.kill()
            started.process.wait(timeout=EXIT_TIMEOUT)
    if started.reader is not None:
        started.reader.join(timeout=EXIT_TIMEOUT)
    if started.process.stdout is not None:
        started.process.stdout.close()


def status(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": f"localhost:{port}", "Accept": "text/html"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def location(port: int, path: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": f"localhost:{port}", "Accept": "text/html"})
        return connection.getresponse().getheader("Location") or ""
    finally:
        connection.close()


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; everything after its ")" splits cleanly.
    return text[text.rindex(")") + 2 :].split()


def descendants(root: int) -> dict[int, str]:
    """Return {pid: start time} of every process below `root` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
            started[int(entry)] = fields[19]
    found: dict[int, str] = {}
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        found[pid] = started[pid]
        pending.extend(children.get(pid, []))
    return found


def alive(processes: dict[int, str]) -> list[int]:
    """The pids still running (a zombie or a new process reusing the pid does not count)."""
    running = []
    for pid, start in processes.items():
        fields = _stat(pid)
        if fields is not None and fields[19] == start and fields[0] != "Z":
            running.append(pid)
    return running


def caddy_json(text: str) -> list[str]:
    """Lines of `text` that are Caddy's JSON log entries."""
    found = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and ("logger" in entry or "ts" in entry):
            found.append(line)
    return found


def test_ready_means_the_proxy_answers_and_ctrl_c_stops_all_three(launcher: Launcher) -> None:
    """After "ready" Caddy answers at once (no 502) and logs to a file; SIGINT stops all three."""
    assert launcher.wait_for("ready:", READY_TIMEOUT), launcher.console
    site = f"http://localhost:{launcher.proxy}/"
    assert f"Open {site}" in launcher.console

    # At once, no retry: the portal (first run: setup), forward-auth and the demo app via Caddy.
    assert status(launcher.proxy, "/auth/login") == 303
    assert location(launcher.proxy, "/auth/login") == "/auth/setup"
    assert status(launcher.proxy, "/auth/setup") == 200
    assert status(launcher.proxy, "/") == 302  # forward-auth sends the browser to the portal
    assert status(launcher.proxy, "/public/") == 200  # the bypass rule, served by the demo app

    caddy_log = launcher.data / "caddy.log"
    assert str(caddy_log) in launcher.console  # the banner says where Caddy's log is
    assert caddy_json(caddy_log.read_text()), "Caddy wrote no JSON log lines to its file"
    assert caddy_json(launcher.console) == []
    assert "worker_started" in launcher.console  # authgate's own log stays on the console

    children = descendants(launcher.process.pid)
    assert len(children) >= 3, children
    launcher.process.send_signal(signal.SIGINT)
    assert launcher.process.wait(timeout=EXIT_TIMEOUT) == 0, launcher.console
    assert alive(children) == [], launcher.console
    assert "stopping" in launcher.console


def test_a_process_that_cannot_start_is_named_with_its_log(tmp_path: Path, caddy_bin: str) -> None:
    """When Caddy's port is taken, the launcher says Caddy failed, names its log, and stops the others."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        proxy, authgate, app = blocker.getsockname()[1], *free_ports(2)
        data = tmp_path / "data2"
        command = [sys.executable, str(ROOT / "deploy/devstack.py"), "--proxy-port", str(proxy)]
        command += ["--authgate-port", str(authgate), "--app-port", str(app), "--data", str(data)]
        done = subprocess.run(  # noqa: S603 - our own launcher
            command,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=READY_TIMEOUT + EXIT_TIMEOUT,
            check=False,
        )

    assert done.returncode == 1, done.stdout + done.stderr
    assert f"caddy exited with code 1 while starting; its log: {data / 'caddy.log'}" in done.stderr
    assert "ready:" not in done.stdout
    for port in (authgate, app):  # authgate and the demo app were stopped with the rest
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
