"""App passwords over HTTP: the tokens page (shown once, hash only, last use, revoke, limits, CSRF,
re-authentication) and the forward-auth endpoints (Basic/Bearer, levels, cache bound, regulation,
audit rows)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from gateway.accounts import audit
from gateway.factors import app_passwords
from gateway.models import AuditEvent
from portal.web import fmt_time
from tests.http.helpers import (
    CSRF_COOKIE,
    PASSWORD,
    TOKENS_PAGE,
    Clock,
    MakeClient,
    add_user,
    basic_auth,
    bearer_auth,
    create_token,
    csrf_pair,
    enrol_totp,
    forward_auth,
    new_token_in,
    portal_get,
    portal_post,
    services,
    signed_in,
    submit_token_form,
    token_rows,
    with_cookies,
)

Client = TestClient[Any, Any]
REAUTH_AFTER = 120.0
CACHE_TTL = 5.0  # build_config's session.cache_ttl
MAX_PER_USER = 3
CHALLENGE = 'Basic realm="authgate", charset="UTF-8"'
RULES = [
    {"domain": "vault.localhost", "policy": "two_factor"},
    {"domain": "public.localhost", "policy": "bypass"},
    {"domain": "*.localhost", "policy": "one_factor"},
]


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client(
        {
            "access_control": {"default_policy": "deny", "rules": RULES},
            "app_passwords": {"reauth_after": f"{REAUTH_AFTER:g}s", "max_per_user": MAX_PER_USER},
        }
    )


async def tokens_page(client: Client, session: str) -> str:
    response = await portal_get(client, TOKENS_PAGE, session=session)
    assert response.status == 200
    return await response.text()


async def with_token(
    client: Client, authorization: dict[str, str], *, host: str = "cal.localhost", ip: str | None = None
) -> ClientResponse:
    """Ask forward-auth about a request that carries app-password credentials, as a CalDAV client."""
    extra = {**authorization, **({"X-Forwarded-For": ip} if ip else {})}
    return await forward_auth(client, host=host, uri="/dav/", method="PROPFIND", accept="*/*", extra=extra)


async def audit_rows(client: Client, event: str) -> list[AuditEvent]:
    return await services(client).store.list_audit(event=event, limit=1000)


def assert_challenged(response: ClientResponse) -> None:
    assert response.status == 401
    assert response.headers.getall("WWW-Authenticate") == [CHALLENGE]
    assert "Location" not in response.headers


# -- the tokens page -------------------------------------------------------------------------------


async def test_created_token_is_shown_once(client: Client) -> None:
    """The new token appears once in #new-token with a Copy button; a reload lists only its name."""
    await add_user(client)
    session = await signed_in(client)

    created = await submit_token_form(client, session, "Thunderbird on laptop")
    created_text = await created.text()
    token = new_token_in(created_text)
    reloaded = await tokens_page(client, session)

    assert created.status == 200
    assert token is not None and token.startswith("agp_") and len(token) == app_passwords.TOKEN_LENGTH
    assert 'data-copy="new-token"' in created_text
    assert token not in reloaded
    assert token[len(app_passwords.PREFIX) :] not in reloaded
    assert 'id="new-token"' not in reloaded
    assert list(token_rows(reloaded)) == ["Thunderbird on laptop"]


async def test_only_the_hash_is_in_the_database_file(client: Client) -> None:
    """The SQLite files hold the token's peppered hash, never the token or its secret part."""
    await add_user(client)
    token = await create_token(client, await signed_in(client))
    svc = services(client)
    path = Path(svc.config.storage.database_path)

    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT token_id, token_hash FROM app_passwords").fetchall()
    files = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))

    assert rows == [
        (app_passwords.token_id_of(token), app_passwords.hash_token(token, pepper=svc.app_passwords.pepper))
    ]
    assert token.encode() not in files
    assert token[len(app_passwords.PREFIX) + app_passwords.ID_LENGTH :].encode() not in files


