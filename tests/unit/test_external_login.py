"""The pure parts of external sign-in: configuration, the flow's checks, identities, ID tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from gateway.config import ExternalAllowList, ExternalProvider, parse_config
from gateway.errors import ConfigError
from gateway.external_login import flow
from gateway.external_login.errors import (
    CallbackRefused,
    NotAllowed,
    ProviderDenied,
    ProviderUnavailable,
    TokenInvalid,
)
from gateway.external_login.identity import (
    ExternalIdentity,
    check_allowed,
    github_identity,
    identity_from_claims,
    provider_second_factor,
    username_base,
    username_candidates,
)
from gateway.external_login.service import parse_discovery
from gateway.external_login.tokens import UnknownSigningKey, signing_algorithms, verify_id_token

OIDC = {
    "id": "corp",
    "issuer": "https://sso.example.com/realms/staff",
    "client_id": "authgate",
    "client_secret": "s3cret",
    "allow": {"email_domains": ["example.com"]},
}
GITHUB = {
    "id": "github",
    "type": "github",
    "client_id": "Iv1.x",
    "client_secret": "y",
    "allow": {"organizations": ["acme"]},
}


def provider(**changes: Any) -> ExternalProvider:
    config = parse_config({"external_login": {"providers": [{**OIDC, **changes}]}})
    return config.external_login.providers[0]


def problems(entry: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config({"external_login": {"providers": [entry]}})
    return info.value.problems


# -- configuration ---------------------------------------------------------------------------------


def test_defaults_are_safe() -> None:
    """A minimal OIDC entry: openid email profile, link on, auto_create off, our own second factor."""
    found = provider()
    assert found.scopes == ("openid", "email", "profile")
    assert (found.link, found.auto_create, found.two_factor) == (True, False, "local")
    assert found.label == "corp" and found.type == "oidc"
    assert "s3cret" not in repr(found)


@pytest.mark.parametrize(
    ("changes", "path", "fragment"),
    [
        ({"allow": {}}, "external_login.providers[0].allow", "would admit nobody"),
        ({"allow": None}, "external_login.providers[0].allow", "allow_any: true"),
        ({"allow": {"allow_any": True, "emails": ["a@example.com"]}}, ".allow.allow_any", "use one"),
        ({"allow": {"email_domains": ["https://example.com"]}}, ".allow.email_domains[0]", "is a URL"),
        ({"allow": {"emails": ["not-an-address"]}}, ".allow.emails[0]", "not an e-mail address"),
        ({"allow": {"organizations": ["acme"]}}, ".allow.organizations", "only GitHub"),
        ({"id": "Corp"}, "external_login.providers[0].id", "lower-case"),
        ({"id": None}, "external_login.providers[0].id", "missing"),
        ({"client_id": None}, ".client_id", "missing"),
        ({"client_secret": None}, ".client_secret", "missing"),
        ({"issuer": None}, ".issuer", "missing"),
        ({"issuer": "http://sso.example.com"}, ".issuer", "must use https"),
        ({"issuer": "https://sso.example.com/?x=1"}, ".issuer", "query"),
        ({"scopes": ["email"]}, ".scopes", "lacks openid"),
        ({"scopes": ["open id"]}, ".scopes[0]", "not a scope"),
        ({"type": "saml"}, ".type", "use one of oidc, github"),
        ({"two_factor": "maybe"}, ".two_factor", "use one of local, provider"),
        ({"api_url": "https://api.github.com"}, ".api_url", "not used by type oidc"),
        ({"groups": ["bad group"]}, ".groups[0]", "not a group name"),
        ({"timeout": "2m"}, ".timeout", "too long"),
        ({"claims": {"mail": "email"}}, ".claims.mail", ""),
        ({"colour": "blue"}, "external_login.providers[0].colour", ""),
    ],
)
def test_config_errors_name_the_key(changes: dict[str, Any], path: str, fragment: str) -> None:
    """Each mistake is reported at its key path with what is allowed."""
    found = problems({**OIDC, **changes})
    assert any(where.endswith(path) and fragment in message for where, message in found), found


def test_github_rules() -> None:
    """GitHub: no amr, so two_factor: provider is refused; an org allow-list adds read:org."""
    config = parse_config({"external_login": {"providers": [GITHUB]}})
    assert config.external_login.providers[0].scopes == ("read:user", "user:email", "read:org")
    assert config.external_login.providers[0].label == "GitHub"
    found = problems({**GITHUB, "two_factor": "provider", "issuer": "https://x.example.com"})
    assert [where for where, _ in found] == [
        "external_login.providers[0].issuer",
        "external_login.providers[0].two_factor",
    ]


def test_client_secret_file(tmp_path: Path) -> None:
    """client_secret_file is read (without its newline); unreadable or doubled is an error."""
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    entry = {**OIDC, "client_secret": None, "client_secret_file": str(secret)}
    assert provider(**entry).client_secret == "from-a-file"
    found = problems({**OIDC, "client_secret_file": str(secret)})
    assert found[0][0].endswith(".client_secret_file") and "use one" in found[0][1]
    found = problems({**entry, "client_secret_file": str(tmp_path / "missing")})
    assert found[0][0].endswith(".client_secret_file") and "cannot read" in found[0][1]


def test_duplicate_provider_ids_are_refused() -> None:
    """Two providers with one id would share links and URLs."""
    with pytest.raises(ConfigError) as info:
        parse_config({"external_login": {"providers": [OIDC, OIDC]}})
    assert info.value.problems == [("external_login.providers[1].id", '"corp" is listed twice')]


def test_provider_list_from_the_environment() -> None:
    """AUTHGATE_EXTERNAL_LOGIN_PROVIDERS takes a YAML list."""
    config = parse_config(
        {},
        {
            "AUTHGATE_EXTERNAL_LOGIN_PROVIDERS": "[{id: gh, type: github, client_id: a, client_secret: b, "
            "allow: {allow_any: true}}]"
        },
    )
    assert config.external_login.providers[0].allow.allow_any is True


# -- the flow --------------------------------------------------------------------------------------


def started(now: float = 1000.0, **changes: Any) -> tuple[str, flow.LoginState]:
    arguments: dict[str, Any] = {
        "provider": "corp",
        "authorization_endpoint": "https://sso.example.com/auth?kc_idp_hint=x",
        "client_id": "authgate",
        "scopes": ("openid", "email"),
        "redirect_uri": "https://auth.example.com/login/external/corp/callback",
        "rd": "https://app.example.com/",
        "link_user": None,
        "now": now,
        **changes,
    }
    return flow.begin(**arguments)


def test_begin_sends_s256_of_a_secret_verifier() -> None:
    """The challenge is BASE64URL(SHA256(verifier)); verifier and nonce stay out of the URL."""
    url, login = started()
    query = parse_qs(urlsplit(url).query)
    expected = (
        base64.urlsafe_b64encode(hashlib.sha256(login.verifier.encode()).digest()).rstrip(b"=").decode()
    )
    assert query["code_challenge"] == [expected]
    assert query["code_challenge_method"] == ["S256"]
    assert query["state"] == [login.state] and query["nonce"] == [login.nonce]
    assert query["kc_idp_hint"] == ["x"]  # the endpoint's own query is kept
    assert login.verifier not in url
    assert 43 <= len(login.verifier) <= 128
    assert started()[1].state != login.state


def callback_params(login: flow.LoginState, **changes: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {"code": "the-code", "state": login.state, **changes}
    return {key: value for key, value in params.items() if value is not None}


def check(params: dict[str, str], login: flow.LoginState | None, **changes: Any) -> str:
    arguments: dict[str, Any] = {
        "provider": "corp",
        "expected_issuer": "https://sso.example.com/realms/staff",
        "issuer_required": False,
        "now": 1010.0,
        "ttl": 600.0,
        **changes,
    }
    return flow.check_callback(params, login, **arguments)


def test_callback_returns_the_code() -> None:
    _url, login = started()
    assert check(callback_params(login), login) == "the-code"
    assert check(callback_params(login, iss="https://sso.example.com/realms/staff"), login) == "the-code"


@pytest.mark.parametrize(
    ("params", "changes", "reason"),
    [
        ({"state": "other"}, {}, "state mismatch"),
        ({"state": None}, {}, "state mismatch"),
        ({"state": ""}, {}, "state mismatch"),
        ({"code": None}, {}, "neither a code"),
        ({"iss": "https://evil.example.com"}, {}, "iss mismatch"),
        ({}, {"issuer_required": True}, "iss missing"),
        ({"iss": "https://github.com"}, {"expected_issuer": None}, "iss mismatch"),
        ({}, {"provider": "other"}, "started for provider"),
        ({}, {"now": 1601.0}, "started 601s ago"),
        ({"code": "x" * 5000}, {}, "5000 characters"),
    ],
)
def test_callback_refusals(params: dict[str, str | None], changes: dict[str, Any], reason: str) -> None:
    """Each way a callback can fail to answer this browser's sign-in is refused, saying which."""
    _url, login = started()
    with pytest.raises(CallbackRefused, match=reason):
        check(callback_params(login, **params), login, **changes)


