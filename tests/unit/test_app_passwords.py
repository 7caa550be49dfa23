"""App passwords (pure): token shape, peppered hashing, Authorization parsing, domain limits, checks."""

from __future__ import annotations

import base64
import dataclasses
import math

import pytest

from gateway.config import AppPasswordsConfig, parse_config
from gateway.errors import AuthFailed, ConfigError
from gateway.factors import app_passwords as ap
from gateway.factors.app_passwords import Credentials, InvalidAuthorization
from gateway.models import AppPassword, Level, User

PEPPER = b"pepper-for-tests-0123456789abcdef"


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def test_generate_token_shape() -> None:
    """A token is the prefix plus 48 base62 characters, with at least 200 bits in its secret part."""
    token = ap.generate_token()
    assert token.startswith("agp_")
    assert len(token) == ap.TOKEN_LENGTH == 52
    assert set(token[4:]) <= set(ap.ALPHABET)
    assert ap.SECRET_LENGTH * math.log2(len(ap.ALPHABET)) >= 200


def test_generate_token_is_random() -> None:
    """Tokens (and their lookup ids) do not repeat."""
    tokens = {ap.generate_token() for _ in range(200)}
    assert len(tokens) == 200
    assert len({ap.token_id_of(t) for t in tokens}) == 200


def test_token_id_of_valid_token() -> None:
    """The lookup id is the 8 characters after the prefix."""
    token = "agp_" + "AbCd1234" + "x" * 40
    assert ap.token_id_of(token) == "AbCd1234"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hunter2",  # an account password
        "agp_short",
        "agp_" + "a" * 47,
        "agp_" + "a" * 49,
        "AGP_" + "a" * 48,
        "ghp_" + "a" * 48,
        "agp_" + "a" * 47 + "-",
        "agp_" + "a" * 47 + "é",
        " agp_" + "a" * 48,
    ],
)
def test_token_id_of_rejects_non_tokens(text: str) -> None:
    """Anything not shaped exactly like a token has no id (None: not ours, e.g. a password)."""
    assert ap.token_id_of(text) is None


def test_hash_and_verify_round_trip() -> None:
    """A token verifies against its own hash only, and the hash is keyed by the pepper."""
    token = ap.generate_token()
    stored = ap.hash_token(token, pepper=PEPPER)
    assert stored.startswith("hs256$") and token not in stored
    assert ap.verify_token(token, stored, pepper=PEPPER)
    assert not ap.verify_token(ap.generate_token(), stored, pepper=PEPPER)
    assert not ap.verify_token(token, stored, pepper=b"another-pepper-0123456789abcdef")
    assert ap.hash_token(token, pepper=b"another-pepper-0123456789abcdef") != stored


def test_verify_token_tolerates_garbage_hash() -> None:
    """A corrupt stored hash is a mismatch, not a crash."""
    assert not ap.verify_token(ap.generate_token(), "hs256$é", pepper=PEPPER)


def test_hash_token_needs_a_real_pepper() -> None:
    """A pepper shorter than 16 bytes is refused."""
    with pytest.raises(ValueError):
        ap.hash_token("agp_x", pepper=b"short")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("Digest username=bob", None),
        ("Negotiate abc", None),
        (basic("bob:s3cret"), Credentials("basic", "bob", "s3cret")),
        ("basic " + base64.b64encode(b"bob:s3cret").decode(), Credentials("basic", "bob", "s3cret")),
        ("BASIC  " + base64.b64encode(b"bob:s3cret").decode(), Credentials("basic", "bob", "s3cret")),
        (basic("bob:pa:ss:word"), Credentials("basic", "bob", "pa:ss:word")),
        (basic("bob@example.com:x"), Credentials("basic", "bob@example.com", "x")),
        (basic("jürgen:pässwort"), Credentials("basic", "jürgen", "pässwort")),
        ("Bearer agp_abc123", Credentials("bearer", None, "agp_abc123")),
        ("bearer agp_abc123", Credentials("bearer", None, "agp_abc123")),
        ("Bearer abc-._~+/==", Credentials("bearer", None, "abc-._~+/==")),
    ],
)
def test_parse_authorization_accepts(header: str | None, expected: Credentials | None) -> None:
    """Absent or foreign schemes give None; Basic and Bearer give their parts."""
    assert ap.parse_authorization(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "Basic",
        "Basic ",
        "Bearer",
        "Bearer a b",
        "Bearer abc=def",
        "Bearer ab\x00c",
        "Basic !!!!",
        "Basic Ym9iOnMzY3JldA",  # missing padding
        "Basic Ym9i OnMzY3JldA==",
        "Basic Ym9iOnMzY3JldA==Ym9i",  # data after padding
        basic("bobs3cret"),  # no colon
        basic(":s3cret"),  # empty user
        basic("bob:"),  # empty password
        basic("bob:s3c\nret"),
        basic("bo\x7fb:x"),
        "Basic " + base64.b64encode(b"bob:\xff\xfe").decode(),  # not UTF-8
        "Bearer " + "a" * 5000,
        basic("bob:" + "x" * 4000),
    ],
)
def test_parse_authorization_rejects(header: str) -> None:
    """A Basic or Bearer header that is present but malformed raises InvalidAuthorization."""
    with pytest.raises(InvalidAuthorization) as info:
        ap.parse_authorization(header)
    assert isinstance(info.value, AuthFailed)
    assert info.value.reason


