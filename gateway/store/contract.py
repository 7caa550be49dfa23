"""The storage contract: what every engine (SQLite, PostgreSQL) offers its callers.

Services, portal views, the CLI and the app wiring type against `Storage`, never against
an engine's class; gateway/store/engine.py opens the engine the configuration names. The
protocols are split by area so a reader finds a method next to its neighbours. Every
engine gives each method the same semantics, including the atomic contracts spelled out
in the docstrings of gateway/store/sqlite.py (single-use codes and links, the attempt
reservation, the app-password cap, first-account setup); tests/unit/test_store*.py run
against both engines to hold them to it.

Revocations: an engine shared by several authgate instances (PostgreSQL) tells every
instance about sessions, users and app passwords that changed, so their caches drop the
entries at once rather than after `session.cache_ttl`. `subscribe_revocations` registers
the callback; an engine without such a channel (SQLite, one machine) never calls it and
the cache_ttl bound applies, as it does between `serve --workers N` processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.errors import Conflict
from gateway.models import (
    AppPassword,
    AttemptSlot,
    AuditEvent,
    ExternalLink,
    Level,
    OidcCode,
    OidcConsent,
    OidcGrant,
    OidcToken,
    SecurityEvent,
    SessionRecord,
    TotpDevice,
    User,
    WebAuthnCredential,
)


@dataclass(frozen=True, slots=True)
class UserOverview:
    """What the admin user list shows about an account besides the user row: counts only."""

    totp_devices: int
    webauthn_credentials: int
    recovery_codes_left: int
    sessions: int


class AppPasswordLimit(Conflict):
    """The user already has as many live app passwords as allowed."""


@dataclass(frozen=True, slots=True)
class Revocation:
    """Something another instance changed that cached answers may still reflect.

    kind "session": the session `key` (its id hash) ended.
    kind "user": user `key` (its id, as text) changed or lost sessions or tokens; `keep` is a
    session id hash that survives (the "sign out everywhere else" case), or "".
    kind "token": the app password with token id `key` was revoked.
    kind "all": revocations may have been missed (the channel was down); drop every cached answer.
    """

    kind: Literal["session", "user", "token", "all"]
    key: str
    keep: str = ""


RevocationListener = Callable[[Revocation], None]


class UserStore(Protocol):
    """Accounts: who exists, their profile, password hash and whether they may sign in."""

    async def create_user(
        self,
        username: str,
        email: str,
        display_name: str,
        groups: Sequence[str],
        password_hash: str | None,
    ) -> User:
        """Insert a user; Conflict when the username or e-mail is taken (case-insensitively)."""

    async def create_first_user(
        self,
        username: str,
        email: str,
        display_name: str,
        groups: Sequence[str],
        password_hash: str | None,
    ) -> User | None:
        """Insert a user only if there is none yet; None when another user already exists."""

    async def count_users(self) -> int:
        """Return how many users exist."""

    async def get_user(self, user_id: int) -> User | None:
        """Return the user with this id, or None."""

    async def get_user_by_name(self, username: str) -> User | None:
        """Return the user with this username (any case), or None."""

    async def find_login(self, login: str) -> tuple[User, str | None] | None:
        """Return the user whose username or e-mail is `login` (any case) and their password hash."""

    async def find_user_by_email(self, email: str) -> User | None:
        """Return the user with this e-mail address (any case), or None."""

    async def list_users(self) -> list[User]:
        """Return every user, ordered by username."""

    async def update_user(
        self,
        user_id: int,
        *,
        email: str | None = None,
        display_name: str | None = None,
        groups: Sequence[str] | None = None,
    ) -> User:
        """Change the given fields (None = keep); NotFound or Conflict (e-mail taken)."""

    async def set_password_hash(self, user_id: int, password_hash: str | None) -> None:
        """Replace the user's password hash (None makes the account passwordless); NotFound."""

    async def set_disabled(self, user_id: int, disabled: bool) -> None:
        """Disable or enable a user; disabling also ends all their sessions. NotFound."""

    async def delete_user(self, user_id: int) -> None:
        """Delete a user and (by cascade) their sessions; NotFound."""

    async def set_password_login(self, user_id: int, enabled: bool) -> None:
        """Allow or refuse password login for the account (False = WebAuthn only); NotFound."""

    async def search_users(self, query: str, limit: int = 50) -> list[User]:
        """Return users whose username, e-mail or display name contains `query` (ASCII case-insensitive)."""

    async def user_overview(self, now: float) -> dict[int, UserOverview]:
        """Return, by user id, counts of second factors and live sessions (one query, no secrets)."""

    async def upsert_directory_user(
        self,
        *,
        external_id: str,
        username: str,
        email: str,
        display_name: str,
        groups: Sequence[str],
        disabled: bool,
        stamp: str,
        checked_at: float,
    ) -> User:
        """Create or refresh a directory user's row by stable id; Conflict when a local user has the name."""

    async def directory_users_due(
        self, *, checked_before: float, now: float, limit: int = 100
    ) -> list[tuple[User, str, str]]:
        """Enabled directory users with a live session or app password, last checked before
        `checked_before`: (user, external id, password stamp), oldest check first."""

    async def directory_link(self, user_id: int) -> tuple[str, str] | None:
        """Return a directory user's (external id, password stamp); None for a local user."""

    async def set_directory_checked(self, user_id: int, checked_at: float) -> None:
        """Record that the directory was asked about a user (found or not)."""


