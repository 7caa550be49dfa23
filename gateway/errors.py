"""The one exception tree of authgate.

AuthgateError
├── ConfigError            invalid configuration; .problems lists every (key path, message)
├── InvalidForwardedHeaders a proxy header is missing, duplicated, malformed or from an untrusted peer
├── StorageError           the store could not do what was asked
│   ├── NotFound           no such user / session
│   ├── Conflict           unique value already taken (username, e-mail)
│   └── StoreUnavailable   the database is locked, full or failing: retry later (HTTP 503)
├── DirectoryUnavailable   the LDAP directory cannot be reached or did not answer in time (HTTP 503)
├── PasswordChangeRefused  the directory does not let this password be changed here
└── AuthFailed             a credential was present but wrong, expired or tampered
    ├── SessionInvalid     the session cookie does not verify or its session is gone
    └── DirectoryLoginFailed the directory said no (no entry, two entries, wrong password, disabled)
"""

from __future__ import annotations


class AuthgateError(Exception):
    """Base of every error authgate raises on purpose."""


class ConfigError(AuthgateError):
    """The configuration is invalid; carries every problem found, not just the first."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {path}: {message}" for path, message in problems)
        super().__init__(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")


class InvalidForwardedHeaders(AuthgateError):
    """The proxy's description of the original request cannot be trusted or parsed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class StorageError(AuthgateError):
    """The store could not do what was asked."""


class NotFound(StorageError):
    """No such record."""


class Conflict(StorageError):
    """A unique value is already taken."""


class StoreUnavailable(StorageError):
    """The database cannot take the request now (held by another writer, disk full, I/O error).

    Raised by the store adapter in place of the driver's own error; `reason` is short text
    for the log and the 503 page. Nothing was written by the statement that failed.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"database unavailable: {reason}")


class AuthFailed(AuthgateError):
    """A credential was present but is wrong, expired or tampered with."""


class SessionInvalid(AuthFailed):
    """The session cookie does not verify, or its session no longer exists."""


class DirectoryLoginFailed(AuthFailed):
    """The directory refused a login; `reason` is for the log (never shown: no user enumeration)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class DirectoryUnavailable(AuthgateError):
    """The LDAP directory cannot be reached, or did not answer within the timeout."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"directory unavailable: {reason}")


class PasswordChangeRefused(AuthgateError):
    """The directory does not let authgate change this password; `message` is shown to the user."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)