def test_callback_without_state_cookie() -> None:
    with pytest.raises(CallbackRefused, match="no sign-in was started"):
        check({"code": "c", "state": "s"}, None)


def test_error_is_reported_only_after_state_and_iss() -> None:
    """An error answer for this browser's state is ProviderDenied; a forged one stays refused."""
    _url, login = started()
    with pytest.raises(ProviderDenied, match="access_denied") as info:
        check(callback_params(login, code=None, error="access_denied"), login)
    assert "cancelled" in info.value.message
    with pytest.raises(CallbackRefused):
        check(callback_params(login, code=None, error="access_denied", state="forged"), login)


def test_state_payload_round_trip_and_rejects() -> None:
    """The cookie payload comes back as it went; anything malformed is None."""
    _url, login = started(link_user=7)
    payload = flow.to_payload(login)
    assert flow.from_payload(payload) == login
    for broken in (
        None,
        [],
        {**payload, "v": 2},
        {**payload, "link_user": True},
        {**payload, "started_at": "soon"},
        {key: value for key, value in payload.items() if key != "verifier"},
    ):
        assert flow.from_payload(broken) is None


# -- identities --------------------------------------------------------------------------------------


def test_claims_mapping_and_verified_email() -> None:
    """Claims map as configured; an unverified e-mail is dropped; groups may be one string."""
    mapped = provider(claims={"username": "upn", "display_name": "given_name", "groups": "roles"})
    claims = {
        "sub": "abc",
        "upn": "ada",
        "given_name": "Ada\nLovelace",
        "roles": "staff",
        "email": "ada@example.com",
        "email_verified": "true",
        "amr": ["pwd", "otp"],
    }
    found = identity_from_claims(mapped, claims)
    assert found == ExternalIdentity(
        "corp", "abc", "ada", "ada@example.com", "Ada Lovelace", ("staff",), ("pwd", "otp")
    )
    assert identity_from_claims(mapped, {**claims, "email_verified": False}).email == ""
    assert identity_from_claims(mapped, {**claims, "email_verified": None}).email == ""
    assert identity_from_claims(
        provider(assume_email_verified=True), {"sub": "x", "email": "a@example.com"}
    ).email
    assert identity_from_claims(mapped, {**claims, "email": "not an address"}).email == ""


