"""The relying parties (clients) declared in the configuration, and the rules their URLs follow.

Pure: the configuration parser calls the *_problem functions and reports what they say
under the key path; nothing here reads files or the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import ip_address
from urllib.parse import urlsplit

from gateway.models import Level

SCOPES = ("openid", "profile", "email", "groups", "offline_access")
DEFAULT_SCOPES = ("openid", "profile", "email", "groups")
GRANT_TYPES = ("authorization_code", "refresh_token")
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
SIGNING_ALGS = ("RS256", "ES256")
CONSENT_MODES = ("explicit", "implicit")
# A hash the configuration may hold instead of a client secret (gateway.factors.passwords).
SECRET_HASH_PREFIXES = ("$argon2id$", "$argon2i$", "$argon2d$")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._~-]{1,100}")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class OidcClient:
    client_id: str
    client_name: str = ""
    client_secret_hash: str = field(default="", repr=False)  # argon2 hash; "" for a public client
    public: bool = False
    redirect_uris: tuple[str, ...] = ()
    post_logout_redirect_uris: tuple[str, ...] = ()
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    grant_types: tuple[str, ...] = ("authorization_code",)
    authorization_policy: Level = Level.TWO_FACTOR
    token_endpoint_auth_method: str = "client_secret_basic"  # noqa: S105 - a method name
    id_token_signed_response_alg: str = "RS256"  # noqa: S105 - an algorithm name
    consent: str = "explicit"  # "implicit": trusted first-party app, no consent screen
    require_pkce: bool = False  # always required for public clients
    # None: the oidc_provider section's lifetime
    access_token_lifespan: float | None = None
    id_token_lifespan: float | None = None
    refresh_token_lifespan: float | None = None

    @property
    def name(self) -> str:
        return self.client_name or self.client_id

    @property
    def pkce_required(self) -> bool:
        return self.public or self.require_pkce


@dataclass(frozen=True)
class OidcProviderConfig:
    # Where the provider lives, e.g. https://auth.example.com; "" = the first portal_url.
    issuer: str = ""
    clients: tuple[OidcClient, ...] = ()
    access_token_lifespan: float = 3600.0
    id_token_lifespan: float = 3600.0
    refresh_token_lifespan: float = 30 * 86400.0
    authorization_code_lifespan: float = 60.0
    # How long a retired signing key stays in the JWKS after rotation (>= token lifetimes).
    key_retention: float = 86400.0

    @property
    def enabled(self) -> bool:
        return bool(self.clients)

    def client(self, client_id: str) -> OidcClient | None:
        for client in self.clients:
            if client.client_id == client_id:
                return client
        return None


def client_id_problem(client_id: str) -> str | None:
    """Say what is wrong with a client id, or None."""
    if not _CLIENT_ID.fullmatch(client_id):
        return "is not a client id; use 1-100 letters, digits and . _ ~ -"
    return None


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def redirect_uri_problem(uri: str) -> str | None:
    """Say what is wrong with a registered redirect (or post-logout) URI, or None.

    Registered URIs are matched exactly, so anything that would make "exactly" ambiguous
    (a wildcard, a fragment, user info) is refused; http only for loopback (RFC 8252).
    """
    if "*" in uri:
        return "contains a wildcard; register every redirect URI in full (they are matched exactly)"
    if any(ch.isspace() or ord(ch) < 0x20 for ch in uri):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return "is not a valid URL (bad host or port)"
    del port
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an absolute http(s) URL like https://app.example.com/callback"
    if "#" in uri:
        return "has a fragment (#...); redirect URIs must not (RFC 6749 3.1.2)"
    if parts.username is not None or parts.password is not None:
        return "must not contain user:password@"
    if parts.scheme != "https" and not is_loopback_host(parts.hostname):
        return "must use https (http is allowed only for localhost, 127.0.0.1 and ::1)"
    return None


def issuer_problem(issuer: str) -> str | None:
    """Say what is wrong with an issuer URL, or None (OpenID Connect Discovery 1.0, 3)."""
    try:
        parts = urlsplit(issuer)
        parts.port  # noqa: B018 - the property raises on a bad port
    except ValueError:
        return "is not a valid URL (bad host or port)"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an absolute https URL like https://auth.example.com"
    if parts.query or parts.fragment or "?" in issuer or "#" in issuer:
        return "must not have a query or fragment"
    if parts.username is not None:
        return "must not contain user:password@"
    if parts.scheme != "https" and not (
        is_loopback_host(parts.hostname) or parts.hostname.endswith(".localhost")
    ):
        return "must use https (http is allowed only for localhost)"
    return None


def secret_hash_problem(value: str) -> str | None:
    """Say what is wrong with a configured client secret, never echoing it; None for a hash."""
    if value.startswith(SECRET_HASH_PREFIXES):
        return None
    return (
        "is not a hashed secret; store an argon2 hash (run `authgate oidc hash-secret`), "
        "never the secret itself"
    )
