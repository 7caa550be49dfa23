"""The SQLite store: every SQL statement authgate runs lives in this module."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.errors import Conflict, NotFound, StorageError, StoreUnavailable
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
from gateway.store import migrations
from gateway.store.contract import AppPasswordLimit, RevocationListener, UserOverview
from gateway.store.rows import (
    app_password_from_row,
    audit_from_row,
    escape_like,
    external_link_from_row,
    groups_json,
    oidc_code_from_row,
    oidc_consent_from_row,
    oidc_grant_from_row,
    oidc_token_from_row,
    session_from_row,
    totp_from_row,
    user_from_row,
    webauthn_from_row,
)

__all__ = ["AppPasswordLimit", "Store", "UserOverview"]

# Queries are literals, never assembled at run time (the one exception is the
# PRAGMA that records the schema version, which takes no parameters).
_SELECT_USER_BY_ID = """
SELECT id, username, email, display_name, groups, disabled, created_at, password_login, source
FROM users WHERE id = ?
"""
_SELECT_USER_BY_NAME = """
SELECT id, username, email, display_name, groups, disabled, created_at, password_login, source
FROM users WHERE username = ?
"""
_SELECT_USER_BY_EMAIL = """
SELECT id, username, email, display_name, groups, disabled, created_at, password_login, source
FROM users WHERE email_key = ?
"""
_SELECT_USERS = """
SELECT id, username, email, display_name, groups, disabled, created_at, password_login, source
FROM users ORDER BY username
"""
_SELECT_USER_BY_HANDLE = """
SELECT id, username, email, display_name, groups, disabled, created_at, password_login, source
FROM users WHERE id = (SELECT user_id FROM webauthn_user_handles WHERE handle = ?)
"""
_USER_HANDLE_BYTES = 32

# A username wins over another account's e-mail that happens to read the same.
_SELECT_LOGIN = """
SELECT id, username, email, display_name, groups, disabled, created_at, password_login, source, password_hash
FROM users
WHERE username = ? OR email_key = ?
ORDER BY username = ? DESC
LIMIT 1
"""

_INSERT_USER = """
INSERT INTO users (username, email, email_key, display_name, groups, password_hash, disabled, created_at)
VALUES (?, ?, ?, ?, ?, ?, 0, ?)
RETURNING id, username, email, display_name, groups, disabled, created_at
"""

# A directory user's row, keyed by the entry's stable id: a rename in the directory renames
# the row. email_key is not the directory's mail: a directory user who may edit their own
# mail attribute must not collide with (or be found as) a local account (docs/ldap.md).
_UPSERT_DIRECTORY_USER = """
INSERT INTO users (username, email, email_key, display_name, groups, password_hash, disabled, created_at,
                   source, external_id, directory_stamp, directory_checked_at)
VALUES (?, ?, ?, ?, ?, NULL, ?, ?, 'ldap', ?, ?, ?)
ON CONFLICT (source, external_id) WHERE external_id IS NOT NULL DO UPDATE SET
    username = excluded.username,
    email = excluded.email,
    display_name = excluded.display_name,
    groups = excluded.groups,
    disabled = excluded.disabled,
    directory_stamp = excluded.directory_stamp,
    directory_checked_at = excluded.directory_checked_at
RETURNING id, username, email, display_name, groups, disabled, created_at, password_login, source
"""

# Directory users someone may be acting as (a live session or app password), checked longest ago.
_SELECT_DIRECTORY_DUE = """
SELECT id, username, email, display_name, groups, disabled, created_at, password_login, source,
       external_id, COALESCE(directory_stamp, '') AS directory_stamp
FROM users AS u
WHERE source = 'ldap' AND disabled = 0 AND COALESCE(directory_checked_at, 0) < ?
  AND (EXISTS (SELECT 1 FROM sessions AS s WHERE s.user_id = u.id AND s.expires_at > ?)
       OR EXISTS (SELECT 1 FROM app_passwords AS a WHERE a.user_id = u.id AND a.revoked_at IS NULL))
ORDER BY COALESCE(directory_checked_at, 0)
LIMIT ?
"""

# A NULL parameter keeps the current value, so one fixed statement serves every partial update.
_UPDATE_USER = """
UPDATE users SET
    email = COALESCE(?, email),
    email_key = COALESCE(?, email_key),
    display_name = COALESCE(?, display_name),
    groups = COALESCE(?, groups)
WHERE id = ?
RETURNING id, username, email, display_name, groups, disabled, created_at, password_login, source
"""

_INSERT_SESSION = """
INSERT INTO sessions (id_hash, user_id, level, created_at, authenticated_at, last_active,
                      expires_at, remember_me, ip, user_agent, amr)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

_SELECT_USER_SESSIONS = """
SELECT id_hash, user_id, level, created_at, authenticated_at, last_active,
       expires_at, remember_me, ip, user_agent, amr
FROM sessions WHERE user_id = ? ORDER BY created_at DESC
"""

# The u_ prefixes keep user and session columns apart in the one joined row.
_SELECT_SESSION_WITH_USER = """
SELECT s.id_hash, s.user_id, s.level, s.created_at, s.authenticated_at, s.last_active,
       s.expires_at, s.remember_me, s.ip, s.user_agent, s.amr,
       u.id AS u_id, u.username AS u_username, u.email AS u_email,
       u.display_name AS u_display_name, u.groups AS u_groups,
       u.disabled AS u_disabled, u.created_at AS u_created_at, u.password_login AS u_password_login,
       u.source AS u_source
FROM sessions AS s JOIN users AS u ON u.id = s.user_id
WHERE s.id_hash = ?
"""

# The same, for many sessions at once: append "?,?,…)" (read_sessions).
_SELECT_SESSIONS_WITH_USER_PREFIX = _SELECT_SESSION_WITH_USER.replace(
    "WHERE s.id_hash = ?", "WHERE s.id_hash IN ("
)

_SELECT_EXTERNAL_LINK = """
SELECT e.id, e.provider, e.subject, e.user_id, e.email, e.created_at, e.last_used_at,
       u.id AS u_id, u.username AS u_username, u.email AS u_email,
       u.display_name AS u_display_name, u.groups AS u_groups,
       u.disabled AS u_disabled, u.created_at AS u_created_at, u.password_login AS u_password_login
FROM external_identities AS e JOIN users AS u ON u.id = e.user_id
WHERE e.provider = ? AND e.subject = ?
"""
_INSERT_EXTERNAL_LINK = """
INSERT INTO external_identities (provider, subject, user_id, email, created_at) VALUES (?, ?, ?, ?, ?)
RETURNING id, provider, subject, user_id, email, created_at, last_used_at
"""
_SELECT_USER_EXTERNAL_LINKS = """
SELECT id, provider, subject, user_id, email, created_at, last_used_at
FROM external_identities WHERE user_id = ? ORDER BY created_at, id
"""
_DELETE_EXTERNAL_LINK = """
DELETE FROM external_identities WHERE id = ? AND user_id = ?
RETURNING id, provider, subject, user_id, email, created_at, last_used_at
"""

# Failures that happened after `since` and after the latest success for the same key:
# a successful login wipes the slate, as in Authelia.
_FAILURES_SINCE = {
    "username": """
SELECT at FROM login_attempts
WHERE username = ? AND success = 0 AND at > ?
  AND at > COALESCE((SELECT MAX(at) FROM login_attempts WHERE username = ? AND success = 1), -1e308)
ORDER BY at
""",
    "ip": """
SELECT at FROM login_attempts
WHERE ip = ? AND success = 0 AND at > ?
  AND at > COALESCE((SELECT MAX(at) FROM login_attempts WHERE ip = ? AND success = 1), -1e308)
ORDER BY at
""",
}

# The same for every key at once (the metrics' count of current bans).
_FAILURES_BY_KEY = {
    "username": """
SELECT a.username, a.at FROM login_attempts AS a
WHERE a.success = 0 AND a.at > ?
  AND a.at > COALESCE(
      (SELECT MAX(b.at) FROM login_attempts AS b WHERE b.username = a.username AND b.success = 1), -1e308)
""",
    "ip": """
SELECT a.ip, a.at FROM login_attempts AS a
WHERE a.success = 0 AND a.at > ? AND a.ip != ''
  AND a.at > COALESCE(
      (SELECT MAX(b.at) FROM login_attempts AS b WHERE b.ip = a.ip AND b.success = 1), -1e308)
""",
}

# SQLite's primary result codes (the low byte of an extended code) as error kinds; the
# names match gateway.metrics.STORE_ERROR_KINDS.
_ERROR_KINDS = {
    5: "busy",  # SQLITE_BUSY
    6: "busy",  # SQLITE_LOCKED
    13: "full",  # SQLITE_FULL
    10: "io",  # SQLITE_IOERR
    14: "io",  # SQLITE_CANTOPEN
    8: "readonly",  # SQLITE_READONLY
    11: "corrupt",  # SQLITE_CORRUPT
    26: "corrupt",  # SQLITE_NOTADB
}
_ERROR_KIND_NAMES = ("busy", "full", "io", "readonly", "corrupt", "other")


_INSERT_TOTP_DEVICE = """
INSERT INTO totp_devices (user_id, name, secret_sealed, digits, period, algorithm, last_step, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
RETURNING id
"""

_SELECT_TOTP_DEVICES = """
SELECT id, user_id, name, secret_sealed, digits, period, algorithm, last_step, created_at, last_used_at
FROM totp_devices WHERE user_id = ? ORDER BY created_at, id
"""

