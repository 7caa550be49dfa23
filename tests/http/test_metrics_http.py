"""The metrics endpoint: absent by default, guarded by its token, serving the counts of real requests."""

from __future__ import annotations

from typing import Any

from aiohttp import DummyCookieJar
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics_http
from gateway.metrics import LATENCY_SAMPLE_EVERY
from tests.http.helpers import (
    Clock,
    MakeClient,
    add_user,
    auth_request,
    basic_auth,
    create_token,
    enrol_totp,
    forward_auth,
    login,
    passkey_login,
    password_step,
    registered_session,
    services,
    signed_in,
    submit_code,
    totp_code,
    wrong_code,
)
from tests.webauthn_authenticator import SoftAuthenticator

TOKEN = "metrics-token-0123456789abcdef"
ON_MAIN = {"metrics": {"enabled": True, "listen": "", "token": TOKEN}}
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def decisions(found: dict[Any, float], verdict: str, rule: str) -> float:
    return found.get(("authgate_forward_auth_decisions_total", (("rule", rule), ("verdict", verdict))), 0)


async def scrape(client: Any, path: str = "/api/metrics") -> dict[Any, float]:
    answer = await client.get(path, headers=BEARER)
    assert answer.status == 200, await answer.text()
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert answer.headers["Cache-Control"] == "no-store"
    return samples(await answer.text())


async def test_no_metrics_endpoint_by_default(make_client: MakeClient) -> None:
    """Without metrics.enabled neither path exists, with or without a token."""
    client = await make_client()
    for path in ("/api/metrics", "/metrics"):
        answer = await client.get(path, headers=BEARER)
        assert answer.status == 404, path


async def test_a_separate_listener_leaves_the_main_one_without_metrics(make_client: MakeClient) -> None:
    """With metrics.listen set (the default when enabled), the main listener serves no metrics."""
    client = await make_client({"metrics": {"enabled": True}})
    assert (await client.get("/api/metrics")).status == 404


async def test_the_main_listener_requires_the_token(make_client: MakeClient) -> None:
    """/api/metrics answers 401 with a Bearer challenge without the token or with a wrong one."""
    client = await make_client(ON_MAIN)
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer \u00e9\u00e9"},
    ):
        answer = await client.get("/api/metrics", headers=headers)
        assert answer.status == 401, headers
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert "authgate_" not in await answer.text()
    assert (await client.get("/api/metrics", headers=BEARER)).status == 200


async def test_metrics_count_decisions_by_verdict_and_rule(make_client: MakeClient) -> None:
    """Forward-auth answers show up under their verdict and the index of the rule that decided."""
    client = await make_client(ON_MAIN)
    await add_user(client, "alice")
    session = await signed_in(client, "alice")
    for _ in range(5):
        assert (await forward_auth(client, session)).status == 200  # rule 3: *.localhost one_factor
    for _ in range(3):
        assert (await auth_request(client, None)).status == 401  # login, rule 3
    assert (await forward_auth(client, session, host="admin.localhost")).status == 403  # rule 2 deny
    assert (await forward_auth(client, None, host="public.localhost")).status == 200  # rule 0 bypass
    assert (await forward_auth(client, session, host="elsewhere.example")).status == 403  # default
    missing = await client.get("/api/authz/auth-request")  # no X-Original-URL
    assert missing.status == 403  # nginx's marked refusal, which it turns into a 400
    assert missing.headers["X-Authgate-Error"] == "bad-request"

    found = await scrape(client)
    assert decisions(found, "allow", "3") == 5
    assert decisions(found, "login", "3") == 3
    assert decisions(found, "deny", "2") == 1
    assert decisions(found, "allow", "0") == 1
    assert decisions(found, "deny", "default") == 1
    assert found["authgate_forward_auth_rejected_total", (("reason", "bad_request"),)] == 1
    requests = 5 + 3 + 1 + 1 + 1 + 1
    timed = found["authgate_forward_auth_duration_seconds_count", ()]
    assert timed == requests // LATENCY_SAMPLE_EVERY
    assert found["authgate_sessions_active", ()] == 1
    assert found["authgate_metrics_workers", ()] == 1


async def test_latency_is_sampled_into_the_histogram(make_client: MakeClient) -> None:
    """One forward-auth request in LATENCY_SAMPLE_EVERY is timed; the histogram is consistent."""
    client = await make_client(ON_MAIN)
    await add_user(client, "alice")
    session = await signed_in(client, "alice")
    for _ in range(LATENCY_SAMPLE_EVERY * 4):
        assert (await auth_request(client, session)).status == 200
    found = await scrape(client)
    assert found["authgate_forward_auth_duration_seconds_count", ()] == 4
    assert found["authgate_forward_auth_duration_seconds_bucket", (("le", "+Inf"),)] == 4
    assert 0 < found["authgate_forward_auth_duration_seconds_sum", ()] < 4 * 5.0


