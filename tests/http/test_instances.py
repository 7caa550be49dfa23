"""Two authgate instances on one PostgreSQL database (two apps, two pools, one data_dir's secrets).

Revocations on instance A reach instance B's caches through LISTEN/NOTIFY: the clock is frozen
and cache_ttl is at its maximum, so only the notification can make B refuse. Writes that must
happen once (a TOTP code, a recovery code, first-account setup, the app-password cap, the
attempt reservation) hold when concurrent requests alternate between the instances.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.http.helpers import (
    CSRF_COOKIE,
    PASSWORD,
    SESSION_COOKIE,
    Clock,
    MakeClient,
    add_user,
    bearer_auth,
    cookie_header,
    create_token,
    csrf_pair,
    enrol_totp,
    forward_auth,
    login,
    password_step,
    services,
    signed_in,
    submit_code,
    submit_token_form,
    totp_code,
)

Client = TestClient[Any, Any]
SETTINGS = {"session": {"cache_ttl": "60s"}}


@pytest.fixture
def storage_engine() -> str:
    return "postgres"


@pytest.fixture
async def pair(make_client: MakeClient) -> tuple[Client, Client]:
    """Instances A and B, each listening for the other's revocations."""
    a = await make_client(SETTINGS)
    b = await make_client(SETTINGS)
    for client in (a, b):
        assert await services(client).store.wait_listening(10.0)  # type: ignore[attr-defined]
    return a, b


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll `check` until it holds; the frozen clock means cache_ttl never expires meanwhile."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.01)


async def refused_on(client: Client, session: str) -> bool:
    """True when forward-auth no longer admits the session (a browser is sent to the login page)."""
    return (await forward_auth(client, session)).status == 302


async def test_logout_on_a_is_refused_on_b(pair: tuple[Client, Client]) -> None:
    """A session B has cached stops working on B once A logs it out."""
    a, b = pair
    await add_user(a)
    session = await signed_in(a)
    assert (await forward_auth(b, session)).status == 200  # now in B's cache
    secret, token = await csrf_pair(a)
    response = await a.post(
        "/auth/logout",
        data={"csrf_token": token},
        headers=cookie_header(**{CSRF_COOKIE: secret, SESSION_COOKIE: session}),
        allow_redirects=False,
    )
    assert response.status == 303
    await eventually(lambda: refused_on(b, session))


async def test_disable_and_sign_out_everywhere_reach_b(pair: tuple[Client, Client]) -> None:
    """An admin disabling a user on A, and "sign out everywhere" on A, end B's cached sessions."""
    a, b = pair
    alice = await add_user(a)
    await add_user(a, "bob")
    first, second = await signed_in(a), await signed_in(a, "bob")
    assert (await forward_auth(b, first)).status == 200
    assert (await forward_auth(b, second)).status == 200

    await services(a).store.set_disabled(alice.id, True)
    await eventually(lambda: refused_on(b, first))

    bob = await services(a).store.get_user_by_name("bob")
    assert bob is not None
    await services(a).sessions.revoke_user(bob.id)
    await eventually(lambda: refused_on(b, second))


async def test_a_password_change_on_a_ends_sessions_on_b(pair: tuple[Client, Client]) -> None:
    """A new password set through A's store (with its sessions ended) is followed by B at once."""
    a, b = pair
    alice = await add_user(a)
    session = await signed_in(a)
    assert (await forward_auth(b, session)).status == 200
    await services(a).store.set_password_hash(alice.id, "new-hash")
    await services(a).store.delete_user_sessions(alice.id)
    await eventually(lambda: refused_on(b, session))


async def test_a_revoked_app_password_stops_on_b(pair: tuple[Client, Client]) -> None:
    """An app password B has cached is refused on B once A revokes it."""
    a, b = pair
    alice = await add_user(a)
    token = await create_token(a, await signed_in(a))
    assert (await forward_auth(b, extra=bearer_auth(token))).status == 200
    [record] = await services(a).store.list_app_passwords(alice.id)
    assert await services(a).store.revoke_app_password(alice.id, record.id, 1.0)

    async def token_refused() -> bool:
        return (await forward_auth(b, extra=bearer_auth(token))).status == 401

    await eventually(token_refused)


