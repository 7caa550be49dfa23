"""The pending second-factor step in a signed cookie, with a server-side attempt count.

The cookie alone could be replayed to reset `attempts_left`, so wrong codes are
also recorded in the login-attempts table under the pending login's nonce, and
that count is what caps guessing.
"""

from __future__ import annotations

from aiohttp import web
from itsdangerous import BadSignature, URLSafeTimedSerializer

from portal.flow import InvalidPending, PendingLogin, from_payload, to_payload
from portal.web import (
    base_of,
    services_of,
    signer,
)

PENDING_COOKIE = "authgate_2fa"
PENDING_SALT = "authgate.pending.v1"


def _serializer(request: web.Request) -> URLSafeTimedSerializer:
    return signer(request, PENDING_SALT)


def attempts_key(pending: PendingLogin) -> str:
    """The login-attempts key counting this pending login's wrong codes."""
    return f"2fa:{pending.nonce}"


def load_pending(request: web.Request) -> PendingLogin | None:
    """Return the pending login from its cookie, or None when absent, tampered or too old."""
    value = request.cookies.get(PENDING_COOKIE)
    if not value:
        return None
    ttl = services_of(request).config.two_factor.pending_ttl
    try:
        return from_payload(_serializer(request).loads(value, max_age=int(ttl) + 1))
    except (BadSignature, InvalidPending, UnicodeError):
        return None


async def attempts_left(request: web.Request, pending: PendingLogin) -> int:
    """Return how many wrong codes this pending login may still take (server-side count)."""
    services = services_of(request)
    # The key names only this pending login, so every failure under it counts; `since` is
    # exclusive and a wrong code may be recorded at the very instant the login started.
    failures = await services.store.failures_since(username=attempts_key(pending), since=0.0)
    return min(pending.attempts_left, services.config.two_factor.pending_max_attempts - len(failures))


def set_pending(request: web.Request, response: web.StreamResponse, pending: PendingLogin) -> None:
    services = services_of(request)
    response.set_cookie(
        PENDING_COOKIE,
        _serializer(request).dumps(to_payload(pending)),
        path=base_of(request) or "/",
        max_age=int(services.config.two_factor.pending_ttl),
        httponly=True,
        secure=services.config.session.secure,
        samesite="Strict",
    )


def clear_pending(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(
        PENDING_COOKIE,
        path=base_of(request) or "/",
        secure=services_of(request).config.session.secure,
        httponly=True,
        samesite="Strict",
    )
