"""Sessions over the store: create, resolve (cached), revoke, and flush last activity.

Staleness bound: a cached session is re-read from storage at most `cache_ttl`
seconds after it was last read, so a revocation made by another worker (or the
CLI) takes effect within `cache_ttl`. Revocations made by this worker take
effect at once. Last activity is kept in memory and written in batches every
`activity_flush_interval` seconds (and at shutdown).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from gateway.config import IdentityHeadersConfig, SessionConfig
from gateway.errors import SessionInvalid
from gateway.logs import log_event, logger
from gateway.models import Level, SessionRecord, Subject, User
from gateway.sessions import (
    CachedSession,
    SessionCache,
    SessionCodec,
    build_identity_headers,
    cookie_values,
    generate_session_id,
    hash_session_id,
    session_end_reason,
)
from gateway.store.sqlite import Store

Clock = Callable[[], float]

# Entries loaded together (a restart, a burst of logins) would otherwise all go stale in the same
# instant and queue their re-reads behind the one store connection: spread refreshes over the last
# fifth of cache_ttl. Refreshing early never lengthens the revocation bound.
REFRESH_JITTER = 0.2

# Whether a session's user must enrol a second factor before reaching any app.
EnrolmentCheck = Callable[[User, SessionRecord], Awaitable[bool]]


async def _never(_user: User, _record: SessionRecord) -> bool:
    return False


class SessionService:
    def __init__(
        self,
        store: Store,
        codec: SessionCodec,
        cfg: SessionConfig,
        headers: IdentityHeadersConfig,
        clock: Clock,
        enrolment_check: EnrolmentCheck = _never,
    ) -> None:
        self.enrolment_check = enrolment_check
        self.store = store
        self.codec = codec
        self.cfg = cfg
        self.clock = clock
        self.cache = SessionCache()
        self._header_names = (headers.user, headers.email, headers.groups, headers.name)
        self._pending_activity: dict[str, float] = {}

    async def create(self, user: User, level: Level, *, remember_me: bool, ip: str, user_agent: str) -> str:
        """Start a new session and return its signed cookie value."""
        now = self.clock()
        session_id = generate_session_id()
        lifetime = self.cfg.remember_me if remember_me else self.cfg.expiration
        record = SessionRecord(
            id_hash=hash_session_id(session_id),
            user_id=user.id,
            level=level,
            created_at=now,
            authenticated_at=now,
            last_active=now,
            expires_at=now + lifetime,
            remember_me=remember_me,
            ip=ip,
            user_agent=user_agent[:512],
        )
        await self.store.create_session(record)
        return self.codec.sign(session_id)

    async def resolve_header(self, cookie_header: str | None) -> CachedSession | None:
        """Return the live session named by a Cookie header, or None."""
        for value in cookie_values(cookie_header, self.cfg.cookie_name):
            session = await self.resolve(value)
            if session is not None:
                return session
        return None

    async def resolve(self, cookie_value: str) -> CachedSession | None:
        """Return the live session for a cookie value, or None (never raises on bad input)."""
        now = self.clock()
        entry = self.cache.get(cookie_value, now)
        if entry is not None:
            if now >= entry.expires_at:
                await self._end(entry.record, "expired")
                return None
            if self._idle_too_long(entry, now):
                await self._end(entry.record, "inactive")
                return None
            entry.last_active = now
            self._pending_activity[entry.id_hash] = now
            return entry
        return await self._load(cookie_value, now)

    def _idle_too_long(self, entry: CachedSession, now: float) -> bool:
        return (
            self.cfg.inactivity > 0
            and not entry.remember_me
            and now - entry.last_active > self.cfg.inactivity + self.cfg.activity_flush_interval
        )

    async def _load(self, cookie_value: str, now: float) -> CachedSession | None:
        try:
            session_id, signed_at = self.codec.verify(cookie_value, now=now)
        except SessionInvalid:
            return None
        id_hash = hash_session_id(session_id)
        found = await self.store.get_session(id_hash)
        if found is None:
            self.cache.evict_session(id_hash)
            return None
        record, user = found
        stale = self.cache.peek(cookie_value)
        last_active = max(record.last_active, stale.last_active if stale else 0.0)
        last_active = max(last_active, self._pending_activity.get(id_hash, 0.0))
        reason = session_end_reason(
            record,
            now=now,
            last_active=last_active,
            inactivity=self.cfg.inactivity,
            grace=self.cfg.activity_flush_interval,
        )
        if user.disabled:
            reason = "user disabled"
        if reason is not None:
            await self._end(record, reason)
            return None
        entry = CachedSession(
            id_hash=id_hash,
            user_id=user.id,
            subject=Subject(user.username, frozenset(user.groups)),
            level=record.level,
            headers=build_identity_headers(user, self._header_names),
            expires_at=min(record.expires_at, signed_at + self.codec.max_age),
            remember_me=record.remember_me,
            last_active=now,
            refresh_at=now + self.cfg.cache_ttl * (1 - REFRESH_JITTER * random.random()),  # noqa: S311
            record=record,
            must_enrol=await self.enrolment_check(user, record),
        )
        self.cache.put(cookie_value, entry)
        self._pending_activity[id_hash] = now
        return entry

    async def _end(self, record: SessionRecord, reason: str) -> None:
        self.cache.evict_session(record.id_hash)
        self._pending_activity.pop(record.id_hash, None)
        await self.store.delete_session(record.id_hash)
        log_event("session_ended", reason=reason, user_id=record.user_id)

    async def revoke(self, id_hash: str) -> bool:
        """End one session now on this worker; other workers follow within cache_ttl."""
        self.cache.evict_session(id_hash)
        self._pending_activity.pop(id_hash, None)
        return await self.store.delete_session(id_hash)

    async def revoke_user(self, user_id: int, *, keep_id_hash: str | None = None) -> int:
        """End every session of a user (optionally but one)."""
        self.cache.evict_user(user_id, keep_id_hash=keep_id_hash)
        return await self.store.delete_user_sessions(user_id, keep_id_hash=keep_id_hash)

    async def flush_activity(self) -> None:
        """Write pending last-activity times in one batch."""
        if not self._pending_activity:
            return
        pending, self._pending_activity = self._pending_activity, {}
        await self.store.touch_sessions(pending)

    async def run_flusher(self) -> None:
        """Flush last activity periodically and prune expired sessions; runs until cancelled."""
        while True:
            await asyncio.sleep(self.cfg.activity_flush_interval)
            try:
                await self.flush_activity()
                await self.store.delete_expired_sessions(self.clock())
            except Exception:  # keep flushing after a transient database error
                logger.exception("activity flush failed")
