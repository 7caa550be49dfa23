"""Sign-in through external providers, against real provider processes (oidc-provider-mock, a GitHub).

The browser's part is played by hand: the portal's button (a POST with CSRF), the provider's
authorization form, and the callback carrying the state cookie, exactly as a browser sends them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from itsdangerous import URLSafeTimedSerializer

from gateway.accounts import audit
from gateway.models import Level
from tests.external.providers import (
    OIDC_CLIENT_ID,
    github_provider,
    github_provider_config,
    oidc_provider,
    oidc_provider_config,
    put_github_user,
    put_oidc_user,
)
from tests.http.helpers import (
    CSRF_COOKIE,
    KEY_A,
    PENDING_COOKIE,
    PORTAL_ORIGIN,
    SESSION_COOKIE,
    Clock,
    MakeClient,
    add_totp_device,
    add_user,
    cookie_header,
    csrf_pair,
    forward_auth,
    portal_get,
    portal_post,
    registered_session,
    services,
    signed_in,
    submit_code,
    totp_code,
)
from tests.webauthn_authenticator import SoftAuthenticator

STATE_COOKIE = "authgate_ext"
LINK_COOKIE = "authgate_ext_link"
CSRF_PAGE = "/auth/recover"  # a page with a form even before any account exists
TOKEN_MAX_AGE = 30  # seconds: the provider's ID tokens expire soon, so a test can outlive one


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with oidc_provider(tmp_path_factory.mktemp("oidc"), token_max_age=TOKEN_MAX_AGE) as url:
        yield url


@pytest.fixture(scope="module")
def github(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with github_provider(tmp_path_factory.mktemp("github")) as url:
        yield url


@pytest.fixture
async def http() -> Any:
    """The browser's connection to the provider (cookies are not needed there)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def with_provider(issuer: str, **extra: Any) -> dict[str, Any]:
    return {"external_login": {"providers": [oidc_provider_config(issuer, **extra)]}}


async def press_button(
    client: TestClient[Any, Any], provider: str = "mock", *, rd: str = "", session: str | None = None
) -> tuple[str, str]:
    """Press "Sign in with ..." on the login page; return (provider URL, state cookie)."""
    secret, token = await csrf_pair(client, CSRF_PAGE)
    cookies = {CSRF_COOKIE: secret, **({SESSION_COOKIE: session} if session else {})}
    response = await client.post(
        f"/auth/login/external/{provider}",
        data={"csrf_token": token, "rd": rd},
        headers=cookie_header(**cookies),
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()
    return response.headers["Location"], response.cookies[STATE_COOKIE].value


async def authorize_at_provider(http: aiohttp.ClientSession, url: str, form: dict[str, str]) -> str:
    """Submit the provider's authorization form; return the callback path (with its query)."""
    async with http.post(url, data=form, allow_redirects=False) as answer:
        assert answer.status == 302, await answer.text()
        back = urlsplit(answer.headers["Location"])
    assert back.netloc == "localhost:8080", back
    return f"{back.path}?{back.query}"


async def callback(
    client: TestClient[Any, Any], path: str, state: str | None, **cookies: str
) -> aiohttp.ClientResponse:
    sent = {**({STATE_COOKIE: state} if state else {}), **cookies}
    return await client.get(path, headers=cookie_header(**sent) if sent else {}, allow_redirects=False)


async def sign_in_with(
    client: TestClient[Any, Any], http: aiohttp.ClientSession, sub: str, *, rd: str = "", **cookies: str
) -> aiohttp.ClientResponse:
    """The whole trip: button, provider form (as `sub`), callback."""
    url, state = await press_button(client, rd=rd, session=cookies.get(SESSION_COOKIE))
    path = await authorize_at_provider(http, url, {"sub": sub})
    return await callback(client, path, state, **cookies)


def verified(email: str, **claims: Any) -> dict[str, Any]:
    return {"email": email, "email_verified": True, **claims}


async def events(client: TestClient[Any, Any], event: str) -> list[Any]:
    return await services(client).store.list_audit(event=event)


# -- the request we send ---------------------------------------------------------------------------


async def test_button_sends_state_nonce_and_pkce_s256(make_client: MakeClient, issuer: str) -> None:
    """The provider is asked with a fresh state and nonce and an S256 code challenge, to our callback."""
    client = await make_client(with_provider(issuer))
    url, state_cookie = await press_button(client)
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(f"{issuer}/oauth2/authorize?")
    assert query["response_type"] == ["code"]
    assert query["client_id"] == [OIDC_CLIENT_ID]
    assert query["redirect_uri"] == ["http://localhost:8080/auth/login/external/mock/callback"]
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) == 43
    assert len(query["state"][0]) >= 43 and len(query["nonce"][0]) >= 43
    assert query["scope"] == ["openid email profile"]
    # The verifier and nonce travel in the signed cookie, not in the URL.
    assert query["state"][0] != (await press_button(client))[0]
    assert state_cookie


