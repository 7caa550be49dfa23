"""Plain data passed between the pure core, storage and the handlers."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

IPAddress = IPv4Address | IPv6Address


class Policy(enum.Enum):
    """What an access rule demands; ordered from least to most restrictive."""

    BYPASS = "bypass"
    ONE_FACTOR = "one_factor"
    TWO_FACTOR = "two_factor"
    DENY = "deny"


class Level(enum.IntEnum):
    """How strongly a session proved who it is."""

    ANONYMOUS = 0
    ONE_FACTOR = 1
    TWO_FACTOR = 2


@dataclass(frozen=True, slots=True)
class OriginalRequest:
    """The request the proxy is asking about, as reconstructed from trusted headers."""

    method: str  # upper case, e.g. "GET"
    scheme: str  # "http" or "https"
    host: str  # lower case, IDNA-encoded, without port
    port: int | None  # None when the default for the scheme
    path: str  # percent-decoded path, always starts with "/"
    query: str  # raw query string without "?"
    client_ip: IPAddress

    @property
    def url(self) -> str:
        """Rebuild the URL as the client asked for it (raw path, for redirects)."""
        netloc = self.host if self.port is None else f"{self.host}:{self.port}"
        query = f"?{self.query}" if self.query else ""
        return f"{self.scheme}://{netloc}{self.raw_path}{query}"

    raw_path: str = "/"  # path exactly as sent (still percent-encoded)
    # Why an upstream may read the path as another one (";" parameter, backslash, encoded
    # slash ...; gateway.authz.paths), None when it is unambiguous.
    ambiguity: str | None = None


SOURCE_LOCAL = "local"
SOURCE_LDAP = "ldap"


@dataclass(frozen=True, slots=True)
class User:
    """An account as stored; the password hash never leaves storage in this object."""

    id: int
    username: str
    email: str
    display_name: str
    groups: tuple[str, ...]
    disabled: bool
    created_at: float
    password_login: bool = True  # False: WebAuthn-only account, the password form is refused
    source: str = "local"  # "local" | "ldap": where the profile, groups and password live

    @property
    def from_directory(self) -> bool:
        return self.source == SOURCE_LDAP


@dataclass(frozen=True, slots=True)
class Subject:
    """Who is asking, as far as access rules care."""

    username: str
    groups: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A server-side session row."""

    id_hash: str  # sha256 hex of the random session id; the id itself is never stored
    user_id: int
    level: Level
    created_at: float
    authenticated_at: float  # last time a factor was checked (for re-authentication)
    last_active: float
    expires_at: float  # absolute end, from `expiration` or `remember_me`
    remember_me: bool
    ip: str
    user_agent: str


@dataclass(frozen=True, slots=True)
class TotpDevice:
    """A user's TOTP authenticator; the secret stays sealed (see gateway.factors.secretbox)."""

    id: int
    user_id: int
    name: str
    secret_sealed: str
    digits: int
    period: int
    algorithm: str  # "SHA1" | "SHA256" | "SHA512"
    last_step: int | None  # last accepted time step; codes for steps <= this are refused
    created_at: float
    last_used_at: float | None


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """Something that happened to a user's account that they (and admins) should be able to see."""

    id: int
    user_id: int
    event: str  # e.g. "recovery_code_used", "totp_added", "second_factors_reset"
    detail: str
    ip: str
    at: float


@dataclass(frozen=True, slots=True)
class WebAuthnCredential:
    """A user's registered security key or passkey (public data only; the private key never leaves it)."""

    id: int
    user_id: int
    credential_id: bytes
    public_key: bytes  # COSE_Key
    sign_count: int  # last signature counter seen; 0 for authenticators without one
    transports: tuple[str, ...]  # "usb", "nfc", "ble", "internal", "hybrid" ... as the browser reported
    aaguid: str  # authenticator model, "00000000-0000-0000-0000-000000000000" when not disclosed
    backup_eligible: bool  # a multi-device (synced) passkey
    backed_up: bool  # currently backed up, as of the last use
    device_type: str  # "single_device" | "multi_device"
    name: str  # chosen by the user; unique per user in any (ASCII) case
    created_at: float
    last_used_at: float | None


@dataclass(frozen=True, slots=True)
class AppPassword:
    """A user's app password (access token) for non-browser clients; its hash stays in storage."""

    id: int
    user_id: int
    token_id: str  # public lookup id embedded in the token (gateway.factors.app_passwords)
    name: str  # chosen by the user, e.g. "Thunderbird on laptop"; unique per user among live tokens
    domains: tuple[str, ...]  # hosts (or *. wildcards) it works on; empty = any
    level: Level  # what it counts as at forward-auth (capped by app_passwords.level when used)
    created_at: float
    expires_at: float | None  # None = never
    last_used_at: float | None
    last_used_ip: str | None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One row of the append-only audit log."""

    id: int
    at: float
    event: str  # one of the names in gateway.accounts.audit
    actor: str | None  # username who did it; "cli" for the command line; None when unknown
    target: str | None  # username it was done to, if any
    ip: str | None  # client address; None for the command line
    detail: str  # short human text, never a secret


@dataclass(frozen=True, slots=True)
class AttemptSlot:
    """What the store's reserve_attempt decided: a recorded failure row to settle later, or a ban."""

    attempt_id: int | None  # the failure row recorded for this attempt; None when refused
    banned_until: float | None  # when refused: when the longer of the two bans ends


@dataclass(frozen=True, slots=True)
class ExternalLink:
    """A sign-in identity at an external provider linked to a local account (docs/external-login.md)."""

    id: int
    provider: str  # the provider's id in external_login.providers
    subject: str  # the provider's stable user id (OIDC `sub`, GitHub's numeric id)
    user_id: int
    email: str  # the e-mail the provider gave when the link was made, for display only
    created_at: float
    last_used_at: float | None
