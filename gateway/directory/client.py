"""The LDAP adapter over bonsai: the only module that imports it (tests/unit/test_layout.py).

Every call is bounded by `timeout`: bonsai's own per-operation timeout (which also fires
for a server that accepts the TCP connection and then never answers), and an asyncio
deadline one second later as a backstop. bonsai's errors are translated here into DirectoryUnavailable
(cannot ask), DirectoryLoginFailed (asked, and the answer is no) and PasswordChangeRefused.

Service-account connections are pooled (`pool_size`); one that fails is dropped and the next
call opens a fresh one, which is all the reconnection there is: no state survives a failure.
A user's password is checked by a bind on a connection of its own, closed right after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import bonsai
from bonsai import errors as ldap_errors

from gateway.config import LdapConfig
from gateway.directory import filters
from gateway.directory.entries import (
    AttributeMap,
    DirectoryEntry,
    InvalidEntry,
    entry_from_attributes,
    groups_from_member_of,
)
from gateway.directory.presets import DISABLED_ATTRIBUTES
from gateway.errors import DirectoryLoginFailed, DirectoryUnavailable, PasswordChangeRefused
from gateway.logs import log_event

T = TypeVar("T")

# bonsai raises these when it could not get an answer: the directory, not the request, is at fault.
_UNAVAILABLE = (ldap_errors.ConnectionError, ldap_errors.TimeoutError, asyncio.TimeoutError, OSError)
# Longest login text sent to the directory; longer is refused before any search (docs/ldap.md).
MAX_LOGIN_LENGTH = 256
# Hard cap on entries read per user search: two are enough to refuse an ambiguous login.
_USER_SIZE_LIMIT = 2
_GROUP_SIZE_LIMIT = 1000
# bonsai's timeout ends a call first; this asyncio deadline only catches one it missed.
_BACKSTOP = 1.0


class DirectoryTimedOut(DirectoryUnavailable):
    """No answer within the timeout: a hung server, so retrying would only double the wait."""


def attribute_map(cfg: LdapConfig) -> AttributeMap:
    a = cfg.attributes
    return AttributeMap(
        external_id=a.external_id,
        username=a.username,
        display_name=a.display_name,
        mail=a.mail,
        member_of=a.member_of,
        group_name=a.group_name,
        password_changed=a.password_changed,
        disabled_rule=cfg.disabled_rule,
    )


class LdapDirectory:
    """Search, bind and change passwords in one directory, as configured."""

    def __init__(self, cfg: LdapConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.mapping = attribute_map(cfg)
        self._idle: list[Any] = []
        self._slots = asyncio.Semaphore(cfg.pool_size)
        # User binds open connections of their own: at most pool_size at once, so a burst of
        # sign-ins from many addresses cannot open unbounded connections to the directory.
        self._binds = asyncio.Semaphore(cfg.pool_size)
        a = cfg.attributes
        wanted = [a.external_id, a.username, a.display_name, a.mail, a.password_changed]
        if cfg.group_search_mode == "memberof":
            wanted.append(a.member_of)
        wanted.extend(DISABLED_ATTRIBUTES.get(cfg.disabled_rule, ()))
        self._user_attributes = list(dict.fromkeys(name for name in wanted if name))

    # -- connections ----------------------------------------------------------------------------

    def _client(self, dn: str, password: str) -> bonsai.LDAPClient:
        tls = self.cfg.url.startswith("ldap://") and self.cfg.start_tls
        client = bonsai.LDAPClient(self.cfg.url, tls=tls)
        client.set_credentials("SIMPLE", user=dn, password=password)
        if self.cfg.url.startswith("ldaps://") or tls:
            client.set_cert_policy("never" if self.cfg.tls_skip_verify else "demand")
            if self.cfg.ca_file:
                client.set_ca_cert(self.cfg.ca_file)
        # Never chase a referral (it would take our bind to another server) nor return one.
        client.set_server_chase_referrals(False)
        client.set_ignore_referrals(True)
        if self.cfg.attributes.external_id.lower() == "objectguid":
            client.set_raw_attributes([self.cfg.attributes.external_id])
        return client

    async def _bounded(self, call: Awaitable[T], what: str) -> T:
        """Await an LDAP call within the timeout; DirectoryUnavailable when it cannot answer."""
        try:
            return await asyncio.wait_for(call, self.cfg.timeout + _BACKSTOP)
        except _UNAVAILABLE as exc:
            if isinstance(exc, asyncio.TimeoutError | ldap_errors.TimeoutError):
                raise DirectoryTimedOut(f"{what}: no answer within {self.cfg.timeout:g}s") from exc
            raise DirectoryUnavailable(f"{what}: {exc or type(exc).__name__}") from exc

    async def _connect(self, dn: str, password: str) -> Any:
        if not password:
            # An empty password makes a simple bind "unauthenticated": it succeeds as nobody.
            raise DirectoryLoginFailed("empty password")
        client = self._client(dn, password)
        return await self._bounded(client.connect(is_async=True, timeout=self.cfg.timeout), "connect")

    @contextlib.asynccontextmanager
    async def _as_user(self, dn: str, password: str) -> AsyncIterator[Any]:
        """A connection bound as a user (checks the password), closed after; pool_size at once."""
        try:
            await asyncio.wait_for(self._binds.acquire(), self.cfg.timeout)
        except TimeoutError as exc:
            raise DirectoryTimedOut("too many sign-ins waiting for the directory") from exc
        try:
            conn = await self._connect(dn, password)
            try:
                yield conn
            finally:
                conn.close()
        finally:
            self._binds.release()

    @contextlib.asynccontextmanager
    async def _service(self) -> AsyncIterator[Any]:
        """A pooled connection bound as the service account; dropped when a call on it fails."""
        try:
            await asyncio.wait_for(self._slots.acquire(), self.cfg.timeout)
        except TimeoutError as exc:
            raise DirectoryTimedOut("every directory connection is busy") from exc
        conn = None
        try:
            conn = self._idle.pop() if self._idle else None
            if conn is None:
                try:
                    conn = await self._connect(self.cfg.bind_dn, self.cfg.bind_password)
                except ldap_errors.AuthenticationError as exc:
                    raise DirectoryUnavailable(
                        "the service account's bind_dn or password is refused"
                    ) from exc
                except DirectoryLoginFailed as exc:
                    raise DirectoryUnavailable("the service account has no password") from exc
            yield conn
        except BaseException:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            conn = None
            raise
        finally:
            if conn is not None:
                self._idle.append(conn)
            self._slots.release()

    async def _search(self, base: str, filter_exp: str, attributes: list[str], limit: int) -> list[Any]:
        """Search with the service account; a pooled connection that died is replaced once."""
        # A pooled connection may have died with a server restart: then one retry on a fresh one.
        attempts = 2 if self._idle else 1
        for attempt in range(1, attempts + 1):
            try:
                async with self._service() as conn:
                    call = conn.search(
                        base,
                        bonsai.LDAPSearchScope.SUBTREE,
                        filter_exp,
                        attrlist=attributes,
                        timeout=self.cfg.timeout,
                        sizelimit=limit,
                    )
                    return list(await self._bounded(call, "search"))
            except ldap_errors.SizeLimitError:
                raise
            except ldap_errors.NoSuchObjectError:
                return []  # the base DN does not exist (yet): nobody is found there
            except DirectoryTimedOut:
                raise
            except DirectoryUnavailable:
                if attempt == attempts:
                    raise
            except ldap_errors.LDAPError as exc:
                raise DirectoryUnavailable(f"search: {exc}") from exc
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Close the pooled connections."""
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    # -- users ----------------------------------------------------------------------------------

    def _users_filter(self, login: str) -> str:
        a = self.cfg.attributes
        values = {"input": login, "username_attribute": a.username, "mail_attribute": a.mail}
        return filters.render_filter(self.cfg.users_filter, values, now=self.clock())

    async def _find(self, login: str) -> list[Any]:
        try:
            return await self._search(
                self.cfg.users_base, self._users_filter(login), self._user_attributes, _USER_SIZE_LIMIT
            )
        except ldap_errors.SizeLimitError:
            return [None, None]  # more than the limit: as ambiguous as two

    async def _groups(self, raw: Any, username: str, login: str) -> list[str]:
        a = self.cfg.attributes
        if self.cfg.group_search_mode == "memberof":
            return groups_from_member_of(list(raw.get(a.member_of, [])), a.group_name)
        values = {"dn": str(raw.dn), "username": username, "input": login, "username_attribute": a.username}
        group_filter = filters.render_filter(self.cfg.groups_filter, values, now=self.clock())
        try:
            found = await self._search(self.cfg.groups_base, group_filter, [a.group_name], _GROUP_SIZE_LIMIT)
        except ldap_errors.SizeLimitError as exc:
            raise DirectoryUnavailable(f"more than {_GROUP_SIZE_LIMIT} groups for one user") from exc
        names = []
        for group in found:
            values_of = group.get(a.group_name, [])
            if values_of:
                names.append(str(values_of[0]))
        return names

    async def _entry(self, raw: Any, login: str) -> DirectoryEntry:
        attributes = {str(key): list(values) for key, values in raw.items() if str(key).lower() != "dn"}
        username_values = attributes.get(self.cfg.attributes.username) or [
            v for k, v in attributes.items() if k.lower() == self.cfg.attributes.username.lower()
        ]
        username = str(username_values[0]).lower() if username_values else ""
        groups = await self._groups(raw, username, login)
        return entry_from_attributes(str(raw.dn), attributes, self.mapping, groups)

    async def authenticate(self, login: str, password: str) -> DirectoryEntry:
        """Find exactly one entry for `login` and bind as it with `password`.

        DirectoryLoginFailed when there is no such entry, more than one, the entry is disabled
        or the password is wrong; DirectoryUnavailable when the directory cannot answer.
        """
        if not password:
            raise DirectoryLoginFailed("empty password")
        if not login or len(login) > MAX_LOGIN_LENGTH:
            raise DirectoryLoginFailed("login empty or too long")
        found = await self._find(login)
        if not found:
            raise DirectoryLoginFailed("no such entry")
        if len(found) > 1:
            log_event("ldap_ambiguous_login", logging.WARNING, login=login, entries=len(found))
            raise DirectoryLoginFailed("more than one entry matches")
        raw = found[0]
        try:
            entry = await self._entry(raw, login)
        except InvalidEntry as exc:
            log_event("ldap_invalid_entry", logging.WARNING, reason=str(exc))
            raise DirectoryLoginFailed("entry lacks a username or stable id") from exc
        if entry.disabled:
            raise DirectoryLoginFailed("account disabled")
        try:
            async with self._as_user(entry.dn, password):
                pass
        except ldap_errors.AuthenticationError as exc:
            raise DirectoryLoginFailed("wrong password") from exc
        except ldap_errors.LDAPError as exc:  # e.g. a password policy refusing the bind
            raise DirectoryLoginFailed(f"bind refused: {type(exc).__name__}") from exc
        return entry

    async def lookup(self, username: str, external_id: str) -> DirectoryEntry | None:
        """Re-read a known user (by username, confirmed by stable id); None when gone or disabled
        by the users_filter. DirectoryUnavailable when the directory cannot answer."""
        found = [raw for raw in await self._find(username) if raw is not None]
        for raw in found:
            try:
                entry = await self._entry(raw, username)
            except InvalidEntry:
                continue
            if entry.external_id == external_id:
                return entry
        return None

    async def set_password(self, dn: str, new_password: str) -> None:
        """Set a user's password as the service account (a reset link): Password Modify without the
        old password, which the directory allows only where its access rules let the service account."""
        if not new_password:
            raise PasswordChangeRefused("The new password must not be empty.")
        async with self._service() as conn:
            await self._modify_password(conn, dn, new_password, None)

    async def _modify_password(self, conn: Any, dn: str, new_password: str, old_password: str | None) -> None:
        try:
            call = conn.modify_password(dn, new_password, old_password, timeout=self.cfg.timeout)
            await self._bounded(call, "password modify")
        except ldap_errors.PasswordPolicyError as exc:
            raise PasswordChangeRefused(
                f"The directory's password policy refused it: {exc.args[0] if exc.args else exc}"
            ) from exc
        except (ldap_errors.InsufficientAccess, ldap_errors.UnwillingToPerform) as exc:
            raise PasswordChangeRefused(
                "The directory does not let this password be changed here; use your directory's own tools."
            ) from exc
        except ldap_errors.LDAPError as exc:
            raise PasswordChangeRefused(
                f"The directory refused the new password ({type(exc).__name__}); it may not meet its rules."
            ) from exc

    async def change_password(self, dn: str, old_password: str, new_password: str) -> None:
        """Change a user's password as that user: the Password Modify extended operation (RFC 3062).

        DirectoryLoginFailed for a wrong old password; PasswordChangeRefused when the directory
        does not allow it (policy, access rules, no support); DirectoryUnavailable.
        """
        if not new_password:
            raise PasswordChangeRefused("The new password must not be empty.")
        try:
            async with self._as_user(dn, old_password) as conn:
                await self._modify_password(conn, dn, new_password, old_password)
        except ldap_errors.AuthenticationError as exc:
            raise DirectoryLoginFailed("wrong password") from exc