async def test_login_page_shows_one_button_per_provider(make_client: MakeClient, issuer: str) -> None:
    """Each configured provider gets a labelled button in its own CSRF-protected form."""
    client = await make_client(with_provider(issuer))
    await add_user(client)
    text = await (await client.get("/auth/login?rd=http://app.localhost/x")).text()
    assert 'action="/auth/login/external/mock"' in text
    assert ">Sign in with Mock IdP</button>" in text
    assert 'name="rd" value="http://app.localhost/x"' in text


async def test_start_without_csrf_is_refused(make_client: MakeClient, issuer: str) -> None:
    """Another site cannot start a sign-in in the user's browser (login CSRF)."""
    client = await make_client(with_provider(issuer))
    response = await client.post("/auth/login/external/mock", data={"rd": ""}, allow_redirects=False)
    assert response.status == 400
    assert STATE_COOKIE not in response.cookies


async def test_unknown_provider_is_a_clear_404(make_client: MakeClient, issuer: str) -> None:
    """A callback or button for a provider that is not configured gets a page, not a 500."""
    client = await make_client(with_provider(issuer))
    response = await client.get("/auth/login/external/nope/callback?code=x&state=y")
    assert response.status == 404
    assert "no such sign-in provider" in await response.text()


async def test_unreachable_provider_is_a_clear_502(make_client: MakeClient) -> None:
    """A provider that does not answer gives a page saying so, after the timeout, never a traceback."""
    client = await make_client(with_provider("http://127.0.0.1:9", timeout=2))
    secret, token = await csrf_pair(client, CSRF_PAGE)
    response = await client.post(
        "/auth/login/external/mock",
        data={"csrf_token": token},
        headers=cookie_header(**{CSRF_COOKIE: secret}),
    )
    assert response.status == 502
    assert "cannot be reached" in await response.text()


# -- signing in ------------------------------------------------------------------------------------


