"""Sign-in through external providers: the buttons' target, the callback, linking (docs/external-login.md).

POST /login/external/{id}             -> 303 to the provider (state cookie set)
GET  /login/external/{id}/callback    -> session, second factor, link confirmation, or a clear refusal
GET|POST /login/external/link         -> "this is your account: enter its password to link"
POST /settings/external/{id}/link     -> link another provider to the signed-in account
POST /settings/external/{link}/unlink -> remove a link
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from itsdangerous import BadSignature, URLSafeTimedSerializer

from gateway.accounts import audit
from gateway.accounts.webauthn import EXTERNAL_LINK
from gateway.config import ExternalProvider
from gateway.external_login import flow
from gateway.external_login.errors import ExternalLoginError, UnknownProvider
from gateway.external_login.identity import ExternalIdentity, provider_second_factor
from gateway.factors.passkeys import InvalidWebAuthn
from gateway.logs import log_event
from gateway.models import Level, User
from portal.flow import STEP_ENROL, STEP_VERIFY, second_factor_needed
from portal.flow import start as start_pending
from portal.i18n import N_
from portal.pending import set_pending
from portal.views.login import ban_message, reserve_attempt
from portal.views.passkeys import _ceremony, _json_body, json_error, json_next
from portal.views.second_factor import start_session
from portal.views.settings import settings_page, strong_session
from portal.web import (
    after_login_target,
    base_of,
    client_ip,
    cookie_domain_of,
    csrf_header_ok,
    csrf_ok,
    current_session,
    form_text,
    passkeys_here,
    read_form,
    redirect,
    render,
    safe_target,
    services_of,
    signed_in,
    signer,
    translator,
)

STATE_COOKIE = "authgate_ext"
STATE_SALT = "authgate.external-login.v1"
LINK_COOKIE = "authgate_ext_link"
LINK_SALT = "authgate.external-link.v1"
LINK_MAX_AGE = 600  # seconds to confirm a link with the account's password
FIRST_FACTOR = "external"  # PendingLogin.first_factor after an external sign-in

# The refusals gateway/external_login/ words (errors.py defaults, flow.py, service.py), marked here
# for the catalogues: refusal() translates each, then fills its %(label)s.
GATEWAY_MESSAGES = (
    N_("Signing in with that provider did not work. Please try again."),
    N_("There is no such sign-in provider here."),
    N_(
        "This sign-in could not be verified (it may have expired, or the link was changed). "
        "Please start again."
    ),
    N_("The provider did not sign you in. Please try again."),
    N_("The provider's answer could not be verified, so you were not signed in."),
    N_("The sign-in provider cannot be reached right now. Please try again in a moment."),
    N_("Your account at that provider is not allowed to sign in here."),
    N_("You cancelled signing in at the provider."),
    N_("The provider refused the sign-in request. If this keeps happening, tell the administrator."),
    N_(
        "An account with your e-mail address exists here, but %(label)s sign-in cannot be linked to it. "
        "Sign in with your password instead."
    ),
    N_(
        "No account here is linked to your %(label)s account. Sign in with your password, then link "
        "%(label)s in your security settings, or ask an administrator."
    ),
    N_("%(label)s did not share a verified e-mail address; a new account needs one."),
    N_("This provider cannot be linked here."),
    N_("That account at the provider is linked to another account here already."),
    N_("An account with your e-mail address was just created here. Please sign in again."),
    N_("No username is free for a new account; ask an administrator."),
)


def _signer(request: web.Request, salt: str) -> URLSafeTimedSerializer:
    return signer(request, salt)


def _set_cookie(
    request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: int
) -> None:
    # Lax, not Strict: the provider sends the browser back with a cross-site navigation.
    response.set_cookie(
        name,
        value,
        path=base_of(request) or "/",
        max_age=max_age,
        httponly=True,
        secure=services_of(request).config.session.secure,
        samesite="Lax",
    )


def _clear_cookie(request: web.Request, response: web.StreamResponse, name: str) -> None:
    response.del_cookie(
        name,
        path=base_of(request) or "/",
        secure=services_of(request).config.session.secure,
        httponly=True,
        samesite="Lax",
    )


def _load(request: web.Request, name: str, salt: str, max_age: float) -> Any:
    value = request.cookies.get(name)
    if not value:
        return None
    try:
        return _signer(request, salt).loads(value, max_age=int(max_age) + 1)
    except (BadSignature, UnicodeError):
        return None


def refusal(request: web.Request, error: ExternalLoginError, *, rd: str = "") -> web.Response:
    """A clear page for a refused external sign-in (no stack trace, nothing secret)."""
    query = urlencode({"rd": rd}) if rd else ""
    return render(
        request,
        "external_error.html",
        status=error.status,
        message=translator(request).gettext(error.message, **error.params),
        retry=f"{base_of(request)}/login" + (f"?{query}" if query else ""),
    )


async def _refuse(
    request: web.Request,
    error: ExternalLoginError,
    provider_id: str,
    *,
    rd: str = "",
    target: str | None = None,
) -> web.Response:
    await services_of(request).audit.record(
        audit.EXTERNAL_LOGIN_FAILED,
        actor=None,
        target=target,
        ip=client_ip(request),
        detail=f"{provider_id}: {error.reason}",
    )
    return refusal(request, error, rd=rd)


def _redirect_uri(request: web.Request, provider: ExternalProvider) -> str:
    return f"{cookie_domain_of(request).portal_url}/login/external/{provider.id}/callback"


async def _start(request: web.Request, provider_id: str, *, rd: str, link_user: int | None) -> web.Response:
    services = services_of(request)
    try:
        provider = services.external_login.provider(provider_id)
        url, login = await services.external_login.start(
            provider.id, redirect_uri=_redirect_uri(request, provider), rd=rd, link_user=link_user
        )
    except ExternalLoginError as exc:
        log_event("external_login_unavailable", logging.WARNING, provider=provider_id[:64], reason=exc.reason)
        return refusal(request, exc, rd=rd)
    response = redirect(url)
    ttl = int(services.config.external_login.login_ttl)
    _set_cookie(
        request, response, STATE_COOKIE, _signer(request, STATE_SALT).dumps(flow.to_payload(login)), ttl
    )
    return response


async def start_login(request: web.Request) -> web.Response:
    """Send the browser to the provider (a POST with CSRF, so no other site can start a sign-in)."""
    form = await read_form(request)
    rd = safe_target(request, form_text(form, "rd", limit=4096)) or ""
    if not csrf_ok(request, form):
        return refusal(request, ExternalLoginError("csrf", N_("The form expired. Please try again.")), rd=rd)
    return await _start(request, request.match_info["provider"], rd=rd, link_user=None)


async def callback(request: web.Request) -> web.Response:
    """The provider's answer: verify it, then sign in, confirm a link, create an account or refuse."""
    services = services_of(request)
    provider_id = request.match_info["provider"]
    login = flow.from_payload(
        _load(request, STATE_COOKIE, STATE_SALT, services.config.external_login.login_ttl)
    )
    rd = login.rd if login is not None else ""
    try:
        found = await services.external_login.finish(provider_id, request.query, login)
    except UnknownProvider as exc:
        response = refusal(request, exc)
        _clear_cookie(request, response, STATE_COOKIE)
        return response
    except ExternalLoginError as exc:
        response = await _refuse(request, exc, provider_id, rd=rd)
        _clear_cookie(request, response, STATE_COOKIE)
        return response
    if login is not None and login.link_user is not None:
        response = await _link_from_settings(request, found, login.link_user)
    else:
        response = await _sign_in(request, found, rd)
    _clear_cookie(request, response, STATE_COOKIE)  # a callback URL works once
    return response


