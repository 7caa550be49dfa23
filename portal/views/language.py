"""The language picker: remember the chosen language in a cookie and go back to the page."""

from __future__ import annotations

from aiohttp import web

from portal.i18n import LANGUAGES, return_path
from portal.web import (
    base_of,
    csrf_ok,
    form_expired,
    form_text,
    read_form,
    redirect,
    render,
    set_language_cookie,
    translator,
)


async def choose_language(request: web.Request) -> web.Response:
    """Set the language cookie to the picked language and return to the page it was picked on."""
    form = await read_form(request)
    tr = translator(request)
    if not csrf_ok(request, form):
        return form_expired(request)
    language = form_text(form, "language", limit=16)
    if language not in LANGUAGES:
        message = tr.gettext(
            "The language %(value)s is not offered. Choose one of: %(allowed)s.",
            value=repr(language),
            allowed=", ".join(f"{code} ({name})" for code, name in LANGUAGES.items()),
        )
        heading = tr.gettext("Unknown language")
        return render(request, "message.html", status=400, heading=heading, message=message)
    response = redirect(return_path(form_text(form, "next", limit=4096), base_of(request)))
    set_language_cookie(request, response, language)
    return response
