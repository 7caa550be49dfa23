"""External sign-in on both storage engines: linking, signing in through the link, auto-create.

The full matrix (tests/http/test_external_login.py) runs on SQLite; these flows, which write and
read the link table, run on PostgreSQL too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from gateway.accounts import audit
from tests.external.providers import oidc_provider, put_oidc_user
from tests.http.helpers import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    MakeClient,
    add_user,
    cookie_header,
    csrf_pair,
    forward_auth,
    services,
)
from tests.http.test_external_login import LINK_COOKIE, sign_in_with, verified, with_provider
from tests.pg import both_storage_engines  # noqa: F401 - runs this module on SQLite and PostgreSQL


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with oidc_provider(tmp_path_factory.mktemp("oidc-engines")) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def test_link_then_sign_in_through_the_link(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession, storage_engine: str
) -> None:
    """alice confirms the link with her password; the next sign-in uses it directly."""
    client = await make_client(with_provider(issuer))
    alice = await add_user(client)
    put_oidc_user(issuer, f"sub-{storage_engine}", verified("alice@example.com"))
    first = await sign_in_with(client, http, f"sub-{storage_engine}")
    assert first.headers["Location"] == "/auth/login/external/link"
    secret, token = await csrf_pair(client)
    confirmed = await client.post(
        "/auth/login/external/link",
        data={"csrf_token": token, "password": "correct horse battery"},
        headers=cookie_header(**{LINK_COOKIE: first.cookies[LINK_COOKIE].value, CSRF_COOKIE: secret}),
        allow_redirects=False,
    )
    assert confirmed.status == 303, await confirmed.text()
    again = await sign_in_with(client, http, f"sub-{storage_engine}")
    assert again.status == 303
    assert (await forward_auth(client, again.cookies[SESSION_COOKIE].value)).status == 200
    [link] = await services(client).store.list_external_links(alice.id)
    assert link.last_used_at is not None
    assert len(await services(client).store.list_audit(event=audit.EXTERNAL_LOGIN_SUCCEEDED)) == 2


async def test_auto_create_on_both_engines(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession, storage_engine: str
) -> None:
    """auto_create makes a unique, password-less account and links it, on either engine."""
    client = await make_client(with_provider(issuer, auto_create=True))
    await add_user(client, "grace", email="grace@elsewhere.example.com")
    put_oidc_user(
        issuer,
        f"g-{storage_engine}",
        verified(f"grace.{storage_engine}@example.com", preferred_username="grace"),
    )
    response = await sign_in_with(client, http, f"g-{storage_engine}")
    assert response.status == 303, await response.text()
    created = await services(client).store.get_user_by_name("grace-2")
    assert created is not None
    assert await services(client).store.find_external_link("mock", f"g-{storage_engine}") is not None
