"""Security settings: TOTP devices (enrol, rename, delete), recovery codes, recent activity."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from itsdangerous import BadSignature, URLSafeTimedSerializer

from gateway.accounts import audit
from gateway.accounts.two_factor import FEW_RECOVERY_CODES
from gateway.errors import Conflict, DirectoryLoginFailed, NotFound, PasswordChangeRefused
from gateway.models import AMR_OTP, AMR_PASSWORD, Level, User, merge_amr
from gateway.sessions.codec import CachedSession
from gateway.store.contract import Storage
from portal.fields import device_name_problem, new_password_problem
from portal.i18n import N_, Translator
from portal.views.second_factor import finish_login
from portal.web import (
    account_password_ok,
    base_of,
    client_ip,
    cookie_domain_of,
    csrf_ok,
    current_session,
    form_text,
    passkeys_here,
    read_form,
    record_own_event,
    redirect,
    render,
    safe_target,
    services_of,
    signed_in,
    signer,
    translator,
)

ENROL_SALT = "authgate.totp-enrol.v1"
ENROL_MAX_AGE = 15 * 60  # seconds a displayed secret stays valid for confirmation
DEFAULT_DEVICE_NAME = N_("Authenticator app")  # offered in the reader's language
Renamer = Callable[[Storage, int, int, str], Awaitable[None]]


def _enrol_signer(request: web.Request) -> URLSafeTimedSerializer:
    return signer(request, ENROL_SALT)


async def _signed_in(request: web.Request) -> tuple[CachedSession, User] | web.Response:
    """Return the session and its user, or a redirect to the login page (and back)."""
    found = await signed_in(request)
    if found is None:
        query = urlencode({"rd": f"{_portal_origin(request)}{request.path_qs}"})
        return redirect(f"{base_of(request)}/login?{query}")
    return found


def _portal_origin(request: web.Request) -> str:
    """scheme://host of the portal as this browser reaches it (rd must be an absolute URL)."""
    return cookie_domain_of(request).portal_url.removesuffix(base_of(request))


async def strong_session(request: web.Request) -> tuple[CachedSession, User] | web.Response:
    """Like _signed_in, but a user who has a second factor must have used it in this session."""
    found = await _signed_in(request)
    if isinstance(found, web.Response):
        return found
    session, user = found
    services = services_of(request)
    if session.level < Level.TWO_FACTOR and await services.two_factor.has_factor(user.id):
        # Changing factors with only the password would let a password thief replace them.
        query = urlencode({"rd": f"{_portal_origin(request)}{base_of(request)}/settings"})
        return redirect(f"{base_of(request)}/2fa?{query}")
    return found


async def password_ok(request: web.Request, user: User, password: str) -> bool:
    services = services_of(request)
    ok = await account_password_ok(request, user, password)
    await services.store.record_attempt(user.username, client_ip(request), ok, services.clock())
    return ok


async def settings_page(
    request: web.Request, *, notice: str | None = None, error: str | None = None, status: int = 200
) -> web.Response:
    """Show the user's second factors and recent security activity."""
    found = await strong_session(request)
    if isinstance(found, web.Response):
        return found
    session, user = found
    services = services_of(request)
    remaining = await services.store.count_unused_recovery_codes(user.id)
    keys = await services.store.list_webauthn_credentials(user.id)
    named = request.query.get("named", "")
    return render(
        request,
        "settings.html",
        status=status,
        user=user,
        enabled=services.two_factor.enabled,
        mode=services.config.two_factor.mode,
        must_enrol=session.must_enrol,
        devices=await services.store.list_totp_devices(user.id),
        keys=keys,
        passkeys=passkeys_here(request),
        named=int(named) if named.isdigit() else None,
        password_login=user.password_login,
        directory_password=user.from_directory
        and services.directory is not None
        and services.directory.cfg.password_change,
        recovery_left=remaining,
        recovery_low=0 < remaining <= FEW_RECOVERY_CODES,
        events=await services.store.list_security_events(user.id, limit=20),
        external_links=await services.store.list_external_links(user.id),
        external_providers=services.external_login.providers,
        apps=await _connected_apps(request, user),
        notice=notice or _notice(request.query.get("done", ""), translator(request)),
        welcome=request.query.get("done") == "welcome",
        next_url=safe_target(request, request.query.get("next")) or f"{base_of(request)}/",
        error=error,
    )


async def _connected_apps(request: web.Request, user: User) -> list[tuple[str, str, str, float]]:
    """The OpenID Connect apps the user consented to: (client id, name, scopes, when)."""
    services = services_of(request)
    if services.oidc is None:
        return []
    apps = []
    for consent in await services.store.list_oidc_consents(user.id):
        client = services.oidc.cfg.client(consent.client_id)
        name = (
            client.name
            if client is not None
            else translator(request).gettext("%(client)s (no longer configured)", client=consent.client_id)
        )
        apps.append((consent.client_id, name, " ".join(consent.scopes), consent.granted_at))
    return apps