def test_credentials_repr_hides_secret() -> None:
    """The secret never appears in a repr (and so in a log line or traceback)."""
    assert "s3cret" not in repr(Credentials("basic", "bob", "s3cret"))


@pytest.mark.parametrize(
    ("host", "domains", "allowed"),
    [
        ("app.example.com", (), True),
        ("app.example.com", ("app.example.com",), True),
        ("APP.example.com", ("app.example.com",), True),
        ("other.example.com", ("app.example.com",), False),
        ("app.example.com", ("*.example.com",), True),
        ("a.b.example.com", ("*.example.com",), True),
        ("example.com", ("*.example.com",), False),
        ("evilexample.com", ("*.example.com",), False),
        ("app.example.com.evil.test", ("*.example.com", "app.example.com"), False),
        ("dav.example.org", ("app.example.com", "dav.example.org"), True),
    ],
)
def test_domain_allowed(host: str, domains: tuple[str, ...], allowed: bool) -> None:
    """Exact or `*.` wildcard (never the apex) as in access rules; empty means any host."""
    assert ap.domain_allowed(host, domains) is allowed


def test_parse_domains_normalises() -> None:
    """Domains are lower-cased, stripped, de-duplicated and blanks dropped."""
    assert ap.parse_domains([" App.Example.com ", "", "*.example.org", "app.example.com"]) == (
        "app.example.com",
        "*.example.org",
    )


@pytest.mark.parametrize(
    "bad",
    ["https://app.example.com", "app.example.com:443", "app.example.com/x", "*.", "a..b", "-a.com", "*"],
)
def test_parse_domains_rejects(bad: str) -> None:
    """Anything but a host name or a `*.` wildcard is refused with the entry named."""
    with pytest.raises(ValueError, match="is not a host name"):
        ap.parse_domains([bad])


@pytest.mark.parametrize(
    ("name", "ok"),
    [("Thunderbird on laptop", True), ("", False), ("  ", False), ("x" * 65, False), ("a\nb", False)],
)
def test_validate_name(name: str, ok: bool) -> None:
    """Names are 1-64 characters without control characters."""
    assert (ap.validate_name(name) is None) is ok


def test_levels() -> None:
    """A token never counts for more than its creating session, nor than the configured level now."""
    assert ap.creation_level(Level.TWO_FACTOR, Level.ONE_FACTOR) is Level.ONE_FACTOR
    assert ap.creation_level(Level.ONE_FACTOR, Level.TWO_FACTOR) is Level.ONE_FACTOR
    assert ap.creation_level(Level.TWO_FACTOR, Level.TWO_FACTOR) is Level.TWO_FACTOR
    assert ap.effective_level(Level.TWO_FACTOR, Level.ONE_FACTOR) is Level.ONE_FACTOR


# -- check_app_password ---------------------------------------------------------------------------

TOKEN = ap.generate_token()
BOB = User(
    id=1,
    username="bob",
    email="Bob@Example.com",
    display_name="Bob",
    groups=(),
    disabled=False,
    created_at=0.0,
)


def record(**overrides: object) -> AppPassword:
    fields: dict[str, object] = {
        "id": 7,
        "user_id": 1,
        "token_id": ap.token_id_of(TOKEN),
        "name": "dav",
        "domains": (),
        "level": Level.TWO_FACTOR,
        "created_at": 0.0,
        "expires_at": None,
        "last_used_at": None,
        "last_used_ip": None,
        **overrides,
    }
    return AppPassword(**fields)  # type: ignore[arg-type]


def found(rec: AppPassword | None = None, user: User = BOB) -> tuple[AppPassword, User, str]:
    return (rec or record(), user, ap.hash_token(TOKEN, pepper=PEPPER))


