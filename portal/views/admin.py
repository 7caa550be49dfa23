"""The admin console, for members of the admin group: users, their factors, sessions, tokens; the audit log.

Every route first checks admin membership (403 for anyone else, before anything else is
revealed or asked). Every POST then checks CSRF, asks for a recent factor check
(config.admin.reauth_after) and, when it changes something, writes exactly one audit row
naming the admin (actor), the account (target) and the client address. Pages show names,
dates and counts only: never a TOTP secret, a token, a token hash or a recovery code.
"""

from __future__ import annotations

import calendar
import logging
import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web

from gateway.accounts import audit, useragent
from gateway.accounts.notify import NotificationFailed
from gateway.accounts.validation import parse_groups
from gateway.errors import Conflict
from gateway.logs import log_event
from gateway.models import AppPassword, Level, SessionRecord, User
from gateway.sessions.codec import CachedSession
from portal.events import device_label
from portal.fields import (
    display_name_problem,
    email_problem,
    groups_problem,
    new_password_problem,
    username_problem,
)
from portal.i18n import N_, Translator
from portal.reauth import require_recent
from portal.views.password_reset import MAX_PASSWORD_FIELD, issue_link, link_mail
from portal.web import (
    base_of,
    client_ip,
    csrf_ok,
    current_session,
    form_text,
    read_form,
    redirect,
    render,
    services_of,
    translator,
)