@pytest.mark.parametrize("sub", [None, "", 12.5, "x" * 256, "line\nbreak", True])
def test_bad_subject_is_refused(sub: object) -> None:
    with pytest.raises(TokenInvalid, match="subject"):
        identity_from_claims(provider(), {"sub": sub})


def test_github_identity_takes_the_verified_primary_email() -> None:
    gh = parse_config({"external_login": {"providers": [GITHUB]}}).external_login.providers[0]
    emails = [
        {"email": "old@example.com", "primary": False, "verified": True},
        {"email": "fake@example.com", "primary": True, "verified": False},
        {"email": "main@example.com", "primary": True, "verified": True},
    ]
    found = github_identity(
        gh, {"id": 42, "login": "Octo", "name": None}, emails, [{"login": "ACME"}, "junk"]
    )
    assert (found.subject, found.username, found.email, found.groups) == (
        "42",
        "Octo",
        "main@example.com",
        ("acme",),
    )
    unverified = github_identity(gh, {"id": 42, "login": "o"}, emails[1:2], [])
    assert unverified.email == ""


def identity(**changes: Any) -> ExternalIdentity:
    values: dict[str, Any] = {
        "provider": "corp",
        "subject": "s",
        "username": "",
        "email": "ada@example.com",
        "display_name": "",
        "groups": (),
        "amr": (),
        **changes,
    }
    return ExternalIdentity(**values)


@pytest.mark.parametrize(
    ("allow", "who", "admitted"),
    [
        (ExternalAllowList(allow_any=True), identity(email=""), True),
        (ExternalAllowList(email_domains=("example.com",)), identity(), True),
        (ExternalAllowList(email_domains=("example.com",)), identity(email="ada@EXAMPLE.com"), True),
        (ExternalAllowList(email_domains=("example.com",)), identity(email="ada@sub.example.com"), False),
        (
            ExternalAllowList(email_domains=("example.com",)),
            identity(email="ada@example.com.evil.org"),
            False,
        ),
        (ExternalAllowList(email_domains=("example.com",)), identity(email=""), False),
        (ExternalAllowList(emails=("ada@example.com",)), identity(email="Ada@Example.com"), True),
        (ExternalAllowList(emails=("ada@example.com",)), identity(email="bob@example.com"), False),
        (ExternalAllowList(groups=("staff",)), identity(email="", groups=("staff", "x")), True),
        (ExternalAllowList(groups=("staff",)), identity(groups=("Staff",)), False),
        (ExternalAllowList(organizations=("acme",)), identity(groups=("acme",)), True),
        (ExternalAllowList(), identity(), False),
    ],
)
def test_allow_lists(allow: ExternalAllowList, who: ExternalIdentity, admitted: bool) -> None:
    """Any one list admits; domains match exactly (no subdomains); groups are case-sensitive."""
    if admitted:
        check_allowed(who, allow)
    else:
        with pytest.raises(NotAllowed):
            check_allowed(who, allow)


