"""Security keys and passkeys: register in settings, second factor, passwordless login.

The ceremonies run in the browser (static/webauthn.js) against small JSON endpoints;
every one is CSRF-checked (X-CSRF-Token) and its challenge is single-use server-side.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

from aiohttp import web

from gateway.accounts import audit
from gateway.accounts.webauthn import PASSKEY_LOGIN, SECOND_FACTOR
from gateway.errors import Conflict
from gateway.factors.passkeys import InvalidWebAuthn
from gateway.logs import log_event
from gateway.models import AMR_HARDWARE_KEY, AMR_PASSWORD, AMR_USER_VERIFIED, Level, User, merge_amr
from portal.flow import STEP_VERIFY, second_factor_needed
from portal.flow import start as start_pending
from portal.pending import set_pending
from portal.views.login import ban_remaining, remember_last_login
from portal.views.second_factor import (
    FactorContext,
    amr_with,
    login_retry_url,
    record_wrong_code,
    resolve_context,
    start_over,
    start_session,
)
from portal.views.settings import (
    device_id,
    password_ok,
    rename_device,
    settings_form,
    settings_page,
    strong_session,
)
from portal.web import (
    SECURITY_HEADERS,
    after_login_target,
    base_of,
    client_ip,
    csrf_header_ok,
    form_text,
    passkeys_here,
    record_own_event,
    redirect,
    safe_target,
    services_of,
    translator,
)

WEBAUTHN = "webauthn"


def json_error(message: str, status: int = 400, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status, headers=SECURITY_HEADERS)


def json_next(location: str) -> web.Response:
    return web.json_response({"next": location}, headers=SECURITY_HEADERS)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: json.loads gives up on deeply nested arrays ("[[[[..."), a client error.
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "the body is not JSON"}), content_type="application/json"
        ) from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "expected a JSON object"}), content_type="application/json"
        )
    return body


def _ceremony(challenge_id: str, options_json: str) -> web.Response:
    return web.json_response(
        {"challenge_id": challenge_id, "options": json.loads(options_json)}, headers=SECURITY_HEADERS
    )


# --- Registering devices -------------------------------------------------------------------------


async def register_options(request: web.Request) -> web.Response:
    """Start registering a security key or passkey for the signed-in user."""
    tr = translator(request)
    if not csrf_header_ok(request):
        return json_error(tr.gettext("The page expired. Reload it and try again."), 403)
    found = await strong_session(request)
    if isinstance(found, web.Response):
        return json_error(tr.gettext("Please sign in again."), 401, next=found.headers.get("Location", ""))
    services = services_of(request)
    if not passkeys_here(request):
        return json_error(tr.gettext("Security keys and passkeys are not available here."), 403)
    ceremony = await services.webauthn.begin_registration(found[1])
    return _ceremony(ceremony.challenge_id, ceremony.options_json)


async def register_finish(request: web.Request) -> web.Response:
    """Verify and store the new device; it gets a default name the user can change."""
    tr = translator(request)
    if not csrf_header_ok(request):
        return json_error(tr.gettext("The page expired. Reload it and try again."), 403)
    found = await strong_session(request)
    if isinstance(found, web.Response):
        return json_error(tr.gettext("Please sign in again."), 401, next=found.headers.get("Location", ""))
    session, user = found
    services = services_of(request)
    body = await _json_body(request)
    try:
        credential = await services.webauthn.finish_registration(
            user, body.get("challenge_id"), body.get("credential")
        )
    except (InvalidWebAuthn, Conflict) as exc:
        log_event("webauthn_register_failed", logging.WARNING, user=user.username, reason=str(exc))
        return json_error(tr.gettext("The device was not registered: %(reason)s", reason=str(exc)))
    await record_own_event(
        request, user, audit.WEBAUTHN_ADDED, f"{credential.name} ({credential.device_type})"
    )
    response = json_next(f"{base_of(request)}/settings?named={credential.id}")
    if session.level < Level.TWO_FACTOR:
        # Enrolling the first factor from a password session: the session now has two (new id).
        amr = merge_amr(session.record.amr or (AMR_PASSWORD,), AMR_HARDWARE_KEY)
        await start_session(request, response, user, remember=session.remember_me, old=session, amr=amr)
    return response


async def rename_key(request: web.Request) -> web.Response:
    return await rename_device(request, lambda store, *args: store.rename_webauthn_credential(*args))


async def revoke_device(request: web.Request) -> web.Response:
    """Revoke a device for good (asks for the password as confirmation)."""
    tr = translator(request)
    checked = await settings_form(request)
    if isinstance(checked, web.Response):
        return checked
    user, form = checked
    services = services_of(request)
    devices = await services.store.list_webauthn_credentials(user.id)
    device = next((d for d in devices if d.id == device_id(request)), None)
    if device is None:
        return await settings_page(request, error=tr.gettext("No such device."), status=404)
    if len(devices) == 1 and not user.password_login:
        return await settings_page(
            request,
            error=tr.gettext("This is your only way to sign in: turn password sign-in back on first."),
            status=409,
        )
    if not await password_ok(request, user, form_text(form, "password")):
        return await settings_page(
            request, error=tr.gettext("Your current password is not correct."), status=401
        )
    await services.store.delete_webauthn_credential(user.id, device.id)
    await record_own_event(request, user, audit.WEBAUTHN_REVOKED, device.name)
    return redirect(f"{base_of(request)}/settings?done=deleted")


async def password_login_toggle(request: web.Request) -> web.Response:
    """Switch password sign-in off (passkeys only) or back on for one's own account."""
    tr = translator(request)
    checked = await settings_form(request)
    if isinstance(checked, web.Response):
        return checked
    user, form = checked
    services = services_of(request)
    enable = form_text(form, "enabled") == "on"
    if not enable and not await services.store.list_webauthn_credentials(user.id):
        return await settings_page(
            request,
            error=tr.gettext("Register a security key or passkey first."),
            status=409,
        )
    if not await password_ok(request, user, form_text(form, "password")):
        return await settings_page(
            request, error=tr.gettext("Your current password is not correct."), status=401
        )
    await services.store.set_password_login(user.id, enable)
    await record_own_event(
        request, user, audit.PASSWORD_LOGIN_ENABLED if enable else audit.PASSWORD_LOGIN_DISABLED
    )
    response = redirect(f"{base_of(request)}/settings?done={'password_on' if enable else 'password_off'}")
    remember_last_login(request, response, replace(user, password_login=enable))
    return response


