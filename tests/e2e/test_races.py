"""Races, proven: concurrent HTTP requests against a real `serve --workers 2`.

Every single-use thing (a recovery code, a TOTP code, a reset or recovery link), every limit
(app passwords per user) and the brute-force regulation is hit by many requests at once,
spread over both workers by the kernel (SO_REUSEPORT), and must hold exactly. The store's
conditional UPDATE/DELETE ... RETURNING and its write transactions decide who wins.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.e2e.standalone import (
    Gateway,
    form_post,
    link_in,
    password_login,
    recovery_codes_in,
    session_of,
    start_gateway,
)
from tests.e2e.support import (
    CSRF_COOKIE,
    HTML,
    PASSWORDS,
    SESSION_COOKIE,
    TOTP_PERIOD,
    ProxyClient,
    basic,
    enrolment_fields,
    oathtool_code,
)

pytestmark = pytest.mark.e2e

PENDING_COOKIE = "authgate_2fa"
EXTRA_USERS = {"carol": "carol-reset-me-please", "dave": "dave-recover-me-please"}
MAX_APP_PASSWORDS = 3


@pytest.fixture(scope="module")
def races(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A two-worker server whose regulation never interferes (the races are the point here)."""
    overrides = {
        "regulation": {"max_retries": 1000},
        "app_passwords": {"max_per_user": MAX_APP_PASSWORDS},
    }
    gateway = start_gateway(tmp_path_factory.mktemp("races"), overrides, users=EXTRA_USERS)
    yield gateway
    gateway.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A connection per request (no pooling): the kernel spreads them over both workers.
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout
    ) as session:
        yield session


@pytest.fixture(scope="module")
def bob_factors(races: Gateway, oathtool_bin: str) -> tuple[str, float, list[str]]:
    """Enrol bob in TOTP through the portal; return (secret, enrolment time, recovery codes)."""

    async def enrol() -> tuple[str, float, list[str]]:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            client = races.client(http)
            session = session_of(await password_login(client, "bob"))
            cookies = {SESSION_COOKIE: session}
            page = await client.get("/auth/settings/totp/new", cookies=cookies, headers=HTML)
            secret, token = enrolment_fields(page.text)
            enrolled_at = time.time()
            fields = {
                "token": token,
                "name": "phone",
                "password": PASSWORDS["bob"],
                "code": oathtool_code(oathtool_bin, secret, enrolled_at),
            }
            reply = await form_post(
                client, "/auth/settings/totp/new", "/auth/settings/totp/new", fields, cookies
            )
            assert reply.status == 200, reply.text
            return secret, enrolled_at, recovery_codes_in(reply.text)

    return asyncio.run(enrol())


async def _pending_logins(client: ProxyClient, username: str, count: int) -> list[str]:
    """Sign in with the password `count` times; return each pending second-factor cookie."""
    replies = await asyncio.gather(*(password_login(client, username) for _ in range(count)))
    pending = []
    for reply in replies:
        assert reply.status == 303 and reply.headers["Location"] == "/auth/2fa", reply.text
        pending.append(reply.cookies[PENDING_COOKIE].value)
    return pending


async def _submit_codes(
    client: ProxyClient, pending: list[str], method: str, code: str
) -> list[tuple[int, str]]:
    """Post the same code from every pending login at once; return (status, session cookie or '')."""
    secret, token = await client.csrf("/auth/login")

    async def submit(cookie: str) -> tuple[int, str]:
        reply = await client.post(
            "/auth/2fa",
            cookies={PENDING_COOKIE: cookie, CSRF_COOKIE: secret},
            data={"csrf_token": token, "method": method, "code": code},
        )
        assert reply.status in (303, 401), reply.text
        return reply.status, reply.cookies[SESSION_COOKIE].value if SESSION_COOKIE in reply.cookies else ""

    return await asyncio.gather(*(submit(cookie) for cookie in pending))


async def _submit_codes_any_status(
    client: ProxyClient, pending: list[str], method: str, code: str
) -> list[int]:
    """Post one code from each pending cookie at once; return the statuses."""
    secret, token = await client.csrf("/auth/login")

    async def submit(cookie: str) -> int:
        reply = await client.post(
            "/auth/2fa",
            cookies={PENDING_COOKIE: cookie, CSRF_COOKIE: secret},
            data={"csrf_token": token, "method": method, "code": code},
        )
        return reply.status

    return list(await asyncio.gather(*(submit(cookie) for cookie in pending)))


