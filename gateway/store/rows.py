"""Rows to models: the conversions every engine shares (sqlite3.Row and asyncpg.Record both fit).

Both engines keep the same columns with the same meaning (flags as 0/1 integers, lists as
JSON text, times as float seconds), so one function per model serves both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from gateway.models import (
    AppPassword,
    AuditEvent,
    ExternalLink,
    Level,
    OidcCode,
    OidcConsent,
    OidcGrant,
    OidcToken,
    SessionRecord,
    TotpDevice,
    User,
    WebAuthnCredential,
)


class Row(Protocol):
    """A result row: values by column name, and the column names."""

    def __getitem__(self, key: str, /) -> Any: ...

    def keys(self) -> Any: ...


def groups_json(groups: Sequence[str]) -> str:
    # A bare string is a Sequence[str] too, and would be stored as one group per letter.
    if isinstance(groups, str):
        raise TypeError("groups must be a sequence of group names, not a string")
    return json.dumps(list(groups))


def user_from_row(row: Row, *, prefix: str = "") -> User:
    login_key = f"{prefix}password_login"
    source_key = f"{prefix}source"
    keys = row.keys()
    return User(
        id=row[f"{prefix}id"],
        username=row[f"{prefix}username"],
        email=row[f"{prefix}email"],
        display_name=row[f"{prefix}display_name"],
        groups=tuple(json.loads(row[f"{prefix}groups"])),
        disabled=bool(row[f"{prefix}disabled"]),
        created_at=row[f"{prefix}created_at"],
        # absent from INSERT ... RETURNING: a new account always starts with password login
        password_login=bool(row[login_key]) if login_key in keys else True,
        source=row[source_key] if source_key in keys else "local",
    )


def session_from_row(row: Row) -> SessionRecord:
    return SessionRecord(
        id_hash=row["id_hash"],
        user_id=row["user_id"],
        level=Level(row["level"]),
        created_at=row["created_at"],
        authenticated_at=row["authenticated_at"],
        last_active=row["last_active"],
        expires_at=row["expires_at"],
        remember_me=bool(row["remember_me"]),
        ip=row["ip"],
        user_agent=row["user_agent"],
        amr=tuple(row["amr"].split()),
    )


def totp_from_row(row: Row) -> TotpDevice:
    return TotpDevice(
        id=row["id"],
        user_id=row["user_id"],
        name=row["name"],
        secret_sealed=row["secret_sealed"],
        digits=row["digits"],
        period=row["period"],
        algorithm=row["algorithm"],
        last_step=row["last_step"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
    )


def webauthn_from_row(row: Row) -> WebAuthnCredential:
    return WebAuthnCredential(
        id=row["id"],
        user_id=row["user_id"],
        credential_id=bytes(row["credential_id"]),
        public_key=bytes(row["public_key"]),
        sign_count=row["sign_count"],
        transports=tuple(json.loads(row["transports"])),
        aaguid=row["aaguid"],
        backup_eligible=bool(row["backup_eligible"]),
        backed_up=bool(row["backed_up"]),
        device_type=row["device_type"],
        name=row["name"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
    )


def app_password_from_row(row: Row) -> AppPassword:
    return AppPassword(
        id=row["id"],
        user_id=row["user_id"],
        token_id=row["token_id"],
        name=row["name"],
        domains=tuple(json.loads(row["domains"])),
        level=Level(row["level"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        last_used_at=row["last_used_at"],
        last_used_ip=row["last_used_ip"],
    )


def audit_from_row(row: Row) -> AuditEvent:
    return AuditEvent(
        id=row["id"],
        at=row["at"],
        event=row["event"],
        actor=row["actor"],
        target=row["target"],
        ip=row["ip"],
        detail=row["detail"],
    )


def escape_like(text: str) -> str:
    """Make `%`, `_` and the escape character itself match literally in a LIKE ... ESCAPE '\\' pattern."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def external_link_from_row(row: Row) -> ExternalLink:
    return ExternalLink(
        id=int(row["id"]),
        provider=row["provider"],
        subject=row["subject"],
        user_id=int(row["user_id"]),
        email=row["email"],
        created_at=float(row["created_at"]),
        last_used_at=None if row["last_used_at"] is None else float(row["last_used_at"]),
    )


def oidc_grant_from_row(row: Row, *, prefix: str = "") -> OidcGrant:
    return OidcGrant(
        id=row[f"{prefix}id"],
        client_id=row[f"{prefix}client_id"],
        user_id=row[f"{prefix}user_id"],
        scopes=tuple(row[f"{prefix}scopes"].split()),
        session_hash=row[f"{prefix}session_hash"],
        auth_time=row[f"{prefix}auth_time"],
        amr=tuple(row[f"{prefix}amr"].split()),
        acr=row[f"{prefix}acr"],
        nonce=row[f"{prefix}nonce"],
        created_at=row[f"{prefix}created_at"],
        expires_at=row[f"{prefix}expires_at"],
        revoked_at=row[f"{prefix}revoked_at"],
    )


def oidc_code_from_row(row: Row) -> OidcCode:
    return OidcCode(
        code_hash=row["code_hash"],
        grant_id=row["grant_id"],
        redirect_uri=row["redirect_uri"],
        code_challenge=row["code_challenge"],
        expires_at=row["expires_at"],
    )


def oidc_token_from_row(row: Row) -> OidcToken:
    return OidcToken(
        token_hash=row["token_hash"],
        kind=row["kind"],
        grant_id=row["grant_id"],
        issued_at=row["issued_at"],
        expires_at=row["expires_at"],
        used_at=row["used_at"],
        revoked_at=row["revoked_at"],
    )


def oidc_consent_from_row(row: Row) -> OidcConsent:
    return OidcConsent(
        user_id=row["user_id"],
        client_id=row["client_id"],
        scopes=tuple(row["scopes"].split()),
        granted_at=row["granted_at"],
    )
