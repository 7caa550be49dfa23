"""The store's OpenID Provider rows: codes and refresh tokens used once, atomically; reuse revokes.

Run on both engines (tests/pg.py); on PostgreSQL the concurrent callers use two pools, as two
instances would.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.models import OidcCode, OidcConsent, OidcGrant, OidcToken
from gateway.store.contract import Storage as Store
from tests.pg import MakeStore


@pytest.fixture
async def store(make_store: MakeStore) -> Store:
    return await make_store()


@pytest.fixture
async def other(make_store: MakeStore) -> Store:
    """A second store on the same database: another worker or instance."""
    return await make_store()


async def grant_with_code(store: Store, grant_id: str = "g1") -> OidcGrant:
    user = await store.get_user_by_name("alice") or await store.create_user(
        "alice", "a@example.com", "Alice", (), "x"
    )
    grant = OidcGrant(
        grant_id, "app", user.id, ("openid",), "sess", 10.0, ("pwd",), "one_factor", "n", 10.0, 1e12
    )
    await store.create_oidc_grant(grant, OidcCode(f"code-{grant_id}", grant_id, "https://a/cb", "", 1e12))
    return grant


def first(grant: OidcGrant, _code: object = None) -> list[OidcToken]:
    return rows(grant, 0)


def rows(grant: OidcGrant, n: int = 0) -> list[OidcToken]:
    return [
        OidcToken(f"jti-{grant.id}-{n}", "access", grant.id, 1.0, 1e12),
        OidcToken(f"rt-{grant.id}-{n}", "refresh", grant.id, 1.0, 1e12),
    ]


async def test_a_code_is_used_once_even_when_redeemed_concurrently(store: Store, other: Store) -> None:
    """Twenty concurrent redemptions of one code from two stores: exactly one ok, the others see a reuse."""
    await grant_with_code(store)
    results = await asyncio.gather(
        *(
            (store if i % 2 else other).redeem_oidc_code(
                "code-g1", now=20.0, tokens=lambda g, c, i=i: rows(g, i)
            )
            for i in range(20)
        )
    )
    outcomes = sorted(r[0] for r in results)
    assert outcomes.count("ok") == 1 and outcomes.count("reused") == 19


async def test_code_reuse_revokes_the_grant_and_its_tokens(store: Store) -> None:
    await grant_with_code(store)
    assert (await store.redeem_oidc_code("code-g1", now=20.0, tokens=first))[0] == "ok"
    assert (await store.redeem_oidc_code("code-g1", now=21.0, tokens=first))[0] == "reused"
    found = await store.find_oidc_token("jti-g1-0")
    assert found is not None and found[0].revoked_at == 21.0 and found[1].revoked_at == 21.0


async def test_a_failing_token_factory_leaves_the_code_unused(store: Store) -> None:
    """When the caller refuses (wrong verifier), nothing changes and the code stays usable."""
    await grant_with_code(store)

    def refuse(_grant: OidcGrant, _code: OidcCode) -> list[OidcToken]:
        raise ValueError("wrong verifier")

    with pytest.raises(ValueError):
        await store.redeem_oidc_code("code-g1", now=20.0, tokens=refuse)
    assert (await store.redeem_oidc_code("code-g1", now=20.0, tokens=first))[0] == "ok"


async def test_expired_and_unknown_codes(store: Store) -> None:
    await grant_with_code(store)
    assert (await store.redeem_oidc_code("nope", now=20.0, tokens=first))[0] == "unknown"
    assert (await store.redeem_oidc_code("code-g1", now=2e12, tokens=first))[0] == "expired"


async def test_refresh_rotation_is_atomic_and_reuse_revokes(store: Store) -> None:
    """Concurrent exchanges of one refresh token: one ok; a later reuse revokes the grant."""
    grant = await grant_with_code(store)
    await store.redeem_oidc_code("code-g1", now=20.0, tokens=first)
    results = await asyncio.gather(
        *(
            store.rotate_oidc_refresh_token("rt-g1-0", now=30.0, tokens=lambda g, i=i: rows(g, i + 1))
            for i in range(10)
        )
    )
    outcomes = [r[0] for r in results]
    assert outcomes.count("ok") == 1
    # the winner may be any of the ten on PostgreSQL's pool: look up the tokens it stored
    found = await store.find_oidc_token(f"jti-g1-{outcomes.index('ok') + 1}")
    assert found is not None and found[1].revoked_at is not None  # a reuse happened among the ten
    assert (await store.rotate_oidc_refresh_token("rt-g1-0", now=31.0, tokens=first))[0] == "reused"
    assert grant.id == found[1].id


async def test_consents_and_revoking_them(store: Store) -> None:
    """A consent is stored once per (user, client); deleting it revokes the client's grants."""
    grant = await grant_with_code(store)
    await store.redeem_oidc_code("code-g1", now=20.0, tokens=first)
    await store.put_oidc_consent(OidcConsent(grant.user_id, "app", ("openid", "email"), 5.0))
    await store.put_oidc_consent(OidcConsent(grant.user_id, "app", ("openid", "email", "profile"), 6.0))
    (consent,) = await store.list_oidc_consents(grant.user_id)
    assert consent.scopes == ("email", "openid", "profile") and consent.granted_at == 6.0
    assert await store.delete_oidc_consent(grant.user_id, "app", now=7.0)
    assert await store.get_oidc_consent(grant.user_id, "app") is None
    found = await store.find_oidc_token("rt-g1-0")
    assert found is not None and found[1].revoked_at == 7.0


async def test_pruning_removes_expired_rows(store: Store) -> None:
    await grant_with_code(store)
    assert await store.prune_oidc(2e12) == 2  # the code and the grant
    assert await store.count_oidc_grants(0.0) == {}


async def test_deleting_a_user_deletes_their_grants(store: Store) -> None:
    grant = await grant_with_code(store)
    await store.delete_user(grant.user_id)
    assert await store.count_oidc_grants(0.0) == {}
