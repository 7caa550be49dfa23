"""Re-authentication: prove a factor again before a sensitive action (password or security key)."""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.accounts import audit
from gateway.accounts.webauthn import REAUTH
from gateway.factors.passkeys import InvalidWebAuthn
from gateway.logs import log_event
from gateway.models import User
from portal.reauth import mark_reauthenticated
from portal.views.login import reserve_attempt
from portal.views.passkeys import _ceremony, _json_body, json_error, json_next
from portal.web import (
    base_of,
    client_ip,
    csrf_header_ok,
    csrf_ok,
    form_text,
    passkeys_here,
    read_form,
    redirect,
    render,
    safe_target,
    services_of,
    signed_in,
    translator,
)


def _target(request: web.Request, rd: str | None) -> str:
    return safe_target(request, rd) or f"{base_of(request)}/"


async def _page(request: web.Request, user: User, rd: str, *, error: str | None = None, status: int = 200):
    keys = await services_of(request).store.list_webauthn_credentials(user.id)
    return render(
        request,
        "reauth.html",
        status=status,
        user=user,
        rd=rd,
        error=error,
        keys=bool(keys) and passkeys_here(request),
    )


async def reauth_page(request: web.Request) -> web.Response:
    """Ask the signed-in user to confirm it is them."""
    found = await signed_in(request)
    if found is None:
        return redirect(f"{base_of(request)}/login")
    return await _page(request, found[1], safe_target(request, request.query.get("rd")) or "")


async def reauth_submit(request: web.Request) -> web.Response:
    tr = translator(request)
    found = await signed_in(request)
    if found is None:
        return redirect(f"{base_of(request)}/login")
    session, user = found
    services = services_of(request)
    form = await read_form(request)
    rd = safe_target(request, form_text(form, "rd", limit=4096)) or ""
    if not csrf_ok(request, form):
        return await _page(
            request,
            user,
            rd,
            error=tr.gettext("The form expired. Please try again."),
            status=403,
        )
    if not user.password_login:
        return await _page(
            request,
            user,
            rd,
            error=tr.gettext("Use your security key or passkey."),
            status=400,
        )
    ip = client_ip(request)
    slot = await reserve_attempt(request, user.username, ip)
    if slot.attempt_id is None:
        return await _page(
            request,
            user,
            rd,
            error=tr.gettext("Too many failed attempts. Try again later."),
            status=429,
        )
    stored = await services.store.find_login(user.username)
    ok = await services.passwords.verify(stored[1] if stored else None, form_text(form, "password"))
    if ok:
        await services.store.mark_attempt_succeeded(slot.attempt_id)
    else:
        await services.audit.record(audit.REAUTH_FAILED, actor=user.username, target=user.username, ip=ip)
        return await _page(request, user, rd, error=tr.gettext("Your password is not correct."), status=401)
    await mark_reauthenticated(request, session)
    await services.audit.record(audit.REAUTH_SUCCEEDED, actor=user.username, target=user.username, ip=ip)
    return redirect(_target(request, rd))


async def reauth_webauthn_options(request: web.Request) -> web.Response:
    tr = translator(request)
    if not csrf_header_ok(request):
        return json_error(tr.gettext("The page expired. Reload it and try again."), 403)
    found = await signed_in(request)
    if found is None:
        return json_error(tr.gettext("Please sign in again."), 401)
    try:
        ceremony = await services_of(request).webauthn.begin_authentication(found[1], REAUTH)
    except InvalidWebAuthn as exc:
        return json_error(str(exc))
    return _ceremony(ceremony.challenge_id, ceremony.options_json)


async def reauth_webauthn_finish(request: web.Request) -> web.Response:
    """Re-authenticate with a registered security key or passkey."""
    tr = translator(request)
    if not csrf_header_ok(request):
        return json_error(tr.gettext("The page expired. Reload it and try again."), 403)
    found = await signed_in(request)
    if found is None:
        return json_error(tr.gettext("Please sign in again."), 401)
    session, user = found
    services = services_of(request)
    body = await _json_body(request)
    ip = client_ip(request)
    try:
        assertion = await services.webauthn.finish_authentication(
            body.get("challenge_id"), body.get("credential"), REAUTH
        )
        if assertion.user.id != user.id:
            raise InvalidWebAuthn("this security key belongs to another account")
    except InvalidWebAuthn as exc:
        await services.store.record_attempt(user.username, ip, False, services.clock())
        await services.audit.record(audit.REAUTH_FAILED, actor=user.username, target=user.username, ip=ip)
        log_event("reauth_failed", logging.WARNING, user=user.username, reason=str(exc))
        return json_error(tr.gettext("The security key was not accepted: %(reason)s", reason=str(exc)), 401)
    await mark_reauthenticated(request, session)
    await services.audit.record(audit.REAUTH_SUCCEEDED, actor=user.username, target=user.username, ip=ip)
    rd = body.get("rd") if isinstance(body.get("rd"), str) else None
    return json_next(_target(request, rd))
