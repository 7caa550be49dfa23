"""The pure OpenID Connect rules: redirect URI matching, PKCE, scopes and claims, consent, steps."""

from __future__ import annotations

import base64
import hashlib

import pytest

from gateway.models import Level, OidcConsent, User, merge_amr
from gateway.oidc.clients import OidcClient, OidcProviderConfig
from gateway.oidc.protocol import (
    LOGIN,
    STEP_UP,
    AuthorizeError,
    consent_needed,
    needed_step,
    parse_authorization_request,
    redirect_uri_matches,
    s256_challenge,
    user_claims,
    verify_pkce,
)

URI = "https://app.example.com/cb"
CLIENT = OidcClient(client_id="app", client_secret_hash="$argon2id$x", redirect_uris=(URI,))
PUBLIC = OidcClient(client_id="spa", public=True, redirect_uris=("http://127.0.0.1:9/cb",))
PROVIDER = OidcProviderConfig(issuer="https://auth.example.com", clients=(CLIENT, PUBLIC))
USER = User(1, "alice", "alice@example.com", "Alice", ("dev",), False, 0.0)


def request(**params: str):  # type: ignore[no-untyped-def]
    base = {"client_id": "app", "redirect_uri": URI, "response_type": "code", "scope": "openid"}
    return parse_authorization_request(list({**base, **params}.items()), PROVIDER)


@pytest.mark.parametrize(
    "candidate",
    [
        URI + "/",
        URI.upper(),
        "https://app.example.com/c",
        "https://app.example.com:443/cb",
        URI + "?",
        URI + "#",
    ],
)
def test_redirect_uris_match_character_for_character(candidate: str) -> None:
    """No normalisation: case, trailing slash, prefix, default port, empty query all differ."""
    assert not redirect_uri_matches(candidate, (URI,))
    assert redirect_uri_matches(URI, (URI,))


def test_s256_matches_rfc_7636_appendix_b() -> None:
    """The RFC's own example verifier and challenge."""
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert verify_pkce("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", verifier)


@pytest.mark.parametrize(
    "verifier", [None, "", "short", "x" * 129, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk!"]
)
def test_pkce_refuses_missing_and_malformed_verifiers(verifier: str | None) -> None:
    challenge = base64.urlsafe_b64encode(hashlib.sha256(b"y" * 43).digest()).rstrip(b"=").decode()
    assert not verify_pkce(challenge, verifier)


def test_no_challenge_means_no_verifier() -> None:
    """A verifier for a code issued without PKCE is refused (an injected code)."""
    assert verify_pkce("", None)
    assert not verify_pkce("", "y" * 43)


def test_scopes_the_client_may_not_have_are_left_out() -> None:
    """offline_access and unknown scopes are dropped for a client that may not have them."""
    parsed = request(scope="openid email offline_access admin email")
    assert parsed.scopes == ("openid", "email")


def test_errors_before_the_redirect_uri_is_known_are_not_redirectable() -> None:
    with pytest.raises(AuthorizeError) as info:
        request(redirect_uri=URI + "x")
    assert not info.value.redirectable
    with pytest.raises(AuthorizeError) as info:
        request(response_type="token")
    assert info.value.redirectable and info.value.error == "unsupported_response_type"


def test_public_clients_need_s256() -> None:
    base = {
        "client_id": "spa",
        "redirect_uri": "http://127.0.0.1:9/cb",
        "response_type": "code",
        "scope": "openid",
    }
    with pytest.raises(AuthorizeError, match="PKCE"):
        parse_authorization_request(list(base.items()), PROVIDER)
    ok = parse_authorization_request(
        [*base.items(), ("code_challenge", s256_challenge("v" * 43)), ("code_challenge_method", "S256")],
        PROVIDER,
    )
    assert ok.code_challenge


def test_claims_follow_the_scopes() -> None:
    """Each scope releases its claims and nothing else."""
    assert user_claims(USER, "s", ["openid"]) == {"sub": "s"}
    claims = user_claims(USER, "s", ["openid", "profile", "email", "groups"])
    assert claims == {
        "sub": "s",
        "name": "Alice",
        "preferred_username": "alice",
        "email": "alice@example.com",
        "email_verified": True,
        "groups": ["dev"],
    }


def test_consent_is_needed_for_new_scopes_only() -> None:
    remembered = OidcConsent(1, "app", ("email", "openid"), 0.0)
    assert not consent_needed(request(scope="openid email"), remembered)
    assert consent_needed(request(scope="openid email profile"), remembered)
    assert consent_needed(request(scope="openid"), None)
    assert consent_needed(request(scope="openid", prompt="consent"), remembered)


@pytest.mark.parametrize(
    ("params", "level", "auth_time", "expected"),
    [
        ({}, None, None, LOGIN),
        ({}, Level.ONE_FACTOR, 0.0, STEP_UP),  # the client's policy is two_factor by default
        ({}, Level.TWO_FACTOR, 0.0, None),
        ({"prompt": "login"}, Level.TWO_FACTOR, 990.0, LOGIN),
        ({"max_age": "5"}, Level.TWO_FACTOR, 990.0, LOGIN),
        ({"max_age": "50"}, Level.TWO_FACTOR, 990.0, None),
        ({"acr_values": "two_factor"}, Level.ONE_FACTOR, 990.0, STEP_UP),
    ],
)
def test_needed_step(
    params: dict[str, str], level: Level | None, auth_time: float | None, expected: str | None
) -> None:
    assert (
        needed_step(request(**params), level=level, auth_time=auth_time, now=1000.0, fresh_login=False)
        == expected
    )


def test_amr_merges_factors() -> None:
    """Two kinds of factor (or a user-verifying passkey) add mfa; repeats are dropped."""
    assert merge_amr(("pwd",)) == ("pwd",)
    assert merge_amr(("pwd",), "otp") == ("pwd", "otp", "mfa")
    assert merge_amr(("pwd", "otp", "mfa"), "otp") == ("pwd", "otp", "mfa")
    assert merge_amr(("hwk", "user")) == ("hwk", "user", "mfa")
    assert merge_amr(("hwk",)) == ("hwk",)