_SELECT_TOTP_DEVICE = """
SELECT id, user_id, name, secret_sealed, digits, period, algorithm, last_step, created_at, last_used_at
FROM totp_devices WHERE id = ? AND user_id = ?
"""

# The compare-and-set that makes a TOTP code single-use even when two requests (or two
# workers) carry the same code at once: only one UPDATE can move last_step past `step`.
_USE_TOTP_STEP = """
UPDATE totp_devices SET last_step = ?, last_used_at = ?
WHERE id = ? AND (last_step IS NULL OR last_step < ?)
"""

_SECOND_FACTOR_KINDS = """
SELECT EXISTS (SELECT 1 FROM totp_devices WHERE user_id = ?) AS totp,
       EXISTS (SELECT 1 FROM webauthn_credentials WHERE user_id = ?) AS webauthn,
       EXISTS (SELECT 1 FROM recovery_codes WHERE user_id = ? AND used_at IS NULL) AS recovery
"""

_UPSERT_LAST_METHOD = """
INSERT INTO user_factor_prefs (user_id, last_method) VALUES (?, ?)
ON CONFLICT (user_id) DO UPDATE SET last_method = excluded.last_method
"""

_INSERT_WEBAUTHN_CREDENTIAL = """
INSERT INTO webauthn_credentials (user_id, credential_id, public_key, sign_count, transports, aaguid,
                                  backup_eligible, backed_up, device_type, name, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
RETURNING id
"""

_SELECT_WEBAUTHN_CREDENTIALS = """
SELECT id, user_id, credential_id, public_key, sign_count, transports, aaguid, backup_eligible, backed_up,
       device_type, name, created_at, last_used_at
FROM webauthn_credentials WHERE user_id = ? ORDER BY created_at, id
"""

_SELECT_WEBAUTHN_CREDENTIAL_BY_ID = """
SELECT id, user_id, credential_id, public_key, sign_count, transports, aaguid, backup_eligible, backed_up,
       device_type, name, created_at, last_used_at
FROM webauthn_credentials WHERE credential_id = ?
"""

# Only ever moves the counter up, so two concurrent assertions cannot lower it.
_UPDATE_WEBAUTHN_USE = """
UPDATE webauthn_credentials SET sign_count = MAX(sign_count, ?), backed_up = ?, last_used_at = ?
WHERE id = ?
"""

# The row is deleted whatever its state, so an expired or wrong-purpose challenge is gone too.
_TAKE_CHALLENGE = """
DELETE FROM webauthn_challenges WHERE id_hash = ?
RETURNING purpose, challenge, user_id, expires_at
"""

# The compare-and-set that makes a recovery link single-use even when opened twice at once.
_CONSUME_RECOVERY_LINK = """
UPDATE account_recovery_tokens SET used_at = ?
WHERE id_hash = ? AND used_at IS NULL AND expires_at > ?
RETURNING user_id
"""

_SELECT_SECURITY_EVENTS = """
SELECT a.id, u.id AS user_id, a.event, a.detail, COALESCE(a.ip, '') AS ip, a.at
FROM audit_log AS a JOIN users AS u ON u.username = a.target
WHERE u.id = ? ORDER BY a.at DESC, a.id DESC LIMIT ?
"""

_COUNT_LIVE_APP_TOKENS = "SELECT COUNT(*) FROM app_passwords WHERE user_id = ? AND revoked_at IS NULL"

_INSERT_APP_PW = """
INSERT INTO app_passwords (user_id, token_id, token_hash, name, domains, level, created_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
RETURNING id
"""

_SELECT_APP_PW_WITH_USER = """
SELECT a.id, a.user_id, a.token_id, a.name, a.domains, a.level, a.created_at, a.expires_at,
       a.last_used_at, a.last_used_ip, a.token_hash,
       u.id AS u_id, u.username AS u_username, u.email AS u_email,
       u.display_name AS u_display_name, u.groups AS u_groups,
       u.disabled AS u_disabled, u.created_at AS u_created_at, u.password_login AS u_password_login,
       u.source AS u_source
FROM app_passwords AS a JOIN users AS u ON u.id = a.user_id
WHERE a.token_id = ? AND a.revoked_at IS NULL
"""

_SELECT_APP_TOKENS = """
SELECT id, user_id, token_id, name, domains, level, created_at, expires_at, last_used_at, last_used_ip
FROM app_passwords WHERE user_id = ? AND revoked_at IS NULL ORDER BY created_at DESC, id DESC
"""

# Only moves last use forward, so a flush from a slower worker cannot overwrite a newer one.
_TOUCH_APP_PW = """
UPDATE app_passwords SET last_used_at = ?, last_used_ip = ?
WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)
"""

_INSERT_AUDIT = """
INSERT INTO audit_log (at, event, actor, target, ip, detail) VALUES (?, ?, ?, ?, ?, ?)
RETURNING id
"""

# A NULL parameter disables its filter, so one fixed statement serves every combination.
_SELECT_AUDIT = """
SELECT id, at, event, actor, target, ip, detail FROM audit_log
WHERE (? IS NULL OR actor = ?)
  AND (? IS NULL OR target = ?)
  AND (? IS NULL OR event = ?)
  AND (? IS NULL OR at >= ?)
  AND (? IS NULL OR at < ?)
ORDER BY at DESC, id DESC
LIMIT ? OFFSET ?
"""

# Keyset paging by id: rows appended during an export can neither be skipped nor repeated.
_PAGE_AUDIT = """
SELECT id, at, event, actor, target, ip, detail FROM audit_log
WHERE id > ? AND (? IS NULL OR at >= ?)
ORDER BY id
LIMIT ?
"""

_SEARCH_USERS = """
SELECT id, username, email, display_name, groups, disabled, created_at, password_login, source
FROM users
WHERE username LIKE ? ESCAPE '\\' OR email_key LIKE ? ESCAPE '\\' OR lower(display_name) LIKE ? ESCAPE '\\'
ORDER BY username
LIMIT ?
"""


# One row per user for the admin list: counts only, never a secret.
_USER_OVERVIEW = """
SELECT u.id,
       (SELECT COUNT(*) FROM totp_devices AS t WHERE t.user_id = u.id) AS totp,
       (SELECT COUNT(*) FROM webauthn_credentials AS w WHERE w.user_id = u.id) AS keys,
       (SELECT COUNT(*) FROM recovery_codes AS r WHERE r.user_id = u.id AND r.used_at IS NULL) AS recovery,
       (SELECT COUNT(*) FROM sessions AS s WHERE s.user_id = u.id AND s.expires_at > ?) AS sessions
FROM users AS u
"""

_INSERT_ATTEMPT = """
INSERT INTO login_attempts (username, ip, success, at) VALUES (?, ?, ?, ?)
RETURNING id
"""

# SQLite's primary result codes (extended codes carry them in the low byte) that mean "the
# database cannot take this now", not "this request is wrong": another writer holds it,
# the disk is full, the file cannot be read or written.
_UNAVAILABLE_CODES = {
    5: "database is locked by another writer",  # SQLITE_BUSY
    6: "database table is locked",  # SQLITE_LOCKED
    10: "disk I/O error",  # SQLITE_IOERR
    13: "database or disk is full",  # SQLITE_FULL
    14: "cannot open the database file",  # SQLITE_CANTOPEN
    15: "database lock protocol error",  # SQLITE_PROTOCOL
}

_CONSUME_RESET_LINK = """
UPDATE password_reset_tokens SET used_at = ?
WHERE id_hash = ? AND used_at IS NULL AND expires_at > ?
RETURNING user_id
"""

_INSERT_OIDC_GRANT = """
INSERT INTO oidc_grants (id, client_id, user_id, scopes, session_hash, auth_time, amr, acr, nonce,
                         created_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_SELECT_OIDC_CODE = """
SELECT c.code_hash, c.grant_id, c.redirect_uri, c.code_challenge, c.expires_at, c.used_at,
       g.id AS g_id, g.client_id AS g_client_id, g.user_id AS g_user_id, g.scopes AS g_scopes,
       g.session_hash AS g_session_hash, g.auth_time AS g_auth_time, g.amr AS g_amr, g.acr AS g_acr,
       g.nonce AS g_nonce, g.created_at AS g_created_at, g.expires_at AS g_expires_at,
       g.revoked_at AS g_revoked_at
FROM oidc_codes AS c JOIN oidc_grants AS g ON g.id = c.grant_id
WHERE c.code_hash = ?
"""
_SELECT_OIDC_ISSUED = """
SELECT t.token_hash, t.kind, t.grant_id, t.issued_at, t.expires_at, t.used_at, t.revoked_at,
       g.id AS g_id, g.client_id AS g_client_id, g.user_id AS g_user_id, g.scopes AS g_scopes,
       g.session_hash AS g_session_hash, g.auth_time AS g_auth_time, g.amr AS g_amr, g.acr AS g_acr,
       g.nonce AS g_nonce, g.created_at AS g_created_at, g.expires_at AS g_expires_at,
       g.revoked_at AS g_revoked_at
