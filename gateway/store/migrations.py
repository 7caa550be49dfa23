"""The versioned schema of both engines: MIGRATIONS[n] takes a database from version n to n + 1.

One list for SQLite and PostgreSQL, so a version number means the same tables on both
(and `authgate db copy` can move rows between them). An entry is either one script that
runs unchanged on both engines, or a Migration with a script per engine where their types
differ (INTEGER PRIMARY KEY vs BIGSERIAL, REAL vs DOUBLE PRECISION, BLOB vs BYTEA,
COLLATE NOCASE vs a unique index on lower(name), a trigger body). Column names and
meanings are the same on both: flags are 0/1 integers, lists are JSON text, times are
float seconds. SQLite keeps the version reached in `PRAGMA user_version`, PostgreSQL in
the one-row table schema_version (gateway/store/postgres.py, under an advisory lock so two
instances starting at once cannot both run a script).

Append new entries; never edit one that has shipped, since databases in the field have
already run it. Every entry runs on both engines in the tests: from an empty file on SQLite
(tests/unit/test_store.py) and from an empty database on PostgreSQL (tests/pg.py migrates its
template that way; tests/unit/test_store_postgres.py starts three instances at once on an empty one).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Migration:
    """One schema step written once per engine."""

    sqlite: str
    postgres: str


_V1: Final = """
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,          -- always lower case
    email TEXT NOT NULL,                    -- as typed, for display and mail
    email_key TEXT NOT NULL UNIQUE,         -- lower case, for uniqueness and login lookups
    display_name TEXT NOT NULL,
    groups TEXT NOT NULL DEFAULT '[]',      -- JSON array of strings
    password_hash TEXT,                     -- NULL for passwordless accounts
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);

CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    level INTEGER NOT NULL,
    created_at REAL NOT NULL,
    authenticated_at REAL NOT NULL,
    last_active REAL NOT NULL,
    expires_at REAL NOT NULL,
    remember_me INTEGER NOT NULL,
    ip TEXT NOT NULL,
    user_agent TEXT NOT NULL
) WITHOUT ROWID;

CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE login_attempts (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL,                 -- lower case, as typed at login (name or e-mail)
    ip TEXT NOT NULL,
    success INTEGER NOT NULL,
    at REAL NOT NULL
);

CREATE INDEX login_attempts_username_at ON login_attempts (username, at);
CREATE INDEX login_attempts_ip_at ON login_attempts (ip, at);
CREATE INDEX login_attempts_at ON login_attempts (at);
"""

# Second factors (issue 3): TOTP devices, recovery codes, the factor last used, security events.
_V2: Final = """
CREATE TABLE totp_devices (
    -- AUTOINCREMENT: ids are never reused, so an id read before a delete cannot
    -- name a newer row (a device added, or a code set regenerated, in between).
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL COLLATE NOCASE,      -- chosen by the user; unique per user in any (ASCII) case
    secret_sealed TEXT NOT NULL,            -- AES-GCM sealed base32 secret, never the secret itself
    digits INTEGER NOT NULL,
    period INTEGER NOT NULL,
    algorithm TEXT NOT NULL,                -- SHA1 | SHA256 | SHA512
    last_step INTEGER,                      -- last accepted time step: the replay guard
    created_at REAL NOT NULL,
    last_used_at REAL,
    UNIQUE (user_id, name)
);

CREATE TABLE recovery_codes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,                -- peppered HMAC-SHA256; the code itself is never stored
    used_at REAL,                           -- NULL while unused
    created_at REAL NOT NULL
);

CREATE INDEX recovery_codes_user_id ON recovery_codes (user_id);

CREATE TABLE user_factor_prefs (
    user_id INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    last_method TEXT NOT NULL               -- factor kind used at the last login: totp | recovery | ...
);

CREATE TABLE security_events (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    detail TEXT NOT NULL,
    ip TEXT NOT NULL,
    at REAL NOT NULL
);