async def test_list_shows_last_use_time_and_address_after_the_flush(client: Client, clock: Clock) -> None:
    """After a use and the activity flush, the tokens and devices pages say when and from where."""
    await add_user(client)
    session = await signed_in(client)
    token = await create_token(client, session, "DAVx5")
    clock.advance(60)
    used_at = clock()

    assert (await with_token(client, basic_auth("alice", token), ip="198.51.100.7")).status == 200
    before = await tokens_page(client, session)
    await services(client).app_passwords.flush_use()
    after = await tokens_page(client, session)
    devices = await (await portal_get(client, "/auth/settings/devices", session=session)).text()

    assert "never used" in before
    expected = f"last used {fmt_time(used_at)} from 198.51.100.7"
    assert expected in after
    assert expected in devices
    [stored] = await services(client).store.list_app_passwords(1)
    assert (stored.last_used_at, stored.last_used_ip) == (used_at, "198.51.100.7")


async def test_revoke_ends_the_token_and_writes_an_audit_row(client: Client) -> None:
    """Revoking from the page answers 303, the token then gets 401, and token_revoked is recorded."""
    await add_user(client)
    session = await signed_in(client)
    token = await create_token(client, session, "old phone")
    assert (await with_token(client, bearer_auth(token))).status == 200
    token_pk = token_rows(await tokens_page(client, session))["old phone"]

    response = await portal_post(client, f"{TOKENS_PAGE}/{token_pk}/revoke", {}, session=session)

    assert (response.status, response.headers["Location"]) == (303, f"{TOKENS_PAGE}?revoked=1")
    assert_challenged(await with_token(client, bearer_auth(token)))
    assert token_rows(await tokens_page(client, session)) == {}
    [row] = await audit_rows(client, audit.TOKEN_REVOKED)
    assert (row.actor, row.target, row.detail) == ("alice", "alice", "old phone")


async def test_revoking_another_users_token_is_not_found(client: Client) -> None:
    """bob cannot revoke alice's token by guessing its id: 404, and it keeps working."""
    await add_user(client)
    await add_user(client, "bob")
    token = await create_token(client, await signed_in(client), "alice phone")
    token_pk = token_rows(await tokens_page(client, await signed_in(client)))["alice phone"]

    response = await portal_post(
        client, f"{TOKENS_PAGE}/{token_pk}/revoke", {}, session=await signed_in(client, "bob")
    )

    assert response.status == 404
    assert (await with_token(client, basic_auth("alice", token))).status == 200


async def test_max_per_user_live_tokens(client: Client) -> None:
    """The (max_per_user + 1)th live token is refused with 409; after a revoke one more fits."""
    await add_user(client)
    session = await signed_in(client)
    for n in range(MAX_PER_USER):
        await create_token(client, session, f"token {n}")

    refused = await submit_token_form(client, session, "one too many")
    token_pk = token_rows(await tokens_page(client, session))["token 0"]
    await portal_post(client, f"{TOKENS_PAGE}/{token_pk}/revoke", {}, session=session)
    again = await submit_token_form(client, session, "one too many")

    assert refused.status == 409
    assert new_token_in(await refused.text()) is None
    assert f"At most {MAX_PER_USER} app passwords per user" in await refused.text()
    assert again.status == 200


@pytest.mark.parametrize(
    ("name", "domains", "expiry"),
    [
        ("", "", "0"),
        ("   ", "", "0"),
        ("x" * 65, "", "0"),
        ("bell\x07", "", "0"),
        ("ok", "not a host!", "0"),
        ("ok", "cal..example.com", "0"),
        ("ok", "*.", "0"),
        ("ok", "https://cal.example.com/", "0"),
        ("ok", ",".join(f"h{n}.example.com" for n in range(33)), "0"),
        ("ok", "", "7"),
        ("ok", "", "-1"),
        ("ok", "", "forever"),
    ],
    ids=[
        "empty-name",
        "blank-name",
        "long-name",
        "control-name",
        "bad-domain",
        "empty-label",
        "bare-wildcard",
        "url-as-domain",
        "too-many-domains",
        "expiry-off-list",
        "negative-expiry",
        "word-expiry",
    ],
)
async def test_bad_form_input_is_400(client: Client, name: str, domains: str, expiry: str) -> None:
    """Bad names, domains or expiries answer 400 with the form again and create nothing."""
    await add_user(client)
    session = await signed_in(client)

    response = await submit_token_form(client, session, name, domains=domains, expiry=expiry)

    assert response.status == 400
    text = await response.text()
    assert 'class="error"' in text and new_token_in(text) is None
    assert await services(client).store.list_app_passwords(1) == []
    assert await audit_rows(client, audit.TOKEN_CREATED) == []


