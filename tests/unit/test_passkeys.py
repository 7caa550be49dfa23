"""WebAuthn ceremonies through gateway.factors.passkeys, driven by a software authenticator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import AuthFailed
from gateway.factors import passkeys
from gateway.factors.passkeys import (
    AssertionResult,
    InvalidWebAuthn,
    NewCredential,
    SignCountDecreased,
    UserVerificationMissing,
)
from gateway.store.sqlite import Store
from tests.webauthn_authenticator import SoftAuthenticator, b64url, unb64url

RP_ID = "example.com"
ORIGIN = "https://auth.example.com"
ORIGINS = (ORIGIN, "https://auth.example.com:8443")
HANDLE = bytes(range(32))


def register(
    authenticator: SoftAuthenticator,
    *,
    user_verification: str = "preferred",
    origin: str = ORIGIN,
    rp_id: str | None = None,
    exclude: tuple[bytes, ...] = (),
) -> NewCredential:
    """Run a registration ceremony end to end and return what would be stored."""
    options, challenge = passkeys.registration_options(
        rp_id=RP_ID,
        rp_name="authgate",
        user_handle=HANDLE,
        username="bob",
        display_name="Bob",
        exclude_credentials=exclude,
        user_verification=user_verification,
        timeout_ms=60000,
    )
    response = authenticator.register(options, origin=origin, rp_id=rp_id)
    return passkeys.verify_registration(
        response, challenge=challenge, rp_id=RP_ID, origins=ORIGINS, user_verification=user_verification
    )


def login_options(
    credential: NewCredential | None, user_verification: str = "preferred"
) -> tuple[str, bytes]:
    allow = [] if credential is None else [(credential.credential_id, credential.transports)]
    return passkeys.authentication_options(
        rp_id=RP_ID, allow_credentials=allow, user_verification=user_verification, timeout_ms=60000
    )


def verify(
    response: dict[str, Any] | str,
    challenge: bytes,
    credential: NewCredential,
    *,
    sign_count: int = 0,
    user_verification: str = "preferred",
) -> AssertionResult:
    return passkeys.verify_authentication(
        response,
        challenge=challenge,
        rp_id=RP_ID,
        origins=ORIGINS,
        public_key=credential.public_key,
        current_sign_count=sign_count,
        user_verification=user_verification,
    )


def test_user_handle_is_random() -> None:
    """User handles are 32 random bytes."""
    first, second = passkeys.generate_user_handle(), passkeys.generate_user_handle()
    assert len(first) == 32 and first != second


def test_registration_options_ask_for_passkeys() -> None:
    """Options ask for a discoverable credential, no attestation, and EdDSA, ES256 and RS256 keys."""
    options_json, challenge = passkeys.registration_options(
        rp_id=RP_ID,
        rp_name="ACME",
        user_handle=HANDLE,
        username="bob",
        display_name="Bob",
        exclude_credentials=[b"old-key"],
        user_verification="required",
        timeout_ms=30000,
    )
    options = json.loads(options_json)
    assert options["rp"] == {"id": RP_ID, "name": "ACME"}
    assert options["user"] == {"id": b64url(HANDLE), "name": "bob", "displayName": "Bob"}
    assert unb64url(options["challenge"]) == challenge and len(challenge) >= 32
    assert [p["alg"] for p in options["pubKeyCredParams"]] == [-8, -7, -257]
    assert options["authenticatorSelection"]["residentKey"] == "preferred"
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert options["attestation"] == "none"
    assert options["timeout"] == 30000
    assert [unb64url(c["id"]) for c in options["excludeCredentials"]] == [b"old-key"]


def test_registration_succeeds() -> None:
    """A good registration returns the credential's id, key, counter, transports and flags."""
    authenticator = SoftAuthenticator(transports=("usb", "nfc", "bogus", "usb"))
    credential = register(authenticator)
    assert credential.credential_id == authenticator.credentials[0].credential_id
    assert credential.public_key
    assert credential.sign_count == 0
    assert credential.transports == ("usb", "nfc")
    assert credential.aaguid == "00000000-0000-0000-0000-000000000000"
    assert credential.user_verified is True
    assert (credential.backup_eligible, credential.backed_up) == (False, False)
    assert credential.device_type == "single_device"


