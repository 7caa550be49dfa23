"""Shared helpers of the portal views: rendering, cookies, CSRF, who is asking."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from itsdangerous import URLSafeTimedSerializer
from jinja2.utils import htmlsafe_json_dumps
from markupsafe import Markup
from multidict import MultiDictProxy

from gateway.authz.domains import cookie_domain_attribute, match_cookie_domain
from gateway.authz.forwarded import client_address
from gateway.authz.redirects import safe_redirect_target
from gateway.config import Config, CookieDomain
from gateway.errors import StoreUnavailable
from gateway.factors.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from gateway.logs import log_event
from gateway.models import User
from gateway.services import SERVICES, Services
from gateway.sessions.codec import CachedSession
from portal.csrf import CsrfSigner, generate_csrf_secret, is_csrf_secret
from portal.events import event_label
from portal.i18n import LANGUAGES, N_, Translator, choose_language
from portal.i18n import translator as translator_for

CSRF_COOKIE = "authgate_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
LANGUAGE_COOKIE = "authgate_lang"
LANGUAGE_MAX_AGE = 365 * 86400

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    # Templates ship with the code: no stat() of every template file on every page.
    auto_reload=False,
    extensions=["jinja2.ext.i18n"],
)
# {% trans %} blocks are extracted and looked up with their whitespace collapsed, so the
# templates can wrap lines freely (babel.cfg extracts with trimmed = true to match).
TEMPLATES.policies["ext.i18n.trimmed"] = True


def _translator_in(context: jinja2.runtime.Context) -> Translator:
    found = context.get("translator")
    if not isinstance(found, Translator):
        # An imported macro without "with context" would silently speak English: refuse instead.
        raise RuntimeError("template rendered without a translator (import macros 'with context')")
    return found


@jinja2.pass_context
def _template_gettext(context: jinja2.runtime.Context, message: str) -> str:
    return _translator_in(context).catalogue.gettext(message)


@jinja2.pass_context
def _template_ngettext(context: jinja2.runtime.Context, singular: str, plural: str, num: int) -> str:
    return _translator_in(context).catalogue.ngettext(singular, plural, num)


@jinja2.pass_context
def _template_event_label(context: jinja2.runtime.Context, event: str) -> str:
    return event_label(event, _translator_in(context))


TEMPLATES.globals["event_label"] = _template_event_label


@functools.cache
def _template_callables(language: str) -> dict[str, Callable[..., str]]:
    """The gettext functions one render of a page uses, bound to its language (built once each).

    Passed in the render's context, they shadow the globals above, which only catch a macro
    imported without context. Same semantics as Jinja2's newstyle gettext (a trusted translation,
    escaped values, %(num)s for plurals) without its per-call context lookups (~8x faster pages).
    """
    catalogue = translator_for(language).catalogue

    def gettext(message: str, **variables: Any) -> str:
        return Markup(catalogue.gettext(message)) % variables  # noqa: S704 - our own catalogue; % escapes values

    def ngettext(singular: str, plural: str, num: int, **variables: Any) -> str:
        variables.setdefault("num", num)
        return Markup(catalogue.ngettext(singular, plural, num)) % variables  # noqa: S704 - as above

    return {"gettext": gettext, "ngettext": ngettext, "_": gettext}


# Newstyle: Jinja2 fills %(name)s after translating and escapes the values, as Translator does.
TEMPLATES.install_gettext_callables(  # type: ignore[attr-defined]
    _template_gettext, _template_ngettext, newstyle=True
)


def fmt_time(value: float) -> str:
    """Format a Unix time for people (UTC, to the minute)."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(value))


TEMPLATES.filters["fmt_time"] = fmt_time
# The new-password rules, stated on every form that sets a password before the user types one.
TEMPLATES.globals["password_min"] = MIN_PASSWORD_LENGTH
TEMPLATES.globals["password_max"] = MAX_PASSWORD_LENGTH


