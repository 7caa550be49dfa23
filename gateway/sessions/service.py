"""Sessions over the store: create, resolve (cached), revoke, and flush last activity.

Staleness bound: a cached session is never used more than `cache_ttl` seconds
after it was read from storage, so a revocation made by another worker (or the
CLI) takes effect within `cache_ttl`. Revocations made by this worker take
effect at once, and so do those of other instances on a store with a revocation
channel (PostgreSQL's LISTEN/NOTIFY: gateway/sessions/revocations.py). Last
activity is kept in memory and written in batches every
`activity_flush_interval` seconds (and at shutdown).

Sessions in use are re-read ahead of that bound, in the background: from
RENEW_AFTER of `cache_ttl` on, a request still answers from the cache and queues
the session for the renewer (part of `run_flusher`), which re-reads everything
queued during one renewal tick in a single query on the store's read-only
connection. Requests only wait for storage on
a first sight or when an entry went unused past its bound. A re-read never
verifies the cookie signature again (the cached entry remembers when it runs
out), and a revocation on this worker while a read is in flight keeps that
read's result out of the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable

from gateway.config import IdentityHeadersConfig, SessionConfig
from gateway.errors import SessionInvalid, StoreUnavailable
from gateway.logs import log_event, logger
from gateway.models import Level, SessionRecord, Subject, User
from gateway.sessions.codec import (
    CachedSession,
    SessionCache,
    SessionCodec,
    build_identity_headers,
    cookie_values,
    generate_session_id,
    hash_session_id,
    session_end_reason,
)
from gateway.store.contract import Storage

Clock = Callable[[], float]

# Background renewal starts at a random point between these fractions of cache_ttl after a
# read: spread, so entries loaded together (a restart, a burst of logins) do not all re-read
# at once, and early enough for a queued re-read to finish long before the hard bound.
# Renewing early never lengthens the revocation bound; it costs 1/0.8 = 1.25 reads per
# session in use per cache_ttl.
RENEW_AFTER = (0.7, 0.9)
# Sessions waiting for a background re-read; beyond this, requests fall back to reading
# themselves at the hard bound (never served stale past it).
MAX_PENDING_RENEWALS = 10_000
# The renewer gathers queued sessions for one tick, then re-reads them all in one query.
# A tick is at most 5 % of cache_ttl: renewal starts by 90 % of it, so a batch is read
# long before the hard bound. At most this many sessions per query (SQLite's parameter limit).
RENEW_TICK_FRACTION = 0.05
RENEW_TICK_MAX = 0.25
RENEW_BATCH = 500

# Whether a session's user must enrol a second factor before reaching any app.
EnrolmentCheck = Callable[[User, SessionRecord], Awaitable[bool]]


async def _never(_user: User, _record: SessionRecord) -> bool:
    return False


class SessionService:
    def __init__(
        self,
        store: Storage,
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
        self._cookie_name = cfg.cookie_name
        self.clock = clock
        self.cache = SessionCache()
        self._header_names = (headers.user, headers.email, headers.groups, headers.name)
        self._pending_activity: dict[str, float] = {}
        self._renewals: asyncio.Queue[str] = asyncio.Queue()
        self._renewing: set[str] = set()
        # Bumped by every eviction: a read that started before one must not fill the cache.
        self._generation = 0
        # False when no directory is configured: directory users' sessions end, since nothing
        # re-checks them any more (docs/ldap.md, "removing the directory").
        self.directory_configured = True

    async def create(
        self,
        user: User,
        level: Level,
        *,
        remember_me: bool,
        ip: str,
        user_agent: str,
        amr: tuple[str, ...] = (),
    ) -> str:
        """Start a new session and return its signed cookie value (`amr`: the factors passed)."""
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
            amr=amr,
        )
        await self.store.create_session(record)
        return self.codec.sign(session_id)

    def resolve_header_cached(self, cookie_header: str | None) -> CachedSession | None:
        """resolve_header() for the forward-auth hot path: the session when the header names
        one session cookie and the cache can answer for it alone; None means "ask resolve_header()"."""
        values = cookie_values(cookie_header, self._cookie_name)
        return self.resolve_cached(values[0]) if len(values) == 1 else None

    async def resolve_header(self, cookie_header: str | None) -> CachedSession | None:
        """Return the live session named by a Cookie header, or None."""
        for value in cookie_values(cookie_header, self._cookie_name):
            session = await self.resolve(value)
            if session is not None:
                return session
        return None

    def resolve_cached(self, cookie_value: str) -> CachedSession | None:
        """resolve() when the cache alone can answer: the entry when it is fresh and live;
        None means "ask resolve()" (absent, stale, expired or idle too long)."""
        entry = self.cache.peek(cookie_value)
        if entry is None:
            return None
        now = self.clock()
        if now >= entry.usable_until or now - entry.last_active > entry.idle_limit:
            return None
        # _touch, written out: this runs for nearly every forward-auth request.
        entry.last_active = now
        self._pending_activity[entry.id_hash] = now
        if now >= entry.renew_at:
            self._queue_renewal(cookie_value, entry)
        return entry

    async def resolve(self, cookie_value: str) -> CachedSession | None:
        """Return the live session for a cookie value, or None (never raises on bad input)."""
        now = self.clock()
        entry = self.cache.get(cookie_value, now)
        if entry is None:
            return await self._load(cookie_value, now)
        if now >= entry.expires_at:
            await self._end(entry.record, "expired")
            return None
        if now - entry.last_active > entry.idle_limit:
            await self._end(entry.record, "inactive")
            return None
        self._touch(cookie_value, entry, now)
        return entry

    def _touch(self, cookie_value: str, entry: CachedSession, now: float) -> None:
        """Record a use: last activity (flushed in batches), and a background re-read when due."""
        entry.last_active = now
        self._pending_activity[entry.id_hash] = now
        if now >= entry.renew_at:
            self._queue_renewal(cookie_value, entry)

    def _queue_renewal(self, cookie_value: str, entry: CachedSession) -> None:
        entry.renew_at = float("inf")  # once per read: the renewer puts a new entry
        if len(self._renewing) >= MAX_PENDING_RENEWALS or cookie_value in self._renewing:
            return
        self._renewing.add(cookie_value)
        self._renewals.put_nowait(cookie_value)

    async def _load(self, cookie_value: str, now: float) -> CachedSession | None:
        stale = self.cache.peek(cookie_value)
        if stale is not None:
            # Verified when first cached; its signature end is remembered.
            id_hash, cookie_end = stale.id_hash, stale.cookie_expires_at
        else:
            try:
                session_id, signed_at = self.codec.verify(cookie_value, now=now)
            except SessionInvalid:
                return None
            id_hash, cookie_end = hash_session_id(session_id), signed_at + self.codec.max_age
        generation = self._generation
        found = await self.store.read_session(id_hash)
        return await self._prepare(cookie_value, id_hash, cookie_end, found, now, generation, active=True)

    async def _prepare(
        self,
        cookie_value: str,
        id_hash: str,
        cookie_end: float,
        found: tuple[SessionRecord, User] | None,
        now: float,
        generation: int,
        *,
        active: bool,
    ) -> CachedSession | None:
        """Turn a session read from storage into a cache entry, or end it; None when it is over.

        `active`: a request is using the session now (a background renewal is not activity).
        """
        if found is None:
            self._evict_session(id_hash)
            return None
        if now >= cookie_end:
            return None  # the cookie's signature ran out: as if it no longer verified
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
        elif user.from_directory and not self.directory_configured:
            reason = "directory not configured"
        if reason is not None:
            await self._end(record, reason)
            return None
        ttl = self.cfg.cache_ttl
        subject = Subject(user.username, frozenset(user.groups))
        headers = build_identity_headers(user, self._header_names)
        must_enrol = await self.enrolment_check(user, record)
        expires_at = min(record.expires_at, cookie_end)
        renew_at = now + ttl * random.uniform(*RENEW_AFTER)  # noqa: S311
        if (
            stale is not None
            and generation == self._generation  # no revocation while we read
            and stale.user_id == user.id
            and stale.subject == subject
            and stale.headers == headers
            and stale.level == record.level
            and stale.must_enrol == must_enrol
            and stale.remember_me == record.remember_me
            and stale.expires_at == expires_at
        ):
            # Nothing a decision or a response reads has changed: keep the entry (and what is
            # memoised by it) and move its bounds on. Re-reading the sessions in use then
            # creates no long-lived objects, which keeps the collector's full passes rare.
            stale.renewed(
                record, last_active=now if active else last_active, refresh_at=now + ttl, renew_at=renew_at
            )
            if active:
                self._pending_activity[id_hash] = now
            return stale
        entry = CachedSession(
            id_hash=id_hash,
            user_id=user.id,
            subject=subject,
            level=record.level,
            headers=headers,
            expires_at=expires_at,
            remember_me=record.remember_me,
            last_active=now if active else last_active,
            refresh_at=now + ttl,
            record=record,
            must_enrol=must_enrol,
            renew_at=renew_at,
            cookie_expires_at=cookie_end,
            idle_limit=self._idle_limit(record),
        )
        # A revocation on this worker while we read: this answer may predate it, so keep it out.
        if generation == self._generation:
            self.cache.put(cookie_value, entry)
        if active:
            self._pending_activity[id_hash] = now
        return entry

    def _idle_limit(self, record: SessionRecord) -> float:
        """Seconds of no use that end the session; the same rule as session_end_reason."""
        if self.cfg.inactivity <= 0 or record.remember_me:
            return math.inf
        # The grace absorbs last activity that another worker has not flushed yet.
        return self.cfg.inactivity + self.cfg.activity_flush_interval

    def _evict_session(self, id_hash: str) -> None:
        self._generation += 1
        self.cache.evict_session(id_hash)

    async def _end(self, record: SessionRecord, reason: str) -> None:
        self._evict_session(record.id_hash)
        self._pending_activity.pop(record.id_hash, None)
        await self.store.delete_session(record.id_hash)
        log_event("session_ended", reason=reason, user_id=record.user_id)

    async def revoke(self, id_hash: str) -> bool:
        """End one session now on this worker; other workers follow within cache_ttl."""
        self._evict_session(id_hash)
        self._pending_activity.pop(id_hash, None)
        return await self.store.delete_session(id_hash)

    async def mark_authenticated(self, id_hash: str) -> None:
        """Record a fresh factor check (re-authentication) and drop the cached copy everywhere here."""
        await self.store.set_session_authenticated(id_hash, self.clock())
        self._evict_session(id_hash)

    def forget_user(self, user_id: int, *, keep_id_hash: str | None = None) -> None:
        """Re-read a user's sessions (but `keep_id_hash`) on next use (their identity or groups changed)."""
        self._generation += 1
        self.cache.evict_user(user_id, keep_id_hash=keep_id_hash)

    def forget_session(self, id_hash: str) -> None:
        """Re-read one session on next use (another instance ended or changed it)."""
        self._evict_session(id_hash)

    def forget_all(self) -> None:
        """Re-read every session on next use (revocations may have been missed)."""
        self._generation += 1
        self.cache.clear()

    async def revoke_user(self, user_id: int, *, keep_id_hash: str | None = None) -> int:
        """End every session of a user (optionally but one)."""
        self._generation += 1
        self.cache.evict_user(user_id, keep_id_hash=keep_id_hash)
        return await self.store.delete_user_sessions(user_id, keep_id_hash=keep_id_hash)

    async def flush_activity(self) -> None:
        """Write pending last-activity times in one batch."""
        if not self._pending_activity:
            return
        pending, self._pending_activity = self._pending_activity, {}
        await self.store.touch_sessions(pending)

    async def run_flusher(self) -> None:
        """Flush activity, prune expired sessions, renew cached ones in the background; until cancelled."""
        renewer = asyncio.create_task(self._run_renewer())
        try:
            await self._flush_periodically()
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _run_renewer(self) -> None:
        # One query per tick for everything queued: a steady trickle on the read connection.
        tick = min(RENEW_TICK_MAX, self.cfg.cache_ttl * RENEW_TICK_FRACTION)
        while True:
            batch = [await self._renewals.get()]
            if self._renewals.qsize() < RENEW_BATCH - 1:
                await asyncio.sleep(tick)  # let this tick's due sessions gather
            while len(batch) < RENEW_BATCH and not self._renewals.empty():
                batch.append(self._renewals.get_nowait())
            try:
                await self._renew_many(batch)
            except StoreUnavailable as exc:  # the entries stay until their bound
                log_event("session_renewal_failed", logging.WARNING, reason=exc.reason)
            except Exception:  # the entries stay until their bound; requests then read them
                logger.exception("session renewal failed")
            finally:
                for cookie_value in batch:
                    self._renewing.discard(cookie_value)

    async def _renew_many(self, cookie_values: list[str]) -> None:
        """Re-read cached sessions in the background with one query (the renewer's unit of work)."""
        stale = [(c, e) for c in cookie_values if (e := self.cache.peek(c)) is not None]
        if not stale:
            return
        generation = self._generation
        found = await self.store.read_sessions([entry.id_hash for _c, entry in stale])
        now = self.clock()

        def ends(item: tuple[str, CachedSession]) -> bool:
            row = found.get(item[1].id_hash)
            if row is None or row[1].disabled or now >= row[0].expires_at:
                return True
            return row[1].from_directory and not self.directory_configured

        # Every eviction bumps the generation and keeps the reads that started before it out
        # of the cache: put the live sessions first, so this batch's own endings do not
        # discard them. (A revocation meanwhile still does, as for a single read.)
        for cookie_value, entry in sorted(stale, key=ends):
            await self._prepare(
                cookie_value,
                entry.id_hash,
                entry.cookie_expires_at,
                found.get(entry.id_hash),
                now,
                generation,
                active=False,
            )

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.activity_flush_interval)
            try:
                await self.flush_activity()
                await self.store.delete_expired_sessions(self.clock())
            except StoreUnavailable as exc:  # locked or full: one line, and try again next time
                log_event("activity_flush_failed", logging.WARNING, reason=exc.reason)
            except Exception:  # keep flushing after a transient database error
                logger.exception("activity flush failed")
