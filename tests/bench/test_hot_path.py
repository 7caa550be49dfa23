"""The forward-auth hot path: no SQL on a cached hit, and revocation reaches every worker in time."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import IdentityHeadersConfig, SessionConfig
from gateway.factors.passwords import PasswordHasher
from gateway.models import Level, SessionRecord, User
from gateway.sessions.codec import SessionCodec, generate_session_id, hash_session_id
from gateway.sessions.service import RENEW_AFTER, SessionService
from gateway.store.sqlite import Store
from tests.http.helpers import (
    PASSWORD,
    SESSION_COOKIE,
    add_user,
    auth_request,
    forward_auth,
    services,
    signed_in,
)

ROOT = Path(__file__).resolve().parents[2]


async def test_cached_forward_auth_runs_no_sql(client: Any) -> None:
    """After one warm-up request, forward-auth and auth-request answers execute no SQL statement."""
    await add_user(client, "alice")
    session = await signed_in(client, "alice")
    store = services(client).store
    warm = await forward_auth(client, session)
    assert warm.status == 200
    before = store.statement_count
    for i in range(50):
        answer = await forward_auth(client, session, uri=f"/page/{i}?q={i}")
        assert answer.status == 200
        assert answer.headers["Remote-User"] == "alice"
        answer = await auth_request(client, session, url=f"http://app.localhost/other/{i}")
        assert answer.status == 200
    assert store.statement_count == before


async def test_cached_hit_keeps_activity_in_memory_until_the_flush(client: Any) -> None:
    """Requests on a cached session write nothing; the flush writes their activity in one batch."""
    await add_user(client, "alice")
    session = await signed_in(client, "alice")
    svc = services(client)
    assert (await forward_auth(client, session)).status == 200
    before = svc.store.statement_count
    for _ in range(20):
        assert (await forward_auth(client, session)).status == 200
    assert svc.store.statement_count == before
    await svc.sessions.flush_activity()
    # One BEGIN, one batched UPDATE, one COMMIT: not one write per request.
    assert svc.store.statement_count - before == 3


async def _until(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_sessions_in_use_are_renewed_in_the_background(client: Any, clock: Any) -> None:
    """Past RENEW_AFTER a request answers from the cache while the renewer re-reads it in the background."""
    await add_user(client, "alice")
    session = await signed_in(client, "alice")
    svc = services(client)
    ttl = svc.config.session.cache_ttl
    assert (await forward_auth(client, session)).status == 200
    first = svc.sessions.cache.peek(session)
    assert first is not None
    first_bound = first.refresh_at

    clock.advance(ttl * RENEW_AFTER[1])
    before = svc.store.statement_count
    answer = await forward_auth(client, session)
    assert answer.status == 200 and answer.headers["Remote-User"] == "alice"
    await _until(lambda: svc.sessions.cache.peek(session).refresh_at > first_bound)
    # One read on the read-only connection, done by the renewer, not by the request.
    assert svc.store.statement_count - before == 1
    # Nothing about the session changed: the same entry, its bounds moved on.
    assert svc.sessions.cache.peek(session) is first

    clock.advance(ttl * 0.5)  # past the first read's hard bound, within the renewed one
    before = svc.store.statement_count
    assert (await forward_auth(client, session)).status == 200
    assert svc.store.statement_count == before


@pytest.mark.parametrize(
    ("change", "header", "expected"),
    [
        pytest.param({"groups": ["users", "ops"]}, "Remote-Groups", "users,ops", id="groups"),
        pytest.param({"email": "alice@new.example"}, "Remote-Email", "alice@new.example", id="e-mail"),
        pytest.param({"display_name": "Alice New"}, "Remote-Name", "Alice New", id="display name"),
    ],
)
async def test_a_renewal_picks_up_identity_changed_elsewhere(
    client: Any, clock: Any, change: dict[str, Any], header: str, expected: str
) -> None:
    """An entry is kept through a renewal only while nothing it answers with has changed."""
    user = await add_user(client, "alice")
    session = await signed_in(client, "alice")
    svc = services(client)
    assert (await forward_auth(client, session)).status == 200
    first = svc.sessions.cache.peek(session)

    await svc.store.update_user(user.id, **change)  # as the CLI or another worker would
    clock.advance(svc.config.session.cache_ttl * RENEW_AFTER[1])
    assert (await forward_auth(client, session)).status == 200  # queues the renewal
    await _until(lambda: svc.sessions.cache.peek(session) is not first)

    answer = await forward_auth(client, session)
    assert answer.status == 200 and answer.headers[header] == expected


async def test_a_renewal_sees_a_revocation_made_elsewhere(client: Any, clock: Any) -> None:
    """A session deleted by another worker stops working once the background re-read has run."""
    user = await add_user(client, "alice")
    session = await signed_in(client, "alice")
    svc = services(client)
    assert (await forward_auth(client, session)).status == 200

    await svc.store.delete_user_sessions(user.id)  # as the CLI or another worker would
    clock.advance(svc.config.session.cache_ttl * RENEW_AFTER[1])
    assert (await forward_auth(client, session)).status == 200  # still within the bound
    await _until(lambda: svc.sessions.cache.peek(session) is None)

    assert (await forward_auth(client, session)).status == 302


async def test_sessions_due_together_are_renewed_in_one_query(client: Any, clock: Any) -> None:
    """The renewer re-reads every session queued during a tick in one statement; a gone one ends alone."""
    users = [await add_user(client, name) for name in ("alice", "bob", "carol")]
    sessions = [await signed_in(client, user.username) for user in users]
    svc = services(client)
    for session in sessions:
        assert (await forward_auth(client, session)).status == 200
    first_bounds = [svc.sessions.cache.peek(session).refresh_at for session in sessions]

    await svc.store.delete_user_sessions(users[1].id)  # bob's, as another worker would
    clock.advance(svc.config.session.cache_ttl * RENEW_AFTER[1])
    before = svc.store.statement_count
    for session in sessions:
        assert (await forward_auth(client, session)).status == 200  # all still within the bound
    await _until(lambda: svc.sessions.cache.peek(sessions[1]) is None)
    await _until(
        lambda: all(
            svc.sessions.cache.peek(s).refresh_at > bound
            for s, bound in zip((sessions[0], sessions[2]), (first_bounds[0], first_bounds[2]), strict=True)
        )
    )
    # One SELECT … IN (…) for the three (bob's row is already gone: nothing to delete).
    assert svc.store.statement_count - before == 1
    # alice's and carol's renewals were kept although bob's ended in the same batch.
    assert svc.sessions.cache.peek(sessions[0]) is not None
    assert svc.sessions.cache.peek(sessions[2]) is not None
    clock.advance(svc.config.session.cache_ttl * 0.5)  # past the first reads' bound
    before = svc.store.statement_count
    assert (await forward_auth(client, sessions[0])).status == 200
    assert (await forward_auth(client, sessions[2])).status == 200
    assert svc.store.statement_count == before
    assert (await forward_auth(client, sessions[1])).status == 302


async def test_read_sessions_is_one_statement_and_skips_missing(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "authgate.sqlite3")
    try:
        user = await store.create_user("alice", "alice@example.com", "Alice", ["dev"], None)
        now = time.time()
        hashes = [c * 64 for c in "abc"]
        for id_hash in hashes[:2]:
            await store.create_session(
                SessionRecord(id_hash, user.id, Level.ONE_FACTOR, now, now, now, now + 60, False, "", "")
            )
        before = store.statement_count
        found = await store.read_sessions(hashes)
        assert store.statement_count - before == 1
        assert sorted(found) == hashes[:2]
        assert found[hashes[0]][1].username == "alice"
        assert await store.read_sessions([]) == {}
    finally:
        await store.close()


async def test_nginx_401_has_no_body_and_a_memoised_location(client: Any) -> None:
    """auth-request's 401 carries only the Location (nginx keeps the upstream connection); repeats agree."""
    first = await auth_request(client, None, url="http://app.localhost/a?b=1")
    again = await auth_request(client, None, url="http://app.localhost/a?b=1")
    other = await auth_request(client, None, url="http://app.localhost/other")
    for answer in (first, again, other):
        assert answer.status == 401 and await answer.read() == b""
    assert first.headers["Location"] == again.headers["Location"]
    assert first.headers["Location"].endswith("rd=http%3A%2F%2Fapp.localhost%2Fa%3Fb%3D1")
    assert other.headers["Location"].endswith("rd=http%3A%2F%2Fapp.localhost%2Fother")
    outside = await auth_request(client, None, url="http://elsewhere.example/a")
    assert outside.status == 403
    assert (await auth_request(client, None, url="http://elsewhere.example/a")).status == 403


