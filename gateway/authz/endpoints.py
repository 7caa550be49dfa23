"""The forward-auth endpoints: translate proxy requests to a decision and back.

/api/authz/forward-auth  Traefik and Caddy (X-Forwarded-*); unauthenticated
                         browser navigation gets 302 to the portal, the rest 401.
/api/authz/auth-request  nginx auth_request (X-Original-URL); always 401 with a
                         Location header, which nginx turns into a redirect; a request
                         it cannot judge is a 403 marked X-Authgate-Error (never a 400,
                         which nginx would turn into a 500).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple
from urllib.parse import quote

from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.authz.decision import Decision, Verdict
from gateway.authz.domains import match_cookie_domain
from gateway.authz.forwarded import parse_auth_request, parse_forward_auth
from gateway.authz.memo import BoundedMemo
from gateway.authz.prepared import PLAIN_OK_HEAD, answer
from gateway.authz.tokens import answer_with_token
from gateway.authz.wire import answer_head
from gateway.errors import InvalidForwardedHeaders, StoreUnavailable
from gateway.logs import log_event
from gateway.metrics import SAMPLE_MASK
from gateway.models import OriginalRequest
from gateway.services import SERVICES, Services
from gateway.sessions.codec import CachedSession

Parser = Callable[..., OriginalRequest]


def portal_url(portal: str, page: str, target: str) -> str:
    """Return a portal page ("login", "2fa") that comes back to target afterwards."""
    return f"{portal}/{page}?rd={quote(target, safe='')}"


def _wants_redirect(headers: CIMultiDictProxy[str], method: str) -> bool:
    # Only a browser navigating can follow a redirect to a login page; API calls get 401.
    return method in ("GET", "HEAD") and "text/html" in headers.get("Accept", "")


# nginx's auth_request turns every answer but 2xx, 401 and 403 into a 500 (and logs "auth request
# unexpected status"): to nginx a request authgate cannot judge is a 403 marked with this header
# ("bad-request", or "unavailable" when the store cannot answer), which nginx.conf.example turns
# into a 400 or a 503 for the client (docs/proxies.md).
BAD_REQUEST_HEADER = "X-Authgate-Error"


def _bad_request(request: web.Request, exc: InvalidForwardedHeaders, *, for_nginx: bool) -> web.Response:
    log_event("authz_bad_request", logging.WARNING, reason=exc.reason, peer=request.remote)
    text = f"bad request: {exc.reason}\n"
    if for_nginx:
        return web.Response(status=403, headers={BAD_REQUEST_HEADER: "bad-request"}, text=text)
    return web.Response(status=400, text=f"400 {text}")


def _ambiguous(original: OriginalRequest) -> InvalidForwardedHeaders:
    return InvalidForwardedHeaders(
        f"ambiguous path {original.raw_path!r}: {original.ambiguity}, which an upstream may read as "
        "another path (access_control.ambiguous_paths: refuse)"
    )


def _denied(original: OriginalRequest, session: CachedSession | None, decision: Decision) -> web.Response:
    log_event(
        "access_denied",
        user=session.subject.username if session else None,
        method=original.method,
        url=original.url,
        client_ip=str(original.client_ip),
        rule=decision.rule_index,
    )
    return web.Response(status=403, text="403 forbidden\n")


class PortalAnswer(NamedTuple):
    """Where an unauthenticated request is sent, and nginx's 401 saying so, serialised once."""

    location: str
    head_401: bytes


# The answer per (page, host, URL): a pure function of them and the app's fixed cookie
# domains (None: the host is under no cookie domain). Keys come from clients, so bounded,
# and long URLs are never remembered.
_PORTAL_ANSWERS = web.AppKey("portal_answers", BoundedMemo[tuple[str, str, str], PortalAnswer | None])
PORTAL_LOCATION_MEMO_SIZE = 4096
PORTAL_LOCATION_MAX_KEY = 2048
_NOT_SEEN = object()


def _portal_answer(
    services: Services,
    memo: BoundedMemo[tuple[str, str, str], PortalAnswer | None],
    original: OriginalRequest,
    page: str,
) -> PortalAnswer | None:
    key = (page, original.host, original.url)
    found = memo.get(key, _NOT_SEEN)
    if found is not _NOT_SEEN:
        return found  # type: ignore[return-value]
    cookie_domain = match_cookie_domain(original.host, services.config.session.cookies)
    if cookie_domain is None:
        found = None
    else:
        location = portal_url(cookie_domain.portal_url, page, original.url)
        found = PortalAnswer(location, answer_head(401, (("Location", location),)))
    if len(original.url) + len(original.host) <= PORTAL_LOCATION_MAX_KEY:
        memo.put(key, found)
    return found


def _to_portal(
    services: Services, request: web.Request, original: OriginalRequest, *, page: str, always_401: bool
) -> web.StreamResponse:
    portal = _portal_answer(services, request.app[_PORTAL_ANSWERS], original, page)
    if portal is None:
        # A session cookie could never reach this host, so a login could not help.
        log_event("access_denied", reason="host outside every session cookie domain", host=original.host)
        return web.Response(status=403, text="403 forbidden: host is not under a session cookie domain\n")
    if always_401:
        # nginx only reads the status and headers of an auth subrequest's answer: no body, so
        # nothing to send and nothing that could make it give up the upstream connection.
        return answer(request, 401, portal.head_401, (("Location", portal.location),))
    if _wants_redirect(request.headers, original.method):
        return web.Response(status=302, headers={"Location": portal.location})
    return web.Response(status=401, headers={"Location": portal.location}, text="401 unauthorized\n")