CREATE INDEX security_events_user_id_at ON security_events (user_id, at);
"""

# WebAuthn (issue 4): security keys and passkeys, their ceremonies' challenges, WebAuthn-only
# accounts and account recovery by e-mail.
_V3: Final = """
-- 0: a WebAuthn-only account, whose password form is refused
ALTER TABLE users ADD COLUMN password_login INTEGER NOT NULL DEFAULT 1;

CREATE TABLE webauthn_credentials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused, as for totp_devices
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential_id BLOB NOT NULL UNIQUE,     -- raw id chosen by the authenticator
    public_key BLOB NOT NULL,               -- COSE_Key
    sign_count INTEGER NOT NULL,            -- last signature counter seen: the clone guard
    transports TEXT NOT NULL DEFAULT '[]',  -- JSON array, as reported by the browser
    aaguid TEXT NOT NULL,
    backup_eligible INTEGER NOT NULL,
    backed_up INTEGER NOT NULL,
    device_type TEXT NOT NULL,              -- single_device | multi_device
    name TEXT NOT NULL COLLATE NOCASE,      -- chosen by the user; unique per user in any (ASCII) case
    created_at REAL NOT NULL,
    last_used_at REAL,
    UNIQUE (user_id, name)
);

CREATE TABLE webauthn_user_handles (
    -- The WebAuthn user.id: random, so a passkey reveals nothing about the account.
    user_id INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    handle BLOB NOT NULL UNIQUE
);

CREATE TABLE webauthn_challenges (
    id_hash TEXT PRIMARY KEY,               -- sha256 of the ceremony id held by the browser
    user_id INTEGER REFERENCES users (id) ON DELETE CASCADE,  -- NULL for passkey login
    purpose TEXT NOT NULL,
    challenge BLOB NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

CREATE INDEX webauthn_challenges_expires_at ON webauthn_challenges (expires_at);

CREATE TABLE account_recovery_tokens (
    id_hash TEXT PRIMARY KEY,               -- sha256 of the token in the e-mailed link
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL                            -- NULL while unused
) WITHOUT ROWID;

CREATE INDEX account_recovery_tokens_user_id ON account_recovery_tokens (user_id);
"""

# App passwords and the audit log (issue 5).
_V4: Final = """
CREATE TABLE app_passwords (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused, as for totp_devices
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_id TEXT NOT NULL UNIQUE,          -- public lookup id embedded in the token
    token_hash TEXT NOT NULL,               -- peppered HMAC-SHA256; the token itself is never stored
    name TEXT NOT NULL COLLATE NOCASE,
    domains TEXT NOT NULL DEFAULT '[]',     -- JSON array of hosts / *. wildcards; empty = any
    level INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,                        -- NULL = never
    last_used_at REAL,
    last_used_ip TEXT,
    revoked_at REAL                         -- NULL while live; revoked rows are kept for history
);

CREATE INDEX app_passwords_user_id ON app_passwords (user_id);
-- a name is unique per user among live tokens only, so a revoked name can be used again
CREATE UNIQUE INDEX app_passwords_user_name ON app_passwords (user_id, name) WHERE revoked_at IS NULL;

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    actor TEXT,                             -- username (no foreign key: history outlives accounts)
    target TEXT,
    ip TEXT,
    detail TEXT NOT NULL DEFAULT ''
);

CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_target_at ON audit_log (target, at);
CREATE INDEX audit_log_actor_at ON audit_log (actor, at);
CREATE INDEX audit_log_event_at ON audit_log (event, at);

-- Append-only in the database itself: no code path may rewrite history.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
"""

# v5: one append-only table for security events. A user's own events (the settings page's
# "recent security activity") are the audit rows that target them; the v2 table goes.
_V5 = """
INSERT INTO audit_log (at, event, actor, target, ip, detail)
SELECT e.at, e.event, u.username, u.username, e.ip, e.detail
FROM security_events AS e JOIN users AS u ON u.id = e.user_id
ORDER BY e.at, e.id;
DROP TABLE security_events;
"""

# v6: password reset links sent by an administrator. A table of their own, apart from
# account_recovery_tokens, so a reset token can never be used as a recovery link or back.
_V6: Final = """
CREATE TABLE password_reset_tokens (
    id_hash TEXT PRIMARY KEY,               -- sha256 of the token in the e-mailed link
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_by TEXT NOT NULL,               -- the administrator's username, for the audit detail
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at REAL                            -- NULL while unused
) WITHOUT ROWID;