class _SlowStore:
    """Just enough of a Store: one session whose read waits for a signal."""

    def __init__(self, record: SessionRecord, user: User) -> None:
        self.found: tuple[SessionRecord, User] | None = (record, user)
        self.release = asyncio.Event()
        self.release.set()
        self.reads = 0

    async def read_session(self, id_hash: str) -> tuple[SessionRecord, User] | None:
        self.reads += 1
        await self.release.wait()
        return self.found

    async def read_sessions(self, id_hashes: list[str]) -> dict[str, tuple[SessionRecord, User]]:
        found = await self.read_session(id_hashes[0])
        return {} if found is None else {id_hashes[0]: found}

    async def delete_session(self, id_hash: str) -> bool:
        self.found = None
        return True


async def test_a_revocation_during_a_read_keeps_that_read_out_of_the_cache() -> None:
    """A renewal that read the session before this worker revoked it does not bring it back."""
    now = [time.time()]
    cfg = SessionConfig(expiration=3600, inactivity=0, cache_ttl=5.0)
    codec = SessionCodec(["k" * 40], max_age=cfg.remember_me)
    session_id = generate_session_id()
    id_hash = hash_session_id(session_id)
    record = SessionRecord(id_hash, 1, Level.ONE_FACTOR, now[0], now[0], now[0], now[0] + 3600, False, "", "")
    user = User(1, "alice", "a@example.com", "Alice", ("dev",), False, now[0])
    store = _SlowStore(record, user)
    service = SessionService(store, codec, cfg, IdentityHeadersConfig(), lambda: now[0])  # type: ignore[arg-type]
    cookie = codec.sign(session_id)
    assert await service.resolve(cookie) is not None

    store.release.clear()
    renewal = asyncio.create_task(service._renew_many([cookie]))
    await _until(lambda: store.reads == 2)
    assert await service.revoke(id_hash)
    store.found = (record, user)  # the read in flight still returns the old row
    store.release.set()
    await renewal

    assert service.cache.peek(cookie) is None
    store.found = None
    assert await service.resolve(cookie) is None