async def test_domains_and_expiry_are_stored(client: Client, clock: Clock) -> None:
    """Domains are normalised (lower case, newlines or commas) and 30 days means 30 days from now."""
    await add_user(client)
    await create_token(
        client, await signed_in(client), "cal", domains="Cal.Localhost\n*.dav.localhost", expiry="30"
    )

    [stored] = await services(client).store.list_app_passwords(1)
    [row] = await audit_rows(client, audit.TOKEN_CREATED)

    assert stored.domains == ("cal.localhost", "*.dav.localhost")
    assert stored.expires_at == clock() + 30 * 86400
    assert (row.actor, row.target, row.detail) == ("alice", "alice", "cal for cal.localhost, *.dav.localhost")


async def test_create_and_revoke_without_csrf_token_are_403(client: Client) -> None:
    """Without the form's CSRF token nothing is created and nothing is revoked."""
    await add_user(client)
    session = await signed_in(client)
    token = await create_token(client, session, "keep")
    token_pk = token_rows(await tokens_page(client, session))["keep"]
    secret, _form_token = await csrf_pair(client)
    cookies = with_cookies(session, **{CSRF_COOKIE: secret})

    create = await client.post(
        TOKENS_PAGE, data={"name": "sneaky", "expiry": "0"}, headers=cookies, allow_redirects=False
    )
    revoke = await client.post(
        f"{TOKENS_PAGE}/{token_pk}/revoke", data={}, headers=cookies, allow_redirects=False
    )

    assert create.status == 403 and new_token_in(await create.text()) is None
    assert revoke.status == 403
    assert list(token_rows(await tokens_page(client, session))) == ["keep"]
    assert (await with_token(client, basic_auth("alice", token))).status == 200


async def test_stale_session_must_reauthenticate_before_creating(client: Client, clock: Clock) -> None:
    """After reauth_after the form sends the browser to /reauth; after the password it works."""
    await add_user(client)
    session = await signed_in(client)
    clock.advance(REAUTH_AFTER + 1)
    assert (await portal_get(client, TOKENS_PAGE, session=session)).status == 200  # the list is fine

    stale = await submit_token_form(client, session, "late")
    back = "http://localhost:8080/auth/settings/tokens"
    reauth = await portal_post(client, "/auth/reauth", {"password": PASSWORD, "rd": back}, session=session)
    token = await create_token(client, session, "late")

    assert stale.status == 303
    assert stale.headers["Location"].startswith("/auth/reauth?rd=")
    assert "settings%2Ftokens" in stale.headers["Location"]
    assert (reauth.status, reauth.headers["Location"]) == (303, back)
    assert (await with_token(client, basic_auth("alice", token))).status == 200
    assert len(await audit_rows(client, audit.TOKEN_CREATED)) == 1


async def test_tokens_page_needs_a_session(client: Client) -> None:
    """Anonymous visitors are sent to the login page and cannot create tokens."""
    await add_user(client)
    page = await portal_get(client, TOKENS_PAGE)
    create = await portal_post(client, TOKENS_PAGE, {"name": "x", "expiry": "0"})

    assert (page.status, page.headers["Location"]) == (303, "/auth/login")
    assert (create.status, create.headers["Location"]) == (303, "/auth/login")
    assert await services(client).store.list_app_passwords(1) == []


# -- forward-auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["basic-username", "basic-email", "bearer"])
async def test_token_yields_the_identity_headers(client: Client, scheme: str) -> None:
    """Basic (user name or e-mail) and Bearer answer 200 with the session's identity headers."""
    await add_user(client, groups=("dev", "ops"))
    session = await signed_in(client)
    token = await create_token(client, session)
    authorization = {
        "basic-username": basic_auth("alice", token),
        "basic-email": basic_auth("ALICE@example.com", token),
        "bearer": bearer_auth(token),
    }[scheme]

    response = await with_token(client, authorization)
    browser = await forward_auth(client, session, host="cal.localhost")

    assert response.status == 200
    identity = ("Remote-User", "Remote-Email", "Remote-Groups", "Remote-Name")
    assert [response.headers[h] for h in identity] == ["alice", "alice@example.com", "dev,ops", "Alice"]
    assert [response.headers[h] for h in identity] == [browser.headers[h] for h in identity]