def compile_templates() -> list[str]:
    """Compile every portal template now; jinja2 keeps them, so no request pays for it.

    A worker calls this before it freezes its start-up objects out of the collector's sight:
    otherwise each worker's first login page compiles it (~6 ms on the event loop).
    """
    names = TEMPLATES.list_templates(extensions=["html"])
    for name in names:
        TEMPLATES.get_template(name)
    return names


# Portal pages are never framed, sniffed, cached or leak their URL (it may hold rd) as a referrer.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def portal_base_path(config: Config) -> str:
    """Return the path the portal is mounted at ("" for the root)."""
    return urlsplit(config.session.cookies[0].portal_url).path.rstrip("/")


def services_of(request: web.Request) -> Services:
    return request.app[SERVICES]


def language_of(request: web.Request) -> str:
    """Return the language this request is answered in (picker cookie, Accept-Language, English).

    Not cached on the request: parsing a bounded header costs microseconds, and aiohttp's
    typed request keys are newer than the aiohttp this project supports.
    """
    cookie, header = request.cookies.get(LANGUAGE_COOKIE), request.headers.get("Accept-Language")
    return choose_language(cookie, header)


def translator(request: web.Request) -> Translator:
    """Return the Translator for this request's language."""
    return translator_for(language_of(request))


def set_language_cookie(request: web.Request, response: web.StreamResponse, language: str) -> None:
    """Remember the picked language in this browser for a year (it is no secret, but JS needs none)."""
    response.set_cookie(
        LANGUAGE_COOKIE,
        language,
        path=base_of(request) or "/",
        max_age=LANGUAGE_MAX_AGE,
        httponly=True,
        secure=services_of(request).config.session.secure,
        samesite="Lax",
    )


def signer(request: web.Request, salt: str) -> URLSafeTimedSerializer:
    """A serializer for one token purpose (its own salt), signing with the newest key."""
    return _serializer(services_of(request).csrf_keys, salt)


@functools.lru_cache(maxsize=64)
def _serializer(keys: tuple[str, ...], salt: str) -> URLSafeTimedSerializer:
    # Built once per (keys, salt): a serializer holds no per-request state.
    # itsdangerous signs with the LAST key; csrf_keys lists the newest first.
    return URLSafeTimedSerializer(list(reversed(keys)), salt=salt)


async def signed_in(request: web.Request) -> tuple[CachedSession, User] | None:
    """Return the browser's live session and its user, or None."""
    session = await current_session(request)
    user = await services_of(request).store.get_user(session.user_id) if session else None
    return (session, user) if session is not None and user is not None else None


async def record_own_event(request: web.Request, user: User, event: str, detail: str = "") -> None:
    """Audit something a user did to their own account (shown to them, and logged)."""
    await services_of(request).audit.record(
        event, actor=user.username, target=user.username, ip=client_ip(request), detail=detail
    )


def base_of(request: web.Request) -> str:
    return portal_base_path(services_of(request).config)


def request_host(request: web.Request) -> str:
    """Return the host the browser used, lower case, without port."""
    host = request.host or ""
    if host.startswith("["):
        return host[1 : host.find("]")].lower()
    return host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()


def cookie_domain_of(request: web.Request) -> CookieDomain:
    """Return the cookie domain that covers this portal request (the first one otherwise)."""
    cookies = services_of(request).config.session.cookies
    return match_cookie_domain(request_host(request), cookies) or cookies[0]