async def _sign_in(request: web.Request, found: ExternalIdentity, rd: str) -> web.Response:
    services = services_of(request)
    external = services.external_login
    provider = external.provider(found.provider)
    try:
        account = await external.account(found)
        if account.refused:
            raise ExternalLoginError("no account for this identity", account.refused, label=provider.label)
        if account.user is not None and account.user.disabled:
            error = ExternalLoginError("account disabled", N_("This account is disabled."))
            error.status = 403
            return await _refuse(request, error, provider.id, rd=rd, target=account.user.username)
        if account.confirm and account.user is not None:
            response = redirect(f"{base_of(request)}/login/external/link")
            payload = {"i": _identity_payload(found), "u": account.user.id, "rd": rd}
            _set_cookie(
                request, response, LINK_COOKIE, _signer(request, LINK_SALT).dumps(payload), LINK_MAX_AGE
            )
            return response
        if account.create:
            user, link = await external.create_account(found)
            ip = client_ip(request)
            await services.audit.record(
                audit.EXTERNAL_ACCOUNT_CREATED,
                actor=user.username,
                target=user.username,
                ip=ip,
                detail=provider.id,
            )
            await services.audit.record(
                audit.EXTERNAL_ACCOUNT_LINKED,
                actor=user.username,
                target=user.username,
                ip=ip,
                detail=_linked(found),
            )
        elif account.user is not None and account.link is not None:
            user, link = account.user, account.link
        else:  # Account promises one of the shapes above
            raise ExternalLoginError("no account decision", account.refused or None)
    except ExternalLoginError as exc:
        return await _refuse(request, exc, provider.id, rd=rd)
    await external.touch(link)
    return await complete_sign_in(request, user, found, provider, rd)