async def test_one_recovery_code_sent_twenty_times_at_once_works_once(
    races: Gateway, bob_factors: tuple[str, float, list[str]], http: aiohttp.ClientSession
) -> None:
    """Twenty pending logins submit the same recovery code at once: exactly one gets a session."""
    client = races.client(http)
    code = bob_factors[2][0]
    pending = await _pending_logins(client, "bob", 20)

    results = await _submit_codes(client, pending, "recovery", code)

    assert Counter(status for status, _ in results) == {303: 1, 401: 19}
    assert [cookie for status, cookie in results if status == 303][0]
    used = races.query(
        "SELECT COUNT(*) FROM recovery_codes r JOIN users u ON u.id = r.user_id"
        " WHERE u.username = 'bob' AND r.used_at IS NOT NULL"
    )
    assert used == [(1,)]
    assert len(races.log_events("recovery_code_used")) == 1


async def test_one_totp_code_from_two_sessions_at_once_is_accepted_once(
    races: Gateway,
    bob_factors: tuple[str, float, list[str]],
    http: aiohttp.ClientSession,
    oathtool_bin: str,
) -> None:
    """Two pending logins of one user send the same fresh TOTP code at once: one is accepted."""
    secret, enrolled_at, _codes = bob_factors
    client = races.client(http)
    pending = await _pending_logins(client, "bob", 2)
    # A step after the enrolment's own (used up by it), and within the accepted skew of now.
    code = oathtool_code(oathtool_bin, secret, max(time.time(), enrolled_at + TOTP_PERIOD))

    results = await _submit_codes(client, pending, "totp", code)

    assert sorted(status for status, _ in results) == [303, 401]


async def test_one_password_reset_link_used_five_times_at_once_sets_one_password(
    races: Gateway, http: aiohttp.ClientSession
) -> None:
    """Five tabs submit one reset link with different passwords at once: one is set, four see 'used'."""
    client = races.client(http)
    admin = {SESSION_COOKIE: session_of(await password_login(client, "alice"))}
    sent = await form_post(
        client, "/auth/admin/users/carol", "/auth/admin/users/carol/password-reset", {}, admin
    )
    assert sent.status == 303, sent.text
    link = link_in(races.mails()[-1])
    secret, token = await client.csrf(link)
    candidates = [f"carol-new-password-{i}-horse" for i in range(5)]

    async def submit(password: str) -> tuple[int, str]:
        reply = await client.post(
            link,
            cookies={CSRF_COOKIE: secret},
            data={"csrf_token": token, "password": password, "confirm": password},
        )
        return reply.status, reply.text

    results = await asyncio.gather(*(submit(password) for password in candidates))

    statuses = [status for status, _ in results]
    assert sorted(statuses) == [200, 410, 410, 410, 410], results
    losers = [text for status, text in results if status == 410]
    # Most losers hashed their password while the winner used the link: they are told so.
    assert all("already used" in text or "no longer works" in text for text in losers)
    winner = candidates[statuses.index(200)]
    for password in candidates:
        reply = await password_login(client, "carol", password)
        assert reply.status == (303 if password == winner else 401), password


async def test_one_recovery_link_used_five_times_at_once_signs_in_once(
    races: Gateway, http: aiohttp.ClientSession
) -> None:
    """Five tabs submit one account-recovery link at once: one is signed in, four see 'used'."""
    client = races.client(http)
    secret, token = await client.csrf("/auth/recover")
    asked = await client.post(
        "/auth/recover",
        cookies={CSRF_COOKIE: secret},
        data={"csrf_token": token, "email": "dave@example.com"},
    )
    assert asked.status == 200, asked.text
    deadline = time.monotonic() + 10
    while not any("/auth/recover/" in body for body in races.mails()):
        assert time.monotonic() < deadline, "no recovery mail written"
        await asyncio.sleep(0.05)
    link = link_in([body for body in races.mails() if "/auth/recover/" in body][-1])
    secret, token = await client.csrf(link)

    async def submit() -> int:
        reply = await client.post(
            link,
            cookies={CSRF_COOKIE: secret},
            data={"csrf_token": token, "password": EXTRA_USERS["dave"]},
        )
        assert reply.status in (303, 410), reply.text
        if reply.status == 410:
            assert "already used" in reply.text or "no longer works" in reply.text
        return reply.status

    statuses = await asyncio.gather(*(submit() for _ in range(5)))

    assert sorted(statuses) == [303, 410, 410, 410, 410]
    assert len(races.log_events("account_recovered")) == 1