def passkeys_here(request: web.Request) -> bool:
    """True when WebAuthn can run on the portal as this browser reaches it (RP ID and origin fit)."""
    services = services_of(request)
    parts = urlsplit(cookie_domain_of(request).portal_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    return services.two_factor.enabled and services.config.webauthn.allows_origin(origin)


def client_ip(request: web.Request) -> str:
    trusted = services_of(request).config.server.trusted_proxies
    return str(client_address(request.headers, request.remote, trusted))


def safe_target(request: web.Request, rd: str | None) -> str | None:
    """Return rd when it points under a configured cookie domain, else None."""
    config = services_of(request).config
    domains = [c.domain for c in config.session.cookies]
    return safe_redirect_target(rd, domains, allow_http=not config.session.secure)


def home_url(request: web.Request) -> str:
    return f"{portal_base_path(services_of(request).config)}/"


def after_login_target(request: web.Request, rd: str | None) -> str:
    """Where to send someone after login: rd if safe, the domain's default, or the portal."""
    target = safe_target(request, rd)
    if target:
        return target
    default = cookie_domain_of(request).default_redirect_url
    return default or home_url(request)


async def current_session(request: web.Request) -> CachedSession | None:
    return await services_of(request).sessions.resolve_header(request.headers.get("Cookie"))


def _csrf(request: web.Request) -> CsrfSigner:
    return _csrf_signer(services_of(request).csrf_keys)


@functools.lru_cache(maxsize=8)
def _csrf_signer(keys: tuple[str, ...]) -> CsrfSigner:
    return CsrfSigner(keys)


def render(request: web.Request, template: str, *, status: int = 200, **context: Any) -> web.Response:
    """Render a page with a CSRF token (and set the CSRF cookie when missing)."""
    services = services_of(request)
    cookie = request.cookies.get(CSRF_COOKIE)
    secret = cookie if cookie is not None and is_csrf_secret(cookie) else generate_csrf_secret()
    base = portal_base_path(services.config)
    tr = translator(request)
    html = TEMPLATES.get_template(template).render(
        title=services.config.portal.title,
        base=base,
        csrf_field=CSRF_FIELD,
        csrf_token=_csrf(request).token_for(secret),
        translator=tr,
        **_template_callables(tr.language),
        language=tr.language,
        languages=LANGUAGES,
        here=_here(request),
        picker=request.method == "GET",
        script_messages=_script_messages(tr.language),
        **context,
    )
    headers = {**SECURITY_HEADERS, "Content-Language": tr.language, "Vary": "Accept-Language, Cookie"}
    response = web.Response(status=status, text=html, content_type="text/html", headers=headers)
    if cookie != secret:
        response.set_cookie(
            CSRF_COOKIE,
            secret,
            path=base or "/",
            httponly=True,
            secure=services.config.session.secure,
            samesite="Strict",
        )
    return response


# What the portal's scripts (static/*.js) may show, translated into the page's language and
# handed over in base.html as JSON keyed by the English text.
SCRIPT_MESSAGES = (
    N_("Copied"),
    N_("Selected: press Ctrl+C"),
    N_("Copied."),
    N_("Copy failed: select the codes and copy them by hand."),
    N_("Downloaded."),
    N_("authgate recovery codes (%(host)s)"),
    N_("Each code works once."),
    N_("The server answered %(status)s"),
    N_("The request was cancelled or timed out."),
    N_("This device is already registered."),
    N_("Something went wrong."),
    N_("Follow your browser's prompt..."),
    N_("This browser cannot use security keys or passkeys."),
)


def _here(request: web.Request) -> str:
    """This page's path and query for the language picker to return to, without an unsafe rd/next."""
    query = [
        (key, value)
        for key, value in request.query.items()
        if key not in ("rd", "next") or safe_target(request, value)
    ]
    return f"{request.path}?{urlencode(query)}" if query else request.path


@functools.cache
def _script_messages(language: str) -> Markup:
    """The scripts' messages in `language` as HTML-safe JSON, encoded once per language."""
    catalogue = translator_for(language).catalogue
    return htmlsafe_json_dumps({message: catalogue.gettext(message) for message in SCRIPT_MESSAGES})


RETRY_AFTER = "5"  # seconds a client is asked to wait when the database cannot take a request


def unavailable(request: web.Request, exc: StoreUnavailable) -> web.Response:
    """Answer a request the store could not serve: one log line, a 503 page (or JSON), no traceback."""
    log_event("store_unavailable", logging.ERROR, method=request.method, path=request.path, reason=exc.reason)
    headers = {**SECURITY_HEADERS, "Retry-After": RETRY_AFTER}
    tr = translator(request)
    message = tr.gettext(
        "The sign-in service cannot reach its database right now. Please try again in a moment."
    )
    if "application/json" in request.headers.get("Accept", "") or request.content_type == "application/json":
        return web.json_response({"error": message}, status=503, headers=headers)
    heading = tr.gettext("Temporarily unavailable")
    response = render(request, "message.html", status=503, heading=heading, message=message)
    response.headers["Retry-After"] = RETRY_AFTER
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def store_guard(handler: Handler) -> Handler:
    """Wrap a portal handler so a busy, full or failing database gives a clean 503, never a 500."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except StoreUnavailable as exc:
            return unavailable(request, exc)

    return guarded


def form_expired(request: web.Request) -> web.Response:
    """The 403 page for a form whose CSRF token did not match (expired or forged)."""
    tr = translator(request)
    heading, message = tr.gettext("Form expired"), tr.gettext("Please try again.")
    return render(request, "message.html", status=403, heading=heading, message=message)


def redirect(location: str) -> web.Response:
    """303 See Other: after a POST the browser follows with GET."""
    return web.Response(status=303, headers={"Location": location, **SECURITY_HEADERS})


async def read_form(request: web.Request) -> MultiDictProxy[Any]:
    """Return the submitted form; 400 when the body cannot be decoded (bad charset, broken multipart)."""
    try:
        return await request.post()
    except (ValueError, LookupError, HttpProcessingError) as exc:
        raise web.HTTPBadRequest(text="400 bad request: the form could not be read\n") from exc


def csrf_ok(request: web.Request, form: Any) -> bool:
    """True when the form's CSRF token matches the CSRF cookie, and Origin (if sent) is ours."""
    return _csrf_token_ok(request, form.get(CSRF_FIELD))


def csrf_header_ok(request: web.Request) -> bool:
    """Like csrf_ok, for the portal's own fetch() calls, which send the token in X-CSRF-Token."""
    return _csrf_token_ok(request, request.headers.get(CSRF_HEADER))


def _csrf_token_ok(request: web.Request, token: object) -> bool:
    origin = request.headers.get("Origin")
    if origin and origin != "null" and not _origin_is_portal(request, origin):
        return False
    return isinstance(token, str) and _csrf(request).verify(request.cookies.get(CSRF_COOKIE), token)


def _origin_is_portal(request: web.Request, origin: str) -> bool:
    origins = set()
    for cookie in services_of(request).config.session.cookies:
        parts = urlsplit(cookie.portal_url)
        origins.add(f"{parts.scheme}://{parts.netloc}".lower())
    return origin.lower() in origins


def form_text(form: Any, name: str, *, limit: int = 1024) -> str:
    """Return a form field as text ('' when absent, a file, or absurdly long)."""
    value = form.get(name)
    if not isinstance(value, str) or len(value) > limit:
        return ""
    return value


def set_session_cookie(request: web.Request, response: web.Response, value: str, *, remember: bool) -> None:
    services = services_of(request)
    cfg = services.config.session
    cookie_domain = cookie_domain_of(request)
    response.set_cookie(
        cfg.cookie_name,
        value,
        domain=cookie_domain_attribute(cookie_domain.domain),
        path="/",
        max_age=int(cfg.remember_me) if remember else None,
        httponly=True,
        secure=cfg.secure,
        samesite="Lax",
    )


def clear_session_cookie(request: web.Request, response: web.Response) -> None:
    cfg = services_of(request).config.session
    response.del_cookie(
        cfg.cookie_name,
        domain=cookie_domain_attribute(cookie_domain_of(request).domain),
        path="/",
        secure=cfg.secure,
        httponly=True,
        samesite="Lax",
    )
