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


# Authentication method references (RFC 8176) a session records, for the ID token's amr.
AMR_PASSWORD = "pwd"  # noqa: S105 - a method name
AMR_OTP = "otp"  # a TOTP or recovery code
AMR_HARDWARE_KEY = "hwk"  # a security key or passkey
AMR_USER_VERIFIED = "user"  # the authenticator verified its user (PIN or biometrics)
AMR_MFA = "mfa"


def merge_amr(before: tuple[str, ...], *added: str) -> tuple[str, ...]:
    """Return the methods of `before` plus `added` (no repeats), with mfa when two kinds were used."""
    methods = [m for m in dict.fromkeys((*before, *added)) if m != AMR_MFA]
    kinds = {m for m in methods if m in (AMR_PASSWORD, AMR_OTP, AMR_HARDWARE_KEY)}
    user_verified_key = AMR_HARDWARE_KEY in kinds and AMR_USER_VERIFIED in methods
    if len(kinds) >= 2 or user_verified_key:
        methods.append(AMR_MFA)
    return tuple(methods)


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
    # Which factors were passed, as RFC 8176 values ("pwd", "otp", "hwk", "mfa"); () if unknown.
    amr: tuple[str, ...] = ()


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


@dataclass(frozen=True, slots=True)
class OidcGrant:
    """What a user allowed a relying party in one authorization (gateway/oidc/)."""

    id: str
    client_id: str
    user_id: int
    scopes: tuple[str, ...]
    session_hash: str  # the portal session it was granted in
    auth_time: float
    amr: tuple[str, ...]
    acr: str
    nonce: str  # "" when the request had none
    created_at: float
    expires_at: float
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class OidcCode:
    """An authorization code as stored (its digest is the key; the code itself is never stored)."""

    code_hash: str
    grant_id: str
    redirect_uri: str
    code_challenge: str  # "" when the request had none
    expires_at: float


@dataclass(frozen=True, slots=True)
class OidcToken:
    """A refresh token's digest or an access token's jti, with what it belongs to."""

    token_hash: str
    kind: str  # "access" | "refresh"
    grant_id: str
    issued_at: float
    expires_at: float
    used_at: float | None = None
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class OidcConsent:
    """A remembered consent: the scopes a user allowed a client without being asked again."""

    user_id: int
    client_id: str
    scopes: tuple[str, ...]
    granted_at: float