def _linked(found: ExternalIdentity) -> str:
    return f"{found.provider}" + (f" ({found.email})" if found.email else "")


async def complete_sign_in(
    request: web.Request, user: User, found: ExternalIdentity, provider: ExternalProvider, rd: str
) -> web.Response:
    """Start the session an external sign-in earns: two factors when the provider is trusted for
    them and its amr says so; otherwise one, followed by our own second factor as for a password."""
    services = services_of(request)
    ip = client_ip(request)
    if user.disabled:
        error = ExternalLoginError("account disabled", N_("This account is disabled."))
        error.status = 403
        return await _refuse(request, error, provider.id, rd=rd, target=user.username)
    name = user.username
    old = await current_session(request)
    if provider_second_factor(found, provider):
        detail = f"{provider.id}, two factors at the provider (amr {' '.join(found.amr)})"
        await services.audit.record(
            audit.EXTERNAL_LOGIN_SUCCEEDED, actor=name, target=name, ip=ip, detail=detail
        )
        response = redirect(after_login_target(request, rd))
        # The provider's own methods (it vouched for two factors); "fed" says it was federated.
        amr = tuple(dict.fromkeys(("fed", *found.amr)))
        return await start_session(
            request, response, user, level=Level.TWO_FACTOR, remember=False, old=old, amr=amr
        )
    kinds = await services.two_factor.kinds(user.id)
    step = second_factor_needed(
        mode=services.config.two_factor.mode, policy_demands_two=False, has_factors=bool(kinds)
    )
    if step == STEP_VERIFY:
        pending = start_pending(
            user.id,
            rd=rd,
            remember_me=False,
            now=services.clock(),
            ttl=services.config.two_factor.pending_ttl,
            max_attempts=services.config.two_factor.pending_max_attempts,
            first_factor=FIRST_FACTOR,
        )
        detail = f"{provider.id}, second factor next"
        await services.audit.record(
            audit.EXTERNAL_LOGIN_SUCCEEDED, actor=name, target=name, ip=ip, detail=detail
        )
        # A page, not a redirect: the pending-login cookie is SameSite=Strict, and a browser does not
        # send it on a redirect that a cross-site navigation (the provider's) started.
        response = render(
            request, "external_continue.html", label=provider.label, next_url=f"{base_of(request)}/2fa"
        )
        if old is not None:
            await services.sessions.revoke(old.id_hash)
        set_pending(request, response, pending)
        return response
    await services.audit.record(
        audit.EXTERNAL_LOGIN_SUCCEEDED, actor=name, target=name, ip=ip, detail=provider.id
    )
    if step == STEP_ENROL:
        target = f"{base_of(request)}/settings/totp/new?{urlencode({'rd': rd})}"
    else:
        target = after_login_target(request, rd)
    return await start_session(
        request, redirect(target), user, level=Level.ONE_FACTOR, remember=False, old=old, amr=("fed",)
    )


# -- linking to an account that has the same verified e-mail ------------------------------------------


def _identity_payload(found: ExternalIdentity) -> dict[str, Any]:
    # Groups stay out: the allow-list was checked already, and they could make the cookie too large.
    return {**asdict(found), "groups": []}


def _identity_from(payload: Any) -> ExternalIdentity | None:
    if not isinstance(payload, dict):
        return None
    try:
        found = ExternalIdentity(**payload)
    except TypeError:
        return None
    text = ("provider", "subject", "username", "email", "display_name")
    if not all(isinstance(getattr(found, name), str) for name in text):
        return None
    if not isinstance(found.amr, list | tuple) or not all(isinstance(a, str) for a in found.amr):
        return None
    return replace(found, groups=(), amr=tuple(found.amr))


async def _pending_link(request: web.Request) -> tuple[ExternalIdentity, User, str] | None:
    services = services_of(request)
    data = _load(request, LINK_COOKIE, LINK_SALT, LINK_MAX_AGE)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("u"), int)
        or not isinstance(data.get("rd"), str)
    ):
        return None
    found = _identity_from(data.get("i"))
    if found is None or found.provider not in services.external_login.providers:
        return None
    user = await services.store.get_user(data["u"])
    if user is None or user.disabled:
        return None
    return found, user, data["rd"]


