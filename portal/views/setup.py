"""First-run setup: while no user exists, the portal creates the first account (an admin)."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from gateway.accounts import audit
from gateway.errors import Conflict
from gateway.models import AMR_PASSWORD, Level
from portal.fields import display_name_problem, email_problem, new_password_problem, username_problem
from portal.web import (
    base_of,
    client_ip,
    csrf_ok,
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


async def setup_page(request: web.Request) -> web.Response:
    """Offer to create the first account, only while there is none (and no directory is configured)."""
    services = services_of(request)
    if services.directory is not None or await services.store.count_users() > 0:
        return redirect(f"{base_of(request)}/login")
    return render(request, "setup.html", errors=[], values={}, rd=_rd(request, request.query.get("rd")))


def _rd(request: web.Request, rd: str | None) -> str:
    return safe_target(request, rd) or ""


async def setup_submit(request: web.Request) -> web.Response:
    """Create the first account as an admin and sign it in; closed once any user exists."""
    tr = translator(request)
    services = services_of(request)
    form = await read_form(request)
    values = {
        name: form_text(form, name, limit=256).strip() for name in ("username", "email", "display_name")
    }
    values["username"] = values["username"].lower()
    password = form_text(form, "password")
    rd = _rd(request, form_text(form, "rd", limit=4096))
    if not csrf_ok(request, form):
        return render(
            request,
            "setup.html",
            status=403,
            errors=[tr.gettext("The form expired. Please try again.")],
            values=values,
            rd=rd,
        )
    # With a directory, users (and admins: portal.admin_group) come from it; a local admin is
    # made with `authgate users add`, so the first visitor cannot claim the gateway.
    if services.directory is not None or await services.store.count_users() > 0:
        return redirect(f"{base_of(request)}/login")
    problems = [
        username_problem(values["username"], tr),
        email_problem(values["email"], tr),
        display_name_problem(values["display_name"] or values["username"], tr),
        new_password_problem(password, tr),
        None if password == form_text(form, "password_confirm") else tr.gettext("The two passwords differ."),
    ]
    errors = [p for p in problems if p]
    if errors:
        return render(request, "setup.html", status=400, errors=errors, values=values, rd=rd)
    try:
        user = await services.store.create_first_user(
            values["username"],
            values["email"],
            values["display_name"] or values["username"],
            [services.config.portal.admin_group],
            await services.passwords.hash(password),
        )
    except Conflict as exc:
        return render(request, "setup.html", status=409, errors=[str(exc)], values=values, rd=rd)
    if user is None:  # someone else finished setup first
        return redirect(f"{base_of(request)}/login")
    ip = client_ip(request)
    # An audit row (not only a log line): the new owner sees it in "Recent security activity".
    await record_own_event(request, user, audit.ACCOUNT_CREATED, "first account, administrator")
    cookie = await services.sessions.create(
        user,
        Level.ONE_FACTOR,
        remember_me=False,
        ip=ip,
        user_agent=request.headers.get("User-Agent", ""),
        amr=(AMR_PASSWORD,),
    )
    # Offer a second factor right away; the welcome notice links on to where the user was going.
    query = urlencode({"done": "welcome", **({"next": rd} if rd else {})})
    response = redirect(f"{base_of(request)}/settings?{query}")
    set_session_cookie(request, response, cookie, remember=False)
    return response
