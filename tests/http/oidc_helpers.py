"""Helpers for the OpenID Provider's HTTP tests: clients in the config, the flow step by step."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from aiohttp.test_utils import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet

from gateway.config import Argon2Config
from gateway.factors.passwords import PasswordHasher
from tests.http.helpers import CSRF_COOKIE, with_cookies

ISSUER = "http://localhost:8080/auth"
SECRET = "grafana-client-secret-0123456789abcdef"
_CHEAP = Argon2Config(time_cost=1, memory_cost=64, parallelism=1)
SECRET_HASH = PasswordHasher(_CHEAP).hash(SECRET)
APP = "https://grafana.example.com/login/generic_oauth"
SPA = "http://127.0.0.1:5173/callback"
VAULT = "https://vault.example.com/oidc/callback"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
_BLOB = re.compile(r'name="request" value="([^"]+)"')


def oidc_clients(**overrides: Any) -> dict[str, Any]:
    """An oidc_provider section with a confidential client (grafana), a public one (spa) and
    a two-factor one (vault)."""
    grafana = {
        "client_id": "grafana",
        "client_name": "Grafana",
        "client_secret": SECRET_HASH,
        "redirect_uris": [APP],
        "post_logout_redirect_uris": ["https://grafana.example.com/login"],
        "scopes": ["openid", "profile", "email", "groups", "offline_access"],
        "grant_types": ["authorization_code", "refresh_token"],
        "authorization_policy": "one_factor",
        **overrides.pop("grafana", {}),
    }
    spa = {
        "client_id": "spa",
        "public": True,
        "redirect_uris": [SPA],
        "authorization_policy": "one_factor",
        **overrides.pop("spa", {}),
    }
    vault = {
        "client_id": "vault",
        "client_secret": SECRET_HASH,
        "token_endpoint_auth_method": "client_secret_post",
        "redirect_uris": [VAULT],
        "id_token_signed_response_alg": "ES256",
        "consent": "implicit",
        **overrides.pop("vault", {}),
    }
    return {"oidc_provider": {"clients": [grafana, spa, vault], **overrides}}


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_path(**params: str) -> str:
    query = {
        "client_id": "grafana",
        "redirect_uri": APP,
        "response_type": "code",
        "scope": "openid profile email groups",
        "state": "st-" + secrets.token_urlsafe(8),
        "nonce": "n-" + secrets.token_urlsafe(8),
        **params,
    }
    return "/auth/api/oidc/authorization?" + urlencode({k: v for k, v in query.items() if v is not None})


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def authorize(
    client: TestClient[Any, Any], session: str | None, *, allow: bool = True, **params: str
) -> Any:
    """Run the authorization request; on a consent page, answer it. Returns the final response."""
    response = await client.get(
        authorize_path(**params), headers=with_cookies(session), allow_redirects=False
    )
    if response.status != 200 or "oidc-consent" not in (text := await response.text()):
        return response
    token = _TOKEN.search(text)
    blob = _BLOB.search(text)
    assert token and blob, text
    csrf = response.cookies[CSRF_COOKIE].value if CSRF_COOKIE in response.cookies else None
    assert csrf is not None
    return await client.post(
        "/auth/api/oidc/consent",
        data={
            "csrf_token": token.group(1),
            "request": blob.group(1),
            "decision": "allow" if allow else "deny",
        },
        headers=with_cookies(session, **{CSRF_COOKIE: csrf}),
        allow_redirects=False,
    )


async def code_for(client: TestClient[Any, Any], session: str, **params: str) -> tuple[str, dict[str, str]]:
    """Authorize (consenting) and return (code, the redirect's query)."""
    response = await authorize(client, session, **params)
    assert response.status == 302, await response.text()
    query = query_of(response.headers["Location"])
    assert "code" in query, query
    return query["code"], query


def basic(client_id: str = "grafana", secret: str = SECRET) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def token_request(
    client: TestClient[Any, Any], form: Mapping[str, str], headers: Mapping[str, str] | None = None
) -> Any:
    return await client.post(
        "/auth/api/oidc/token", data=dict(form), headers=dict(basic() if headers is None else headers)
    )


async def exchange(client: TestClient[Any, Any], code: str, **extra: str) -> Any:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": APP, **extra}
    return await token_request(client, form)


async def published_keys(client: TestClient[Any, Any]) -> KeySet:
    response = await client.get("/auth/jwks.json")
    assert response.status == 200
    return KeySet.import_key_set(await response.json(content_type=None))


async def verify(client: TestClient[Any, Any], token: str, alg: str = "RS256") -> dict[str, Any]:
    """Verify a token independently against the published JWKS; return its claims."""
    decoded = jwt.decode(token, await published_keys(client), algorithms=[alg])
    assert decoded.header["alg"] == alg
    return dict(decoded.claims)