async def test_session_reads_never_wait_behind_a_write_transaction(tmp_path: Path) -> None:
    """read_session answers (with the last committed row) while a write transaction holds the store."""
    store = await Store.open(tmp_path / "authgate.sqlite3")
    try:
        user = await store.create_user("alice", "alice@example.com", "Alice", ["dev"], None)
        now = time.time()
        record = SessionRecord("h" * 64, user.id, Level.ONE_FACTOR, now, now, now, now + 60, False, "", "")
        await store.create_session(record)
        before = store.statement_count
        async with store._transaction():
            await store._sql("UPDATE sessions SET level = 2 WHERE id_hash = ?", (record.id_hash,))
            found = await asyncio.wait_for(store.read_session(record.id_hash), timeout=2)
        assert found is not None and found[0].level is Level.ONE_FACTOR
        assert store.statement_count - before == 4  # BEGIN, UPDATE, COMMIT and the read: all counted
        found = await store.read_session(record.id_hash)
        assert found is not None and found[0].level is Level.TWO_FACTOR
    finally:
        await store.close()


# --- several workers (real processes) -------------------------------------------------------------

CACHE_TTL = 1.0
MARGIN = 0.5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "authgate.yml"
    path.write_text(
        f"""
server: {{host: 127.0.0.1, port: {port}, workers: 2}}
log: {{level: warning}}
storage: {{data_dir: {tmp_path / "data"}}}
secrets: {{session_keys: ['{"k" * 40}']}}
password: {{time_cost: 1, memory_cost: 64, parallelism: 1}}
session:
  secure: false
  cookies: [{{domain: localhost, portal_url: "http://localhost:{port}/auth"}}]
  cache_ttl: {CACHE_TTL}s
  activity_flush_interval: 1s
access_control:
  default_policy: deny
  rules: [{{domain: '*.localhost', policy: one_factor}}]
"""
    )
    return path


