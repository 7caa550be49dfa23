"""Reading client credentials from the token endpoint's request (RFC 6749 2.3.1)."""

from __future__ import annotations

import base64

import pytest

from gateway.oidc.service import OidcError, VerifiedSecrets, parse_client_credentials


def basic(raw: str) -> str:
    return "Basic " + base64.b64encode(raw.encode()).decode()


def test_basic_credentials_are_form_decoded() -> None:
    """Both parts are form-urlencoded before base64, so %3A and + decode; ':' splits once."""
    found = parse_client_credentials(basic("my%20app:se%3Acret+x:y"), None, None)
    assert (found.method, found.client_id, found.secret) == ("client_secret_basic", "my app", "se:cret x:y")


def test_form_credentials() -> None:
    assert parse_client_credentials(None, "app", "s").method == "client_secret_post"
    assert parse_client_credentials(None, "spa", None).method == "none"


@pytest.mark.parametrize(
    ("header", "form_id", "form_secret", "error"),
    [
        ("Bearer x", None, None, "invalid_client"),
        ("Basic !!!", None, None, "invalid_client"),
        (basic("no-colon"), None, None, "invalid_client"),
        (basic("app:s"), None, "s", "invalid_request"),  # credentials twice
        (basic("app:s"), "other", None, "invalid_request"),  # ids disagree
        (None, None, None, "invalid_client"),
        ("Basic " + base64.b64encode(b"\xff:\xfe").decode(), None, None, "invalid_client"),
    ],
)
def test_bad_credentials(
    header: str | None, form_id: str | None, form_secret: str | None, error: str
) -> None:
    with pytest.raises(OidcError) as info:
        parse_client_credentials(header, form_id, form_secret)
    assert info.value.error == error


def test_verified_secrets_expire_and_never_match_another_secret() -> None:
    cache = VerifiedSecrets(ttl=10)
    cache.remember("app", "right", now=0)
    assert cache.matches("app", "right", now=5)
    assert not cache.matches("app", "wrong", now=5)
    assert not cache.matches("other", "right", now=5)
    assert not cache.matches("app", "right", now=10)
