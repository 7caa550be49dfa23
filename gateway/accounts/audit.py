"""The audit log: security events written once to storage and once to the structured log.

The table is append-only: the store offers insert and select (plus `prune_audit` for a configured
retention), and a trigger refuses any UPDATE. Details are short human text and never hold a
secret (no password, token, code or cookie): the log line carries the same fields as the row.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

from gateway.logs import log_event
from gateway.models import AuditEvent

# -- sign-in -----------------------------------------------------------------
LOGIN_SUCCEEDED: Final = "login_succeeded"
LOGIN_FAILED: Final = "login_failed"
LOGIN_BANNED: Final = "login_banned"
LOGOUT: Final = "logout"
SECOND_FACTOR_SUCCEEDED: Final = "second_factor_succeeded"
SECOND_FACTOR_FAILED: Final = "second_factor_failed"
REAUTH_SUCCEEDED: Final = "reauth_succeeded"
REAUTH_FAILED: Final = "reauth_failed"
# -- sign-in through external providers (docs/external-login.md); detail names the provider --
EXTERNAL_LOGIN_SUCCEEDED: Final = "external_login_succeeded"
EXTERNAL_LOGIN_FAILED: Final = "external_login_failed"
EXTERNAL_ACCOUNT_LINKED: Final = "external_account_linked"
EXTERNAL_ACCOUNT_UNLINKED: Final = "external_account_unlinked"
EXTERNAL_ACCOUNT_CREATED: Final = "external_account_created"
# -- factors and recovery ----------------------------------------------------
ACCOUNT_CREATED: Final = "account_created"  # the first account, made on the setup page
PASSWORD_CHANGED: Final = "password_changed"  # noqa: S105 - an event name
TOTP_ADDED: Final = "totp_added"
TOTP_REMOVED: Final = "totp_removed"
WEBAUTHN_ADDED: Final = "webauthn_added"
WEBAUTHN_REVOKED: Final = "webauthn_revoked"
RECOVERY_CODES_GENERATED: Final = "recovery_codes_generated"
RECOVERY_CODE_USED: Final = "recovery_code_used"
ACCOUNT_RECOVERY_REQUESTED: Final = "account_recovery_requested"
ACCOUNT_RECOVERED: Final = "account_recovered"
PASSWORD_LOGIN_ENABLED: Final = "password_login_enabled"  # noqa: S105 - an event name
PASSWORD_LOGIN_DISABLED: Final = "password_login_disabled"  # noqa: S105 - an event name
# -- app passwords and sessions ----------------------------------------------
TOKEN_CREATED: Final = "token_created"  # noqa: S105 - an event name
TOKEN_REVOKED: Final = "token_revoked"  # noqa: S105 - an event name
# token_used: record the first use after start-up or a quiet hour, not every request
TOKEN_USED: Final = "token_used"  # noqa: S105 - an event name
TOKEN_FAILED: Final = "token_failed"  # noqa: S105 - an event name
SESSION_REVOKED: Final = "session_revoked"
SESSIONS_REVOKED: Final = "sessions_revoked"  # "sign out everywhere else"
# -- administration (actor = the admin's username, or "cli") -----------------
ADMIN_USER_CREATED: Final = "admin_user_created"
ADMIN_USER_MODIFIED: Final = "admin_user_modified"
ADMIN_USER_DISABLED: Final = "admin_user_disabled"
ADMIN_USER_ENABLED: Final = "admin_user_enabled"
ADMIN_USER_DELETED: Final = "admin_user_deleted"
ADMIN_PASSWORD_SET: Final = "admin_password_set"  # noqa: S105 - an event name
ADMIN_PASSWORD_RESET_SENT: Final = "admin_password_reset_sent"  # noqa: S105 - an event name
ADMIN_SECOND_FACTORS_RESET: Final = "admin_second_factors_reset"
ADMIN_SESSION_REVOKED: Final = "admin_session_revoked"
ADMIN_SESSIONS_REVOKED: Final = "admin_sessions_revoked"
ADMIN_TOKEN_REVOKED: Final = "admin_token_revoked"  # noqa: S105 - an event name
ADMIN_TOKENS_REVOKED: Final = "admin_tokens_revoked"  # noqa: S105 - an event name
ADMIN_AUDIT_EXPORTED: Final = "admin_audit_exported"
ADMIN_EXTERNAL_UNLINKED: Final = "admin_external_unlinked"  # a linked sign-in provider removed
# -- OpenID Provider (gateway/oidc/) -----------------------------------------
OIDC_CONSENT_GRANTED: Final = "oidc_consent_granted"
OIDC_CONSENT_REVOKED: Final = "oidc_consent_revoked"
OIDC_TOKENS_ISSUED: Final = "oidc_tokens_issued"  # noqa: S105 - an event name
OIDC_TOKEN_REVOKED: Final = "oidc_token_revoked"  # noqa: S105 - an event name
OIDC_GRANT_REVOKED: Final = "oidc_grant_revoked"  # reuse of a code or refresh token, or logout
OIDC_CLIENT_AUTH_FAILED: Final = "oidc_client_auth_failed"
OIDC_KEYS_ROTATED: Final = "oidc_keys_rotated"

CLI_ACTOR: Final = "cli"
MAX_DETAIL_LENGTH: Final = 500

# Logged as warnings: someone may be attacking, or an account changed hands.
_WARNING_EVENTS: Final = frozenset(
    {
        LOGIN_FAILED,
        LOGIN_BANNED,
        SECOND_FACTOR_FAILED,
        REAUTH_FAILED,
        TOKEN_FAILED,
        ACCOUNT_RECOVERED,
        RECOVERY_CODE_USED,
        TOTP_REMOVED,
        WEBAUTHN_REVOKED,
        ADMIN_SECOND_FACTORS_RESET,
        ADMIN_USER_DELETED,
        EXTERNAL_LOGIN_FAILED,
        EXTERNAL_ACCOUNT_LINKED,
        EXTERNAL_ACCOUNT_UNLINKED,
        OIDC_GRANT_REVOKED,
        OIDC_CLIENT_AUTH_FAILED,
    }
)


class AuditStore(Protocol):
    async def add_audit(
        self,
        *,
        at: float,
        event: str,
        actor: str | None,
        target: str | None,
        ip: str | None,
        detail: str = "",
    ) -> int: ...


class EventCounter(Protocol):
    def audit_event(self, event: str, detail: str) -> None: ...


class AuditLog:
    """Record security events in the audit table and the structured log (and count them)."""

    def __init__(
        self,
        store: AuditStore,
        *,
        clock: Callable[[], float] = time.time,
        counter: EventCounter | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        # Every sign-in step is recorded here, so this is where the metrics count them.
        self.counter = counter

    async def record(
        self,
        event: str,
        *,
        actor: str | None,
        target: str | None = None,
        ip: str | None = None,
        detail: str = "",
        at: float | None = None,
    ) -> AuditEvent:
        """Write one audit row and the same as a log line; return the row."""
        when = self.clock() if at is None else at
        if self.counter is not None:
            # Before the write: a sign-in step counts even when the database refuses its row.
            self.counter.audit_event(event, detail)
        # Bounded and single-line, so a caller passing user input cannot flood the table or forge lines.
        detail = " ".join(detail.split())[:MAX_DETAIL_LENGTH]
        row_id = await self.store.add_audit(
            at=when, event=event, actor=actor, target=target, ip=ip, detail=detail
        )
        recorded = AuditEvent(
            id=row_id, at=when, event=event, actor=actor, target=target, ip=ip, detail=detail
        )
        level = logging.WARNING if event in _WARNING_EVENTS else logging.INFO
        log_event(event, level, audit_id=row_id, actor=actor, target=target, client_ip=ip, detail=detail)
        return recorded


def iso_time(at: float) -> str:
    """Format a timestamp as UTC ISO 8601 with milliseconds, e.g. 2025-01-31T12:00:00.250Z."""
    whole = int(at)
    millis = int(round((at - whole) * 1000))
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def to_json_line(event: AuditEvent) -> str:
    """Return the event as one JSON object on one line (for `authgate audit export`)."""
    return json.dumps(
        {
            "id": event.id,
            "at": iso_time(event.at),
            "timestamp": event.at,
            "event": event.event,
            "actor": event.actor,
            "target": event.target,
            "ip": event.ip,
            "detail": event.detail,
        },
        ensure_ascii=True,  # no raw U+2028 etc.: every reader splits the lines alike
        separators=(",", ":"),
    )
