"""authgate as an OpenID Provider, through aiohttp's test client: every endpoint and the hostile cases."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.accounts import audit
from tests.http.helpers import (
    PASSWORD,
    Clock,
    MakeClient,
    add_totp_device,
    add_user,
    password_step,
    portal_get,
    portal_post,
    services,
    signed_in,
    submit_code,
    totp_code,
    with_cookies,
)
from tests.http.oidc_helpers import (
    APP,
    ISSUER,
    SECRET,
    SPA,
    VAULT,
    authorize,
    authorize_path,
    basic,
    code_for,
    exchange,
    oidc_clients,
    pkce_pair,
    query_of,
    token_request,
    verify,
)


@pytest.fixture
async def op(make_client: MakeClient) -> TestClient[Any, Any]:
    client = await make_client(oidc_clients())
    await add_user(client, "alice", groups=("dev", "ops"), name="Alice Liddell")
    return client


async def tokens_for(op: TestClient[Any, Any], session: str, **params: str) -> dict[str, Any]:
    code, _ = await code_for(op, session, **params)
    response = await exchange(op, code)
    assert response.status == 200, await response.text()
    return dict(await response.json())


# -- discovery and keys -------------------------------------------------------------------------


async def test_discovery_document(op: TestClient[Any, Any]) -> None:
    """The metadata names every endpoint under the issuer, S256 only, RS256 and ES256."""
    response = await op.get("/auth/.well-known/openid-configuration")
    assert response.status == 200
    doc = await response.json()
    assert doc["issuer"] == ISSUER
    for key, path in (
        ("authorization_endpoint", "/api/oidc/authorization"),
        ("token_endpoint", "/api/oidc/token"),
        ("userinfo_endpoint", "/api/oidc/userinfo"),
        ("jwks_uri", "/jwks.json"),
        ("revocation_endpoint", "/api/oidc/revocation"),
        ("introspection_endpoint", "/api/oidc/introspection"),
        ("end_session_endpoint", "/api/oidc/logout"),
    ):
        assert doc[key] == ISSUER + path
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
    assert doc["response_types_supported"] == ["code"]


async def test_the_provider_is_off_without_clients(make_client: MakeClient) -> None:
    """No clients, no endpoints."""
    client = await make_client()
    assert (await client.get("/auth/.well-known/openid-configuration")).status == 404
    assert (await client.get("/auth/api/oidc/authorization")).status == 404


# -- the code flow ---------------------------------------------------------------------------------


async def test_code_flow_with_consent_and_tokens_verified_against_the_jwks(op: TestClient[Any, Any]) -> None:
    """Sign in, consent, exchange the code; both tokens verify with joserfc against the JWKS."""
    session = await signed_in(op)
    code, query = await code_for(op, session, state="xyz-state", nonce="the-nonce")
    assert query["state"] == "xyz-state" and query["iss"] == ISSUER
    response = await exchange(op, code)
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "openid profile email groups"
    assert "refresh_token" not in body  # offline_access was not asked for
    claims = await verify(op, body["id_token"])
    assert claims["iss"] == ISSUER and claims["aud"] == "grafana" and claims["azp"] == "grafana"
    assert claims["nonce"] == "the-nonce"
    assert claims["amr"] == ["pwd"] and claims["acr"] == "one_factor"
    assert claims["preferred_username"] == "alice" and claims["groups"] == ["dev", "ops"]
    assert claims["email"] == "alice@example.com" and claims["name"] == "Alice Liddell"
    access = await verify(op, body["access_token"])
    assert access["sub"] == claims["sub"] and access["client_id"] == "grafana" and access["jti"]
    userinfo = await op.get(
        "/auth/api/oidc/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert userinfo.status == 200
    info = await userinfo.json()
    assert info["sub"] == claims["sub"] and info["email"] == "alice@example.com"
    events = [e.event for e in await services(op).store.list_audit()]
    assert audit.OIDC_CONSENT_GRANTED in events and audit.OIDC_TOKENS_ISSUED in events


async def test_consent_is_remembered_per_client_and_scope_set(op: TestClient[Any, Any]) -> None:
    """The second request for the same scopes skips the page; a new scope or prompt=consent shows it."""
    session = await signed_in(op)
    await code_for(op, session)
    again = await op.get(authorize_path(), headers=with_cookies(session), allow_redirects=False)
    assert again.status == 302 and "code=" in again.headers["Location"]
    wider = await op.get(
        authorize_path(scope="openid offline_access"), headers=with_cookies(session), allow_redirects=False
    )
    assert wider.status == 200 and "oidc-consent" in await wider.text()
    asked = await op.get(
        authorize_path(prompt="consent"), headers=with_cookies(session), allow_redirects=False
    )
    assert asked.status == 200 and "oidc-consent" in await asked.text()


async def test_denying_consent_returns_access_denied(op: TestClient[Any, Any]) -> None:
    """Deny sends the app error=access_denied with its state."""
    session = await signed_in(op)
    response = await authorize(op, session, allow=False, state="s1")
    assert response.status == 302
    query = query_of(response.headers["Location"])
    assert query["error"] == "access_denied" and query["state"] == "s1"


async def test_implicit_consent_client_skips_the_page_and_signs_es256(
    op: TestClient[Any, Any], clock: Clock
) -> None:
    """A trusted two-factor client (consent: implicit) gets its code at once; its ID token is ES256."""
    user = await services(op).store.get_user_by_name("alice")
    assert user is not None
    secret = await add_totp_device(op, user)
    pending = await password_step(op)
    done = await submit_code(op, totp_code(secret, clock()), pending=pending)
    session = done.cookies["authgate_session"].value
    response = await op.get(
        authorize_path(client_id="vault", redirect_uri=VAULT),
        headers=with_cookies(session),
        allow_redirects=False,
    )
    assert response.status == 302 and response.headers["Location"].startswith(VAULT + "?code=")
    code = query_of(response.headers["Location"])["code"]
    token = await op.post(
        "/auth/api/oidc/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": VAULT,
            "client_id": "vault",
            "client_secret": SECRET,
        },
    )
    body = await token.json()
    claims = await verify(op, body["id_token"], alg="ES256")
    assert claims["amr"] == ["pwd", "otp", "mfa"] and claims["acr"] == "two_factor"


async def test_a_two_factor_client_steps_up_a_password_session(op: TestClient[Any, Any]) -> None:
    """authorization_policy two_factor with a password-only session: the browser goes to /2fa."""
    await add_user(op, "bob")
    session = await signed_in(op, "bob")
    response = await op.get(
        authorize_path(client_id="vault", redirect_uri=VAULT),
        headers=with_cookies(session),
        allow_redirects=False,
    )
    assert response.status == 302 and response.headers["Location"].startswith("/auth/2fa?rd=")


async def test_not_signed_in_goes_to_the_login_page_and_back(op: TestClient[Any, Any]) -> None:
    """Without a session the browser goes to /login with rd = the authorization request."""
    response = await op.get(authorize_path(state="abc"), allow_redirects=False)
    assert response.status == 302
    location = response.headers["Location"]
    assert location.startswith("/auth/login?rd=")
    rd = query_of(location)["rd"]
    assert rd.startswith(ISSUER + "/api/oidc/authorization?") and "state=abc" in rd


async def test_prompt_none_without_a_session(op: TestClient[Any, Any]) -> None:
    """prompt=none never shows a page: login_required goes back to the app."""
    response = await op.get(authorize_path(prompt="none", state="q"), allow_redirects=False)
    query = query_of(response.headers["Location"])
    assert response.headers["Location"].startswith(APP)
    assert query["error"] == "login_required" and query["state"] == "q"


async def test_prompt_none_without_consent(op: TestClient[Any, Any]) -> None:
    """prompt=none with a session but no consent yet: consent_required."""
    session = await signed_in(op)
    response = await op.get(
        authorize_path(prompt="none"), headers=with_cookies(session), allow_redirects=False
    )
    assert query_of(response.headers["Location"])["error"] == "consent_required"


async def test_prompt_login_and_max_age_ask_to_sign_in_again(op: TestClient[Any, Any], clock: Clock) -> None:
    """prompt=login, or a sign-in older than max_age, goes to /reauth (prompt=login dropped)."""
    session = await signed_in(op)
    response = await op.get(
        authorize_path(prompt="login"), headers=with_cookies(session), allow_redirects=False
    )
    assert response.headers["Location"].startswith("/auth/reauth?rd=")
    assert "prompt" not in query_of(query_of(response.headers["Location"])["rd"])
    clock.advance(120)
    old = await op.get(authorize_path(max_age="60"), headers=with_cookies(session), allow_redirects=False)
    assert old.headers["Location"].startswith("/auth/reauth?rd=")
    fresh = await op.get(authorize_path(max_age="600"), headers=with_cookies(session), allow_redirects=False)
    assert fresh.status == 200  # the consent page: the sign-in is recent enough


async def test_max_age_zero_reauthenticates_once(op: TestClient[Any, Any], clock: Clock) -> None:
    """max_age=0 sends the user to /reauth; confirming the password comes back to a consent page."""
    session = await signed_in(op)
    clock.advance(1)
    first = await op.get(authorize_path(max_age="0"), headers=with_cookies(session), allow_redirects=False)
    assert first.headers["Location"].startswith("/auth/reauth?rd=")
    rd = query_of(first.headers["Location"])["rd"]
    assert "max_age" not in query_of(rd)
    confirmed = await portal_post(op, "/auth/reauth", {"password": PASSWORD, "rd": rd}, session=session)
    assert confirmed.status == 303 and confirmed.headers["Location"] == rd
    clock.advance(1)  # even a second later the fresh sign-in is not asked for again
    back = await op.get(
        rd.removeprefix("http://localhost:8080"), headers=with_cookies(session), allow_redirects=False
    )
    assert back.status == 200 and "oidc-consent" in await back.text()


async def test_step_up_with_totp_gives_two_factor_acr_and_amr(op: TestClient[Any, Any], clock: Clock) -> None:
    """acr_values=two_factor on a password session: /2fa, then back with amr pwd+otp and acr two_factor."""
    user = await services(op).store.get_user_by_name("alice")
    assert user is not None
    session = await signed_in(op)  # level one (password only), then a TOTP device is added
    secret = await add_totp_device(op, user)
    path = authorize_path(acr_values="two_factor", state="up")
    response = await op.get(path, headers=with_cookies(session), allow_redirects=False)
    assert response.headers["Location"].startswith("/auth/2fa?rd=")
    rd = query_of(response.headers["Location"])["rd"]
    step = await submit_code(op, totp_code(secret, clock()), session=session, rd=rd)
    assert step.status == 303 and step.headers["Location"] == rd
    strong = step.cookies["authgate_session"].value
    code, _ = await code_for(op, strong, acr_values="two_factor")
    body = await (await exchange(op, code)).json()
    claims = await verify(op, body["id_token"])
    assert claims["acr"] == "two_factor"
    assert claims["amr"] == ["pwd", "otp", "mfa"]


# -- hostile authorization requests -------------------------------------------------------------


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://grafana.example.com/login/generic_oauth/extra",  # extra path
        "https://grafana.example.com/login/generic",  # a prefix
        "https://GRAFANA.example.com/login/generic_oauth",  # different case
        "https://grafana.example.com/login/Generic_oauth",
        "https://grafana.example.com/login/generic_oauth#frag",  # a fragment
        "https://grafana.example.com/login/generic_oauth/",  # trailing slash
        "https://grafana.example.com:443/login/generic_oauth",  # explicit default port
        "https://grafana.example.com/login/generic_oauth?x=1",  # extra query
        "https://evil.example/login/generic_oauth",
        "",
    ],
)
async def test_redirect_uri_must_match_exactly(op: TestClient[Any, Any], redirect_uri: str) -> None:
    """Any difference from the registered URI is refused on a page of ours, never redirected."""
    session = await signed_in(op)
    response = await op.get(
        authorize_path(redirect_uri=redirect_uri), headers=with_cookies(session), allow_redirects=False
    )
    assert response.status == 400
    assert "Location" not in response.headers
    assert "redirect_uri" in await response.text()


async def test_unknown_client_is_refused_on_a_page(op: TestClient[Any, Any]) -> None:
    """An unknown client_id: no redirect anywhere."""
    response = await op.get(authorize_path(client_id="nobody"), allow_redirects=False)
    assert response.status == 400 and "Location" not in response.headers


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": "code id_token"}, "unsupported_response_type"),
        ({"scope": "profile email"}, "invalid_scope"),
        ({"code_challenge": "x" * 43, "code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "x" * 43}, "invalid_request"),  # no method means plain
        ({"code_challenge": "short", "code_challenge_method": "S256"}, "invalid_request"),
        ({"code_challenge_method": "S256"}, "invalid_request"),
        ({"prompt": "none login"}, "invalid_request"),
        ({"prompt": "everything"}, "invalid_request"),
        ({"max_age": "-1"}, "invalid_request"),
        ({"state": "s" * 5000}, "invalid_request"),
        ({"request": "eyJhbGciOiJub25lIn0.e30."}, "request_not_supported"),
        ({"response_mode": "fragment"}, "invalid_request"),
    ],
)
async def test_bad_requests_go_back_to_the_app_as_errors(
    op: TestClient[Any, Any], params: dict[str, str], error: str
) -> None:
    """Once client and redirect URI check out, a bad request is an error redirect to the app."""
    session = await signed_in(op)
    response = await op.get(authorize_path(**params), headers=with_cookies(session), allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"].startswith(APP + "?")
    assert query_of(response.headers["Location"])["error"] == error


async def test_a_repeated_parameter_is_refused(op: TestClient[Any, Any]) -> None:
    """Two state parameters: invalid_request (RFC 6749 3.1)."""
    session = await signed_in(op)
    response = await op.get(
        authorize_path() + "&state=second", headers=with_cookies(session), allow_redirects=False
    )
    assert query_of(response.headers["Location"])["error"] == "invalid_request"


async def test_a_public_client_must_use_pkce(op: TestClient[Any, Any]) -> None:
    """The public client without code_challenge: invalid_request back to it."""
    session = await signed_in(op)
    response = await op.get(
        authorize_path(client_id="spa", redirect_uri=SPA),
        headers=with_cookies(session),
        allow_redirects=False,
    )
    assert query_of(response.headers["Location"])["error"] == "invalid_request"


# -- the token endpoint ---------------------------------------------------------------------------


async def test_public_client_with_pkce(op: TestClient[Any, Any]) -> None:
    """Public client: no secret, the right verifier gets tokens; a wrong or missing one does not."""
    session = await signed_in(op)
    verifier, challenge = pkce_pair()
    code, _ = await code_for(
        op, session, client_id="spa", redirect_uri=SPA, code_challenge=challenge, code_challenge_method="S256"
    )
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": SPA, "client_id": "spa"}
    for wrong in ({}, {"code_verifier": pkce_pair()[0]}, {"code_verifier": "short"}):
        response = await token_request(op, {**form, **wrong}, headers={})
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_grant"
    # the wrong attempts did not burn the code
    response = await token_request(op, {**form, "code_verifier": verifier}, headers={})
    assert response.status == 200, await response.text()


async def test_a_verifier_for_a_code_without_challenge_is_refused(op: TestClient[Any, Any]) -> None:
    """A code_verifier on a code issued without PKCE means an injected code: invalid_grant."""
    session = await signed_in(op)
    code, _ = await code_for(op, session)
    response = await exchange(op, code, code_verifier=pkce_pair()[0])
    assert (await response.json())["error"] == "invalid_grant"


async def test_code_reuse_revokes_the_grant_and_its_tokens(op: TestClient[Any, Any]) -> None:
    """The second use of a code fails and revokes what the first use issued."""
    session = await signed_in(op)
    code, _ = await code_for(op, session, scope="openid offline_access")
    first = await (await exchange(op, code)).json()
    second = await exchange(op, code)
    assert second.status == 400 and (await second.json())["error"] == "invalid_grant"
    userinfo = await op.get(
        "/auth/api/oidc/userinfo", headers={"Authorization": f"Bearer {first['access_token']}"}
    )
    assert userinfo.status == 401
    refresh = await token_request(
        op, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    )
    assert (await refresh.json())["error"] == "invalid_grant"
    events = [e.event for e in await services(op).store.list_audit()]
    assert audit.OIDC_GRANT_REVOKED in events


async def test_code_is_bound_to_client_and_redirect_uri(op: TestClient[Any, Any]) -> None:
    """Another client, or another redirect_uri, cannot redeem the code."""
    session = await signed_in(op)
    code, _ = await code_for(op, session)
    wrong_uri = await exchange(op, code, redirect_uri=APP + "/x")
    assert (await wrong_uri.json())["error"] == "invalid_grant"
    other = await op.post(
        "/auth/api/oidc/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": APP,
            "client_id": "vault",
            "client_secret": SECRET,
        },
    )
    assert (await other.json())["error"] == "invalid_grant"
    assert (await exchange(op, code)).status == 200


async def test_an_expired_code(op: TestClient[Any, Any], clock: Clock) -> None:
    """A code older than authorization_code_lifespan (1m) is refused."""
    session = await signed_in(op)
    code, _ = await code_for(op, session)
    clock.advance(61)
    assert (await (await exchange(op, code)).json())["error"] == "invalid_grant"


async def test_refresh_token_rotation_and_reuse_detection(op: TestClient[Any, Any]) -> None:
    """Each refresh gives a new refresh token; using an old one revokes the whole grant."""
    session = await signed_in(op)
    body = await tokens_for(op, session, scope="openid offline_access profile")
    first_refresh = body["refresh_token"]
    rotated = await token_request(op, {"grant_type": "refresh_token", "refresh_token": first_refresh})
    assert rotated.status == 200
    second = await rotated.json()
    assert second["refresh_token"] != first_refresh
    claims = await verify(op, second["id_token"])
    assert claims["preferred_username"] == "alice"
    assert "nonce" not in claims  # a refreshed ID token answers no authorization request
    reused = await token_request(op, {"grant_type": "refresh_token", "refresh_token": first_refresh})
    assert reused.status == 400 and (await reused.json())["error"] == "invalid_grant"
    # the thief's reuse took the owner's newer tokens with it
    newest = await token_request(
        op, {"grant_type": "refresh_token", "refresh_token": second["refresh_token"]}
    )
    assert (await newest.json())["error"] == "invalid_grant"
    info = await op.get(
        "/auth/api/oidc/userinfo", headers={"Authorization": f"Bearer {second['access_token']}"}
    )
    assert info.status == 401


async def test_refresh_cannot_widen_scopes(op: TestClient[Any, Any]) -> None:
    """A refresh may narrow the scope of the new access token, never widen it."""
    session = await signed_in(op)
    body = await tokens_for(op, session, scope="openid offline_access")
    wider = await token_request(
        op, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "scope": "openid email"}
    )
    assert (await wider.json())["error"] == "invalid_scope"


async def test_client_authentication_failures(op: TestClient[Any, Any]) -> None:
    """Wrong secret, unknown client, wrong method, no credentials: invalid_client with 401."""
    cases = [
        basic("grafana", "wrong-secret"),
        basic("nobody", SECRET),
        {"Authorization": "Bearer abc"},
        {"Authorization": "Basic !!!"},
        {},
    ]
    for headers in cases:
        response = await token_request(
            op, {"grant_type": "authorization_code", "code": "x", "redirect_uri": APP}, headers
        )
        assert response.status == 401, headers
        assert (await response.json())["error"] == "invalid_client"
    post = await op.post(
        "/auth/api/oidc/token",
        data={
            "grant_type": "authorization_code",
            "code": "x",
            "redirect_uri": APP,
            "client_id": "grafana",
            "client_secret": SECRET,
        },
    )
    assert post.status == 401  # grafana is registered for client_secret_basic


async def test_client_secret_brute_force_is_counted_by_regulation(op: TestClient[Any, Any]) -> None:
    """After max_retries (3) wrong secrets even the right one is refused (429) until the ban ends."""
    form = {"grant_type": "authorization_code", "code": "x", "redirect_uri": APP}
    for _ in range(3):
        assert (await token_request(op, form, basic("grafana", "guess"))).status == 401
    banned = await token_request(op, form, basic("grafana", SECRET))
    assert banned.status == 429 and "Retry-After" in banned.headers
    failures = [e for e in await services(op).store.list_audit() if e.event == audit.OIDC_CLIENT_AUTH_FAILED]
    assert len(failures) == 3 and all(SECRET not in e.detail and "guess" not in e.detail for e in failures)


async def test_wrong_secrets_from_elsewhere_do_not_lock_the_app_out(op: TestClient[Any, Any]) -> None:
    """The ban is per client and address: the attacker's address is refused, the app's is not."""
    form = {"grant_type": "authorization_code", "code": "x", "redirect_uri": APP}
    attacker = {"X-Forwarded-For": "203.0.113.9"}
    app_server = {"X-Forwarded-For": "198.51.100.7"}
    for _ in range(3):
        assert (await token_request(op, form, {**basic("grafana", "guess"), **attacker})).status == 401
    assert (await token_request(op, form, {**basic(), **attacker})).status == 429
    from_the_app = await token_request(op, form, {**basic(), **app_server})
    assert from_the_app.status == 400 and (await from_the_app.json())["error"] == "invalid_grant"


async def test_the_token_endpoint_refuses_bad_forms(op: TestClient[Any, Any]) -> None:
    """JSON bodies, repeated fields and unknown grant types get clear OAuth errors, never a 500."""
    as_json = await op.post(
        "/auth/api/oidc/token", json={"grant_type": "authorization_code"}, headers=basic()
    )
    assert as_json.status == 400 and (await as_json.json())["error"] == "invalid_request"
    repeated = await op.post(
        "/auth/api/oidc/token",
        data="grant_type=authorization_code&code=a&code=b",
        headers={**basic(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (await repeated.json())["error"] == "invalid_request"
    unknown = await token_request(op, {"grant_type": "password", "username": "alice", "password": "x"})
    assert (await unknown.json())["error"] == "unsupported_grant_type"
    client_credentials = await token_request(op, {"grant_type": "client_credentials"})
    assert (await client_credentials.json())["error"] == "unsupported_grant_type"


# -- using tokens -----------------------------------------------------------------------------------


async def test_expired_and_tampered_access_tokens(op: TestClient[Any, Any], clock: Clock) -> None:
    """userinfo refuses a token with a changed payload, another signature, or past its exp."""
    session = await signed_in(op)
    body = await tokens_for(op, session)
    header, payload, signature = body["access_token"].split(".")
    tampered_payload = f"{header}.{payload[:-4]}{'AAAA' if payload[-4:] != 'AAAA' else 'BBBB'}.{signature}"
    tampered_signature = f"{header}.{payload}.{signature[::-1]}"
    unsigned = f"eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0.{payload}."
    for token in (tampered_payload, tampered_signature, unsigned, body["id_token"], "garbage"):
        response = await op.get("/auth/api/oidc/userinfo", headers={"Authorization": f"Bearer {token}"})
        assert response.status == 401, token
        assert "invalid_token" in response.headers["WWW-Authenticate"]
    clock.advance(3601)
    expired = await op.get(
        "/auth/api/oidc/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert expired.status == 401


async def test_userinfo_without_a_token(op: TestClient[Any, Any]) -> None:
    response = await op.get("/auth/api/oidc/userinfo")
    assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_revocation_of_access_and_refresh_tokens(op: TestClient[Any, Any]) -> None:
    """RFC 7009: a revoked access token stops at once; a revoked refresh token ends its grant."""
    session = await signed_in(op)
    body = await tokens_for(op, session, scope="openid offline_access")
    revoke = await op.post("/auth/api/oidc/revocation", data={"token": body["access_token"]}, headers=basic())
    assert revoke.status == 200
    info = await op.get(
        "/auth/api/oidc/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert info.status == 401
    assert (
        await op.post("/auth/api/oidc/revocation", data={"token": body["refresh_token"]}, headers=basic())
    ).status == 200
    refresh = await token_request(op, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
    assert (await refresh.json())["error"] == "invalid_grant"
    unknown = await op.post("/auth/api/oidc/revocation", data={"token": "not-a-token"}, headers=basic())
    assert unknown.status == 200
    events = [e.event for e in await services(op).store.list_audit()]
    assert events.count(audit.OIDC_TOKEN_REVOKED) == 2


async def test_introspection(op: TestClient[Any, Any]) -> None:
    """RFC 7662: active with claims for the owning client; inactive for others, revoked or junk."""
    session = await signed_in(op)
    body = await tokens_for(op, session, scope="openid offline_access")
    own = await (
        await op.post("/auth/api/oidc/introspection", data={"token": body["access_token"]}, headers=basic())
    ).json()
    assert own["active"] is True and own["client_id"] == "grafana" and own["username"] == "alice"
    refresh = await (
        await op.post("/auth/api/oidc/introspection", data={"token": body["refresh_token"]}, headers=basic())
    ).json()
    assert refresh["active"] is True and refresh["token_type"] == "refresh_token"
    other = await op.post(
        "/auth/api/oidc/introspection",
        data={"token": body["access_token"], "client_id": "vault", "client_secret": SECRET},
    )
    assert (await other.json()) == {"active": False}
    junk = await op.post("/auth/api/oidc/introspection", data={"token": "junk"}, headers=basic())
    assert (await junk.json()) == {"active": False}
    unauthenticated = await op.post("/auth/api/oidc/introspection", data={"token": body["access_token"]})
    assert unauthenticated.status == 401


async def test_a_disabled_user_loses_tokens(op: TestClient[Any, Any]) -> None:
    """Disabling the account stops userinfo and refresh for its tokens."""
    session = await signed_in(op)
    body = await tokens_for(op, session, scope="openid offline_access")
    user = await services(op).store.get_user_by_name("alice")
    assert user is not None
    await services(op).store.set_disabled(user.id, True)
    info = await op.get(
        "/auth/api/oidc/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert info.status == 401
    refresh = await token_request(op, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
    assert (await refresh.json())["error"] == "invalid_grant"


# -- RP-initiated logout ----------------------------------------------------------------------------


async def test_logout_with_id_token_hint(op: TestClient[Any, Any]) -> None:
    """A valid hint for the browser's session ends it and returns to the registered URI with state."""
    session = await signed_in(op)
    body = await tokens_for(op, session)
    response = await op.get(
        "/auth/api/oidc/logout",
        params={
            "id_token_hint": body["id_token"],
            "post_logout_redirect_uri": "https://grafana.example.com/login",
            "state": "bye",
        },
        headers=with_cookies(session),
        allow_redirects=False,
    )
    assert response.status == 302
    assert response.headers["Location"] == "https://grafana.example.com/login?state=bye"
    home = await op.get("/auth/", headers=with_cookies(session), allow_redirects=False)
    assert home.headers["Location"] == "/auth/login"  # the session is gone


