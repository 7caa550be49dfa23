"""Shared helpers of the portal views: rendering, cookies, CSRF, who is asking."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from itsdangerous import URLSafeTimedSerializer
from multidict import MultiDictProxy

from gateway.authz.domains import cookie_domain_attribute, match_cookie_domain
from gateway.authz.forwarded import client_address
from gateway.authz.redirects import safe_redirect_target
from gateway.config import Config, CookieDomain
from gateway.errors import DirectoryUnavailable, StoreUnavailable
from gateway.factors.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from gateway.logs import log_event
from gateway.models import User
from gateway.services import SERVICES, Services
from gateway.sessions.codec import CachedSession
from portal.csrf import CsrfSigner, generate_csrf_secret, is_csrf_secret

CSRF_COOKIE = "authgate_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    # Templates ship with the code: no stat() of every template file on every page.
    auto_reload=False,
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
    html = TEMPLATES.get_template(template).render(
        title=services.config.portal.title,
        base=base,
        csrf_field=CSRF_FIELD,
        csrf_token=_csrf(request).token_for(secret),
        **context,
    )
    response = web.Response(status=status, text=html, content_type="text/html", headers=SECURITY_HEADERS)
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


RETRY_AFTER = "5"  # seconds a client is asked to wait when the database cannot take a request


def unavailable(request: web.Request, exc: StoreUnavailable) -> web.Response:
    """Answer a request the store could not serve: one log line, a 503 page (or JSON), no traceback."""
    log_event("store_unavailable", logging.ERROR, method=request.method, path=request.path, reason=exc.reason)
    headers = {**SECURITY_HEADERS, "Retry-After": RETRY_AFTER}
    message = "The sign-in service cannot reach its database right now. Please try again in a moment."
    if "application/json" in request.headers.get("Accept", "") or request.content_type == "application/json":
        return web.json_response({"error": message}, status=503, headers=headers)
    response = render(request, "message.html", status=503, heading="Temporarily unavailable", message=message)
    response.headers["Retry-After"] = RETRY_AFTER
    return response


DIRECTORY_UNAVAILABLE = (
    "The directory is unavailable right now, so directory accounts cannot sign in. "
    "Please try again in a few minutes."
)


def directory_unavailable(request: web.Request, exc: DirectoryUnavailable) -> web.Response:
    """Answer a request the LDAP directory could not serve: a 503 page (or JSON), one log line."""
    log_event(
        "ldap_unavailable", logging.WARNING, method=request.method, path=request.path, reason=exc.reason
    )
    headers = {**SECURITY_HEADERS, "Retry-After": RETRY_AFTER}
    if "application/json" in request.headers.get("Accept", "") or request.content_type == "application/json":
        return web.json_response({"error": DIRECTORY_UNAVAILABLE}, status=503, headers=headers)
    response = render(
        request,
        "message.html",
        status=503,
        heading="The directory is unavailable",
        message=DIRECTORY_UNAVAILABLE,
    )
    response.headers["Retry-After"] = RETRY_AFTER
    return response


async def account_password_ok(request: web.Request, user: User, password: str) -> bool:
    """Check a signed-in user's password: the local hash, or a bind for a directory user.

    DirectoryUnavailable propagates (store_guard answers 503): "the directory cannot say" is
    not "wrong password".
    """
    services = services_of(request)
    if user.from_directory:
        if services.directory is None:
            return False  # the directory was removed from the configuration
        return await services.directory.check_password(user, password)
    found = await services.store.find_login(user.username)
    return await services.passwords.verify(found[1] if found else None, password)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def store_guard(handler: Handler) -> Handler:
    """Wrap a portal handler so a busy, full or failing database gives a clean 503, never a 500."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except StoreUnavailable as exc:
            return unavailable(request, exc)
        except DirectoryUnavailable as exc:
            return directory_unavailable(request, exc)

    return guarded


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