async def _link_form(
    request: web.Request, found: ExternalIdentity, user: User, *, error: str | None = None, status: int = 200
) -> web.Response:
    services = services_of(request)
    provider = services.external_login.provider(found.provider)
    keys = bool(await services.store.list_webauthn_credentials(user.id)) and passkeys_here(request)
    return render(
        request,
        "external_link.html",
        status=status,
        label=provider.label,
        email=user.email,
        error=error,
        keys=keys,
        password=user.password_login,
    )


def _link_expired(request: web.Request) -> web.Response:
    error = ExternalLoginError(
        "link confirmation expired", N_("This step expired. Please sign in with the provider again.")
    )
    response = refusal(request, error)
    _clear_cookie(request, response, LINK_COOKIE)
    return response


async def link_page(request: web.Request) -> web.Response:
    """Ask for the existing account's password before linking the provider to it."""
    pending = await _pending_link(request)
    if pending is None:
        return _link_expired(request)
    found, user, _rd = pending
    return await _link_form(request, found, user)


async def link_submit(request: web.Request) -> web.Response:
    """Check the account's password (counted by regulation like a login), then link and sign in."""
    services = services_of(request)
    pending = await _pending_link(request)
    if pending is None:
        return _link_expired(request)
    found, user, rd = pending
    form = await read_form(request)
    if not csrf_ok(request, form):
        return await _link_form(
            request,
            found,
            user,
            error=translator(request).gettext("The form expired. Please try again."),
            status=403,
        )
    password = form_text(form, "password")
    if not user.password_login:
        return await _link_form(
            request,
            found,
            user,
            error=translator(request).gettext("Use your security key or passkey."),
            status=400,
        )
    if not password:
        return await _link_form(
            request,
            found,
            user,
            error=translator(request).gettext("Enter the password of your account here."),
            status=400,
        )
    ip = client_ip(request)
    slot = await reserve_attempt(request, user.username, ip)
    if slot.attempt_id is None:
        await services.audit.record(audit.LOGIN_BANNED, actor=None, target=user.username, ip=ip)
        return await _link_form(
            request, found, user, error=ban_message(slot, services.clock(), translator(request)), status=429
        )
    found_login = await services.store.find_login(user.username)
    ok = await services.passwords.verify(found_login[1] if found_login else None, password)
    if not ok:
        detail = f"password to link {found.provider}"
        await services.audit.record(
            audit.LOGIN_FAILED, actor=None, target=user.username, ip=ip, detail=detail
        )
        return await _link_form(
            request,
            found,
            user,
            error=translator(request).gettext("That password is not correct."),
            status=401,
        )
    await services.store.mark_attempt_succeeded(slot.attempt_id)
    return await _link_and_sign_in(request, found, user, rd)


async def _link_and_sign_in(
    request: web.Request, found: ExternalIdentity, user: User, rd: str
) -> web.Response:
    """The account was confirmed as the person's own: link it, record that, and sign in."""
    services = services_of(request)
    provider = services.external_login.provider(found.provider)
    try:
        link = await services.external_login.link(user, found)
    except ExternalLoginError as exc:
        response = await _refuse(request, exc, found.provider, rd=rd, target=user.username)
        _clear_cookie(request, response, LINK_COOKIE)
        return response
    await services.audit.record(
        audit.EXTERNAL_ACCOUNT_LINKED,
        actor=user.username,
        target=user.username,
        ip=client_ip(request),
        detail=_linked(found),
    )
    await services.external_login.touch(link)
    response = await complete_sign_in(request, user, found, provider, rd)
    _clear_cookie(request, response, LINK_COOKIE)
    return response


async def link_webauthn_options(request: web.Request) -> web.Response:
    """Start a passkey assertion for the account being linked (its own keys only)."""
    if not csrf_header_ok(request):
        return json_error(translator(request).gettext("The page expired. Reload it and try again."), 403)
    pending = await _pending_link(request)
    if pending is None:
        return json_error(
            translator(request).gettext("This step expired. Please sign in with the provider again."), 401
        )
    try:
        ceremony = await services_of(request).webauthn.begin_authentication(pending[1], EXTERNAL_LINK)
    except InvalidWebAuthn as exc:
        return json_error(str(exc))
    return _ceremony(ceremony.challenge_id, ceremony.options_json)