FROM oidc_tokens AS t JOIN oidc_grants AS g ON g.id = t.grant_id
WHERE t.token_hash = ?
"""


@dataclass(frozen=True, slots=True)
class _Result:
    rows: list[sqlite3.Row]
    rowcount: int


class Store:
    """Everything authgate keeps, in one SQLite file (the embedded engine; see contract.Storage).

    Every statement runs under one asyncio lock: the connection is shared, so a
    read interleaved into another coroutine's open transaction would see its
    uncommitted rows, and a second BEGIN would fail.
    """

    def __init__(
        self, db: aiosqlite.Connection, clock: Callable[[], float], *, busy_timeout: float = 5.0
    ) -> None:
        self._db = db
        self._clock = clock
        self._lock = asyncio.Lock()
        self._busy_timeout = busy_timeout
        self.statement_count: int = 0
        # Database errors by kind (gateway.metrics.STORE_ERROR_KINDS), read by the metrics.
        self.error_counts: dict[str, int] = dict.fromkeys(_ERROR_KIND_NAMES, 0)
        # A second, read-only connection for the forward-auth session reads (see read_session).
        self._reader: aiosqlite.Connection | None = None

    engine = "sqlite"
    # One file on one machine: other workers' changes reach this one's caches within
    # session.cache_ttl; there is no channel to hear them sooner.
    revocations_live = False

    def subscribe_revocations(self, listener: RevocationListener) -> None:
        """Accept a listener and never call it: SQLite has no channel between processes."""

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
    ) -> Store:
        """Open (creating if needed) the database at `path` and migrate it to the current schema.

        `busy_timeout` (seconds) bounds every wait: for a database another process holds
        (SQLite's busy timeout) and for this store's own connection. Past it a call raises
        StoreUnavailable, as it does for a full disk or an I/O error.
        """
        target = os.fspath(path)
        if target != ":memory:":
            _create_private_file(Path(target))
        try:
            db = await aiosqlite.connect(target, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {target!r}: {exc}") from exc
        db.row_factory = sqlite3.Row
        store = cls(db, clock, busy_timeout=busy_timeout)
        try:
            # journal_mode and foreign_keys are no-ops inside a transaction, so set them first.
            await store._sql("PRAGMA journal_mode = WAL")
            await store._sql("PRAGMA foreign_keys = ON")
            # PRAGMA takes no parameters; the value is an int we computed.
            await store._sql(f"PRAGMA busy_timeout = {store._busy_timeout_ms:d}")
            await store._migrate()
            if target != ":memory:":
                store._reader = await store._open_reader(target)
        except BaseException:
            await db.close()
            raise
        return store

    async def _open_reader(self, target: str) -> aiosqlite.Connection:
        try:
            reader = await aiosqlite.connect(target, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {target!r}: {exc}") from exc
        reader.row_factory = sqlite3.Row
        try:
            for pragma in ("PRAGMA query_only = ON", f"PRAGMA busy_timeout = {self._busy_timeout_ms:d}"):
                self.statement_count += 1
                await reader.execute_fetchall(pragma)
        except BaseException:
            await reader.close()
            raise
        return reader

    @property
    def _busy_timeout_ms(self) -> int:
        return max(1, round(self._busy_timeout * 1000))

    async def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        await self._db.close()

    async def ping(self) -> None:
        """Run a trivial query, raising StorageError when the database is unusable."""
        await self._locked("SELECT 1")

    # -- users --------------------------------------------------------------

    async def create_user(
        self,
        username: str,
        email: str,
        display_name: str,
        groups: Sequence[str],
        password_hash: str | None,
    ) -> User:
        """Insert a user; Conflict when the username or e-mail is taken (case-insensitively)."""
        async with self._turn():
            return await self._insert_user(username, email, display_name, groups, password_hash)

    async def create_first_user(
        self,
        username: str,
        email: str,
        display_name: str,
        groups: Sequence[str],
        password_hash: str | None,
    ) -> User | None:
        """Insert a user only if there is none yet; None when another user already exists."""
        # IMMEDIATE takes the write lock before the check, so two workers bootstrapping
        # the same empty database cannot both see it empty.
        async with self._transaction(immediate=True):
            result = await self._sql("SELECT EXISTS (SELECT 1 FROM users)")
            if result.rows[0][0]:
                return None
            return await self._insert_user(username, email, display_name, groups, password_hash)

    async def count_users(self) -> int:
        """Return how many users exist."""
        result = await self._locked("SELECT COUNT(*) FROM users")
        return int(result.rows[0][0])

    async def get_user(self, user_id: int) -> User | None:
        """Return the user with this id, or None."""
        result = await self._locked(_SELECT_USER_BY_ID, (user_id,))
        return user_from_row(result.rows[0]) if result.rows else None

    async def get_user_by_name(self, username: str) -> User | None:
        """Return the user with this username (any case), or None."""
        result = await self._locked(_SELECT_USER_BY_NAME, (username.lower(),))
        return user_from_row(result.rows[0]) if result.rows else None

    async def find_login(self, login: str) -> tuple[User, str | None] | None:
        """Return the user whose username or e-mail is `login` (any case) and their password hash."""
        key = login.lower()
        result = await self._locked(_SELECT_LOGIN, (key, key, key))
        if not result.rows:
            return None
        row = result.rows[0]
        return user_from_row(row), row["password_hash"]

    async def list_users(self) -> list[User]:
        """Return every user, ordered by username."""
        result = await self._locked(_SELECT_USERS)
        return [user_from_row(row) for row in result.rows]

    async def update_user(
        self,
        user_id: int,
        *,
        email: str | None = None,
        display_name: str | None = None,
        groups: Sequence[str] | None = None,
    ) -> User:
        """Change the given fields (None = keep); NotFound or Conflict (e-mail taken)."""
        params = (
            email,
            None if email is None else email.lower(),
            display_name,
            None if groups is None else groups_json(groups),
            user_id,
        )
        async with self._turn():
            try:
                result = await self._sql(_UPDATE_USER, params)
            except sqlite3.IntegrityError as exc:
                raise _user_conflict(exc, username="", email=email or "") from exc
        if not result.rows:
            raise NotFound(f"no user with id {user_id}")
        return user_from_row(result.rows[0])

    async def set_password_hash(self, user_id: int, password_hash: str | None) -> None:
        """Replace the user's password hash (None makes the account passwordless); NotFound."""
        result = await self._locked(
            "UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id)
        )
        if result.rowcount == 0:
            raise NotFound(f"no user with id {user_id}")

    async def set_disabled(self, user_id: int, disabled: bool) -> None:
        """Disable or enable a user; disabling also ends all their sessions. NotFound."""
        async with self._transaction():
            result = await self._sql("UPDATE users SET disabled = ? WHERE id = ?", (int(disabled), user_id))
            if result.rowcount == 0:
                raise NotFound(f"no user with id {user_id}")
            if disabled:
                await self._sql("DELETE FROM sessions WHERE user_id = ?", (user_id,))

    async def delete_user(self, user_id: int) -> None:
        """Delete a user and (by cascade) their sessions; NotFound."""
        result = await self._locked("DELETE FROM users WHERE id = ?", (user_id,))
        if result.rowcount == 0:
            raise NotFound(f"no user with id {user_id}")

    async def _insert_user(
        self,
        username: str,
        email: str,
        display_name: str,
        groups: Sequence[str],
        password_hash: str | None,
    ) -> User:
        params = (
            username.lower(),
            email,
            email.lower(),
            display_name,
            groups_json(groups),
            password_hash,
            self._clock(),
        )
        try:
            result = await self._sql(_INSERT_USER, params)
        except sqlite3.IntegrityError as exc:
            raise _user_conflict(exc, username=username, email=email) from exc
        return user_from_row(result.rows[0])

    # -- directory users (docs/ldap.md) -------------------------------------

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
        params = (
            username.lower(),
            email,
            f"ldap:{external_id}",
            display_name,
            groups_json(groups),
            int(disabled),
            self._clock(),
            external_id,
            stamp,
            checked_at,
        )
        async with self._turn():
            try:
                result = await self._sql(_UPSERT_DIRECTORY_USER, params)
            except sqlite3.IntegrityError as exc:
                raise _user_conflict(exc, username=username, email=email) from exc
        return user_from_row(result.rows[0])

    async def directory_users_due(
        self, *, checked_before: float, now: float, limit: int = 100
    ) -> list[tuple[User, str, str]]:
        """Return enabled directory users with a live session or app password whose last check
        is older than `checked_before`: (user, external id, password stamp), oldest check first."""
        result = await self._locked(_SELECT_DIRECTORY_DUE, (checked_before, now, limit))
        return [(user_from_row(row), row["external_id"], row["directory_stamp"]) for row in result.rows]

    async def directory_link(self, user_id: int) -> tuple[str, str] | None:
        """Return a directory user's (external id, password stamp); None for a local user."""
        result = await self._locked(
            "SELECT external_id, COALESCE(directory_stamp, '') FROM users WHERE id = ? AND source = 'ldap'",
            (user_id,),
        )
        return (result.rows[0][0], result.rows[0][1]) if result.rows else None

    async def set_directory_checked(self, user_id: int, checked_at: float) -> None:
        """Record that the directory was asked about a user (found or not)."""
        await self._locked("UPDATE users SET directory_checked_at = ? WHERE id = ?", (checked_at, user_id))

    # -- sessions -----------------------------------------------------------

    async def create_session(self, rec: SessionRecord) -> None:
        """Store a new session; NotFound when its user does not exist."""
        params = (
            rec.id_hash,
            rec.user_id,
            int(rec.level),
            rec.created_at,
            rec.authenticated_at,
            rec.last_active,
            rec.expires_at,
            int(rec.remember_me),
            rec.ip,
            rec.user_agent,
            " ".join(rec.amr),
        )
        try:
            await self._locked(_INSERT_SESSION, params)
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" in str(exc):
                raise NotFound(f"no user with id {rec.user_id}") from exc
            raise Conflict("session id already exists") from exc

    async def get_session(self, id_hash: str) -> tuple[SessionRecord, User] | None:
        """Return the session and its user in one query, or None."""
        result = await self._locked(_SELECT_SESSION_WITH_USER, (id_hash,))
        if not result.rows:
            return None
        row = result.rows[0]
        return session_from_row(row), user_from_row(row, prefix="u_")

    async def read_session(self, id_hash: str) -> tuple[SessionRecord, User] | None:
        """Like get_session, but on the read-only connection: never waits behind writes.

        In WAL mode a reader sees the last committed state, so a session read here is
        never newer than storage and never blocked by a transaction in progress. A
        store without a file (":memory:") has no second connection and uses get_session.
        """
        if self._reader is None:
            return await self.get_session(id_hash)
        self.statement_count += 1
        try:
            # One round trip to the connection's thread (execute + fetch + close in one).
            rows = list(await self._reader.execute_fetchall(_SELECT_SESSION_WITH_USER, (id_hash,)))
        except sqlite3.Error as exc:
            raise self._storage_error(exc) from exc
        if not rows:
            return None
        return session_from_row(rows[0]), user_from_row(rows[0], prefix="u_")

    async def read_sessions(self, id_hashes: Sequence[str]) -> dict[str, tuple[SessionRecord, User]]:
        """Read many sessions with their users in one query on the read-only connection.

        Returns the ones that exist, by id hash; a missing hash means the session is gone.
        One statement per call (the caller keeps batches within SQLite's parameter limit).
        A store without a file (":memory:") has no second connection and reads one by one.
        """
        hashes = list(dict.fromkeys(id_hashes))
        if not hashes:
            return {}
        if self._reader is None:
            found = {}
            for id_hash in hashes:
                one = await self.get_session(id_hash)
                if one is not None:
                    found[id_hash] = one
            return found
        self.statement_count += 1
        query = _SELECT_SESSIONS_WITH_USER_PREFIX + ",".join("?" * len(hashes)) + ")"
        try:
            rows = await self._reader.execute_fetchall(query, hashes)
        except sqlite3.Error as exc:
            raise self._storage_error(exc) from exc
        return {row["id_hash"]: (session_from_row(row), user_from_row(row, prefix="u_")) for row in rows}

    async def delete_session(self, id_hash: str) -> bool:
        """Delete one session; False when it did not exist."""
        result = await self._locked("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))
        return result.rowcount > 0

    async def delete_user_sessions(self, user_id: int, *, keep_id_hash: str | None = None) -> int:
        """Delete a user's sessions except `keep_id_hash`; return how many were deleted."""
        # `IS NOT NULL` is true for every row, so keep_id_hash=None deletes them all.
        result = await self._locked(
            "DELETE FROM sessions WHERE user_id = ? AND id_hash IS NOT ?", (user_id, keep_id_hash)
        )
        return result.rowcount

    async def list_user_sessions(self, user_id: int) -> list[SessionRecord]:
        """Return a user's sessions, newest first."""
        result = await self._locked(_SELECT_USER_SESSIONS, (user_id,))
        return [session_from_row(row) for row in result.rows]

    async def set_session_authenticated(self, id_hash: str, at: float) -> bool:
        """Record that the session's owner proved a factor again (re-authentication) at `at`."""
        result = await self._locked(
            "UPDATE sessions SET authenticated_at = ? WHERE id_hash = ?", (at, id_hash)
        )
        return result.rowcount == 1

    async def touch_sessions(self, last_active: Mapping[str, float]) -> None:
        """Record activity times by session id hash; never moves last_active backwards."""
        if not last_active:
            return
        # MAX() keeps a newer time written by another worker from being overwritten.
        async with self._transaction():
            await self._sql(
                "UPDATE sessions SET last_active = MAX(last_active, ?) WHERE id_hash = ?",
                many=[(at, id_hash) for id_hash, at in last_active.items()],
            )

    async def count_active_sessions(self, now: float, *, idle_since: float | None) -> int:
        """Count sessions not expired and, unless remember-me, active after `idle_since` (None: any)."""
        cutoff = -1e308 if idle_since is None else idle_since
        result = await self._locked(
            "SELECT COUNT(*) FROM sessions WHERE expires_at > ? AND (remember_me = 1 OR last_active > ?)",
            (now, cutoff),
        )
        return int(result.rows[0][0])

    async def delete_expired_sessions(self, now: float) -> int:
        """Delete sessions whose absolute end has passed; return how many."""
        result = await self._locked("DELETE FROM sessions WHERE expires_at <= ?", (now,))
        return result.rowcount

    # -- login attempts -----------------------------------------------------

    async def record_attempt(self, username: str, ip: str, success: bool, at: float) -> None:
        """Record one login attempt; the username is compared case-insensitively later."""
        await self._locked(
            "INSERT INTO login_attempts (username, ip, success, at) VALUES (?, ?, ?, ?)",
            (username.lower(), ip, int(success), at),
        )

    async def reserve_attempt(
        self,
        username: str,
        ip: str,
        *,
        at: float,
        since: float,
        ban_end: Callable[[Sequence[float]], float | None] | None,
    ) -> AttemptSlot:
        """Record a failed attempt now, before the credential is checked, unless a ban refuses it.

        `ban_end` is given the failure times (as failures_since returns them, after `since`)
        of the username and then of the ip, each on its own, and returns when that ban ends,
        or None; None for `ban_end` means no regulation. An empty `ip` (a counter row that
        belongs to no address, like a pending login's wrong codes) is not checked.
        Refused: AttemptSlot(None, latest end), nothing recorded. Else the failure row's id:
        the caller checks the credential and then calls mark_attempt_succeeded or
        withdraw_attempt (or nothing: it failed).

        Atomic contract: the two reads and the insert are one write transaction (BEGIN
        IMMEDIATE), so concurrent callers on every worker and process are serialised and each
        sees the rows the earlier ones reserved. With max_retries r, at most r attempts of
        one burst are let through to the (slow) password check, however many arrive at once.
        Another store must give the same guarantee (PostgreSQL: take
        pg_advisory_xact_lock on the username and the ip key, in a fixed order, before the
        reads, in the same transaction as the insert).
        """
        key = username.lower()
        async with self._transaction(immediate=True):
            if ban_end is not None:
                ends = []
                for column, value in (("username", key), ("ip", ip)):
                    if not value:
                        continue
                    result = await self._sql(_FAILURES_SINCE[column], (value, since, value))
                    ends.append(ban_end([float(row[0]) for row in result.rows]))
                active = [end for end in ends if end is not None]
                if active:
                    return AttemptSlot(attempt_id=None, banned_until=max(active))
            result = await self._sql(_INSERT_ATTEMPT, (key, ip, 0, at))
        return AttemptSlot(attempt_id=int(result.rows[0][0]), banned_until=None)

    async def mark_attempt_succeeded(self, attempt_id: int) -> None:
        """Turn a reserved attempt into a success (which wipes the failure slate, as before)."""
        # The row keeps its reservation time: failures reserved while this check ran still count.
        await self._locked("UPDATE login_attempts SET success = 1 WHERE id = ?", (attempt_id,))

    async def withdraw_attempt(self, attempt_id: int) -> None:
        """Delete a reserved attempt that turned out neither a failure nor a finished login."""
        await self._locked("DELETE FROM login_attempts WHERE id = ? AND success = 0", (attempt_id,))

    async def failures_since(
        self, *, username: str | None = None, ip: str | None = None, since: float
    ) -> list[float]:
        """Return failure times (ascending) after `since` and after the latest success, by username or ip."""
        if (username is None) == (ip is None):
            raise ValueError("give exactly one of username and ip")
        column, key = ("username", username.lower()) if username is not None else ("ip", ip)
        result = await self._locked(_FAILURES_SINCE[column], (key, since, key))
        return [float(row[0]) for row in result.rows]

    async def failures_by_key(self, column: str, *, since: float) -> dict[str, list[float]]:
        """Failure times after `since` and after each key's latest success, by "username" or "ip"."""
        result = await self._locked(_FAILURES_BY_KEY[column], (since,))
        found: dict[str, list[float]] = {}
        for key, at in result.rows:
            found.setdefault(str(key), []).append(float(at))
        return found

    async def prune_attempts(self, before: float) -> int:
        """Delete attempts older than `before`; return how many."""
        result = await self._locked("DELETE FROM login_attempts WHERE at < ?", (before,))
        return result.rowcount

    # -- second factors -----------------------------------------------------

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
        # last_step is the step of the code that confirmed the enrolment, so that code
        # cannot be used again to log in.
        params = (user_id, name, secret_sealed, digits, period, algorithm, last_step, self._clock())
        try:
            result = await self._locked(_INSERT_TOTP_DEVICE, params)
        except sqlite3.IntegrityError as exc:
            raise _totp_conflict(exc, user_id=user_id, name=name) from exc
        return int(result.rows[0][0])

    async def list_totp_devices(self, user_id: int) -> list[TotpDevice]:
        """Return the user's TOTP devices, oldest first."""
        result = await self._locked(_SELECT_TOTP_DEVICES, (user_id,))
        return [totp_from_row(row) for row in result.rows]

    async def get_totp_device(self, user_id: int, device_id: int) -> TotpDevice | None:
        """Return the device if it exists and belongs to the user, else None."""
        result = await self._locked(_SELECT_TOTP_DEVICE, (device_id, user_id))
        return totp_from_row(result.rows[0]) if result.rows else None

    async def rename_totp_device(self, user_id: int, device_id: int, name: str) -> None:
        """Rename one of the user's devices; NotFound, or Conflict when the name is taken."""
        try:
            result = await self._locked(
                "UPDATE totp_devices SET name = ? WHERE id = ? AND user_id = ?", (name, device_id, user_id)
            )
        except sqlite3.IntegrityError as exc:
            raise _totp_conflict(exc, user_id=user_id, name=name) from exc
        if result.rowcount == 0:
            raise NotFound(f"user {user_id} has no TOTP device {device_id}")

    async def delete_totp_device(self, user_id: int, device_id: int) -> None:
        """Delete one of the user's devices; NotFound."""
        result = await self._locked(
            "DELETE FROM totp_devices WHERE id = ? AND user_id = ?", (device_id, user_id)
        )
        if result.rowcount == 0:
            raise NotFound(f"user {user_id} has no TOTP device {device_id}")

    async def use_totp_step(self, device_id: int, step: int, at: float) -> bool:
        """Record `step` as used if it is newer than the last used one; False if it is not (replay).

        Atomic contract: one conditional UPDATE (last_step < step) decides, so of concurrent
        callers with the same code (two sessions, two workers) exactly one gets True.
        """
        result = await self._locked(_USE_TOTP_STEP, (step, at, device_id, step))
        return result.rowcount == 1

    async def replace_recovery_codes(self, user_id: int, hashes: Sequence[str]) -> None:
        """Replace the user's recovery codes with new hashes in one transaction; NotFound (user)."""
        if isinstance(hashes, str):
            raise TypeError("hashes must be a sequence of hashes, not a string")
        now = self._clock()
        try:
            async with self._transaction():
                await self._sql("DELETE FROM recovery_codes WHERE user_id = ?", (user_id,))
                await self._sql(
                    "INSERT INTO recovery_codes (user_id, code_hash, created_at) VALUES (?, ?, ?)",
                    many=[(user_id, code_hash, now) for code_hash in hashes],
                )
        except sqlite3.IntegrityError as exc:
            raise NotFound(f"no user with id {user_id}") from exc

    async def unused_recovery_hashes(self, user_id: int) -> list[tuple[int, str]]:
        """Return (code id, hash) for each of the user's unused recovery codes."""
        result = await self._locked(
            "SELECT id, code_hash FROM recovery_codes WHERE user_id = ? AND used_at IS NULL ORDER BY id",
            (user_id,),
        )
        return [(int(row[0]), str(row[1])) for row in result.rows]

    async def use_recovery_code(self, code_id: int, at: float) -> bool:
        """Mark a recovery code used; False when it was already used or no longer exists.

        Atomic contract: one conditional UPDATE (used_at IS NULL) decides, so of concurrent
        callers with the same code exactly one gets True.
        """
        result = await self._locked(
            "UPDATE recovery_codes SET used_at = ? WHERE id = ? AND used_at IS NULL", (at, code_id)
        )
        return result.rowcount == 1

    async def count_unused_recovery_codes(self, user_id: int) -> int:
        """Return how many of the user's recovery codes are still unused."""
        result = await self._locked(
            "SELECT COUNT(*) FROM recovery_codes WHERE user_id = ? AND used_at IS NULL", (user_id,)
        )
        return int(result.rows[0][0])

    async def second_factor_kinds(self, user_id: int) -> tuple[str, ...]:
        """Return the kinds of second factor the user can use now: "totp", "webauthn", "recovery"."""
        result = await self._locked(_SECOND_FACTOR_KINDS, (user_id, user_id, user_id))
        row = result.rows[0]
        return tuple(kind for kind in ("totp", "webauthn", "recovery") if row[kind])

    async def reset_second_factors(self, user_id: int) -> None:
        """Delete all the user's TOTP devices, WebAuthn credentials, recovery codes and factor preference.

        One transaction. A WebAuthn-only account gets password login back, or it could not sign in.
        """
        async with self._transaction():
            await self._sql("DELETE FROM totp_devices WHERE user_id = ?", (user_id,))
            await self._sql("DELETE FROM webauthn_credentials WHERE user_id = ?", (user_id,))
            await self._sql("UPDATE users SET password_login = 1 WHERE id = ?", (user_id,))
            await self._sql("DELETE FROM recovery_codes WHERE user_id = ?", (user_id,))
            await self._sql("DELETE FROM user_factor_prefs WHERE user_id = ?", (user_id,))

    async def set_last_method(self, user_id: int, method: str) -> None:
        """Remember the factor kind the user last signed in with; NotFound (user)."""
        try:
            await self._locked(_UPSERT_LAST_METHOD, (user_id, method))
        except sqlite3.IntegrityError as exc:
            raise NotFound(f"no user with id {user_id}") from exc

    async def get_last_method(self, user_id: int) -> str | None:
        """Return the factor kind the user last signed in with, or None."""
        result = await self._locked("SELECT last_method FROM user_factor_prefs WHERE user_id = ?", (user_id,))
        return str(result.rows[0][0]) if result.rows else None

    # -- WebAuthn -----------------------------------------------------------

    async def get_or_create_user_handle(self, user_id: int) -> bytes:
        """Return the user's WebAuthn user handle, creating a random one on first use; NotFound (user)."""
        async with self._transaction(immediate=True):
            result = await self._sql("SELECT handle FROM webauthn_user_handles WHERE user_id = ?", (user_id,))
            if result.rows:
                return bytes(result.rows[0][0])
            handle = secrets.token_bytes(_USER_HANDLE_BYTES)
            try:
                await self._sql(
                    "INSERT INTO webauthn_user_handles (user_id, handle) VALUES (?, ?)", (user_id, handle)
                )
            except sqlite3.IntegrityError as exc:
                raise NotFound(f"no user with id {user_id}") from exc
            return handle

    async def find_user_by_handle(self, handle: bytes) -> User | None:
        """Return the user a WebAuthn user handle belongs to, or None."""
        result = await self._locked(_SELECT_USER_BY_HANDLE, (bytes(handle),))
        return user_from_row(result.rows[0]) if result.rows else None

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
        if isinstance(transports, str):
            raise TypeError("transports must be a sequence of transport names, not a string")
        params = (
            user_id,
            bytes(credential_id),
            bytes(public_key),
            sign_count,
            json.dumps(list(transports)),
            aaguid,
            int(backup_eligible),
            int(backed_up),
            device_type,
            name,
            self._clock(),
        )
        try:
            result = await self._locked(_INSERT_WEBAUTHN_CREDENTIAL, params)
        except sqlite3.IntegrityError as exc:
            raise _webauthn_conflict(exc, user_id=user_id, name=name) from exc
        return int(result.rows[0][0])

    async def list_webauthn_credentials(self, user_id: int) -> list[WebAuthnCredential]:
        """Return the user's security keys and passkeys, oldest first."""
        result = await self._locked(_SELECT_WEBAUTHN_CREDENTIALS, (user_id,))
        return [webauthn_from_row(row) for row in result.rows]

    async def get_webauthn_credential_by_id(self, credential_id: bytes) -> WebAuthnCredential | None:
        """Return the credential with this raw credential id (whoever owns it), or None."""
        result = await self._locked(_SELECT_WEBAUTHN_CREDENTIAL_BY_ID, (bytes(credential_id),))
        return webauthn_from_row(result.rows[0]) if result.rows else None

    async def rename_webauthn_credential(self, user_id: int, cred_pk: int, name: str) -> None:
        """Rename one of the user's credentials; NotFound, or Conflict when the name is taken."""
        try:
            result = await self._locked(
                "UPDATE webauthn_credentials SET name = ? WHERE id = ? AND user_id = ?",
                (name, cred_pk, user_id),
            )
        except sqlite3.IntegrityError as exc:
            raise _webauthn_conflict(exc, user_id=user_id, name=name) from exc
        if result.rowcount == 0:
            raise NotFound(f"user {user_id} has no WebAuthn credential {cred_pk}")

    async def delete_webauthn_credential(self, user_id: int, cred_pk: int) -> None:
        """Delete (revoke) one of the user's credentials; NotFound."""
        result = await self._locked(
            "DELETE FROM webauthn_credentials WHERE id = ? AND user_id = ?", (cred_pk, user_id)
        )
        if result.rowcount == 0:
            raise NotFound(f"user {user_id} has no WebAuthn credential {cred_pk}")

    async def delete_all_webauthn_credentials(self, user_id: int) -> int:
        """Delete every credential of the user; return how many."""
        result = await self._locked("DELETE FROM webauthn_credentials WHERE user_id = ?", (user_id,))
        return result.rowcount

    async def update_webauthn_use(self, cred_pk: int, *, sign_count: int, backed_up: bool, at: float) -> None:
        """Record a successful assertion: the new counter (never lowered), backup state and time."""
        await self._locked(_UPDATE_WEBAUTHN_USE, (sign_count, int(backed_up), at, cred_pk))

    async def put_challenge(
        self, id_hash: str, *, purpose: str, challenge: bytes, user_id: int | None, expires_at: float
    ) -> None:
        """Keep a ceremony's challenge until taken or expired; NotFound (user)."""
        try:
            await self._locked(
                "INSERT INTO webauthn_challenges (id_hash, user_id, purpose, challenge, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (id_hash, user_id, purpose, bytes(challenge), expires_at),
            )
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" in str(exc):
                raise NotFound(f"no user with id {user_id}") from exc
            raise Conflict("a challenge with this id already exists") from exc

    async def take_challenge(
        self, id_hash: str, *, purpose: str, now: float
    ) -> tuple[bytes, int | None] | None:
        """Remove a challenge and return (challenge, user id); None when unknown, expired or mis-purposed.

        Single use even across workers: the DELETE ... RETURNING hands the row to one caller only.
        """
        result = await self._locked(_TAKE_CHALLENGE, (id_hash,))
        if not result.rows:
            return None
        row = result.rows[0]
        if row["purpose"] != purpose or row["expires_at"] <= now:
            return None
        return bytes(row["challenge"]), row["user_id"]

    async def prune_challenges(self, now: float) -> int:
        """Delete expired challenges; return how many."""
        result = await self._locked("DELETE FROM webauthn_challenges WHERE expires_at <= ?", (now,))
        return result.rowcount

    async def set_password_login(self, user_id: int, enabled: bool) -> None:
        """Allow or refuse password login for the account (False = WebAuthn only); NotFound."""
        result = await self._locked(
            "UPDATE users SET password_login = ? WHERE id = ?", (int(enabled), user_id)
        )
        if result.rowcount == 0:
            raise NotFound(f"no user with id {user_id}")

    # -- account recovery ---------------------------------------------------

    async def create_recovery_token(
        self, id_hash: str, user_id: int, *, created_at: float, expires_at: float
    ) -> None:
        """Store a recovery link's token hash; NotFound (user)."""
        try:
            await self._locked(
                "INSERT INTO account_recovery_tokens (id_hash, user_id, created_at, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (id_hash, user_id, created_at, expires_at),
            )
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" in str(exc):
                raise NotFound(f"no user with id {user_id}") from exc
            raise Conflict("a recovery token with this id already exists") from exc

    async def use_recovery_token(self, id_hash: str, *, now: float) -> int | None:
        """Mark a recovery token used and return its user id; None when unknown, used or expired.

        Atomic contract: one conditional UPDATE ... RETURNING (used_at IS NULL) decides, so of
        concurrent callers with the same link exactly one gets the user id.
        """
        result = await self._locked(_CONSUME_RECOVERY_LINK, (now, id_hash, now))
        return int(result.rows[0][0]) if result.rows else None

    async def peek_recovery_token(self, id_hash: str, *, now: float) -> int | None:
        """Return the user id of a usable recovery token without using it up."""
        result = await self._locked(
            "SELECT user_id FROM account_recovery_tokens"
            " WHERE id_hash = ? AND used_at IS NULL AND expires_at > ?",
            (id_hash, now),
        )
        return int(result.rows[0][0]) if result.rows else None

    async def prune_recovery_tokens(self, before: float) -> int:
        """Delete recovery tokens that expired before `before`; return how many."""
        result = await self._locked("DELETE FROM account_recovery_tokens WHERE expires_at < ?", (before,))
        return result.rowcount

    async def find_user_by_email(self, email: str) -> User | None:
        """Return the user with this e-mail address (any case), or None."""
        result = await self._locked(_SELECT_USER_BY_EMAIL, (email.strip().lower(),))
        return user_from_row(result.rows[0]) if result.rows else None

    # -- security events ----------------------------------------------------

    async def list_security_events(self, user_id: int, limit: int = 50) -> list[SecurityEvent]:
        """Return the user's most recent events, newest first."""
        result = await self._locked(_SELECT_SECURITY_EVENTS, (user_id, limit))
        return [
            SecurityEvent(
                id=row["id"],
                user_id=row["user_id"],
                event=row["event"],
                detail=row["detail"],
                ip=row["ip"],
                at=row["at"],
            )
            for row in result.rows
        ]

    # -- app passwords (issue 5) -------------------------------------------

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
        """Store a new app password's hash and return its id.

        AppPasswordLimit when the user already has `max_per_user` live ones; Conflict when the name
        (any case) or the token id is taken; NotFound (user).

        Atomic contract: the count and the insert are one write transaction (BEGIN IMMEDIATE),
        so a burst of concurrent creations on any number of workers never exceeds
        `max_per_user` (PostgreSQL: lock the user's row, SELECT ... FOR UPDATE, before counting).
        """
        if isinstance(domains, str):
            raise TypeError("domains must be a sequence of host names, not a string")
        params = (
            user_id,
            token_id,
            token_hash,
            name,
            json.dumps(list(domains)),
            int(level),
            created_at,
            expires_at,
        )
        async with self._transaction(immediate=True):
            if max_per_user is not None:
                result = await self._sql(_COUNT_LIVE_APP_TOKENS, (user_id,))
                if int(result.rows[0][0]) >= max_per_user:
                    raise AppPasswordLimit(f"at most {max_per_user} app passwords per user; revoke one first")
            try:
                result = await self._sql(_INSERT_APP_PW, params)
            except sqlite3.IntegrityError as exc:
                raise _app_password_conflict(exc, user_id=user_id, name=name) from exc
        return int(result.rows[0][0])

    async def find_app_password(self, token_id: str) -> tuple[AppPassword, User, str] | None:
        """Return the live (not revoked) app password with this token id, its user and stored hash.

        One joined query. Expiry is not checked here: the caller compares with its clock.
        """
        result = await self._locked(_SELECT_APP_PW_WITH_USER, (token_id,))
        if not result.rows:
            return None
        row = result.rows[0]
        return app_password_from_row(row), user_from_row(row, prefix="u_"), str(row["token_hash"])

    async def read_app_password(self, token_id: str) -> tuple[AppPassword, User, str] | None:
        """Like find_app_password, but on the read-only connection (the forward-auth hot path)."""
        if self._reader is None:
            return await self.find_app_password(token_id)
        self.statement_count += 1
        try:
            rows = list(await self._reader.execute_fetchall(_SELECT_APP_PW_WITH_USER, (token_id,)))
        except sqlite3.Error as exc:
            raise self._storage_error(exc) from exc
        if not rows:
            return None
        row = rows[0]
        return app_password_from_row(row), user_from_row(row, prefix="u_"), str(row["token_hash"])

    async def list_app_passwords(self, user_id: int) -> list[AppPassword]:
        """Return the user's live app passwords (expired ones included), newest first."""
        result = await self._locked(_SELECT_APP_TOKENS, (user_id,))
        return [app_password_from_row(row) for row in result.rows]

    async def revoke_app_password(self, user_id: int, pk: int, at: float) -> bool:
        """Revoke one of the user's app passwords; False when it is not theirs or already revoked."""
        result = await self._locked(
            "UPDATE app_passwords SET revoked_at = ? WHERE id = ? AND user_id = ? AND revoked_at IS NULL",
            (at, pk, user_id),
        )
        return result.rowcount == 1

    async def revoke_all_app_passwords(self, user_id: int, at: float) -> int:
        """Revoke every live app password of the user; return how many."""
        result = await self._locked(
            "UPDATE app_passwords SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL", (at, user_id)
        )
        return result.rowcount

    async def touch_app_passwords(self, updates: Mapping[int, tuple[float, str]]) -> None:
        """Record last use (time, client IP) by app password id, in one transaction; never moves back."""
        if not updates:
            return
        async with self._transaction():
            await self._sql(
                _TOUCH_APP_PW,
                many=[(at, ip, pk, at) for pk, (at, ip) in updates.items()],
            )

    # -- audit log (issue 5): insert and select only -------------------------

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
        result = await self._locked(_INSERT_AUDIT, (at, event, actor, target, ip, detail))
        return int(result.rows[0][0])

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
        """Return audit rows matching every given filter (None = any), newest first.

        `since` is inclusive, `until` exclusive.
        """
        params = (actor, actor, target, target, event, event, since, since, until, until, limit, offset)
        result = await self._locked(_SELECT_AUDIT, params)
        return [audit_from_row(row) for row in result.rows]

    async def iter_audit(self, since: float | None = None, *, page: int = 500) -> AsyncIterator[AuditEvent]:
        """Yield audit rows at or after `since`, oldest first (in insertion order), a page at a time."""
        after_id = 0
        while True:
            result = await self._locked(_PAGE_AUDIT, (after_id, since, since, page))
            for row in result.rows:
                yield audit_from_row(row)
            if len(result.rows) < page:
                return
            after_id = int(result.rows[-1]["id"])

    async def prune_audit(self, before: float) -> int:
        """Delete audit rows older than `before`; only for audit.retention > 0. Return how many."""
        result = await self._locked("DELETE FROM audit_log WHERE at < ?", (before,))
        return result.rowcount

    # -- admin console (issue 5) ---------------------------------------------

    async def search_users(self, query: str, limit: int = 50) -> list[User]:
        """Return users whose username, e-mail or display name contains `query` (ASCII case-insensitive)."""
        pattern = "%" + escape_like(query.strip().lower()) + "%"
        result = await self._locked(_SEARCH_USERS, (pattern, pattern, pattern, limit))
        return [user_from_row(row) for row in result.rows]

    async def user_overview(self, now: float) -> dict[int, UserOverview]:
        """Return, by user id, counts of second factors and live sessions (one query, no secrets)."""
        result = await self._locked(_USER_OVERVIEW, (now,))
        return {
            int(row["id"]): UserOverview(
                totp_devices=int(row["totp"]),
                webauthn_credentials=int(row["keys"]),
                recovery_codes_left=int(row["recovery"]),
                sessions=int(row["sessions"]),
            )
            for row in result.rows
        }

    # -- password reset links (admin console) ------------------------------

    async def create_password_reset_token(
        self, id_hash: str, user_id: int, *, created_by: str, created_at: float, expires_at: float
    ) -> None:
        """Store a password reset link's token hash; NotFound (user)."""
        try:
            await self._locked(
                "INSERT INTO password_reset_tokens (id_hash, user_id, created_by, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (id_hash, user_id, created_by, created_at, expires_at),
            )
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" in str(exc):
                raise NotFound(f"no user with id {user_id}") from exc
            raise Conflict("a password reset token with this id already exists") from exc

    async def peek_password_reset_token(self, id_hash: str, *, now: float) -> int | None:
        """Return the user id of a usable password reset token without using it up."""
        result = await self._locked(
            "SELECT user_id FROM password_reset_tokens"
            " WHERE id_hash = ? AND used_at IS NULL AND expires_at > ?",
            (id_hash, now),
        )
        return int(result.rows[0][0]) if result.rows else None

    async def use_password_reset_token(
        self, id_hash: str, *, now: float, password_hash: str | None = None
    ) -> int | None:
        """Use up a reset token (and every other unused one of its user); return the user id, or None.

        With `password_hash`, also set it as the user's password. Atomic contract: the
        conditional UPDATE ... RETURNING decides which of concurrent callers gets the link
        (one does; the others get None), and the link's use and the new password are one
        write transaction: a link is never used up without its password being set, nor a
        password set by a caller that lost the link.
        """
        async with self._transaction(immediate=True):
            result = await self._sql(_CONSUME_RESET_LINK, (now, id_hash, now))
            if not result.rows:
                return None
            user_id = int(result.rows[0][0])
            # Older links of the same user die with it: one new password per mailing.
            await self._sql(
                "UPDATE password_reset_tokens SET used_at = ? WHERE user_id = ? AND used_at IS NULL",
                (now, user_id),
            )
            if password_hash is not None:
                await self._sql("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))
        return user_id

    async def prune_password_reset_tokens(self, before: float) -> int:
        """Delete password reset tokens that expired before `before`; return how many."""
        result = await self._locked("DELETE FROM password_reset_tokens WHERE expires_at < ?", (before,))
        return result.rowcount

    # -- external sign-in links (docs/external-login.md) ---------------------

    async def find_external_link(self, provider: str, subject: str) -> tuple[ExternalLink, User] | None:
        """Return the link for (provider, subject) and its local user, or None."""
        result = await self._locked(_SELECT_EXTERNAL_LINK, (provider, subject))
        if not result.rows:
            return None
        row = result.rows[0]
        return external_link_from_row(row), user_from_row(row, prefix="u_")

    async def add_external_link(
        self, user_id: int, provider: str, subject: str, *, email: str, at: float
    ) -> ExternalLink:
        """Link (provider, subject) to a user; Conflict when it is linked already, NotFound (user)."""
        try:
            result = await self._locked(_INSERT_EXTERNAL_LINK, (provider, subject, user_id, email, at))
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" in str(exc):
                raise NotFound(f"no user with id {user_id}") from exc
            raise Conflict(f"this {provider} account is linked to a local account already") from exc
        return external_link_from_row(result.rows[0])

    async def list_external_links(self, user_id: int) -> list[ExternalLink]:
        """Return a user's links, oldest first."""
        result = await self._locked(_SELECT_USER_EXTERNAL_LINKS, (user_id,))
        return [external_link_from_row(row) for row in result.rows]

    async def delete_external_link(self, user_id: int, link_id: int) -> ExternalLink | None:
        """Remove one of the user's links; return it, or None when the user has no such link."""
        result = await self._locked(_DELETE_EXTERNAL_LINK, (link_id, user_id))
        return external_link_from_row(result.rows[0]) if result.rows else None

    async def touch_external_link(self, link_id: int, at: float) -> None:
        """Record a sign-in through the link."""
        await self._locked("UPDATE external_identities SET last_used_at = ? WHERE id = ?", (at, link_id))

    # -- OpenID Provider (gateway/oidc/) --------------------------------------

    async def create_oidc_grant(self, grant: OidcGrant, code: OidcCode) -> None:
        """Store a new grant with its authorization code, in one transaction; NotFound (user)."""
        try:
            async with self._transaction():
                await self._sql(
                    _INSERT_OIDC_GRANT,
                    (
                        *(grant.id, grant.client_id, grant.user_id, " ".join(grant.scopes)),
                        *(grant.session_hash, grant.auth_time, " ".join(grant.amr), grant.acr),
                        *(grant.nonce, grant.created_at, grant.expires_at),
                    ),
                )
                await self._sql(
                    "INSERT INTO oidc_codes (code_hash, grant_id, redirect_uri, code_challenge, expires_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (code.code_hash, code.grant_id, code.redirect_uri, code.code_challenge, code.expires_at),
                )
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" in str(exc):
                raise NotFound(f"no user with id {grant.user_id}") from exc
            raise Conflict("an OIDC grant or code with this id already exists") from exc

    async def redeem_oidc_code(
        self, code_hash: str, *, now: float, tokens: Callable[[OidcGrant, OidcCode], Sequence[OidcToken]]
    ) -> tuple[str, OidcGrant | None, OidcCode | None]:
        """Use an authorization code once; return (outcome, grant, code).

        Outcomes: "ok" (the code was unused and live: it is now used, and the rows `tokens`
        returns for the grant are stored; when `tokens` raises, nothing changes and the
        exception propagates), "unknown", "expired", "revoked" (the grant was
        revoked before), "reused" (the code was used before: the grant and every token issued
        from it are revoked now, RFC 6749 4.1.2).

        Atomic contract: one write transaction (BEGIN IMMEDIATE) reads and marks the code, so of
        concurrent callers with one code exactly one gets "ok"; the others see "reused".
        """
        async with self._transaction(immediate=True):
            result = await self._sql(_SELECT_OIDC_CODE, (code_hash,))
            if not result.rows:
                return "unknown", None, None
            row = result.rows[0]
            grant, code = oidc_grant_from_row(row, prefix="g_"), oidc_code_from_row(row)
            if row["used_at"] is not None:
                await self._revoke_oidc_grant(grant.id, now, "authorization code reused")
                return "reused", grant, code
            await self._sql("UPDATE oidc_codes SET used_at = ? WHERE code_hash = ?", (now, code_hash))
            if grant.revoked_at is not None:
                return "revoked", grant, code
            if code.expires_at <= now:
                return "expired", grant, code
            await self._insert_oidc_tokens(tokens(grant, code))
        return "ok", grant, code

    async def rotate_oidc_refresh_token(
        self,
        token_hash: str,
        *,
        now: float,
        tokens: Callable[[OidcGrant], Sequence[OidcToken]],
    ) -> tuple[str, OidcGrant | None]:
        """Exchange a refresh token once; return (outcome, grant).

        Outcomes: "ok" (it is now used and the new rows from `tokens` are stored; when `tokens`
        raises, nothing changes and the exception propagates), "unknown",
        "expired", "revoked", "reused" (it was exchanged before: the whole grant is revoked, so the
        thief's and the owner's tokens all stop, OAuth 2.0 Security BCP 4.14.2).
        Atomic contract as for redeem_oidc_code: one BEGIN IMMEDIATE transaction.
        """
        async with self._transaction(immediate=True):
            result = await self._sql(_SELECT_OIDC_ISSUED, (token_hash,))
            if not result.rows or result.rows[0]["kind"] != "refresh":
                return "unknown", None
            row = result.rows[0]
            grant = oidc_grant_from_row(row, prefix="g_")
            if row["used_at"] is not None:
                await self._revoke_oidc_grant(grant.id, now, "refresh token reused")
                return "reused", grant
            if grant.revoked_at is not None or row["revoked_at"] is not None:
                return "revoked", grant
            if row["expires_at"] <= now or grant.expires_at <= now:
                return "expired", grant
            await self._sql("UPDATE oidc_tokens SET used_at = ? WHERE token_hash = ?", (now, token_hash))
            await self._insert_oidc_tokens(tokens(grant))
        return "ok", grant

    async def find_oidc_token(self, token_hash: str) -> tuple[OidcToken, OidcGrant] | None:
        """Return a token row and its grant by digest (refresh) or jti (access), or None."""
        result = await self._locked(_SELECT_OIDC_ISSUED, (token_hash,))
        if not result.rows:
            return None
        row = result.rows[0]
        return oidc_token_from_row(row), oidc_grant_from_row(row, prefix="g_")

    async def revoke_oidc_token(self, token_hash: str, *, now: float) -> bool:
        """Revoke one access token (by jti); False when unknown or already revoked."""
        result = await self._locked(
            "UPDATE oidc_tokens SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL",
            (now, token_hash),
        )
        return result.rowcount == 1

    async def revoke_oidc_grant(self, grant_id: str, *, now: float, reason: str) -> bool:
        """Revoke a grant and every token issued from it; False when it was revoked already."""
        async with self._transaction():
            return await self._revoke_oidc_grant(grant_id, now, reason)

    async def _revoke_oidc_grant(self, grant_id: str, now: float, reason: str) -> bool:
        result = await self._sql(
            "UPDATE oidc_grants SET revoked_at = ?, revoked_reason = ? WHERE id = ? AND revoked_at IS NULL",
            (now, reason, grant_id),
        )
        await self._sql(
            "UPDATE oidc_tokens SET revoked_at = ? WHERE grant_id = ? AND revoked_at IS NULL", (now, grant_id)
        )
        return result.rowcount == 1

    async def revoke_oidc_grants(
        self, user_id: int, client_id: str | None, *, now: float, reason: str
    ) -> int:
        """Revoke a user's live grants (for one client, or all with None); return how many."""
        async with self._transaction():
            result = await self._sql(
                "SELECT id FROM oidc_grants WHERE user_id = ? AND (? IS NULL OR client_id = ?) "
                "AND revoked_at IS NULL",
                (user_id, client_id, client_id),
            )
            for row in result.rows:
                await self._revoke_oidc_grant(row["id"], now, reason)
        return len(result.rows)

    async def _insert_oidc_tokens(self, tokens: Sequence[OidcToken]) -> None:
        for token in tokens:
            await self._sql(
                "INSERT INTO oidc_tokens (token_hash, kind, grant_id, issued_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (token.token_hash, token.kind, token.grant_id, token.issued_at, token.expires_at),
            )

    async def get_oidc_consent(self, user_id: int, client_id: str) -> OidcConsent | None:
        """Return the consent a user remembered for a client, or None."""
        result = await self._locked(
            "SELECT user_id, client_id, scopes, granted_at FROM oidc_consents "
            "WHERE user_id = ? AND client_id = ?",
            (user_id, client_id),
        )
        return oidc_consent_from_row(result.rows[0]) if result.rows else None

    async def put_oidc_consent(self, consent: OidcConsent) -> None:
        """Remember (or replace) a user's consent for a client; NotFound (user)."""
        try:
            await self._locked(
                "INSERT INTO oidc_consents (user_id, client_id, scopes, granted_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (user_id, client_id) DO UPDATE SET scopes = excluded.scopes, "
                "granted_at = excluded.granted_at",
                (consent.user_id, consent.client_id, " ".join(sorted(consent.scopes)), consent.granted_at),
            )
        except sqlite3.IntegrityError as exc:
            raise NotFound(f"no user with id {consent.user_id}") from exc

    async def list_oidc_consents(self, user_id: int) -> list[OidcConsent]:
        """Return a user's remembered consents, by client id."""
        result = await self._locked(
            "SELECT user_id, client_id, scopes, granted_at FROM oidc_consents "
            "WHERE user_id = ? ORDER BY client_id",
            (user_id,),
        )
        return [oidc_consent_from_row(row) for row in result.rows]

    async def delete_oidc_consent(self, user_id: int, client_id: str, *, now: float) -> bool:
        """Forget a consent and revoke the grants (and tokens) the client holds for the user."""
        async with self._transaction():
            result = await self._sql(
                "DELETE FROM oidc_consents WHERE user_id = ? AND client_id = ?", (user_id, client_id)
            )
            grants = await self._sql(
                "SELECT id FROM oidc_grants WHERE user_id = ? AND client_id = ? AND revoked_at IS NULL",
                (user_id, client_id),
            )
            for row in grants.rows:
                await self._revoke_oidc_grant(row["id"], now, "consent revoked")
        return result.rowcount > 0 or bool(grants.rows)

    async def count_oidc_grants(self, now: float) -> dict[str, tuple[int, int]]:
        """Live grants by client id: (grants, distinct users), for the admin console."""
        result = await self._locked(
            "SELECT client_id, COUNT(*), COUNT(DISTINCT user_id) FROM oidc_grants "
            "WHERE revoked_at IS NULL AND expires_at > ? GROUP BY client_id",
            (now,),
        )
        return {row[0]: (int(row[1]), int(row[2])) for row in result.rows}

    async def prune_oidc(self, now: float, *, code_grace: float = 600.0) -> int:
        """Delete expired codes and tokens, and grants past their end; return how many rows went.

        Codes stay `code_grace` seconds past their expiry, so a late second use is still
        recognised as a reuse (and revokes its grant) rather than as an unknown code.
        """
        removed = 0
        async with self._transaction():
            for sql, before in (
                ("DELETE FROM oidc_codes WHERE expires_at <= ?", now - code_grace),
                ("DELETE FROM oidc_tokens WHERE expires_at <= ?", now),
                ("DELETE FROM oidc_grants WHERE expires_at <= ?", now),
            ):
                removed += (await self._sql(sql, (before,))).rowcount
        return removed

    # -- plumbing -----------------------------------------------------------

    async def _migrate(self) -> None:
        target = migrations.SCHEMA_VERSION
        async with self._transaction(immediate=True):
            current = int((await self._sql("PRAGMA user_version")).rows[0][0])
            if current > target:
                raise StorageError(
                    f"database schema version {current} is newer than this authgate supports "
                    f"({target}); upgrade authgate or restore a backup taken before the upgrade"
                )
            for version in range(current, target):
                for statement in migrations.split_statements(
                    migrations.script_for(migrations.MIGRATIONS[version], "sqlite")
                ):
                    await self._sql(statement)
                # PRAGMA takes no parameters; version is an int we computed.
                await self._sql(f"PRAGMA user_version = {version + 1:d}")

    @contextlib.asynccontextmanager
    async def _transaction(self, *, immediate: bool = False) -> AsyncIterator[None]:
        async with self._turn():
            await self._sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield
                await self._sql("COMMIT")
            except BaseException:
                # Shielded so a second cancellation cannot leave the shared connection
                # inside an open transaction; suppressed so a failed rollback (e.g. the
                # COMMIT did land) does not hide the original error.
                with contextlib.suppress(StorageError):
                    await asyncio.shield(self._sql("ROLLBACK"))
                raise

    def _storage_error(self, exc: sqlite3.Error) -> StorageError:
        kind = _ERROR_KINDS.get(getattr(exc, "sqlite_errorcode", -1) & 0xFF, "other")
        self.error_counts[kind] += 1
        return _storage_error(exc)

    async def _locked(self, sql: str, params: Sequence[Any] = ()) -> _Result:
        async with self._turn():
            return await self._sql(sql, params)

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """Hold the connection's lock; StoreUnavailable after waiting busy_timeout for it.

        Without this bound, requests queued behind a statement stuck on a locked database
        would each wait their own busy timeout in turn: the tenth would hang for ten of them.
        """
        # Always timed: an unlocked lock may still have waiters queued (woken, not yet
        # running), and acquire() then queues behind them too.
        try:
            async with asyncio.timeout(self._busy_timeout):
                await self._lock.acquire()
        except TimeoutError:
            raise StoreUnavailable(
                f"database busy: no turn on the connection within {self._busy_timeout:g}s"
            ) from None
        try:
            yield
        finally:
            self._lock.release()

    async def _sql(
        self, sql: str, params: Sequence[Any] = (), *, many: Iterable[Sequence[Any]] | None = None
    ) -> _Result:
        """Run one statement; the only place that talks to SQLite."""
        self.statement_count += 1
        try:
            if many is None:
                cursor = await self._db.execute(sql, params)
            else:
                cursor = await self._db.executemany(sql, many)
            try:
                rows = list(await cursor.fetchall())
            finally:
                await cursor.close()
        except sqlite3.IntegrityError:
            # Callers know which unique value was meant and turn this into Conflict/NotFound.
            raise
        except sqlite3.Error as exc:
            raise self._storage_error(exc) from exc
        return _Result(rows=rows, rowcount=cursor.rowcount)


def _storage_error(exc: sqlite3.Error) -> StorageError:
    """Translate a driver error: StoreUnavailable for lock, full disk and I/O, else StorageError."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _UNAVAILABLE_CODES:
        return StoreUnavailable(_UNAVAILABLE_CODES[code & 0xFF])
    return StorageError(f"database error: {exc}")


def _create_private_file(path: Path) -> None:
    # Create the file ourselves so it never exists, even briefly, with umask-derived
    # permissions: it holds password hashes. SQLite gives -wal/-shm the same mode.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot create database file {str(path)!r}: {exc}") from exc
    os.close(fd)


def _user_conflict(exc: sqlite3.IntegrityError, *, username: str, email: str) -> StorageError:
    message = str(exc)
    if "users.username" in message:
        return Conflict(f"username {username.lower()!r} is already taken")
    if "users.email_key" in message:
        return Conflict(f"e-mail {email!r} is already taken")
    return StorageError(f"database error: {message}")


def _totp_conflict(exc: sqlite3.IntegrityError, *, user_id: int, name: str) -> StorageError:
    message = str(exc)
    if "FOREIGN KEY" in message:
        return NotFound(f"no user with id {user_id}")
    if "totp_devices.user_id, totp_devices.name" in message:
        return Conflict(f"a TOTP device named {name!r} already exists")
    return StorageError(f"database error: {message}")


def _webauthn_conflict(exc: sqlite3.IntegrityError, *, user_id: int, name: str) -> StorageError:
    message = str(exc)
    if "FOREIGN KEY" in message:
        return NotFound(f"no user with id {user_id}")
    if "webauthn_credentials.credential_id" in message:
        return Conflict("this security key or passkey is already registered")
    if "webauthn_credentials.user_id, webauthn_credentials.name" in message:
        return Conflict(f"a security key or passkey named {name!r} already exists")
    return StorageError(f"database error: {message}")


def _app_password_conflict(exc: sqlite3.IntegrityError, *, user_id: int, name: str) -> StorageError:
    message = str(exc)
    if "FOREIGN KEY" in message:
        return NotFound(f"no user with id {user_id}")
    if "app_passwords.user_id, app_passwords.name" in message:
        return Conflict(f"an app password named {name!r} already exists")
    if "app_passwords.token_id" in message:
        return Conflict("token id collision; generate a new token")
    return StorageError(f"database error: {message}")


def _app_password_from_row(row: sqlite3.Row) -> AppPassword:
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


def _audit_from_row(row: sqlite3.Row) -> AuditEvent:
    return AuditEvent(
        id=row["id"],
        at=row["at"],
        event=row["event"],
        actor=row["actor"],
        target=row["target"],
        ip=row["ip"],
        detail=row["detail"],
    )


def _escape_like(text: str) -> str:
    """Make `%`, `_` and the escape character itself match literally in a LIKE ... ESCAPE '\\' pattern."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