@pytest.mark.parametrize(
    ("two_factor", "amr", "trusted"),
    [
        ("provider", ("pwd", "mfa"), True),
        ("provider", ("hwk",), True),
        ("provider", ("pwd",), False),
        ("provider", (), False),
        ("local", ("pwd", "mfa"), False),
    ],
)
def test_provider_second_factor(two_factor: str, amr: tuple[str, ...], trusted: bool) -> None:
    assert provider_second_factor(identity(amr=amr), provider(two_factor=two_factor)) is trusted


@pytest.mark.parametrize(
    ("username", "email", "expected"),
    [
        ("Ada.Lovelace", "", "ada.lovelace"),
        ("ada lovelace", "", "ada-lovelace"),
        ("--ada--", "", "ada"),
        ("Ådä", "", "d"),
        ("", "Grace.Hopper@example.com", "grace.hopper"),
        ("", "", "user"),
        ("x" * 80, "", "x" * 60),
    ],
)
def test_username_base(username: str, email: str, expected: str) -> None:
    assert username_base(identity(username=username, email=email)) == expected


def test_username_candidates() -> None:
    assert list(username_candidates("ada", 4)) == ["ada", "ada-2", "ada-3", "ada-4"]


# -- ID tokens -----------------------------------------------------------------------------------------

NOW = int(time.time())
RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
JWKS = KeySet([RSA, EC]).as_dict(private=False)
CLAIMS = {
    "iss": "https://sso.example.com",
    "aud": "authgate",
    "sub": "s1",
    "iat": NOW,
    "exp": NOW + 300,
    "nonce": "n1",
}


def sign(
    claims: dict[str, Any] | None = None, *, key: Any = RSA, alg: str = "RS256", kid: str | None = None
) -> str:
    header = {"alg": alg, "kid": kid if kid is not None else key.kid}
    return jwt.encode(header, claims if claims is not None else CLAIMS, key, algorithms=[alg])


def verify(token: str, **changes: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "issuer": "https://sso.example.com",
        "client_id": "authgate",
        "nonce": "n1",
        "now": NOW,
        "algorithms": ["RS256", "ES256"],
        **changes,
    }
    return verify_id_token(token, JWKS, **arguments)


def test_valid_tokens_verify() -> None:
    assert verify(sign())["sub"] == "s1"
    assert verify(sign(key=EC, alg="ES256"))["sub"] == "s1"
    assert verify(sign({**CLAIMS, "aud": ["authgate"]}))["sub"] == "s1"


@pytest.mark.parametrize(
    ("claims", "changes", "reason"),
    [
        ({"iss": "https://evil.example.com"}, {}, "iss"),
        ({"aud": "another-client"}, {}, "aud"),
        ({"aud": ["authgate", "another"]}, {}, "azp"),
        ({"nonce": "replayed"}, {}, "nonce"),
        ({"nonce": None}, {}, "nonce"),
        ({"exp": NOW - 61}, {}, "expired"),
        ({"iat": None}, {}, "iat"),
        ({"sub": None}, {}, "sub"),
        ({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}, {"access_token": "at"}, "at_hash"),
    ],
)
def test_invalid_claims_are_refused(claims: dict[str, Any], changes: dict[str, Any], reason: str) -> None:
    """OIDC Core 3.1.3.7: issuer, audience (azp), nonce, expiry, at_hash."""
    token_claims = {key: value for key, value in {**CLAIMS, **claims}.items() if value is not None}
    with pytest.raises(TokenInvalid, match=reason):
        verify(sign(token_claims), **changes)