def test_registration_of_a_synced_passkey() -> None:
    """Backup flags make a multi-device credential."""
    credential = register(SoftAuthenticator(backup_eligible=True, backed_up=True))
    assert (credential.backup_eligible, credential.backed_up) == (True, True)
    assert credential.device_type == "multi_device"


def test_registration_accepts_a_json_string() -> None:
    """The credential may arrive as the JSON text the browser posted."""
    authenticator = SoftAuthenticator()
    options, challenge = passkeys.registration_options(
        rp_id=RP_ID,
        rp_name="authgate",
        user_handle=HANDLE,
        username="bob",
        display_name="",
        exclude_credentials=(),
        user_verification="preferred",
        timeout_ms=60000,
    )
    response = json.dumps(authenticator.register(options, origin=ORIGIN))
    new = passkeys.verify_registration(
        response, challenge=challenge, rp_id=RP_ID, origins=ORIGINS, user_verification="preferred"
    )
    assert new.credential_id == authenticator.credentials[0].credential_id


@pytest.mark.parametrize(
    ("origin", "rp_id"),
    [
        ("https://evil.example", None),
        ("https://auth.example.com:9443", None),
        ("http://auth.example.com", None),
        (ORIGIN, "evil.example"),
        (ORIGIN, "auth.example.com"),
    ],
)
def test_registration_from_elsewhere_is_rejected(origin: str, rp_id: str | None) -> None:
    """A wrong origin or RP ID fails registration."""
    with pytest.raises(InvalidWebAuthn):
        register(SoftAuthenticator(), origin=origin, rp_id=rp_id)


def test_registration_with_another_challenge_is_rejected() -> None:
    """A response to another ceremony's challenge (a replay) fails."""
    authenticator = SoftAuthenticator()
    options, _ = passkeys.registration_options(
        rp_id=RP_ID,
        rp_name="authgate",
        user_handle=HANDLE,
        username="bob",
        display_name="Bob",
        exclude_credentials=(),
        user_verification="preferred",
        timeout_ms=60000,
    )
    response = authenticator.register(options, origin=ORIGIN)
    with pytest.raises(InvalidWebAuthn, match="challenge"):
        passkeys.verify_registration(
            response, challenge=b"x" * 64, rp_id=RP_ID, origins=ORIGINS, user_verification="preferred"
        )


def test_registration_without_uv_when_required_is_rejected() -> None:
    """`required` refuses a registration without the UV flag."""
    with pytest.raises(UserVerificationMissing):
        register(SoftAuthenticator(user_verified=False), user_verification="required")


@pytest.mark.parametrize("user_verification", ["preferred", "discouraged"])
def test_registration_without_uv_is_accepted_otherwise(user_verification: str) -> None:
    """`preferred` and `discouraged` accept a registration without UV and say so."""
    credential = register(SoftAuthenticator(user_verified=False), user_verification=user_verification)
    assert credential.user_verified is False


def test_second_factor_login() -> None:
    """An assertion for an allowed credential verifies and returns the new counter."""
    authenticator = SoftAuthenticator()
    credential = register(authenticator)
    options_json, challenge = login_options(credential)
    options = json.loads(options_json)
    assert options["rpId"] == RP_ID
    assert [unb64url(c["id"]) for c in options["allowCredentials"]] == [credential.credential_id]
    assert options["allowCredentials"][0]["transports"] == ["internal", "hybrid"]
    response = authenticator.assert_(options_json, origin=ORIGIN)
    assert passkeys.credential_id_of(response) == credential.credential_id
    result = verify(response, challenge, credential)
    assert result == AssertionResult(new_sign_count=1, user_verified=True, backed_up=False)


def test_passkey_login_returns_the_user_handle() -> None:
    """With an empty allow list the discoverable credential answers and names its user."""
    authenticator = SoftAuthenticator(resident_key=True)
    credential = register(authenticator)
    options_json, challenge = login_options(None)
    assert json.loads(options_json)["allowCredentials"] == []
    response = authenticator.assert_(options_json, origin=ORIGIN)
    assert passkeys.user_handle_of(response) == HANDLE
    assert passkeys.credential_id_of(response) == credential.credential_id
    assert verify(response, challenge, credential).new_sign_count == 1