async def test_linked_account_signs_in_at_level_one(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """A linked identity gets a fresh one-factor session that forward-auth accepts, and goes to rd."""
    client = await make_client(with_provider(issuer))
    alice = await add_user(client)
    put_oidc_user(issuer, "sub-alice", verified("alice@example.com"))
    await services(client).store.add_external_link(alice.id, "mock", "sub-alice", email="", at=0)
    response = await sign_in_with(client, http, "sub-alice", rd="http://app.localhost/page")
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "http://app.localhost/page"
    session = response.cookies[SESSION_COOKIE].value
    assert response.cookies[STATE_COOKIE].value == ""  # the state is used up
    assert (await forward_auth(client, session)).status == 200
    found = await services(client).sessions.resolve(session)
    assert found is not None and found.level == Level.ONE_FACTOR
    [event] = await events(client, audit.EXTERNAL_LOGIN_SUCCEEDED)
    assert (event.target, event.detail) == ("alice", "mock")
    [link] = await services(client).store.list_external_links(alice.id)
    assert link.last_used_at is not None
    assert services(client).metrics.logins["external", "success"] == 1


async def test_disabled_account_is_refused(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """A disabled account gets no session through a link, nor a link confirmation by e-mail."""
    client = await make_client(with_provider(issuer))
    alice = await add_user(client)
    store = services(client).store
    await store.add_external_link(alice.id, "mock", "sub-disabled", email="", at=0)
    await store.set_disabled(alice.id, True)
    put_oidc_user(issuer, "sub-disabled", verified("alice@example.com"))
    put_oidc_user(issuer, "sub-disabled-2", verified("alice@example.com"))
    for sub in ("sub-disabled", "sub-disabled-2"):
        response = await sign_in_with(client, http, sub)
        assert response.status == 403
        assert "This account is disabled." in await response.text()
        assert SESSION_COOKIE not in response.cookies and LINK_COOKIE not in response.cookies


async def test_unlinked_identity_without_auto_create_is_refused(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """No account and auto_create off (the default): a clear refusal, nothing created."""
    client = await make_client(with_provider(issuer))
    await add_user(client)
    put_oidc_user(issuer, "sub-stranger", verified("stranger@example.com"))
    response = await sign_in_with(client, http, "sub-stranger")
    assert response.status == 400
    assert "No account here is linked to your Mock IdP account" in await response.text()
    assert SESSION_COOKIE not in response.cookies
    assert await services(client).store.count_users() == 1
    [event] = await events(client, audit.EXTERNAL_LOGIN_FAILED)
    assert event.detail.startswith("mock: no account")
    assert services(client).metrics.logins["external", "failure"] == 1


async def test_auto_create_makes_a_passwordless_account_with_a_unique_name(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """auto_create: a new account named from preferred_username (made unique), linked, in no group."""
    client = await make_client(with_provider(issuer, auto_create=True, groups=["staff"]))
    await add_user(client, "ada", email="ada@elsewhere.example.com")
    claims = verified("ada@example.com", preferred_username="Ada", name="Ada Lovelace", groups=["admins"])
    put_oidc_user(issuer, "sub-ada", claims)
    response = await sign_in_with(client, http, "sub-ada")
    assert response.status == 303, await response.text()
    store = services(client).store
    user = await store.get_user_by_name("ada-2")
    assert user is not None
    assert (user.email, user.display_name, user.groups) == ("ada@example.com", "Ada Lovelace", ("staff",))
    assert (await store.find_login("ada-2")) == (user, None)  # no password
    assert [e.target for e in await events(client, audit.EXTERNAL_ACCOUNT_CREATED)] == ["ada-2"]
    # The second sign-in uses the link: no second account.
    again = await sign_in_with(client, http, "sub-ada")
    assert again.status == 303
    assert await store.count_users() == 2


async def test_allow_list_refuses_other_domains(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """An e-mail outside allow.email_domains is refused, even with auto_create on."""
    client = await make_client(with_provider(issuer, auto_create=True))
    put_oidc_user(issuer, "sub-evil", verified("mallory@evil.example.org"))
    response = await sign_in_with(client, http, "sub-evil")
    assert response.status == 403
    assert "not allowed to sign in here" in await response.text()
    assert await services(client).store.count_users() == 0


async def test_unverified_email_matches_no_allow_list(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """email_verified false: the address does not count, so the domain allow-list does not admit it."""
    client = await make_client(with_provider(issuer, auto_create=True))
    put_oidc_user(issuer, "sub-unverified", {"email": "ada@example.com", "email_verified": False})
    response = await sign_in_with(client, http, "sub-unverified")
    assert response.status == 403


async def test_groups_allow_list_admits_by_group(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """allow.groups admits a member of a listed group whatever their e-mail domain."""
    client = await make_client(with_provider(issuer, auto_create=True, allow={"groups": ["staff"]}))
    put_oidc_user(issuer, "sub-staff", verified("eve@contractor.example.org", groups=["staff"]))
    put_oidc_user(issuer, "sub-other", verified("oscar@contractor.example.org", groups=["other"]))
    assert (await sign_in_with(client, http, "sub-staff")).status == 303
    assert (await sign_in_with(client, http, "sub-other")).status == 403


# -- linking to an existing account ------------------------------------------------------------------


async def test_same_email_links_only_after_the_accounts_password(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """An account with the same verified e-mail is linked after its password, never silently."""
    client = await make_client(with_provider(issuer, auto_create=True))
    alice = await add_user(client)
    put_oidc_user(issuer, "sub-alice2", verified("alice@example.com"))
    response = await sign_in_with(client, http, "sub-alice2", rd="http://app.localhost/after")
    assert response.status == 303
    assert response.headers["Location"] == "/auth/login/external/link"
    assert SESSION_COOKIE not in response.cookies
    pending = response.cookies[LINK_COOKIE].value
    store = services(client).store
    assert await store.list_external_links(alice.id) == []

    page = await client.get("/auth/login/external/link", headers=cookie_header(**{LINK_COOKIE: pending}))
    assert page.status == 200
    assert "alice@example.com" in await page.text()

    async def confirm(password: str) -> aiohttp.ClientResponse:
        secret, token = await csrf_pair(client)
        return await client.post(
            "/auth/login/external/link",
            data={"csrf_token": token, "password": password},
            headers=cookie_header(**{LINK_COOKIE: pending, CSRF_COOKIE: secret}),
            allow_redirects=False,
        )

    wrong = await confirm("not the password")
    assert wrong.status == 401
    assert await store.list_external_links(alice.id) == []
    right = await confirm("correct horse battery")
    assert right.status == 303, await right.text()
    assert right.headers["Location"] == "http://app.localhost/after"
    assert (await forward_auth(client, right.cookies[SESSION_COOKIE].value)).status == 200
    [link] = await store.list_external_links(alice.id)
    assert (link.provider, link.subject) == ("mock", "sub-alice2")
    [event] = await events(client, audit.EXTERNAL_ACCOUNT_LINKED)
    assert (event.target, event.detail) == ("alice", "mock (alice@example.com)")
    assert [e.target for e in await events(client, audit.LOGIN_FAILED)] == ["alice"]


async def test_link_confirmation_needs_its_cookie(make_client: MakeClient, issuer: str) -> None:
    """Without (or with a forged) link cookie the confirmation page sends the user back to sign in."""
    client = await make_client(with_provider(issuer))
    response = await client.get("/auth/login/external/link", headers=cookie_header(**{LINK_COOKIE: "forged"}))
    assert response.status == 400
    assert "expired" in await response.text()


async def test_linking_off_refuses_same_email(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """link: false: an existing account with that e-mail is not offered for linking."""
    client = await make_client(with_provider(issuer, link=False, auto_create=True))
    await add_user(client)
    put_oidc_user(issuer, "sub-alice3", verified("alice@example.com"))
    response = await sign_in_with(client, http, "sub-alice3")
    assert response.status == 400
    assert "cannot be linked" in await response.text()


# -- refusing tampered or foreign callbacks ------------------------------------------------------------


async def test_changed_state_is_refused(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """A callback whose state is not this browser's is refused before the code is used."""
    client = await make_client(with_provider(issuer, auto_create=True))
    put_oidc_user(issuer, "sub-s", verified("s@example.com"))
    url, state = await press_button(client)
    path = await authorize_at_provider(http, url, {"sub": "sub-s"})
    tampered = re.sub(r"state=[^&]+", "state=attacker", path)
    response = await callback(client, tampered, state)
    assert response.status == 400
    assert "could not be verified" in await response.text()
    assert SESSION_COOKIE not in response.cookies
    # The genuine callback still works afterwards: the code was never redeemed.
    assert (await callback(client, path, state)).status == 303


async def test_callback_without_the_state_cookie_is_refused(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """A callback URL opened in another browser (no state cookie) signs nobody in."""
    client = await make_client(with_provider(issuer, auto_create=True))
    put_oidc_user(issuer, "sub-s2", verified("s2@example.com"))
    url, _state = await press_button(client)
    path = await authorize_at_provider(http, url, {"sub": "sub-s2"})
    assert (await callback(client, path, None)).status == 400
    other_state = (await press_button(client))[1]  # this browser's own, for another sign-in
    assert (await callback(client, path, other_state)).status == 400


async def test_changed_or_reused_code_is_refused(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """The provider refuses a changed code and a code used twice; the page says so clearly."""
    client = await make_client(with_provider(issuer, auto_create=True))
    put_oidc_user(issuer, "sub-c", verified("c@example.com"))
    url, state = await press_button(client)
    path = await authorize_at_provider(http, url, {"sub": "sub-c"})
    changed = re.sub(r"code=[^&]+", "code=forged-code", path)
    assert (await callback(client, changed, state)).status == 400
    assert (await callback(client, path, state)).status == 303
    reused = await callback(client, path, state)
    assert reused.status == 400
    assert SESSION_COOKIE not in reused.cookies


async def test_error_answer_is_reported(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """An error answer with this browser's state says "you cancelled"; without the state it is refused."""
    client = await make_client(with_provider(issuer))
    url, state = await press_button(client)
    # oidc-provider-mock's Deny button answers without the state, which proves nothing about the
    # browser: refused like any callback that does not answer this browser's sign-in.
    path = await authorize_at_provider(http, url, {"action": "deny"})
    assert "error=access_denied" in path and "state=" not in path
    assert (await callback(client, path, state)).status == 400
    # A provider that answers as RFC 6749 4.1.2.1 says (with the state) gets a clear page.
    sent_state = parse_qs(urlsplit(url).query)["state"][0]
    query = urlencode({"error": "access_denied", "error_description": "<b>no</b>", "state": sent_state})
    response = await callback(client, f"/auth/login/external/mock/callback?{query}", state)
    assert response.status == 403
    text = await response.text()
    assert "You cancelled" in text and "<b>no</b>" not in text


async def test_iss_mismatch_is_refused(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """RFC 9207: a callback naming another issuer (a mix-up attack) is refused."""
    client = await make_client(with_provider(issuer, auto_create=True))
    put_oidc_user(issuer, "sub-i", verified("i@example.com"))
    url, state = await press_button(client)
    path = await authorize_at_provider(http, url, {"sub": "sub-i"})
    mixed = f"{path}&{urlencode({'iss': 'https://evil.example.com'})}"
    assert (await callback(client, mixed, state)).status == 400
    matching = f"{path}&{urlencode({'iss': issuer})}"
    assert (await callback(client, matching, state)).status == 303


async def test_nonce_mismatch_is_refused(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """An ID token whose nonce is not this sign-in's (a replayed token) is refused."""
    client = await make_client(with_provider(issuer, auto_create=True))
    put_oidc_user(issuer, "sub-n", verified("n@example.com"))
    url, state = await press_button(client)
    path = await authorize_at_provider(http, url, {"sub": "sub-n"})
    serializer = URLSafeTimedSerializer([KEY_A], salt="authgate.external-login.v1")
    payload = serializer.loads(state)
    forged = serializer.dumps({**payload, "nonce": "another-sign-in's-nonce"})
    response = await callback(client, path, forged)
    assert response.status == 400
    assert "could not be verified" in await response.text()
    [event] = await events(client, audit.EXTERNAL_LOGIN_FAILED)
    assert "nonce" in event.detail


async def test_bad_signature_is_refused(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """An ID token that does not verify against the provider's key is refused."""
    from joserfc.jwk import KeySet, RSAKey

    client = await make_client(with_provider(issuer, auto_create=True))
    put_oidc_user(issuer, "sub-sig", verified("sig@example.com"))
    jwks = await (await http.get(f"{issuer}/jwks")).json()
    impostor = RSAKey.generate_key(2048, parameters={"kid": jwks["keys"][0].get("kid", "")})
    external = services(client).external_login
    await external.discovery(external.provider("mock"))
    external._jwks["mock"] = (services(client).clock(), KeySet([impostor]).as_dict(private=False))
    response = await sign_in_with(client, http, "sub-sig")
    assert response.status == 400
    [event] = await events(client, audit.EXTERNAL_LOGIN_FAILED)
    assert "bad_signature" in event.detail


async def test_expired_id_token_is_refused(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession, clock: Clock
) -> None:
    """An ID token past its exp (plus a minute of leeway) is refused."""
    client = await make_client(with_provider(issuer, auto_create=True))
    put_oidc_user(issuer, "sub-old", verified("old@example.com"))
    url, state = await press_button(client)
    path = await authorize_at_provider(http, url, {"sub": "sub-old"})
    clock.advance(TOKEN_MAX_AGE + 120)
    response = await callback(client, path, state)
    assert response.status == 400
    [event] = await events(client, audit.EXTERNAL_LOGIN_FAILED)
    assert "expired" in event.detail


async def test_expired_state_is_refused(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession, clock: Clock
) -> None:
    """A callback after login_ttl is refused, whatever the provider says."""
    client = await make_client(with_provider(issuer, auto_create=True))
    put_oidc_user(issuer, "sub-late", verified("late@example.com"))
    url, state = await press_button(client)
    path = await authorize_at_provider(http, url, {"sub": "sub-late"})
    clock.advance(601)
    assert (await callback(client, path, state)).status == 400


async def test_tokens_and_codes_are_never_logged(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the code, the state, the client secret nor a token appears in the log."""
    caplog.set_level(logging.DEBUG, logger="authgate")
    client = await make_client(with_provider(issuer, auto_create=True))
    put_oidc_user(issuer, "sub-log", verified("log@example.com"))
    url, state = await press_button(client)
    path = await authorize_at_provider(http, url, {"sub": "sub-log"})
    code = parse_qs(urlsplit(path).query)["code"][0]
    assert (await callback(client, path, state)).status == 303
    assert (await callback(client, path, state)).status == 400  # a failure is logged too
    # authgate's own log (the server writes no access log; the test server's would hold the URL).
    records = [r for r in caplog.records if r.name.startswith("authgate")]
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in records)
    assert "external_login_failed" in text
    for secret in (code, state, parse_qs(urlsplit(url).query)["state"][0], "oidc-test-secret"):
        assert secret not in text


# -- two factors -------------------------------------------------------------------------------------


async def test_local_second_factor_follows_an_external_sign_in(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession, clock: Clock
) -> None:
    """two_factor: local (the default): a user with TOTP enters a code after the provider."""
    client = await make_client(with_provider(issuer))
    alice = await add_user(client)
    secret = await add_totp_device(client, alice)
    await services(client).store.add_external_link(alice.id, "mock", "sub-a2f", email="", at=0)
    put_oidc_user(issuer, "sub-a2f", verified("alice@example.com", amr=["pwd", "mfa"]))
    response = await sign_in_with(client, http, "sub-a2f", rd="http://app.localhost/v")
    assert response.status == 200
    assert SESSION_COOKIE not in response.cookies
    assert 'content="0;url=/auth/2fa"' in await response.text()
    pending = response.cookies[PENDING_COOKIE].value
    assert (await portal_get(client, "/auth/2fa", pending=pending)).status == 200
    done = await submit_code(client, totp_code(secret, clock()), pending=pending)
    assert done.status == 303, await done.text()
    assert done.headers["Location"] == "http://app.localhost/v"
    session = await services(client).sessions.resolve(done.cookies[SESSION_COOKIE].value)
    assert session is not None and session.level == Level.TWO_FACTOR


async def test_trusted_provider_amr_gives_two_factors(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """two_factor: provider and an amr with mfa: a level-two session, no local code asked."""
    client = await make_client(with_provider(issuer, two_factor="provider"))
    alice = await add_user(client)
    await add_totp_device(client, alice)
    store = services(client).store
    await store.add_external_link(alice.id, "mock", "sub-mfa", email="", at=0)
    await store.add_external_link(alice.id, "mock", "sub-pwd", email="", at=0)
    put_oidc_user(issuer, "sub-mfa", verified("alice@example.com", amr=["pwd", "mfa"]))
    put_oidc_user(issuer, "sub-pwd", verified("alice@example.com", amr=["pwd"]))
    strong = await sign_in_with(client, http, "sub-mfa")
    assert strong.status == 303
    session = await services(client).sessions.resolve(strong.cookies[SESSION_COOKIE].value)
    assert session is not None and session.level == Level.TWO_FACTOR
    [event] = await events(client, audit.EXTERNAL_LOGIN_SUCCEEDED)
    assert "amr pwd mfa" in event.detail
    # Only a password at the provider: our own second factor is still asked for.
    weak = await sign_in_with(client, http, "sub-pwd")
    assert weak.status == 200 and PENDING_COOKIE in weak.cookies


# -- the settings page -------------------------------------------------------------------------------


async def test_settings_link_list_and_unlink(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """A signed-in user links a provider from settings, sees it listed, and removes it."""
    client = await make_client(with_provider(issuer))
    alice = await add_user(client)
    session = await signed_in(client)
    put_oidc_user(issuer, "sub-settings", verified("alice.work@example.com"))
    secret, token = await csrf_pair(client)
    started = await client.post(
        "/auth/settings/external/mock/link",
        data={"csrf_token": token},
        headers=cookie_header(**{CSRF_COOKIE: secret, SESSION_COOKIE: session}),
        allow_redirects=False,
    )
    assert started.status == 303
    path = await authorize_at_provider(http, started.headers["Location"], {"sub": "sub-settings"})
    done = await callback(client, path, started.cookies[STATE_COOKIE].value, **{SESSION_COOKIE: session})
    assert done.status == 303
    assert done.headers["Location"] == "/auth/settings?done=linked"
    page = await (await portal_get(client, "/auth/settings", session=session)).text()
    assert "alice.work@example.com" in page and 'id="external-links"' in page
    [link] = await services(client).store.list_external_links(alice.id)
    removed = await portal_post(client, f"/auth/settings/external/{link.id}/unlink", {}, session=session)
    assert removed.status == 303
    assert await services(client).store.list_external_links(alice.id) == []
    assert [e.detail for e in await events(client, audit.EXTERNAL_ACCOUNT_UNLINKED)] == [
        "mock (alice.work@example.com)"
    ]


async def test_settings_link_callback_in_another_session_is_refused(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """A link started by alice cannot land on bob's account (the state names the user)."""
    client = await make_client(with_provider(issuer))
    alice = await add_user(client)
    await add_user(client, "bob")
    alice_session, bob_session = await signed_in(client), await signed_in(client, "bob")
    put_oidc_user(issuer, "sub-x", verified("x@example.com"))
    secret, token = await csrf_pair(client)
    started = await client.post(
        "/auth/settings/external/mock/link",
        data={"csrf_token": token},
        headers=cookie_header(**{CSRF_COOKIE: secret, SESSION_COOKIE: alice_session}),
        allow_redirects=False,
    )
    path = await authorize_at_provider(http, started.headers["Location"], {"sub": "sub-x"})
    done = await callback(client, path, started.cookies[STATE_COOKIE].value, **{SESSION_COOKIE: bob_session})
    assert done.status == 400
    assert await services(client).store.list_external_links(alice.id) == []


async def test_only_way_in_cannot_be_unlinked(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """An auto-created account (no password, no passkey) keeps its only link."""
    client = await make_client(with_provider(issuer, auto_create=True))
    put_oidc_user(issuer, "sub-only", verified("only@example.com", preferred_username="only"))
    response = await sign_in_with(client, http, "sub-only")
    session = response.cookies[SESSION_COOKIE].value
    user = await services(client).store.get_user_by_name("only")
    assert user is not None
    [link] = await services(client).store.list_external_links(user.id)
    refused = await portal_post(client, f"/auth/settings/external/{link.id}/unlink", {}, session=session)
    assert refused.status == 409
    assert len(await services(client).store.list_external_links(user.id)) == 1


# -- GitHub ------------------------------------------------------------------------------------------


async def github_sign_in(
    client: TestClient[Any, Any], http: aiohttp.ClientSession, login: str
) -> aiohttp.ClientResponse:
    url, state = await press_button(client, "github")
    assert "code_challenge_method=S256" in url
    path = await authorize_at_provider(http, url, {"login": login})
    return await callback(client, path, state)


async def test_github_member_of_an_allowed_org_signs_in(
    make_client: MakeClient, github: str, http: aiohttp.ClientSession
) -> None:
    """GitHub: user from /user, the verified primary e-mail from /user/emails, orgs from /user/orgs."""
    client = await make_client(
        {"external_login": {"providers": [github_provider_config(github, auto_create=True)]}}
    )
    emails = [
        {"email": "octo@unverified.example.com", "primary": False, "verified": False},
        {"email": "octo@example.com", "primary": True, "verified": True},
    ]
    put_github_user(github, "octocat", user_id=583231, emails=emails, orgs=["Acme", "other"])
    response = await github_sign_in(client, http, "octocat")
    assert response.status == 303, await response.text()
    user = await services(client).store.get_user_by_name("octocat")
    assert user is not None and user.email == "octo@example.com"
    [link] = await services(client).store.list_external_links(user.id)
    assert (link.provider, link.subject) == ("github", "583231")


async def test_github_outside_the_orgs_is_refused(
    make_client: MakeClient, github: str, http: aiohttp.ClientSession
) -> None:
    """GitHub: not a member of an allowed organisation: refused, nothing created."""
    client = await make_client(
        {"external_login": {"providers": [github_provider_config(github, auto_create=True)]}}
    )
    put_github_user(
        github,
        "outsider",
        user_id=99,
        emails=[{"email": "o@example.com", "primary": True, "verified": True}],
        orgs=[],
    )
    response = await github_sign_in(client, http, "outsider")
    assert response.status == 403
    assert await services(client).store.count_users() == 0


async def test_github_unverified_email_creates_nothing(
    make_client: MakeClient, github: str, http: aiohttp.ClientSession
) -> None:
    """GitHub: only unverified addresses: allowed by org, but no account can be made without one."""
    client = await make_client(
        {"external_login": {"providers": [github_provider_config(github, auto_create=True)]}}
    )
    emails = [{"email": "u@example.com", "primary": True, "verified": False}]
    put_github_user(github, "unverified", user_id=7, emails=emails, orgs=["acme"])
    response = await github_sign_in(client, http, "unverified")
    assert response.status == 400
    assert "verified e-mail" in await response.text()


# -- linking confirmed with a passkey -----------------------------------------------------------------


async def link_json(
    client: TestClient[Any, Any], path: str, body: dict[str, Any], link_cookie: str
) -> aiohttp.ClientResponse:
    """POST JSON as webauthn.js does on the link page (CSRF header, the link cookie)."""
    secret, token = await csrf_pair(client)
    return await client.post(
        path,
        json=body,
        headers={"X-CSRF-Token": token, **cookie_header(**{CSRF_COOKIE: secret, LINK_COOKIE: link_cookie})},
        allow_redirects=False,
    )


async def test_same_email_links_after_one_of_the_accounts_passkeys(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """The account's own passkey confirms the link; another account's passkey does not."""
    client = await make_client(with_provider(issuer))
    alice = await add_user(client)
    await add_user(client, "bob")
    alice_key, bob_key = SoftAuthenticator(), SoftAuthenticator()
    await registered_session(client, await signed_in(client), alice_key)
    await registered_session(client, await signed_in(client, "bob"), bob_key)
    put_oidc_user(issuer, "sub-alice-key", verified("alice@example.com"))
    response = await sign_in_with(client, http, "sub-alice-key", rd="http://app.localhost/k")
    pending = response.cookies[LINK_COOKIE].value
    page = await client.get("/auth/login/external/link", headers=cookie_header(**{LINK_COOKIE: pending}))
    assert 'data-webauthn="external-link"' in await page.text()

    async def options() -> tuple[str, str]:
        started = await link_json(client, "/auth/login/external/link/webauthn/options", {}, pending)
        data = await started.json()
        assert started.status == 200, data
        return data["challenge_id"], json.dumps(data["options"])

    challenge_id, opts = await options()
    foreign = bob_key.assert_(json.dumps({**json.loads(opts), "allowCredentials": []}), origin=PORTAL_ORIGIN)
    refused = await link_json(
        client,
        "/auth/login/external/link/webauthn",
        {"challenge_id": challenge_id, "credential": foreign},
        pending,
    )
    assert refused.status == 401
    assert await services(client).store.list_external_links(alice.id) == []

    challenge_id, opts = await options()
    own = alice_key.assert_(opts, origin=PORTAL_ORIGIN)
    done = await link_json(
        client,
        "/auth/login/external/link/webauthn",
        {"challenge_id": challenge_id, "credential": own},
        pending,
    )
    assert done.status == 200, await done.text()
    assert (await done.json())["next"] == "/auth/2fa"  # alice has a passkey: our second factor follows
    assert PENDING_COOKIE in done.cookies
    [link] = await services(client).store.list_external_links(alice.id)
    assert link.subject == "sub-alice-key"


async def test_admin_sees_and_removes_a_users_link(make_client: MakeClient, issuer: str) -> None:
    """The admin console lists a user's linked providers; removing one stops that sign-in path."""
    client = await make_client(with_provider(issuer))
    await add_user(client, "root", groups=("admins",))
    alice = await add_user(client)
    link = await services(client).store.add_external_link(
        alice.id, "mock", "s-admin", email="a@example.com", at=0
    )
    session = await signed_in(client, "root")
    page = await (await portal_get(client, "/auth/admin/users/alice", session=session)).text()
    assert "Mock IdP" in page and "a@example.com" in page
    done = await portal_post(
        client, f"/auth/admin/users/alice/external/{link.id}/remove", {}, session=session
    )
    assert done.status == 303
    assert await services(client).store.find_external_link("mock", "s-admin") is None
    again = await portal_post(
        client, f"/auth/admin/users/alice/external/{link.id}/remove", {}, session=session
    )
    assert again.status == 404


# -- hostile input -----------------------------------------------------------------------------------

HOSTILE_QUERIES = [
    "",
    "code=&state=",
    "code=a&state=b&state=c&iss=x&iss=y",
    "error=" + "x" * 5000,
    "code=%00%ff&state=%c3%28",
    "state=" + "s" * 100_00,
    "error=access_denied&error_description=%0d%0aSet-Cookie:%20x=1",
]
HOSTILE_COOKIES = ["", "x", "e30.e30.e30", "a" * 4000, '"quoted"', "\u00e9"]


@pytest.mark.parametrize("query", HOSTILE_QUERIES)
@pytest.mark.parametrize("state", HOSTILE_COOKIES)
async def test_hostile_callbacks_get_clear_answers(
    make_client: MakeClient, issuer: str, query: str, state: str
) -> None:
    """Junk callbacks and junk state cookies get a 4xx page, never a 500, and sign nobody in."""
    client = await make_client(with_provider(issuer))
    headers = {"Cookie": f"{STATE_COOKIE}={state}"} if state.isascii() else {}
    response = await client.get(f"/auth/login/external/mock/callback?{query}", headers=headers)
    assert 400 <= response.status < 500, (response.status, await response.text())
    assert SESSION_COOKIE not in response.cookies
    assert "Set-Cookie: x" not in response.headers.get("Set-Cookie", "")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/auth/login/external/%2e%2e/callback"),
        ("GET", "/auth/login/external/" + "p" * 5000 + "/callback"),
        ("POST", "/auth/login/external/nope"),
        ("POST", "/auth/login/external/%00"),
        ("GET", "/auth/login/external/link"),
        ("POST", "/auth/login/external/link"),
        ("POST", "/auth/login/external/link/webauthn/options"),
        ("POST", "/auth/login/external/link/webauthn"),
        ("POST", "/auth/settings/external/mock/link"),
        ("POST", "/auth/settings/external/abc/unlink"),
        ("POST", "/auth/settings/external/99999999999999999999999/unlink"),
    ],
)
@pytest.mark.parametrize(
    "body", [b"", b"\xff\xfe garbage", b'{"challenge_id": [], "credential": 5}', b"[[[["]
)
async def test_hostile_requests_to_every_external_route(
    make_client: MakeClient, issuer: str, method: str, path: str, body: bytes
) -> None:
    """Every external-login route answers junk (signed in or not) without a 500."""
    client = await make_client(with_provider(issuer))
    await add_user(client)
    session = await signed_in(client)
    for cookies in ({}, {SESSION_COOKIE: session, LINK_COOKIE: "junk", CSRF_COOKIE: "junk"}):
        headers = (
            {**cookie_header(**cookies), "Content-Type": "application/x-www-form-urlencoded"}
            if cookies
            else {}
        )
        response = await client.request(method, path, data=body, headers=headers, allow_redirects=False)
        assert response.status < 500, (method, path, response.status, await response.text())


async def test_github_callback_naming_another_issuer_is_refused(
    make_client: MakeClient, github: str, http: aiohttp.ClientSession
) -> None:
    """GitHub sends no iss; a callback that carries one that is not GitHub's (a mix-up) is refused."""
    client = await make_client({"external_login": {"providers": [github_provider_config(github)]}})
    emails = [{"email": "m@example.com", "primary": True, "verified": True}]
    put_github_user(github, "mixed", user_id=11, emails=emails, orgs=["acme"])
    url, state = await press_button(client, "github")
    path = await authorize_at_provider(http, url, {"login": "mixed"})
    response = await callback(client, f"{path}&{urlencode({'iss': 'https://evil.example.com'})}", state)
    assert response.status == 400
    assert "iss mismatch" in (await events(client, audit.EXTERNAL_LOGIN_FAILED))[0].detail


async def test_pages_speak_the_browsers_language(
    make_client: MakeClient, issuer: str, http: aiohttp.ClientSession
) -> None:
    """The button and a refusal come in German for a German browser, the label filled in."""
    client = await make_client(with_provider(issuer))
    await add_user(client)
    german = {"Accept-Language": "de-DE,de;q=0.9"}
    page = await (await client.get("/auth/login", headers=german)).text()
    assert ">Mit Mock IdP anmelden</button>" in page
    put_oidc_user(issuer, "sub-de", verified("fremd@example.com"))
    url, state = await press_button(client)
    path = await authorize_at_provider(http, url, {"sub": "sub-de"})
    refused = await client.get(path, headers={**german, **cookie_header(**{STATE_COOKIE: state})})
    assert refused.status == 400
    assert "Kein Konto hier ist mit Ihrem Mock IdP-Konto verknüpft." in await refused.text()
