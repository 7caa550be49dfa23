"""App passwords (personal access tokens) for clients that only speak HTTP Basic or Bearer (pure).

A token reads `agp_` + 8 characters of public lookup id + 40 characters of secret, all base62:
the id finds the row without scanning, the secret (about 238 bits) makes guessing hopeless, and
the prefix lets secret scanners spot a leaked token. Being high-entropy, a token needs no slow
hash: a keyed HMAC-SHA256 (pepper kept outside the database) is enough, and keeps the
forward-auth hot path cheap. Only that hash is stored; the token is shown once.

Outcomes follow the house rule: None = absent or not ours, an exception = present but invalid,
a value = valid.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.errors import AuthFailed
from gateway.models import AppPassword, Level, User

PREFIX = "agp_"
ID_LENGTH = 8
SECRET_LENGTH = 40
TOKEN_LENGTH = len(PREFIX) + ID_LENGTH + SECRET_LENGTH
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PEPPER_PURPOSE = "app-password-pepper"  # gateway.factors.secretbox.derive_key(root, purpose=...)
MAX_HEADER_LENGTH = 4096
MAX_NAME_LENGTH = 64
MAX_DOMAINS = 32

_HASH_PREFIX = "hs256$"
_TOKEN_RE = re.compile(rf"{PREFIX}[0-9A-Za-z]{{{ID_LENGTH + SECRET_LENGTH}}}")
# RFC 9110 token68, the syntax of a Bearer credential
_TOKEN68_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# Compared against when the token id is unknown, so an unknown id costs the same as a wrong secret.
_DUMMY_HASH = _HASH_PREFIX + "0" * 64


class InvalidAuthorization(AuthFailed):
    """An Authorization header is present but malformed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class InvalidAppPassword(AuthFailed):
    """A token was presented but is unknown, wrong, revoked, not the named user's, or the account is off."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class AppPasswordExpired(InvalidAppPassword):
    """The token was valid but its expiry has passed."""


class AppPasswordDomainRefused(AuthFailed):
    """A valid token used on a host it is not limited to (answer 403, not a brute-force failure)."""

    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__(f"this app password is not allowed on {host}")


@dataclass(frozen=True, slots=True)
class Credentials:
    """What an Authorization header carried."""

    kind: str  # "basic" | "bearer"
    username: str | None  # the Basic user-id as sent; None for bearer
    secret: str = field(repr=False)


def generate_token() -> str:
    """Return a new token: the prefix, a public lookup id and a 238-bit secret."""
    body = "".join(secrets.choice(ALPHABET) for _ in range(ID_LENGTH + SECRET_LENGTH))
    return PREFIX + body


def token_id_of(token: str) -> str | None:
    """Return the public lookup id inside a token, or None when the text is not shaped like a token."""
    if len(token) != TOKEN_LENGTH or not _TOKEN_RE.fullmatch(token):
        return None
    return token[len(PREFIX) : len(PREFIX) + ID_LENGTH]


def hash_token(token: str, *, pepper: bytes) -> str:
    """Return the stored form of a token: HMAC-SHA256 under `pepper`."""
    if len(pepper) < 16:
        raise ValueError("the pepper must be at least 16 bytes")
    return _HASH_PREFIX + hmac.new(pepper, token.encode("utf-8"), hashlib.sha256).hexdigest()


def verify_token(token: str, stored_hash: str, *, pepper: bytes) -> bool:
    """True when `token` hashes to `stored_hash`; compared in constant time."""
    candidate = hash_token(token, pepper=pepper).encode("ascii")
    return hmac.compare_digest(candidate, stored_hash.encode("ascii", "replace"))


def parse_authorization(header: str | None) -> Credentials | None:
    """Read Basic or Bearer credentials; None when absent or another scheme, InvalidAuthorization if bad."""
    if header is None or not header.strip():
        return None
    if len(header) > MAX_HEADER_LENGTH:
        raise InvalidAuthorization(f"Authorization header longer than {MAX_HEADER_LENGTH} characters")
    scheme, _, rest = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in ("basic", "bearer"):
        return None  # Digest, Negotiate ...: not ours; the session cookie may still apply
    param = rest.lstrip(" ")
    if not param:
        raise InvalidAuthorization(f"{scheme} credentials are missing")
    if not _TOKEN68_RE.fullmatch(param):
        raise InvalidAuthorization(f"{scheme} credentials are not a single token68 value")
    if scheme == "bearer":
        return Credentials(kind="bearer", username=None, secret=param)
    return _parse_basic(param)


def _parse_basic(param: str) -> Credentials:
    try:
        raw = binascii.a2b_base64(param.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidAuthorization("Basic credentials are not valid base64") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidAuthorization("Basic credentials are not UTF-8") from exc
    username, colon, secret = text.partition(":")
    if not colon:
        raise InvalidAuthorization("Basic credentials lack the ':' between user and password")
    if not username:
        raise InvalidAuthorization("Basic credentials have an empty user name")
    if not secret:
        raise InvalidAuthorization("Basic credentials have an empty password")
    if _CONTROL_RE.search(text):
        raise InvalidAuthorization("Basic credentials contain control characters")
    return Credentials(kind="basic", username=username, secret=secret)


def domain_allowed(host: str, allowed_domains: Sequence[str]) -> bool:
    """True when `host` is a listed domain or under a `*.` wildcard (never its apex); empty = any."""
    if not allowed_domains:
        return True
    host = host.lower()
    for domain in allowed_domains:
        if domain.startswith("*."):
            if host.endswith(domain[1:]):
                return True
        elif host == domain:
            return True
    return False


def parse_domains(items: Iterable[str]) -> tuple[str, ...]:
    """Normalise a token's domain list (host names or `*.` wildcards); ValueError naming the bad entry."""
    seen: dict[str, None] = {}
    for item in items:
        domain = item.strip().lower()
        if not domain:
            continue
        bare = domain.removeprefix("*.")
        if len(bare) > 253 or not _HOSTNAME_RE.fullmatch(bare):
            shown = item.strip()[:80]
            raise ValueError(f"{shown!r} is not a host name like app.example.com or *.example.com")
        seen[domain] = None
    if len(seen) > MAX_DOMAINS:
        raise ValueError(f"at most {MAX_DOMAINS} domains per app password")
    return tuple(seen)