NOTICES = {
    "renamed": N_("Device renamed."),
    "directory_password": N_("Your directory password has been changed."),
    "deleted": N_("Device removed."),
    "added": N_("Authenticator app added."),
    "password_on": N_("Password sign-in is on again."),
    "password_off": N_("Password sign-in is off: sign in with a security key or passkey."),
    "recovered": N_("Welcome back. Every other session has ended: register a new device below."),
    "linked": N_("Account linked: you can now sign in with it."),
    "unlinked": N_("Linked account removed."),
    "app_revoked": N_("Access withdrawn: the app's tokens no longer work."),
}


def _notice(done: str, tr: Translator) -> str | None:
    return tr.gettext(NOTICES[done]) if done in NOTICES else None


async def totp_new_page(request: web.Request) -> web.Response:
    """Offer a fresh TOTP secret with its QR code; nothing is stored until confirmed."""
    found = await strong_session(request)
    if isinstance(found, web.Response):
        return found
    _session, user = found
    return _enrol_form(request, user, secret=None, rd=safe_target(request, request.query.get("rd")) or "")


def _enrol_form(
    request: web.Request,
    user: User,
    *,
    secret: str | None,
    rd: str,
    name: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    tr = translator(request)
    services = services_of(request)
    if not services.two_factor.enabled:
        return render(
            request,
            "message.html",
            status=403,
            heading=tr.gettext("Two-factor authentication is off"),
            message=tr.gettext("The administrator has disabled two-factor authentication."),
        )
    qr_title = translator(request).gettext("QR code for your authenticator app")
    enrolment = services.two_factor.new_enrolment(account=user.username, secret=secret, qr_title=qr_title)
    settings = services.config.two_factor.totp
    return render(
        request,
        "totp_new.html",
        status=status,
        enrolment=enrolment,
        secret_groups=" ".join(enrolment.secret[i : i + 4] for i in range(0, len(enrolment.secret), 4)),
        token=_enrol_signer(request).dumps({"u": user.id, "s": enrolment.secret}),
        digits=settings.digits,
        period=settings.period,
        algorithm=settings.algorithm,
        name=name if name is not None else translator(request).gettext(DEFAULT_DEVICE_NAME),
        rd=rd,
        error=error,
    )


async def totp_new_submit(request: web.Request) -> web.Response:
    """Store a TOTP device once the password and a current code confirm it."""
    tr = translator(request)
    found = await strong_session(request)
    if isinstance(found, web.Response):
        return found
    session, user = found
    services = services_of(request)
    form = await read_form(request)
    rd = safe_target(request, form_text(form, "rd", limit=4096)) or ""
    name = form_text(form, "name", limit=256).strip() or tr.gettext(DEFAULT_DEVICE_NAME)
    try:
        offered = _enrol_signer(request).loads(form_text(form, "token", limit=2048), max_age=ENROL_MAX_AGE)
    except BadSignature:
        offered = None
    if not isinstance(offered, dict) or offered.get("u") != user.id or not isinstance(offered.get("s"), str):
        return _enrol_form(
            request,
            user,
            secret=None,
            rd=rd,
            name=name,
            status=400,
            error=tr.gettext("This setup expired. Scan the new code below and try again."),
        )
    secret = offered["s"]
    if not csrf_ok(request, form):
        return _enrol_form(
            request,
            user,
            secret=secret,
            rd=rd,
            name=name,
            status=403,
            error=tr.gettext("The form expired. Please try again."),
        )
    name_problem = device_name_problem(name, tr)
    if name_problem:
        return _enrol_form(request, user, secret=secret, rd=rd, name=name, status=400, error=name_problem)
    if not await password_ok(request, user, form_text(form, "password")):
        return _enrol_form(
            request,
            user,
            secret=secret,
            rd=rd,
            name=name,
            status=401,
            error=tr.gettext("Your current password is not correct."),
        )
    step = services.two_factor.check_new_code(secret, form_text(form, "code", limit=64))
    if step is None:
        return _enrol_form(
            request,
            user,
            secret=secret,
            rd=rd,
            name=name,
            status=400,
            error=tr.gettext("That code is not valid. Check the time on your phone and try the next code."),
        )
    try:
        await services.two_factor.add_totp(user.id, name, secret, step)
    except Conflict:
        return _enrol_form(
            request,
            user,
            secret=secret,
            rd=rd,
            name=name,
            status=409,
            error=tr.gettext(
                "You already have a device named %(name)s; choose another name.", name=repr(name)
            ),
        )
    await record_own_event(request, user, audit.TOTP_ADDED, name)
    target = rd or f"{base_of(request)}/settings?done=added"
    first_codes = None
    if await services.store.count_unused_recovery_codes(user.id) == 0:
        first_codes = await services.two_factor.new_recovery_codes(user.id)
        await record_own_event(request, user, audit.RECOVERY_CODES_GENERATED)
    # Password and a current code were just checked: the session is now a two-factor one (new id).
    amr = merge_amr(session.record.amr or (AMR_PASSWORD,), AMR_OTP)
    response = await finish_login(
        request, user, remember=session.remember_me, old=session, target=target, amr=amr
    )
    if first_codes is None:
        return response
    page = render(request, "recovery_codes.html", codes=first_codes, next_url=target, first=True)
    for cookie in response.cookies.values():
        page.cookies[cookie.key] = cookie
    return page


async def settings_form(request: web.Request) -> tuple[User, Any] | web.Response:
    """Check a settings POST: a strong session and a valid CSRF token; return the user and form."""
    tr = translator(request)
    found = await strong_session(request)
    if isinstance(found, web.Response):
        return found
    form = await read_form(request)
    if not csrf_ok(request, form):
        return await settings_page(
            request, error=tr.gettext("The form expired. Please try again."), status=403
        )
    return found[1], form


async def rename_device(request: web.Request, rename: Renamer) -> web.Response:
    """Rename one of the user's devices (TOTP app or security key) with `rename`."""
    tr = translator(request)
    checked = await settings_form(request)
    if isinstance(checked, web.Response):
        return checked
    user, form = checked
    name = form_text(form, "name", limit=256).strip()
    problem = device_name_problem(name, tr)
    if problem:
        return await settings_page(request, error=problem, status=400)
    try:
        await rename(services_of(request).store, user.id, device_id(request), name)
    except NotFound:
        return await settings_page(request, error=tr.gettext("No such device."), status=404)
    except Conflict:
        error = tr.gettext("You already have a device named %(name)s.", name=repr(name))
        return await settings_page(request, error=error, status=409)
    return redirect(f"{base_of(request)}/settings?done=renamed")


async def totp_rename(request: web.Request) -> web.Response:
    return await rename_device(request, lambda store, *args: store.rename_totp_device(*args))


async def totp_delete(request: web.Request) -> web.Response:
    tr = translator(request)
    checked = await settings_form(request)
    if isinstance(checked, web.Response):
        return checked
    user, form = checked
    services = services_of(request)
    device = await services.store.get_totp_device(user.id, device_id(request))
    if device is None:
        return await settings_page(request, error=tr.gettext("No such device."), status=404)
    if not await password_ok(request, user, form_text(form, "password")):
        return await settings_page(
            request, error=tr.gettext("Your current password is not correct."), status=401
        )
    await services.store.delete_totp_device(user.id, device.id)
    await record_own_event(request, user, audit.TOTP_REMOVED, device.name)
    return redirect(f"{base_of(request)}/settings?done=deleted")


async def recovery_regenerate(request: web.Request) -> web.Response:
    """Replace the recovery codes (the old set stops working) and show the new ones once."""
    tr = translator(request)
    checked = await settings_form(request)
    if isinstance(checked, web.Response):
        return checked
    user, form = checked
    services = services_of(request)
    if not services.two_factor.enabled or not await services.two_factor.has_factor(user.id):
        return await settings_page(
            request,
            error=tr.gettext("Add an authenticator app or security key first."),
            status=400,
        )
    if not await password_ok(request, user, form_text(form, "password")):
        return await settings_page(
            request, error=tr.gettext("Your current password is not correct."), status=401
        )
    codes = await services.two_factor.new_recovery_codes(user.id)
    await record_own_event(request, user, audit.RECOVERY_CODES_GENERATED)
    return render(
        request, "recovery_codes.html", codes=codes, next_url=f"{base_of(request)}/settings", first=False
    )


def device_id(request: web.Request) -> int:
    try:
        return int(request.match_info["device_id"])
    except ValueError as exc:
        raise web.HTTPNotFound(text="404 no such device\n") from exc


async def directory_password_change(request: web.Request) -> web.Response:
    """Change a directory user's password in the directory (RFC 3062 Password Modify, as the user)."""
    checked = await settings_form(request)
    if isinstance(checked, web.Response):
        return checked
    user, form = checked
    tr = translator(request)
    services = services_of(request)
    if not user.from_directory or services.directory is None or not services.directory.cfg.password_change:
        return await settings_page(
            request, error=tr.gettext("Your password cannot be changed here."), status=409
        )
    current = form_text(form, "password")
    new = form_text(form, "new_password")
    problem = new_password_problem(new, tr) if new else tr.gettext("Enter a new password.")
    if problem is None and new != form_text(form, "confirm"):
        problem = tr.gettext("The two new passwords differ.")
    if problem is not None:
        return await settings_page(request, error=problem, status=400)
    try:
        await services.directory.change_password(user, current, new)
    except DirectoryLoginFailed:
        await services.store.record_attempt(user.username, client_ip(request), False, services.clock())
        return await settings_page(
            request, error=tr.gettext("Your current password is not correct."), status=401
        )
    except PasswordChangeRefused as exc:
        # The directory's reason stays in English after the translated sentence (docs/translations.md).
        error = tr.gettext("The directory did not change the password: %(reason)s", reason=exc.message)
        return await settings_page(request, error=error, status=409)
    session = await current_session(request)
    keep = session.id_hash if session is not None else None
    ended = await services.sessions.revoke_user(user.id, keep_id_hash=keep)
    await record_own_event(
        request, user, audit.PASSWORD_CHANGED, f"in the directory; {ended} other session(s) ended"
    )
    return redirect(f"{base_of(request)}/settings?done=directory_password")
