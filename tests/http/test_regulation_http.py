"""Brute-force regulation at the login form, per username and per client address."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.http.helpers import PASSWORD, SESSION_COOKIE, Clock, MakeClient, add_user, login
from tests.pg import both_storage_engines  # noqa: F401 - runs this module on SQLite and PostgreSQL

Client = TestClient[Any, Any]
BAN_MESSAGE = "Too many failed sign-in attempts"
BAN_TIME = 300.0


def from_ip(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def test_failures_ban_the_username_even_with_the_right_password(client: Client) -> None:
    """After max_retries failures the next attempt gets 429 with a clear message, right password or not."""
    await add_user(client)
    for _ in range(3):
        assert (await login(client, password="wrong password")).status == 401

    response = await login(client)

    assert response.status == 429
    assert BAN_MESSAGE in await response.text()
    assert SESSION_COOKIE not in response.cookies


async def test_ban_lifts_after_ban_time(client: Client, clock: Clock) -> None:
    """Once ban_time has passed since the last failure the right password works again."""
    await add_user(client)
    for _ in range(3):
        await login(client, password="wrong password")
    clock.advance(BAN_TIME - 1)
    assert (await login(client)).status == 429

    clock.advance(2)

    assert (await login(client)).status == 303


async def test_failures_spread_wider_than_find_time_do_not_ban(client: Client, clock: Clock) -> None:
    """Failures further apart than find_time never add up to a ban."""
    await add_user(client)
    for _ in range(3):
        await login(client, password="wrong password")
        clock.advance(61)

    assert (await login(client)).status == 303


async def test_success_resets_the_count(client: Client) -> None:
    """A successful login wipes earlier failures of the same username."""
    await add_user(client)
    for _ in range(2):
        await login(client, password="wrong password")
    assert (await login(client)).status == 303

    for _ in range(2):
        await login(client, password="wrong password")

    assert (await login(client)).status == 303


async def test_username_ban_covers_the_email_spelling(client: Client) -> None:
    """Failures counted under the e-mail lock that spelling out, whatever the case."""
    await add_user(client)
    for _ in range(3):
        await login(client, "Alice@Example.com", "wrong password")

    assert (await login(client, "alice@example.com")).status == 429


async def test_failures_from_one_ip_ban_that_ip(client: Client) -> None:
    """Failures with varying usernames from one client address ban that address, not others."""
    await add_user(client)
    attacker = from_ip("203.0.113.7")
    for name in ("root", "admin", "guest"):
        assert (await login(client, name, "guess", headers=attacker)).status == 401

    banned = await login(client, "alice", PASSWORD, headers=attacker)
    elsewhere = await login(client, "alice", PASSWORD, headers=from_ip("198.51.100.9"))

    assert banned.status == 429
    assert BAN_MESSAGE in await banned.text()
    assert elsewhere.status == 303


async def test_forged_x_forwarded_for_from_untrusted_peer_is_ignored(make_client: MakeClient) -> None:
    """An untrusted peer cannot dodge the IP ban by inventing X-Forwarded-For addresses."""
    client = await make_client({"server": {"trusted_proxies": ["10.0.0.0/8"]}})
    await add_user(client)
    for index, name in enumerate(("root", "admin", "guest")):
        await login(client, name, "guess", headers=from_ip(f"203.0.113.{index}"))

    response = await login(client, "alice", PASSWORD, headers=from_ip("198.51.100.1"))

    assert response.status == 429


async def test_regulation_off(make_client: MakeClient) -> None:
    """max_retries: 0 never bans."""
    client = await make_client({"regulation": {"max_retries": 0}})
    await add_user(client)
    for _ in range(10):
        await login(client, password="wrong password")

    assert (await login(client)).status == 303