CREATE INDEX password_reset_tokens_user_id ON password_reset_tokens (user_id);
"""


_V1_PG: Final = """
CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL,
    email_key TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    groups TEXT NOT NULL DEFAULT '[]',
    password_hash TEXT,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    level INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    authenticated_at DOUBLE PRECISION NOT NULL,
    last_active DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    remember_me INTEGER NOT NULL,
    ip TEXT NOT NULL,
    user_agent TEXT NOT NULL
);

CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE login_attempts (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL,
    ip TEXT NOT NULL,
    success INTEGER NOT NULL,
    at DOUBLE PRECISION NOT NULL
);

CREATE INDEX login_attempts_username_at ON login_attempts (username, at);
CREATE INDEX login_attempts_ip_at ON login_attempts (ip, at);
CREATE INDEX login_attempts_at ON login_attempts (at);
"""

# Names unique per user "in any case": SQLite's COLLATE NOCASE, here a unique index on lower(name).
_V2_PG: Final = """
CREATE TABLE totp_devices (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    secret_sealed TEXT NOT NULL,
    digits INTEGER NOT NULL,
    period INTEGER NOT NULL,
    algorithm TEXT NOT NULL,
    last_step BIGINT,
    created_at DOUBLE PRECISION NOT NULL,
    last_used_at DOUBLE PRECISION
);

CREATE UNIQUE INDEX totp_devices_user_name ON totp_devices (user_id, lower(name));

CREATE TABLE recovery_codes (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL
);

CREATE INDEX recovery_codes_user_id ON recovery_codes (user_id);

CREATE TABLE user_factor_prefs (
    user_id BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    last_method TEXT NOT NULL
);

CREATE TABLE security_events (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    detail TEXT NOT NULL,
    ip TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);

CREATE INDEX security_events_user_id_at ON security_events (user_id, at);
"""

_V3_PG: Final = """
ALTER TABLE users ADD COLUMN password_login INTEGER NOT NULL DEFAULT 1;

CREATE TABLE webauthn_credentials (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential_id BYTEA NOT NULL UNIQUE,
    public_key BYTEA NOT NULL,
    sign_count BIGINT NOT NULL,
    transports TEXT NOT NULL DEFAULT '[]',
    aaguid TEXT NOT NULL,
    backup_eligible INTEGER NOT NULL,
    backed_up INTEGER NOT NULL,
    device_type TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    last_used_at DOUBLE PRECISION
);

CREATE UNIQUE INDEX webauthn_credentials_user_name ON webauthn_credentials (user_id, lower(name));

CREATE TABLE webauthn_user_handles (
    user_id BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    handle BYTEA NOT NULL UNIQUE
);

CREATE TABLE webauthn_challenges (
    id_hash TEXT PRIMARY KEY,
    user_id BIGINT REFERENCES users (id) ON DELETE CASCADE,
    purpose TEXT NOT NULL,
    challenge BYTEA NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);

CREATE INDEX webauthn_challenges_expires_at ON webauthn_challenges (expires_at);

CREATE TABLE account_recovery_tokens (
    id_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    used_at DOUBLE PRECISION
);

CREATE INDEX account_recovery_tokens_user_id ON account_recovery_tokens (user_id);
"""

_V4_PG: Final = """
CREATE TABLE app_passwords (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_id TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL,
    name TEXT NOT NULL,
    domains TEXT NOT NULL DEFAULT '[]',
    level INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    last_used_at DOUBLE PRECISION,
    last_used_ip TEXT,
    revoked_at DOUBLE PRECISION
);

CREATE INDEX app_passwords_user_id ON app_passwords (user_id);
CREATE UNIQUE INDEX app_passwords_user_name ON app_passwords (user_id, lower(name)) WHERE revoked_at IS NULL;

CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    event TEXT NOT NULL,
    actor TEXT,
    target TEXT,
    ip TEXT,
    detail TEXT NOT NULL DEFAULT ''
);

CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_target_at ON audit_log (target, at);
CREATE INDEX audit_log_actor_at ON audit_log (actor, at);
CREATE INDEX audit_log_event_at ON audit_log (event, at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
"""

_V6_PG: Final = """
CREATE TABLE password_reset_tokens (
    id_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_by TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    used_at DOUBLE PRECISION
);

CREATE INDEX password_reset_tokens_user_id ON password_reset_tokens (user_id);
"""

_V7_EXTERNAL_IDENTITIES_PG: Final = """
CREATE TABLE external_identities (
    id BIGSERIAL PRIMARY KEY,
    provider TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    last_used_at DOUBLE PRECISION,
    UNIQUE (provider, subject)
);

CREATE INDEX external_identities_user_id ON external_identities (user_id);
"""

# v7: sign-in through external providers (docs/external-login.md): (provider, subject) -> local user.
_V7_EXTERNAL_IDENTITIES: Final = """
CREATE TABLE external_identities (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: an id on a settings page names one link
    provider TEXT NOT NULL,                 -- external_login.providers[].id
    subject TEXT NOT NULL,                  -- the provider's stable user id (sub, GitHub user id)
    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email TEXT NOT NULL DEFAULT '',         -- as the provider gave it when linked; display only
    created_at REAL NOT NULL,
    last_used_at REAL,
    UNIQUE (provider, subject)
);

CREATE INDEX external_identities_user_id ON external_identities (user_id);
"""

# v8: users from an LDAP directory (issue 13, docs/ldap.md): a local row per directory user, so
# second factors, sessions and audit attach to a user id. The directory owns the profile,
# groups and password; `external_id` is the entry's stable id (entryUUID, objectGUID ...).
_V_LDAP: Final = """
ALTER TABLE users ADD COLUMN source TEXT NOT NULL DEFAULT 'local';   -- local | ldap
ALTER TABLE users ADD COLUMN external_id TEXT;          -- NULL for local users
ALTER TABLE users ADD COLUMN directory_stamp TEXT;      -- the entry's password-change time, as last seen
ALTER TABLE users ADD COLUMN directory_checked_at REAL; -- last time the directory confirmed the user

CREATE UNIQUE INDEX users_source_external_id ON users (source, external_id) WHERE external_id IS NOT NULL;
CREATE INDEX users_directory_checked_at ON users (directory_checked_at) WHERE external_id IS NOT NULL;
"""


# The same on PostgreSQL (times are DOUBLE PRECISION there).
_V_LDAP_PG: Final = """
ALTER TABLE users ADD COLUMN source TEXT NOT NULL DEFAULT 'local';   -- local | ldap
ALTER TABLE users ADD COLUMN external_id TEXT;          -- NULL for local users
ALTER TABLE users ADD COLUMN directory_stamp TEXT;      -- the entry's password-change time, as last seen
ALTER TABLE users ADD COLUMN directory_checked_at DOUBLE PRECISION; -- last directory confirmation

CREATE UNIQUE INDEX users_source_external_id ON users (source, external_id) WHERE external_id IS NOT NULL;
CREATE INDEX users_directory_checked_at ON users (directory_checked_at) WHERE external_id IS NOT NULL;
"""

# v9: authgate as an OpenID Provider (gateway/oidc/). Which factors a session passed (the
# ID token's amr), and the provider's grants, codes, tokens and consents. Codes and refresh
# tokens are stored only as sha256 digests; an access token (a JWT) by its jti. Written to run
# unchanged on PostgreSQL too (DOUBLE PRECISION, which SQLite reads as REAL; no WITHOUT ROWID).
_V9_OIDC_PROVIDER: Final = """
ALTER TABLE sessions ADD COLUMN amr TEXT NOT NULL DEFAULT '';   -- space-separated RFC 8176 values

CREATE TABLE oidc_grants (
    id TEXT PRIMARY KEY,                    -- random; one per completed authorization request
    client_id TEXT NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    scopes TEXT NOT NULL,                   -- space-separated, as granted
    session_hash TEXT NOT NULL,             -- the portal session it was granted in (the sid claim)
    auth_time DOUBLE PRECISION NOT NULL,
    amr TEXT NOT NULL,
    acr TEXT NOT NULL,
    nonce TEXT NOT NULL,                    -- '' when the request had none
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,   -- nothing issued from it outlives this
    revoked_at DOUBLE PRECISION,            -- NULL while live
    revoked_reason TEXT NOT NULL DEFAULT ''
);

CREATE INDEX oidc_grants_user_client ON oidc_grants (user_id, client_id);
CREATE INDEX oidc_grants_expires_at ON oidc_grants (expires_at);

CREATE TABLE oidc_codes (
    code_hash TEXT PRIMARY KEY,             -- sha256 of the authorization code
    grant_id TEXT NOT NULL REFERENCES oidc_grants (id) ON DELETE CASCADE,
    redirect_uri TEXT NOT NULL,
    code_challenge TEXT NOT NULL,           -- S256 challenge; '' when the request had none
    expires_at DOUBLE PRECISION NOT NULL,
    used_at DOUBLE PRECISION                -- set once: a second use revokes the grant
);

CREATE TABLE oidc_tokens (
    token_hash TEXT PRIMARY KEY,            -- sha256 of a refresh token, or an access token's jti
    kind TEXT NOT NULL CHECK (kind IN ('access', 'refresh')),
    grant_id TEXT NOT NULL REFERENCES oidc_grants (id) ON DELETE CASCADE,
    issued_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    used_at DOUBLE PRECISION,               -- a refresh token exchanged (rotated); reuse revokes the grant
    revoked_at DOUBLE PRECISION
);

CREATE INDEX oidc_tokens_grant_id ON oidc_tokens (grant_id);

CREATE TABLE oidc_consents (
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    scopes TEXT NOT NULL,                   -- space-separated, sorted
    granted_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (user_id, client_id)
);
"""

MIGRATIONS: Final[tuple[str | Migration, ...]] = (
    Migration(sqlite=_V1, postgres=_V1_PG),
    Migration(sqlite=_V2, postgres=_V2_PG),
    Migration(sqlite=_V3, postgres=_V3_PG),
    Migration(sqlite=_V4, postgres=_V4_PG),
    _V5,  # the same SQL on both engines
    Migration(sqlite=_V6, postgres=_V6_PG),
    Migration(sqlite=_V7_EXTERNAL_IDENTITIES, postgres=_V7_EXTERNAL_IDENTITIES_PG),
    Migration(sqlite=_V_LDAP, postgres=_V_LDAP_PG),
    _V9_OIDC_PROVIDER,  # the same SQL on both engines
)


SCHEMA_VERSION: Final = len(MIGRATIONS)


def script_for(migration: str | Migration, engine: str) -> str:
    """Return the SQL a migration entry runs on `engine` ("sqlite" or "postgres")."""
    if isinstance(migration, str):
        return migration
    if engine == "sqlite":
        return migration.sqlite
    if engine == "postgres":
        return migration.postgres
    raise ValueError(f"unknown engine {engine!r}")


def split_statements(script: str) -> list[str]:
    """Split a script into single statements, keeping `;` inside strings and triggers intact."""
    # executescript() would commit on its own, so migrations run statement by
    # statement inside the caller's transaction; sqlite3.complete_statement uses
    # SQLite's own tokenizer to tell a real terminator from one inside a literal.
    statements: list[str] = []
    pending = ""
    *pieces, tail = script.split(";")
    for piece in pieces:
        pending += piece + ";"
        if not sqlite3.complete_statement(pending):
            continue
        if pending.removesuffix(";").strip():
            statements.append(pending.strip())
        pending = ""
    leftover = (pending + tail).strip()
    if leftover:
        raise ValueError(f"unterminated SQL statement: {leftover[:60]!r}")
    return statements
