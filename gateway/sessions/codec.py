"""Session cookies and the forward-auth session cache (pure: no I/O, time passed in).

The cookie value is a random session id signed with itsdangerous (own salt, key
list for rotation, max age). Storage only ever sees sha256(session id), so a
leaked database holds no usable cookie.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner

from gateway.authz.wire import answer_head
from gateway.errors import SessionInvalid
from gateway.models import Level, SessionRecord, Subject, User

SESSION_SALT = "authgate.session.v1"


def generate_session_id() -> str:
    """Return a fresh random session id (256 bits)."""
    return secrets.token_urlsafe(32)


def hash_session_id(session_id: str) -> str:
    """Return the storage key of a session id."""
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionCodec:
    """Signs session ids into cookie values and verifies them back."""

    def __init__(self, keys: Sequence[str], *, max_age: float) -> None:
        if not keys:
            raise ValueError("at least one session key is needed")
        # itsdangerous signs with the LAST key and accepts all; our config lists newest first.
        self._signer = TimestampSigner(list(reversed(keys)), salt=SESSION_SALT)
        self.max_age = max_age

    def sign(self, session_id: str) -> str:
        """Return the cookie value for a session id."""
        return self._signer.sign(session_id).decode()

    def verify(self, cookie_value: str, *, now: float) -> tuple[str, float]:
        """Return (session id, signed-at time) or raise SessionInvalid."""
        try:
            raw, signed_at = self._signer.unsign(cookie_value, max_age=None, return_timestamp=True)
        except (BadSignature, SignatureExpired, UnicodeError) as exc:
            raise SessionInvalid("session cookie signature does not verify") from exc
        timestamp = signed_at.timestamp()
        # Checked here rather than by itsdangerous so the caller's clock governs expiry.
        if now - timestamp > self.max_age:
            raise SessionInvalid("session cookie is older than its max age")
        return raw.decode(), timestamp


def cookie_values(cookie_header: str | None, name: str) -> list[str]:
    """Return every value of cookie `name` in a Cookie header, in order.

    Hand-rolled because aiohttp's full cookie parser costs ~10 µs per request on
    the hot path; we only need one name and never unquote session values.
    """
    if not cookie_header or name not in cookie_header:
        return []
    found = []
    for part in cookie_header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            found.append(value.strip().strip('"'))
    return found


def build_identity_headers(user: User, names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Return the identity headers for a user, in the order user, email, groups, name."""
    values = (user.username, user.email, ",".join(user.groups), user.display_name)
    return tuple((name, _header_safe(value)) for name, value in zip(names, values, strict=True))


def _header_safe(value: str) -> str:
    # Stored values are validated, but a header must never be able to carry a line break.
    return "".join(ch for ch in value if ch >= " " and ch != "\x7f")


@dataclass(slots=True)
class CachedSession:
    """What the forward-auth path needs about a session, prepared once."""

    id_hash: str
    user_id: int
    subject: Subject
    level: Level
    headers: tuple[tuple[str, str], ...]
    expires_at: float  # min(session end, cookie signature end)
    remember_me: bool
    last_active: float
    refresh_at: float  # after this, re-read from storage before use (the staleness bound)
    record: SessionRecord
    must_enrol: bool = False  # 2FA required and no factor enrolled yet
    # After this, re-read in the background while the entry keeps answering (before refresh_at).
    renew_at: float = math.inf
    # When the cookie's signature runs out: a re-read reuses it instead of verifying the cookie again.
    cookie_expires_at: float = math.inf
    # Seconds without a request after which the session is over (inf: no inactivity limit).
    idle_limit: float = math.inf
    # The whole 200 answer but its Date line, serialised once (gateway/authz/wire.py).
    answer_head: bytes = field(init=False, repr=False, compare=False)
    # min(refresh_at, expires_at): the one time the cache-hit path compares against.
    usable_until: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.answer_head = answer_head(200, self.headers)
        self.usable_until = min(self.refresh_at, self.expires_at)

    def renewed(
        self, record: SessionRecord, *, last_active: float, refresh_at: float, renew_at: float
    ) -> None:
        """Take a fresh read of an unchanged session: the same entry, with its bounds moved on."""
        self.record = record
        self.last_active = last_active
        self.refresh_at = refresh_at
        self.usable_until = min(refresh_at, self.expires_at)
        self.renew_at = renew_at


def session_end_reason(
    rec: SessionRecord, *, now: float, last_active: float, inactivity: float, grace: float
) -> str | None:
    """Return why a session is over ("expired", "inactive"), or None when it is alive.

    `grace` absorbs last-activity not yet flushed by another worker.
    """
    if now >= rec.expires_at:
        return "expired"
    if inactivity > 0 and not rec.remember_me and now - last_active > inactivity + grace:
        return "inactive"
    return None


class SessionCache:
    """A bounded map from cookie value to a prepared session, with per-entry staleness."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._entries: dict[str, CachedSession] = {}
        self._max_entries = max_entries
        # peek(cookie_value): the entry even when stale (its last activity is still worth
        # keeping). The dict's own bound get: on the hot path a lookup is one C call.
        self.peek: Callable[[str], CachedSession | None] = self._entries.get

    def get(self, cookie_value: str, now: float) -> CachedSession | None:
        """Return a fresh entry, or None when absent or due for a refresh."""
        entry = self._entries.get(cookie_value)
        if entry is None or now >= entry.refresh_at:
            return None
        return entry

    def put(self, cookie_value: str, entry: CachedSession) -> None:
        if cookie_value not in self._entries and len(self._entries) >= self._max_entries:
            # Evict the oldest insertion; dicts keep order, so this is O(1).
            del self._entries[next(iter(self._entries))]
        self._entries[cookie_value] = entry

    def evict_session(self, id_hash: str) -> None:
        """Drop every cookie value that maps to a session (revocation on this worker)."""
        for key in [k for k, e in self._entries.items() if e.id_hash == id_hash]:
            del self._entries[key]

    def evict_user(self, user_id: int, *, keep_id_hash: str | None = None) -> None:
        """Drop a user's sessions from this worker's cache, optionally sparing one."""
        doomed = [k for k, e in self._entries.items() if e.user_id == user_id and e.id_hash != keep_id_hash]
        for key in doomed:
            del self._entries[key]

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
