"""Revocations heard from other instances -> cached answers dropped on this one.

The store (PostgreSQL) calls the listener for every revocation any instance commits
(gateway/store/contract.py, Revocation); dropping an entry only means "read it again on
next use", so a notification for something that did not change costs one read, and one
that never arrives (the channel is down) leaves the cache_ttl bound in charge.
"""

from __future__ import annotations

from gateway.accounts.app_passwords import AppPasswordService
from gateway.logs import log_event
from gateway.sessions.service import SessionService
from gateway.store.contract import Revocation, RevocationListener


def cache_dropper(sessions: SessionService, tokens: AppPasswordService) -> RevocationListener:
    """Return a listener that drops the cached sessions and app passwords a revocation names."""

    def drop(revocation: Revocation) -> None:
        if revocation.kind == "session":
            sessions.forget_session(revocation.key)
        elif revocation.kind == "user":
            if not revocation.key.isdigit():
                log_event("revocation_ignored", kind=revocation.kind)
                return
            user_id = int(revocation.key)
            sessions.forget_user(user_id, keep_id_hash=revocation.keep or None)
            tokens.evict_user(user_id)
        elif revocation.kind == "token":
            tokens.evict(revocation.key)
        else:
            sessions.forget_all()
            tokens.evict_all()

    return drop
