"""Login through the portal, then forward-auth and auth-request with the session cookie."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from tests.http.helpers import (
    CSRF_COOKIE,
    PASSWORD,
    SESSION_COOKIE,
    MakeClient,
    add_user,
    auth_request,
    cookie_header,
    csrf_pair,
    forward_auth,
    login,
    services,
    signed_in,
)
from tests.pg import both_storage_engines  # noqa: F401 - runs this module on SQLite and PostgreSQL

Client = TestClient[Any, Any]
LOGIN_URL = "http://localhost:8080/auth/login?rd="


async def test_login_sets_a_safe_session_cookie(client: Client) -> None:
    """A successful login answers 303 and sets an HttpOnly, SameSite=Lax cookie without Secure over http."""
    await add_user(client)

    response = await login(client)

    assert response.status == 303
    morsel = response.cookies[SESSION_COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Lax"
    assert not morsel["secure"]
    assert morsel["path"] == "/"
    assert not morsel["domain"]  # localhost gets a host-only cookie
    assert not morsel["max-age"]  # a browser-session cookie unless "remember me"


async def test_secure_config_marks_the_session_cookie_secure(make_client: MakeClient) -> None:
    """With session.secure true the Set-Cookie header carries Secure."""
    client = await make_client({"session": {"secure": True}})
    await add_user(client)

    response = await login(client)

    assert response.status == 303
    set_cookie = next(v for v in response.headers.getall("Set-Cookie") if v.startswith(SESSION_COOKIE))
    assert "Secure" in set_cookie
    assert "HttpOnly" in set_cookie


async def test_remember_me_gives_the_cookie_a_max_age(client: Client) -> None:
    """Ticking "remember me" makes the cookie persistent for session.remember_me."""
    await add_user(client)

    response = await login(client, remember=True)

    assert response.cookies[SESSION_COOKIE]["max-age"] == str(86400)


async def test_forward_auth_returns_identity_headers(client: Client) -> None:
    """A signed-in request gets 200 with Remote-User, Remote-Email, Remote-Groups and Remote-Name."""
    await add_user(client, groups=("dev", "ops"), name="Alice A")
    session = await signed_in(client)

    response = await forward_auth(client, session)

    assert response.status == 200
    assert response.headers["Remote-User"] == "alice"
    assert response.headers["Remote-Email"] == "alice@example.com"
    assert response.headers["Remote-Groups"] == "dev,ops"
    assert response.headers["Remote-Name"] == "Alice A"


async def test_auth_request_returns_identity_headers(client: Client) -> None:
    """nginx's auth-request endpoint answers a signed-in request the same way."""
    await add_user(client)
    session = await signed_in(client)

    response = await auth_request(client, session)

    assert response.status == 200
    assert response.headers["Remote-User"] == "alice"
    assert response.headers["Remote-Email"] == "alice@example.com"


async def test_identity_header_names_follow_the_config(make_client: MakeClient) -> None:
    """identity_headers renames every header the gateway answers with."""
    names = {"user": "X-Auth-User", "email": "X-Auth-Email", "groups": "X-Auth-Groups", "name": "X-Auth-Name"}
    client = await make_client({"identity_headers": names})
    await add_user(client, name="Alice A")
    session = await signed_in(client)

    response = await forward_auth(client, session)

    assert response.status == 200
    assert response.headers["X-Auth-User"] == "alice"
    assert response.headers["X-Auth-Email"] == "alice@example.com"
    assert response.headers["X-Auth-Groups"] == "dev"
    assert response.headers["X-Auth-Name"] == "Alice A"
    assert "Remote-User" not in response.headers


async def test_bypass_rule_answers_200_without_identity(client: Client) -> None:
    """A bypass rule lets anonymous requests through and sends no identity headers."""
    response = await forward_auth(client, host="public.localhost")

    assert response.status == 200
    assert "Remote-User" not in response.headers


async def test_anonymous_browser_navigation_is_redirected_to_login(client: Client) -> None:
    """An unauthenticated GET that accepts HTML gets 302 to the portal with rd = the original URL."""
    response = await forward_auth(client, uri="/page?x=1&y=2")

    assert response.status == 302
    original = "http://app.localhost/page?x=1&y=2"
    assert response.headers["Location"] == LOGIN_URL + quote(original, safe="")


@pytest.mark.parametrize(
    ("method", "accept"),
    [
        pytest.param("POST", "text/html", id="post"),
        pytest.param("GET", "application/json", id="json"),
        pytest.param("GET", "*/*", id="any"),
    ],
)
async def test_anonymous_api_request_gets_401(client: Client, method: str, accept: str) -> None:
    """A non-navigation request cannot follow a redirect, so it gets 401 with the login URL."""
    response = await forward_auth(client, method=method, accept=accept)

    assert response.status == 401
    assert response.headers["Location"].startswith(LOGIN_URL)