# --- As a second factor --------------------------------------------------------------------------


async def _factor_context(request: web.Request, body: dict[str, Any]) -> FactorContext | web.Response:
    tr = translator(request)
    rd = body.get("rd") if isinstance(body.get("rd"), str) else None
    ctx = await resolve_context(request, rd)
    if isinstance(ctx, web.Response):
        return json_error(
            tr.gettext("Your sign-in expired. Please start again."),
            401,
            next=ctx.headers.get("Location", ""),
        )
    if ctx.pending is not None and ctx.pending.first_factor == WEBAUTHN:
        return json_error(
            tr.gettext("Use your authenticator app or a recovery code for the second step."),
            400,
        )
    return ctx


async def second_factor_options(request: web.Request) -> web.Response:
    tr = translator(request)
    if not csrf_header_ok(request):
        return json_error(tr.gettext("The page expired. Reload it and try again."), 403)
    ctx = await _factor_context(request, await _json_body(request))
    if isinstance(ctx, web.Response):
        return ctx
    try:
        ceremony = await services_of(request).webauthn.begin_authentication(ctx.user, SECOND_FACTOR)
    except InvalidWebAuthn as exc:
        return json_error(str(exc))
    return _ceremony(ceremony.challenge_id, ceremony.options_json)


async def second_factor_finish(request: web.Request) -> web.Response:
    """Complete the second-factor step with a security key or passkey."""
    tr = translator(request)
    if not csrf_header_ok(request):
        return json_error(tr.gettext("The page expired. Reload it and try again."), 403)
    body = await _json_body(request)
    ctx = await _factor_context(request, body)
    if isinstance(ctx, web.Response):
        return ctx
    services = services_of(request)
    ip = client_ip(request)
    if await ban_remaining(request, ctx.user.username, ip) is not None:
        return json_error(tr.gettext("Too many failed sign-in attempts. Try again later."), 429)
    try:
        assertion = await services.webauthn.finish_authentication(
            body.get("challenge_id"), body.get("credential"), SECOND_FACTOR
        )
        if assertion.user.id != ctx.user.id:
            raise InvalidWebAuthn("this security key belongs to another account")
    except InvalidWebAuthn as exc:
        left = await record_wrong_code(request, ctx, WEBAUTHN, ip)
        if left is not None and left <= 0:
            return start_over(
                request,
                ctx,
                json_error(
                    tr.gettext("Too many failed attempts."),
                    401,
                    next=login_retry_url(request, ctx),
                ),
            )
        return json_error(tr.gettext("The security key was not accepted: %(reason)s", reason=str(exc)), 401)
    await services.store.record_attempt(ctx.user.username, ip, True, services.clock())
    await services.store.set_last_method(ctx.user.id, WEBAUTHN)
    name = ctx.user.username
    await services.audit.record(
        audit.SECOND_FACTOR_SUCCEEDED, actor=name, target=name, ip=ip, detail=WEBAUTHN
    )
    remember = ctx.pending.remember_me if ctx.pending else bool(ctx.session and ctx.session.remember_me)
    target = after_login_target(request, ctx.rd)
    return await start_session(
        request,
        json_next(target),
        ctx.user,
        remember=remember,
        old=ctx.session,
        amr=amr_with(ctx, AMR_HARDWARE_KEY),
    )