def validate_name(name: str) -> str | None:
    """Return why a token name is not acceptable, or None."""
    if not name.strip() or len(name) > MAX_NAME_LENGTH:
        return f"name must be 1-{MAX_NAME_LENGTH} characters"
    if _CONTROL_RE.search(name):
        return "name must not contain control characters"
    return None


def creation_level(configured: Level, session_level: Level) -> Level:
    """Return the level a new token is stored with: never more than the session that created it."""
    return min(configured, session_level)


def effective_level(stored: Level, configured: Level) -> Level:
    """Return what a token counts as now; lowering the configured level applies to old tokens too."""
    return min(stored, configured)


def check_app_password(
    credentials: Credentials,
    found: tuple[AppPassword, User, str] | None,
    *,
    pepper: bytes,
    host: str,
    now: float,
) -> tuple[AppPassword, User]:
    """Check presented credentials against the row looked up by their token id; raise why they fail.

    `found` is Store.find_app_password(token_id_of(secret)) (possibly cached). Guards run in this
    order: known and matching hash, Basic user name (username or e-mail, any case), expiry,
    account enabled, domain limit.
    """
    if found is None:
        # Same HMAC work as a known id, so timing does not tell which ids exist.
        verify_token(credentials.secret, _DUMMY_HASH, pepper=pepper)
        raise InvalidAppPassword("unknown or revoked app password")
    record, user, stored_hash = found
    if not verify_token(credentials.secret, stored_hash, pepper=pepper):
        raise InvalidAppPassword("wrong app password")
    if credentials.username is not None:
        named = credentials.username.lower()
        if named != user.username and named != user.email.lower():
            raise InvalidAppPassword("app password belongs to another user")
    if record.expires_at is not None and record.expires_at <= now:
        raise AppPasswordExpired("app password expired")
    if user.disabled:
        raise InvalidAppPassword("account disabled")
    if not domain_allowed(host, record.domains):
        raise AppPasswordDomainRefused(host)
    return record, user
