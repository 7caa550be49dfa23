"""The OpenID Provider's machine-to-machine endpoints (the browser-facing ones are in portal/views/oidc.py).

Under the issuer's path:
  /.well-known/openid-configuration   discovery (OpenID Connect Discovery 1.0)
  /jwks.json                          the public signing keys
  /api/oidc/token                     RFC 6749 3.2 (authorization_code, refresh_token)
  /api/oidc/userinfo                  OIDC Core 5.3
  /api/oidc/revocation                RFC 7009
  /api/oidc/introspection             RFC 7662
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.authz.forwarded import client_address
from gateway.errors import StoreUnavailable
from gateway.logs import log_event
from gateway.oidc.clients import AUTH_METHODS, GRANT_TYPES, SCOPES, OidcClient
from gateway.oidc.keys import ALGORITHMS
from gateway.oidc.protocol import ACR_VALUES, PROMPTS, SCOPE_CLAIMS
from gateway.oidc.service import OidcError, OidcProvider, log_refusal, parse_client_credentials
from gateway.oidc.tokens import InvalidToken
from gateway.services import SERVICES, Services

AUTHORIZATION_PATH = "/api/oidc/authorization"
CONSENT_PATH = "/api/oidc/consent"
TOKEN_PATH = "/api/oidc/token"  # noqa: S105 - a path
USERINFO_PATH = "/api/oidc/userinfo"
REVOCATION_PATH = "/api/oidc/revocation"
INTROSPECTION_PATH = "/api/oidc/introspection"
END_SESSION_PATH = "/api/oidc/logout"
JWKS_PATH = "/jwks.json"
DISCOVERY_PATH = "/.well-known/openid-configuration"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_MAX_FIELD = 4096


def issuer_path(issuer: str) -> str:
    return urlsplit(issuer).path.rstrip("/")


def provider_of(request: web.Request) -> OidcProvider:
    provider = request.app[SERVICES].oidc
    if provider is None:  # routes are only added when the provider is on
        raise web.HTTPNotFound()
    return provider


def _ip(request: web.Request, services: Services) -> str:
    return str(client_address(request.headers, request.remote, services.config.server.trusted_proxies))


def discovery_document(provider: OidcProvider) -> dict[str, Any]:
    """The provider metadata apps read to configure themselves."""
    issuer = provider.issuer
    claims = sorted(
        {"sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "azp", "sid"}
        | {c for names in SCOPE_CLAIMS.values() for c in names}
    )
    return {
        "issuer": issuer,
        "authorization_endpoint": issuer + AUTHORIZATION_PATH,
        "token_endpoint": issuer + TOKEN_PATH,
        "userinfo_endpoint": issuer + USERINFO_PATH,
        "jwks_uri": issuer + JWKS_PATH,
        "revocation_endpoint": issuer + REVOCATION_PATH,
        "introspection_endpoint": issuer + INTROSPECTION_PATH,
        "end_session_endpoint": issuer + END_SESSION_PATH,
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(GRANT_TYPES),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(ALGORITHMS),
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "introspection_endpoint_auth_methods_supported": [m for m in AUTH_METHODS if m != "none"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": claims,
        "acr_values_supported": list(ACR_VALUES),
        "prompt_values_supported": list(PROMPTS),
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "authorization_response_iss_parameter_supported": True,
    }


async def discovery(request: web.Request) -> web.Response:
    provider = provider_of(request)
    # Public metadata: any web app may read it (CORS), caches may keep it briefly.
    headers = {"Access-Control-Allow-Origin": "*", "Cache-Control": "public, max-age=300"}
    return web.json_response(discovery_document(provider), headers=headers)


async def jwks(request: web.Request) -> web.Response:
    provider = provider_of(request)
    # Short cache: after a rotation, relying parties should see the new key within minutes.
    headers = {"Access-Control-Allow-Origin": "*", "Cache-Control": "public, max-age=300"}
    return web.json_response(provider.keys.jwks(), headers=headers, content_type="application/jwk-set+json")


def _error(exc: OidcError, *, basic: bool = False) -> web.Response:
    headers = dict(NO_STORE)
    if exc.status == 401 and basic:
        headers["WWW-Authenticate"] = 'Basic realm="authgate"'
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return web.json_response(
        {"error": exc.error, "error_description": exc.description}, status=exc.status, headers=headers
    )


async def _form(request: web.Request) -> dict[str, str]:
    """The form fields of a POST (each at most once), or OidcError."""
    if request.method != "POST":
        raise OidcError("invalid_request", "use POST", status=405)
    if request.content_type != "application/x-www-form-urlencoded":
        raise OidcError("invalid_request", "send the parameters as application/x-www-form-urlencoded")
    try:
        data = await request.post()
    except (ValueError, LookupError, HttpProcessingError) as exc:
        raise OidcError("invalid_request", "the form could not be read") from exc
    form: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, str) or len(value) > _MAX_FIELD:
            raise OidcError("invalid_request", f"the parameter {key} is not valid")
        if key in form:
            raise OidcError("invalid_request", f"the parameter {key} is repeated")
        form[key] = value
    return form


async def _client(request: web.Request, provider: OidcProvider, form: dict[str, str], ip: str) -> OidcClient:
    credentials = parse_client_credentials(
        request.headers.get("Authorization"), form.get("client_id"), form.get("client_secret")
    )
    return await provider.authenticate_client(credentials, ip=ip)


def _cors(request: web.Request, provider: OidcProvider, response: web.StreamResponse) -> web.StreamResponse:
    """Let a browser app (a public client) call us from the origin of one of its redirect URIs."""
    origin = request.headers.get("Origin")
    if origin and origin in _client_origins(provider):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response


def _client_origins(provider: OidcProvider) -> set[str]:
    origins = set()
    for client in provider.cfg.clients:
        for uri in client.redirect_uris:
            parts = urlsplit(uri)
            origins.add(f"{parts.scheme}://{parts.netloc}")
    return origins


async def preflight(request: web.Request) -> web.StreamResponse:
    provider = provider_of(request)
    response = web.Response(status=204)
    if request.headers.get("Origin") in _client_origins(provider):
        response.headers["Access-Control-Allow-Methods"] = "GET, POST"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
    return _cors(request, provider, response)


async def token(request: web.Request) -> web.StreamResponse:
    """The token endpoint: exchange a code or a refresh token for tokens."""
    services = request.app[SERVICES]
    provider = provider_of(request)
    ip = _ip(request, services)
    form: dict[str, str] = {}
    try:
        form = await _form(request)
        client = await _client(request, provider, form, ip)
        grant_type = form.get("grant_type", "")
        if grant_type not in client.grant_types:
            raise OidcError(
                "unsupported_grant_type" if grant_type not in GRANT_TYPES else "unauthorized_client",
                f"grant_type {grant_type[:40]!r} is not allowed for this client",
            )
        if grant_type == "authorization_code":
            result = await provider.exchange_code(
                client,
                code=form.get("code", ""),
                redirect_uri=form.get("redirect_uri", ""),
                verifier=form.get("code_verifier"),
                ip=ip,
            )
        else:
            result = await provider.refresh(
                client, refresh_token=form.get("refresh_token", ""), scope=form.get("scope"), ip=ip
            )
    except OidcError as exc:
        log_refusal("token", exc, client_id=form.get("client_id"), ip=ip)
        return _cors(request, provider, _error(exc, basic="Authorization" in request.headers))
    return _cors(request, provider, web.json_response(result.as_json(), headers=NO_STORE))


def _bearer_error(description: str) -> web.Response:
    return web.json_response(
        {"error": "invalid_token", "error_description": description},
        status=401,
        headers={
            **NO_STORE,
            "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"',
        },
    )


async def userinfo(request: web.Request) -> web.StreamResponse:
    """The claims of the user an access token was issued for."""
    provider = provider_of(request)
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        response = web.json_response(
            {"error": "invalid_request", "error_description": "send the access token as a Bearer token"},
            status=401,
            headers={**NO_STORE, "WWW-Authenticate": 'Bearer realm="authgate"'},
        )
        return _cors(request, provider, response)
    try:
        claims = await provider.userinfo(value.strip())
    except InvalidToken as exc:
        log_event("oidc_refused", logging.INFO, endpoint="userinfo", error="invalid_token", reason=str(exc))
        return _cors(request, provider, _bearer_error("the access token is not valid"))
    return _cors(request, provider, web.json_response(claims, headers=NO_STORE))


async def revocation(request: web.Request) -> web.StreamResponse:
    """RFC 7009: revoke a token; 200 whether or not it was known."""
    services = request.app[SERVICES]
    provider = provider_of(request)
    ip = _ip(request, services)
    form: dict[str, str] = {}
    try:
        form = await _form(request)
        client = await _client(request, provider, form, ip)
        await provider.revoke(client, form.get("token", ""), ip=ip)
    except OidcError as exc:
        log_refusal("revocation", exc, client_id=form.get("client_id"), ip=ip)
        return _cors(request, provider, _error(exc, basic="Authorization" in request.headers))
    return _cors(request, provider, web.Response(status=200, headers=NO_STORE))


async def introspection(request: web.Request) -> web.StreamResponse:
    """RFC 7662: is this token live, and what does it carry (for the client it belongs to)."""
    services = request.app[SERVICES]
    provider = provider_of(request)
    ip = _ip(request, services)
    form: dict[str, str] = {}
    try:
        form = await _form(request)
        client = await _client(request, provider, form, ip)
        if client.public:
            raise OidcError("invalid_client", "public clients cannot introspect tokens", status=401)
        body = await provider.introspect(client, form.get("token", ""))
    except OidcError as exc:
        log_refusal("introspection", exc, client_id=form.get("client_id"), ip=ip)
        return _error(exc, basic="Authorization" in request.headers)
    return web.json_response(body, headers=NO_STORE)


def _guarded(handler: Any) -> Any:
    """A busy or failing database gives a clean 503 in OAuth's JSON shape, never a 500."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except StoreUnavailable as exc:
            log_event("store_unavailable", logging.ERROR, path=request.path, reason=exc.reason)
            return web.json_response(
                {"error": "temporarily_unavailable", "error_description": "the database is busy; retry"},
                status=503,
                headers={**NO_STORE, "Retry-After": "5"},
            )
        return response

    return guarded


def add_routes(app: web.Application, issuer: str) -> None:
    base = issuer_path(issuer)
    app.router.add_get(base + DISCOVERY_PATH, discovery)
    app.router.add_get(base + JWKS_PATH, jwks)
    for path, handler, methods in (
        (TOKEN_PATH, token, ("POST",)),
        (USERINFO_PATH, userinfo, ("GET", "POST")),
        (REVOCATION_PATH, revocation, ("POST",)),
        (INTROSPECTION_PATH, introspection, ("POST",)),
    ):
        for method in methods:
            app.router.add_route(method, base + path, _guarded(handler))
        app.router.add_route("OPTIONS", base + path, preflight)
