"""authgate answers Traefik's ForwardAuth the way deploy/traefik/dynamic.yml expects (no Traefik binary here).

What Traefik does, and so what these tests send and check: for every request it makes a GET to
`forwardAuth.address` carrying the client's headers plus X-Forwarded-Method, -Proto, -Host (with the
port when it is not the default), -Uri, -For and -Port. A non-2xx answer goes back to the client as is
(status, Location, body); on 2xx only the headers listed in `authResponseHeaders` are copied onto the
request to the app, after deleting the client's copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from tests.e2e.support import HTML, JSON, ROOT, SESSION_COOKIE, ProxyClient, Stack

pytestmark = pytest.mark.e2e

DYNAMIC = yaml.safe_load((ROOT / "deploy/traefik/dynamic.yml").read_text())
MIDDLEWARE = DYNAMIC["http"]["middlewares"]["authgate"]["forwardAuth"]


async def test_dynamic_yml_does_not_trust_client_forward_headers() -> None:
    """The example middleware lets Traefik set X-Forwarded-* itself instead of trusting the client's."""
    assert MIDDLEWARE["trustForwardHeader"] is False
    assert urlsplit(MIDDLEWARE["address"]).path == "/api/authz/forward-auth"


async def forward_auth(
    http: aiohttp.ClientSession,
    stack: Stack,
    *,
    method: str = "GET",
    uri: str = "/some/page",
    host: str | None = None,
    client_headers: Mapping[str, str] | None = None,
) -> tuple[int, Any, str]:
    """Send what Traefik's ForwardAuth would send for a client request to http://localhost:PORT{uri}."""
    headers = {
        **(client_headers or {}),
        "X-Forwarded-Method": method,
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": host or f"localhost:{stack.port}",
        "X-Forwarded-Uri": uri,
        "X-Forwarded-For": "127.0.0.1",
        "X-Forwarded-Port": str(stack.port),
    }
    path = urlsplit(MIDDLEWARE["address"]).path
    url = f"http://127.0.0.1:{stack.authgate_port}{path}"
    async with http.get(url, headers=headers, allow_redirects=False) as response:
        return response.status, response.headers, await response.text()


async def test_traefik_browser_without_session_is_redirected(
    nginx_stack: Stack, http: aiohttp.ClientSession
) -> None:
    """An anonymous browser navigation gets a 302 to the portal, which Traefik hands to the browser."""
    status, headers, _ = await forward_auth(http, nginx_stack, uri="/some/page?x=1", client_headers=HTML)

    assert status == 302
    assert headers["Location"] == nginx_stack.login_url(f"{nginx_stack.origin}/some/page?x=1")


@pytest.mark.parametrize(
    ("method", "client_headers"),
    [("GET", {**JSON, "X-Requested-With": "XMLHttpRequest"}), ("POST", HTML)],
    ids=["xhr", "form-post"],
)
async def test_traefik_request_that_cannot_follow_a_redirect_gets_401(
    nginx_stack: Stack, http: aiohttp.ClientSession, method: str, client_headers: dict[str, str]
) -> None:
    """An anonymous XHR or POST gets 401 (with the login URL in Location) instead of a redirect."""
    status, headers, _ = await forward_auth(http, nginx_stack, method=method, client_headers=client_headers)

    assert status == 401
    assert headers["Location"] == nginx_stack.login_url(f"{nginx_stack.origin}/some/page")


async def test_traefik_signed_in_gets_identity_in_listed_headers(
    nginx_stack: Stack, http: aiohttp.ClientSession
) -> None:
    """A signed-in request gets 200 and the identity in exactly the headers Traefik copies to the app."""
    cookie = await ProxyClient(http, nginx_stack.port).session_for("alice")
    spoofed = {"Remote-User": "mallory", "Cookie": f"{SESSION_COOKIE}={cookie}"}

    status, headers, _ = await forward_auth(http, nginx_stack, client_headers={**HTML, **spoofed})

    assert status == 200
    listed = MIDDLEWARE["authResponseHeaders"]
    identity = {name.lower() for name in headers if name.lower().startswith("remote-")}
    assert identity == {name.lower() for name in listed}
    assert {name: headers.getall(name) for name in listed} == {
        "Remote-User": ["alice"],
        "Remote-Email": ["alice@example.com"],
        "Remote-Groups": ["admins"],
        "Remote-Name": ["Alice Liddell"],
    }


async def test_traefik_denied_path_gets_403(nginx_stack: Stack, http: aiohttp.ClientSession) -> None:
    """A deny rule answers 403 through the ForwardAuth endpoint, signed in or not."""
    cookie = await ProxyClient(http, nginx_stack.port).session_for("alice")

    anonymous, _, _ = await forward_auth(http, nginx_stack, uri="/forbidden", client_headers=HTML)
    signed_in, _, _ = await forward_auth(
        http, nginx_stack, uri="/forbidden", client_headers={**HTML, "Cookie": f"{SESSION_COOKIE}={cookie}"}
    )

    assert (anonymous, signed_in) == (403, 403)


@pytest.mark.parametrize(
    ("uri", "host"),
    [
        ("/admin%09", None),
        ("/admin%00", None),
        ("/admin%23x", None),  # Traefik re-encodes "#" in a request line, as Caddy does
        ("/admin%FF", None),
        ("/admin;x", None),
        ("/admin%3bx", None),
        ("/admin%20", None),
        ("/public%5C..%5Cadmin", None),
        ("/admin%2f", None),
        ("/x", "localhost:8080:1"),
        ("/x", "a@b"),
        ("/x", "h" * 300),
    ],
)
async def test_traefik_gets_a_400_it_passes_through_for_input_authgate_refuses(
    nginx_stack: Stack, http: aiohttp.ClientSession, uri: str, host: str | None
) -> None:
    """What authgate cannot judge is a 400 with the reason; Traefik hands a non-2xx to the client as is."""
    status, _, text = await forward_auth(http, nginx_stack, uri=uri, host=host, client_headers=HTML)

    assert status == 400
    assert text.startswith("400 bad request: ")
