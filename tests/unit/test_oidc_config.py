"""The oidc_provider section: clients, URLs matched exactly, and every error named by key path."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.models import Level
from gateway.oidc.clients import redirect_uri_problem

HASH = "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"


def client(**overrides: Any) -> dict[str, Any]:
    return {
        "client_id": "grafana",
        "client_secret": HASH,
        "redirect_uris": ["https://grafana.example.com/cb"],
        **overrides,
    }


def oidc(*clients: dict[str, Any], **section: Any) -> dict[str, Any]:
    return {"oidc_provider": {"clients": list(clients), **section}}


def problems(data: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def test_a_confidential_client_with_defaults() -> None:
    """A client needs only an id, a hashed secret and its redirect URIs; the rest has safe defaults."""
    config = parse_config(oidc(client()))
    (parsed,) = config.oidc_provider.clients
    assert parsed.client_secret_hash == HASH
    assert parsed.authorization_policy is Level.TWO_FACTOR
    assert parsed.token_endpoint_auth_method == "client_secret_basic"
    assert parsed.id_token_signed_response_alg == "RS256"
    assert parsed.scopes == ("openid", "profile", "email", "groups")
    assert parsed.consent == "explicit"
    assert config.oidc_provider.issuer == "http://localhost:8080/auth"  # the portal's URL
    assert HASH not in repr(parsed)


def test_a_public_client_authenticates_with_none_and_needs_pkce() -> None:
    """public: true means no secret, token_endpoint_auth_method none, and PKCE always."""
    (parsed,) = parse_config(oidc(client(client_secret=None, public=True))).oidc_provider.clients
    assert parsed.token_endpoint_auth_method == "none"
    assert parsed.pkce_required


def test_disabled_without_clients() -> None:
    """Without clients the provider is off (no endpoints are mounted)."""
    assert not parse_config({}).oidc_provider.enabled


@pytest.mark.parametrize(
    ("overrides", "path", "words"),
    [
        ({"client_secret": "hunter2-plain-text"}, "client_secret", "hash-secret"),
        ({"client_secret": None}, "client_secret", "missing"),
        ({"public": True}, "client_secret", "public client has no secret"),
        ({"client_id": "bad id"}, "client_id", "client id"),
        ({"client_id": None}, "client_id", "missing"),
        ({"redirect_uris": []}, "redirect_uris", "missing"),
        ({"redirect_uris": ["http://app.example.com/cb"]}, "redirect_uris[0]", "https"),
        ({"redirect_uris": ["https://app.example.com/cb#frag"]}, "redirect_uris[0]", "fragment"),
        ({"redirect_uris": ["https://*.example.com/cb"]}, "redirect_uris[0]", "wildcard"),
        ({"redirect_uris": ["https://app.example.com/*"]}, "redirect_uris[0]", "wildcard"),
        ({"redirect_uris": ["/relative/cb"]}, "redirect_uris[0]", "absolute"),
        ({"redirect_uris": ["https://u:p@app.example.com/cb"]}, "redirect_uris[0]", "user:password"),
        ({"redirect_uris": ["https://app.example.com:99999/cb"]}, "redirect_uris[0]", "port"),
        ({"post_logout_redirect_uris": ["http://app.example.com/"]}, "post_logout_redirect_uris[0]", "https"),
        ({"scopes": ["openid", "admin"]}, "scopes[1]", "not allowed"),
        ({"scopes": ["profile"]}, "scopes", "must include openid"),
        ({"grant_types": ["implicit"]}, "grant_types[0]", "not allowed"),
        ({"grant_types": ["authorization_code", "refresh_token"]}, "grant_types", "offline_access"),
        ({"authorization_policy": "bypass"}, "authorization_policy", "one_factor"),
        ({"token_endpoint_auth_method": "none"}, "token_endpoint_auth_method", "public"),
        ({"token_endpoint_auth_method": "private_key_jwt"}, "token_endpoint_auth_method", "not allowed"),
        ({"id_token_signed_response_alg": "HS256"}, "id_token_signed_response_alg", "RS256"),
        ({"id_token_signed_response_alg": "none"}, "id_token_signed_response_alg", "RS256"),
        ({"consent": "never"}, "consent", "explicit"),
        ({"access_token_lifespan": "2d"}, "access_token_lifespan", "too long"),
        ({"colour": "blue"}, "colour", "unknown key"),
    ],
)
def test_client_errors_name_the_key(overrides: dict[str, Any], path: str, words: str) -> None:
    """Each bad client setting is reported at oidc_provider.clients[i].KEY with what is allowed."""
    found = problems(oidc(client(**overrides)))
    assert any(
        where == f"oidc_provider.clients[0].{path}" and words in message for where, message in found
    ), found


def test_the_plain_secret_is_never_echoed() -> None:
    """A secret pasted in place of its hash is refused without being repeated in the message."""
    found = problems(oidc(client(client_secret="s3cret-pasted-by-mistake")))
    assert not any("s3cret-pasted-by-mistake" in message for _, message in found)


def test_duplicate_client_ids() -> None:
    """Two clients with one id: the second is named, with the index of the first."""
    found = problems(oidc(client(), client()))
    assert found == [
        (
            "oidc_provider.clients[1].client_id",
            '"grafana" is already the id of oidc_provider.clients[0]; client ids must be unique',
        )
    ]


def test_every_error_at_once() -> None:
    """All problems of all clients are reported together."""
    found = problems(
        oidc(client(client_secret="x"), client(client_id="b", redirect_uris=["http://b.example/cb"]))
    )
    assert [where for where, _ in found] == [
        "oidc_provider.clients[0].client_secret",
        "oidc_provider.clients[1].redirect_uris[0]",
    ]


@pytest.mark.parametrize(
    ("issuer", "words"),
    [
        ("http://auth.example.com", "https"),
        ("https://auth.example.com/?x=1", "query"),
        ("auth.example.com", "absolute"),
    ],
)
def test_issuer_errors(issuer: str, words: str) -> None:
    """The issuer is an https URL without query or fragment."""
    found = problems(oidc(client(), issuer=issuer))
    assert any(where == "oidc_provider.issuer" and words in message for where, message in found), found


def test_key_retention_covers_token_lifetimes() -> None:
    """Retired keys must stay published as long as the tokens they signed are valid."""
    found = problems(oidc(client(access_token_lifespan="12h"), key_retention="1h"))
    assert [where for where, _ in found] == ["oidc_provider.key_retention"]


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:8000/cb",
        "http://localhost/cb",
        "http://[::1]:9/cb",
        "https://app.example.com/cb?x=1",
    ],
)
def test_redirect_uris_allowed(uri: str) -> None:
    """Loopback http (RFC 8252) and https with a query are fine."""
    assert redirect_uri_problem(uri) is None


def test_the_issuer_is_a_portal_url() -> None:
    """The provider signs users in through the portal, so its issuer must be a portal_url."""
    cookies = {"session": {"cookies": [{"domain": "example.com", "portal_url": "https://auth.example.com"}]}}
    found = problems({**cookies, **oidc(client(), issuer="https://login.example.com")})
    assert [where for where, _ in found] == ["oidc_provider.issuer"]
    config = parse_config({**cookies, **oidc(client(), issuer="https://auth.example.com/")})
    assert config.oidc_provider.issuer == "https://auth.example.com"
