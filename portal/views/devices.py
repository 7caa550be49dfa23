"""Signed-in devices: every session and app password of the user, with revocation.

Revocation deletes the session row; this worker forgets it at once and every other
worker within session.cache_ttl (the documented bound).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.accounts import audit
from gateway.models import SessionRecord
from portal.events import device_label
from portal.web import (
    base_of,
    clear_session_cookie,
    client_ip,
    csrf_ok,
    current_session,
    read_form,
    redirect,
    render,
    services_of,
    translator,
)

PAGE = "/settings/devices"


@dataclass(frozen=True, slots=True)
class DeviceRow:
    record: SessionRecord
    device: str
    current: bool


async def devices_page(request: web.Request) -> web.Response:
    """List the user's sessions (this device first) and app passwords."""
    tr = translator(request)
    services = services_of(request)
    session = await current_session(request)
    if session is None:
        return redirect(f"{base_of(request)}/login")
    records = await services.store.list_user_sessions(session.user_id)
    rows = sorted(
        (DeviceRow(r, device_label(r.user_agent, tr), r.id_hash == session.id_hash) for r in records),
        key=lambda row: (not row.current, -row.record.last_active),
    )
    return render(
        request,
        "devices.html",
        rows=rows,
        tokens=await services.store.list_app_passwords(session.user_id),
        now=services.clock(),
        notice={"one": tr.gettext("Session ended."), "others": tr.gettext("Signed out everywhere else.")}.get(
            request.query.get("done", "")
        ),
    )


async def revoke_session(request: web.Request) -> web.Response:
    """End one of the user's sessions (the current one signs this browser out)."""
    tr = translator(request)
    services = services_of(request)
    session = await current_session(request)
    if session is None:
        return redirect(f"{base_of(request)}/login")
    form = await read_form(request)
    if not csrf_ok(request, form):
        return render(
            request,
            "message.html",
            status=403,
            heading=tr.gettext("Form expired"),
            message=tr.gettext("Please try again."),
        )
    target = request.match_info["id_hash"]
    owned = {r.id_hash for r in await services.store.list_user_sessions(session.user_id)}
    if target not in owned:
        raise web.HTTPNotFound(text="404 no such session\n")
    await services.sessions.revoke(target)
    await services.audit.record(
        audit.SESSION_REVOKED,
        actor=session.subject.username,
        target=session.subject.username,
        ip=client_ip(request),
        detail=target[:16],
    )
    if target == session.id_hash:
        response = redirect(f"{base_of(request)}/login?signed_out=1")
        clear_session_cookie(request, response)
        return response
    return redirect(f"{base_of(request)}{PAGE}?done=one")


async def revoke_other_sessions(request: web.Request) -> web.Response:
    """Sign out everywhere else: end every session but this one."""
    tr = translator(request)
    services = services_of(request)
    session = await current_session(request)
    if session is None:
        return redirect(f"{base_of(request)}/login")
    form = await read_form(request)
    if not csrf_ok(request, form):
        return render(
            request,
            "message.html",
            status=403,
            heading=tr.gettext("Form expired"),
            message=tr.gettext("Please try again."),
        )
    ended = await services.sessions.revoke_user(session.user_id, keep_id_hash=session.id_hash)
    await services.audit.record(
        audit.SESSIONS_REVOKED,
        actor=session.subject.username,
        target=session.subject.username,
        ip=client_ip(request),
        detail=f"{ended} other session(s)",
    )
    return redirect(f"{base_of(request)}{PAGE}?done=others")
