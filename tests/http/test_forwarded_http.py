"""Forwarded headers: only from trusted proxies, never duplicated or malformed, never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from tests.http.helpers import BROWSER, MakeClient, forward_auth

Client = TestClient[Any, Any]
FORWARD_AUTH = "/api/authz/forward-auth"
AUTH_REQUEST = "/api/authz/auth-request"


async def test_forwarded_headers_from_untrusted_peer_get_400(make_client: MakeClient) -> None:
    """When 127.0.0.1 is not a trusted proxy, forward-auth refuses its headers with the reason."""
    client = await make_client({"server": {"trusted_proxies": ["10.0.0.0/8"]}})

    response = await forward_auth(client)

    assert response.status == 400
    text = await response.text()
    assert "not a trusted proxy" in text
    assert "server.trusted_proxies" in text


async def test_auth_request_from_untrusted_peer_gets_marked_403(make_client: MakeClient) -> None:
    """auth-request refuses X-Original-URL from an untrusted peer too, as the 403 nginx can carry."""
    client = await make_client({"server": {"trusted_proxies": ["10.0.0.0/8"]}})

    response = await client.get(AUTH_REQUEST, headers={"X-Original-URL": "http://app.localhost/"})

    assert response.status == 403
    assert response.headers["X-Authgate-Error"] == "bad-request"
    assert "not a trusted proxy" in await response.text()


@pytest.mark.parametrize(
    "name",
    ["X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Uri", "X-Forwarded-Method", "X-Forwarded-For"],
)
async def test_duplicated_forwarded_header_gets_400(client: Client, name: str) -> None:
    """Two values of one forwarding header are ambiguous, so the request is refused."""
    values = {
        "X-Forwarded-Host": ("app.localhost", "public.localhost"),
        "X-Forwarded-Proto": ("http", "https"),
        "X-Forwarded-Uri": ("/a", "/b"),
        "X-Forwarded-Method": ("GET", "POST"),
        "X-Forwarded-For": ("192.0.2.1", "192.0.2.2"),
    }[name]
    headers = CIMultiDict(
        {
            "X-Forwarded-Method": "GET",
            "X-Forwarded-Proto": "http",
            "X-Forwarded-Host": "app.localhost",
            "X-Forwarded-Uri": "/",
        }
    )
    headers.popall(name, None)
    for value in values:
        headers.add(name, value)

    response = await client.get(FORWARD_AUTH, headers=headers, allow_redirects=False)

    assert response.status == 400
    assert f"duplicated {name}" in await response.text()


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("X-Forwarded-Proto", "ftp", "expected http or https"),
        ("X-Forwarded-Host", "app.localhost,public.localhost", "invalid characters in host"),
        ("X-Forwarded-Host", "app.localhost:99999", "invalid port"),
        ("X-Forwarded-Host", "app localhost", "invalid characters in host"),
        ("X-Forwarded-Host", "[::1", "unclosed IPv6 literal"),
        ("X-Forwarded-Host", "user@app.localhost", "invalid characters in host"),
        ("X-Forwarded-Host", "", "empty or overlong host"),
        ("X-Forwarded-Port", "http", "invalid port"),
        ("X-Forwarded-Uri", "page", "must start with '/'"),
        ("X-Forwarded-Uri", "/a b", "whitespace"),
        ("X-Forwarded-Uri", "/a%0a", "encoded control character"),
        ("X-Forwarded-Uri", "/%ff", "not UTF-8"),
        ("X-Forwarded-Method", "GE T", "not an HTTP method token"),
        ("X-Forwarded-For", "not-an-ip", "is not an IP address"),
        ("X-Forwarded-For", "192.0.2.1, ", "is not an IP address"),
        ("X-Real-IP", "999.1.1.1", "is not an IP address"),
    ],
)
async def test_malformed_forwarded_header_gets_400(
    client: Client, name: str, value: str, reason: str
) -> None:
    """Each malformed forwarding header is refused with a reason naming the header."""
    response = await forward_auth(client, extra={name: value})

    assert response.status == 400
    text = await response.text()
    assert reason in text
    assert name in text


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="nothing"),
        pytest.param({"X-Forwarded-Host": "app.localhost"}, id="no proto"),
        pytest.param({"X-Forwarded-Proto": "http"}, id="no host"),
    ],
)
async def test_missing_forwarded_headers_get_400(client: Client, headers: dict[str, str]) -> None:
    """forward-auth without the proxy's description of the request is a 400, not a guess."""
    response = await client.get(FORWARD_AUTH, headers=headers)

    assert response.status == 400
    assert "missing X-Forwarded-" in await response.text()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://app.localhost/", "not an absolute http(s) URL"),
        ("/relative", "not an absolute http(s) URL"),
        ("http://alice@app.localhost/", "userinfo is not allowed"),
        ("http://app.localhost/%00", "encoded control character"),
        ("http://app..localhost/", "invalid characters in host"),
    ],
)
async def test_malformed_original_url_gets_marked_403(client: Client, url: str, reason: str) -> None:
    """auth-request refuses an X-Original-URL it cannot parse exactly, as a 403 marked X-Authgate-Error."""
    response = await client.get(AUTH_REQUEST, headers={"X-Original-URL": url, "Accept": BROWSER})

    assert response.status == 403
    assert response.headers["X-Authgate-Error"] == "bad-request"
    assert reason in await response.text()


