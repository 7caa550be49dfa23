"""The PostgreSQL store: the same contract as gateway/store/sqlite.py, for several instances.

Driver: asyncpg (maintained, native asyncio, binary protocol, its own pool; see
docs/scaling.md). Every SQL statement of this engine lives in this module.

Atomicity where SQLite relied on BEGIN IMMEDIATE (one writer at a time):
- single-use things (recovery codes, TOTP steps, recovery and reset links, challenges)
  are one conditional UPDATE/DELETE: under READ COMMITTED a second writer waits for the
  first's row lock and re-checks the condition on the committed row, so exactly one wins;
- the login-attempt reservation takes transaction-scoped advisory locks on the username
  and the address (always in that order, so two reservations cannot deadlock) before it
  counts and inserts;
- the app-password cap locks the user's row (SELECT ... FOR UPDATE) before counting;
- first-account setup takes an exclusive advisory lock that every plain user creation
  takes shared, so "create only if there is nobody" cannot race a second creation;
- migrations run under an advisory lock, so instances starting at once run each once.
A serialization failure or deadlock is retried a bounded number of times, then reported
as StoreUnavailable, like every connection error, pool timeout and statement timeout:
the portal answers 503 and /api/health says unhealthy, and nothing was written.

Revocations: the writes that end or change sessions, users and app passwords send a
NOTIFY on REVOCATION_CHANNEL inside their own transaction (delivered only if it commits).
One connection outside the pool LISTENs and hands them to the subscribed callbacks; when
it drops, caches fall back to the cache_ttl bound and it reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg

from gateway.errors import Conflict, NotFound, StorageError, StoreUnavailable
from gateway.logs import log_event
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
from gateway.store.contract import AppPasswordLimit, Revocation, RevocationListener, UserOverview
from gateway.store.dsn import redact_dsn
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

T = TypeVar("T")

REVOCATION_CHANNEL = "authgate_revocations"
# Advisory lock keys (two-int form: namespace, key) so authgate's locks cannot collide
# with another application's single-bigint locks on the same database.
_LOCK_NAMESPACE = 0x61677400  # "agt\0"
_LOCK_MIGRATE = 1
_LOCK_FIRST_USER = 2
_LOCK_ATTEMPT_USERNAME = _LOCK_NAMESPACE + 1
_LOCK_ATTEMPT_IP = _LOCK_NAMESPACE + 2
# Retries of a transaction the server aborted to keep concurrent ones serialisable.
_TRANSACTION_RETRIES = 5
_USER_HANDLE_BYTES = 32
_LISTEN_BACKOFF = (0.05, 5.0)  # first and longest wait between reconnection attempts
_LISTEN_PING = 1.0  # seconds between checks that the listening connection still answers
_ERROR_KIND_NAMES = ("busy", "full", "io", "readonly", "corrupt", "other")


_SELECT_USER_BY_ID = (
    "SELECT id, username, email, display_name, groups, disabled, created_at, password_login, source "
    "FROM users WHERE id = $1"
)
_SELECT_USER_BY_NAME = (
    "SELECT id, username, email, display_name, groups, disabled, created_at, password_login, source "
    "FROM users WHERE username = $1"
)
_SELECT_USER_BY_EMAIL = (
    "SELECT id, username, email, display_name, groups, disabled, created_at, password_login, source "
    "FROM users WHERE email_key = $1"
)
_SELECT_USERS = (
    "SELECT id, username, email, display_name, groups, disabled, created_at, password_login, source "
    "FROM users ORDER BY username"
)
_SELECT_USER_BY_HANDLE = """
SELECT id, username, email, display_name, groups, disabled, created_at, password_login, source FROM users
WHERE id = (SELECT user_id FROM webauthn_user_handles WHERE handle = $1)
"""
# A username wins over another account's e-mail that happens to read the same.
_SELECT_LOGIN = """
SELECT id, username, email, display_name, groups, disabled, created_at, password_login, source,
       password_hash FROM users
WHERE username = $1 OR email_key = $1
ORDER BY (username = $1) DESC
LIMIT 1
"""
_INSERT_USER = """
INSERT INTO users (username, email, email_key, display_name, groups, password_hash, disabled, created_at)
VALUES ($1, $2, $3, $4, $5, $6, 0, $7)
RETURNING id, username, email, display_name, groups, disabled, created_at, password_login, source
"""
# A NULL parameter keeps the current value, so one fixed statement serves every partial update.
_UPDATE_USER = """
UPDATE users SET
    email = COALESCE($1, email),
    email_key = COALESCE($2, email_key),
    display_name = COALESCE($3, display_name),
    groups = COALESCE($4, groups)
WHERE id = $5
RETURNING id, username, email, display_name, groups, disabled, created_at, password_login, source
"""
# A directory user's row, keyed by the entry's stable id (see the SQLite store for why
# email_key is not the directory's mail).
_UPSERT_DIRECTORY_USER = """
INSERT INTO users (username, email, email_key, display_name, groups, password_hash, disabled, created_at,
                   source, external_id, directory_stamp, directory_checked_at)
VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, 'ldap', $8, $9, $10)
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
_SELECT_DIRECTORY_DUE = """
SELECT id, username, email, display_name, groups, disabled, created_at, password_login, source,
       external_id, COALESCE(directory_stamp, '') AS directory_stamp
FROM users AS u
WHERE source = 'ldap' AND disabled = 0 AND COALESCE(directory_checked_at, 0) < $1
  AND (EXISTS (SELECT 1 FROM sessions AS s WHERE s.user_id = u.id AND s.expires_at > $2)
       OR EXISTS (SELECT 1 FROM app_passwords AS a WHERE a.user_id = u.id AND a.revoked_at IS NULL))
ORDER BY COALESCE(directory_checked_at, 0)
LIMIT $3
"""
_SEARCH_USERS = """
SELECT id, username, email, display_name, groups, disabled, created_at, password_login, source FROM users
WHERE username LIKE $1 ESCAPE '\\' OR email_key LIKE $1 ESCAPE '\\' OR lower(display_name) LIKE $1 ESCAPE '\\'
ORDER BY username
LIMIT $2
"""
_USER_OVERVIEW = """
SELECT u.id,
       (SELECT COUNT(*) FROM totp_devices AS t WHERE t.user_id = u.id) AS totp,
       (SELECT COUNT(*) FROM webauthn_credentials AS w WHERE w.user_id = u.id) AS keys,
       (SELECT COUNT(*) FROM recovery_codes AS r WHERE r.user_id = u.id AND r.used_at IS NULL) AS recovery,
       (SELECT COUNT(*) FROM sessions AS s WHERE s.user_id = u.id AND s.expires_at > $1) AS sessions
FROM users AS u
"""

