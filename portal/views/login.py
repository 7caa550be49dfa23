"""Login, logout and the signed-in page."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from itsdangerous import BadSignature, URLSafeTimedSerializer

from gateway.accounts import audit
from gateway.accounts.regulation import banned_until
from gateway.errors import DirectoryLoginFailed, DirectoryUnavailable
from gateway.logs import log_event
from gateway.models import AMR_PASSWORD, AttemptSlot, Level, User
from portal.flow import STEP_ENROL, STEP_VERIFY, second_factor_needed
from portal.flow import start as start_pending
from portal.i18n import N_, Translator
from portal.pending import set_pending
from portal.web import (
    DIRECTORY_UNAVAILABLE,
    RETRY_AFTER,
    after_login_target,
    base_of,
    clear_session_cookie,
    client_ip,
    csrf_ok,
    current_session,
    fmt_time,
    form_expired,
    form_text,
    passkeys_here,
    read_form,
    redirect,
    render,
    safe_target,
    services_of,
    set_session_cookie,
    signer,
    translator,
)

GENERIC_FAILURE = N_("Incorrect username or password.")
PASSWORDLESS_FAILURE = N_("This account signs in with a security key or passkey only.")
LEVEL_NAMES = {1: N_("one factor"), 2: N_("two factors")}
LAST_LOGIN_COOKIE = "authgate_last"
LAST_LOGIN_SALT = "authgate.last-login.v1"
LAST_LOGIN_MAX_AGE = 365 * 86400


def _last_login_signer(request: web.Request) -> URLSafeTimedSerializer:
    return signer(request, LAST_LOGIN_SALT)


def remember_last_login(request: web.Request, response: web.StreamResponse, user: User) -> None:
    """Remember in this browser which account signed in last and whether it may use a password.

    The login page uses it to offer the password form (under an "or") only where the
    account allows it, without asking the server about accounts (no user enumeration).
    """
    value = _last_login_signer(request).dumps({"u": user.username, "pw": user.password_login})
    response.set_cookie(
        LAST_LOGIN_COOKIE,
        value,
        path=base_of(request) or "/",
        max_age=LAST_LOGIN_MAX_AGE,
        httponly=True,
        secure=services_of(request).config.session.secure,
        samesite="Lax",
    )


def last_login(request: web.Request) -> dict[str, Any] | None:
    value = request.cookies.get(LAST_LOGIN_COOKIE)
    if not value:
        return None
    try:
        data = _last_login_signer(request).loads(value, max_age=LAST_LOGIN_MAX_AGE)
    except (BadSignature, UnicodeError):
        return None
    return data if isinstance(data, dict) else None


def _login_page(
    request: web.Request,
    *,
    status: int = 200,
    error: str | None = None,
    notice: str | None = None,
    rd: str = "",
    login: str = "",
) -> web.Response:
    rd = rd or request.query.get("rd", "")
    services = services_of(request)
    remembered = last_login(request) or {}
    # A browser whose last account signs in with passkeys only gets no password form, unless
    # the password path was asked for explicitly (?password=1) or is being answered now.
    password_form = bool(remembered.get("pw", True)) or bool(request.query.get("password")) or bool(login)
    return render(
        request,
        "login.html",
        status=status,
        error=error,
        notice=notice,
        rd=rd if safe_target(request, rd) else "",
        login=login or str(remembered.get("u", "")),
        remember_me_allowed=services.config.session.remember_me > 0,
        passkeys=passkeys_here(request),
        password_form=password_form,
        remembered_passwordless=not remembered.get("pw", True),
        providers=list(services.external_login.providers.values()),
    )


async def login_page(request: web.Request) -> web.Response:
    """Show the login form, or move on when already signed in."""
    services = services_of(request)
    if services.directory is None and await services.store.count_users() == 0:
        rd = safe_target(request, request.query.get("rd"))
        return redirect(f"{base_of(request)}/setup" + (f"?rd={quote(rd, safe='')}" if rd else ""))
    if await current_session(request) is not None:
        return redirect(after_login_target(request, request.query.get("rd")))
    notice = None
    tr = translator(request)
    if request.query.get("signed_out"):
        notice = tr.gettext("You have been signed out.")
    elif request.query.get("expired"):
        notice = tr.gettext("Sign-in took too long. Please enter your password again.")
    elif request.query.get("retry"):
        notice = tr.gettext("Too many wrong codes. Please enter your password again.")
    return _login_page(request, notice=notice)


async def ban_remaining(request: web.Request, login: str, ip: str) -> float | None:
    services = services_of(request)
    cfg = services.config.regulation
    if cfg.max_retries == 0:
        return None
    now = services.clock()
    since = now - cfg.find_time - cfg.ban_time
    ends = [
        banned_until(await services.store.failures_since(username=login, since=since), now=now, cfg=cfg),
        banned_until(await services.store.failures_since(ip=ip, since=since), now=now, cfg=cfg),
    ]
    active = [end for end in ends if end is not None]
    if not active:
        return None
    # Every caller refuses the attempt when a ban is found: count it once, here.
    services.metrics.refused_by_regulation()
    return max(active) - now


async def reserve_attempt(request: web.Request, login: str, ip: str) -> AttemptSlot:
    """Record this attempt as a failure before checking it, unless the login or address is banned.

    Reserving first (one write transaction in the store) is what bounds a burst: 30 wrong
    passwords sent at once with max_retries 3 get 3 password checks, not 30, because each
    request sees the failures the ones before it reserved while their argon2 still runs.
    """
    services = services_of(request)
    cfg = services.config.regulation
    now = services.clock()

    def ban_end(failures: Sequence[float]) -> float | None:
        return banned_until(failures, now=now, cfg=cfg)

    slot = await services.store.reserve_attempt(
        login,
        ip,
        at=now,
        since=now - cfg.find_time - cfg.ban_time,
        ban_end=ban_end if cfg.max_retries > 0 else None,
    )
    if slot.attempt_id is None:  # every caller refuses a banned attempt: count it once, here
        services.metrics.refused_by_regulation()
    return slot


def ban_message(slot: AttemptSlot, now: float, tr: Translator) -> str:
    minutes = max(1, round(((slot.banned_until or now) - now) / 60))
    return tr.ngettext(
        "Too many failed sign-in attempts. Try again in about %(num)s minute.",
        "Too many failed sign-in attempts. Try again in about %(num)s minutes.",
        minutes,
    )


async def login_submit(request: web.Request) -> web.Response:
    """Check username (or e-mail) and password, then start a session."""
    services = services_of(request)
    form = await read_form(request)
    login = form_text(form, "username", limit=254).strip().lower()
    password = form_text(form, "password")
    rd = form_text(form, "rd", limit=4096)
    remember = form_text(form, "remember_me") == "on" and services.config.session.remember_me > 0
    tr = translator(request)
    if not csrf_ok(request, form):
        return _login_page(
            request, status=403, error=tr.gettext("The form expired. Please try again."), rd=rd
        )
    if not login or not password:
        error = tr.gettext("Enter your username and password.")
        return _login_page(request, status=400, error=error, rd=rd, login=login)
    ip = client_ip(request)
    found = await services.store.find_login(login)
    user, password_hash = found if found else (None, None)
    # Local accounts first; a name no local account has (or a directory user's) goes to the directory.
    directory = services.directory if user is None or user.from_directory else None
    # Count attempts per account, whether it was named by username or e-mail.
    account = user.username if user else login
    slot = await reserve_attempt(request, account, ip)
    if slot.attempt_id is None:
        await services.audit.record(audit.LOGIN_BANNED, actor=None, target=account, ip=ip)
        message = ban_message(slot, services.clock(), tr)
        return _login_page(request, status=429, error=message, rd=rd, login=login)

    # From here the attempt counts as a failure unless it is settled otherwise below.
    if directory is not None:
        try:
            user = await directory.login(login, password)
            ok = True
        except DirectoryUnavailable as exc:
            # Not the user's fault: not counted against them.
            await services.store.withdraw_attempt(slot.attempt_id)
            log_event("ldap_unavailable", logging.WARNING, login=account, client_ip=ip, reason=exc.reason)
            error = tr.gettext(DIRECTORY_UNAVAILABLE)
            response = _login_page(request, status=503, error=error, rd=rd, login=login)
            response.headers["Retry-After"] = RETRY_AFTER
            return response
        except DirectoryLoginFailed as exc:
            log_event(
                "login_failed",
                logging.WARNING,
                login=account,
                client_ip=ip,
                reason=f"directory: {exc.reason}",
            )
            ok = False
    else:
        # Unknown users are verified against a dummy hash, so both cases cost the same time.
        ok = await services.passwords.verify(password_hash, password)
    if not ok or user is None or user.disabled:
        await services.audit.record(audit.LOGIN_FAILED, actor=None, target=account, ip=ip)
        return _login_page(request, status=401, error=tr.gettext(GENERIC_FAILURE), rd=rd, login=login)

    if not user.password_login:
        # The password was right, so saying why leaks nothing the caller does not know.
        log_event(
            "login_failed", logging.WARNING, login=account, client_ip=ip, reason="password login disabled"
        )
        return _login_page(request, status=401, error=tr.gettext(PASSWORDLESS_FAILURE), rd=rd, login=login)
    if password_hash and services.passwords.needs_rehash(password_hash):
        await services.store.set_password_hash(user.id, await services.passwords.hash(password))
    kinds = await services.two_factor.kinds(user.id)
    step = second_factor_needed(
        mode=services.config.two_factor.mode, policy_demands_two=False, has_factors=bool(kinds)
    )
    if step == STEP_VERIFY:
        # No success is recorded yet: it would reset the failure count that caps code guessing.
        await services.store.withdraw_attempt(slot.attempt_id)
        pending = start_pending(
            user.id,
            rd=safe_target(request, rd) or "",
            remember_me=remember,
            now=services.clock(),
            ttl=services.config.two_factor.pending_ttl,
            max_attempts=services.config.two_factor.pending_max_attempts,
        )
        log_event("password_accepted", user=user.username, client_ip=ip, next="second_factor")
        services.metrics.first_factor_accepted("password")
        response = redirect(f"{base_of(request)}/2fa")
        set_pending(request, response, pending)
        remember_last_login(request, response, user)
        return response
    await services.store.mark_attempt_succeeded(slot.attempt_id)
    old = await current_session(request)
    if old is not None:
        # A new session id at every login: never keep one an attacker may have planted.
        await services.sessions.revoke(old.id_hash)
    cookie = await services.sessions.create(
        user,
        Level.ONE_FACTOR,
        remember_me=remember,
        ip=ip,
        user_agent=request.headers.get("User-Agent", ""),
        amr=(AMR_PASSWORD,),
    )
    detail = "password, remember me" if remember else "password"  # audit text: not translated
    await services.audit.record(
        audit.LOGIN_SUCCEEDED, actor=user.username, target=user.username, ip=ip, detail=detail
    )
    if step == STEP_ENROL:
        # Enrol on first use: this level-one session reaches no app until a factor is added.
        query = urlencode({"rd": safe_target(request, rd) or ""})
        response = redirect(f"{base_of(request)}/settings/totp/new?{query}")
    else:
        response = redirect(after_login_target(request, rd))
    set_session_cookie(request, response, cookie, remember=remember)
    remember_last_login(request, response, user)
    return response


async def logout(request: web.Request) -> web.Response:
    """End the session (its row is deleted, so a copied cookie stops working)."""
    services = services_of(request)
    form = await read_form(request)
    if not csrf_ok(request, form):
        return form_expired(request)
    session = await current_session(request)
    if session is not None:
        await services.sessions.revoke(session.id_hash)
        name = session.subject.username
        await services.audit.record(audit.LOGOUT, actor=name, target=name, ip=client_ip(request))
    response = redirect(f"{base_of(request)}/login?signed_out=1")
    clear_session_cookie(request, response)
    return response


async def home(request: web.Request) -> web.Response:
    """Show who is signed in and their session."""
    tr = translator(request)
    session = await current_session(request)
    if session is None:
        return redirect(f"{base_of(request)}/login")
    services = services_of(request)
    user = await services.store.get_user(session.user_id)
    if user is None:
        return redirect(f"{base_of(request)}/login")
    rec = session.record
    return render(
        request,
        "home.html",
        user=user,
        is_admin=services.config.portal.admin_group in user.groups,
        session=rec,
        level_name=tr.gettext(LEVEL_NAMES.get(int(rec.level), N_("none"))),
        fmt_time=fmt_time,
    )