class SessionStore(Protocol):
    """Browser sessions, looked up by the sha256 of the cookie's session id."""

    async def create_session(self, rec: SessionRecord) -> None:
        """Store a new session; NotFound when its user does not exist."""

    async def get_session(self, id_hash: str) -> tuple[SessionRecord, User] | None:
        """Return the session and its user in one query, or None."""

    async def read_session(self, id_hash: str) -> tuple[SessionRecord, User] | None:
        """Like get_session, but on the read-only connection: never waits behind writes."""

    async def read_sessions(self, id_hashes: Sequence[str]) -> dict[str, tuple[SessionRecord, User]]:
        """Read many sessions with their users in one query on the read-only connection."""

    async def delete_session(self, id_hash: str) -> bool:
        """Delete one session; False when it did not exist."""

    async def delete_user_sessions(self, user_id: int, *, keep_id_hash: str | None = None) -> int:
        """Delete a user's sessions except `keep_id_hash`; return how many were deleted."""

    async def list_user_sessions(self, user_id: int) -> list[SessionRecord]:
        """Return a user's sessions, newest first."""

    async def set_session_authenticated(self, id_hash: str, at: float) -> bool:
        """Record that the session's owner proved a factor again (re-authentication) at `at`."""

    async def touch_sessions(self, last_active: Mapping[str, float]) -> None:
        """Record activity times by session id hash; never moves last_active backwards."""

    async def count_active_sessions(self, now: float, *, idle_since: float | None) -> int:
        """Count sessions not expired and, unless remember-me, active after `idle_since` (None: any)."""

    async def delete_expired_sessions(self, now: float) -> int:
        """Delete sessions whose absolute end has passed; return how many."""


class AttemptStore(Protocol):
    """Login attempts, the input of regulation (bans)."""

    async def record_attempt(self, username: str, ip: str, success: bool, at: float) -> None:
        """Record one login attempt; the username is compared case-insensitively later."""

    async def reserve_attempt(
        self,
        username: str,
        ip: str,
        *,
        at: float,
        since: float,
        ban_end: Callable[[Sequence[float]], float | None] | None,
    ) -> AttemptSlot:
        """Record a failed attempt now, before the credential is checked, unless a ban refuses it."""

    async def mark_attempt_succeeded(self, attempt_id: int) -> None:
        """Turn a reserved attempt into a success (which wipes the failure slate, as before)."""

    async def withdraw_attempt(self, attempt_id: int) -> None:
        """Delete a reserved attempt that turned out neither a failure nor a finished login."""

    async def failures_since(
        self, *, username: str | None = None, ip: str | None = None, since: float
    ) -> list[float]:
        """Return failure times (ascending) after `since` and after the latest success, by username or ip."""

    async def failures_by_key(self, column: str, *, since: float) -> dict[str, list[float]]:
        """Failure times after `since` and after each key's latest success, by "username" or "ip"."""

    async def prune_attempts(self, before: float) -> int:
        """Delete attempts older than `before`; return how many."""