def check(creds: Credentials, row: tuple[AppPassword, User, str] | None, host: str = "dav.example.com"):  # type: ignore[no-untyped-def]
    return ap.check_app_password(creds, row, pepper=PEPPER, host=host, now=100.0)


@pytest.mark.parametrize(
    "creds",
    [
        Credentials("bearer", None, TOKEN),
        Credentials("basic", "bob", TOKEN),
        Credentials("basic", "BOB", TOKEN),
        Credentials("basic", "bob@example.com", TOKEN),
    ],
)
def test_check_accepts(creds: Credentials) -> None:
    """A matching token passes as Bearer, or as Basic with the owner's username or e-mail in any case."""
    rec, user = check(creds, found())
    assert rec.id == 7 and user is BOB


@pytest.mark.parametrize(
    ("creds", "row", "error"),
    [
        (Credentials("bearer", None, TOKEN), None, ap.InvalidAppPassword),
        (Credentials("bearer", None, ap.generate_token()), found(), ap.InvalidAppPassword),
        (Credentials("basic", "alice", TOKEN), found(), ap.InvalidAppPassword),
        (Credentials("bearer", None, TOKEN), found(record(expires_at=100.0)), ap.AppPasswordExpired),
        (
            Credentials("bearer", None, TOKEN),
            found(user=dataclasses.replace(BOB, disabled=True)),
            ap.InvalidAppPassword,
        ),
        (
            Credentials("bearer", None, TOKEN),
            found(record(domains=("app.example.com",))),
            ap.AppPasswordDomainRefused,
        ),
    ],
)
def test_check_refuses(
    creds: Credentials, row: tuple[AppPassword, User, str] | None, error: type[Exception]
) -> None:
    """Unknown, wrong, another user's, expired, disabled account, other domain: each its own reason."""
    with pytest.raises(error):
        check(creds, row)


def test_check_domain_refusal_is_not_invalid() -> None:
    """A valid token on the wrong host is a 403 case, not a wrong credential (no brute-force count)."""
    assert not issubclass(ap.AppPasswordDomainRefused, ap.InvalidAppPassword)
    assert issubclass(ap.AppPasswordExpired, ap.InvalidAppPassword)


def test_check_expiry_in_future_passes() -> None:
    """A token expiring after now is accepted."""
    check(Credentials("bearer", None, TOKEN), found(record(expires_at=100.5)))


# -- configuration ---------------------------------------------------------------------------------


def test_config_defaults() -> None:
    """Tokens count as two factors, 50 per user, no expiry, re-auth after 10 min; admins after 5 min."""
    config = parse_config({})
    assert config.app_passwords == AppPasswordsConfig(Level.TWO_FACTOR, 50, 0.0, 600.0)
    assert config.admin.reauth_after == 300.0


def test_config_values_and_environment() -> None:
    """Levels, durations and counts parse from the file and from AUTHGATE_* variables."""
    config = parse_config(
        {"app_passwords": {"level": "ONE_FACTOR", "default_expiry": "90d"}, "admin": {"reauth_after": "1m"}},
        {"AUTHGATE_APP_PASSWORDS_MAX_PER_USER": "5", "AUTHGATE_APP_PASSWORDS_REAUTH_AFTER": "30s"},
    )
    assert config.app_passwords == AppPasswordsConfig(Level.ONE_FACTOR, 5, 90 * 86400.0, 30.0)
    assert config.admin.reauth_after == 60.0


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"app_passwords": {"level": "bypass"}}, "app_passwords.level"),
        ({"app_passwords": {"level": "deny"}}, "app_passwords.level"),
        ({"app_passwords": {"max_per_user": 0}}, "app_passwords.max_per_user"),
        ({"app_passwords": {"max_per_user": 1001}}, "app_passwords.max_per_user"),
        ({"app_passwords": {"default_expiry": "-1"}}, "app_passwords.default_expiry"),
        ({"app_passwords": {"reauth_after": 0}}, "app_passwords.reauth_after"),
        ({"app_passwords": {"reauth_after": "2d"}}, "app_passwords.reauth_after"),
        ({"app_passwords": {"cache_ttl": "5s"}}, "app_passwords.cache_ttl"),
        ({"admin": {"reauth_after": "soon"}}, "admin.reauth_after"),
    ],
)
def test_config_errors_name_the_key(data: dict[str, object], path: str) -> None:
    """Bad values are refused with their key path (there is no separate token cache setting)."""
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert path in [where for where, _ in info.value.problems]