async def test_a_burst_of_app_password_creations_never_exceeds_the_limit(
    races: Gateway, http: aiohttp.ClientSession
) -> None:
    """Twelve creations at once with max_per_user 3: exactly three tokens exist, and each works."""
    client = races.client(http)
    cookies = {SESSION_COOKIE: session_of(await password_login(client, "alice"))}
    secret, token = await client.csrf("/auth/settings/tokens", cookies=cookies)

    async def create(index: int) -> tuple[int, str]:
        reply = await client.post(
            "/auth/settings/tokens",
            cookies={**cookies, CSRF_COOKIE: secret},
            data={"csrf_token": token, "name": f"burst {index}", "domains": "", "expiry": "0"},
        )
        return reply.status, reply.text

    results = await asyncio.gather(*(create(i) for i in range(12)))

    assert Counter(status for status, _ in results) == {200: MAX_APP_PASSWORDS, 409: 12 - MAX_APP_PASSWORDS}
    assert all("at most 3 app passwords" in text.lower() for status, text in results if status == 409)
    live = races.query(
        "SELECT COUNT(*) FROM app_passwords a JOIN users u ON u.id = a.user_id"
        " WHERE u.username = 'alice' AND a.revoked_at IS NULL"
    )
    assert live == [(MAX_APP_PASSWORDS,)]
    for status, text in results:
        if status == 200:
            shown = text.split('id="new-token"', 1)[1].split(">", 1)[1].split("<", 1)[0]
            headers = {
                **basic("alice", shown),
                "X-Forwarded-Method": "GET",
                "X-Forwarded-Proto": "http",
                "X-Forwarded-Host": f"localhost:{races.port}",
                "X-Forwarded-Uri": "/",
            }
            answer = await client.get("/api/authz/forward-auth", headers=headers)
            assert answer.status == 200, answer.text


@pytest.fixture(scope="module")
def regulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A two-worker server that bans after 3 failures (for an hour, so the test never sees it lift)."""
    overrides = {"regulation": {"max_retries": 3, "find_time": "1h", "ban_time": "1h"}}
    gateway = start_gateway(tmp_path_factory.mktemp("regulated"), overrides)
    yield gateway
    gateway.stop()


async def test_thirty_wrong_passwords_at_once_check_at_most_three(
    regulated: Gateway, http: aiohttp.ClientSession
) -> None:
    """30 parallel wrong passwords with max_retries 3: three argon2 checks, 27 refused before hashing."""
    client = regulated.client(http)
    secret, token = await client.csrf("/auth/login")

    async def attempt(index: int) -> int:
        reply = await client.post(
            "/auth/login",
            cookies={CSRF_COOKIE: secret},
            data={"csrf_token": token, "username": "alice", "password": f"wrong-{index}"},
        )
        return reply.status

    statuses = await asyncio.gather(*(attempt(i) for i in range(30)))

    # Each password check that fails writes one login_failed audit row; a refusal writes login_banned.
    assert Counter(statuses) == {401: 3, 429: 27}
    events = dict(
        regulated.query("SELECT event, COUNT(*) FROM audit_log WHERE event LIKE 'login_%' GROUP BY event")
    )
    assert events == {"login_failed": 3, "login_banned": 27}
    assert regulated.query("SELECT COUNT(*), SUM(success) FROM login_attempts") == [(3, 0)]
    # The right password is refused too while the ban lasts: no fourth check.
    assert (await password_login(client, "alice")).status == 429


async def test_thirty_wrong_codes_at_once_on_one_pending_login_check_at_most_its_attempts(
    races: Gateway,
    bob_factors: tuple[str, float, list[str]],
    http: aiohttp.ClientSession,
    oathtool_bin: str,
) -> None:
    """One pending login (5 attempts) posting 30 wrong codes at once gets 5 checks; the rest start over."""
    client = races.client(http)
    (pending,) = await _pending_logins(client, "bob", 1)
    before = len(races.log_events("second_factor_failed"))
    now = time.time()
    valid = {oathtool_code(oathtool_bin, bob_factors[0], now + offset) for offset in (-60, -30, 0, 30, 60)}
    wrong = next(code for code in ("000000", "111111", "222222") if code not in valid)

    results = await _submit_codes_any_status(client, [pending] * 30, "totp", wrong)

    checked = [status for status in results if status == 401]
    # The fifth failure itself already sends the user back to the password (303 to /login).
    assert len(races.log_events("second_factor_failed")) - before == 5
    assert len(checked) + results.count(303) == 30 and len(checked) <= 5
    assert all(status in (303, 401) for status in results)