async def test_nginx_endpoint_accepts_tokens_too(client: Client) -> None:
    """/api/authz/auth-request answers a token like forward-auth: 200, or 401 with the challenge."""
    await add_user(client)
    token = await create_token(client, await signed_in(client))

    async def ask(authorization: dict[str, str]) -> ClientResponse:
        headers = {"X-Original-URL": "http://cal.localhost/dav/", "X-Original-Method": "PROPFIND"}
        return await client.get(
            "/api/authz/auth-request", headers={**headers, **authorization}, allow_redirects=False
        )

    good = await ask(basic_auth("alice", token))
    wrong = await ask(basic_auth("alice", "agp_" + "0" * 48))

    assert (good.status, good.headers["Remote-User"]) == (200, "alice")
    assert_challenged(wrong)


@pytest.mark.parametrize(
    "authorization",
    [
        basic_auth("alice", "agp_" + "A" * 48),
        bearer_auth("agp_" + "A" * 48),
        basic_auth("alice", PASSWORD),
        bearer_auth(PASSWORD.replace(" ", "")),
        {"Authorization": "Basic !!!"},
    ],
    ids=["unknown-basic", "unknown-bearer", "account-password", "password-as-bearer", "malformed"],
)
async def test_wrong_credentials_get_401_with_challenge(
    client: Client, authorization: dict[str, str]
) -> None:
    """Unknown tokens, the account password and malformed credentials get 401 + WWW-Authenticate."""
    await add_user(client)

    response = await with_token(client, authorization)

    assert_challenged(response)


async def test_token_of_another_user_is_refused(client: Client) -> None:
    """alice's token sent as bob over Basic is wrong credentials, not bob's access."""
    await add_user(client)
    await add_user(client, "bob")
    token = await create_token(client, await signed_in(client))

    assert_challenged(await with_token(client, basic_auth("bob", token)))


async def test_account_password_is_refused_on_two_factor_rule(client: Client) -> None:
    """The real password over Basic gets 401 on a two_factor rule, as on every other rule."""
    await add_user(client)

    assert_challenged(await with_token(client, basic_auth("alice", PASSWORD), host="vault.localhost"))


async def test_password_only_token_does_not_satisfy_two_factor(client: Client) -> None:
    """A token made in a password-only session is one_factor: 403 on vault, 200 elsewhere."""
    await add_user(client)
    token = await create_token(client, await signed_in(client))

    vault = await with_token(client, basic_auth("alice", token), host="vault.localhost")
    cal = await with_token(client, basic_auth("alice", token))

    assert vault.status == 403
    assert "WWW-Authenticate" not in vault.headers
    assert cal.status == 200


async def test_two_factor_token_satisfies_two_factor(client: Client, clock: Clock) -> None:
    """A token made in a two-factor session (after TOTP enrolment) opens the two_factor rule."""
    await add_user(client)
    session, _secret, _codes = await enrol_totp(client, await signed_in(client), clock)
    token = await create_token(client, session)

    response = await with_token(client, basic_auth("alice", token), host="vault.localhost")

    assert (response.status, response.headers["Remote-User"]) == (200, "alice")


async def test_configured_level_one_factor_caps_old_tokens(make_client: MakeClient, clock: Clock) -> None:
    """With app_passwords.level one_factor even a token made in a two-factor session gets 403 on vault."""
    client = await make_client(
        {
            "access_control": {"default_policy": "deny", "rules": RULES},
            "app_passwords": {"level": "one_factor"},
        }
    )
    await add_user(client)
    session, _secret, _codes = await enrol_totp(client, await signed_in(client), clock)
    token = await create_token(client, session)

    assert (await with_token(client, basic_auth("alice", token), host="vault.localhost")).status == 403
    assert (await with_token(client, basic_auth("alice", token))).status == 200


