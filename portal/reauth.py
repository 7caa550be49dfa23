"""Recent re-authentication for sensitive actions (app passwords, administration).

A session remembers when its owner last proved a factor (`authenticated_at`); an
action guarded here sends the browser to /reauth first when that is too long ago.
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from gateway.sessions.codec import CachedSession
from portal.web import base_of, cookie_domain_of, redirect, services_of


def is_recent(session: CachedSession, *, max_age: float, now: float) -> bool:
    """True when the session's last factor check is at most `max_age` seconds old."""
    return now - session.record.authenticated_at <= max_age


def reauth_redirect(request: web.Request, path_qs: str) -> web.Response:
    """Send the browser to re-authenticate, then back to `path_qs` (a portal path)."""
    portal = cookie_domain_of(request).portal_url
    target = portal.removesuffix(base_of(request)) + path_qs
    return redirect(f"{base_of(request)}/reauth?{urlencode({'rd': target})}")


def require_recent(
    request: web.Request, session: CachedSession, max_age: float, *, back: str
) -> web.Response | None:
    """Return a redirect to /reauth when the session is too old for this action, else None.

    `back` is the portal page to return to (a GET page: a POST body cannot survive the trip).
    """
    if is_recent(session, max_age=max_age, now=services_of(request).clock()):
        return None
    return reauth_redirect(request, back)


async def mark_reauthenticated(request: web.Request, session: CachedSession) -> None:
    """Store the fresh factor check and drop the cached copy so every check sees it."""
    await services_of(request).sessions.mark_authenticated(session.id_hash)