@pytest.mark.parametrize(
    "target",
    ["https://grafana.example.com/login/", "https://evil.example/", "https://grafana.example.com/LOGIN"],
)
async def test_logout_refuses_unregistered_post_logout_uris(op: TestClient[Any, Any], target: str) -> None:
    """post_logout_redirect_uri must match a registered one exactly; the session stays."""
    session = await signed_in(op)
    body = await tokens_for(op, session)
    response = await op.get(
        "/auth/api/oidc/logout",
        params={"id_token_hint": body["id_token"], "post_logout_redirect_uri": target},
        headers=with_cookies(session),
        allow_redirects=False,
    )
    assert response.status == 400 and "Location" not in response.headers
    home = await op.get("/auth/", headers=with_cookies(session), allow_redirects=False)
    assert home.status == 200


async def test_logout_without_hint_asks_the_user(op: TestClient[Any, Any]) -> None:
    """Without an id_token_hint nobody is signed out by a link: the user confirms first."""
    session = await signed_in(op)
    response = await op.get("/auth/api/oidc/logout", headers=with_cookies(session), allow_redirects=False)
    assert response.status == 200 and "Sign out?" in await response.text()
    assert (await op.get("/auth/", headers=with_cookies(session), allow_redirects=False)).status == 200


async def test_confirming_a_logout_without_hint(op: TestClient[Any, Any]) -> None:
    """The confirmation form (CSRF-checked) ends the session and goes to the registered URI."""
    session = await signed_in(op)
    page = await op.get(
        "/auth/api/oidc/logout",
        params={"client_id": "grafana", "post_logout_redirect_uri": "https://grafana.example.com/login"},
        headers=with_cookies(session),
        allow_redirects=False,
    )
    text = await page.text()
    blob = re.search(r'name="request" value="([^"]+)"', text)
    token = re.search(r'name="csrf_token" value="([^"]+)"', text)
    assert page.status == 200 and blob and token
    csrf = page.cookies["authgate_csrf"].value
    forged = await op.post(
        "/auth/api/oidc/logout/confirm",
        data={"csrf_token": "forged", "request": blob.group(1)},
        headers=with_cookies(session, authgate_csrf=csrf),
        allow_redirects=False,
    )
    assert forged.status == 403
    done = await op.post(
        "/auth/api/oidc/logout/confirm",
        data={"csrf_token": token.group(1), "request": blob.group(1)},
        headers=with_cookies(session, authgate_csrf=csrf),
        allow_redirects=False,
    )
    assert done.status == 302 and done.headers["Location"] == "https://grafana.example.com/login"
    assert (await op.get("/auth/", headers=with_cookies(session), allow_redirects=False)).status == 303


