"""Password reset links an administrator sends: single-use, short-lived, mailed to the account.

Tokens live hashed in their own table under their own hash prefix, so a reset link never
works as an account recovery link (/recover/) and a recovery link never works here.
Opening the link uses nothing up (mail scanners follow links); choosing a password does,
ends every session of the account, and leaves its second factors as they are.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Final

from aiohttp import web

from gateway.accounts import audit
from gateway.models import User
from portal.fields import new_password_problem
from portal.i18n import Translator
from portal.web import (
    client_ip,
    cookie_domain_of,
    csrf_ok,
    form_text,
    read_form,
    render,
    services_of,
    translator,
)

RESET_PATH: Final = "/reset"
_PURPOSE: Final = b"authgate password reset link\x00"
_TOKEN_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]{20,128}")
MAX_PASSWORD_FIELD: Final = 4096


def reset_token_key(token: str) -> str:
    """Return what the store keeps for a reset token: a purpose-bound sha256, never the token."""
    return hashlib.sha256(_PURPOSE + token.encode()).hexdigest()


async def issue_link(request: web.Request, user: User, *, admin: str) -> tuple[str, int]:
    """Store a new reset token for `user` and return (link, minutes it works)."""
    services = services_of(request)
    ttl = services.config.account_recovery.link_ttl
    token = secrets.token_urlsafe(32)
    now = services.clock()
    await services.store.create_password_reset_token(
        reset_token_key(token), user.id, created_by=admin, created_at=now, expires_at=now + ttl
    )
    return f"{cookie_domain_of(request).portal_url}{RESET_PATH}/{token}", max(1, round(ttl / 60))


def link_mail(
    title: str, user: User, link: str, minutes: int, *, new_account: bool, tr: Translator
) -> tuple[str, str]:
    """Return (subject, body) of the mail carrying a reset or set-password link, in `tr`'s language."""
    names = {"title": title, "username": user.username}
    if new_account:
        subject = tr.gettext("Set your password for %(title)s", **names)
        intro = tr.gettext("an account '%(username)s' was created for you on %(title)s.", **names)
    else:
        subject = tr.gettext("Reset your password for %(title)s", **names)
        intro = tr.gettext(
            "an administrator of %(title)s sent you a link to choose a new password for '%(username)s'.",
            **names,
        )
    body = tr.gettext(
        "Hello %(name)s,\n\n%(intro)s\n\n"
        "Open this link within %(minutes)s minutes to choose your password. It works once:\n\n%(link)s\n\n"
        "Choosing a new password signs your account out everywhere. If you did not expect this\n"
        "message, ignore it: nothing changes unless the link is used.\n",
        name=user.display_name,
        intro=intro,
        minutes=minutes,
        link=link,
    )
    return subject, body


async def _token_user(request: web.Request) -> tuple[str, User] | None:
    services = services_of(request)
    token = request.match_info["token"]
    if not _TOKEN_SHAPE.fullmatch(token):
        return None
    user_id = await services.store.peek_password_reset_token(reset_token_key(token), now=services.clock())
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
            "Password links work once and only for a short time. Ask your administrator for a new one."
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
            "A password link works once, and this one has just been used to set a password. "
            "If that was not you, ask your administrator for a new link."
        ),
    )


def _form(request: web.Request, user: User, *, error: str | None = None, status: int = 200) -> web.Response:
    return render(request, "password_reset.html", status=status, user=user, error=error)


async def reset_page(request: web.Request) -> web.Response:
    """Show the new-password form; opening the link uses nothing up."""
    found = await _token_user(request)
    if found is None:
        return _invalid(request)
    return _form(request, found[1])


async def reset_submit(request: web.Request) -> web.Response:
    """Set the new password, use the link up and end every session of the account."""
    tr = translator(request)
    services = services_of(request)
    found = await _token_user(request)
    if found is None:
        return _invalid(request)
    token, user = found
    form = await read_form(request)
    if not csrf_ok(request, form):
        return _form(
            request,
            user,
            error=tr.gettext("The form expired. Please try again."),
            status=403,
        )
    password = form_text(form, "password", limit=MAX_PASSWORD_FIELD)
    problem = new_password_problem(password, tr) if password else tr.gettext("Enter a new password.")
    if problem is None and password != form_text(form, "confirm", limit=MAX_PASSWORD_FIELD):
        problem = tr.gettext("The two passwords differ.")
    if problem is not None:
        return _form(request, user, error=problem, status=400)
    password_hash = await services.passwords.hash(password)
    # One transaction uses the link up and sets the password: of two tabs submitting the same
    # link at once, the one whose use wins sets its password, the other changes nothing.
    used_by = await services.store.use_password_reset_token(
        reset_token_key(token), now=services.clock(), password_hash=password_hash
    )
    if used_by != user.id:
        return _already_used(request)
    ended = await services.sessions.revoke_user(user.id)
    await services.audit.record(
        audit.PASSWORD_CHANGED,
        actor=user.username,
        target=user.username,
        ip=client_ip(request),
        detail=f"with a reset link; {ended} session(s) ended",
    )
    return render(
        request,
        "message.html",
        heading=tr.gettext("Password changed"),
        message=tr.gettext("You can now sign in as %(name)s with your new password.", name=user.username),
    )
