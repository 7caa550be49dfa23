"""App passwords: named tokens for clients that cannot do 2FA (CalDAV, git, scripts).

Shown once, stored only as a keyed hash, optionally limited to some domains and
given an expiry. Creating one needs a recent factor check (app_passwords.reauth_after).
"""

from __future__ import annotations

from aiohttp import web

from gateway.accounts import audit
from gateway.errors import Conflict
from gateway.factors import app_passwords
from gateway.models import AppPassword, User
from gateway.sessions.codec import CachedSession
from portal.fields import token_name_problem
from portal.i18n import N_
from portal.reauth import require_recent
from portal.web import (
    base_of,
    client_ip,
    cookie_domain_of,
    csrf_ok,
    form_text,
    read_form,
    redirect,
    render,
    services_of,
    signed_in,
    translator,
)

EXPIRY_CHOICES = (("0", N_("Never")), ("30", N_("30 days")), ("90", N_("90 days")), ("365", N_("1 year")))
PAGE = "/settings/tokens"


async def _signed_in(request: web.Request) -> tuple[CachedSession, User] | web.Response:
    found = await signed_in(request)
    return redirect(f"{base_of(request)}/login") if found is None else found


def _default_expiry_days(request: web.Request) -> str:
    days = round(services_of(request).config.app_passwords.default_expiry / 86400)
    return str(days) if str(days) in dict(EXPIRY_CHOICES) else "0"


async def _page(
    request: web.Request,
    user: User,
    *,
    new_token: str | None = None,
    new_name: str = "",
    error: str | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    tokens: list[AppPassword] = await services_of(request).store.list_app_passwords(user.id)
    return render(
        request,
        "tokens.html",
        status=status,
        user=user,
        tokens=tokens,
        now=services_of(request).clock(),
        new_token=new_token,
        new_name=new_name,
        error=error,
        values=values or {"name": "", "domains": "", "expiry": _default_expiry_days(request)},
        expiry_choices=[(value, translator(request).gettext(label)) for value, label in EXPIRY_CHOICES],
        portal_host=cookie_domain_of(request).portal_url.split("/")[2],
        level_name=services_of(request).config.app_passwords.level.name.lower(),
        request_revoked=bool(request.query.get("revoked")),
    )


async def tokens_page(request: web.Request) -> web.Response:
    """List the user's app passwords and offer to create one."""
    found = await _signed_in(request)
    if isinstance(found, web.Response):
        return found
    return await _page(request, found[1])


async def create_token(request: web.Request) -> web.Response:
    """Create an app password and show it once."""
    tr = translator(request)
    found = await _signed_in(request)
    if isinstance(found, web.Response):
        return found
    session, user = found
    services = services_of(request)
    cfg = services.config.app_passwords
    guard = require_recent(request, session, cfg.reauth_after, back=f"{base_of(request)}{PAGE}")
    if guard is not None:
        return guard
    form = await read_form(request)
    values = {
        "name": form_text(form, "name", limit=256).strip(),
        "domains": form_text(form, "domains", limit=4096),
        "expiry": form_text(form, "expiry", limit=8),
    }
    if not csrf_ok(request, form):
        return await _page(
            request,
            user,
            error=tr.gettext("The form expired. Please try again."),
            values=values,
            status=403,
        )
    problem = token_name_problem(values["name"], tr)
    try:
        domains = app_passwords.parse_domains(values["domains"].replace("\n", ",").split(","))
    except ValueError as exc:
        problem = problem or tr.gettext("Domains: %(reason)s", reason=str(exc))
        domains = ()
    if values["expiry"] not in dict(EXPIRY_CHOICES):
        problem = problem or tr.gettext("Choose an expiry from the list.")
    if problem:
        return await _page(request, user, error=problem[0].upper() + problem[1:], values=values, status=400)
    now = services.clock()
    days = int(values["expiry"])
    token = app_passwords.generate_token()
    token_id = app_passwords.token_id_of(token)
    assert token_id is not None  # noqa: S101 - generate_token always yields a well-formed token
    try:
        await services.store.create_app_password(
            user.id,
            token_id=token_id,
            token_hash=app_passwords.hash_token(token, pepper=services.app_passwords.pepper),
            name=values["name"],
            domains=domains,
            level=app_passwords.creation_level(cfg.level, session.level),
            created_at=now,
            expires_at=now + days * 86400 if days else None,
            max_per_user=cfg.max_per_user,
        )
    except Conflict as exc:
        return await _page(request, user, error=str(exc)[0].upper() + str(exc)[1:], values=values, status=409)
    detail = values["name"] + (f" for {', '.join(domains)}" if domains else "")
    await services.audit.record(
        audit.TOKEN_CREATED, actor=user.username, target=user.username, ip=client_ip(request), detail=detail
    )
    return await _page(request, user, new_token=token, new_name=values["name"])


async def revoke_token(request: web.Request) -> web.Response:
    """Revoke one app password; forward-auth stops accepting it within session.cache_ttl."""
    tr = translator(request)
    found = await _signed_in(request)
    if isinstance(found, web.Response):
        return found
    _session, user = found
    services = services_of(request)
    form = await read_form(request)
    if not csrf_ok(request, form):
        return await _page(
            request,
            user,
            error=tr.gettext("The form expired. Please try again."),
            status=403,
        )
    try:
        token_pk = int(request.match_info["token_id"])
    except ValueError:
        return await _page(request, user, error=tr.gettext("No such app password."), status=404)
    tokens = {t.id: t for t in await services.store.list_app_passwords(user.id)}
    if token_pk not in tokens or not await services.store.revoke_app_password(
        user.id, token_pk, services.clock()
    ):
        return await _page(request, user, error=tr.gettext("No such app password."), status=404)
    services.app_passwords.evict(tokens[token_pk].token_id)
    await services.audit.record(
        audit.TOKEN_REVOKED,
        actor=user.username,
        target=user.username,
        ip=client_ip(request),
        detail=tokens[token_pk].name,
    )
    return redirect(f"{base_of(request)}{PAGE}?revoked=1")