async def test_userinfo_by_post_and_cors_for_a_registered_origin(op: TestClient[Any, Any]) -> None:
    """userinfo answers POST too; a browser app's origin (from its redirect URI) gets CORS, others not."""
    session = await signed_in(op)
    body = await tokens_for(op, session)
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    spa_origin = "http://127.0.0.1:5173"
    posted = await op.post("/auth/api/oidc/userinfo", headers={**bearer, "Origin": spa_origin})
    assert posted.status == 200 and posted.headers["Access-Control-Allow-Origin"] == spa_origin
    other = await op.get("/auth/api/oidc/userinfo", headers={**bearer, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = await op.options(
        "/auth/api/oidc/token",
        headers={"Origin": spa_origin, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 204 and preflight.headers["Access-Control-Allow-Origin"] == spa_origin


async def test_logout_with_a_forged_hint(op: TestClient[Any, Any]) -> None:
    """A hint that does not verify is refused."""
    session = await signed_in(op)
    response = await op.get(
        "/auth/api/oidc/logout",
        params={"id_token_hint": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."},
        headers=with_cookies(session),
        allow_redirects=False,
    )
    assert response.status == 400


# -- settings and administration --------------------------------------------------------------------


async def test_withdrawing_consent_on_the_settings_page_ends_the_apps_tokens(
    op: TestClient[Any, Any],
) -> None:
    """The settings page lists the app; withdrawing access revokes its tokens and asks again next time."""
    session = await signed_in(op)
    body = await tokens_for(op, session, scope="openid offline_access")
    page = await (await portal_get(op, "/auth/settings", session=session)).text()
    assert "Connected apps" in page and "Grafana" in page
    response = await portal_post(op, "/auth/settings/apps/grafana/revoke", {}, session=session)
    assert response.status == 303 and response.headers["Location"] == "/auth/settings?done=app_revoked"
    info = await op.get(
        "/auth/api/oidc/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert info.status == 401
    refresh = await token_request(op, {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]})
    assert (await refresh.json())["error"] == "invalid_grant"
    again = await op.get(authorize_path(), headers=with_cookies(session), allow_redirects=False)
    assert again.status == 200 and "oidc-consent" in await again.text()
    assert audit.OIDC_CONSENT_REVOKED in [e.event for e in await services(op).store.list_audit()]


async def test_the_admin_console_lists_the_clients(op: TestClient[Any, Any]) -> None:
    """Admins see every configured client with its live grants; never a secret hash."""
    await add_user(op, "root", groups=("admins",))
    session = await signed_in(op)
    await tokens_for(op, session)
    admin = await signed_in(op, "root")
    response = await portal_get(op, "/auth/admin/oidc", session=admin)
    page = await response.text()
    assert response.status == 200
    for text in ("grafana", "spa", "vault", "public (PKCE)", "1 grant(s), 1 user(s)", APP):
        assert text in page, text
    assert "$argon2" not in page


async def test_an_implicit_client_is_listed_under_connected_apps(
    op: TestClient[Any, Any], clock: Clock
) -> None:
    """No consent screen for a trusted client, but the user can still see and withdraw it."""
    user = await services(op).store.get_user_by_name("alice")
    assert user is not None
    secret = await add_totp_device(op, user)
    done = await submit_code(op, totp_code(secret, clock()), pending=await password_step(op))
    session = done.cookies["authgate_session"].value
    response = await op.get(
        authorize_path(client_id="vault", redirect_uri=VAULT),
        headers=with_cookies(session),
        allow_redirects=False,
    )
    assert response.headers["Location"].startswith(VAULT + "?code=")
    page = await (await portal_get(op, "/auth/settings", session=session)).text()
    assert "/auth/settings/apps/vault/revoke" in page
    consents = [e for e in await services(op).store.list_audit() if e.event == audit.OIDC_CONSENT_GRANTED]
    assert consents and "implicit" in consents[-1].detail


# -- hostile input and races --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "client_id=%ff%fe&redirect_uri=%ff",
        "client_id=grafana&redirect_uri=" + "%ff" * 3,
        "client_id=grafana&client_id=spa&redirect_uri=" + APP,
        "%00=%00",
        "client_id=" + "g" * 5000,
    ],
)
async def test_hostile_authorization_requests_get_a_clean_400(op: TestClient[Any, Any], query: str) -> None:
    """Broken encodings, NULs, repeated client ids and huge values: a 400 page, never a 500 or a redirect."""
    response = await op.get(f"/auth/api/oidc/authorization?{query}", allow_redirects=False)
    assert response.status == 400
    assert "Location" not in response.headers


@pytest.mark.parametrize(
    "body",
    [b"grant_type=authorization_code&code=%ff%fe&redirect_uri=%ff", b"\xff\xfe=\xff", b"code=" + b"x" * 5000],
)
async def test_hostile_token_requests_get_oauth_errors(op: TestClient[Any, Any], body: bytes) -> None:
    """The token endpoint answers undecodable or oversized forms with a JSON error, never a 500."""
    response = await op.post(
        "/auth/api/oidc/token",
        data=body,
        headers={**basic(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert 400 <= response.status < 500
    assert "error" in await response.json()


async def test_one_code_sent_ten_times_at_once_gives_tokens_once(op: TestClient[Any, Any]) -> None:
    """Concurrent exchanges of one code: exactly one succeeds; the others revoke its grant."""
    import asyncio

    session = await signed_in(op)
    code, _ = await code_for(op, session)
    replies = await asyncio.gather(*(exchange(op, code) for _ in range(10)))
    statuses = sorted(r.status for r in replies)
    assert statuses.count(200) == 1 and statuses.count(400) == 9
    winner = next(r for r in replies if r.status == 200)
    token = (await winner.json())["access_token"]
    info = await op.get("/auth/api/oidc/userinfo", headers={"Authorization": f"Bearer {token}"})
    assert info.status == 401  # the reuse revoked the grant the winner's tokens belong to


async def test_prompt_none_when_a_second_factor_is_needed(op: TestClient[Any, Any]) -> None:
    """prompt=none with a password session for a two-factor request: interaction_required."""
    session = await signed_in(op)
    response = await op.get(
        authorize_path(prompt="none", acr_values="two_factor"),
        headers=with_cookies(session),
        allow_redirects=False,
    )
    assert query_of(response.headers["Location"])["error"] == "interaction_required"


async def test_rotation_while_running_signs_with_the_new_key(op: TestClient[Any, Any]) -> None:
    """After `rotate-keys` the running app signs with the new kid; tokens of the old key still work."""
    from joserfc import jws

    from gateway.oidc.keys import rotate_keys

    session = await signed_in(op)
    before = await tokens_for(op, session)
    data_dir = services(op).config.storage.data_dir
    rotate_keys(data_dir, now=services(op).clock(), retention=86400)
    after = await tokens_for(op, session)
    old_kid = jws.extract_compact(before["id_token"].encode()).headers()["kid"]
    new_kid = jws.extract_compact(after["id_token"].encode()).headers()["kid"]
    assert old_kid != new_kid
    published = {k["kid"] for k in (await (await op.get("/auth/jwks.json")).json(content_type=None))["keys"]}
    assert {old_kid, new_kid} <= published and len(published) == 4
    assert (await verify(op, before["id_token"]))["sub"] == (await verify(op, after["id_token"]))["sub"]
    old_access = await op.get(
        "/auth/api/oidc/userinfo", headers={"Authorization": f"Bearer {before['access_token']}"}
    )
    assert old_access.status == 200
