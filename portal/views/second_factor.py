"""The second-factor step: after the password (pending login) or for step-up (level-one session)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web

from gateway.accounts import audit
from gateway.accounts.two_factor import RECOVERY, TOTP
from gateway.models import AMR_HARDWARE_KEY, AMR_OTP, AMR_PASSWORD, AttemptSlot, Level, User, merge_amr
from gateway.sessions.codec import CachedSession
from portal.flow import PendingLogin, PendingLoginError, check, default_method
from portal.i18n import N_
from portal.pending import attempts_key, attempts_left, clear_pending, load_pending
from portal.views.login import ban_message, reserve_attempt
from portal.web import (
    after_login_target,
    base_of,
    client_ip,
    csrf_ok,
    current_session,
    form_text,
    read_form,
    record_own_event,
    redirect,
    render,
    safe_target,
    services_of,
    set_session_cookie,
    translator,
)

WEBAUTHN = "webauthn"
METHOD_LABELS = {
    WEBAUTHN: N_("Security key or passkey"),
    TOTP: N_("Authenticator app"),
    RECOVERY: N_("Recovery code"),
}


@dataclass(frozen=True, slots=True)
class FactorContext:
    """Who owes a second factor, and where they go afterwards."""

    user: User
    pending: PendingLogin | None  # after the password
    session: CachedSession | None  # step-up from level one
    rd: str


def _with_rd(path: str, rd: str, **flags: str) -> str:
    query = urlencode({**({"rd": rd} if rd else {}), **flags})
    return f"{path}?{query}" if query else path


async def resolve_context(request: web.Request, rd: str | None) -> FactorContext | web.Response:
    """Return the pending login or the step-up session, or a redirect to start over."""
    services = services_of(request)
    pending = load_pending(request)
    if pending is not None:
        try:
            check(pending, now=services.clock())
        except PendingLoginError:
            response = redirect(_with_rd(f"{base_of(request)}/login", pending.rd, expired="1"))
            clear_pending(request, response)
            return response
        if await attempts_left(request, pending) <= 0:
            # The cookie's own count can be replayed; the server-side count cannot.
            response = redirect(_with_rd(f"{base_of(request)}/login", pending.rd, retry="1"))
            clear_pending(request, response)
            return response
        user = await services.store.get_user(pending.user_id)
        if user is None or user.disabled:
            return redirect(f"{base_of(request)}/login")
        return FactorContext(user, pending, None, pending.rd)
    session = await current_session(request)
    target = safe_target(request, rd) or ""
    if session is None:
        return redirect(_with_rd(f"{base_of(request)}/login", target))
    user = await services.store.get_user(session.user_id)
    if user is None:
        return redirect(f"{base_of(request)}/login")
    return FactorContext(user, None, session, target)


async def start_session(
    request: web.Request,
    response: web.Response,
    user: User,
    *,
    level: Level = Level.TWO_FACTOR,
    remember: bool,
    old: CachedSession | None,
    amr: tuple[str, ...],
) -> web.Response:
    """Start a fresh session (new id) on `response`, ending the old one and any pending login.

    `amr`: every factor the new session has passed (RFC 8176 values, for OIDC ID tokens).
    """
    services = services_of(request)
    if old is not None:
        await services.sessions.revoke(old.id_hash)
    cookie = await services.sessions.create(
        user,
        level,
        remember_me=remember,
        ip=client_ip(request),
        user_agent=request.headers.get("User-Agent", ""),
        amr=amr,
    )
    set_session_cookie(request, response, cookie, remember=remember)
    clear_pending(request, response)
    return response


async def finish_login(
    request: web.Request,
    user: User,
    *,
    remember: bool,
    old: CachedSession | None,
    target: str,
    amr: tuple[str, ...],
) -> web.Response:
    """Start a fresh level-two session (new id), end the old one, and go on."""
    return await start_session(request, redirect(target), user, remember=remember, old=old, amr=amr)


def amr_with(ctx: FactorContext, method: str) -> tuple[str, ...]:
    """The factors of the first step (pending login or step-up session) plus `method`."""
    if ctx.pending is not None:
        first: tuple[str, ...] = (
            (AMR_HARDWARE_KEY,) if ctx.pending.first_factor == WEBAUTHN else (AMR_PASSWORD,)
        )
    elif ctx.session is not None:
        first = ctx.session.record.amr or (AMR_PASSWORD,)
    else:
        first = ()
    return merge_amr(first, method)


async def usable_kinds(request: web.Request, ctx: FactorContext) -> tuple[str, ...]:
    """The factor kinds that may complete this step (not the one that was the first factor)."""
    kinds = await services_of(request).two_factor.kinds(ctx.user.id)
    if ctx.pending is not None and ctx.pending.first_factor == WEBAUTHN:
        return tuple(k for k in kinds if k != WEBAUTHN)
    return kinds


def _page(
    request: web.Request,
    ctx: FactorContext,
    kinds: tuple[str, ...],
    method: str,
    *,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    tr = translator(request)
    return render(
        request,
        "second_factor.html",
        user=ctx.user,
        method=method,
        others=[
            (kind, tr.gettext(METHOD_LABELS[kind]))
            for kind in kinds
            if kind != method and kind in METHOD_LABELS
        ],
        rd=ctx.rd,
        step_up=ctx.session is not None,
        error=error,
        status=status,
    )


async def second_factor_page(request: web.Request) -> web.Response:
    """Ask for a code, offering the kind used last and links to the others."""
    services = services_of(request)
    ctx = await resolve_context(request, request.query.get("rd"))
    if isinstance(ctx, web.Response):
        return ctx
    if ctx.session is not None and ctx.session.must_enrol:
        return redirect(_with_rd(f"{base_of(request)}/settings/totp/new", ctx.rd))
    if ctx.session is not None and ctx.session.level >= Level.TWO_FACTOR:
        return redirect(after_login_target(request, ctx.rd))
    kinds = await usable_kinds(request, ctx)
    if not {TOTP, WEBAUTHN} & set(kinds) and ctx.session is not None:
        # Step-up for someone without a factor: enrol one (which itself proves two factors).
        return redirect(_with_rd(f"{base_of(request)}/settings/totp/new", ctx.rd))
    if not kinds:
        response = redirect(f"{base_of(request)}/login")
        clear_pending(request, response)
        return response
    chosen = request.query.get("method")
    method = (
        chosen
        if chosen in kinds
        else default_method(kinds, await services.store.get_last_method(ctx.user.id))
    )
    return _page(request, ctx, kinds, method or TOTP)


async def second_factor_submit(request: web.Request) -> web.Response:
    """Check a TOTP or recovery code; on success start a level-two session."""
    services = services_of(request)
    form = await read_form(request)
    ctx = await resolve_context(request, form_text(form, "rd", limit=4096))
    if isinstance(ctx, web.Response):
        return ctx
    kinds = await usable_kinds(request, ctx)
    method = form_text(form, "method")
    if method not in (TOTP, RECOVERY) or method not in kinds:
        method = TOTP if TOTP in kinds else RECOVERY
    tr = translator(request)
    if not csrf_ok(request, form):
        error = tr.gettext("The form expired. Please try again.")
        return _page(request, ctx, kinds, method, error=error, status=403)
    ip = client_ip(request)
    # Both counts are reserved before the code is checked (see reserve_attempt): parallel
    # guesses on one pending login get at most its attempts, and the user's regulation holds.
    slot = await reserve_attempt(request, ctx.user.username, ip)
    if slot.attempt_id is None:
        return _page(request, ctx, kinds, method, error=ban_message(slot, services.clock(), tr), status=429)
    pending_slot = None
    if ctx.pending is not None:
        pending_slot = await _reserve_pending_attempt(request, ctx.pending)
        if pending_slot.attempt_id is None:
            await services.store.withdraw_attempt(slot.attempt_id)
            return start_over(request, ctx)

    code = form_text(form, "code", limit=64)
    if method == TOTP:
        ok = await services.two_factor.verify_totp(ctx.user.id, code) is not None
    else:
        ok = await services.two_factor.verify_recovery(ctx.user.id, code)
    if not ok:
        return await _wrong_code(request, ctx, kinds, method, ip)

    await services.store.mark_attempt_succeeded(slot.attempt_id)
    if pending_slot is not None and pending_slot.attempt_id is not None:
        await services.store.withdraw_attempt(pending_slot.attempt_id)
    await services.store.set_last_method(ctx.user.id, method)
    if method == RECOVERY:
        left = await services.store.count_unused_recovery_codes(ctx.user.id)
        await record_own_event(request, ctx.user, audit.RECOVERY_CODE_USED, f"{left} recovery code(s) left")
    name = ctx.user.username
    await services.audit.record(audit.SECOND_FACTOR_SUCCEEDED, actor=name, target=name, ip=ip, detail=method)
    remember = ctx.pending.remember_me if ctx.pending else bool(ctx.session and ctx.session.remember_me)
    return await finish_login(
        request,
        ctx.user,
        remember=remember,
        old=ctx.session,
        target=after_login_target(request, ctx.rd),
        amr=amr_with(ctx, AMR_OTP),  # a recovery code is a one-time code too
    )


async def _reserve_pending_attempt(request: web.Request, pending: PendingLogin) -> AttemptSlot:
    """Reserve one of a pending login's wrong-code attempts; refused once they are used up."""
    services = services_of(request)
    limit = services.config.two_factor.pending_max_attempts

    def used_up(failures: Sequence[float]) -> float | None:
        return math.inf if len(failures) >= limit else None

    # No address on this counter row: the user's row already counts toward the IP's regulation.
    return await services.store.reserve_attempt(
        attempts_key(pending), "", at=services.clock(), since=0.0, ban_end=used_up
    )