def test_assertion_without_user_handle() -> None:
    """A non-discoverable credential sends no user handle: None."""
    authenticator = SoftAuthenticator(resident_key=False)
    credential = register(authenticator)
    options_json, _ = login_options(credential)
    response = authenticator.assert_(options_json, origin=ORIGIN)
    assert passkeys.user_handle_of(response) is None


@pytest.mark.parametrize(
    ("origin", "rp_id"),
    [
        ("https://evil.example", None),
        ("https://example.com.evil.example", None),
        ("http://auth.example.com", None),
        (ORIGIN, "evil.example"),
        (ORIGIN, "sub.example.com"),
    ],
)
def test_login_from_elsewhere_is_rejected(origin: str, rp_id: str | None) -> None:
    """A wrong origin or RP ID fails the assertion."""
    authenticator = SoftAuthenticator()
    credential = register(authenticator)
    authenticator.credentials[0].rp_id = rp_id or RP_ID  # let the authenticator answer for it
    options_json, challenge = login_options(credential)
    response = authenticator.assert_(options_json, origin=origin, rp_id=rp_id)
    with pytest.raises(InvalidWebAuthn):
        verify(response, challenge, credential)


def test_replayed_assertion_is_rejected() -> None:
    """An assertion for one challenge does not verify against the next ceremony's challenge."""
    authenticator = SoftAuthenticator()
    credential = register(authenticator)
    options_json, challenge = login_options(credential)
    response = authenticator.assert_(options_json, origin=ORIGIN)
    verify(response, challenge, credential)
    _, next_challenge = login_options(credential)
    with pytest.raises(InvalidWebAuthn, match="challenge"):
        verify(response, next_challenge, credential, sign_count=1)


async def test_expired_challenge_is_rejected(tmp_path: Path) -> None:
    """A challenge kept in the store cannot be taken after its expiry, so the ceremony cannot finish."""
    store = await Store.open(tmp_path / "db.sqlite3", clock=lambda: 1000.0)
    try:
        authenticator = SoftAuthenticator()
        credential = register(authenticator)
        options_json, challenge = login_options(credential)
        await store.put_challenge(
            "ceremony", purpose="second-factor", challenge=challenge, user_id=None, expires_at=1060.0
        )
        authenticator.assert_(options_json, origin=ORIGIN)
        assert await store.take_challenge("ceremony", purpose="second-factor", now=1061.0) is None
    finally:
        await store.close()


async def test_fresh_challenge_from_the_store_verifies(tmp_path: Path) -> None:
    """The same flow within the expiry gets the challenge back and verifies."""
    store = await Store.open(tmp_path / "db.sqlite3", clock=lambda: 1000.0)
    try:
        authenticator = SoftAuthenticator()
        credential = register(authenticator)
        options_json, challenge = login_options(credential)
        await store.put_challenge(
            "ceremony", purpose="second-factor", challenge=challenge, user_id=None, expires_at=1060.0
        )
        response = authenticator.assert_(options_json, origin=ORIGIN)
        taken = await store.take_challenge("ceremony", purpose="second-factor", now=1059.0)
        assert taken is not None
        assert verify(response, taken[0], credential).new_sign_count == 1
    finally:
        await store.close()


@pytest.mark.parametrize(("stored", "received"), [(5, 5), (5, 3)])
def test_lowered_sign_count_is_rejected(stored: int, received: int) -> None:
    """A counter at or below the stored one raises the clone warning."""
    authenticator = SoftAuthenticator()
    credential = register(authenticator)
    authenticator.counter = received - 1  # the authenticator adds one before signing
    options_json, challenge = login_options(credential)
    response = authenticator.assert_(options_json, origin=ORIGIN)
    with pytest.raises(SignCountDecreased) as caught:
        verify(response, challenge, credential, sign_count=stored)
    assert (caught.value.stored, caught.value.received) == (stored, received)


def test_counterless_authenticator_is_accepted() -> None:
    """An authenticator that always sends 0 (synced passkeys) passes and keeps the stored count."""
    authenticator = SoftAuthenticator(counter_step=0)
    credential = register(authenticator)
    for stored in (0, 7):
        options_json, challenge = login_options(credential)
        response = authenticator.assert_(options_json, origin=ORIGIN)
        assert verify(response, challenge, credential, sign_count=stored).new_sign_count == stored