async def test_anonymous_auth_request_gets_401_with_location(client: Client) -> None:
    """auth-request always answers 401 and leaves the redirect to nginx via Location."""
    response = await auth_request(client, url="http://app.localhost/a?b=c")

    assert response.status == 401
    assert response.headers["Location"] == LOGIN_URL + quote("http://app.localhost/a?b=c", safe="")


async def test_host_outside_every_cookie_domain_is_forbidden(make_client: MakeClient) -> None:
    """A host no session cookie can reach gets 403, since a login could never help."""
    client = await make_client({"access_control": {"default_policy": "one_factor"}})

    response = await forward_auth(client, host="other.example")

    assert response.status == 403


async def test_logout_deletes_the_session(client: Client) -> None:
    """After logout a copied session cookie no longer passes forward-auth."""
    await add_user(client)
    session = await signed_in(client)
    secret, token = await csrf_pair(client)

    response = await client.post(
        "/auth/logout",
        data={"csrf_token": token},
        headers=cookie_header(**{CSRF_COOKIE: secret, SESSION_COOKIE: session}),
        allow_redirects=False,
    )

    assert response.status == 303
    assert response.headers["Location"] == "/auth/login?signed_out=1"
    assert response.cookies[SESSION_COOKIE].value == ""
    user = await services(client).store.get_user_by_name("alice")
    assert user is not None
    assert await services(client).store.list_user_sessions(user.id) == []
    assert (await forward_auth(client, session)).status == 302


async def test_every_login_gets_a_new_session_id(client: Client) -> None:
    """Logging in again with a session cookie replaces it; the old cookie stops working."""
    await add_user(client)
    first = await signed_in(client)

    second = await signed_in(client, session=first)

    assert second != first
    assert (await forward_auth(client, second)).status == 200
    assert (await forward_auth(client, first)).status == 302


async def test_login_by_email(client: Client) -> None:
    """The e-mail address (any case) works in place of the username."""
    await add_user(client, email="Alice.Smith@Example.com")
    session = await signed_in(client, "alice.smith@EXAMPLE.com")

    response = await forward_auth(client, session)

    assert response.headers["Remote-User"] == "alice"


async def test_username_is_case_insensitive(client: Client) -> None:
    """ALICE signs in as alice."""
    await add_user(client)

    assert (await login(client, "ALICE")).status == 303


@pytest.mark.parametrize(
    ("username", "password"),
    [
        pytest.param("alice", "wrong password", id="wrong password"),
        pytest.param("mallory", PASSWORD, id="unknown user"),
        pytest.param("mallory@example.com", PASSWORD, id="unknown e-mail"),
    ],
)
async def test_failed_login_is_generic(client: Client, username: str, password: str) -> None:
    """Wrong password and unknown user get the same status and message, and no session."""
    await add_user(client)

    response = await login(client, username, password)

    assert response.status == 401
    assert "Incorrect username or password." in await response.text()
    assert SESSION_COOKIE not in response.cookies


async def test_disabled_user_is_refused(client: Client) -> None:
    """A disabled account cannot sign in, with the same generic message."""
    user = await add_user(client)
    await services(client).store.set_disabled(user.id, True)

    response = await login(client)

    assert response.status == 401
    assert "Incorrect username or password." in await response.text()
    assert SESSION_COOKIE not in response.cookies


async def test_disabling_a_user_ends_forward_auth(client: Client, clock: Any) -> None:
    """A session of a user disabled meanwhile is refused once the cache refreshes."""
    user = await add_user(client)
    session = await signed_in(client)
    assert (await forward_auth(client, session)).status == 200

    await services(client).store.set_disabled(user.id, True)
    clock.advance(services(client).config.session.cache_ttl)

    assert (await forward_auth(client, session)).status == 302


async def test_empty_fields_get_400(client: Client) -> None:
    """Submitting without a username or password is a 400 asking for both."""
    await add_user(client)

    response = await login(client, "", "")

    assert response.status == 400
    assert "Enter your username and password." in await response.text()


async def test_safe_rd_is_followed_after_login(client: Client) -> None:
    """An rd under a cookie domain is where the browser goes after login."""
    await add_user(client)

    response = await login(client, rd="http://app.localhost/page?x=1")

    assert response.status == 303
    assert response.headers["Location"] == "http://app.localhost/page?x=1"