class FactorStore(Protocol):
    """TOTP devices, recovery codes and the factor a user last signed in with."""

    async def add_totp_device(
        self,
        user_id: int,
        *,
        name: str,
        secret_sealed: str,
        digits: int,
        period: int,
        algorithm: str,
        last_step: int | None = None,
    ) -> int:
        """Store a confirmed TOTP device and return its id; Conflict (name taken) or NotFound (user)."""

    async def list_totp_devices(self, user_id: int) -> list[TotpDevice]:
        """Return the user's TOTP devices, oldest first."""

    async def get_totp_device(self, user_id: int, device_id: int) -> TotpDevice | None:
        """Return the device if it exists and belongs to the user, else None."""

    async def rename_totp_device(self, user_id: int, device_id: int, name: str) -> None:
        """Rename one of the user's devices; NotFound, or Conflict when the name is taken."""

    async def delete_totp_device(self, user_id: int, device_id: int) -> None:
        """Delete one of the user's devices; NotFound."""

    async def use_totp_step(self, device_id: int, step: int, at: float) -> bool:
        """Record `step` as used if it is newer than the last used one; False if it is not (replay)."""

    async def replace_recovery_codes(self, user_id: int, hashes: Sequence[str]) -> None:
        """Replace the user's recovery codes with new hashes in one transaction; NotFound (user)."""

    async def unused_recovery_hashes(self, user_id: int) -> list[tuple[int, str]]:
        """Return (code id, hash) for each of the user's unused recovery codes."""

    async def use_recovery_code(self, code_id: int, at: float) -> bool:
        """Mark a recovery code used; False when it was already used or no longer exists."""

    async def count_unused_recovery_codes(self, user_id: int) -> int:
        """Return how many of the user's recovery codes are still unused."""

    async def second_factor_kinds(self, user_id: int) -> tuple[str, ...]:
        """Return the kinds of second factor the user can use now: "totp", "webauthn", "recovery"."""

    async def reset_second_factors(self, user_id: int) -> None:
        """Delete all the user's TOTP devices, WebAuthn credentials, recovery codes and factor preference."""

    async def set_last_method(self, user_id: int, method: str) -> None:
        """Remember the factor kind the user last signed in with; NotFound (user)."""

    async def get_last_method(self, user_id: int) -> str | None:
        """Return the factor kind the user last signed in with, or None."""


class WebAuthnStore(Protocol):
    """Security keys and passkeys, user handles and ceremony challenges."""

    async def get_or_create_user_handle(self, user_id: int) -> bytes:
        """Return the user's WebAuthn user handle, creating a random one on first use; NotFound (user)."""

    async def find_user_by_handle(self, handle: bytes) -> User | None:
        """Return the user a WebAuthn user handle belongs to, or None."""

    async def add_webauthn_credential(
        self,
        user_id: int,
        *,
        credential_id: bytes,
        public_key: bytes,
        sign_count: int,
        transports: Sequence[str],
        aaguid: str,
        backup_eligible: bool,
        backed_up: bool,
        device_type: str,
        name: str,
    ) -> int:
        """Store a verified credential and return its id; Conflict (id or name taken) or NotFound (user)."""

    async def list_webauthn_credentials(self, user_id: int) -> list[WebAuthnCredential]:
        """Return the user's security keys and passkeys, oldest first."""

    async def get_webauthn_credential_by_id(self, credential_id: bytes) -> WebAuthnCredential | None:
        """Return the credential with this raw credential id (whoever owns it), or None."""

    async def rename_webauthn_credential(self, user_id: int, cred_pk: int, name: str) -> None:
        """Rename one of the user's credentials; NotFound, or Conflict when the name is taken."""

    async def delete_webauthn_credential(self, user_id: int, cred_pk: int) -> None:
        """Delete (revoke) one of the user's credentials; NotFound."""

    async def delete_all_webauthn_credentials(self, user_id: int) -> int:
        """Delete every credential of the user; return how many."""

    async def update_webauthn_use(self, cred_pk: int, *, sign_count: int, backed_up: bool, at: float) -> None:
        """Record a successful assertion: the new counter (never lowered), backup state and time."""

    async def put_challenge(
        self, id_hash: str, *, purpose: str, challenge: bytes, user_id: int | None, expires_at: float
    ) -> None:
        """Keep a ceremony's challenge until taken or expired; NotFound (user)."""

    async def take_challenge(
        self, id_hash: str, *, purpose: str, now: float
    ) -> tuple[bytes, int | None] | None:
        """Remove a challenge and return (challenge, user id); None when unknown, expired or mis-purposed."""

    async def prune_challenges(self, now: float) -> int:
        """Delete expired challenges; return how many."""