def test_forged_signature_is_rejected_before_the_counter() -> None:
    """A response signed by another key fails as invalid, never as a clone warning."""
    authenticator = SoftAuthenticator()
    credential = register(authenticator)
    other = register(SoftAuthenticator())
    options_json, challenge = login_options(credential)
    response = authenticator.assert_(options_json, origin=ORIGIN)
    with pytest.raises(InvalidWebAuthn) as caught:
        verify(response, challenge, other, sign_count=100)
    assert not isinstance(caught.value, SignCountDecreased)


def test_missing_uv_with_required_is_rejected() -> None:
    """`required` refuses an assertion without the UV flag."""
    authenticator = SoftAuthenticator()
    credential = register(authenticator)
    authenticator.user_verified = False
    options_json, challenge = login_options(credential, "required")
    assert json.loads(options_json)["userVerification"] == "required"
    response = authenticator.assert_(options_json, origin=ORIGIN)
    with pytest.raises(UserVerificationMissing):
        verify(response, challenge, credential, user_verification="required")


@pytest.mark.parametrize("user_verification", ["preferred", "discouraged"])
def test_missing_uv_is_accepted_otherwise(user_verification: str) -> None:
    """`preferred` and `discouraged` accept an assertion without UV and report it."""
    authenticator = SoftAuthenticator(user_verified=False)
    credential = register(authenticator, user_verification=user_verification)
    options_json, challenge = login_options(credential, user_verification)
    response = authenticator.assert_(options_json, origin=ORIGIN)
    result = verify(response, challenge, credential, user_verification=user_verification)
    assert result.user_verified is False


def test_every_error_is_an_auth_failure() -> None:
    """The module's exceptions all derive from AuthFailed."""
    for error in (InvalidWebAuthn, UserVerificationMissing, SignCountDecreased):
        assert issubclass(error, AuthFailed)


@pytest.mark.parametrize(
    "response",
    [
        "not json",
        "[]",
        {},
        {"id": "x", "rawId": "x", "type": "public-key"},
        {"id": "AA", "rawId": "AA", "type": "public-key", "response": {"clientDataJSON": 5}},
        {
            "id": "AA",
            "rawId": "AA",
            "type": "public-key",
            "response": {"clientDataJSON": "e30", "authenticatorData": "AA", "signature": "AA"},
        },
        {
            "id": "AA",
            "rawId": "AA",
            "type": "public-key",
            "response": {"clientDataJSON": "!!", "authenticatorData": "AA", "signature": "AA"},
        },
    ],
)
def test_malformed_assertions_are_invalid(response: object) -> None:
    """Garbage from the browser is InvalidWebAuthn, never another exception."""
    credential = register(SoftAuthenticator())
    with pytest.raises(InvalidWebAuthn):
        verify(response, b"c" * 32, credential)  # type: ignore[arg-type]
    with pytest.raises(InvalidWebAuthn):
        passkeys.verify_registration(
            response,  # type: ignore[arg-type]
            challenge=b"c" * 32,
            rp_id=RP_ID,
            origins=ORIGINS,
            user_verification="preferred",
        )


@pytest.mark.parametrize(
    "response",
    ["{", "[]", {}, {"rawId": 5}, {"rawId": ""}, {"rawId": "!!!"}, {"rawId": b64url(b"x" * 1024)}],
)
def test_malformed_credential_ids_are_invalid(response: object) -> None:
    """credential_id_of refuses missing, empty, malformed and oversized ids."""
    with pytest.raises(InvalidWebAuthn):
        passkeys.credential_id_of(response)  # type: ignore[arg-type]


@pytest.mark.parametrize("response", [{}, {"response": "x"}, {"response": {"userHandle": 5}}])
def test_malformed_user_handles_are_invalid(response: dict[str, Any]) -> None:
    """user_handle_of refuses a missing response or a handle that is not base64url text."""
    with pytest.raises(InvalidWebAuthn):
        passkeys.user_handle_of(response)


def test_unknown_user_verification_setting_is_a_bug() -> None:
    """A user_verification value outside the three is a programming error (ValueError)."""
    with pytest.raises(ValueError, match="user_verification"):
        login_options(None, "always")


