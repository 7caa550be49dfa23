"""A small OpenID Connect relying party for the end-to-end tests: plain aiohttp + joserfc.

It knows nothing of authgate's code: it reads the provider's discovery document, sends the
browser to the authorization endpoint (state, nonce, PKCE S256), checks the callback's state
and iss, exchanges the code with client_secret_basic, verifies the ID token against the
published JWKS (signature, iss, aud, exp, nonce), calls userinfo, and shows what it got as JSON
in <pre id="result">. All back-channel requests go through the proxy, like a real app's would.

Run: python tests/e2e/oidc_rp.py --port P --issuer http://localhost:8080/auth --proxy 127.0.0.1:8080
     --client-id rp   (the secret in RP_CLIENT_SECRET)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import os
import secrets
import time
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

SETTINGS = web.AppKey("settings", dict)
PENDING = web.AppKey("pending", dict)  # login id -> state, nonce, verifier, acr
COOKIE = "rp_login"


def _page(title: str, result: dict[str, Any], status: int = 200) -> web.Response:
    shown = html.escape(json.dumps(result, indent=1))
    body = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
        f"<pre id='result'>{shown}</pre><p><a id='logout' href='/logout'>Sign out</a> "
        "<a id='refresh' href='/refresh'>Refresh</a></p></body></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html")


async def _back_channel(
    app: web.Application, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    """Call the provider through the proxy: connect to 127.0.0.1 but send the public Host."""
    settings = app[SETTINGS]
    parts = urlsplit(url)
    target = urlunsplit(("http", settings["proxy"], parts.path, parts.query, ""))
    headers = {"Host": parts.netloc, **kwargs.pop("headers", {})}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.request(method, target, headers=headers, **kwargs) as response:
            return response.status, await response.json(content_type=None)


async def _discover(app: web.Application) -> dict[str, Any]:
    settings = app[SETTINGS]
    if "metadata" not in settings:
        status, metadata = await _back_channel(
            app, "GET", settings["issuer"] + "/.well-known/openid-configuration"
        )
        assert status == 200 and metadata["issuer"] == settings["issuer"], metadata
        settings["metadata"] = metadata
    return dict(settings["metadata"])


async def login(request: web.Request) -> web.Response:
    """Start a sign-in: /login[?acr=two_factor][&scope=...]."""
    app = request.app
    settings = app[SETTINGS]
    metadata = await _discover(app)
    login_id = secrets.token_urlsafe(16)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    pending = {
        "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16),
        "verifier": verifier,
        "acr": request.query.get("acr", ""),
    }
    app[PENDING][login_id] = pending
    params = {
        "client_id": settings["client_id"],
        "redirect_uri": settings["redirect_uri"],
        "response_type": "code",
        "scope": request.query.get("scope", "openid profile email groups offline_access"),
        "state": pending["state"],
        "nonce": pending["nonce"],
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if pending["acr"]:
        params["acr_values"] = pending["acr"]
    response = web.HTTPFound(metadata["authorization_endpoint"] + "?" + urlencode(params))
    response.set_cookie(COOKIE, login_id, httponly=True, samesite="Lax")
    raise response


def _verify_id_token(keys: KeySet, token: str, settings: dict[str, Any], nonce: str) -> dict[str, Any]:
    decoded = jwt.decode(token, keys, algorithms=["RS256", "ES256"])
    claims = dict(decoded.claims)
    checks = {
        "iss": claims.get("iss") == settings["issuer"],
        "aud": claims.get("aud") == settings["client_id"],
        "exp": isinstance(claims.get("exp"), int) and claims["exp"] > time.time(),
        "nonce": claims.get("nonce") == nonce,
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise ValueError(f"ID token check failed: {', '.join(failed)}")
    return claims


async def callback(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    pending = app[PENDING].pop(request.cookies.get(COOKIE, ""), None)
    if pending is None:
        return _page("No sign-in in progress", {"error": "no_login"}, 400)
    if not secrets.compare_digest(request.query.get("state", ""), pending["state"]):
        return _page("State mismatch", {"error": "state_mismatch"}, 400)
    if "error" in request.query:
        return _page("Sign-in refused", {"error": request.query["error"]}, 400)
    if request.query.get("iss") != settings["issuer"]:
        return _page("Wrong issuer", {"error": "iss_mismatch"}, 400)
    metadata = await _discover(app)
    status, tokens = await _back_channel(
        app,
        "POST",
        metadata["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": request.query.get("code", ""),
            "redirect_uri": settings["redirect_uri"],
            "code_verifier": pending["verifier"],
        },
        auth=aiohttp.BasicAuth(settings["client_id"], settings["client_secret"]),
    )
    if status != 200:
        return _page("Token request refused", tokens, 400)
    _, jwks = await _back_channel(app, "GET", metadata["jwks_uri"])
    keys = KeySet.import_key_set(jwks)
    try:
        claims = _verify_id_token(keys, tokens["id_token"], settings, pending["nonce"])
    except (JoseError, ValueError) as exc:
        return _page("ID token refused", {"error": str(exc)}, 400)
    if pending["acr"] and claims.get("acr") != pending["acr"]:
        return _page("Not the asked acr", {"error": "acr", "acr": claims.get("acr")}, 400)
    status, userinfo = await _back_channel(
        app,
        "GET",
        metadata["userinfo_endpoint"],
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    settings["tokens"] = tokens
    result = {"id_token": claims, "userinfo": userinfo, "userinfo_status": status, "scope": tokens["scope"]}
    return _page("Signed in", result)


async def refresh(request: web.Request) -> web.Response:
    """Exchange the refresh token (rotation) and show the new ID token's claims."""
    app = request.app
    settings = app[SETTINGS]
    metadata = await _discover(app)
    old = settings.get("tokens", {})
    status, tokens = await _back_channel(
        app,
        "POST",
        metadata["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": old.get("refresh_token", "")},
        auth=aiohttp.BasicAuth(settings["client_id"], settings["client_secret"]),
    )
    if status != 200:
        return _page("Refresh refused", tokens, 400)
    rotated = tokens.get("refresh_token") != old.get("refresh_token")
    settings["tokens"] = {**tokens, "id_token": tokens.get("id_token", old.get("id_token"))}
    return _page("Refreshed", {"rotated": rotated, "scope": tokens["scope"]})


