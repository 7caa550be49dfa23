"""WebAuthn security keys and passkeys: ceremony options and response verification.

Pure: wraps py_webauthn (`webauthn` 3.x). The caller keeps each challenge server-side
(single use, with an expiry: see Store.put_challenge / take_challenge), looks the
credential up by `credential_id_of` before verifying, compares `user_handle_of` with the
stored handle itself (py_webauthn does not), and stores the sign count returned.

User verification (`required | preferred | discouraged`) is asked of the authenticator
in the options; on verification `required` refuses a response without the UV flag
(UserVerificationMissing), the other two accept either and report `user_verified`.

Every py_webauthn error becomes one of:

AuthFailed
└── InvalidWebAuthn            the response does not verify; .reason says why
    ├── UserVerificationMissing  `required`, but the authenticator did not verify the user
    └── SignCountDecreased       the counter went backwards: possibly a cloned authenticator
"""

from __future__ import annotations

import binascii
import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from gateway.errors import AuthFailed

USER_VERIFICATION = ("required", "preferred", "discouraged")
USER_HANDLE_BYTES = 32
MAX_CREDENTIAL_ID_BYTES = 1023  # WebAuthn Level 3, credentialIdLength
TRANSPORTS = tuple(transport.value for transport in AuthenticatorTransport)
SINGLE_DEVICE = "single_device"
MULTI_DEVICE = "multi_device"

# EdDSA first, as py_webauthn's default does: Chromium then creates Ed25519 keys.
SUPPORTED_ALGORITHMS = (
    COSEAlgorithmIdentifier.EDDSA,
    COSEAlgorithmIdentifier.ECDSA_SHA_256,
    COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256,
)

# A few well-known passkey providers (AAGUIDs from the community passkey-aaguids list).
_KNOWN_AAGUIDS: Mapping[str, str] = {
    "ea9b8d66-4d01-1d21-3ce4-b6b48cb575d4": "Google Password Manager",
    "fbfc3007-154e-4ecc-8c0b-6e020557d7bd": "iCloud Keychain",
    "08987058-cadc-4b81-b6e1-30de50dcbe96": "Windows Hello",
    "bada5566-a7aa-401f-bd96-45619a55120d": "1Password",
    "d548826e-79b4-db40-a3d8-11116f7e8349": "Bitwarden",
}
_MAX_NAME_LENGTH = 64