async def test_one_totp_code_is_accepted_once_across_instances(
    pair: tuple[Client, Client], clock: Clock
) -> None:
    """The same code submitted at once by pending logins on both instances signs in one of them."""
    a, b = pair
    await add_user(a)
    _session, secret, _codes = await enrol_totp(a, await signed_in(a), clock)
    clock.advance(60)  # a new step, not the one enrolment used
    pendings = [(client, await password_step(client)) for client in (a, b, a, b)]
    code = totp_code(secret, clock())
    responses = await asyncio.gather(*(submit_code(client, code, pending=p) for client, p in pendings))
    signed = [r for r in responses if SESSION_COOKIE in r.cookies and r.cookies[SESSION_COOKIE].value]
    assert len(signed) == 1


async def test_one_recovery_code_is_accepted_once_across_instances(
    pair: tuple[Client, Client], clock: Clock
) -> None:
    """One recovery code sent by eight pending logins at once, alternating instances: one success."""
    a, b = pair
    await add_user(a)
    _session, _secret, codes = await enrol_totp(a, await signed_in(a), clock)
    pendings = [(client, await password_step(client)) for client in (a, b) * 4]
    responses = await asyncio.gather(
        *(submit_code(client, codes[0], pending=p, method="recovery") for client, p in pendings)
    )
    signed = [r for r in responses if SESSION_COOKIE in r.cookies and r.cookies[SESSION_COOKIE].value]
    assert len(signed) == 1


async def test_first_account_setup_happens_once_across_instances(pair: tuple[Client, Client]) -> None:
    """Setup submitted at once on both instances (six forms loaded first) creates exactly one account."""
    a, b = pair
    clients = (a, b) * 3
    # Every form is loaded before any is sent: once an account exists the page redirects away.
    pairs = [await csrf_pair(client, "/auth/setup") for client in clients]

    async def setup(client: Client, name: str, secret: str, token: str) -> int:
        form = {
            "username": name,
            "email": f"{name}@example.com",
            "display_name": name,
            "password": "s3cret-enough",
            "password_confirm": "s3cret-enough",
            "csrf_token": token,
        }
        response = await client.post(
            "/auth/setup", data=form, headers=cookie_header(**{CSRF_COOKIE: secret}), allow_redirects=False
        )
        return response.status

    statuses = await asyncio.gather(
        *(
            setup(client, f"root{i}", *pair_)
            for i, (client, pair_) in enumerate(zip(clients, pairs, strict=True))
        )
    )
    assert statuses.count(303) >= 1
    assert await services(a).store.count_users() == 1


async def test_the_app_password_cap_holds_across_instances(make_client: MakeClient) -> None:
    """Ten creations at once, alternating instances, never exceed app_passwords.max_per_user."""
    settings = {**SETTINGS, "app_passwords": {"max_per_user": 3}}
    a, b = await make_client(settings), await make_client(settings)
    alice = await add_user(a)
    session = await signed_in(a)
    await asyncio.gather(
        *(submit_token_form(client, session, f"t{i}") for i, client in enumerate((a, b) * 5))
    )
    assert len(await services(a).store.list_app_passwords(alice.id)) == 3


async def test_wrong_passwords_across_instances_are_counted_together(pair: tuple[Client, Client]) -> None:
    """Twenty wrong passwords at once, half on each instance, with max_retries 3: three are checked
    and recorded, the rest refused by the ban before argon2 runs; the right password is then refused too."""
    a, b = pair
    await add_user(a)
    await asyncio.gather(*(login(client, "alice", "wrong password") for client in (a, b) * 10))
    failures = await services(b).store.failures_since(username="alice", since=0.0)
    assert len(failures) == 3
    response = await login(b, "alice", PASSWORD)
    assert response.status != 303