async def logout(request: web.Request) -> web.Response:
    """RP-initiated logout with id_token_hint and a registered post_logout_redirect_uri."""
    app = request.app
    settings = app[SETTINGS]
    metadata = await _discover(app)
    params = {
        "id_token_hint": settings.get("tokens", {}).get("id_token", ""),
        "post_logout_redirect_uri": settings["post_logout_uri"],
        "state": "rp-logout",
    }
    raise web.HTTPFound(metadata["end_session_endpoint"] + "?" + urlencode(params))


async def signed_out(request: web.Request) -> web.Response:
    return _page("Signed out", {"state": request.query.get("state", "")})


def create_rp(settings: dict[str, Any]) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[PENDING] = {}
    app.router.add_get("/login", login)
    app.router.add_get("/callback", callback)
    app.router.add_get("/refresh", refresh)
    app.router.add_get("/logout", logout)
    app.router.add_get("/signed-out", signed_out)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="a test OpenID Connect relying party")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--proxy", required=True, help="host:port the back channel connects to")
    parser.add_argument("--client-id", required=True)
    args = parser.parse_args()
    origin = f"http://localhost:{args.port}"
    settings = {
        "issuer": args.issuer,
        "proxy": args.proxy,
        "client_id": args.client_id,
        # from the environment, not argv: other users of the machine can read a process's arguments
        "client_secret": os.environ["RP_CLIENT_SECRET"],
        "redirect_uri": f"{origin}/callback",
        "post_logout_uri": f"{origin}/signed-out",
    }
    web.run_app(create_rp(settings), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