SEARCH_LIMIT: Final = 200
AUDIT_PAGE: Final = 50
MAX_AUDIT_PAGE: Final = 10_000
SESSION_REF_LENGTH: Final = 16  # hex characters of the session id hash: enough to pick one, never the id
RESERVED_USERNAMES: Final = frozenset({"new"})  # /admin/users/new is the create form
_SESSION_REF = re.compile(r"[0-9a-f]{16}")
_TOKEN_PK = re.compile(r"[1-9][0-9]{0,17}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_USERNAME_IN_URL = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
AUDIT_EVENTS: Final = tuple(
    sorted(
        value
        for name, value in vars(audit).items()
        if name.isupper() and isinstance(value, str) and name != "CLI_ACTOR"
    )
)

NOTICES: Final = {
    "created": N_("User created."),
    "created_mail_failed": N_("User created, but the set-password e-mail could not be sent."),
    "saved": N_("Changes saved."),
    "unchanged": N_("Nothing to change."),
    "disabled": N_("Account disabled; its sessions were ended."),
    "enabled": N_("Account enabled."),
    "reset_sent": N_("Password reset link sent."),
    "factors_reset": N_("Second factors removed."),
    "session_revoked": N_("Session ended."),
    "sessions_revoked": N_("Sessions ended."),
    "token_revoked": N_("App password revoked."),
    "tokens_revoked": N_("App passwords revoked."),
    "external_unlinked": N_("Linked sign-in provider removed."),
    "deleted": N_("User deleted."),
}


@dataclass(frozen=True, slots=True)
class UserRow:
    """A line of the user list: the account and counts, never secrets."""

    user: User
    totp_devices: int
    webauthn_credentials: int
    recovery_left: int
    sessions: int


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A user's session as an admin sees it; `ref` names it in forms (a prefix of the id hash)."""

    ref: str
    device: str
    ip: str
    created_at: float
    last_active: float
    level: str
    current: bool


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A user's app password as an admin sees it: no token, no hash, no lookup id."""

    id: int
    name: str
    domains: tuple[str, ...]
    created_at: float
    expires_at: float | None
    expired: bool
    last_used_at: float | None
    last_used_ip: str | None


# -- guards ---------------------------------------------------------------------


async def _admin_session(request: web.Request) -> tuple[CachedSession, User]:
    """Return the admin's session and account; login redirect when anonymous, 403 for non-admins."""
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
    return session, user


async def _admin(request: web.Request) -> User:
    """Return the signed-in admin, or raise 403 (never reveal more to non-admins)."""
    return (await _admin_session(request))[1]


async def _target(request: web.Request) -> User:
    """Return the account named in the URL, or 404 (also for names that cannot exist)."""
    username = request.match_info["username"]
    user = None
    if _USERNAME_IN_URL.fullmatch(username):
        user = await services_of(request).store.get_user_by_name(username)
    if user is None:
        raise web.HTTPNotFound(text="404 no such user\n")
    return user


def _user_path(request: web.Request, username: str) -> str:
    return f"{base_of(request)}/admin/users/{username}"


async def _fresh_form(request: web.Request, session: CachedSession, back: str) -> Any | web.Response:
    """Return the form of an admin action once CSRF and a recent factor check pass (else the answer).

    Call it after the admin check, so non-admins get 403 and never a trip to /reauth.
    """
    tr = translator(request)
    form = await read_form(request)
    if not csrf_ok(request, form):
        return render(
            request,
            "message.html",
            status=403,
            heading=tr.gettext("Form expired"),
            message=tr.gettext("Please try again."),
        )
    services = services_of(request)
    again = require_recent(request, session, services.config.admin.reauth_after, back=back)
    return again if again is not None else form


async def _record(request: web.Request, event: str, admin: User, target: str, detail: str = "") -> None:
    """Write the action's one audit row."""
    await services_of(request).audit.record(
        event, actor=admin.username, target=target, ip=client_ip(request), detail=detail
    )


def _forget_tokens(request: web.Request, user_id: int) -> None:
    """Drop the user's cached app passwords on this worker (others follow within the cache bound)."""
    services_of(request).app_passwords.evict_user(user_id)


# -- the user list ----------------------------------------------------------------


async def users_page(request: web.Request) -> web.Response:
    """List users (optionally those matching ?q=) with groups, status, 2FA and session counts."""
    await _admin(request)
    services = services_of(request)
    query = request.query.get("q", "").strip()[:100]
    users = (
        await services.store.search_users(query, limit=SEARCH_LIMIT)
        if query
        else await services.store.list_users()
    )
    overview = await services.store.user_overview(services.clock())
    rows = []
    for user in users:
        counts = overview.get(user.id)
        if counts is not None:
            rows.append(
                UserRow(
                    user,
                    counts.totp_devices,
                    counts.webauthn_credentials,
                    counts.recovery_codes_left,
                    counts.sessions,
                )
            )
    notice = NOTICES["factors_reset"] if request.query.get("reset") else None
    notice = NOTICES.get(request.query.get("done", "")) or notice
    shown = translator(request).gettext(notice) if notice else None
    return render(request, "admin_users.html", rows=rows, q=query, notice=shown)


# -- creating a user ----------------------------------------------------------------


def _new_user_form(
    request: web.Request,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    return render(
        request,
        "admin_user_new.html",
        status=status,
        values=values or {"setup": "password"},
        errors=errors or {},
    )


async def new_user_page(request: web.Request) -> web.Response:
    await _admin(request)
    return _new_user_form(request)


def _new_user_errors(values: dict[str, str], password: str, tr: Translator) -> dict[str, str]:
    """Return field name -> problem for the create form (empty when it is fine)."""
    groups = parse_groups(values["groups"])
    reserved = tr.gettext("The username %(value)s is reserved.", value=repr(values["username"]))
    problems = {
        "username": username_problem(values["username"], tr)
        or (reserved if values["username"] in RESERVED_USERNAMES else None),
        "email": email_problem(values["email"], tr),
        "display_name": display_name_problem(values["display_name"] or values["username"] or "-", tr),
        "groups": groups_problem(groups, tr),
        "setup": None
        if values["setup"] in ("password", "link")
        else tr.gettext("Choose how to set the password."),
        "password": new_password_problem(password, tr) if values["setup"] == "password" else None,
    }
    return {field: message for field, message in problems.items() if message}


async def new_user_submit(request: web.Request) -> web.Response:
    """Create a user with an initial password, or mail them a link to choose one."""
    session, admin = await _admin_session(request)
    form = await _fresh_form(request, session, f"{base_of(request)}/admin/users/new")
    if isinstance(form, web.Response):
        return form
    services = services_of(request)
    values = {
        "username": form_text(form, "username", limit=64).strip().lower(),
        "email": form_text(form, "email", limit=254).strip(),
        "display_name": form_text(form, "display_name", limit=128).strip(),
        "groups": form_text(form, "groups", limit=2048),
        "setup": form_text(form, "setup", limit=16),
    }
    password = form_text(form, "password", limit=MAX_PASSWORD_FIELD)
    errors = _new_user_errors(values, password, translator(request))
    if errors:
        return _new_user_form(request, values=values, errors=errors, status=400)
    link = values["setup"] == "link"
    password_hash = None if link else await services.passwords.hash(password)
    groups = parse_groups(values["groups"])
    try:
        user = await services.store.create_user(
            values["username"],
            values["email"],
            values["display_name"] or values["username"],
            groups,
            password_hash,
        )
    except Conflict as exc:
        field = "email" if "e-mail" in str(exc) else "username"
        return _new_user_form(request, values=values, errors={field: str(exc)}, status=409)
    done, how = "created", "initial password set"
    if link:
        sent = await _mail_link(request, user, admin, new_account=True)
        done, how = (
            ("created", "set-password link sent") if sent else ("created_mail_failed", "link not sent")
        )
    await _record(
        request, audit.ADMIN_USER_CREATED, admin, user.username, f"groups: {','.join(groups) or '-'}; {how}"
    )
    return redirect(f"{_user_path(request, user.username)}?done={done}")


async def _mail_link(request: web.Request, user: User, admin: User, *, new_account: bool) -> bool:
    """Mail the user a single-use password link; False (and a log line) when it could not be sent."""
    services = services_of(request)
    link, minutes = await issue_link(request, user, admin=admin.username)
    tr = translator(request)
    subject, body = link_mail(
        services.config.portal.title, user, link, minutes, new_account=new_account, tr=tr
    )
    try:
        await services.notifier.send(to=user.email, subject=subject, body=body)
    except NotificationFailed as exc:
        log_event("password_link_mail_failed", logging.ERROR, user=user.username, reason=exc.reason)
        return False
    return True


# -- one user -----------------------------------------------------------------------------


def _session_rows(records: list[SessionRecord], current: str, now: float, tr: Translator) -> list[SessionRow]:
    return [
        SessionRow(
            ref=r.id_hash[:SESSION_REF_LENGTH],
            device=device_label(r.user_agent, tr),
            ip=r.ip,
            created_at=r.created_at,
            last_active=r.last_active,
            level=tr.gettext("two factors") if r.level >= Level.TWO_FACTOR else tr.gettext("password"),
            current=r.id_hash == current,
        )
        for r in records
        if r.expires_at > now
    ]


def _token_rows(tokens: list[AppPassword], now: float) -> list[TokenRow]:
    return [
        TokenRow(
            id=t.id,
            name=t.name,
            domains=t.domains,
            created_at=t.created_at,
            expires_at=t.expires_at,
            expired=t.expires_at is not None and t.expires_at <= now,
            last_used_at=t.last_used_at,
            last_used_ip=t.last_used_ip,
        )
        for t in tokens
    ]


async def _user_page(
    request: web.Request,
    session: CachedSession,
    admin: User,
    target: User,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    services = services_of(request)
    store = services.store
    now = services.clock()
    tr = translator(request)
    done = request.query.get("done", "")
    return render(
        request,
        "admin_user.html",
        status=status,
        target=target,
        is_self=target.id == admin.id,
        values=values
        or {"email": target.email, "display_name": target.display_name, "groups": ", ".join(target.groups)},
        errors=errors or {},
        error=error,
        notice=tr.gettext(NOTICES[done]) if status == 200 and done in NOTICES else None,
        totp_devices=await store.list_totp_devices(target.id),
        keys=await store.list_webauthn_credentials(target.id),
        recovery_left=await store.count_unused_recovery_codes(target.id),
        sessions=_session_rows(await store.list_user_sessions(target.id), session.id_hash, now, tr),
        tokens=_token_rows(await store.list_app_passwords(target.id), now),
        external_links=await store.list_external_links(target.id),
        external_providers=services.external_login.providers,
        link_minutes=max(1, round(services.config.account_recovery.link_ttl / 60)),
    )


async def user_page(request: web.Request) -> web.Response:
    """Show one user: details and edit form, factors, sessions, app passwords, dangerous actions."""
    session, admin = await _admin_session(request)
    return await _user_page(request, session, admin, await _target(request))


async def _user_action(request: web.Request) -> tuple[CachedSession, User, User, Any] | web.Response:
    """Guard an action on the user named in the URL; return (session, admin, target, form)."""
    session, admin = await _admin_session(request)  # 403 before anything, even for unknown names
    target = await _target(request)
    form = await _fresh_form(request, session, _user_path(request, target.username))
    if isinstance(form, web.Response):
        return form
    return session, admin, target, form


async def user_update(request: web.Request) -> web.Response:
    """Change a user's e-mail, display name and groups."""
    guarded = await _user_action(request)
    if isinstance(guarded, web.Response):
        return guarded
    session, admin, target, form = guarded
    services = services_of(request)
    values = {
        "email": form_text(form, "email", limit=254).strip(),
        "display_name": form_text(form, "display_name", limit=128).strip(),
        "groups": form_text(form, "groups", limit=2048),
    }
    groups = parse_groups(values["groups"])
    tr = translator(request)
    problems = {
        "email": email_problem(values["email"], tr),
        "display_name": display_name_problem(values["display_name"], tr),
        "groups": groups_problem(groups, tr),
    }
    if target.id == admin.id and services.config.portal.admin_group not in groups and not problems["groups"]:
        problems["groups"] = tr.gettext(
            "You cannot remove yourself from %(group)s.", group=repr(services.config.portal.admin_group)
        )
    errors = {field: message for field, message in problems.items() if message}
    if errors:
        return await _user_page(request, session, admin, target, values=values, errors=errors, status=400)
    email = values["email"] if values["email"] != target.email else None
    display_name = values["display_name"] if values["display_name"] != target.display_name else None
    new_groups = groups if tuple(groups) != target.groups else None
    changed = [
        name
        for name, value in (("email", email), ("display name", display_name), ("groups", new_groups))
        if value is not None
    ]
    if not changed:
        return redirect(f"{_user_path(request, target.username)}?done=unchanged")
    try:
        await services.store.update_user(target.id, email=email, display_name=display_name, groups=new_groups)
    except Conflict as exc:
        return await _user_page(
            request, session, admin, target, values=values, errors={"email": str(exc)}, status=409
        )
    # Cached sessions and tokens carry the old groups and identity headers: read them again now.
    services.sessions.forget_user(target.id)
    _forget_tokens(request, target.id)
    detail = f"changed: {', '.join(changed)}"
    if new_groups is not None:
        detail += f" (groups: {','.join(target.groups) or '-'} -> {','.join(groups) or '-'})"
    await _record(request, audit.ADMIN_USER_MODIFIED, admin, target.username, detail)
    return redirect(f"{_user_path(request, target.username)}?done=saved")


async def _refuse_self(request: web.Request, session: CachedSession, admin: User, target: User, what: str):
    tr = translator(request)
    refusals = {
        "disable": tr.gettext("You cannot disable your own account here."),
        "delete": tr.gettext("You cannot delete your own account here."),
    }
    return await _user_page(request, session, admin, target, error=refusals[what], status=400)


async def disable_user(request: web.Request) -> web.Response:
    """Disable an account and end its sessions."""
    guarded = await _user_action(request)
    if isinstance(guarded, web.Response):
        return guarded
    session, admin, target, _form = guarded
    if target.id == admin.id:
        return await _refuse_self(request, session, admin, target, "disable")
    services = services_of(request)
    ended = await services.sessions.revoke_user(target.id)
    await services.store.set_disabled(target.id, True)
    _forget_tokens(request, target.id)
    await _record(request, audit.ADMIN_USER_DISABLED, admin, target.username, f"{ended} session(s) ended")
    return redirect(f"{_user_path(request, target.username)}?done=disabled")


async def enable_user(request: web.Request) -> web.Response:
    guarded = await _user_action(request)
    if isinstance(guarded, web.Response):
        return guarded
    _session, admin, target, _form = guarded
    await services_of(request).store.set_disabled(target.id, False)
    await _record(request, audit.ADMIN_USER_ENABLED, admin, target.username)
    return redirect(f"{_user_path(request, target.username)}?done=enabled")


async def delete_user(request: web.Request) -> web.Response:
    """Delete an account for good, once its username is typed as confirmation."""
    guarded = await _user_action(request)
    if isinstance(guarded, web.Response):
        return guarded
    session, admin, target, form = guarded
    if target.id == admin.id:
        return await _refuse_self(request, session, admin, target, "delete")
    if form_text(form, "confirm", limit=64).strip().lower() != target.username:
        errors = {
            "confirm": translator(request).gettext("Type %(name)s to confirm.", name=repr(target.username))
        }
        return await _user_page(request, session, admin, target, errors=errors, status=400)
    services = services_of(request)
    ended = await services.sessions.revoke_user(target.id)
    _forget_tokens(request, target.id)
    await services.store.delete_user(target.id)
    await _record(
        request, audit.ADMIN_USER_DELETED, admin, target.username, f"{target.email}; {ended} session(s) ended"
    )
    return redirect(f"{base_of(request)}/admin/users?done=deleted")


async def send_password_reset(request: web.Request) -> web.Response:
    """Mail the user a single-use, short-lived link to choose a new password."""
    tr = translator(request)
    guarded = await _user_action(request)
    if isinstance(guarded, web.Response):
        return guarded
    session, admin, target, _form = guarded
    if target.disabled:
        return await _user_page(
            request,
            session,
            admin,
            target,
            error=tr.gettext("Enable the account first: the link would not work."),
            status=409,
        )
    if not await _mail_link(request, target, admin, new_account=False):
        return await _user_page(
            request,
            session,
            admin,
            target,
            error=tr.gettext("The e-mail could not be sent; see the server log."),
            status=502,
        )
    minutes = max(1, round(services_of(request).config.account_recovery.link_ttl / 60))
    await _record(
        request,
        audit.ADMIN_PASSWORD_RESET_SENT,
        admin,
        target.username,
        f"to {target.email}, works once for {minutes} min",
    )
    return redirect(f"{_user_path(request, target.username)}?done=reset_sent")


async def reset_second_factors(request: web.Request) -> web.Response:
    """Remove all of a user's second factors, so they can enrol again (lost phone)."""
    guarded = await _user_action(request)
    if isinstance(guarded, web.Response):
        return guarded
    _session, admin, target, _form = guarded
    await services_of(request).store.reset_second_factors(target.id)
    await _record(request, audit.ADMIN_SECOND_FACTORS_RESET, admin, target.username)
    return redirect(f"{base_of(request)}/admin/users?reset=1")


# -- a user's sessions and app passwords -----------------------------------------------------


async def revoke_session(request: web.Request) -> web.Response:
    """End one session of the user (named by a prefix of its id hash)."""
    tr = translator(request)
    guarded = await _user_action(request)
    if isinstance(guarded, web.Response):
        return guarded
    session, admin, target, _form = guarded
    services = services_of(request)
    ref = request.match_info["ref"]
    records = await services.store.list_user_sessions(target.id) if _SESSION_REF.fullmatch(ref) else []
    matches = [r for r in records if r.id_hash.startswith(ref)]
    if len(matches) != 1 or not await services.sessions.revoke(matches[0].id_hash):
        return await _user_page(
            request,
            session,
            admin,
            target,
            error=tr.gettext("That session has ended already."),
            status=404,
        )
    device = useragent.describe(matches[0].user_agent)
    await _record(
        request, audit.ADMIN_SESSION_REVOKED, admin, target.username, f"{device} from {matches[0].ip}"
    )
    return redirect(f"{_user_path(request, target.username)}?done=session_revoked")


async def revoke_all_sessions(request: web.Request) -> web.Response:
    """End every session of the user (but the admin's own, when it is their account)."""
    guarded = await _user_action(request)
    if isinstance(guarded, web.Response):
        return guarded
    session, admin, target, _form = guarded
    keep = session.id_hash if target.id == admin.id else None
    ended = await services_of(request).sessions.revoke_user(target.id, keep_id_hash=keep)
    await _record(request, audit.ADMIN_SESSIONS_REVOKED, admin, target.username, f"{ended} session(s)")
    return redirect(f"{_user_path(request, target.username)}?done=sessions_revoked")


async def revoke_token(request: web.Request) -> web.Response:
    """Revoke one app password of the user."""
    tr = translator(request)
    guarded = await _user_action(request)
    if isinstance(guarded, web.Response):
        return guarded
    session, admin, target, _form = guarded
    services = services_of(request)
    raw = request.match_info["token_id"]
    pk = int(raw) if _TOKEN_PK.fullmatch(raw) else 0
    tokens = {t.id: t for t in await services.store.list_app_passwords(target.id)}
    token = tokens.get(pk)
    if token is None or not await services.store.revoke_app_password(target.id, pk, services.clock()):
        return await _user_page(
            request,
            session,
            admin,
            target,
            error=tr.gettext("That app password is revoked already."),
            status=404,
        )
    services.app_passwords.evict(token.token_id)
    await _record(
        request, audit.ADMIN_TOKEN_REVOKED, admin, target.username, f"app password {pk} {token.name!r}"
    )
    return redirect(f"{_user_path(request, target.username)}?done=token_revoked")


async def remove_external_link(request: web.Request) -> web.Response:
    """Remove one of the user's linked sign-in providers (a compromised account at the provider)."""
    guarded = await _user_action(request)
    if isinstance(guarded, web.Response):
        return guarded
    session, admin, target, _form = guarded
    raw = request.match_info["link_id"]
    removed = await services_of(request).store.delete_external_link(
        target.id, int(raw) if raw.isdigit() else 0
    )
    if removed is None:
        return await _user_page(
            request, session, admin, target, error="That provider is not linked any more.", status=404
        )
    detail = removed.provider + (f" ({removed.email})" if removed.email else "")
    await _record(request, audit.ADMIN_EXTERNAL_UNLINKED, admin, target.username, detail)
    return redirect(f"{_user_path(request, target.username)}?done=external_unlinked")


async def revoke_all_tokens(request: web.Request) -> web.Response:
    """Revoke every app password of the user."""
    guarded = await _user_action(request)
    if isinstance(guarded, web.Response):
        return guarded
    _session, admin, target, _form = guarded
    services = services_of(request)
    count = await services.store.revoke_all_app_passwords(target.id, services.clock())
    _forget_tokens(request, target.id)
    await _record(request, audit.ADMIN_TOKENS_REVOKED, admin, target.username, f"{count} app password(s)")
    return redirect(f"{_user_path(request, target.username)}?done=tokens_revoked")


# -- the audit log ---------------------------------------------------------------------------


def _day_start(text: str) -> float | None:
    """Return the Unix time a YYYY-MM-DD day starts (UTC); None when empty; ValueError when malformed."""
    if not text:
        return None
    if not _DAY.fullmatch(text):
        raise ValueError(text)
    return float(calendar.timegm(date.fromisoformat(text).timetuple()))


async def audit_page(request: web.Request) -> web.Response:
    """Show the audit log, newest first, filtered by actor, target, event and day range, a page at a time."""
    tr = translator(request)
    await _admin(request)
    store = services_of(request).store
    query = request.query
    filters = {
        name: query.get(name, "").strip()[:254] for name in ("actor", "target", "event", "since", "until")
    }
    try:
        since = _day_start(filters["since"])
        until_day = _day_start(filters["until"])
        page = int(query.get("page", "1")[:6] or "1")
        if not 1 <= page <= MAX_AUDIT_PAGE:
            raise ValueError(page)
    except ValueError:
        return render(
            request,
            "admin_audit.html",
            status=400,
            rows=[],
            filters=filters,
            events=AUDIT_EVENTS,
            filters_qs="",
            page=1,
            more=False,
            error=tr.gettext("Dates must look like 2025-01-31, and the page must be a positive number."),
        )
    rows = await store.list_audit(
        actor=filters["actor"].lower() or None,
        target=filters["target"].lower() or None,
        event=filters["event"] or None,
        since=since,
        until=None if until_day is None else until_day + 86400,  # the whole "until" day
        limit=AUDIT_PAGE + 1,
        offset=(page - 1) * AUDIT_PAGE,
    )
    return render(
        request,
        "admin_audit.html",
        rows=rows[:AUDIT_PAGE],
        filters=filters,
        events=AUDIT_EVENTS,
        filters_qs="".join(f"{urlencode({k: v})}&" for k, v in filters.items() if v),
        page=page,
        more=len(rows) > AUDIT_PAGE,
        error=None,
    )