# --- Passwordless login --------------------------------------------------------------------------


async def passkey_options(request: web.Request) -> web.Response:
    """Start a passkey login: no user yet, so any discoverable credential may answer."""
    tr = translator(request)
    if not csrf_header_ok(request):
        return json_error(tr.gettext("The page expired. Reload it and try again."), 403)
    services = services_of(request)
    if not passkeys_here(request):
        return json_error(tr.gettext("Passkey sign-in is not available here."), 403)
    ceremony = await services.webauthn.begin_authentication(None, PASSKEY_LOGIN)
    return _ceremony(ceremony.challenge_id, ceremony.options_json)


async def passkey_finish(request: web.Request) -> web.Response:
    """Sign in with a passkey: two factors with user verification, one without."""
    tr = translator(request)
    if not csrf_header_ok(request):
        return json_error(tr.gettext("The page expired. Reload it and try again."), 403)
    services = services_of(request)
    if not passkeys_here(request):
        return json_error(tr.gettext("Passkey sign-in is not available here."), 403)
    body = await _json_body(request)
    rd = safe_target(request, body.get("rd") if isinstance(body.get("rd"), str) else None) or ""
    ip = client_ip(request)
    if await ban_remaining(request, f"ip:{ip}", ip) is not None:
        return json_error(tr.gettext("Too many failed sign-in attempts. Try again later."), 429)
    try:
        assertion = await services.webauthn.finish_authentication(
            body.get("challenge_id"), body.get("credential"), PASSKEY_LOGIN
        )
    except InvalidWebAuthn as exc:
        await services.store.record_attempt(f"ip:{ip}", ip, False, services.clock())
        await services.audit.record(
            audit.LOGIN_FAILED, actor=None, target=None, ip=ip, detail=f"passkey: {exc}"
        )
        return json_error(tr.gettext("The passkey was not accepted: %(reason)s", reason=str(exc)), 401)
    user = assertion.user
    if await ban_remaining(request, user.username, ip) is not None:
        return json_error(tr.gettext("Too many failed sign-in attempts. Try again later."), 429)
    if user.from_directory:
        # No password reaches the directory here: ask it now whether the account still exists
        # and is enabled (DirectoryUnavailable -> 503 through store_guard).
        confirmed = await services.directory.confirm(user) if services.directory is not None else None
        if confirmed is None:
            await services.audit.record(
                audit.LOGIN_FAILED,
                actor=None,
                target=user.username,
                ip=ip,
                detail="passkey: not in the directory",
            )
            return json_error(tr.gettext("This account is disabled."), 401)
        user = confirmed
    return await _passkey_signed_in(request, user, assertion.user_verified, rd, ip)


async def _passkey_signed_in(
    request: web.Request, user: User, verified: bool, rd: str, ip: str
) -> web.Response:
    services = services_of(request)
    now = services.clock()
    if not verified:
        # Without user verification a passkey is only something you have: like a password,
        # it is one factor, and users with another factor are asked for it.
        kinds = [k for k in await services.two_factor.kinds(user.id) if k != WEBAUTHN]
        step = second_factor_needed(
            mode=services.config.two_factor.mode, policy_demands_two=False, has_factors=bool(kinds)
        )
        if step == STEP_VERIFY:
            pending = start_pending(
                user.id,
                rd=rd,
                remember_me=False,
                now=now,
                ttl=services.config.two_factor.pending_ttl,
                max_attempts=services.config.two_factor.pending_max_attempts,
                first_factor=WEBAUTHN,
            )
            services.metrics.first_factor_accepted("passkey")
            response = json_next(f"{base_of(request)}/2fa")
            set_pending(request, response, pending)
            return response
    await services.store.record_attempt(user.username, ip, True, now)
    level = Level.TWO_FACTOR if verified else Level.ONE_FACTOR
    detail = "passkey with user verification" if verified else "passkey without user verification"
    await services.audit.record(
        audit.LOGIN_SUCCEEDED, actor=user.username, target=user.username, ip=ip, detail=detail
    )
    response = json_next(after_login_target(request, rd))
    remember_last_login(request, response, user)
    amr = merge_amr((AMR_HARDWARE_KEY, AMR_USER_VERIFIED) if verified else (AMR_HARDWARE_KEY,))
    return await start_session(request, response, user, level=level, remember=False, old=None, amr=amr)