_INSERT_SESSION = (
    "INSERT INTO sessions (id_hash, user_id, level, created_at, authenticated_at, last_active, "
    "expires_at, remember_me, ip, user_agent, amr) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)
_SELECT_USER_SESSIONS = (
    "SELECT id_hash, user_id, level, created_at, authenticated_at, last_active, expires_at, remember_me, "
    "ip, user_agent, amr FROM sessions WHERE user_id = $1 ORDER BY created_at DESC"
)
# The u_ prefixes keep user and session columns apart in the one joined row.
_SELECT_SESSION_WITH_USER = """
SELECT s.id_hash, s.user_id, s.level, s.created_at, s.authenticated_at, s.last_active,
       s.expires_at, s.remember_me, s.ip, s.user_agent, s.amr,
       u.id AS u_id, u.username AS u_username, u.email AS u_email,
       u.display_name AS u_display_name, u.groups AS u_groups,
       u.disabled AS u_disabled, u.created_at AS u_created_at, u.password_login AS u_password_login,
       u.source AS u_source

FROM sessions AS s JOIN users AS u ON u.id = s.user_id
WHERE s.id_hash = $1
"""
_SELECT_SESSIONS_WITH_USER = """
SELECT s.id_hash, s.user_id, s.level, s.created_at, s.authenticated_at, s.last_active,
       s.expires_at, s.remember_me, s.ip, s.user_agent, s.amr,
       u.id AS u_id, u.username AS u_username, u.email AS u_email,
       u.display_name AS u_display_name, u.groups AS u_groups,
       u.disabled AS u_disabled, u.created_at AS u_created_at, u.password_login AS u_password_login,
       u.source AS u_source

FROM sessions AS s JOIN users AS u ON u.id = s.user_id
WHERE s.id_hash = ANY($1::text[])
"""
_TOUCH_SESSIONS = """
UPDATE sessions AS s SET last_active = GREATEST(s.last_active, v.at)
FROM unnest($1::text[], $2::float8[]) AS v (id_hash, at)
WHERE s.id_hash = v.id_hash
"""

# Failures after `since` and after the latest success for the same key (see sqlite.py).
_FAILURES_SINCE = {
    "username": """
SELECT at FROM login_attempts
WHERE username = $1 AND success = 0 AND at > $2
  AND at > COALESCE((SELECT MAX(at) FROM login_attempts WHERE username = $1 AND success = 1),
                    '-Infinity'::float8)
ORDER BY at
""",
    "ip": """
SELECT at FROM login_attempts
WHERE ip = $1 AND success = 0 AND at > $2
  AND at > COALESCE((SELECT MAX(at) FROM login_attempts WHERE ip = $1 AND success = 1), '-Infinity'::float8)
ORDER BY at
""",
}
_FAILURES_BY_KEY = {
    "username": """
SELECT a.username, a.at FROM login_attempts AS a
WHERE a.success = 0 AND a.at > $1
  AND a.at > COALESCE(
      (SELECT MAX(b.at) FROM login_attempts AS b WHERE b.username = a.username AND b.success = 1),
      '-Infinity'::float8)
""",
    "ip": """
SELECT a.ip, a.at FROM login_attempts AS a
WHERE a.success = 0 AND a.at > $1 AND a.ip != ''
  AND a.at > COALESCE(
      (SELECT MAX(b.at) FROM login_attempts AS b WHERE b.ip = a.ip AND b.success = 1), '-Infinity'::float8)
""",
}
_INSERT_ATTEMPT = (
    "INSERT INTO login_attempts (username, ip, success, at) VALUES ($1, $2, $3, $4) RETURNING id"
)

_INSERT_TOTP_DEVICE = """
INSERT INTO totp_devices (user_id, name, secret_sealed, digits, period, algorithm, last_step, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING id
"""
# The compare-and-set that makes a TOTP code single-use across instances (see sqlite.py).
_USE_TOTP_STEP = """
UPDATE totp_devices SET last_step = $1, last_used_at = $2
WHERE id = $3 AND (last_step IS NULL OR last_step < $1)
"""
_SECOND_FACTOR_KINDS = """
SELECT EXISTS (SELECT 1 FROM totp_devices WHERE user_id = $1) AS totp,
       EXISTS (SELECT 1 FROM webauthn_credentials WHERE user_id = $1) AS webauthn,
       EXISTS (SELECT 1 FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL) AS recovery
"""

_INSERT_WEBAUTHN_CREDENTIAL = """
INSERT INTO webauthn_credentials (user_id, credential_id, public_key, sign_count, transports, aaguid,
                                  backup_eligible, backed_up, device_type, name, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
RETURNING id
"""
# Only ever moves the counter up, so two concurrent assertions cannot lower it.
_UPDATE_WEBAUTHN_USE = """
UPDATE webauthn_credentials SET sign_count = GREATEST(sign_count, $1), backed_up = $2, last_used_at = $3
WHERE id = $4
"""

_SELECT_SECURITY_EVENTS = """
SELECT a.id, u.id AS user_id, a.event, a.detail, COALESCE(a.ip, '') AS ip, a.at
FROM audit_log AS a JOIN users AS u ON u.username = a.target
WHERE u.id = $1 ORDER BY a.at DESC, a.id DESC LIMIT $2
"""

_INSERT_APP_PW = """
INSERT INTO app_passwords (user_id, token_id, token_hash, name, domains, level, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
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
WHERE a.token_id = $1 AND a.revoked_at IS NULL
"""
_SELECT_APP_TOKENS = """
SELECT id, user_id, token_id, name, domains, level, created_at, expires_at, last_used_at, last_used_ip
FROM app_passwords WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC, id DESC
"""
# Only moves last use forward, so a flush from a slower instance cannot overwrite a newer one.
_TOUCH_APP_PW = """
UPDATE app_passwords AS a SET last_used_at = v.at, last_used_ip = v.ip
FROM unnest($1::bigint[], $2::float8[], $3::text[]) AS v (id, at, ip)
WHERE a.id = v.id AND (a.last_used_at IS NULL OR a.last_used_at < v.at)
"""

# A NULL parameter disables its filter, so one fixed statement serves every combination.
_SELECT_AUDIT = """
SELECT id, at, event, actor, target, ip, detail FROM audit_log
WHERE ($1::text IS NULL OR actor = $1)
  AND ($2::text IS NULL OR target = $2)
  AND ($3::text IS NULL OR event = $3)
  AND ($4::float8 IS NULL OR at >= $4)
  AND ($5::float8 IS NULL OR at < $5)
ORDER BY at DESC, id DESC
LIMIT $6 OFFSET $7
"""
# Keyset paging by id: rows appended during an export can neither be skipped nor repeated.
_PAGE_AUDIT = """
SELECT id, at, event, actor, target, ip, detail FROM audit_log
WHERE id > $1 AND ($2::float8 IS NULL OR at >= $2)
ORDER BY id
LIMIT $3
"""

_CONSUME_RECOVERY_LINK = """
UPDATE account_recovery_tokens SET used_at = $1
WHERE id_hash = $2 AND used_at IS NULL AND expires_at > $1
RETURNING user_id
"""
_CONSUME_RESET_LINK = """
UPDATE password_reset_tokens SET used_at = $1
WHERE id_hash = $2 AND used_at IS NULL AND expires_at > $1
RETURNING user_id
"""

_NOTIFY = "SELECT pg_notify($1, $2)"

_SELECT_EXTERNAL_LINK = """
SELECT e.id, e.provider, e.subject, e.user_id, e.email, e.created_at, e.last_used_at,
       u.id AS u_id, u.username AS u_username, u.email AS u_email,
       u.display_name AS u_display_name, u.groups AS u_groups,
       u.disabled AS u_disabled, u.created_at AS u_created_at, u.password_login AS u_password_login
FROM external_identities AS e JOIN users AS u ON u.id = e.user_id
WHERE e.provider = $1 AND e.subject = $2
"""
_INSERT_EXTERNAL_LINK = """
INSERT INTO external_identities (provider, subject, user_id, email, created_at) VALUES ($1, $2, $3, $4, $5)
RETURNING id, provider, subject, user_id, email, created_at, last_used_at
"""
_SELECT_USER_EXTERNAL_LINKS = """
SELECT id, provider, subject, user_id, email, created_at, last_used_at
FROM external_identities WHERE user_id = $1 ORDER BY created_at, id
"""
_DELETE_EXTERNAL_LINK = """
DELETE FROM external_identities WHERE id = $1 AND user_id = $2
RETURNING id, provider, subject, user_id, email, created_at, last_used_at
"""


# Unique constraints and indexes by name, as PostgreSQL names them in UniqueViolationError.
_UNIQUE_MESSAGES = {
    "totp_devices_user_name": "a TOTP device named {name!r} already exists",
    "webauthn_credentials_credential_id_key": "this security key or passkey is already registered",
    "webauthn_credentials_user_name": "a security key or passkey named {name!r} already exists",
    "app_passwords_user_name": "an app password named {name!r} already exists",
    "app_passwords_token_id_key": "token id collision; generate a new token",
}

# SQLSTATE classes and codes that mean "the database cannot take this now", by error kind
# (the names of gateway.metrics.STORE_ERROR_KINDS).
_UNAVAILABLE_STATES = {
    "08": "io",  # connection exception
    "57P01": "io",  # admin shutdown (pg_ctl stop -m fast, pg_terminate_backend)
    "57P02": "io",  # crash shutdown
    "57P03": "io",  # cannot connect now (starting up, shutting down)
    "57014": "busy",  # query canceled: statement_timeout
    "55P03": "busy",  # lock not available
    "53300": "busy",  # too many connections
    "53100": "full",  # disk full
    "53200": "full",  # out of memory
    "53": "full",  # insufficient resources
    "25006": "readonly",  # read-only transaction (a standby)
    "XX001": "corrupt",  # data corrupted
    "XX002": "corrupt",  # index corrupted
}


class _OneLine(logging.Filter):
    """Turn asyncpg's pool warnings with a traceback (every retry while the server is down) into
    one line with the reason, as authgate logs every other database failure."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {_describe(record.exc_info[1])}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("asyncpg.pool").addFilter(_OneLine())

_INSERT_OIDC_GRANT = """
INSERT INTO oidc_grants (id, client_id, user_id, scopes, session_hash, auth_time, amr, acr, nonce,
                         created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
"""
# FOR UPDATE OF the single-use row: a second redeemer waits for the first's commit, then
# reads the row as it left it (used) and is told "reused".
_SELECT_OIDC_CODE_FOR_UPDATE = """
SELECT c.code_hash, c.grant_id, c.redirect_uri, c.code_challenge, c.expires_at, c.used_at,
       g.id AS g_id, g.client_id AS g_client_id, g.user_id AS g_user_id, g.scopes AS g_scopes,
       g.session_hash AS g_session_hash, g.auth_time AS g_auth_time, g.amr AS g_amr, g.acr AS g_acr,
       g.nonce AS g_nonce, g.created_at AS g_created_at, g.expires_at AS g_expires_at,
       g.revoked_at AS g_revoked_at
FROM oidc_codes AS c JOIN oidc_grants AS g ON g.id = c.grant_id
WHERE c.code_hash = $1
FOR UPDATE OF c
"""
_SELECT_OIDC_ISSUED = """
SELECT t.token_hash, t.kind, t.grant_id, t.issued_at, t.expires_at, t.used_at, t.revoked_at,
       g.id AS g_id, g.client_id AS g_client_id, g.user_id AS g_user_id, g.scopes AS g_scopes,
       g.session_hash AS g_session_hash, g.auth_time AS g_auth_time, g.amr AS g_amr, g.acr AS g_acr,
       g.nonce AS g_nonce, g.created_at AS g_created_at, g.expires_at AS g_expires_at,
       g.revoked_at AS g_revoked_at
FROM oidc_tokens AS t JOIN oidc_grants AS g ON g.id = t.grant_id
WHERE t.token_hash = $1
"""
_SELECT_OIDC_ISSUED_FOR_UPDATE = _SELECT_OIDC_ISSUED.rstrip() + "\nFOR UPDATE OF t\n"


def _rowcount(status: str) -> int:
    """The row count of a command tag such as "UPDATE 3" or "INSERT 0 1"."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresStore:
    """Everything authgate keeps, in a PostgreSQL database several instances share."""

    engine = "postgres"

    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Callable[[], float],
        *,
        dsn: str,
        connect_timeout: float,
        connect_kwargs: Mapping[str, Any],
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._dsn = dsn
        self._shown_dsn = redact_dsn(dsn)
        self._connect_timeout = connect_timeout
        self._connect_kwargs = dict(connect_kwargs)
        self.statement_count: int = 0
        self.error_counts: dict[str, int] = dict.fromkeys(_ERROR_KIND_NAMES, 0)
        self._listeners: list[RevocationListener] = []
        self._listen_task: asyncio.Task[None] | None = None
        self._listen_connection: asyncpg.Connection | None = None
        self._live = False
        self.listen_reconnects = 0  # how often the revocation channel came back after a drop

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        clock: Callable[[], float] = time.time,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        statement_timeout: float = 5.0,
        statement_cache: bool = True,
        migrate: bool = True,
    ) -> PostgresStore:
        """Connect a pool to `dsn` and migrate the schema (once, whoever else starts at the same time).

        `statement_timeout` is set on the server for every connection (a statement running
        longer is cancelled there) and bounds the client's wait for a reply; `connect_timeout`
        bounds opening a connection and waiting for a free one in the pool. Past either, a
        call raises StoreUnavailable. `statement_cache=False` for PgBouncer in transaction mode.
        """
        connect_kwargs: dict[str, Any] = {
            "timeout": connect_timeout,
            "command_timeout": statement_timeout + 1.0,
            "statement_cache_size": 100 if statement_cache else 0,
            "server_settings": {
                "application_name": "authgate",
                "statement_timeout": str(max(1, round(statement_timeout * 1000))),
                # a transaction left open by a stuck client must not hold locks for ever
                "idle_in_transaction_session_timeout": "60000",
            },
        }
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min(2, pool_size),
                max_size=pool_size,
                max_inactive_connection_lifetime=300.0,
                **connect_kwargs,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StorageError(f"cannot connect to {redact_dsn(dsn)}: {_describe(exc)}") from exc
        store = cls(pool, clock, dsn=dsn, connect_timeout=connect_timeout, connect_kwargs=connect_kwargs)
        try:
            if migrate:
                await store._migrate()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self, *, timeout: float = 5.0) -> None:
        """Stop listening and close the pool, waiting at most `timeout` for connections in use."""
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
            self._listen_task = None
        try:
            await asyncio.wait_for(self._pool.close(), timeout)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            self._pool.terminate()

    async def ping(self) -> None:
        """Run a trivial query, raising StorageError when the database is unusable."""
        await self._run(lambda conn: conn.fetchval("SELECT 1"))

    # -- revocations --------------------------------------------------------

    @property
    def revocations_live(self) -> bool:
        """True while the LISTEN connection is up (changes by other instances are heard at once)."""
        return self._live

    def subscribe_revocations(self, listener: RevocationListener) -> None:
        """Call `listener` for every revocation any instance commits; starts the listening connection."""
        self._listeners.append(listener)
        if self._listen_task is None:
            self._listen_task = asyncio.get_running_loop().create_task(self._listen_forever())

    async def wait_listening(self, timeout: float) -> bool:
        """Wait until the revocation channel is up; False when it is not within `timeout`."""
        deadline = time.monotonic() + timeout
        while not self._live:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def listener_pid(self) -> int | None:
        """The server process id of the listening connection (for tests that cut it)."""
        conn = self._listen_connection
        return conn.get_server_pid() if conn is not None and not conn.is_closed() else None

    async def _listen_forever(self) -> None:
        delay = _LISTEN_BACKOFF[0]
        first = True
        while True:
            try:
                conn = await asyncpg.connect(self._dsn, **self._connect_kwargs)
            except Exception as exc:  # whatever the cause, keep trying: the channel must come back
                log_event(
                    "revocation_channel_down",
                    logging.WARNING,
                    reason=_describe(exc),
                    retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311
                delay = min(delay * 2, _LISTEN_BACKOFF[1])
                continue
            dropped = asyncio.Event()
            conn.add_termination_listener(lambda _conn, ended=dropped: ended.set())
            try:
                await conn.add_listener(REVOCATION_CHANNEL, self._on_notification)
                self._listen_connection = conn
                self._live = True
                delay = _LISTEN_BACKOFF[0]
                if not first:
                    self.listen_reconnects += 1
                    log_event("revocation_channel_up", reconnects=self.listen_reconnects)
                    # Revocations made while the channel was down were missed: drop every
                    # cached answer rather than serve one for the rest of its cache_ttl.
                    self._deliver(Revocation(kind="all", key=""))
                first = False
                await self._watch(conn, dropped)
            except Exception as exc:  # a dropped or broken connection: reconnect below
                log_event("revocation_channel_down", logging.WARNING, reason=_describe(exc))
                await asyncio.sleep(delay)
            finally:
                self._live = False
                self._listen_connection = None
                if not conn.is_closed():
                    conn.terminate()

    async def _watch(self, conn: asyncpg.Connection, dropped: asyncio.Event) -> None:
        """Return when the listening connection ends or stops answering a ping."""
        while not dropped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(dropped.wait(), _LISTEN_PING)
                break
            await conn.fetchval("SELECT 1", timeout=self._connect_timeout)
        log_event("revocation_channel_down", logging.WARNING, reason="connection closed")

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        revocation = _parse_revocation(payload)
        if revocation is not None:
            self._deliver(revocation)

    def _deliver(self, revocation: Revocation) -> None:
        for listener in self._listeners:
            try:
                listener(revocation)
            except Exception:  # one broken listener must not silence the others
                logging.getLogger("authgate").exception("revocation listener failed")

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

        async def work(conn: asyncpg.Connection) -> User:
            # shared: plain creations run side by side, but never beside a first-account setup
            await self._execute(
                conn, "SELECT pg_advisory_xact_lock_shared($1, $2)", _LOCK_NAMESPACE, _LOCK_FIRST_USER
            )
            return await self._insert_user(conn, username, email, display_name, groups, password_hash)

        return await self._run(work, transaction=True)

    async def create_first_user(
        self,
        username: str,
        email: str,
        display_name: str,
        groups: Sequence[str],
        password_hash: str | None,
    ) -> User | None:
        """Insert a user only if there is none yet; None when another user already exists."""

        async def work(conn: asyncpg.Connection) -> User | None:
            await self._execute(
                conn, "SELECT pg_advisory_xact_lock($1, $2)", _LOCK_NAMESPACE, _LOCK_FIRST_USER
            )
            if await self._fetchval(conn, "SELECT EXISTS (SELECT 1 FROM users)"):
                return None
            return await self._insert_user(conn, username, email, display_name, groups, password_hash)

        return await self._run(work, transaction=True)

    async def _insert_user(
        self,
        conn: asyncpg.Connection,
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
            row = await self._fetchrow(conn, _INSERT_USER, *params)
        except asyncpg.UniqueViolationError as exc:
            raise _user_conflict(exc, username=username, email=email) from exc
        assert row is not None  # noqa: S101 - INSERT ... RETURNING returns the row it inserted
        return user_from_row(row)

    async def count_users(self) -> int:
        """Return how many users exist."""
        return int(await self._val("SELECT COUNT(*) FROM users"))

    async def get_user(self, user_id: int) -> User | None:
        """Return the user with this id, or None."""
        row = await self._row(_SELECT_USER_BY_ID, user_id)
        return user_from_row(row) if row is not None else None

    async def get_user_by_name(self, username: str) -> User | None:
        """Return the user with this username (any case), or None."""
        row = await self._row(_SELECT_USER_BY_NAME, username.lower())
        return user_from_row(row) if row is not None else None

    async def find_login(self, login: str) -> tuple[User, str | None] | None:
        """Return the user whose username or e-mail is `login` (any case) and their password hash."""
        row = await self._row(_SELECT_LOGIN, login.lower())
        if row is None:
            return None
        return user_from_row(row), row["password_hash"]

    async def find_user_by_email(self, email: str) -> User | None:
        """Return the user with this e-mail address (any case), or None."""
        row = await self._row(_SELECT_USER_BY_EMAIL, email.strip().lower())
        return user_from_row(row) if row is not None else None

    async def list_users(self) -> list[User]:
        """Return every user, ordered by username."""
        return [user_from_row(row) for row in await self._rows(_SELECT_USERS)]

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

        async def work(conn: asyncpg.Connection) -> User:
            try:
                row = await self._fetchrow(conn, _UPDATE_USER, *params)
            except asyncpg.UniqueViolationError as exc:
                raise _user_conflict(exc, username="", email=email or "") from exc
            if row is None:
                raise NotFound(f"no user with id {user_id}")
            await self._notify(conn, "u", user_id)
            return user_from_row(row)

        return await self._run(work, transaction=True)

    async def set_password_hash(self, user_id: int, password_hash: str | None) -> None:
        """Replace the user's password hash (None makes the account passwordless); NotFound."""
        await self._update_user_or_fail(
            "UPDATE users SET password_hash = $1 WHERE id = $2", password_hash, user_id, user_id=user_id
        )

    async def set_password_login(self, user_id: int, enabled: bool) -> None:
        """Allow or refuse password login for the account (False = WebAuthn only); NotFound."""
        await self._update_user_or_fail(
            "UPDATE users SET password_login = $1 WHERE id = $2", int(enabled), user_id, user_id=user_id
        )

    async def set_disabled(self, user_id: int, disabled: bool) -> None:
        """Disable or enable a user; disabling also ends all their sessions. NotFound."""

        async def work(conn: asyncpg.Connection) -> None:
            status = await self._execute(
                conn, "UPDATE users SET disabled = $1 WHERE id = $2", int(disabled), user_id
            )
            if _rowcount(status) == 0:
                raise NotFound(f"no user with id {user_id}")
            if disabled:
                await self._execute(conn, "DELETE FROM sessions WHERE user_id = $1", user_id)
            await self._notify(conn, "u", user_id)

        await self._run(work, transaction=True)

    async def delete_user(self, user_id: int) -> None:
        """Delete a user and (by cascade) their sessions; NotFound."""
        await self._update_user_or_fail("DELETE FROM users WHERE id = $1", user_id, user_id=user_id)

    async def _update_user_or_fail(self, sql: str, *args: Any, user_id: int) -> None:
        async def work(conn: asyncpg.Connection) -> None:
            if _rowcount(await self._execute(conn, sql, *args)) == 0:
                raise NotFound(f"no user with id {user_id}")
            await self._notify(conn, "u", user_id)

        await self._run(work, transaction=True)

    async def search_users(self, query: str, limit: int = 50) -> list[User]:
        """Return users whose username, e-mail or display name contains `query` (ASCII case-insensitive)."""
        pattern = "%" + escape_like(query.strip().lower()) + "%"
        return [user_from_row(row) for row in await self._rows(_SEARCH_USERS, pattern, limit)]

    async def user_overview(self, now: float) -> dict[int, UserOverview]:
        """Return, by user id, counts of second factors and live sessions (one query, no secrets)."""
        return {
            int(row["id"]): UserOverview(
                totp_devices=int(row["totp"]),
                webauthn_credentials=int(row["keys"]),
                recovery_codes_left=int(row["recovery"]),
                sessions=int(row["sessions"]),
            )
            for row in await self._rows(_USER_OVERVIEW, now)
        }

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

        async def work(conn: asyncpg.Connection) -> User:
            try:
                row = await self._fetchrow(conn, _UPSERT_DIRECTORY_USER, *params)
            except asyncpg.UniqueViolationError as exc:
                raise _user_conflict(exc, username=username, email=email) from exc
            assert row is not None  # noqa: S101 - INSERT ... RETURNING returns the row it wrote
            await self._notify(conn, "u", int(row["id"]))
            return user_from_row(row)

        return await self._run(work, transaction=True)

    async def directory_users_due(
        self, *, checked_before: float, now: float, limit: int = 100
    ) -> list[tuple[User, str, str]]:
        """Enabled directory users with a live session or app password, last checked before
        `checked_before`: (user, external id, password stamp), oldest check first."""
        rows = await self._rows(_SELECT_DIRECTORY_DUE, checked_before, now, limit)
        return [(user_from_row(row), row["external_id"], row["directory_stamp"]) for row in rows]

    async def directory_link(self, user_id: int) -> tuple[str, str] | None:
        """Return a directory user's (external id, password stamp); None for a local user."""
        row = await self._row(
            "SELECT external_id, COALESCE(directory_stamp, '') AS stamp FROM users "
            "WHERE id = $1 AND source = 'ldap'",
            user_id,
        )
        return (row["external_id"], row["stamp"]) if row is not None else None

    async def set_directory_checked(self, user_id: int, checked_at: float) -> None:
        """Record that the directory was asked about a user (found or not)."""

        async def work(conn: asyncpg.Connection) -> None:
            await self._execute(
                conn, "UPDATE users SET directory_checked_at = $1 WHERE id = $2", checked_at, user_id
            )

        await self._run(work, transaction=True)

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
            await self._exec(_INSERT_SESSION, *params)
        except asyncpg.ForeignKeyViolationError as exc:
            raise NotFound(f"no user with id {rec.user_id}") from exc
        except asyncpg.UniqueViolationError as exc:
            raise Conflict("session id already exists") from exc

    async def get_session(self, id_hash: str) -> tuple[SessionRecord, User] | None:
        """Return the session and its user in one query, or None."""
        row = await self._row(_SELECT_SESSION_WITH_USER, id_hash)
        if row is None:
            return None
        return session_from_row(row), user_from_row(row, prefix="u_")

    async def read_session(self, id_hash: str) -> tuple[SessionRecord, User] | None:
        """Like get_session (PostgreSQL readers never wait behind writers, so no second connection)."""
        return await self.get_session(id_hash)

    async def read_sessions(self, id_hashes: Sequence[str]) -> dict[str, tuple[SessionRecord, User]]:
        """Read many sessions with their users in one query; a missing hash means the session is gone."""
        hashes = list(dict.fromkeys(id_hashes))
        if not hashes:
            return {}
        rows = await self._rows(_SELECT_SESSIONS_WITH_USER, hashes)
        return {row["id_hash"]: (session_from_row(row), user_from_row(row, prefix="u_")) for row in rows}

    async def delete_session(self, id_hash: str) -> bool:
        """Delete one session; False when it did not exist."""

        async def work(conn: asyncpg.Connection) -> bool:
            gone = (
                _rowcount(await self._execute(conn, "DELETE FROM sessions WHERE id_hash = $1", id_hash)) > 0
            )
            if gone:
                await self._notify(conn, "s", id_hash)
            return gone

        return await self._run(work, transaction=True)

    async def delete_user_sessions(self, user_id: int, *, keep_id_hash: str | None = None) -> int:
        """Delete a user's sessions except `keep_id_hash`; return how many were deleted."""

        async def work(conn: asyncpg.Connection) -> int:
            status = await self._execute(
                conn,
                "DELETE FROM sessions WHERE user_id = $1 AND id_hash IS DISTINCT FROM $2::text",
                user_id,
                keep_id_hash,
            )
            count = _rowcount(status)
            if count:
                await self._notify(conn, "u", user_id, keep_id_hash or "")
            return count

        return await self._run(work, transaction=True)

    async def list_user_sessions(self, user_id: int) -> list[SessionRecord]:
        """Return a user's sessions, newest first."""
        return [session_from_row(row) for row in await self._rows(_SELECT_USER_SESSIONS, user_id)]

    async def set_session_authenticated(self, id_hash: str, at: float) -> bool:
        """Record that the session's owner proved a factor again (re-authentication) at `at`."""

        async def work(conn: asyncpg.Connection) -> bool:
            status = await self._execute(
                conn, "UPDATE sessions SET authenticated_at = $1 WHERE id_hash = $2", at, id_hash
            )
            if _rowcount(status) != 1:
                return False
            await self._notify(conn, "s", id_hash)
            return True

        return await self._run(work, transaction=True)

    async def touch_sessions(self, last_active: Mapping[str, float]) -> None:
        """Record activity times by session id hash; never moves last_active backwards."""
        if not last_active:
            return
        await self._exec(_TOUCH_SESSIONS, list(last_active), [float(at) for at in last_active.values()])

    async def count_active_sessions(self, now: float, *, idle_since: float | None) -> int:
        """Count sessions not expired and, unless remember-me, active after `idle_since` (None: any)."""
        cutoff = -1e308 if idle_since is None else idle_since
        return int(
            await self._val(
                "SELECT COUNT(*) FROM sessions WHERE expires_at > $1 AND (remember_me = 1 OR last_active "
                "> $2)",
                now,
                cutoff,
            )
        )

    async def delete_expired_sessions(self, now: float) -> int:
        """Delete sessions whose absolute end has passed; return how many."""
        return _rowcount(await self._exec("DELETE FROM sessions WHERE expires_at <= $1", now))

    # -- login attempts -----------------------------------------------------

    async def record_attempt(self, username: str, ip: str, success: bool, at: float) -> None:
        """Record one login attempt; the username is compared case-insensitively later."""
        await self._exec(
            "INSERT INTO login_attempts (username, ip, success, at) VALUES ($1, $2, $3, $4)",
            username.lower(),
            ip,
            int(success),
            at,
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

        The same contract as the SQLite store's. Atomic across instances: the username's and
        then the address's advisory locks are taken (always in that order) before the reads,
        in the transaction that inserts, so concurrent reservations for one key queue up and
        each sees the rows the earlier ones reserved.
        """
        key = username.lower()

        async def work(conn: asyncpg.Connection) -> AttemptSlot:
            if ban_end is not None:
                lock = "SELECT pg_advisory_xact_lock($1, hashtext($2))"
                await self._execute(conn, lock, _LOCK_ATTEMPT_USERNAME, key)
                if ip:
                    await self._execute(conn, lock, _LOCK_ATTEMPT_IP, ip)
                ends = []
                for column, value in (("username", key), ("ip", ip)):
                    if not value:
                        continue
                    rows = await self._fetch(conn, _FAILURES_SINCE[column], value, since)
                    ends.append(ban_end([float(row[0]) for row in rows]))
                active = [end for end in ends if end is not None]
                if active:
                    return AttemptSlot(attempt_id=None, banned_until=max(active))
            attempt_id = await self._fetchval(conn, _INSERT_ATTEMPT, key, ip, 0, at)
            return AttemptSlot(attempt_id=int(attempt_id), banned_until=None)

        return await self._run(work, transaction=True)

    async def mark_attempt_succeeded(self, attempt_id: int) -> None:
        """Turn a reserved attempt into a success (which wipes the failure slate, as before)."""
        await self._exec("UPDATE login_attempts SET success = 1 WHERE id = $1", attempt_id)

    async def withdraw_attempt(self, attempt_id: int) -> None:
        """Delete a reserved attempt that turned out neither a failure nor a finished login."""
        await self._exec("DELETE FROM login_attempts WHERE id = $1 AND success = 0", attempt_id)

    async def failures_since(
        self, *, username: str | None = None, ip: str | None = None, since: float
    ) -> list[float]:
        """Return failure times (ascending) after `since` and after the latest success, by username or ip."""
        if (username is None) == (ip is None):
            raise ValueError("give exactly one of username and ip")
        column, key = ("username", username.lower()) if username is not None else ("ip", ip)
        return [float(row[0]) for row in await self._rows(_FAILURES_SINCE[column], key, since)]

    async def failures_by_key(self, column: str, *, since: float) -> dict[str, list[float]]:
        """Failure times after `since` and after each key's latest success, by "username" or "ip"."""
        found: dict[str, list[float]] = {}
        for key, at in await self._rows(_FAILURES_BY_KEY[column], since):
            found.setdefault(str(key), []).append(float(at))
        return found

    async def prune_attempts(self, before: float) -> int:
        """Delete attempts older than `before`; return how many."""
        return _rowcount(await self._exec("DELETE FROM login_attempts WHERE at < $1", before))

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
        params = (user_id, name, secret_sealed, digits, period, algorithm, last_step, self._clock())
        try:
            return int(await self._val(_INSERT_TOTP_DEVICE, *params))
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise _integrity_error(exc, user_id=user_id, name=name) from exc

    async def list_totp_devices(self, user_id: int) -> list[TotpDevice]:
        """Return the user's TOTP devices, oldest first."""
        rows = await self._rows(
            "SELECT id, user_id, name, secret_sealed, digits, period, algorithm, last_step, created_at, "
            "last_used_at FROM totp_devices WHERE user_id = $1 ORDER BY created_at, id",
            user_id,
        )
        return [totp_from_row(row) for row in rows]

    async def get_totp_device(self, user_id: int, device_id: int) -> TotpDevice | None:
        """Return the device if it exists and belongs to the user, else None."""
        row = await self._row(
            "SELECT id, user_id, name, secret_sealed, digits, period, algorithm, last_step, created_at, "
            "last_used_at FROM totp_devices WHERE id = $1 AND user_id = $2",
            device_id,
            user_id,
        )
        return totp_from_row(row) if row is not None else None

    async def rename_totp_device(self, user_id: int, device_id: int, name: str) -> None:
        """Rename one of the user's devices; NotFound, or Conflict when the name is taken."""
        try:
            status = await self._exec(
                "UPDATE totp_devices SET name = $1 WHERE id = $2 AND user_id = $3", name, device_id, user_id
            )
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise _integrity_error(exc, user_id=user_id, name=name) from exc
        if _rowcount(status) == 0:
            raise NotFound(f"user {user_id} has no TOTP device {device_id}")

    async def delete_totp_device(self, user_id: int, device_id: int) -> None:
        """Delete one of the user's devices; NotFound."""
        status = await self._exec(
            "DELETE FROM totp_devices WHERE id = $1 AND user_id = $2", device_id, user_id
        )
        if _rowcount(status) == 0:
            raise NotFound(f"user {user_id} has no TOTP device {device_id}")

    async def use_totp_step(self, device_id: int, step: int, at: float) -> bool:
        """Record `step` as used if it is newer than the last used one; False if it is not (replay).

        Atomic across instances: one conditional UPDATE decides; a concurrent second one
        waits for the first's row lock and then finds last_step no longer below `step`.
        """
        return _rowcount(await self._exec(_USE_TOTP_STEP, step, at, device_id)) == 1

    async def replace_recovery_codes(self, user_id: int, hashes: Sequence[str]) -> None:
        """Replace the user's recovery codes with new hashes in one transaction; NotFound (user)."""
        if isinstance(hashes, str):
            raise TypeError("hashes must be a sequence of hashes, not a string")
        now = self._clock()

        async def work(conn: asyncpg.Connection) -> None:
            await self._execute(conn, "DELETE FROM recovery_codes WHERE user_id = $1", user_id)
            await self._execute(
                conn,
                "INSERT INTO recovery_codes (user_id, code_hash, created_at)"
                " SELECT $1, code_hash, $3 FROM unnest($2::text[]) AS code_hash",
                user_id,
                list(hashes),
                now,
            )

        try:
            await self._run(work, transaction=True)
        except asyncpg.ForeignKeyViolationError as exc:
            raise NotFound(f"no user with id {user_id}") from exc

    async def unused_recovery_hashes(self, user_id: int) -> list[tuple[int, str]]:
        """Return (code id, hash) for each of the user's unused recovery codes."""
        rows = await self._rows(
            "SELECT id, code_hash FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL ORDER BY id",
            user_id,
        )
        return [(int(row[0]), str(row[1])) for row in rows]

    async def use_recovery_code(self, code_id: int, at: float) -> bool:
        """Mark a recovery code used; False when it was already used or no longer exists (atomic)."""
        status = await self._exec(
            "UPDATE recovery_codes SET used_at = $1 WHERE id = $2 AND used_at IS NULL", at, code_id
        )
        return _rowcount(status) == 1

    async def count_unused_recovery_codes(self, user_id: int) -> int:
        """Return how many of the user's recovery codes are still unused."""
        return int(
            await self._val(
                "SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL", user_id
            )
        )

    async def second_factor_kinds(self, user_id: int) -> tuple[str, ...]:
        """Return the kinds of second factor the user can use now: "totp", "webauthn", "recovery"."""
        row = await self._row(_SECOND_FACTOR_KINDS, user_id)
        assert row is not None  # noqa: S101 - a SELECT of EXISTS always returns one row
        return tuple(kind for kind in ("totp", "webauthn", "recovery") if row[kind])

    async def reset_second_factors(self, user_id: int) -> None:
        """Delete all the user's TOTP devices, WebAuthn credentials, recovery codes and factor preference.

        One transaction. A WebAuthn-only account gets password login back, or it could not sign in.
        """

        async def work(conn: asyncpg.Connection) -> None:
            await self._execute(conn, "DELETE FROM totp_devices WHERE user_id = $1", user_id)
            await self._execute(conn, "DELETE FROM webauthn_credentials WHERE user_id = $1", user_id)
            await self._execute(conn, "UPDATE users SET password_login = 1 WHERE id = $1", user_id)
            await self._execute(conn, "DELETE FROM recovery_codes WHERE user_id = $1", user_id)
            await self._execute(conn, "DELETE FROM user_factor_prefs WHERE user_id = $1", user_id)
            await self._notify(conn, "u", user_id)

        await self._run(work, transaction=True)

    async def set_last_method(self, user_id: int, method: str) -> None:
        """Remember the factor kind the user last signed in with; NotFound (user)."""
        try:
            await self._exec(
                "INSERT INTO user_factor_prefs (user_id, last_method) VALUES ($1, $2)"
                " ON CONFLICT (user_id) DO UPDATE SET last_method = excluded.last_method",
                user_id,
                method,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise NotFound(f"no user with id {user_id}") from exc

    async def get_last_method(self, user_id: int) -> str | None:
        """Return the factor kind the user last signed in with, or None."""
        value = await self._val("SELECT last_method FROM user_factor_prefs WHERE user_id = $1", user_id)
        return None if value is None else str(value)

    # -- WebAuthn -----------------------------------------------------------

    async def get_or_create_user_handle(self, user_id: int) -> bytes:
        """Return the user's WebAuthn user handle, creating a random one on first use; NotFound (user)."""

        async def work(conn: asyncpg.Connection) -> bytes:
            # ON CONFLICT: of two instances creating it at once, the first one's handle stays
            await self._execute(
                conn,
                "INSERT INTO webauthn_user_handles (user_id, handle) VALUES ($1, $2) ON CONFLICT "
                "(user_id) DO NOTHING",
                user_id,
                secrets.token_bytes(_USER_HANDLE_BYTES),
            )
            return bytes(
                await self._fetchval(
                    conn, "SELECT handle FROM webauthn_user_handles WHERE user_id = $1", user_id
                )
            )

        try:
            return await self._run(work, transaction=True)
        except asyncpg.ForeignKeyViolationError as exc:
            raise NotFound(f"no user with id {user_id}") from exc

    async def find_user_by_handle(self, handle: bytes) -> User | None:
        """Return the user a WebAuthn user handle belongs to, or None."""
        row = await self._row(_SELECT_USER_BY_HANDLE, bytes(handle))
        return user_from_row(row) if row is not None else None

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
            return int(await self._val(_INSERT_WEBAUTHN_CREDENTIAL, *params))
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise _integrity_error(exc, user_id=user_id, name=name) from exc

    async def list_webauthn_credentials(self, user_id: int) -> list[WebAuthnCredential]:
        """Return the user's security keys and passkeys, oldest first."""
        rows = await self._rows(
            "SELECT id, user_id, credential_id, public_key, sign_count, transports, aaguid, "
            "backup_eligible, backed_up, device_type, name, created_at, last_used_at FROM "
            "webauthn_credentials WHERE user_id = $1 ORDER BY created_at, id",
            user_id,
        )
        return [webauthn_from_row(row) for row in rows]

    async def get_webauthn_credential_by_id(self, credential_id: bytes) -> WebAuthnCredential | None:
        """Return the credential with this raw credential id (whoever owns it), or None."""
        row = await self._row(
            "SELECT id, user_id, credential_id, public_key, sign_count, transports, aaguid, "
            "backup_eligible, backed_up, device_type, name, created_at, last_used_at FROM "
            "webauthn_credentials WHERE credential_id = $1",
            bytes(credential_id),
        )
        return webauthn_from_row(row) if row is not None else None

    async def rename_webauthn_credential(self, user_id: int, cred_pk: int, name: str) -> None:
        """Rename one of the user's credentials; NotFound, or Conflict when the name is taken."""
        try:
            status = await self._exec(
                "UPDATE webauthn_credentials SET name = $1 WHERE id = $2 AND user_id = $3",
                name,
                cred_pk,
                user_id,
            )
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise _integrity_error(exc, user_id=user_id, name=name) from exc
        if _rowcount(status) == 0:
            raise NotFound(f"user {user_id} has no WebAuthn credential {cred_pk}")

    async def delete_webauthn_credential(self, user_id: int, cred_pk: int) -> None:
        """Delete (revoke) one of the user's credentials; NotFound."""
        status = await self._exec(
            "DELETE FROM webauthn_credentials WHERE id = $1 AND user_id = $2", cred_pk, user_id
        )
        if _rowcount(status) == 0:
            raise NotFound(f"user {user_id} has no WebAuthn credential {cred_pk}")

    async def delete_all_webauthn_credentials(self, user_id: int) -> int:
        """Delete every credential of the user; return how many."""
        return _rowcount(await self._exec("DELETE FROM webauthn_credentials WHERE user_id = $1", user_id))

    async def update_webauthn_use(self, cred_pk: int, *, sign_count: int, backed_up: bool, at: float) -> None:
        """Record a successful assertion: the new counter (never lowered), backup state and time."""
        await self._exec(_UPDATE_WEBAUTHN_USE, sign_count, int(backed_up), at, cred_pk)

    async def put_challenge(
        self, id_hash: str, *, purpose: str, challenge: bytes, user_id: int | None, expires_at: float
    ) -> None:
        """Keep a ceremony's challenge until taken or expired; NotFound (user)."""
        try:
            await self._exec(
                "INSERT INTO webauthn_challenges (id_hash, user_id, purpose, challenge, expires_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                id_hash,
                user_id,
                purpose,
                bytes(challenge),
                expires_at,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise NotFound(f"no user with id {user_id}") from exc
        except asyncpg.UniqueViolationError as exc:
            raise Conflict("a challenge with this id already exists") from exc

    async def take_challenge(
        self, id_hash: str, *, purpose: str, now: float
    ) -> tuple[bytes, int | None] | None:
        """Remove a challenge and return (challenge, user id); None when unknown, expired or mis-purposed.

        Single use across instances: the DELETE ... RETURNING hands the row to one caller only.
        """
        row = await self._row(
            "DELETE FROM webauthn_challenges WHERE id_hash = $1 RETURNING purpose, challenge, user_id, "
            "expires_at",
            id_hash,
        )
        if row is None or row["purpose"] != purpose or row["expires_at"] <= now:
            return None
        return bytes(row["challenge"]), row["user_id"]

    async def prune_challenges(self, now: float) -> int:
        """Delete expired challenges; return how many."""
        return _rowcount(await self._exec("DELETE FROM webauthn_challenges WHERE expires_at <= $1", now))

    # -- external sign-in links (docs/external-login.md) ---------------------

    async def find_external_link(self, provider: str, subject: str) -> tuple[ExternalLink, User] | None:
        """Return the link for (provider, subject) and its local user, or None."""
        row = await self._row(_SELECT_EXTERNAL_LINK, provider, subject)
        if row is None:
            return None
        return external_link_from_row(row), user_from_row(row, prefix="u_")

    async def add_external_link(
        self, user_id: int, provider: str, subject: str, *, email: str, at: float
    ) -> ExternalLink:
        """Link (provider, subject) to a user; Conflict when it is linked already, NotFound (user)."""
        try:
            row = await self._row(_INSERT_EXTERNAL_LINK, provider, subject, user_id, email, at)
        except asyncpg.ForeignKeyViolationError as exc:
            raise NotFound(f"no user with id {user_id}") from exc
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(f"this {provider} account is linked to a local account already") from exc
        if row is None:  # INSERT ... RETURNING returns the row it inserted
            raise StorageError("the new link could not be read back")
        return external_link_from_row(row)

    async def list_external_links(self, user_id: int) -> list[ExternalLink]:
        """Return a user's links, oldest first."""
        return [external_link_from_row(row) for row in await self._rows(_SELECT_USER_EXTERNAL_LINKS, user_id)]

    async def delete_external_link(self, user_id: int, link_id: int) -> ExternalLink | None:
        """Remove one of the user's links; return it, or None when the user has no such link."""
        row = await self._row(_DELETE_EXTERNAL_LINK, link_id, user_id)
        return external_link_from_row(row) if row is not None else None

    async def touch_external_link(self, link_id: int, at: float) -> None:
        """Record a sign-in through the link."""
        await self._exec("UPDATE external_identities SET last_used_at = $1 WHERE id = $2", at, link_id)

    # -- account recovery and password reset links ----------------------------

    async def create_recovery_token(
        self, id_hash: str, user_id: int, *, created_at: float, expires_at: float
    ) -> None:
        """Store a recovery link's token hash; NotFound (user)."""
        await self._insert_link(
            "INSERT INTO account_recovery_tokens (id_hash, user_id, created_at, expires_at) VALUES ($1, "
            "$2, $3, $4)",
            (id_hash, user_id, created_at, expires_at),
            user_id=user_id,
            what="a recovery token",
        )

    async def use_recovery_token(self, id_hash: str, *, now: float) -> int | None:
        """Mark a recovery token used and return its user id; None when unknown, used or expired (atomic)."""
        value = await self._val(_CONSUME_RECOVERY_LINK, now, id_hash)
        return None if value is None else int(value)

    async def peek_recovery_token(self, id_hash: str, *, now: float) -> int | None:
        """Return the user id of a usable recovery token without using it up."""
        value = await self._val(
            "SELECT user_id FROM account_recovery_tokens WHERE id_hash = $1 AND used_at IS NULL AND "
            "expires_at > $2",
            id_hash,
            now,
        )
        return None if value is None else int(value)

    async def prune_recovery_tokens(self, before: float) -> int:
        """Delete recovery tokens that expired before `before`; return how many."""
        return _rowcount(
            await self._exec("DELETE FROM account_recovery_tokens WHERE expires_at < $1", before)
        )

    async def create_password_reset_token(
        self, id_hash: str, user_id: int, *, created_by: str, created_at: float, expires_at: float
    ) -> None:
        """Store a password reset link's token hash; NotFound (user)."""
        await self._insert_link(
            "INSERT INTO password_reset_tokens (id_hash, user_id, created_by, created_at, expires_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            (id_hash, user_id, created_by, created_at, expires_at),
            user_id=user_id,
            what="a password reset token",
        )

    async def _insert_link(self, sql: str, params: Sequence[Any], *, user_id: int, what: str) -> None:
        try:
            await self._exec(sql, *params)
        except asyncpg.ForeignKeyViolationError as exc:
            raise NotFound(f"no user with id {user_id}") from exc
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(f"{what} with this id already exists") from exc

    async def peek_password_reset_token(self, id_hash: str, *, now: float) -> int | None:
        """Return the user id of a usable password reset token without using it up."""
        value = await self._val(
            "SELECT user_id FROM password_reset_tokens WHERE id_hash = $1 AND used_at IS NULL AND "
            "expires_at > $2",
            id_hash,
            now,
        )
        return None if value is None else int(value)

    async def use_password_reset_token(
        self, id_hash: str, *, now: float, password_hash: str | None = None
    ) -> int | None:
        """Use up a reset token (and every other unused one of its user); return the user id, or None.

        The same contract as the SQLite store's: the conditional UPDATE ... RETURNING picks
        the one caller that gets the link, and the new password is set in the same transaction.
        """

        async def work(conn: asyncpg.Connection) -> int | None:
            value = await self._fetchval(conn, _CONSUME_RESET_LINK, now, id_hash)
            if value is None:
                return None
            user_id = int(value)
            await self._execute(
                conn,
                "UPDATE password_reset_tokens SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL",
                now,
                user_id,
            )
            if password_hash is not None:
                await self._execute(
                    conn, "UPDATE users SET password_hash = $1 WHERE id = $2", password_hash, user_id
                )
                await self._notify(conn, "u", user_id)
            return user_id

        return await self._run(work, transaction=True)

    async def prune_password_reset_tokens(self, before: float) -> int:
        """Delete password reset tokens that expired before `before`; return how many."""
        return _rowcount(await self._exec("DELETE FROM password_reset_tokens WHERE expires_at < $1", before))

    # -- app passwords ------------------------------------------------------

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

        AppPasswordLimit when the user already has `max_per_user` live ones; Conflict when the
        name (any case) or the token id is taken; NotFound (user). Atomic across instances:
        the user's row is locked (FOR UPDATE) before counting, in the transaction that inserts.
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

        async def work(conn: asyncpg.Connection) -> int:
            if max_per_user is not None:
                if (
                    await self._fetchval(conn, "SELECT id FROM users WHERE id = $1 FOR UPDATE", user_id)
                    is None
                ):
                    raise NotFound(f"no user with id {user_id}")
                live = await self._fetchval(
                    conn,
                    "SELECT COUNT(*) FROM app_passwords WHERE user_id = $1 AND revoked_at IS NULL",
                    user_id,
                )
                if int(live) >= max_per_user:
                    raise AppPasswordLimit(f"at most {max_per_user} app passwords per user; revoke one first")
            try:
                return int(await self._fetchval(conn, _INSERT_APP_PW, *params))
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise _integrity_error(exc, user_id=user_id, name=name) from exc

        return await self._run(work, transaction=True)

    async def find_app_password(self, token_id: str) -> tuple[AppPassword, User, str] | None:
        """Return the live (not revoked) app password with this token id, its user and stored hash."""
        row = await self._row(_SELECT_APP_PW_WITH_USER, token_id)
        if row is None:
            return None
        return app_password_from_row(row), user_from_row(row, prefix="u_"), str(row["token_hash"])

    async def read_app_password(self, token_id: str) -> tuple[AppPassword, User, str] | None:
        """Like find_app_password (the forward-auth hot path; readers never wait behind writers)."""
        return await self.find_app_password(token_id)

    async def list_app_passwords(self, user_id: int) -> list[AppPassword]:
        """Return the user's live app passwords (expired ones included), newest first."""
        return [app_password_from_row(row) for row in await self._rows(_SELECT_APP_TOKENS, user_id)]

    async def revoke_app_password(self, user_id: int, pk: int, at: float) -> bool:
        """Revoke one of the user's app passwords; False when it is not theirs or already revoked."""

        async def work(conn: asyncpg.Connection) -> bool:
            token_id = await self._fetchval(
                conn,
                "UPDATE app_passwords SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at "
                "IS NULL"
                " RETURNING token_id",
                at,
                pk,
                user_id,
            )
            if token_id is None:
                return False
            await self._notify(conn, "t", token_id)
            return True

        return await self._run(work, transaction=True)

    async def revoke_all_app_passwords(self, user_id: int, at: float) -> int:
        """Revoke every live app password of the user; return how many."""

        async def work(conn: asyncpg.Connection) -> int:
            status = await self._execute(
                conn,
                "UPDATE app_passwords SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
                at,
                user_id,
            )
            count = _rowcount(status)
            if count:
                await self._notify(conn, "u", user_id)
            return count

        return await self._run(work, transaction=True)

    async def touch_app_passwords(self, updates: Mapping[int, tuple[float, str]]) -> None:
        """Record last use (time, client IP) by app password id, in one statement; never moves back."""
        if not updates:
            return
        await self._exec(
            _TOUCH_APP_PW,
            list(updates),
            [float(at) for at, _ip in updates.values()],
            [ip for _at, ip in updates.values()],
        )

    # -- audit log: insert and select only ------------------------------------

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
        return int(
            await self._val(
                "INSERT INTO audit_log (at, event, actor, target, ip, detail) VALUES ($1, $2, $3, $4, $5, $6)"
                " RETURNING id",
                at,
                event,
                actor,
                target,
                ip,
                detail,
            )
        )

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
        """Return audit rows matching every given filter (None = any), newest first; `until` exclusive."""
        rows = await self._rows(_SELECT_AUDIT, actor, target, event, since, until, limit, offset)
        return [audit_from_row(row) for row in rows]

    async def iter_audit(self, since: float | None = None, *, page: int = 500) -> AsyncIterator[AuditEvent]:
        """Yield audit rows at or after `since`, oldest first (in insertion order), a page at a time."""
        after_id = 0
        while True:
            rows = await self._rows(_PAGE_AUDIT, after_id, since, page)
            for row in rows:
                yield audit_from_row(row)
            if len(rows) < page:
                return
            after_id = int(rows[-1]["id"])

    async def prune_audit(self, before: float) -> int:
        """Delete audit rows older than `before`; only for audit.retention > 0. Return how many."""
        return _rowcount(await self._exec("DELETE FROM audit_log WHERE at < $1", before))

    async def list_security_events(self, user_id: int, limit: int = 50) -> list[SecurityEvent]:
        """Return the user's most recent events, newest first."""
        return [
            SecurityEvent(
                id=row["id"],
                user_id=row["user_id"],
                event=row["event"],
                detail=row["detail"],
                ip=row["ip"],
                at=row["at"],
            )
            for row in await self._rows(_SELECT_SECURITY_EVENTS, user_id, limit)
        ]

    # -- OpenID Provider (gateway/oidc/) --------------------------------------

    async def create_oidc_grant(self, grant: OidcGrant, code: OidcCode) -> None:
        """Store a new grant with its authorization code, in one transaction; NotFound (user)."""

        async def work(conn: asyncpg.Connection) -> None:
            await self._execute(
                conn,
                _INSERT_OIDC_GRANT,
                *(grant.id, grant.client_id, grant.user_id, " ".join(grant.scopes)),
                *(grant.session_hash, grant.auth_time, " ".join(grant.amr), grant.acr),
                *(grant.nonce, grant.created_at, grant.expires_at),
            )
            await self._execute(
                conn,
                "INSERT INTO oidc_codes (code_hash, grant_id, redirect_uri, code_challenge, expires_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                code.code_hash,
                code.grant_id,
                code.redirect_uri,
                code.code_challenge,
                code.expires_at,
            )

        try:
            await self._run(work, transaction=True)
        except asyncpg.ForeignKeyViolationError as exc:
            raise NotFound(f"no user with id {grant.user_id}") from exc
        except asyncpg.UniqueViolationError as exc:
            raise Conflict("an OIDC grant or code with this id already exists") from exc

    async def redeem_oidc_code(
        self, code_hash: str, *, now: float, tokens: Callable[[OidcGrant, OidcCode], Sequence[OidcToken]]
    ) -> tuple[str, OidcGrant | None, OidcCode | None]:
        """Use an authorization code once (the SQLite store's contract).

        Atomic across instances: the code row is read FOR UPDATE in the transaction that marks
        it, so a concurrent caller waits and then sees it used ("reused").
        """

        async def work(conn: asyncpg.Connection) -> tuple[str, OidcGrant | None, OidcCode | None]:
            row = await self._fetchrow(conn, _SELECT_OIDC_CODE_FOR_UPDATE, code_hash)
            if row is None:
                return "unknown", None, None
            grant, code = oidc_grant_from_row(row, prefix="g_"), oidc_code_from_row(row)
            if row["used_at"] is not None:
                await self._revoke_oidc_grant(conn, grant.id, now, "authorization code reused")
                return "reused", grant, code
            await self._execute(
                conn, "UPDATE oidc_codes SET used_at = $1 WHERE code_hash = $2", now, code_hash
            )
            if grant.revoked_at is not None:
                return "revoked", grant, code
            if code.expires_at <= now:
                return "expired", grant, code
            await self._insert_oidc_tokens(conn, tokens(grant, code))
            return "ok", grant, code

        return await self._run(work, transaction=True)

    async def rotate_oidc_refresh_token(
        self, token_hash: str, *, now: float, tokens: Callable[[OidcGrant], Sequence[OidcToken]]
    ) -> tuple[str, OidcGrant | None]:
        """Exchange a refresh token once (the SQLite store's contract); the row is locked FOR UPDATE."""

        async def work(conn: asyncpg.Connection) -> tuple[str, OidcGrant | None]:
            row = await self._fetchrow(conn, _SELECT_OIDC_ISSUED_FOR_UPDATE, token_hash)
            if row is None or row["kind"] != "refresh":
                return "unknown", None
            grant = oidc_grant_from_row(row, prefix="g_")
            if row["used_at"] is not None:
                await self._revoke_oidc_grant(conn, grant.id, now, "refresh token reused")
                return "reused", grant
            if grant.revoked_at is not None or row["revoked_at"] is not None:
                return "revoked", grant
            if row["expires_at"] <= now or grant.expires_at <= now:
                return "expired", grant
            await self._execute(
                conn, "UPDATE oidc_tokens SET used_at = $1 WHERE token_hash = $2", now, token_hash
            )
            await self._insert_oidc_tokens(conn, tokens(grant))
            return "ok", grant

        return await self._run(work, transaction=True)

    async def find_oidc_token(self, token_hash: str) -> tuple[OidcToken, OidcGrant] | None:
        """Return a token row and its grant by digest (refresh) or jti (access), or None."""
        row = await self._row(_SELECT_OIDC_ISSUED, token_hash)
        if row is None:
            return None
        return oidc_token_from_row(row), oidc_grant_from_row(row, prefix="g_")

    async def revoke_oidc_token(self, token_hash: str, *, now: float) -> bool:
        """Revoke one access token (by jti); False when unknown or already revoked."""
        status = await self._exec(
            "UPDATE oidc_tokens SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL",
            now,
            token_hash,
        )
        return _rowcount(status) == 1

    async def revoke_oidc_grant(self, grant_id: str, *, now: float, reason: str) -> bool:
        """Revoke a grant and every token issued from it; False when it was revoked already."""

        async def work(conn: asyncpg.Connection) -> bool:
            return await self._revoke_oidc_grant(conn, grant_id, now, reason)

        return await self._run(work, transaction=True)

    async def _revoke_oidc_grant(
        self, conn: asyncpg.Connection, grant_id: str, now: float, reason: str
    ) -> bool:
        status = await self._execute(
            conn,
            "UPDATE oidc_grants SET revoked_at = $1, revoked_reason = $2 "
            "WHERE id = $3 AND revoked_at IS NULL",
            now,
            reason,
            grant_id,
        )
        await self._execute(
            conn,
            "UPDATE oidc_tokens SET revoked_at = $1 WHERE grant_id = $2 AND revoked_at IS NULL",
            now,
            grant_id,
        )
        return _rowcount(status) == 1

    async def revoke_oidc_grants(
        self, user_id: int, client_id: str | None, *, now: float, reason: str
    ) -> int:
        """Revoke a user's live grants (for one client, or all with None); return how many."""

        async def work(conn: asyncpg.Connection) -> int:
            rows = await self._fetch(
                conn,
                "SELECT id FROM oidc_grants WHERE user_id = $1 AND ($2::text IS NULL OR client_id = $2) "
                "AND revoked_at IS NULL",
                user_id,
                client_id,
            )
            for row in rows:
                await self._revoke_oidc_grant(conn, row["id"], now, reason)
            return len(rows)

        return await self._run(work, transaction=True)

    async def _insert_oidc_tokens(self, conn: asyncpg.Connection, tokens: Sequence[OidcToken]) -> None:
        for token in tokens:
            await self._execute(
                conn,
                "INSERT INTO oidc_tokens (token_hash, kind, grant_id, issued_at, expires_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                token.token_hash,
                token.kind,
                token.grant_id,
                token.issued_at,
                token.expires_at,
            )

    async def get_oidc_consent(self, user_id: int, client_id: str) -> OidcConsent | None:
        """Return the consent a user remembered for a client, or None."""
        row = await self._row(
            "SELECT user_id, client_id, scopes, granted_at FROM oidc_consents "
            "WHERE user_id = $1 AND client_id = $2",
            user_id,
            client_id,
        )
        return None if row is None else oidc_consent_from_row(row)

    async def put_oidc_consent(self, consent: OidcConsent) -> None:
        """Remember (or replace) a user's consent for a client; NotFound (user)."""
        try:
            await self._exec(
                "INSERT INTO oidc_consents (user_id, client_id, scopes, granted_at) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (user_id, client_id) DO UPDATE SET scopes = excluded.scopes, "
                "granted_at = excluded.granted_at",
                consent.user_id,
                consent.client_id,
                " ".join(sorted(consent.scopes)),
                consent.granted_at,
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise NotFound(f"no user with id {consent.user_id}") from exc

    async def list_oidc_consents(self, user_id: int) -> list[OidcConsent]:
        """Return a user's remembered consents, by client id."""
        rows = await self._rows(
            "SELECT user_id, client_id, scopes, granted_at FROM oidc_consents "
            "WHERE user_id = $1 ORDER BY client_id",
            user_id,
        )
        return [oidc_consent_from_row(row) for row in rows]

    async def delete_oidc_consent(self, user_id: int, client_id: str, *, now: float) -> bool:
        """Forget a consent and revoke the grants (and tokens) the client holds for the user."""

        async def work(conn: asyncpg.Connection) -> bool:
            status = await self._execute(
                conn, "DELETE FROM oidc_consents WHERE user_id = $1 AND client_id = $2", user_id, client_id
            )
            grants = await self._fetch(
                conn,
                "SELECT id FROM oidc_grants WHERE user_id = $1 AND client_id = $2 AND revoked_at IS NULL",
                user_id,
                client_id,
            )
            for row in grants:
                await self._revoke_oidc_grant(conn, row["id"], now, "consent revoked")
            return _rowcount(status) > 0 or bool(grants)

        return await self._run(work, transaction=True)

    async def count_oidc_grants(self, now: float) -> dict[str, tuple[int, int]]:
        """Live grants by client id: (grants, distinct users), for the admin console."""
        rows = await self._rows(
            "SELECT client_id, COUNT(*), COUNT(DISTINCT user_id) FROM oidc_grants "
            "WHERE revoked_at IS NULL AND expires_at > $1 GROUP BY client_id",
            now,
        )
        return {row[0]: (int(row[1]), int(row[2])) for row in rows}

    async def prune_oidc(self, now: float, *, code_grace: float = 600.0) -> int:
        """Delete expired codes (after `code_grace`), tokens and grants; return how many rows went."""

        async def work(conn: asyncpg.Connection) -> int:
            removed = 0
            for sql, before in (
                ("DELETE FROM oidc_codes WHERE expires_at <= $1", now - code_grace),
                ("DELETE FROM oidc_tokens WHERE expires_at <= $1", now),
                ("DELETE FROM oidc_grants WHERE expires_at <= $1", now),
            ):
                removed += _rowcount(await self._execute(conn, sql, before))
            return removed

        return await self._run(work, transaction=True)

    # -- plumbing -----------------------------------------------------------

    async def schema_version(self) -> int:
        """Return the schema version the database is at (0 for an empty one)."""

        async def work(conn: asyncpg.Connection) -> int:
            return await _schema_version(conn)

        return await self._run(work)

    async def _migrate(self) -> None:
        target = migrations.SCHEMA_VERSION

        async def work(conn: asyncpg.Connection) -> None:
            # Held to the end of the transaction: a second instance waits here, then finds
            # the schema current and runs nothing.
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _LOCK_NAMESPACE, _LOCK_MIGRATE)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = await _schema_version(conn)
            if current > target:
                raise StorageError(
                    f"database schema version {current} is newer than this authgate supports "
                    f"({target}); upgrade authgate or restore a backup taken before the upgrade"
                )
            for version in range(current, target):
                # A script without parameters may hold several statements (and $$ bodies).
                await conn.execute(migrations.script_for(migrations.MIGRATIONS[version], "postgres"))
                self.statement_count += 1
            if current != target:
                await conn.execute("DELETE FROM schema_version")
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", target)
                log_event("schema_migrated", engine="postgres", version_from=current, version_to=target)

        await self._run(work, transaction=True)

    async def _notify(self, conn: asyncpg.Connection, kind: str, key: object, keep: str = "") -> None:
        """Tell every instance (at commit) that cached answers about `key` are stale."""
        payload = f"{kind}:{key}:{keep}" if keep else f"{kind}:{key}"
        await self._execute(conn, _NOTIFY, REVOCATION_CHANNEL, payload)

    async def _run(
        self, work: Callable[[asyncpg.Connection], Awaitable[T]], *, transaction: bool = False
    ) -> T:
        """Run `work` on a pooled connection (in a transaction if asked), retrying serialization failures.

        Connection errors, pool and statement timeouts and server shutdowns become
        StoreUnavailable; unique and foreign-key violations pass through for the caller to
        name (Conflict, NotFound); any other database error becomes StorageError.
        """
        for attempt in range(_TRANSACTION_RETRIES):
            try:
                async with self._pool.acquire(timeout=self._connect_timeout) as conn:
                    if not transaction:
                        return await work(conn)
                    async with conn.transaction():
                        return await work(conn)
            except asyncpg.TransactionRollbackError as exc:
                if attempt == _TRANSACTION_RETRIES - 1:
                    self.error_counts["busy"] += 1
                    raise StoreUnavailable(
                        f"transaction kept conflicting with others: {_describe(exc)}"
                    ) from exc
                await asyncio.sleep(random.uniform(0.001, 0.01) * (attempt + 1))  # noqa: S311
            except (StorageError, asyncpg.UniqueViolationError, asyncpg.ForeignKeyViolationError):
                raise  # the caller knows which value was meant: Conflict or NotFound
            except asyncpg.PostgresError as exc:
                raise self._storage_error(exc) from exc
            except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
                # InternalClientError: a connection the server cut while a statement was on it
                kind = "busy" if isinstance(exc, TimeoutError) else "io"
                self.error_counts[kind] += 1
                raise StoreUnavailable(
                    f"PostgreSQL at {self._shown_host} unreachable: {_describe(exc)}"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def _shown_host(self) -> str:
        return self._shown_dsn.split("@", 1)[-1]

    def _storage_error(self, exc: asyncpg.PostgresError) -> StorageError:
        state = getattr(exc, "sqlstate", "") or ""
        kind = _UNAVAILABLE_STATES.get(state) or _UNAVAILABLE_STATES.get(state[:2])
        if kind is not None:
            self.error_counts[kind] += 1
            return StoreUnavailable(f"PostgreSQL cannot take requests now: {_describe(exc)}")
        self.error_counts["other"] += 1
        return StorageError(f"database error: {_describe(exc)}")

    # Statement helpers inside a unit of work; each counts one statement.
    async def _execute(self, conn: asyncpg.Connection, sql: str, *args: Any) -> str:
        self.statement_count += 1
        return str(await conn.execute(sql, *args))

    async def _fetch(self, conn: asyncpg.Connection, sql: str, *args: Any) -> list[asyncpg.Record]:
        self.statement_count += 1
        return list(await conn.fetch(sql, *args))

    async def _fetchrow(self, conn: asyncpg.Connection, sql: str, *args: Any) -> asyncpg.Record | None:
        self.statement_count += 1
        return await conn.fetchrow(sql, *args)

    async def _fetchval(self, conn: asyncpg.Connection, sql: str, *args: Any) -> Any:
        self.statement_count += 1
        return await conn.fetchval(sql, *args)

    # One statement, one pooled connection, no explicit transaction.
    async def _exec(self, sql: str, *args: Any) -> str:
        return await self._run(lambda conn: self._execute(conn, sql, *args))

    async def _rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._run(lambda conn: self._fetch(conn, sql, *args))

    async def _row(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self._run(lambda conn: self._fetchrow(conn, sql, *args))

    async def _val(self, sql: str, *args: Any) -> Any:
        return await self._run(lambda conn: self._fetchval(conn, sql, *args))


async def _schema_version(conn: asyncpg.Connection) -> int:
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    value = await conn.fetchval("SELECT max(version) FROM schema_version")
    return int(value or 0)


def _parse_revocation(payload: str) -> Revocation | None:
    kind, _, rest = payload.partition(":")
    key, _, keep = rest.partition(":")
    if not key:
        return None
    if kind == "s":
        return Revocation(kind="session", key=key)
    if kind == "u":
        return Revocation(kind="user", key=key, keep=keep)
    if kind == "t":
        return Revocation(kind="token", key=key)
    return None


def _describe(exc: BaseException) -> str:
    """One line about a driver error, for logs and 503 pages; asyncpg never puts the password in it."""
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _user_conflict(exc: asyncpg.UniqueViolationError, *, username: str, email: str) -> StorageError:
    constraint = exc.constraint_name or ""
    if constraint == "users_username_key":
        return Conflict(f"username {username.lower()!r} is already taken")
    if constraint == "users_email_key_key":
        return Conflict(f"e-mail {email!r} is already taken")
    return StorageError(f"database error: {_describe(exc)}")


def _integrity_error(
    exc: asyncpg.IntegrityConstraintViolationError, *, user_id: int, name: str
) -> StorageError:
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return NotFound(f"no user with id {user_id}")
    if isinstance(exc, asyncpg.UniqueViolationError):
        message = _UNIQUE_MESSAGES.get(exc.constraint_name or "")
        if message is not None:
            return Conflict(message.format(name=name))
    return StorageError(f"database error: {_describe(exc)}")