async def _seed_user(tmp_path: Path) -> None:
    from gateway.config import Argon2Config

    store = await Store.open(tmp_path / "data" / "authgate.sqlite3")
    try:
        password_hash = PasswordHasher(Argon2Config(time_cost=1, memory_cost=64, parallelism=1)).hash(
            PASSWORD
        )
        await store.create_user("alice", "alice@example.com", "Alice", ["dev"], password_hash)
    finally:
        await store.close()


def _request(port: int, method: str, path: str, headers: dict[str, str], body: str | None = None) -> Any:
    """One request over a fresh connection (so SO_REUSEPORT may pick either worker)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        answer.read()
        return answer
    finally:
        conn.close()


def _check(port: int, cookie: str) -> int:
    headers = {
        "X-Original-URL": "http://app.localhost/page",
        "X-Original-Method": "GET",
        "Cookie": f"{SESSION_COOKIE}={cookie}",
        "Connection": "close",
    }
    return int(_request(port, "GET", "/api/authz/auth-request", headers).status)


def _portal_login(port: int) -> tuple[str, str, str]:
    """Log in through the portal; return (session cookie, CSRF cookie, CSRF token)."""
    page = _request(port, "GET", "/auth/login", {"Host": f"localhost:{port}"})
    csrf = re.search(r"authgate_csrf=([^;]+)", page.getheader("Set-Cookie") or "")
    assert csrf is not None
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(
        "GET", "/auth/login", headers={"Host": f"localhost:{port}", "Cookie": f"authgate_csrf={csrf[1]}"}
    )
    html = conn.getresponse().read().decode()
    conn.close()
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None
    form = f"username=alice&password={PASSWORD.replace(' ', '+')}&csrf_token={token[1]}"
    answer = _request(
        port,
        "POST",
        "/auth/login",
        {
            "Host": f"localhost:{port}",
            "Cookie": f"authgate_csrf={csrf[1]}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        form,
    )
    assert answer.status == 303
    session = re.search(rf"{SESSION_COOKIE}=([^;]+)", answer.getheader("Set-Cookie") or "")
    assert session is not None
    return session[1], csrf[1], token[1]


@contextlib.contextmanager
def _serving(config: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config), "serve", "--workers", "2"],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            assert time.monotonic() < deadline, "authgate did not start"
            time.sleep(0.05)
        time.sleep(1.0)  # the second worker binds its SO_REUSEPORT socket too
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()


def _worker_pids(parent: int) -> set[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children")
    return {int(pid) for pid in children.read_text().split()} if children.exists() else set()


@pytest.mark.parametrize("revoke", ["portal logout", "cli disable"])
async def test_revocation_reaches_every_worker_within_cache_ttl(tmp_path: Path, revoke: str) -> None:
    """A session revoked on one worker (or by the CLI) gets 401 from every worker after cache_ttl."""
    port = _free_port()
    config = _config(tmp_path, port)
    (tmp_path / "data").mkdir(mode=0o700)
    await _seed_user(tmp_path)
    with _serving(config, port) as proc:
        if Path(f"/proc/{proc.pid}/task/{proc.pid}/children").exists():
            # Two workers (plus multiprocessing's resource tracker).
            assert len(_worker_pids(proc.pid)) >= 2
        session, csrf, token = _portal_login(port)
        # 40 fresh connections: the chance that SO_REUSEPORT sent them all to one worker is 2**-39.
        assert [_check(port, session) for _ in range(40)] == [200] * 40
        if revoke == "portal logout":
            answer = _request(
                port,
                "POST",
                "/auth/logout",
                {
                    "Host": f"localhost:{port}",
                    "Cookie": f"authgate_csrf={csrf}; {SESSION_COOKIE}={session}",
                    "Content-Type": "application/x-www-form-urlencoded",
                },
                f"csrf_token={token}",
            )
            assert answer.status == 303
        else:
            done = subprocess.run(
                [sys.executable, "-m", "gateway", "--config", str(config), "users", "disable", "alice"],
                cwd=ROOT,
                capture_output=True,
                timeout=30,
                check=False,
            )
            assert done.returncode == 0, done.stderr
        revoked_at = time.monotonic()
        time.sleep(CACHE_TTL + MARGIN)
        # Bounded: every worker must refuse from now on.
        statuses = [_check(port, session) for _ in range(40)]
        assert time.monotonic() - revoked_at < CACHE_TTL + MARGIN + 5
        assert statuses == [401] * 40
