"""The versioned SQLite schema: MIGRATIONS[n] takes a database from version n to n + 1.

`PRAGMA user_version` holds the version reached. Append new scripts; never edit one
that has shipped, since databases in the field have already run it.
"""

from __future__ import annotations

import sqlite3
from typing import Final

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

# v7: authgate as an OpenID Provider (gateway/oidc/). Which factors a session passed (the
# ID token's amr), and the provider's grants, codes, tokens and consents. Codes and refresh
# tokens are stored only as sha256 digests; an access token (a JWT) by its jti. Written to run
# unchanged on PostgreSQL too (DOUBLE PRECISION, which SQLite reads as REAL; no WITHOUT ROWID).
_V7: Final = """
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

MIGRATIONS: Final[tuple[str, ...]] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7)

SCHEMA_VERSION: Final = len(MIGRATIONS)


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
