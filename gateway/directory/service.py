"""Directory users over the LDAP client and the store: login, confirmation, background re-checks.

Staying in sync (docs/ldap.md): every directory user someone may be acting as (a live
session or app password) is re-read from the directory once per `refresh_interval`, by a
background task, never by a forward-auth request. What the re-check decides
(entries.decide_sync) is written to the user's row; sessions then follow within the
session cache's `cache_ttl` (at once on this worker). So a user disabled or deleted in the
directory, a group removed or a password changed there takes effect within
refresh_interval + one tick + the LDAP timeout + session.cache_ttl.

While the directory cannot be reached, re-checks fail and are retried every tick; sessions
keep the last state the directory confirmed (forward-auth never waits on LDAP).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from gateway.config import LdapConfig
from gateway.directory.entries import DISABLE, END_SESSIONS, KEEP, UPDATE, DirectoryEntry, Stored, decide_sync
from gateway.errors import Conflict, DirectoryLoginFailed, DirectoryUnavailable
from gateway.logs import log_event, logger
from gateway.models import User
from gateway.sessions.service import SessionService
from gateway.store.contract import Storage

# How often the re-check task looks for users due: a quarter of refresh_interval, between 1 s and 60 s.
TICK_FRACTION = 0.25
TICK_MIN, TICK_MAX = 1.0, 60.0
BATCH = 100  # users re-checked per tick at most; the rest follow on the next ticks


class Directory(Protocol):
    """What the service needs from the LDAP client (gateway.directory.client.LdapDirectory)."""

    async def authenticate(self, login: str, password: str) -> DirectoryEntry: ...
    async def lookup(self, username: str, external_id: str) -> DirectoryEntry | None: ...
    async def change_password(self, dn: str, old_password: str, new_password: str) -> None: ...
    async def set_password(self, dn: str, new_password: str) -> None: ...
    async def close(self) -> None: ...


def tick_interval(refresh_interval: float) -> float:
    return min(TICK_MAX, max(TICK_MIN, refresh_interval * TICK_FRACTION))


class DirectoryService:
    def __init__(
        self,
        directory: Directory,
        store: Storage,
        sessions: SessionService,
        cfg: LdapConfig,
        clock: Callable[[], float],
        on_user_changed: Callable[[int], None] = lambda _user_id: None,
    ) -> None:
        self.on_user_changed = on_user_changed  # e.g. drop the user's cached app passwords
        self.directory = directory
        self.store = store
        self.sessions = sessions
        self.cfg = cfg
        self.clock = clock

    async def _save(self, entry: DirectoryEntry) -> User:
        return await self.store.upsert_directory_user(
            external_id=entry.external_id,
            username=entry.username,
            email=entry.mail,
            display_name=entry.display_name,
            groups=entry.groups,
            disabled=entry.disabled,
            stamp=entry.password_stamp,
            checked_at=self.clock(),
        )

    async def login(self, login: str, password: str) -> User:
        """Check a password against the directory and return the user's (created or refreshed) row.

        DirectoryLoginFailed when the directory says no, or when a local account already has
        the directory user's name (the local account wins; never merged); DirectoryUnavailable.
        """
        entry = await self.directory.authenticate(login, password)
        try:
            user = await self._save(entry)
        except Conflict as exc:
            log_event("ldap_username_taken", logging.WARNING, username=entry.username, reason=str(exc))
            raise DirectoryLoginFailed("a local account has this username") from exc
        self.sessions.forget_user(user.id)  # groups may have changed since the last re-check
        return user

    async def _stored(self, user: User) -> Stored | None:
        found = await self.store.directory_link(user.id)
        if found is None:
            return None
        external_id, stamp = found
        return Stored(
            user_id=user.id,
            external_id=external_id,
            username=user.username,
            display_name=user.display_name,
            mail=user.email,
            groups=tuple(user.groups),
            disabled=user.disabled,
            password_stamp=stamp,
        )

    async def confirm(self, user: User) -> User | None:
        """Re-check one directory user now (a passkey login asks no password of the directory):
        the refreshed user, or None when the directory no longer has them enabled."""
        stored = await self._stored(user)
        if stored is None:
            return None
        return await self._apply(user, stored, await self.directory.lookup(user.username, stored.external_id))

    async def _apply(self, user: User, stored: Stored, found: DirectoryEntry | None) -> User | None:
        action = decide_sync(stored, found)
        if action != KEEP:
            self.on_user_changed(user.id)
        now = self.clock()
        if action == DISABLE or found is None:
            await self.store.set_disabled(user.id, True)  # also deletes the sessions
            await self.store.set_directory_checked(user.id, now)
            await self.sessions.revoke_user(user.id)
            log_event(
                "ldap_user_disabled", user=user.username, reason="gone" if found is None else "disabled"
            )
            return None
        try:
            refreshed = await self._save(found)
        except Conflict as exc:  # renamed in the directory to a local user's name: stop here
            log_event("ldap_username_taken", logging.WARNING, username=found.username, reason=str(exc))
            await self.store.set_disabled(user.id, True)
            await self.sessions.revoke_user(user.id)
            return None
        if action == END_SESSIONS:
            ended = await self.sessions.revoke_user(user.id)
            log_event("ldap_password_changed", user=refreshed.username, sessions_ended=ended)
        elif action == UPDATE:
            self.sessions.forget_user(user.id)
            log_event("ldap_user_updated", user=refreshed.username)
        return refreshed  # KEEP: only the check time moved on

    async def change_password(self, user: User, old_password: str, new_password: str) -> None:
        """Change a directory user's password in the directory (RFC 3062) and keep the new stamp,
        so the change made here does not end the session that made it."""
        stored = await self._stored(user)
        if stored is None:
            raise DirectoryLoginFailed("not a directory user")
        entry = await self.directory.authenticate(user.username, old_password)
        await self.directory.change_password(entry.dn, old_password, new_password)
        fresh = await self.directory.lookup(user.username, stored.external_id)
        if fresh is not None:
            await self._save(fresh)

    async def check_password(self, user: User, password: str) -> bool:
        """True when the directory accepts `password` for this (same, still enabled) directory user."""
        stored = await self._stored(user)
        if stored is None:
            return False
        try:
            entry = await self.directory.authenticate(user.username, password)
        except DirectoryLoginFailed:
            return False
        return entry.external_id == stored.external_id

    async def reset_password(self, user: User, new_password: str) -> None:
        """Set a directory user's password as the service account (an administrator's reset link)."""
        stored = await self._stored(user)
        if stored is None:
            raise DirectoryLoginFailed("not a directory user")
        entry = await self.directory.lookup(user.username, stored.external_id)
        if entry is None:
            raise DirectoryLoginFailed("no longer in the directory")
        await self.directory.set_password(entry.dn, new_password)
        fresh = await self.directory.lookup(user.username, stored.external_id)
        if fresh is not None:
            await self._save(fresh)

    async def sync_due(self) -> int:
        """Re-check the users whose last check is older than refresh_interval; return how many."""
        now = self.clock()
        due = await self.store.directory_users_due(
            checked_before=now - self.cfg.refresh_interval, now=now, limit=BATCH
        )
        for user, external_id, stamp in due:
            stored = Stored(
                user_id=user.id,
                external_id=external_id,
                username=user.username,
                display_name=user.display_name,
                mail=user.email,
                groups=tuple(user.groups),
                disabled=user.disabled,
                password_stamp=stamp,
            )
            await self._apply(user, stored, await self.directory.lookup(user.username, external_id))
        return len(due)

    async def run(self) -> None:
        """Re-check directory users every tick until cancelled; a directory outage is retried."""
        tick = tick_interval(self.cfg.refresh_interval)
        while True:
            await asyncio.sleep(tick)
            try:
                await self.sync_due()
            except DirectoryUnavailable as exc:
                log_event("ldap_sync_failed", logging.WARNING, reason=exc.reason)
            except Exception:  # keep re-checking after an unexpected error
                logger.exception("directory re-check failed")
