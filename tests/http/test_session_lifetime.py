"""Session expiry, inactivity, remember-me and cookie integrity, through forward-auth."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.models import Level, SessionRecord
from gateway.sessions.codec import SessionCodec, generate_session_id, hash_session_id
from tests.http.helpers import (
    KEY_A,
    KEY_B,
    Clock,
    MakeClient,
    add_user,
    auth_request,
    forward_auth,
    services,
    signed_in,
)
from tests.pg import both_storage_engines  # noqa: F401 - runs this module on SQLite and PostgreSQL

Client = TestClient[Any, Any]
HOUR = 3600.0
INACTIVITY = 300.0
FLUSH = 10.0


@pytest.mark.parametrize(
    ("elapsed", "status"),
    [
        pytest.param(HOUR - 60, 200, id="just before expiration"),
        pytest.param(HOUR + 1, 302, id="just after expiration"),
    ],
)
async def test_session_expires_after_expiration(
    make_client: MakeClient, clock: Clock, elapsed: float, status: int
) -> None:
    """A normal session ends session.expiration after login, however active it was."""
    client = await make_client({"session": {"inactivity": 0}})
    await add_user(client)
    session = await signed_in(client)

    clock.advance(elapsed)

    assert (await forward_auth(client, session)).status == status


async def test_expired_session_gets_401_for_api_and_auth_request(client: Client, clock: Clock) -> None:
    """After expiry a JSON request and nginx's auth-request both get 401."""
    await add_user(client)
    session = await signed_in(client)
    for _ in range(20):  # stay active so only the absolute expiry applies
        clock.advance(HOUR / 20)
        await forward_auth(client, session)
    clock.advance(1)

    assert (await forward_auth(client, session, accept="application/json")).status == 401
    assert (await auth_request(client, session)).status == 401


async def test_expiry_applies_while_the_cache_is_fresh(make_client: MakeClient, clock: Clock) -> None:
    """A cached session is refused as soon as it expires, not only at the next cache refresh."""
    client = await make_client({"session": {"inactivity": 0}})
    await add_user(client)
    session = await signed_in(client)
    clock.advance(HOUR - 1)
    assert (await forward_auth(client, session)).status == 200

    clock.advance(2)  # still within cache_ttl of the last read

    assert (await forward_auth(client, session)).status == 302


async def test_idle_session_ends_after_inactivity(client: Client, clock: Clock) -> None:
    """A session idle longer than inactivity (+ the flush interval) is refused."""
    await add_user(client)
    session = await signed_in(client)
    assert (await forward_auth(client, session)).status == 200

    clock.advance(INACTIVITY + FLUSH + 1)

    assert (await forward_auth(client, session)).status == 302


@pytest.mark.parametrize(
    ("idle", "status"),
    [pytest.param(2 + 1, 200, id="idle up to the limit"), pytest.param(2 + 1 + 0.5, 302, id="idle past it")],
)
async def test_inactivity_applies_while_the_cache_is_fresh(
    make_client: MakeClient, clock: Clock, idle: float, status: int
) -> None:
    """With inactivity shorter than cache_ttl, the cache-hit path itself ends an idle session."""
    client = await make_client(
        {"session": {"inactivity": "2s", "activity_flush_interval": "1s", "cache_ttl": "30s"}}
    )
    await add_user(client)
    session = await signed_in(client)
    assert (await forward_auth(client, session)).status == 200

    clock.advance(idle)  # well within cache_ttl of the last read

    assert (await forward_auth(client, session)).status == status
    if status == 302:  # ended for good, not only refused once
        clock.advance(0.1)
        assert (await forward_auth(client, session)).status == 302


async def test_idle_session_within_the_window_survives(client: Client, clock: Clock) -> None:
    """Idle exactly up to inactivity + flush interval still passes."""
    await add_user(client)
    session = await signed_in(client)
    assert (await forward_auth(client, session)).status == 200

    clock.advance(INACTIVITY + FLUSH)

    assert (await forward_auth(client, session)).status == 200


async def test_activity_keeps_the_session_alive(client: Client, clock: Clock) -> None:
    """Requests spaced below the inactivity limit keep a session alive well past it."""
    await add_user(client)
    session = await signed_in(client)

    for _ in range(5):
        clock.advance(INACTIVITY - 60)
        assert (await forward_auth(client, session)).status == 200


async def test_activity_survives_a_flush_to_storage(client: Client, clock: Clock) -> None:
    """Activity written to storage by the flusher counts the same as activity kept in memory."""
    await add_user(client)
    session = await signed_in(client)
    clock.advance(INACTIVITY - 60)
    assert (await forward_auth(client, session)).status == 200

    await services(client).sessions.flush_activity()
    services(client).sessions.cache = type(services(client).sessions.cache)()  # as on another worker
    clock.advance(INACTIVITY - 60)

    assert (await forward_auth(client, session)).status == 200


