"""Administration for members of the admin group: users' second-factor status and reset."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web

from gateway.logs import log_event
from gateway.models import Level, User
from portal.web import (
    base_of,
    client_ip,
    csrf_ok,
    current_session,
    read_form,
    redirect,
    render,
    services_of,
)


@dataclass(frozen=True, slots=True)
class UserFactors:
    """What an admin may know about a user's second factors: counts and names, never secrets."""

    user: User
    totp_devices: int
    recovery_left: int


async def _admin(request: web.Request) -> User:
    """Return the signed-in admin, or raise 403 (never reveal more to non-admins)."""
    services = services_of(request)
    session = await current_session(request)
    if session is None:
        raise web.HTTPFound(f"{base_of(request)}/login")
    user = await services.store.get_user(session.user_id)
    if user is None or services.config.portal.admin_group not in user.groups:
        log_event("admin_forbidden", logging.WARNING, user=session.subject.username, path=request.path)
        raise web.HTTPForbidden(text="403 forbidden: administrators only\n")
    if session.level < Level.TWO_FACTOR and await services.two_factor.has_factor(user.id):
        raise web.HTTPFound(f"{base_of(request)}/2fa")
    return user


async def users_page(request: web.Request) -> web.Response:
    """List users with their second-factor status."""
    await _admin(request)
    store = services_of(request).store
    rows = [
        UserFactors(
            user,
            len(await store.list_totp_devices(user.id)),
            await store.count_unused_recovery_codes(user.id),
        )
        for user in await store.list_users()
    ]
    return render(
        request,
        "admin_users.html",
        rows=rows,
        notice=request.query.get("reset") and "Second factors removed.",
    )


async def reset_second_factors(request: web.Request) -> web.Response:
    """Remove all of a user's second factors, so they can enrol again (lost phone)."""
    admin = await _admin(request)
    services = services_of(request)
    form = await read_form(request)
    if not csrf_ok(request, form):
        return render(
            request, "message.html", status=403, heading="Form expired", message="Please try again."
        )
    target = await services.store.get_user_by_name(request.match_info["username"].lower())
    if target is None:
        raise web.HTTPNotFound(text="404 no such user\n")
    await services.store.reset_second_factors(target.id)
    ip = client_ip(request)
    now = services.clock()
    await services.store.add_security_event(
        target.id, "second_factors_reset", f"by {admin.username}", ip, now
    )
    log_event(
        "second_factors_reset", logging.WARNING, admin=admin.username, user=target.username, client_ip=ip
    )
    return redirect(f"{base_of(request)}/admin/users?reset=1")