async def _answer(request: web.Request, parse: Parser, *, always_401: bool) -> web.StreamResponse:
    services = request.app[SERVICES]
    metrics = services.metrics
    # Metrics.tick() and Metrics.decided(), inlined: the two method calls were most of what the
    # metrics cost a cached request (deploy/bench/instructions.py counts it).
    started = 0 if next(metrics.ticker) & SAMPLE_MASK else metrics.clock_ns()
    headers = request.headers
    try:
        original = parse(headers, request.remote, services.config.server.trusted_proxies)
    except InvalidForwardedHeaders as exc:
        metrics.reject("bad_request")
        return _bad_request(request, exc, for_nginx=always_401)
    if original.ambiguity is not None and services.config.access_control.ambiguous_paths == "refuse":
        metrics.reject("ambiguous_path")
        return _bad_request(request, _ambiguous(original), for_nginx=always_401)
    # Who is asking: the session named by the Cookie header. Nearly always one this worker
    # has cached, which answers without a coroutine.
    cookie_header = headers.get("Cookie")
    session = services.sessions.resolve_header_cached(cookie_header)
    if session is None:
        session = await services.sessions.resolve_header(cookie_header)
    if session is None:
        authorization = headers.get("Authorization")
        if authorization:
            # Clients that cannot show the portal (CalDAV, git, scripts) send an app password.
            answered = await answer_with_token(services, request, original, authorization)
            if answered is not None:
                if started:
                    metrics.timed(started)
                return answered
        decision = services.decisions.for_anonymous(original)
    else:
        decision = services.decisions.for_session(original, session)
    metrics.decisions[decision.slot] += 1
    if started:
        metrics.timed(started)
    if decision.verdict is Verdict.ALLOW:
        if decision.with_identity and session is not None:
            # Serialised once per session: most answers are one write of prepared bytes.
            return answer(request, 200, session.answer_head, session.headers)
        return answer(request, 200, PLAIN_OK_HEAD)
    if decision.verdict is Verdict.DENY:
        return _denied(original, session, decision)
    page = "2fa" if decision.verdict is Verdict.STEP_UP else "login"
    return _to_portal(services, request, original, page=page, always_401=always_401)


def _unavailable(request: web.Request, exc: StoreUnavailable, *, for_nginx: bool) -> web.Response:
    # Fail closed, clearly: the proxy refuses the request, the log says why in one line.
    # Sessions and app passwords this worker has cached still answer without the store.
    # nginx's auth_request cannot carry a 503 (it would become a 500): a 403 marked
    # "unavailable", which nginx.conf.example turns back into a 503 with Retry-After.
    log_event("store_unavailable", logging.ERROR, method=request.method, path=request.path, reason=exc.reason)
    headers = {"Retry-After": "5"}
    if for_nginx:
        headers[BAD_REQUEST_HEADER] = "unavailable"
    return web.Response(
        status=403 if for_nginx else 503,
        headers=headers,
        text=f"503 service unavailable: {exc.reason}; try again shortly\n",
    )


async def forward_auth(request: web.Request) -> web.StreamResponse:
    """Answer Traefik's and Caddy's forward-auth subrequest."""
    try:
        return await _answer(request, parse_forward_auth, always_401=False)
    except StoreUnavailable as exc:
        return _unavailable(request, exc, for_nginx=False)


async def auth_request(request: web.Request) -> web.StreamResponse:
    """Answer nginx's auth_request subrequest."""
    try:
        return await _answer(request, parse_auth_request, always_401=True)
    except StoreUnavailable as exc:
        return _unavailable(request, exc, for_nginx=True)


async def health(request: web.Request) -> web.Response:
    """Report whether the database answers (and, on PostgreSQL, whether revocations are heard live)."""
    store = request.app[SERVICES].store
    try:
        await store.ping()
    except Exception as exc:  # any storage failure means unhealthy, never a 500
        log_event("health_failed", logging.ERROR, error=type(exc).__name__)
        return web.json_response({"status": "error", "database": "unreachable"}, status=503)
    if store.engine == "sqlite":
        return web.json_response({"status": "ok"})
    # Still healthy without the channel: revocations then take up to session.cache_ttl.
    channel = "live" if store.revocations_live else "reconnecting"
    return web.json_response({"status": "ok", "engine": store.engine, "revocations": channel})


def add_routes(app: web.Application) -> None:
    app[_PORTAL_ANSWERS] = BoundedMemo(PORTAL_LOCATION_MEMO_SIZE)
    for path, handler in (
        ("/api/authz/forward-auth", forward_auth),
        ("/api/authz/auth-request", auth_request),
    ):
        # Proxies send the method of the original request for some setups (Traefik keeps GET).
        app.router.add_route("*", path, handler)
    app.router.add_get("/api/health", health)
