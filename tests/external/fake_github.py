"""A small real GitHub for tests: the OAuth2 web flow (with PKCE S256) and the REST calls authgate makes.

    GET  /login/oauth/authorize      a page with one "Authorize" button per known user
    POST /login/oauth/authorize      login=<user>: 302 to redirect_uri?code=...&state=...
    POST /login/oauth/access_token   code + client secret + code_verifier -> access token (JSON);
                                     errors as GitHub sends them: 200 with {"error": ...}
    GET  /api/user, /api/user/emails, /api/user/orgs   (Bearer token)
    PUT  /_users/<login>             test set-up: {"id", "name", "emails": [...], "orgs": [...]}

Run: python tests/external/fake_github.py --port N --client-id ID --client-secret SECRET
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import html
import secrets
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

USERS = web.AppKey("users", dict)
CODES = web.AppKey("codes", dict)
TOKENS = web.AppKey("tokens", dict)
CLIENT = web.AppKey("client", tuple)


async def authorize_page(request: web.Request) -> web.Response:
    users = request.app[USERS]
    buttons = "".join(
        f'<button type="submit" name="login" value="{html.escape(name)}">Authorize as {html.escape(name)}'
        "</button>"
        for name in users
    )
    page = (
        '<!doctype html><html lang="en"><head><title>Authorize application</title></head><body><main>'
        f'<h1>Authorize authgate</h1><form method="post">{buttons}</form></main></body></html>'
    )
    return web.Response(text=page, content_type="text/html")


async def authorize(request: web.Request) -> web.Response:
    form = await request.post()
    query = request.query
    client_id, _ = request.app[CLIENT]
    if query.get("client_id") != client_id:
        return web.Response(status=400, text="unknown client_id")
    login = str(form.get("login", ""))
    if login not in request.app[USERS]:
        return web.Response(status=400, text="unknown user")
    code = secrets.token_urlsafe(16)
    request.app[CODES][code] = {
        "login": login,
        "redirect_uri": query.get("redirect_uri", ""),
        "challenge": query.get("code_challenge"),
        "method": query.get("code_challenge_method"),
    }
    back = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query.get('state', '')})}"
    raise web.HTTPFound(back)


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


async def access_token(request: web.Request) -> web.Response:
    form = await request.post()
    client_id, client_secret = request.app[CLIENT]
    if form.get("client_id") != client_id or not hmac.compare_digest(
        str(form.get("client_secret", "")), client_secret
    ):
        return web.json_response({"error": "incorrect_client_credentials"})
    grant = request.app[CODES].pop(str(form.get("code", "")), None)  # single use
    if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
        return web.json_response({"error": "bad_verification_code"})
    if grant["challenge"] is not None:
        verifier = str(form.get("code_verifier", ""))
        if grant["method"] != "S256" or not hmac.compare_digest(_s256(verifier), grant["challenge"]):
            return web.json_response({"error": "bad_verification_code", "error_description": "PKCE"})
    token = "gho_" + secrets.token_urlsafe(24)
    request.app[TOKENS][token] = grant["login"]
    return web.json_response({"access_token": token, "token_type": "bearer", "scope": "read:user,user:email"})


def _user(request: web.Request) -> dict[str, Any]:
    header = request.headers.get("Authorization", "")
    login = request.app[TOKENS].get(header.removeprefix("Bearer ").strip())
    if login is None or not request.headers.get("User-Agent"):
        raise web.HTTPUnauthorized(text='{"message": "Bad credentials"}', content_type="application/json")
    return {"login": login, **request.app[USERS][login]}


async def api_user(request: web.Request) -> web.Response:
    user = _user(request)
    return web.json_response({"login": user["login"], "id": user["id"], "name": user["name"], "email": None})


async def api_emails(request: web.Request) -> web.Response:
    return web.json_response(_user(request)["emails"])


async def api_orgs(request: web.Request) -> web.Response:
    return web.json_response(
        [{"login": org, "id": index} for index, org in enumerate(_user(request)["orgs"])]
    )


async def put_user(request: web.Request) -> web.Response:
    request.app[USERS][request.match_info["login"]] = await request.json()
    return web.Response(status=204)


async def health(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app(client_id: str, client_secret: str) -> web.Application:
    app = web.Application()
    app[USERS] = {}
    app[CODES] = {}
    app[TOKENS] = {}
    app[CLIENT] = (client_id, client_secret)
    app.router.add_get("/login/oauth/authorize", authorize_page)
    app.router.add_post("/login/oauth/authorize", authorize)
    app.router.add_post("/login/oauth/access_token", access_token)
    app.router.add_get("/api/user", api_user)
    app.router.add_get("/api/user/emails", api_emails)
    app.router.add_get("/api/user/orgs", api_orgs)
    app.router.add_put("/_users/{login}", put_user)
    app.router.add_get("/_health", health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    args = parser.parse_args()
    web.run_app(make_app(args.client_id, args.client_secret), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