async def test_auth_request_without_any_url_gets_marked_403(client: Client) -> None:
    """auth-request with neither X-Original-URL nor X-Forwarded-* is refused (403 marked X-Authgate-Error)."""
    response = await client.get(AUTH_REQUEST)

    assert response.status == 403
    assert response.headers["X-Authgate-Error"] == "bad-request"
    assert "missing X-Original-URL" in await response.text()


async def test_dot_segments_cannot_escape_a_bypass_path(make_client: MakeClient) -> None:
    """A path rule judges the normalised path, so /static/../admin is not public."""
    rules = [
        {"domain": "app.localhost", "path": "^/static/", "policy": "bypass"},
        {"domain": "*.localhost", "policy": "one_factor"},
    ]
    client = await make_client({"access_control": {"rules": rules}})

    public = await forward_auth(client, uri="/static/app.css")
    escaped = await forward_auth(client, uri="/static/../admin")
    encoded = await forward_auth(client, uri="/static/%2e%2e/admin")

    assert public.status == 200
    assert escaped.status == 302
    assert encoded.status == 302


AMBIGUITY_RULES = [
    {"domain": "app.localhost", "path": "^/admin(/|$)", "path_case": "insensitive", "policy": "deny"},
    {"domain": "*.localhost", "policy": "bypass"},
]


@pytest.mark.parametrize(
    "uri", ["/admin;x", "/admin%3bx", "/admin%20", "/public\\..\\admin", "/public/%5c..%5cadmin", "/admin%2f"]
)
async def test_ambiguous_path_is_refused_by_default(make_client: MakeClient, uri: str) -> None:
    """forward-auth answers 400 naming the setting; auth-request the 403 marked for nginx's 400."""
    client = await make_client({"access_control": {"rules": AMBIGUITY_RULES}})

    forward = await forward_auth(client, uri=uri)
    nginx = await client.get(AUTH_REQUEST, headers={"X-Original-URL": f"http://app.localhost{uri}"})

    assert forward.status == 400
    text = await forward.text()
    assert f"ambiguous path {uri!r}" in text and "access_control.ambiguous_paths" in text
    assert (nginx.status, nginx.headers.get("X-Authgate-Error")) == (403, "bad-request")


async def test_ambiguous_paths_allow_matches_the_canonical_path(make_client: MakeClient) -> None:
    """With ambiguous_paths: allow, the canonical path is matched as it is (here: not /admin)."""
    client = await make_client({"access_control": {"rules": AMBIGUITY_RULES, "ambiguous_paths": "allow"}})

    parameter = await forward_auth(client, uri="/admin;x")
    separator = await forward_auth(client, uri="/admin%2fx")

    assert parameter.status == 200  # "/admin;x" is not "/admin": the bypass rule decides
    assert separator.status == 403  # "/admin%2fx" decodes to "/admin/x": the admin rule decides


@pytest.mark.parametrize(
    "uri", ["/ADMIN", "/Admin/x", "/%41dmin", "/public/../ADMIN", "/public/%2e%2e/admin"]
)
async def test_case_insensitive_rule_covers_every_spelling(make_client: MakeClient, uri: str) -> None:
    """A path_case: insensitive rule denies /ADMIN, /%41dmin and dot-segment detours alike."""
    client = await make_client({"access_control": {"rules": AMBIGUITY_RULES}})

    response = await forward_auth(client, uri=uri)

    assert response.status == 403
