"""Security keys and passkeys through the portal: devices, second factor, passkey login, hostile input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.models import Level
from tests.http.helpers import (
    PASSWORD,
    PORTAL_ORIGIN,
    SESSION_COOKIE,
    Clock,
    MakeClient,
    add_totp_device,
    add_user,
    ceremony,
    forward_auth,
    json_post,
    key_second_factor,
    passkey_login,
    password_step,
    portal_get,
    portal_post,
    register_key,
    registered_session,
    services,
    signed_in,
)
from tests.webauthn_authenticator import SoftAuthenticator, b64url

Client = TestClient[Any, Any]
VAULT = {"host": "app.localhost", "uri": "/vault/secret"}
RULES = {
    "access_control": {
        "rules": [
            {"domain": "app.localhost", "path": r"^/vault([/?]|$)", "policy": "two_factor"},
            {"domain": "*.localhost", "policy": "one_factor"},
        ]
    }
}
REQUIRED_UV = {"webauthn": {"user_verification": "required"}}
JSON_ENDPOINTS = (
    "/auth/settings/webauthn/options",
    "/auth/settings/webauthn/register",
    "/auth/2fa/webauthn/options",
    "/auth/2fa/webauthn",
    "/auth/login/passkey/options",
    "/auth/login/passkey",
)


async def level_of(client: Client, cookie: str) -> Level | None:
    session = await services(client).sessions.resolve(cookie)
    return session.level if session else None


async def user_with_key(
    client: Client, username: str = "alice", authenticator: SoftAuthenticator | None = None
) -> tuple[Any, SoftAuthenticator, str]:
    """Create a user, register one key from settings; return (user, authenticator, session)."""
    user = await add_user(client, username)
    authenticator = authenticator or SoftAuthenticator()
    session = await registered_session(client, await signed_in(client, username), authenticator)
    return user, authenticator, session


def without_allow_list(options: str) -> str:
    """Return request options whose allowCredentials is empty (so any key of the authenticator answers)."""
    data = json.loads(options)
    data["allowCredentials"] = []
    return json.dumps(data)


async def failures(client: Client, username: str) -> int:
    return len(await services(client).store.failures_since(username=username, since=0))


# --- Registering, naming and revoking devices ---------------------------------------------------------


async def test_registered_device_appears_in_settings_with_default_name(client: Client) -> None:
    """A key registered from settings is stored and listed under a default name from its type."""
    user = await add_user(client)
    session = await signed_in(client)

    response = await register_key(client, session, SoftAuthenticator())

    assert response.status == 200, await response.text()
    keys = await services(client).store.list_webauthn_credentials(user.id)
    assert [k.name for k in keys] == ["Passkey"]
    assert (await response.json())["next"] == f"/auth/settings?named={keys[0].id}"
    # the first factor raised the password session to two factors, under a new id
    new_session = response.cookies[SESSION_COOKIE].value
    assert await level_of(client, new_session) is Level.TWO_FACTOR
    assert await level_of(client, session) is None
    page = await portal_get(client, f"/auth/settings?named={keys[0].id}", session=new_session)
    text = await page.text()
    assert page.status == 200
    assert "<strong>Passkey</strong>" in text.split('id="webauthn-devices"', 1)[1]
    assert "webauthn added" in text


async def test_second_device_gets_a_distinct_default_name(client: Client) -> None:
    """Two security keys of the same kind are named "Security key" and "Security key 2"."""
    user = await add_user(client)
    usb = ("usb",)
    session = await registered_session(client, await signed_in(client), SoftAuthenticator(transports=usb))
    await registered_session(client, session, SoftAuthenticator(transports=usb))

    keys = await services(client).store.list_webauthn_credentials(user.id)
    assert sorted(k.name for k in keys) == ["Security key", "Security key 2"]


async def test_device_can_be_renamed(client: Client) -> None:
    """Renaming a device changes the name shown in settings."""
    user, _, session = await user_with_key(client)
    key = (await services(client).store.list_webauthn_credentials(user.id))[0]

    response = await portal_post(
        client, f"/auth/settings/webauthn/{key.id}/rename", {"name": "yubikey 5c"}, session=session
    )

    assert response.status == 303
    assert response.headers["Location"] == "/auth/settings?done=renamed"
    page = await (await portal_get(client, "/auth/settings", session=session)).text()
    assert "<strong>yubikey 5c</strong>" in page


async def test_revoking_needs_the_password_and_is_permanent(client: Client) -> None:
    """Revoking asks for the password; afterwards the key is gone and no longer signs in."""
    user, authenticator, session = await user_with_key(client)
    key = (await services(client).store.list_webauthn_credentials(user.id))[0]
    path = f"/auth/settings/webauthn/{key.id}/delete"

    wrong = await portal_post(client, path, {"password": "not it"}, session=session)
    assert wrong.status == 401
    assert len(await services(client).store.list_webauthn_credentials(user.id)) == 1

    right = await portal_post(client, path, {"password": PASSWORD}, session=session)
    assert right.status == 303
    assert right.headers["Location"] == "/auth/settings?done=deleted"
    assert await services(client).store.list_webauthn_credentials(user.id) == []
    again = await portal_post(client, path, {"password": PASSWORD}, session=session)
    assert again.status == 404
    login = await passkey_login(client, authenticator)
    assert login.status == 401
    assert "not registered" in (await login.json())["error"]


async def test_replayed_registration_challenge_is_refused(client: Client) -> None:
    """A registration challenge works once: a second device answering the same one is not stored."""
    user = await add_user(client)
    session = await signed_in(client)
    challenge_id, options = await ceremony(client, "/auth/settings/webauthn/options", session=session)
    first = SoftAuthenticator().register(options, origin=PORTAL_ORIGIN)
    second = SoftAuthenticator().register(options, origin=PORTAL_ORIGIN)
    done = await json_post(
        client,
        "/auth/settings/webauthn/register",
        {"challenge_id": challenge_id, "credential": first},
        session=session,
    )
    session = done.cookies[SESSION_COOKIE].value

    replay = await json_post(
        client,
        "/auth/settings/webauthn/register",
        {"challenge_id": challenge_id, "credential": second},
        session=session,
    )

    assert replay.status == 400
    assert "used or expired" in (await replay.json())["error"]
    assert len(await services(client).store.list_webauthn_credentials(user.id)) == 1


async def test_registration_from_another_origin_is_refused(client: Client) -> None:
    """A registration whose client data names another origin is refused and nothing is stored."""
    user = await add_user(client)
    session = await signed_in(client)

    response = await register_key(client, session, SoftAuthenticator(), origin="http://evil.localhost:8080")

    assert response.status == 400
    assert await services(client).store.list_webauthn_credentials(user.id) == []


# --- As the second factor after the password ----------------------------------------------------------


async def test_security_key_appears_in_the_factor_chooser(client: Client) -> None:
    """After the password, a user with an app and a key is offered both on the second-factor page."""
    user, _, _ = await user_with_key(client)
    await add_totp_device(client, user)
    pending = await password_step(client)

    app_page = await (await portal_get(client, "/auth/2fa?method=totp", pending=pending)).text()
    key_page = await (await portal_get(client, "/auth/2fa?method=webauthn", pending=pending)).text()

    assert 'href="/auth/2fa?method=webauthn"' in app_page
    assert "Security key or passkey" in app_page
    assert 'data-webauthn="second-factor"' in key_page
    assert 'href="/auth/2fa?method=totp"' in key_page


async def test_security_key_completes_the_second_factor(client: Client) -> None:
    """Password then a key assertion gives a level-two session and ends the pending login."""
    _, authenticator, _ = await user_with_key(client)
    pending = await password_step(client, rd="http://app.localhost/vault/secret")

    response = await key_second_factor(client, authenticator, pending=pending)

    assert response.status == 200, await response.text()
    assert (await response.json())["next"] == "http://app.localhost/vault/secret"
    session = response.cookies[SESSION_COOKIE].value
    assert await level_of(client, session) is Level.TWO_FACTOR
    assert response.cookies["authgate_2fa"].value == ""


async def test_unregistered_key_is_refused_as_second_factor(client: Client, clock: Clock) -> None:
    """An assertion from a key the account never registered is refused and counts as a failure."""
    await user_with_key(client)
    clock.advance(1)  # failures count after the latest success (the setup's sign-in)
    pending = await password_step(client)
    stranger = SoftAuthenticator()
    stranger.register(
        json.dumps({"rp": {"id": "localhost"}, "user": {"id": b64url(b"x" * 32)}, "challenge": b64url(b"c")}),
        origin=PORTAL_ORIGIN,
    )
    challenge_id, options = await ceremony(client, "/auth/2fa/webauthn/options", pending=pending)
    credential = stranger.assert_(without_allow_list(options), origin=PORTAL_ORIGIN)

    response = await json_post(
        client,
        "/auth/2fa/webauthn",
        {"challenge_id": challenge_id, "credential": credential},
        pending=pending,
    )

    assert response.status == 401
    assert "not registered" in (await response.json())["error"]
    assert SESSION_COOKIE not in response.cookies
    assert await failures(client, "alice") == 1


async def test_another_users_key_is_refused_as_second_factor(client: Client, clock: Clock) -> None:
    """Bob's registered key cannot complete Alice's second step, and the attempt counts against her."""
    await user_with_key(client, "alice")
    _, bobs_key, _ = await user_with_key(client, "bob")
    clock.advance(1)  # failures count after the latest success (the setup's sign-in)
    pending = await password_step(client, "alice")
    challenge_id, options = await ceremony(client, "/auth/2fa/webauthn/options", pending=pending)
    credential = bobs_key.assert_(without_allow_list(options), origin=PORTAL_ORIGIN)

    response = await json_post(
        client,
        "/auth/2fa/webauthn",
        {"challenge_id": challenge_id, "credential": credential},
        pending=pending,
    )

    assert response.status == 401
    assert "another account" in (await response.json())["error"]
    assert SESSION_COOKIE not in response.cookies
    assert await failures(client, "alice") == 1


# --- Passkey (passwordless) login ---------------------------------------------------------------------


async def test_passkey_login_with_uv_counts_as_two_factors(make_client: MakeClient) -> None:
    """A discoverable passkey with user verification signs in with no username: two factors."""
    client = await make_client(RULES)
    await user_with_key(client)
    _, authenticator, _ = await user_with_key(client, "bob")
    challenge_id, options = await ceremony(client, "/auth/login/passkey/options", {"rd": ""})
    assert json.loads(options).get("allowCredentials") in (None, [])

    response = await passkey_login(client, authenticator, challenge_id=challenge_id, options=options)

    assert response.status == 200, await response.text()
    assert (await response.json())["next"] == "/auth/"
    session = response.cookies[SESSION_COOKIE].value
    home = await (await portal_get(client, "/auth/", session=session)).text()
    assert '<strong id="whoami">bob</strong>' in home
    assert "<dd>two factors</dd>" in home
    vault = await forward_auth(client, session, **VAULT)
    assert vault.status == 200
    assert vault.headers["Remote-User"] == "bob"


async def test_passkey_login_without_uv_counts_as_one_factor(make_client: MakeClient) -> None:
    """Without UV (user_verification preferred) a passkey is one factor: a two_factor rule steps up."""
    client = await make_client(RULES)
    assert services(client).config.webauthn.user_verification == "preferred"
    _, authenticator, _ = await user_with_key(client, authenticator=SoftAuthenticator(user_verified=False))

    response = await passkey_login(client, authenticator, rd="http://app.localhost/vault/secret")

    assert response.status == 200, await response.text()
    session = response.cookies[SESSION_COOKIE].value
    assert await level_of(client, session) is Level.ONE_FACTOR
    assert (await forward_auth(client, session)).status == 200
    vault = await forward_auth(client, session, **VAULT)
    assert vault.status == 302
    assert vault.headers["Location"].startswith("http://localhost:8080/auth/2fa?rd=")


async def test_required_uv_refuses_passkey_login_without_uv(make_client: MakeClient) -> None:
    """With user_verification required, a passkey assertion without the UV flag signs nobody in."""
    client = await make_client(REQUIRED_UV)
    _, authenticator, _ = await user_with_key(client)
    authenticator.user_verified = False

    response = await passkey_login(client, authenticator)

    assert response.status == 401
    assert "verify the user" in (await response.json())["error"]
    assert SESSION_COOKIE not in response.cookies


async def test_required_uv_refuses_second_factor_without_uv(make_client: MakeClient) -> None:
    """With user_verification required, a key assertion without the UV flag does not pass the second step."""
    client = await make_client(REQUIRED_UV)
    _, authenticator, _ = await user_with_key(client)
    authenticator.user_verified = False
    pending = await password_step(client)

    response = await key_second_factor(client, authenticator, pending=pending)

    assert response.status == 401
    assert "verify the user" in (await response.json())["error"]
    assert SESSION_COOKIE not in response.cookies


async def test_lowered_sign_count_is_refused(client: Client) -> None:
    """After one login at counter 1, an assertion that repeats counter 1 (a clone) is refused."""
    _, authenticator, _ = await user_with_key(client)
    assert (await passkey_login(client, authenticator)).status == 200
    authenticator.counter = 0

    response = await passkey_login(client, authenticator)

    assert response.status == 401
    assert "cloned" in (await response.json())["error"]


async def test_login_challenge_is_single_use(client: Client) -> None:
    """A passkey-login challenge is consumed by its first use; a fresh assertion for it is refused."""
    _, authenticator, _ = await user_with_key(client)
    challenge_id, options = await ceremony(client, "/auth/login/passkey/options")
    assert (
        await passkey_login(client, authenticator, challenge_id=challenge_id, options=options)
    ).status == 200

    replay = await passkey_login(client, authenticator, challenge_id=challenge_id, options=options)

    assert replay.status == 401
    assert "used or expired" in (await replay.json())["error"]


async def test_login_challenge_expires(client: Client, clock: Clock) -> None:
    """A challenge answered after webauthn.timeout is refused."""
    _, authenticator, _ = await user_with_key(client)
    challenge_id, options = await ceremony(client, "/auth/login/passkey/options")
    clock.advance(services(client).config.webauthn.timeout + 1)

    response = await passkey_login(client, authenticator, challenge_id=challenge_id, options=options)

    assert response.status == 401
    assert "used or expired" in (await response.json())["error"]


# --- CSRF and hostile bodies on the JSON endpoints ----------------------------------------------------


@pytest.mark.parametrize("path", JSON_ENDPOINTS)
@pytest.mark.parametrize(
    ("use_token", "headers"),
    [
        (False, {}),
        (False, {"X-CSRF-Token": "forged.token.value"}),
        (True, {"Origin": "http://evil.localhost"}),
    ],
    ids=["missing", "wrong", "foreign-origin"],
)
async def test_json_endpoints_refuse_bad_csrf(
    client: Client, path: str, use_token: bool, headers: dict[str, str]
) -> None:
    """Every WebAuthn JSON endpoint refuses a missing or wrong X-CSRF-Token (or a foreign Origin) with 403."""
    await add_user(client)
    session = await signed_in(client)

    response = await json_post(client, path, {}, session=session, csrf=use_token, headers=headers)

    assert response.status == 403
    assert "expired" in (await response.json())["error"]


HOSTILE_BODIES = [
    b"not json",
    b"[1, 2, 3]",
    b'"a string"',
    b"null",
    b"\xff\xfe{}",
    b"[" * 50_000,
    b'{"credential": "' + b"A" * 200_000 + b'"}',
    b'{"challenge_id": 5, "credential": []}',
    b'{"challenge_id": ["x"], "credential": {"rawId": 5}, "rd": 7}',
    b'{"challenge_id": null, "credential": null}',
    json.dumps({"challenge_id": "x" * 5000, "credential": {}}).encode(),
    b'{"challenge_id": "abc", "credential": {"rawId": "!!!", "response": []}}',
]


@pytest.mark.parametrize(
    "path", ["/auth/settings/webauthn/register", "/auth/2fa/webauthn", "/auth/login/passkey"]
)
@pytest.mark.parametrize("body", HOSTILE_BODIES, ids=range(len(HOSTILE_BODIES)))
async def test_hostile_json_bodies_get_4xx(client: Client, path: str, body: bytes) -> None:
    """Bodies that are not JSON, not an object, huge or of the wrong types get a 4xx, never a 500."""
    _, _, session = await user_with_key(client)

    response = await json_post(client, path, None, session=session, raw=body)

    assert 400 <= response.status < 500, await response.text()


def _mutations(assertion: dict[str, Any]) -> list[Any]:
    def changed(**response: Any) -> dict[str, Any]:
        return {**assertion, "response": {**assertion["response"], **response}}

    return [
        changed(signature=12),
        changed(signature="%%%"),
        changed(authenticatorData="AAAA"),
        changed(clientDataJSON=b64url(b"not json")),
        changed(clientDataJSON=b64url(b"[1]")),
        changed(clientDataJSON=b64url(b'{"type": 5, "challenge": [], "origin": {}}')),
        changed(userHandle=7),
        changed(userHandle="***"),
        {**assertion, "rawId": "A" * 3000},
        {**assertion, "response": "x"},
        {**assertion, "type": "password"},
        "[" * 30_000,  # a credential given as a JSON string, nested too deep to parse
        "{not json",
    ]


@pytest.mark.parametrize("case", range(13))
async def test_hostile_assertions_get_4xx(client: Client, case: int) -> None:
    """A live challenge answered by a malformed assertion is refused with 401, never a 500."""
    _, authenticator, _ = await user_with_key(client)
    challenge_id, options = await ceremony(client, "/auth/login/passkey/options")
    assertion = _mutations(authenticator.assert_(options, origin=PORTAL_ORIGIN))[case]

    response = await json_post(
        client, "/auth/login/passkey", {"challenge_id": challenge_id, "credential": assertion}
    )

    assert response.status == 401, await response.text()


@pytest.mark.parametrize(
    "field",
    [
        {"attestationObject": b64url(b"\xa1")},
        {"attestationObject": 5},
        {"attestationObject": "%%%"},
        {"clientDataJSON": b64url(b"{}")},
        {"clientDataJSON": None},
    ],
)
async def test_hostile_registrations_get_4xx(client: Client, field: dict[str, Any]) -> None:
    """A live registration challenge answered by a malformed attestation is refused, never a 500."""
    user = await add_user(client)
    session = await signed_in(client)
    challenge_id, options = await ceremony(client, "/auth/settings/webauthn/options", session=session)
    credential = SoftAuthenticator().register(options, origin=PORTAL_ORIGIN)
    credential["response"].update(field)

    response = await json_post(
        client,
        "/auth/settings/webauthn/register",
        {"challenge_id": challenge_id, "credential": credential},
        session=session,
    )

    assert response.status == 400, await response.text()
    assert await services(client).store.list_webauthn_credentials(user.id) == []


async def test_registration_keeps_only_known_transports(client: Client) -> None:
    """Transports are hints: unknown or mistyped entries are dropped, the known ones kept once each."""
    user = await add_user(client)
    session = await signed_in(client)
    challenge_id, options = await ceremony(client, "/auth/settings/webauthn/options", session=session)
    credential = SoftAuthenticator().register(options, origin=PORTAL_ORIGIN)
    credential["response"]["transports"] = ["usb", 1, {"a": 2}, "usb", "teleport", "nfc"]

    response = await json_post(
        client,
        "/auth/settings/webauthn/register",
        {"challenge_id": challenge_id, "credential": credential},
        session=session,
    )

    assert response.status == 200, await response.text()
    [key] = await services(client).store.list_webauthn_credentials(user.id)
    assert key.transports == ("usb", "nfc")
