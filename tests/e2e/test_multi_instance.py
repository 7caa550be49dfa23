"""Two authgate instances behind one real nginx upstream (round robin), sharing one database.

Everything a user does may land on either instance: the tests prove where each step went
(nginx's access log records the instance that answered every portal request and auth
subrequest; each instance counts its own decisions in its metrics) and that the shared
database makes the pair behave as one server: a login hops between them (password, TOTP,
passkey), a logout on one is refused on the other within the bound, a ban holds on both, a
killed instance logs nobody out, and single-use things stay single-use when both instances
race for them.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import async_playwright, expect

from tests.e2e.conftest import TWO_FACTOR_RULES
from tests.e2e.multi_instance import (
    Backend,
    DirectClient,
    MultiStack,
    SharedPostgres,
    SharedSqlite,
    start_caddy,
    start_multi_stack,
)
from tests.e2e.standalone import form_post, password_login, recovery_codes_in, session_of
from tests.e2e.support import (
    CSRF_COOKIE,
    HTML,
    PASSWORDS,
    SESSION_COOKIE,
    TOTP_PERIOD,
    ProxyClient,
    enrolment_fields,
    oathtool_code,
)

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 10_000
PENDING_COOKIE = "authgate_2fa"
EXTRA_USERS = {
    "carol": "carol-recovers-codes",
    "dave": "dave-double-submits",
    "erin": "erin-makes-tokens",
    "frank": "frank-under-load",
    "grace": "grace-under-load",
}
LOADED = ("frank", "grace")
MAX_APP_PASSWORDS = 3
# session.cache_ttl per backend. SQLite has no notification channel: another instance's cached
# session outlives a revocation by up to cache_ttl. On PostgreSQL the revoking write NOTIFYs
# every instance, so cache_ttl is set far above the bound the test holds it to: only the
# notification can explain a refusal that fast.
CACHE_TTL = {"postgres": 30.0, "sqlite": 2.0}
REVOCATION_BOUND = {"postgres": 1.0, "sqlite": CACHE_TTL["sqlite"] + 1.0}
BACKENDS = ["postgres", "sqlite"]  # PostgreSQL is the target; two processes on one SQLite file work too


def _backend(name: str, directory: Path, request: pytest.FixtureRequest) -> Backend:
    if name == "postgres":
        return SharedPostgres.create(request.getfixturevalue("postgres_server"))
    data = directory / "shared-data"
    data.mkdir()
    return SharedSqlite(data)


def _cache_ttl(backend: str) -> float:
    return CACHE_TTL[backend]


@pytest.fixture(scope="module", params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def multi(
    backend_name: str,
    tmp_path_factory: pytest.TempPathFactory,
    nginx_bin: str,
    request: pytest.FixtureRequest,
) -> Iterator[MultiStack]:
    """Two instances behind nginx whose regulation stays out of the way (races are the point)."""
    directory = tmp_path_factory.mktemp(f"multi-{backend_name}")
    overrides = {
        "regulation": {"max_retries": 1000},
        "app_passwords": {"max_per_user": MAX_APP_PASSWORDS},
        "session": {"cache_ttl": f"{_cache_ttl(backend_name):g}s"},
    }
    stack = start_multi_stack(
        directory,
        _backend(backend_name, directory, request),
        nginx_bin,
        rules=TWO_FACTOR_RULES,
        overrides=overrides,
        users=EXTRA_USERS,
    )
    yield stack
    stack.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A connection per request, so nothing but nginx's round robin picks the instance.
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout
    ) as session:
        yield session


async def _enrol_totp(client: ProxyClient, username: str, oathtool: str) -> tuple[str, float, list[str]]:
    """Enrol a TOTP device for `username`; return (secret, time of its code, recovery codes)."""
    cookies = {SESSION_COOKIE: session_of(await password_login(client, username, _password(username)))}
    page = await client.get("/auth/settings/totp/new", cookies=cookies, headers=HTML)
    assert page.status == 200, page.text
    secret, token = enrolment_fields(page.text)
    enrolled_at = time.time()
    fields = {
        "token": token,
        "name": "phone",
        "password": _password(username),
        "code": oathtool_code(oathtool, secret, enrolled_at),
    }
    reply = await form_post(client, "/auth/settings/totp/new", "/auth/settings/totp/new", fields, cookies)
    assert reply.status == 200, reply.text
    return secret, enrolled_at, recovery_codes_in(reply.text)


def _password(username: str) -> str:
    return PASSWORDS.get(username) or EXTRA_USERS[username]


async def _pending(client: ProxyClient, username: str) -> str:
    """Sign in with the password; return the pending second-factor cookie."""
    reply = await password_login(client, username, _password(username))
    assert reply.status == 303 and reply.headers["Location"] == "/auth/2fa", reply.text
    return reply.cookies[PENDING_COOKIE].value


async def _second_factor(client: ProxyClient, pending: str, method: str, code: str) -> tuple[int, str]:
    """Post one second-factor code; return (status, session cookie or '')."""
    secret, token = await client.csrf("/auth/login")
    reply = await client.post(
        "/auth/2fa",
        cookies={PENDING_COOKIE: pending, CSRF_COOKIE: secret},
        data={"csrf_token": token, "method": method, "code": code},
    )
    return reply.status, reply.cookies[SESSION_COOKIE].value if SESSION_COOKIE in reply.cookies else ""


async def test_requests_through_nginx_alternate_between_the_instances(
    multi: MultiStack, http: aiohttp.ClientSession
) -> None:
    """Ten page loads with one cookie: nginx sends the auth subrequests to both instances in turn."""
    client = multi.client(http)
    cookie = await client.session_for("bob")
    before = {instance.name: instance.forward_auth_decisions() for instance in multi.instances}
    mark = multi.log_mark()

    for _ in range(10):
        page = await client.get("/hello?format=json", cookies={SESSION_COOKIE: cookie})
        assert page.status == 200, page.text
        assert page.json()["headers"]["Remote-User"] == "bob"

    served = multi.answered_by(mark)
    # (The login's own lines may be logged after the mark; count the subrequests.)
    assert served["a"].count("/internal/authgate") == 5, served
    assert served["b"].count("/internal/authgate") == 5, served
    # Each instance counted its own share (its metrics listener, not nginx, says so).
    after = {instance.name: instance.forward_auth_decisions() for instance in multi.instances}
    assert {name: after[name] - before[name] for name in after} == {"a": 5, "b": 5}


async def test_a_login_started_on_one_instance_finishes_on_the_other(
    multi: MultiStack, http: aiohttp.ClientSession, oathtool_bin: str
) -> None:
    """Password on A, TOTP code on B: B finishes the pending login A began; both accept the cookie."""
    a, b = multi.direct(http, multi.a), multi.direct(http, multi.b)
    secret, enrolled_at, _codes = await _enrol_totp(a, "dave", oathtool_bin)
    pending = await _pending(a, "dave")

    code = oathtool_code(oathtool_bin, secret, max(time.time(), enrolled_at + TOTP_PERIOD))
    status, session = await _second_factor(b, pending, "totp", code)

    assert status == 303 and session
    assert await a.auth_request(session, "/vault/x") == 200
    assert await b.auth_request(session, "/vault/x") == 200
    assert len(multi.a.log_events("login_succeeded")) >= 1
    assert [e["actor"] for e in multi.b.log_events("second_factor_succeeded")][-1:] == ["dave"]


async def test_chromium_login_with_totp_and_passkey_hops_between_instances(
    multi: MultiStack, chromium_bin: str, oathtool_bin: str
) -> None:
    """A real browser signs in, enrols TOTP and a passkey, and signs in with each; both instances serve it."""
    target = f"{multi.origin}/hello"
    vault = f"{multi.origin}/vault/passkey"
    mark = multi.log_mark()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_bin, args=["--disable-gpu", "--disable-quic"], timeout=TIMEOUT_MS
        )
        try:
            context = await browser.new_context()
            context.set_default_timeout(TIMEOUT_MS)
            # Hide passkey autofill, so the password form is what signs in until the button is used.
            await context.add_init_script(
                "PublicKeyCredential.isConditionalMediationAvailable = async () => false;"
            )
            page = await context.new_page()
            cdp = await context.new_cdp_session(page)
            await cdp.send("WebAuthn.enable")
            await cdp.send(
                "WebAuthn.addVirtualAuthenticator",
                {
                    "options": {
                        "protocol": "ctap2",
                        "transport": "internal",
                        "hasResidentKey": True,
                        "hasUserVerification": True,
                        "isUserVerified": True,
                        "automaticPresenceSimulation": True,
                    }
                },
            )

            await page.goto(target)
            assert page.url == multi.login_url(target)
            await page.fill("#username", "alice")
            await page.fill("#password", PASSWORDS["alice"])
            await page.click("#password-fallback button[type=submit]")
            await page.wait_for_url(target)

            # TOTP enrolment: the secret shown on the page, a code from oathtool.
            await page.goto(f"{multi.portal_url}/settings")
            await page.click("a[href='/auth/settings/totp/new']")
            await page.wait_for_url(f"{multi.portal_url}/settings/totp/new")
            secret = (await page.locator("#totp-secret").inner_text()).replace(" ", "")
            enrolled_at = time.time()
            await page.fill("#name", "chromium phone")
            await page.fill("#password", PASSWORDS["alice"])
            await page.fill("#code", oathtool_code(oathtool_bin, secret, enrolled_at))
            await page.click("form[action='/auth/settings/totp/new'] button[type=submit]")
            await expect(page.locator("#recovery-codes li")).to_have_count(10)
            await page.click("text=I have saved them, continue")
            await page.wait_for_url(f"{multi.portal_url}/settings?done=added")

            await _sign_out(page, multi)

            # Password + TOTP code.
            await page.goto(target)
            await page.fill("#username", "alice")
            await page.fill("#password", PASSWORDS["alice"])
            await page.click("#password-fallback button[type=submit]")
            await page.wait_for_url(f"{multi.portal_url}/2fa")
            await page.fill("#code", oathtool_code(oathtool_bin, secret, enrolled_at + TOTP_PERIOD))
            await page.click("form[action='/auth/2fa'] button[type=submit]")
            await page.wait_for_url(target)
            await _expect_user(page, "alice")

            # Passkey registration: options from one instance, the signed answer to whichever is next.
            await page.goto(f"{multi.portal_url}/settings")
            await page.click("text=Add a security key or passkey")
            await page.wait_for_url(re.compile(re.escape(f"{multi.portal_url}/settings?named=") + r"\d+$"))
            await expect(page.locator("#webauthn-devices .device")).to_have_count(1)
            await _sign_out(page, multi)

            # The passkey alone opens a two_factor area.
            await page.goto(vault)
            await page.click("#passkey-button")
            await page.wait_for_url(vault)
            await _expect_user(page, "alice")
        finally:
            await browser.close()

    served = multi.answered_by(mark)
    for name, uris in served.items():
        portal = [uri for uri in uris if uri.startswith("/auth/") and "/static/" not in uri]
        assert len(portal) >= 3, (name, uris)
        assert "/internal/authgate" in uris, (name, uris)
    steps = set(served["a"]) | set(served["b"])
    assert {"/auth/login", "/auth/2fa", "/auth/settings/webauthn/register", "/auth/login/passkey"} <= steps
    # The ceremonies' state lives in the database: some began on one instance and ended on the other.
    added = multi.a.log_events("webauthn_added") + multi.b.log_events("webauthn_added")
    assert [event["actor"] for event in added] == ["alice"]


async def _sign_out(page: Any, multi: MultiStack) -> None:
    await page.goto(f"{multi.portal_url}/")
    await page.click("button:has-text('Sign out')")
    await page.wait_for_url(f"{multi.portal_url}/login?signed_out=1")


async def _expect_user(page: Any, username: str) -> None:
    identity = page.locator("#identity")
    await expect(identity.locator("tr", has_text="Remote-User").locator("td")).to_have_text(username)


async def _refused_after(client: DirectClient, cookie: str, bound: float) -> float:
    """Poll one instance until it refuses `cookie`; return the seconds that took (fail after `bound`)."""
    started = time.monotonic()
    while True:
        status = await client.auth_request(cookie)
        waited = time.monotonic() - started
        if status == 401:
            return waited
        assert status == 200, status
        assert waited < bound, f"still accepted {waited:.2f}s after the logout (bound {bound}s)"
        await asyncio.sleep(0.005)


async def test_logout_on_one_instance_is_refused_on_the_other_within_the_bound(
    multi: MultiStack, http: aiohttp.ClientSession, backend_name: str
) -> None:
    """Bob signs out on A while B has his session cached: B refuses the cookie within the bound."""
    a, b = multi.direct(http, multi.a), multi.direct(http, multi.b)
    cookie = session_of(await password_login(a, "bob"))
    # Both instances have the session in their forward-auth cache.
    assert await a.auth_request(cookie) == 200
    assert await b.auth_request(cookie) == 200

    reply = await form_post(a, "/auth/", "/auth/logout", {}, {SESSION_COOKIE: cookie})
    assert reply.status == 303, reply.text
    assert await a.auth_request(cookie) == 401  # the instance that ended it, at once
    waited = await _refused_after(b, cookie, bound=REVOCATION_BOUND[backend_name])

    print(f"revocation A -> B on {backend_name}: {waited * 1000:.1f} ms")  # noqa: T201 - shown with -rP
    page = await multi.client(http).get("/hello", cookies={SESSION_COOKIE: cookie}, headers=HTML)
    assert page.status == 302 and page.headers["Location"].startswith(f"{multi.portal_url}/login")


@pytest.fixture(scope="module")
def regulated(
    backend_name: str,
    tmp_path_factory: pytest.TempPathFactory,
    nginx_bin: str,
    request: pytest.FixtureRequest,
) -> Iterator[MultiStack]:
    """Two instances that ban after 3 failures (for an hour, so no test sees a ban lift)."""
    directory = tmp_path_factory.mktemp(f"multi-regulated-{backend_name}")
    overrides = {"regulation": {"max_retries": 3, "find_time": "1h", "ban_time": "1h"}}
    stack = start_multi_stack(
        directory,
        _backend(backend_name, directory, request),
        nginx_bin,
        rules=TWO_FACTOR_RULES,
        overrides=overrides,
        users={"mallory": "mallory-right-password"},
    )
    yield stack
    stack.stop()


async def _attempt(client: ProxyClient, username: str, password: str, client_ip: str) -> int:
    """Post the login form as if from `client_ip` (nginx's X-Forwarded-For); return the status."""
    secret, token = await client.csrf("/auth/login")
    reply = await client.post(
        "/auth/login",
        cookies={CSRF_COOKIE: secret},
        headers={"X-Forwarded-For": client_ip},
        data={"csrf_token": token, "username": username, "password": password},
    )
    return reply.status


async def test_a_ban_earned_on_both_instances_holds_on_both(
    regulated: MultiStack, http: aiohttp.ClientSession
) -> None:
    """Three wrong passwords spread over A, B, A ban the account and the address on A and on B."""
    a, b = regulated.direct(http, regulated.a), regulated.direct(http, regulated.b)
    attacker = "127.0.0.2"

    statuses = [
        await _attempt(client, "mallory", f"wrong-{i}", attacker) for i, client in enumerate((a, b, a))
    ]

    assert statuses == [401, 401, 401]
    assert len(regulated.a.log_events("login_failed")) == 2
    assert len(regulated.b.log_events("login_failed")) == 1
    for client in (a, b):
        # The account is banned whoever asks, the right password included ...
        assert await _attempt(client, "mallory", "mallory-right-password", "127.0.0.1") == 429
        # ... and so is the address, whichever account it tries.
        assert await _attempt(client, "bob", PASSWORDS["bob"], attacker) == 429
    assert len(regulated.a.log_events("login_banned")) == 2
    assert len(regulated.b.log_events("login_banned")) == 2
    # Through nginx (whichever instance it picks) the ban holds too; other people still get in.
    site = regulated.client(http)
    for _ in range(2):
        assert await _attempt(site, "mallory", "mallory-right-password", "127.0.0.1") == 429
    assert (await password_login(site, "bob")).status == 303


async def test_sigkill_of_one_instance_under_load_logs_nobody_out(
    multi: MultiStack, http: aiohttp.ClientSession
) -> None:
    """Eight clients load pages while A is SIGKILLed: every answer is the app's, and every session lives."""
    site = multi.client(http)
    cookies = {name: session_of(await password_login(site, name, _password(name))) for name in LOADED}
    answers: Counter[tuple[int, str]] = Counter()
    killed = asyncio.Event()
    after_kill: Counter[str] = Counter()
    stop_at = time.monotonic() + 4.0

    async def load(name: str) -> None:
        while time.monotonic() < stop_at:
            page = await site.get("/hello?format=json", cookies={SESSION_COOKIE: cookies[name]})
            user = page.json()["headers"].get("Remote-User", "") if page.status == 200 else page.text
            answers[(page.status, user == name and "ok" or user)] += 1
            if killed.is_set():
                after_kill[name] += 1

    async def kill_a() -> None:
        await asyncio.sleep(1.5)
        multi.a.kill()
        killed.set()

    mark = multi.log_mark()
    try:
        await asyncio.gather(*(load(name) for name in LOADED * 4), kill_a())
        assert killed.is_set()
        assert set(answers) == {(200, "ok")}, answers
        assert set(after_kill) == set(LOADED), "no page was loaded after the kill"
        served = multi.answered_by(mark)
        assert served["a"] and served["b"], "the load never reached both instances"
        # After the kill B alone answers; nobody was logged out.
        b = multi.direct(http, multi.b)
        for cookie in cookies.values():
            assert await b.auth_request(cookie) == 200
    finally:
        if not multi.a.alive:
            multi.a.start()
            multi.a.wait_ready()
    # The restarted A has an empty cache and reads the same sessions from the database.
    a = multi.direct(http, multi.a)
    for cookie in cookies.values():
        assert await a.auth_request(cookie) == 200


@pytest.fixture(scope="module")
def carol_codes(multi: MultiStack, oathtool_bin: str) -> list[str]:
    """Enrol carol in TOTP (through nginx); return her recovery codes."""

    async def enrol() -> list[str]:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            return (await _enrol_totp(multi.client(http), "carol", oathtool_bin))[2]

    return asyncio.run(enrol())


async def test_one_recovery_code_sent_to_both_instances_at_once_works_once(
    multi: MultiStack, carol_codes: list[str], http: aiohttp.ClientSession
) -> None:
    """Ten pending logins, five on each instance, submit the same recovery code at once: one wins."""
    a, b = multi.direct(http, multi.a), multi.direct(http, multi.b)
    clients = [a, b] * 5
    pending = await asyncio.gather(*(_pending(client, "carol") for client in clients))
    before = len(multi.a.log_events("recovery_code_used")) + len(multi.b.log_events("recovery_code_used"))

    results = await asyncio.gather(
        *(
            _second_factor(client, cookie, "recovery", carol_codes[0])
            for client, cookie in zip(clients, pending, strict=True)
        )
    )

    assert Counter(status for status, _ in results) == {303: 1, 401: 9}, results
    used = len(multi.a.log_events("recovery_code_used")) + len(multi.b.log_events("recovery_code_used"))
    assert used - before == 1
    rows = multi.backend.query(
        "SELECT COUNT(*) FROM recovery_codes r JOIN users u ON u.id = r.user_id"
        " WHERE u.username = %s AND r.used_at IS NOT NULL",
        ("carol",),
    )
    assert rows == [(1,)]


async def test_one_totp_code_sent_to_both_instances_at_once_is_accepted_once(
    multi: MultiStack, http: aiohttp.ClientSession, oathtool_bin: str
) -> None:
    """Two pending logins of one user, one per instance, send the same fresh code at once: one passes."""
    a, b = multi.direct(http, multi.a), multi.direct(http, multi.b)
    secret, enrolled_at, _codes = await _enrol_totp(a, "bob", oathtool_bin)
    pending = [await _pending(a, "bob"), await _pending(b, "bob")]
    code = oathtool_code(oathtool_bin, secret, max(time.time(), enrolled_at + TOTP_PERIOD))

    results = await asyncio.gather(
        _second_factor(a, pending[0], "totp", code), _second_factor(b, pending[1], "totp", code)
    )

    assert sorted(status for status, _ in results) == [303, 401], results


async def test_app_password_cap_holds_when_both_instances_create_at_once(
    multi: MultiStack, http: aiohttp.ClientSession
) -> None:
    """Twelve creations at once, six per instance, with max_per_user 3: exactly three tokens exist."""
    a, b = multi.direct(http, multi.a), multi.direct(http, multi.b)
    cookies = {SESSION_COOKIE: session_of(await password_login(a, "erin", _password("erin")))}
    secret, token = await a.csrf("/auth/settings/tokens", cookies=cookies)

    async def create(client: DirectClient, index: int) -> int:
        reply = await client.post(
            "/auth/settings/tokens",
            cookies={**cookies, CSRF_COOKIE: secret},
            data={"csrf_token": token, "name": f"burst {index}", "domains": "", "expiry": "0"},
        )
        return reply.status

    statuses = await asyncio.gather(*(create(client, i) for i, client in enumerate([a, b] * 6)))

    assert Counter(statuses) == {200: MAX_APP_PASSWORDS, 409: 12 - MAX_APP_PASSWORDS}
    live = multi.backend.query(
        "SELECT COUNT(*) FROM app_passwords t JOIN users u ON u.id = t.user_id"
        " WHERE u.username = %s AND t.revoked_at IS NULL",
        ("erin",),
    )
    assert live == [(MAX_APP_PASSWORDS,)]


async def _decisions_grow(multi: MultiStack, site: ProxyClient, cookie: str, name: str) -> None:
    """Load pages until instance `name` has counted a decision (Caddy's health check let it back)."""
    instance = multi.a if name == "a" else multi.b
    before = instance.forward_auth_decisions()
    deadline = time.monotonic() + 15
    while instance.forward_auth_decisions() == before:
        assert time.monotonic() < deadline, f"instance {name} got no request through Caddy"
        page = await site.get("/hello?format=json", cookies={SESSION_COOKIE: cookie})
        assert page.status == 200, page.text
        await asyncio.sleep(0.1)


async def test_caddy_in_front_of_the_pair_balances_and_leaves_a_dead_instance_out(
    multi: MultiStack, http: aiohttp.ClientSession, caddy_bin: str
) -> None:
    """deploy/scaling/Caddyfile: both instances answer, and with A killed every page still loads."""
    site = ProxyClient(http, start_caddy(multi, caddy_bin))
    cookie = session_of(await password_login(multi.client(http), "frank", _password("frank")))
    await _decisions_grow(multi, site, cookie, "a")
    await _decisions_grow(multi, site, cookie, "b")

    multi.a.kill()
    try:
        statuses = Counter()
        for _ in range(20):
            page = await site.get("/hello?format=json", cookies={SESSION_COOKIE: cookie})
            statuses[(page.status, page.json()["headers"]["Remote-User"] if page.status == 200 else "")] += 1
        assert statuses == {(200, "frank"): 20}, statuses
    finally:
        multi.a.start()
        multi.a.wait_ready()
    # Back in rotation once Caddy's active health check sees /api/health answer again.
    await _decisions_grow(multi, site, cookie, "a")