async def record_wrong_code(request: web.Request, ctx: FactorContext, method: str, ip: str) -> int | None:
    """Count a failed second factor; return the attempts a pending login has left (None: step-up)."""
    services = services_of(request)
    now = services.clock()
    # Every failure counts toward the user's brute-force regulation, pending or step-up.
    await services.store.record_attempt(ctx.user.username, ip, False, now)
    await services.audit.record(
        audit.SECOND_FACTOR_FAILED, actor=None, target=ctx.user.username, ip=ip, detail=method
    )
    if ctx.pending is None:
        return None
    # No IP on this counter row: the user's row above already counts toward the IP's regulation.
    await services.store.record_attempt(attempts_key(ctx.pending), "", False, now)
    return await attempts_left(request, ctx.pending)


def start_over(
    request: web.Request, ctx: FactorContext, response: web.Response | None = None
) -> web.Response:
    """End a pending login that used up its attempts; the user types the password again."""
    login = _with_rd(f"{base_of(request)}/login", ctx.rd, retry="1")
    response = response or redirect(login)
    clear_pending(request, response)
    return response


def login_retry_url(request: web.Request, ctx: FactorContext) -> str:
    return _with_rd(f"{base_of(request)}/login", ctx.rd, retry="1")


async def _wrong_code(
    request: web.Request, ctx: FactorContext, kinds: tuple[str, ...], method: str, ip: str
) -> web.Response:
    # Both failure rows were reserved before the check: only the audit row is left to write.
    services = services_of(request)
    await services.audit.record(
        audit.SECOND_FACTOR_FAILED, actor=None, target=ctx.user.username, ip=ip, detail=method
    )
    left = None if ctx.pending is None else await attempts_left(request, ctx.pending)
    tr = translator(request)
    if left is None:
        return _page(request, ctx, kinds, method, error=tr.gettext("That code is not valid."), status=401)
    if left <= 0:
        return start_over(request, ctx)
    error = tr.ngettext(
        "That code is not valid. %(num)s attempt left.",
        "That code is not valid. %(num)s attempts left.",
        left,
    )
    return _page(request, ctx, kinds, method, error=error, status=401)