@pytest.mark.parametrize(
    ("aaguid", "transports", "device_type", "expected"),
    [
        ("00000000-0000-0000-0000-000000000000", ("usb",), "single_device", "Security key"),
        ("00000000-0000-0000-0000-000000000000", ("nfc", "usb"), "single_device", "Security key"),
        ("00000000-0000-0000-0000-000000000000", ("ble",), "single_device", "Security key"),
        ("00000000-0000-0000-0000-000000000000", (), "single_device", "Security key"),
        ("00000000-0000-0000-0000-000000000000", ("usb",), "multi_device", "Passkey"),
        ("00000000-0000-0000-0000-000000000000", ("hybrid", "internal"), "single_device", "Passkey"),
        (
            "EA9B8D66-4D01-1D21-3CE4-B6B48CB575D4",
            ("hybrid", "internal"),
            "multi_device",
            "Google Password Manager",
        ),
    ],
)
def test_default_device_name(
    aaguid: str, transports: tuple[str, ...], device_type: str, expected: str
) -> None:
    """New credentials are named after the provider when known, else Passkey or Security key."""
    assert passkeys.default_device_name(aaguid, transports, device_type) == expected


def test_unique_name() -> None:
    """A taken name gets the next free number, case-insensitively."""
    assert passkeys.unique_name("Passkey", []) == "Passkey"
    assert passkeys.unique_name("Passkey", ["passkey", "PASSKEY 2"]) == "Passkey 3"


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://Auth.Example.com/auth/", "https://auth.example.com"),
        ("https://auth.example.com:443", "https://auth.example.com"),
        ("https://auth.example.com:8443/x", "https://auth.example.com:8443"),
        ("http://localhost:8080/auth", "http://localhost:8080"),
        ("http://localhost:80", "http://localhost"),
    ],
)
def test_origin_of(url: str, origin: str) -> None:
    """Origins are written as browsers send them."""
    assert passkeys.origin_of(url) == origin


@pytest.mark.parametrize(
    ("rp_id", "origins"),
    [
        ("example.com", ["https://example.com"]),
        ("example.com", ["https://auth.example.com", "https://a.b.example.com:8443"]),
        ("localhost", ["http://localhost:8080", "https://localhost"]),
        ("app.localhost", ["http://app.localhost:9000"]),
    ],
)
def test_relying_party_accepted(rp_id: str, origins: list[str]) -> None:
    """Origins on the RP ID or under it, https or http://localhost, are fine."""
    assert passkeys.check_relying_party(rp_id, origins) == []


@pytest.mark.parametrize(
    ("rp_id", "origins", "fragment"),
    [
        ("", ["https://example.com"], "empty"),
        ("127.0.0.1", ["http://127.0.0.1:8080"], "IP address"),
        ("::1", ["http://[::1]:8080"], "IP address"),
        ("https://example.com", ["https://example.com"], "domain name"),
        ("Example.com", ["https://example.com"], "domain name"),
        ("example.com", [], "no origins"),
        ("example.com", ["http://auth.example.com"], "https"),
        ("example.com", ["https://evil.example"], "not the RP ID"),
        ("example.com", ["https://evilexample.com"], "not the RP ID"),
        ("example.com", ["https://example.com.evil.example"], "not the RP ID"),
        ("auth.example.com", ["https://example.com"], "not the RP ID"),
        ("localhost", ["http://app.localhost:8080"], "not the RP ID"),
        ("example.com", ["https://auth.example.com/auth"], "path"),
        ("example.com", ["https://user@auth.example.com"], "user"),
        ("example.com", ["auth.example.com"], "not an origin"),
        ("example.com", ["https://auth.example.com:443"], "as browsers send it"),
        ("example.com", ["https://Auth.example.com"], "as browsers send it"),
        ("example.com", ["https://auth.example.com:99999"], "invalid port"),
    ],
)
def test_relying_party_problems(rp_id: str, origins: list[str], fragment: str) -> None:
    """Each misfit between RP ID and origins is reported."""
    problems = passkeys.check_relying_party(rp_id, origins)
    assert len(problems) == 1 and fragment in problems[0], problems


def test_credential_nested_too_deep_is_invalid() -> None:
    """A credential given as a JSON string nested beyond the parser's depth is invalid, not a crash."""
    with pytest.raises(InvalidWebAuthn, match="not valid JSON"):
        passkeys.credential_id_of("[" * 100_000)