@pytest.mark.parametrize(
    "rd",
    [
        "//evil.example",
        "https://localhost@evil.example",
        "http://localhost@evil.example/",
        "javascript:alert(1)",
        "http://evil.example/",
        "http://localhost.evil.example/",
        "http:\\\\evil.example",
        "/\\evil.example",
        "http://app.localhost\r\nSet-Cookie: x=1",
        "data:text/html,<script>alert(1)</script>",
    ],
)
async def test_unsafe_rd_goes_to_the_portal_home(client: Client, rd: str) -> None:
    """An rd outside the cookie domains is ignored: the browser lands on the portal home."""
    await add_user(client)

    response = await login(client, rd=rd)

    assert response.status == 303
    assert response.headers["Location"] == "/auth/"


async def test_default_redirect_url_is_used_without_rd(make_client: MakeClient) -> None:
    """Without rd the cookie domain's default_redirect_url is the destination."""
    cookies = [
        {
            "domain": "localhost",
            "portal_url": "http://localhost:8080/auth",
            "default_redirect_url": "http://home.localhost/",
        }
    ]
    client = await make_client({"session": {"cookies": cookies}})
    await add_user(client)

    response = await login(client)

    assert response.headers["Location"] == "http://home.localhost/"


async def test_login_page_keeps_only_a_safe_rd(client: Client) -> None:
    """The login form carries a safe rd in a hidden field and drops an unsafe one."""
    await add_user(client)

    safe = await client.get("/auth/login", params={"rd": "http://app.localhost/x"})
    unsafe = await client.get("/auth/login", params={"rd": "//evil.example"})

    assert 'name="rd" value="http://app.localhost/x"' in await safe.text()
    assert "evil.example" not in await unsafe.text()


async def test_signed_in_login_page_moves_on(client: Client) -> None:
    """Opening the login page with a live session goes straight to rd."""
    await add_user(client)
    session = await signed_in(client)

    response = await client.get(
        "/auth/login",
        params={"rd": "http://app.localhost/x"},
        headers=cookie_header(**{SESSION_COOKIE: session}),
        allow_redirects=False,
    )

    assert response.status == 303
    assert response.headers["Location"] == "http://app.localhost/x"


async def test_home_page_shows_the_signed_in_user(client: Client) -> None:
    """The portal home names the user and offers a sign-out form."""
    await add_user(client)
    session = await signed_in(client)

    response = await client.get("/auth/", headers=cookie_header(**{SESSION_COOKIE: session}))

    assert response.status == 200
    text = await response.text()
    assert '<strong id="whoami">alice</strong>' in text
    assert 'action="/auth/logout"' in text


async def test_home_page_without_session_goes_to_login(client: Client) -> None:
    """The portal home sends anonymous visitors to the login page."""
    response = await client.get("/auth/", allow_redirects=False)

    assert response.status == 303
    assert response.headers["Location"] == "/auth/login"


async def test_portal_pages_carry_security_headers(client: Client) -> None:
    """Portal pages forbid framing and caching."""
    await add_user(client)

    response = await client.get("/auth/login")

    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


async def test_health(client: Client, storage_engine: str) -> None:
    """/api/health answers 200 {"status": "ok"} while the database works (PostgreSQL: and the
    revocation channel's state)."""
    expected: dict[str, str] = {"status": "ok"}
    if storage_engine == "postgres":
        assert await services(client).store.wait_listening(10.0)  # type: ignore[attr-defined]
        expected |= {"engine": "postgres", "revocations": "live"}
    response = await client.get("/api/health")

    assert response.status == 200
    assert await response.json() == expected


async def test_group_rule_forbids_non_members(client: Client) -> None:
    """A rule for group:admins answers 403 to a signed-in user outside the group."""
    await add_user(client, groups=("dev",))
    session = await signed_in(client)

    assert (await forward_auth(client, session, host="admin.localhost")).status == 403


async def test_group_rule_admits_members(client: Client) -> None:
    """A rule for group:admins answers 200 to a member."""
    await add_user(client, "root", groups=("admins",))
    session = await signed_in(client, "root")

    response = await forward_auth(client, session, host="admin.localhost")

    assert response.status == 200
    assert response.headers["Remote-Groups"] == "admins"


async def test_group_rule_sends_anonymous_users_to_login(client: Client) -> None:
    """An anonymous request to a subject rule is asked to log in first, not refused."""
    response = await forward_auth(client, host="admin.localhost")

    assert response.status == 302
    assert response.headers["Location"].startswith(LOGIN_URL)


async def test_deny_policy_is_403_even_when_signed_in(client: Client) -> None:
    """A host under the default deny policy is refused for everyone."""
    await add_user(client)
    session = await signed_in(client)

    assert (await forward_auth(client, session, host="localhost")).status == 403
    assert (await forward_auth(client, host="localhost")).status == 403