class TokenStore(Protocol):
    """Single-use links (account recovery, password reset) and app passwords."""

    async def create_recovery_token(
        self, id_hash: str, user_id: int, *, created_at: float, expires_at: float
    ) -> None:
        """Store a recovery link's token hash; NotFound (user)."""

    async def use_recovery_token(self, id_hash: str, *, now: float) -> int | None:
        """Mark a recovery token used and return its user id; None when unknown, used or expired."""

    async def peek_recovery_token(self, id_hash: str, *, now: float) -> int | None:
        """Return the user id of a usable recovery token without using it up."""

    async def prune_recovery_tokens(self, before: float) -> int:
        """Delete recovery tokens that expired before `before`; return how many."""

    async def create_password_reset_token(
        self, id_hash: str, user_id: int, *, created_by: str, created_at: float, expires_at: float
    ) -> None:
        """Store a password reset link's token hash; NotFound (user)."""

    async def peek_password_reset_token(self, id_hash: str, *, now: float) -> int | None:
        """Return the user id of a usable password reset token without using it up."""

    async def use_password_reset_token(
        self, id_hash: str, *, now: float, password_hash: str | None = None
    ) -> int | None:
        """Use up a reset token (and every other unused one of its user); return the user id, or None."""

    async def prune_password_reset_tokens(self, before: float) -> int:
        """Delete password reset tokens that expired before `before`; return how many."""

    async def create_app_password(
        self,
        user_id: int,
        *,
        token_id: str,
        token_hash: str,
        name: str,
        domains: Sequence[str],
        level: Level,
        created_at: float,
        expires_at: float | None,
        max_per_user: int | None = None,
    ) -> int:
        """Store a new app password's hash and return its id."""

    async def find_app_password(self, token_id: str) -> tuple[AppPassword, User, str] | None:
        """Return the live (not revoked) app password with this token id, its user and stored hash."""

    async def read_app_password(self, token_id: str) -> tuple[AppPassword, User, str] | None:
        """Like find_app_password, but on the read-only connection (the forward-auth hot path)."""

    async def list_app_passwords(self, user_id: int) -> list[AppPassword]:
        """Return the user's live app passwords (expired ones included), newest first."""

    async def revoke_app_password(self, user_id: int, pk: int, at: float) -> bool:
        """Revoke one of the user's app passwords; False when it is not theirs or already revoked."""

    async def revoke_all_app_passwords(self, user_id: int, at: float) -> int:
        """Revoke every live app password of the user; return how many."""

    async def touch_app_passwords(self, updates: Mapping[int, tuple[float, str]]) -> None:
        """Record last use (time, client IP) by app password id, in one transaction; never moves back."""


class AuditStore(Protocol):
    """The append-only audit log and the per-user view of it."""

    async def add_audit(
        self,
        *,
        at: float,
        event: str,
        actor: str | None,
        target: str | None,
        ip: str | None,
        detail: str = "",
    ) -> int:
        """Append one audit row and return its id."""

    async def list_audit(
        self,
        *,
        actor: str | None = None,
        target: str | None = None,
        event: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AuditEvent]:
        """Return audit rows matching every given filter (None = any), newest first."""

    def iter_audit(self, since: float | None = None, *, page: int = 500) -> AsyncIterator[AuditEvent]:
        """Yield audit rows at or after `since`, oldest first (in insertion order), a page at a time."""

    async def prune_audit(self, before: float) -> int:
        """Delete audit rows older than `before`; only for audit.retention > 0. Return how many."""

    async def list_security_events(self, user_id: int, limit: int = 50) -> list[SecurityEvent]:
        """Return the user's most recent events, newest first."""