class InvalidWebAuthn(AuthFailed):
    """A WebAuthn response was present but does not verify."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class UserVerificationMissing(InvalidWebAuthn):
    """User verification is required, but the authenticator did not set the UV flag."""

    def __init__(self) -> None:
        super().__init__("the authenticator did not verify the user (PIN or biometrics), which is required")


class SignCountDecreased(InvalidWebAuthn):
    """The signature counter did not increase: the credential may have been cloned."""

    def __init__(self, *, stored: int, received: int) -> None:
        self.stored = stored
        self.received = received
        super().__init__(
            f"signature counter {received} is not above the stored {stored}; "
            "the authenticator may have been cloned"
        )


@dataclass(frozen=True, slots=True)
class NewCredential:
    """A verified registration, ready to be stored."""

    credential_id: bytes
    public_key: bytes  # COSE_Key bytes, as py_webauthn expects them back at authentication
    sign_count: int
    transports: tuple[str, ...]
    aaguid: str
    backup_eligible: bool
    backed_up: bool
    user_verified: bool
    device_type: str  # "single_device" | "multi_device"


@dataclass(frozen=True, slots=True)
class AssertionResult:
    """A verified authentication; store `new_sign_count` and `backed_up` on the credential."""

    new_sign_count: int
    user_verified: bool
    backed_up: bool


def generate_user_handle() -> bytes:
    """Return a new random user handle (WebAuthn user.id): 32 bytes, no personal data."""
    return secrets.token_bytes(USER_HANDLE_BYTES)


def registration_options(
    *,
    rp_id: str,
    rp_name: str,
    user_handle: bytes,
    username: str,
    display_name: str,
    exclude_credentials: Sequence[bytes],
    user_verification: str,
    timeout_ms: int,
) -> tuple[str, bytes]:
    """Return (options JSON for navigator.credentials.create(), challenge to keep server-side)."""
    _check_user_verification(user_verification)
    if not 1 <= len(user_handle) <= 64:
        raise ValueError("a user handle is 1 to 64 bytes")
    options = generate_registration_options(
        rp_id=rp_id,
        rp_name=rp_name,
        user_name=username,
        user_id=user_handle,
        user_display_name=display_name or username,
        timeout=timeout_ms,
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            # "preferred" makes passkeys (discoverable credentials) where the authenticator can
            # store them, and still lets older security keys register as a second factor.
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement(user_verification),
        ),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=bytes(item)) for item in exclude_credentials],
        supported_pub_key_algs=list(SUPPORTED_ALGORITHMS),
    )
    return options_to_json(options), options.challenge


def verify_registration(
    credential: str | dict[str, Any],
    *,
    challenge: bytes,
    rp_id: str,
    origins: Sequence[str],
    user_verification: str,
) -> NewCredential:
    """Verify a navigator.credentials.create() response; raise InvalidWebAuthn (or a subclass)."""
    _check_user_verification(user_verification)
    data = _credential_dict(credential)
    try:
        verified = verify_registration_response(
            credential=data,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=list(origins),
            require_user_presence=True,
            # checked below, so a missing UV flag gets its own exception
            require_user_verification=False,
            supported_pub_key_algs=list(SUPPORTED_ALGORITHMS),
        )
    except (WebAuthnException, ValueError, TypeError, KeyError, IndexError) as exc:
        raise InvalidWebAuthn(_reason(exc)) from exc
    if user_verification == "required" and not verified.user_verified:
        raise UserVerificationMissing()
    if len(verified.credential_id) > MAX_CREDENTIAL_ID_BYTES:
        raise InvalidWebAuthn("the credential id is longer than 1023 bytes")
    device_type = str(getattr(verified.credential_device_type, "value", verified.credential_device_type))
    return NewCredential(
        credential_id=verified.credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        transports=_transports_of(data),
        aaguid=str(verified.aaguid),
        backup_eligible=device_type == MULTI_DEVICE,
        backed_up=bool(verified.credential_backed_up),
        user_verified=bool(verified.user_verified),
        device_type=device_type,
    )


def authentication_options(
    *,
    rp_id: str,
    allow_credentials: Sequence[tuple[bytes, Sequence[str]]],
    user_verification: str,
    timeout_ms: int,
) -> tuple[str, bytes]:
    """Return (options JSON for navigator.credentials.get(), challenge to keep server-side).

    An empty `allow_credentials` asks for a discoverable credential (passkey login).
    """
    _check_user_verification(user_verification)
    descriptors = [
        PublicKeyCredentialDescriptor(
            id=bytes(credential_id),
            transports=[AuthenticatorTransport(t) for t in transports if t in TRANSPORTS] or None,
        )
        for credential_id, transports in allow_credentials
    ]
    options = generate_authentication_options(
        rp_id=rp_id,
        timeout=timeout_ms,
        allow_credentials=descriptors,
        user_verification=UserVerificationRequirement(user_verification),
    )
    return options_to_json(options), options.challenge


def credential_id_of(credential: str | dict[str, Any]) -> bytes:
    """Return the raw credential id a response names, to look the credential up; InvalidWebAuthn."""
    data = _credential_dict(credential)
    raw_id = _base64url_field(data, "rawId")
    if raw_id is None or not raw_id:
        raise InvalidWebAuthn("the credential has no rawId")
    if len(raw_id) > MAX_CREDENTIAL_ID_BYTES:
        raise InvalidWebAuthn("the credential id is longer than 1023 bytes")
    return raw_id


def user_handle_of(credential: str | dict[str, Any]) -> bytes | None:
    """Return the user handle of an assertion, None when the authenticator sent none; InvalidWebAuthn."""
    response = _credential_dict(credential).get("response")
    if not isinstance(response, dict):
        raise InvalidWebAuthn("the credential has no response")
    handle = _base64url_field(response, "userHandle")
    return handle or None


def verify_authentication(
    credential: str | dict[str, Any],
    *,
    challenge: bytes,
    rp_id: str,
    origins: Sequence[str],
    public_key: bytes,
    current_sign_count: int,
    user_verification: str,
) -> AssertionResult:
    """Verify a navigator.credentials.get() response against the stored credential.

    Raise InvalidWebAuthn (or a subclass); on success store `new_sign_count`.
    """
    _check_user_verification(user_verification)
    data = _credential_dict(credential)
    try:
        verified = verify_authentication_response(
            credential=data,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=list(origins),
            credential_public_key=public_key,
            # The counter is compared below, after the signature is known to be good, so a
            # forged response cannot raise the clone warning; 0 disables py_webauthn's check.
            credential_current_sign_count=0,
            require_user_verification=False,
        )
    except (WebAuthnException, ValueError, TypeError, KeyError, IndexError) as exc:
        raise InvalidWebAuthn(_reason(exc)) from exc
    if user_verification == "required" and not verified.user_verified:
        raise UserVerificationMissing()
    received = verified.new_sign_count
    # Authenticators without a counter (most synced passkeys) always send 0.
    if received != 0 and current_sign_count != 0 and received <= current_sign_count:
        raise SignCountDecreased(stored=current_sign_count, received=received)
    return AssertionResult(
        new_sign_count=max(received, current_sign_count),
        user_verified=bool(verified.user_verified),
        backed_up=bool(verified.credential_backed_up),
    )


def default_device_name(aaguid: str, transports: Iterable[str], device_type: str) -> str:
    """Return a name for a new credential the user may change: the provider, or Passkey / Security key."""
    known = _KNOWN_AAGUIDS.get(aaguid.lower())
    if known is not None:
        return known
    transports = set(transports)
    if device_type == MULTI_DEVICE or transports & {"internal", "hybrid", "cable"}:
        return "Passkey"
    return "Security key"


def unique_name(base: str, taken: Iterable[str]) -> str:
    """Return `base`, or `base 2`, `base 3`... whichever is not in `taken` (case-insensitively)."""
    used = {name.casefold() for name in taken}
    base = base.strip()[:_MAX_NAME_LENGTH] or "Security key"
    if base.casefold() not in used:
        return base
    number = 2
    while f"{base} {number}".casefold() in used:
        number += 1
    return f"{base} {number}"


def origin_of(url: str) -> str:
    """Return a URL's origin as browsers write it: scheme://host[:port], without a default port."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if ":" in host:
        host = f"[{host}]"
    if port is None or (scheme, port) in (("https", 443), ("http", 80)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def check_relying_party(rp_id: str, origins: Sequence[str]) -> list[str]:
    """Return what is wrong with an RP ID and its allowed origins (empty list = fine)."""
    problems: list[str] = []
    if not rp_id:
        problems.append("the RP ID is empty; use the domain the portal is under, like example.com")
        return problems
    if _is_ip(rp_id):
        problems.append(f"RP ID {rp_id!r} is an IP address; browsers accept only a domain name")
        return problems
    if rp_id != rp_id.lower() or not _is_hostname(rp_id):
        problems.append(f"RP ID {rp_id!r} is not a lower-case domain name like example.com")
        return problems
    if not origins:
        problems.append("no origins are allowed; list the portal's origin, like https://auth.example.com")
    for origin in origins:
        reason = _origin_problem(origin, rp_id)
        if reason is not None:
            problems.append(f"origin {origin!r} {reason}")
    return problems


# --- helpers -----------------------------------------------------------------------------------------


def _check_user_verification(value: str) -> None:
    if value not in USER_VERIFICATION:
        raise ValueError(f"user_verification must be one of {USER_VERIFICATION}, got {value!r}")


def _credential_dict(credential: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(credential, str | bytes):
        try:
            credential = json.loads(credential)
        except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
            raise InvalidWebAuthn("the credential is not valid JSON") from exc
    if not isinstance(credential, dict):
        raise InvalidWebAuthn("the credential is not a JSON object")
    return credential


def _base64url_field(data: Mapping[str, Any], key: str) -> bytes | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidWebAuthn(f"{key} is not a base64url string")
    try:
        return base64url_to_bytes(value)
    except (binascii.Error, ValueError) as exc:
        raise InvalidWebAuthn(f"{key} is not valid base64url") from exc


def _transports_of(data: Mapping[str, Any]) -> tuple[str, ...]:
    response = data.get("response")
    values = response.get("transports") if isinstance(response, dict) else None
    if not isinstance(values, list):
        return ()
    # Known values only, each once, in the order given: browsers pass these back at login.
    seen: list[str] = []
    for value in values:
        if isinstance(value, str) and value in TRANSPORTS and value not in seen:
            seen.append(value)
    return tuple(seen)


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__


def _is_ip(host: str) -> bool:
    try:
        ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _is_hostname(host: str) -> bool:
    if len(host) > 253 or not host.isascii():
        return False
    labels = host.split(".")
    return all(
        0 < len(label) <= 63
        and not label.startswith("-")
        and not label.endswith("-")
        and all(c.isalnum() or c == "-" for c in label)
        for label in labels
    )


def _is_local(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")


def _origin_problem(origin: str, rp_id: str) -> str | None:
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an origin like https://auth.example.com"
    if parts.username is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must be scheme://host[:port] only, without user, path, query or fragment"
    try:
        parts.port  # noqa: B018 - the property raises on a bad port
    except ValueError:
        return "has an invalid port"
    host = parts.hostname
    if _is_ip(host):
        return "has an IP address as host; WebAuthn needs a domain name"
    if parts.scheme != "https" and not _is_local(host):
        return "must use https (http is allowed only for localhost)"
    if host != rp_id and not host.endswith(f".{rp_id}"):
        return f"has host {host}, which is not the RP ID {rp_id} or under it"
    if host != rp_id and rp_id == "localhost":
        # Chromium treats localhost as a registry suffix here: app.localhost needs RP ID app.localhost.
        return f"has host {host}, which is not the RP ID {rp_id}; use RP ID {host}"
    if origin != origin_of(origin):
        return f"is not written as browsers send it; use {origin_of(origin)!r}"
    return None