def test_exp_within_leeway_is_accepted() -> None:
    assert verify(sign({**CLAIMS, "exp": NOW - 30}))["sub"] == "s1"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_signature_attacks_are_refused() -> None:
    """A wrong key, an algorithm not allowed, `none`, and HS256 keyed with the public key all fail."""
    other = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    with pytest.raises(TokenInvalid, match="bad_signature"):
        verify(sign(key=other))
    with pytest.raises(TokenInvalid):
        verify(sign(key=EC, alg="ES256"), algorithms=["RS256"])
    header = b64(b'{"alg":"none","kid":"rsa-1"}')
    body = sign().split(".")[1]
    with pytest.raises(TokenInvalid):
        verify(f"{header}.{body}.")
    # The classic confusion: HS256 keyed with the RSA public key's PEM (forged by hand: joserfc
    # itself refuses to make such a key).
    hs_header = b64(b'{"alg":"HS256","kid":"rsa-1"}')
    signing_input = f"{hs_header}.{body}"
    mac = hmac.new(RSA.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{b64(mac)}"
    with pytest.raises(TokenInvalid):
        verify(forged, algorithms=["HS256", "RS256"])
    with pytest.raises(UnknownSigningKey):
        verify(sign(kid="rotated"))
    for junk in ("", "a.b.c", "x" * 70_000, "e30.e30."):
        with pytest.raises(TokenInvalid):
            verify(junk)


def test_signing_algorithms_are_asymmetric_only() -> None:
    assert signing_algorithms(["HS256", "none", "ES256"]) == ["ES256"]
    assert signing_algorithms(None) == ["RS256"]
    assert signing_algorithms(["HS256"]) == ["RS256"]


# -- discovery documents -----------------------------------------------------------------------------

DISCOVERY = {
    "issuer": "https://sso.example.com/realms/staff",
    "authorization_endpoint": "https://sso.example.com/realms/staff/auth",
    "token_endpoint": "https://sso.example.com/realms/staff/token",
    "jwks_uri": "https://sso.example.com/realms/staff/certs",
    "userinfo_endpoint": "https://sso.example.com/realms/staff/userinfo",
    "id_token_signing_alg_values_supported": ["RS256", "HS256", "none"],
    "authorization_response_iss_parameter_supported": True,
}


def test_discovery_is_read() -> None:
    found = parse_discovery(DISCOVERY, provider(), now=5.0)
    assert found.issuer == DISCOVERY["issuer"] and found.iss_parameter is True
    assert found.algorithms == ("RS256",)
    assert found.secret_post is False  # client_secret_basic, the default when nothing is said
    post_only = {**DISCOVERY, "token_endpoint_auth_methods_supported": ["client_secret_post"]}
    assert parse_discovery(post_only, provider(), now=5.0).secret_post is True
    trailing = {**DISCOVERY, "issuer": DISCOVERY["issuer"] + "/"}
    assert parse_discovery(trailing, provider(), now=5.0).issuer == DISCOVERY["issuer"] + "/"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"issuer": "https://evil.example.com"}, "configured is"),
        ({"issuer": None}, "names no issuer"),
        ({"token_endpoint": "http://sso.example.com/token"}, "not an https URL"),
        ({"jwks_uri": None}, "lacks jwks_uri"),
        ({"authorization_endpoint": 5}, "lacks authorization_endpoint"),
    ],
)
def test_bad_discovery_is_refused(changes: dict[str, Any], reason: str) -> None:
    """OIDC Discovery 4.3: the issuer must be the configured one; endpoints must be https."""
    document = {key: value for key, value in {**DISCOVERY, **changes}.items() if value is not None}
    with pytest.raises(ProviderUnavailable, match=reason):
        parse_discovery(document, provider(), now=0.0)
    with pytest.raises(ProviderUnavailable):
        parse_discovery(["not", "an", "object"], provider(), now=0.0)


def test_config_check_names_provider_keys(tmp_path: Path) -> None:
    """`authgate config check` reports external_login mistakes by key path, never the secret."""
    broken = tmp_path / "external.yml"
    entry = {**OIDC, "client_secret": "do-not-print-me", "allow": {}, "issuer": "http://sso.example.com"}
    broken.write_text(yaml.safe_dump({"external_login": {"providers": [GITHUB, entry]}}))
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "check", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "external_login.providers[1].issuer" in done.stderr
    assert "must use https" in done.stderr
    assert "do-not-print-me" not in done.stderr + done.stdout


def test_every_refusal_message_is_in_the_catalogues() -> None:
    """Each message gateway/external_login/ shows a person is marked for translation in the portal."""
    from gateway.external_login import errors, service
    from portal.views.external_login import GATEWAY_MESSAGES

    shown = {
        cls.message
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ExternalLoginError)
    }
    shown |= {flow.CANCELLED, flow.PROVIDER_REFUSED}
    shown |= {value for name, value in vars(service).items() if name.isupper() and isinstance(value, str)}
    assert shown - set(GATEWAY_MESSAGES) == set()