async def link_webauthn_finish(request: web.Request) -> web.Response:
    """Confirm the account with one of its passkeys, then link and sign in (JSON for webauthn.js)."""
    if not csrf_header_ok(request):
        return json_error(translator(request).gettext("The page expired. Reload it and try again."), 403)
    services = services_of(request)
    pending = await _pending_link(request)
    if pending is None:
        return json_error(
            translator(request).gettext("This step expired. Please sign in with the provider again."), 401
        )
    found, user, rd = pending
    body = await _json_body(request)
    ip = client_ip(request)
    try:
        assertion = await services.webauthn.finish_authentication(
            body.get("challenge_id"), body.get("credential"), EXTERNAL_LINK
        )
        if assertion.user.id != user.id:
            raise InvalidWebAuthn("this security key belongs to another account")
    except InvalidWebAuthn as exc:
        await services.store.record_attempt(user.username, ip, False, services.clock())
        detail = f"passkey to link {found.provider}"
        await services.audit.record(
            audit.LOGIN_FAILED, actor=None, target=user.username, ip=ip, detail=detail
        )
        return json_error(
            translator(request).gettext("The security key was not accepted: %(reason)s", reason=str(exc)), 401
        )
    done = await _link_and_sign_in(request, found, user, rd)
    # fetch() does not follow the page's redirect: hand webauthn.js the next URL and the cookies.
    answer = json_next(done.headers.get("Location") or f"{base_of(request)}/2fa")
    for cookie in done.cookies.values():
        answer.cookies[cookie.key] = cookie
    return answer


# -- the settings page: link another provider, remove a link ------------------------------------------


async def _link_from_settings(request: web.Request, found: ExternalIdentity, user_id: int) -> web.Response:
    services = services_of(request)
    current = await signed_in(request)
    if current is None or current[1].id != user_id:
        error = ExternalLoginError(
            "settings link without the same signed-in account", N_("Please sign in again.")
        )
        return await _refuse(request, error, found.provider)
    user = current[1]
    try:
        await services.external_login.link(user, found)
    except ExternalLoginError as exc:
        return await _refuse(request, exc, found.provider, target=user.username)
    await services.audit.record(
        audit.EXTERNAL_ACCOUNT_LINKED,
        actor=user.username,
        target=user.username,
        ip=client_ip(request),
        detail=_linked(found),
    )
    return redirect(f"{base_of(request)}/settings?done=linked")


async def settings_link(request: web.Request) -> web.Response:
    """Start linking a provider to the signed-in account (a strong session and CSRF, as for factors)."""
    found = await strong_session(request)
    if isinstance(found, web.Response):
        return found
    _session, user = found
    form = await read_form(request)
    if not csrf_ok(request, form):
        return await settings_page(
            request, error=translator(request).gettext("The form expired. Please try again."), status=403
        )
    return await _start(request, request.match_info["provider"], rd="", link_user=user.id)


async def settings_unlink(request: web.Request) -> web.Response:
    """Remove one of the account's links, unless it is the only way left to sign in."""
    found = await strong_session(request)
    if isinstance(found, web.Response):
        return found
    _session, user = found
    services = services_of(request)
    form = await read_form(request)
    if not csrf_ok(request, form):
        return await settings_page(
            request, error=translator(request).gettext("The form expired. Please try again."), status=403
        )
    try:
        link_id = int(request.match_info["link_id"])
    except ValueError:
        return await settings_page(
            request, error=translator(request).gettext("No such linked account."), status=404
        )
    links = await services.store.list_external_links(user.id)
    login = await services.store.find_login(user.username)
    has_password = bool(login and login[1]) and user.password_login
    has_passkey = bool(await services.store.list_webauthn_credentials(user.id))
    if len(links) == 1 and links[0].id == link_id and not (has_password or has_passkey):
        return await settings_page(
            request,
            error=translator(request).gettext(
                "This is the only way into your account: add a passkey or a password before removing it."
            ),
            status=409,
        )
    removed = await services.store.delete_external_link(user.id, link_id)
    if removed is None:
        return await settings_page(
            request, error=translator(request).gettext("No such linked account."), status=404
        )
    detail = removed.provider + (f" ({removed.email})" if removed.email else "")
    await services.audit.record(
        audit.EXTERNAL_ACCOUNT_UNLINKED,
        actor=user.username,
        target=user.username,
        ip=client_ip(request),
        detail=detail,
    )
    return redirect(f"{base_of(request)}/settings?done=unlinked")
