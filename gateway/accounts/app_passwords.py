"""App passwords at the forward-auth endpoints: check Basic/Bearer credentials, cached.

A cache hit is one dict lookup keyed by the exact Authorization header value, plus the
per-request checks that depend on the request (domain limit, expiry). A cached entry is
re-read from storage at most `session.cache_ttl` seconds after it was read, so a revoked
or expired token stops working within that bound on every worker (at once on the worker
that revoked it). Last use (time, client address) is batched like session activity.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from gateway.authz.wire import answer_head
from gateway.config import AppPasswordsConfig, IdentityHeadersConfig
from gateway.factors import app_passwords
from gateway.factors.app_passwords import (
    AppPasswordDomainRefused,
    AppPasswordExpired,
    Credentials,
    InvalidAppPassword,
)
from gateway.logs import log_event
from gateway.models import Level, Subject
from gateway.sessions.codec import build_identity_headers
from gateway.store.contract import Storage

MAX_CACHED = 50_000


@dataclass(slots=True)
class CachedToken:
    """What forward-auth needs about a verified app password, prepared once."""

    token_pk: int
    token_id: str
    user_id: int
    username: str
    subject: Subject
    level: Level
    headers: tuple[tuple[str, str], ...]  # identity headers, for answers built by aiohttp
    answer_head: bytes  # the whole 200 answer but its Date line (gateway/authz/wire.py)
    domains: tuple[str, ...]
    expires_at: float | None
    refresh_at: float


class AppPasswordService:
    def __init__(
        self,
        store: Storage,
        cfg: AppPasswordsConfig,
        headers: IdentityHeadersConfig,
        *,
        pepper: bytes,
        cache_ttl: float,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.pepper = pepper
        self.cache_ttl = cache_ttl
        self.clock = clock
        self._header_names = (headers.user, headers.email, headers.groups, headers.name)
        self._cache: dict[str, CachedToken] = {}
        self._pending_use: dict[int, tuple[float, str]] = {}
        self._suspects: dict[str, float] = {}  # client address -> last failure
        self.suspect_for = 900.0  # seconds an address stays under ban checks after a failure

    def mark_suspect(self, ip: str) -> None:
        """Remember a failure from this address: its next requests are checked against bans."""
        if len(self._suspects) >= MAX_CACHED:
            self._suspects.clear()
        self._suspects[ip] = self.clock()

    def is_suspect(self, ip: str) -> bool:
        failed_at = self._suspects.get(ip)
        if failed_at is None:
            return False
        if self.clock() - failed_at > self.suspect_for:
            del self._suspects[ip]
            return False
        return True

    async def resolve(
        self, authorization: str, credentials: Credentials, *, host: str, ip: str
    ) -> CachedToken:
        """Return the token's identity, or raise InvalidAppPassword / AppPasswordDomainRefused."""
        now = self.clock()
        entry = self._cache.get(authorization)
        if entry is None or now >= entry.refresh_at:
            entry = await self._load(authorization, credentials, host=host, now=now)
        if entry.expires_at is not None and entry.expires_at <= now:
            self._cache.pop(authorization, None)
            raise AppPasswordExpired("app password expired")
        if not app_passwords.domain_allowed(host, entry.domains):
            raise AppPasswordDomainRefused(host)
        self._pending_use[entry.token_pk] = (now, ip)
        return entry

    async def _load(
        self, authorization: str, credentials: Credentials, *, host: str, now: float
    ) -> CachedToken:
        self._cache.pop(authorization, None)
        token_id = app_passwords.token_id_of(credentials.secret)
        found = await self.store.read_app_password(token_id) if token_id else None
        if token_id is None:
            # Not shaped like a token: an account password sent over Basic. Never accepted here.
            raise InvalidAppPassword("not an app password (account passwords are not accepted here)")
        record, user = app_passwords.check_app_password(
            credentials, found, pepper=self.pepper, host=host, now=now
        )
        identity = build_identity_headers(user, self._header_names)
        entry = CachedToken(
            token_pk=record.id,
            token_id=record.token_id,
            user_id=user.id,
            username=user.username,
            subject=Subject(user.username, frozenset(user.groups)),
            level=app_passwords.effective_level(record.level, self.cfg.level),
            headers=identity,
            answer_head=answer_head(200, identity),
            domains=record.domains,
            expires_at=record.expires_at,
            refresh_at=now + self.cache_ttl,
        )
        if len(self._cache) >= MAX_CACHED:
            del self._cache[next(iter(self._cache))]
        self._cache[authorization] = entry
        return entry

    def evict(self, token_id: str) -> None:
        """Forget a token on this worker at once (revocation)."""
        for key in [k for k, e in self._cache.items() if e.token_id == token_id]:
            del self._cache[key]

    def evict_user(self, user_id: int) -> None:
        """Forget a user's tokens on this worker at once (their account or tokens changed)."""
        for key in [k for k, e in self._cache.items() if e.user_id == user_id]:
            del self._cache[key]

    def evict_all(self) -> None:
        """Forget every cached token (revocations may have been missed)."""
        self._cache.clear()

    async def flush_use(self) -> None:
        """Write pending last-use times in one batch."""
        if not self._pending_use:
            return
        pending, self._pending_use = self._pending_use, {}
        try:
            await self.store.touch_app_passwords(pending)
        except Exception:  # activity bookkeeping must never break forward-auth
            log_event("app_password_touch_failed", logging.WARNING, count=len(pending))