class ExternalLinkStore(Protocol):
    """Sign-in identities at external providers linked to local accounts (docs/external-login.md)."""

    async def find_external_link(self, provider: str, subject: str) -> tuple[ExternalLink, User] | None:
        """Return the link for (provider, subject) and its local user, or None."""

    async def add_external_link(
        self, user_id: int, provider: str, subject: str, *, email: str, at: float
    ) -> ExternalLink:
        """Link (provider, subject) to a user; Conflict when it is linked already, NotFound (user)."""

    async def list_external_links(self, user_id: int) -> list[ExternalLink]:
        """Return a user's links, oldest first."""

    async def delete_external_link(self, user_id: int, link_id: int) -> ExternalLink | None:
        """Remove one of the user's links; return it, or None when the user has no such link."""

    async def touch_external_link(self, link_id: int, at: float) -> None:
        """Record a sign-in through the link."""


class Lifecycle(Protocol):
    """Opening is engine-specific (gateway/store/engine.py); these end and probe a store."""

    async def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""

    async def ping(self) -> None:
        """Run a trivial query, raising StorageError when the database is unusable."""


class RevocationFeed(Protocol):
    """How cached answers hear about changes made by other instances."""

    def subscribe_revocations(self, listener: RevocationListener) -> None:
        """Call `listener` for each revocation made by any instance (this one included)."""

    @property
    def revocations_live(self) -> bool:
        """True while changes by other instances are heard at once (else cache_ttl bounds them)."""


class OidcStore(Protocol):
    """The OpenID Provider's grants, single-use codes, tokens and consents (gateway/oidc/)."""

    async def create_oidc_grant(self, grant: OidcGrant, code: OidcCode) -> None: ...

    async def redeem_oidc_code(
        self, code_hash: str, *, now: float, tokens: Callable[[OidcGrant, OidcCode], Sequence[OidcToken]]
    ) -> tuple[str, OidcGrant | None, OidcCode | None]: ...

    async def rotate_oidc_refresh_token(
        self, token_hash: str, *, now: float, tokens: Callable[[OidcGrant], Sequence[OidcToken]]
    ) -> tuple[str, OidcGrant | None]: ...

    async def find_oidc_token(self, token_hash: str) -> tuple[OidcToken, OidcGrant] | None: ...

    async def revoke_oidc_token(self, token_hash: str, *, now: float) -> bool: ...

    async def revoke_oidc_grant(self, grant_id: str, *, now: float, reason: str) -> bool: ...

    async def revoke_oidc_grants(
        self, user_id: int, client_id: str | None, *, now: float, reason: str
    ) -> int: ...

    async def get_oidc_consent(self, user_id: int, client_id: str) -> OidcConsent | None: ...

    async def put_oidc_consent(self, consent: OidcConsent) -> None: ...

    async def list_oidc_consents(self, user_id: int) -> list[OidcConsent]: ...

    async def delete_oidc_consent(self, user_id: int, client_id: str, *, now: float) -> bool: ...

    async def count_oidc_grants(self, now: float) -> dict[str, tuple[int, int]]: ...

    async def prune_oidc(self, now: float, *, code_grace: float = 600.0) -> int: ...


class Storage(
    UserStore,
    SessionStore,
    AttemptStore,
    FactorStore,
    WebAuthnStore,
    TokenStore,
    AuditStore,
    ExternalLinkStore,
    OidcStore,
    RevocationFeed,
    Lifecycle,
    Protocol,
):
    """Everything authgate keeps: the one interface callers use, whatever the engine."""

    # Database errors by kind (gateway.metrics.STORE_ERROR_KINDS), read by the metrics.
    error_counts: dict[str, int]
    # The engine's name, for logs and /api/health: "sqlite" or "postgres".
    engine: str