async def test_domain_limited_token_is_403_on_another_host(client: Client) -> None:
    """A token limited to cal.localhost works there and on nothing else (403, not a failure)."""
    await add_user(client)
    token = await create_token(client, await signed_in(client), domains="cal.localhost")

    cal = await with_token(client, basic_auth("alice", token), host="cal.localhost")
    other = await with_token(client, basic_auth("alice", token), host="mail.localhost")

    assert cal.status == 200
    assert other.status == 403
    assert await audit_rows(client, audit.TOKEN_FAILED) == []


async def test_expired_token_is_refused(client: Client, clock: Clock) -> None:
    """A 30-day token works on day 29 and gets 401 after day 30, even from the cache."""
    await add_user(client)
    token = await create_token(client, await signed_in(client), expiry="30")
    clock.advance(29 * 86400)
    assert (await with_token(client, bearer_auth(token))).status == 200

    clock.advance(86400)

    assert_challenged(await with_token(client, bearer_auth(token)))


async def test_checks_are_cached_between_requests(client: Client) -> None:
    """A second request with the same token reads nothing from storage."""
    await add_user(client)
    token = await create_token(client, await signed_in(client))
    store = services(client).store
    assert (await with_token(client, basic_auth("alice", token))).status == 200

    before = store.statement_count
    for _ in range(5):
        assert (await with_token(client, basic_auth("alice", token))).status == 200

    assert store.statement_count == before


async def test_revocation_elsewhere_takes_effect_within_cache_ttl(client: Client, clock: Clock) -> None:
    """Revoked by another worker (straight in storage), a cached token works until cache_ttl, then 401."""
    await add_user(client)
    token = await create_token(client, await signed_in(client), "elsewhere")
    svc = services(client)
    assert (await with_token(client, basic_auth("alice", token))).status == 200
    [stored] = await svc.store.list_app_passwords(1)

    assert await svc.store.revoke_app_password(1, stored.id, clock())
    still_cached = await with_token(client, basic_auth("alice", token))
    clock.advance(CACHE_TTL)
    after_bound = await with_token(client, basic_auth("alice", token))

    assert still_cached.status == 200
    assert_challenged(after_bound)


async def test_wrong_tokens_count_toward_regulation(client: Client, clock: Clock) -> None:
    """After max_retries wrong tokens from an address even the right one gets 401 there until ban_time."""
    await add_user(client)
    token = await create_token(client, await signed_in(client))
    attacker, elsewhere = "203.0.113.9", "198.51.100.7"
    max_retries, ban_time = 3, 300  # build_config's regulation

    for n in range(max_retries):
        assert_challenged(await with_token(client, bearer_auth(f"agp_{n:048d}"), ip=attacker))
    banned = await with_token(client, basic_auth("alice", token), ip=attacker)
    other_address = await with_token(client, basic_auth("alice", token), ip=elsewhere)
    clock.advance(ban_time - 10)
    still_banned = await with_token(client, bearer_auth(token), ip=attacker)
    clock.advance(11)
    after_ban = await with_token(client, bearer_auth(token), ip=attacker)

    assert_challenged(banned)
    assert other_address.status == 200
    assert_challenged(still_banned)
    assert after_ban.status == 200


async def test_failures_are_audited(client: Client) -> None:
    """Every wrong token is one token_failed row with the user name it claimed and the address."""
    await add_user(client)

    await with_token(client, basic_auth("alice", "agp_" + "B" * 48), ip="203.0.113.9")
    await with_token(client, bearer_auth("agp_" + "C" * 48), ip="203.0.113.9")

    rows = sorted(await audit_rows(client, audit.TOKEN_FAILED), key=lambda r: r.id)
    assert [(r.actor, r.target, r.ip) for r in rows] == [
        (None, "alice", "203.0.113.9"),
        (None, None, "203.0.113.9"),
    ]
    assert all(r.detail for r in rows)


async def test_disabled_account_token_stops_working(client: Client) -> None:
    """Disabling the account ends its tokens (after the cache bound at most)."""
    await add_user(client)
    token = await create_token(client, await signed_in(client))
    svc = services(client)

    await svc.store.set_disabled(1, True)
    svc.app_passwords.evict_user(1)

    assert_challenged(await with_token(client, bearer_auth(token)))