async def test_remember_me_session_ignores_inactivity(client: Client, clock: Clock) -> None:
    """A remember-me session stays valid after a long idle period."""
    await add_user(client)
    session = await signed_in(client, remember=True)

    clock.advance(12 * HOUR)

    assert (await forward_auth(client, session)).status == 200


async def test_remember_me_session_ends_after_its_duration(client: Client, clock: Clock) -> None:
    """A remember-me session ends session.remember_me after login."""
    await add_user(client)
    session = await signed_in(client, remember=True)

    clock.advance(24 * HOUR + 1)

    assert (await forward_auth(client, session)).status == 302


async def test_tampered_cookie_is_refused(client: Client) -> None:
    """Changing one character of the session id breaks the signature."""
    await add_user(client)
    session = await signed_in(client)
    flipped = ("B" if session[0] != "B" else "C") + session[1:]

    assert (await forward_auth(client, flipped)).status == 302
    assert (await forward_auth(client, session + "x")).status == 302


async def test_cookie_signed_with_an_unknown_key_is_refused(client: Client) -> None:
    """A cookie naming a real session but signed with a key not in session_keys is refused."""
    user = await add_user(client)
    svc = services(client)
    session_id = generate_session_id()
    await svc.store.create_session(_record(session_id, user.id, svc.clock()))
    forged = SessionCodec(["f" * 40], max_age=HOUR).sign(session_id)

    assert (await forward_auth(client, forged)).status == 302
    assert (await forward_auth(client, svc.sessions.codec.sign(session_id))).status == 200


async def test_old_key_listed_second_still_verifies(make_client: MakeClient) -> None:
    """After rotation a cookie signed with the previous key (now second) is still accepted."""
    before = await make_client({"secrets": {"session_keys": [KEY_A]}})
    await add_user(before)
    old_cookie = await signed_in(before)

    after = await make_client({"secrets": {"session_keys": [KEY_B, KEY_A]}})

    response = await forward_auth(after, old_cookie)
    assert response.status == 200
    assert response.headers["Remote-User"] == "alice"


async def test_new_login_is_signed_with_the_first_key(make_client: MakeClient, clock: Clock) -> None:
    """With [new, old] keys a fresh login verifies under the new key alone, not the old one."""
    client = await make_client({"secrets": {"session_keys": [KEY_B, KEY_A]}})
    await add_user(client)
    cookie = await signed_in(client)

    SessionCodec([KEY_B], max_age=HOUR).verify(cookie, now=clock.now)
    with pytest.raises(Exception, match="signature"):
        SessionCodec([KEY_A], max_age=HOUR).verify(cookie, now=clock.now)


async def test_dropped_key_invalidates_its_cookies(make_client: MakeClient) -> None:
    """Once the old key is removed from session_keys its cookies stop working."""
    before = await make_client({"secrets": {"session_keys": [KEY_A]}})
    await add_user(before)
    old_cookie = await signed_in(before)

    after = await make_client({"secrets": {"session_keys": [KEY_B]}})

    assert (await forward_auth(after, old_cookie)).status == 302


async def test_cookie_older_than_max_age_is_refused(client: Client, clock: Clock) -> None:
    """A cookie past the codec's max age is refused even if its session row says otherwise."""
    user = await add_user(client)
    svc = services(client)
    session_id = generate_session_id()
    record = _record(session_id, user.id, clock.now, lifetime=100 * 86400.0, remember_me=True)
    await svc.store.create_session(record)
    cookie = svc.sessions.codec.sign(session_id)
    assert (await forward_auth(client, cookie)).status == 200

    clock.advance(svc.sessions.codec.max_age + 60)

    assert (await forward_auth(client, cookie)).status == 302


async def test_session_deleted_in_storage_ends_within_cache_ttl(client: Client, clock: Clock) -> None:
    """A session removed by another worker (or the CLI) stops working after cache_ttl."""
    user = await add_user(client)
    session = await signed_in(client)
    assert (await forward_auth(client, session)).status == 200

    await services(client).store.delete_user_sessions(user.id)
    clock.advance(5.0)

    assert (await forward_auth(client, session)).status == 302


def _record(
    session_id: str, user_id: int, now: float, *, lifetime: float = HOUR, remember_me: bool = False
) -> SessionRecord:
    return SessionRecord(
        id_hash=hash_session_id(session_id),
        user_id=user_id,
        level=Level.ONE_FACTOR,
        created_at=now,
        authenticated_at=now,
        last_active=now,
        expires_at=now + lifetime,
        remember_me=remember_me,
        ip="127.0.0.1",
        user_agent="test",
    )
