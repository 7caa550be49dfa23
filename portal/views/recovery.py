"""Account recovery by e-mail: a single-use, short-lived link to get back in after losing devices.

The request page answers the same whether or not the address exists, and the mail is
sent in the background so the response time does not tell either. Following the link
does not use it up (mail scanners open links); submitting the form does.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets

from aiohttp import web

from gateway.accounts import audit
from gateway.accounts.notify import NotificationFailed
from gateway.logs import log_event
from gateway.models import AMR_OTP, AMR_PASSWORD, User, merge_amr
from portal.i18n import N_, Translator
from portal.views.login import ban_remaining, reserve_attempt
from portal.views.second_factor import start_session
from portal.web import (
    account_password_ok,
    base_of,
    client_ip,
    cookie_domain_of,
    csrf_ok,
    current_session,
    form_text,
    read_form,
    record_own_event,
    redirect,
    render,
    services_of,
    translator,
)

SENT_MESSAGE = N_(
    "If an account uses that address, we have sent it a link. "
    "The link works once, for %(minutes)s minutes. Check your spam folder too."
)
_background: set[asyncio.Task[None]] = set()


def _token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def request_page(request: web.Request) -> web.Response:
    return render(request, "recover_request.html", sent=None, error=None)


async def request_submit(request: web.Request) -> web.Response:
    """Send a recovery link when the address belongs to an account; answer the same either way."""
    tr = translator(request)
    services = services_of(request)
    form = await read_form(request)
    if not csrf_ok(request, form):
        return render(
            request,
            "recover_request.html",
            status=403,
            sent=None,
            error=tr.gettext("The form expired. Try again."),
        )
    email = form_text(form, "email", limit=254).strip()
    ip = client_ip(request)
    minutes = max(1, round(services.config.account_recovery.link_ttl / 60))
    sent = tr.gettext(SENT_MESSAGE, minutes=minutes)
    if not email:
        return render(
            request,
            "recover_request.html",
            status=400,
            sent=None,
            error=tr.gettext("Enter your e-mail address."),
        )
    # Each request counts like a failed login for this address and this client, so the form
    # cannot flood a mailbox; both keys live apart from logins, so asking for links never
    # gets a client banned from signing in.
    key, client_key = f"recover:{email.lower()}", f"recover:{ip}"
    if await ban_remaining(request, key, client_key) is not None:
        log_event("recovery_refused_banned", logging.WARNING, client_ip=ip)
        return render(request, "recover_request.html", sent=sent, error=None)
    await services.store.record_attempt(key, client_key, False, services.clock())
    user = await services.store.find_user_by_email(email)
    if user is not None and not user.disabled:
        token = secrets.token_urlsafe(32)
        now = services.clock()
        await services.store.create_recovery_token(
            _token_key(token),
            user.id,
            created_at=now,
            expires_at=now + services.config.account_recovery.link_ttl,
        )
        link = f"{cookie_domain_of(request).portal_url}/recover/{token}"
        # The mail is in the language the request was made in: the person asking reads it.
        task = asyncio.create_task(_send_link(request.app, user, link, minutes, ip, tr))
        _background.add(task)
        task.add_done_callback(_background.discard)
    log_event("recovery_requested", client_ip=ip)
    return render(request, "recover_request.html", sent=sent, error=None)


async def _send_link(
    app: web.Application, user: User, link: str, minutes: int, ip: str, tr: Translator
) -> None:
    from gateway.services import SERVICES

    services = app[SERVICES]
    title = services.config.portal.title
    body = tr.gettext(
        "Hello %(name)s,\n\n"
        "someone (hopefully you) asked to recover the %(title)s account '%(username)s' from %(ip)s.\n\n"
        "To get back in, open this link within %(minutes)s minutes. It works once:\n\n%(link)s\n\n"
        "Signing in this way ends every session of your account. If this was not you, ignore this\n"
        "message: nothing changes unless the link is used.\n",
        name=user.display_name,
        title=title,
        username=user.username,
        ip=ip,
        minutes=minutes,
        link=link,
    )
    subject = tr.gettext("Recover your %(title)s account", title=title)
    try:
        await services.notifier.send(to=user.email, subject=subject, body=body)
    except NotificationFailed as exc:
        log_event("recovery_mail_failed", logging.ERROR, user=user.username, reason=exc.reason)
        return
    log_event("recovery_mail_sent", user=user.username)


async def _token_user(request: web.Request) -> tuple[str, User] | None:
    services = services_of(request)
    token = request.match_info["token"]
    if len(token) > 128:
        return None
    user_id = await services.store.peek_recovery_token(_token_key(token), now=services.clock())
    user = await services.store.get_user(user_id) if user_id is not None else None
    if user is None or user.disabled:
        return None
    return token, user


def _invalid(request: web.Request) -> web.Response:
    tr = translator(request)
    return render(
        request,
        "message.html",
        status=410,
        heading=tr.gettext("This link no longer works"),
        message=tr.gettext(
            "Recovery links work once and only for a short time. Ask for a new one on the sign-in page."
        ),
    )


def _already_used(request: web.Request) -> web.Response:
    # Seen by the loser when the same link is submitted twice at once (two tabs, a double click).
    tr = translator(request)
    return render(
        request,
        "message.html",
        status=410,
        heading=tr.gettext("This link was already used"),
        message=tr.gettext(
            "A recovery link works once, and this one has just been used. "
            "If that was not you, ask for a new link on the sign-in page."
        ),
    )


async def link_page(request: web.Request) -> web.Response:
    """Show what following the link will do; nothing is used up by just opening it."""
    found = await _token_user(request)
    if found is None:
        return _invalid(request)
    _token, user = found
    keys = await services_of(request).store.list_webauthn_credentials(user.id)
    return render(request, "recover_link.html", user=user, keys=len(keys), error=None)


async def link_submit(request: web.Request) -> web.Response:
    """Use the link: end every session, optionally revoke all devices, and sign in to add a new one."""
    tr = translator(request)
    services = services_of(request)
    found = await _token_user(request)
    if found is None:
        return _invalid(request)
    token, user = found
    form = await read_form(request)
    keys = len(await services.store.list_webauthn_credentials(user.id))
    if not csrf_ok(request, form):
        return render(
            request,
            "recover_link.html",
            status=403,
            user=user,
            keys=keys,
            error=tr.gettext("The form expired."),
        )
    ip = client_ip(request)
    if user.password_login:
        slot = await reserve_attempt(request, user.username, ip)
        if slot.attempt_id is None:
            return render(
                request,
                "recover_link.html",
                status=429,
                user=user,
                keys=keys,
                error=tr.gettext("Too many failed attempts. Try again later."),
            )
        ok = await account_password_ok(request, user, form_text(form, "password"))
        if ok:
            await services.store.mark_attempt_succeeded(slot.attempt_id)
        else:
            return render(
                request,
                "recover_link.html",
                status=401,
                user=user,
                keys=keys,
                error=tr.gettext("Your password is not correct."),
            )
    # The atomic use decides: two tabs submitting the same link cannot both get in.
    if await services.store.use_recovery_token(_token_key(token), now=services.clock()) != user.id:
        return _already_used(request)
    ended = await services.sessions.revoke_user(user.id)
    revoked = 0
    if form_text(form, "revoke_devices") == "on":
        revoked = await services.store.delete_all_webauthn_credentials(user.id)
    detail = f"{ended} session(s) ended" + (f", {revoked} device(s) revoked" if revoked else "")
    await record_own_event(request, user, audit.ACCOUNT_RECOVERED, detail)
    old = await current_session(request)
    response = redirect(f"{base_of(request)}/settings?done=recovered")
    # The e-mailed single-use link plays the part of a one-time code next to the password.
    amr = merge_amr((AMR_PASSWORD,), AMR_OTP)
    return await start_session(request, response, user, remember=False, old=old, amr=amr)