async def test_metrics_count_logins_failures_and_bans(make_client: MakeClient, clock: Clock) -> None:
    """Password sign-ins count by result; a ban shows as refusals and as a banned account and address."""
    client = await make_client(ON_MAIN)
    await add_user(client, "alice")
    await add_user(client, "bob")
    assert (await login(client, "alice")).status == 303
    clock.advance(1)  # the address's failures come after its success
    for _ in range(3):  # regulation.max_retries: 3 in the test configuration
        assert (await login(client, "bob", "wrong password")).status == 401
    assert (await login(client, "bob", "wrong password")).status == 429

    found = await scrape(client)
    assert found["authgate_logins_total", (("factor", "password"), ("result", "success"))] == 1
    assert found["authgate_logins_total", (("factor", "password"), ("result", "failure"))] == 3
    assert found["authgate_logins_total", (("factor", "totp"), ("result", "failure"))] == 0
    assert found["authgate_regulation_refusals_total", ()] == 1
    assert found["authgate_regulation_banned", (("scope", "account"),)] == 1
    assert found["authgate_regulation_banned", (("scope", "address"),)] == 1
    assert found["authgate_sessions_active", ()] == 1


async def test_metrics_count_app_passwords(make_client: MakeClient) -> None:
    """Forward-auth with an app password counts as an app_password success, a wrong one as a failure."""
    client = await make_client(ON_MAIN)
    await add_user(client, "alice")
    session = await signed_in(client, "alice")
    token = await create_token(client, session)
    for _ in range(2):
        answer = await forward_auth(client, None, extra=basic_auth("alice", token))
        assert answer.status == 200
    wrong = await forward_auth(client, None, extra=basic_auth("alice", token[:-2] + "xx"))
    assert wrong.status == 401

    found = await scrape(client)
    assert found["authgate_logins_total", (("factor", "app_password"), ("result", "success"))] == 2
    assert found["authgate_logins_total", (("factor", "app_password"), ("result", "failure"))] == 1
    assert found["authgate_forward_auth_rejected_total", (("reason", "invalid_app_password"),)] == 1
    assert decisions(found, "allow", "3") == 2


async def test_the_separate_listener_serves_the_main_apps_counts(
    make_client: MakeClient, aiohttp_client: Any
) -> None:
    """The metrics listener's /metrics reads the counts of the application it was built for."""
    client = await make_client({"metrics": {"enabled": True, "listen": "127.0.0.1:9959", "token": TOKEN}})
    await add_user(client, "alice")
    session = await signed_in(client, "alice")
    assert (await forward_auth(client, session)).status == 200
    listener = await aiohttp_client(metrics_http.listener_app(client.server.app), cookie_jar=DummyCookieJar())
    assert (await listener.get("/metrics")).status == 401
    assert (await listener.get("/api/authz/forward-auth")).status == 404  # nothing but metrics there
    found = await scrape(listener, "/metrics")
    assert decisions(found, "allow", "3") == 1


async def test_a_store_failure_leaves_the_counters_served(make_client: MakeClient) -> None:
    """When a query fails, the scrape still answers, without that gauge, and counts the store error."""
    client = await make_client(ON_MAIN)
    store = services(client).store
    await store._locked("DROP TABLE sessions")  # every session query now fails in SQLite
    answer = await client.get("/api/metrics", headers=BEARER)
    assert answer.status == 200
    found = samples(await answer.text())
    assert ("authgate_sessions_active", ()) not in found
    assert found["authgate_store_errors_total", (("kind", "other"),)] == 1
    assert ("authgate_logins_total", (("factor", "password"), ("result", "success"))) in found


async def test_metrics_count_second_factors_and_passkeys(make_client: MakeClient, clock: Clock) -> None:
    """TOTP and recovery codes, right and wrong, and a passwordless passkey login count under their factor."""
    client = await make_client(ON_MAIN)
    await add_user(client, "alice")
    _, secret, codes = await enrol_totp(client, await signed_in(client, "alice"), clock)
    clock.advance(30)
    pending = await password_step(client)
    assert (await submit_code(client, wrong_code(secret, clock()), pending=pending)).status == 401
    assert (await submit_code(client, totp_code(secret, clock()), pending=pending)).status == 303
    pending = await password_step(client)
    assert (await submit_code(client, codes[0], pending=pending, method="recovery")).status == 303

    await add_user(client, "bob")
    authenticator = SoftAuthenticator()
    await registered_session(client, await signed_in(client, "bob"), authenticator)
    assert (await passkey_login(client, authenticator)).status == 200

    found = await scrape(client)

    def logins(factor: str, result: str) -> float:
        return found["authgate_logins_total", (("factor", factor), ("result", result))]

    assert logins("totp", "success") == 1
    assert logins("totp", "failure") == 1
    assert logins("recovery", "success") == 1
    assert logins("passkey", "success") == 1
    # alice's first sign-in and her two password steps before a second factor, bob's sign-in
    assert logins("password", "success") == 4
