"""Time-based one-time passwords (RFC 6238): secrets, provisioning URIs, QR codes, verification.

Pure: the caller passes the clock (`now`) and the device's last accepted time step,
and stores the step `verify` returns, so a code can never be accepted twice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from urllib.parse import quote, urlencode

import segno

ALGORITHMS = ("SHA1", "SHA256", "SHA512")
DIGITS = (6, 8)
SECRET_BYTES = 20  # 160 bits, RFC 4226's recommended key length (and what pyotp insists on)

_HASHES = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}
_SEPARATORS = str.maketrans("", "", " \t\r\n-")


def generate_secret() -> str:
    """Return a new random 160-bit secret in base32 (32 characters, no padding)."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def sealing_context(user_id: int) -> str:
    """Return the associated data a user's TOTP secrets are sealed with (see SecretBox)."""
    # Binding the ciphertext to the user means a sealed secret copied into another
    # user's row does not open.
    return f"totp:{user_id}"


def provisioning_uri(
    secret: str, *, account: str, issuer: str, digits: int, period: int, algorithm: str
) -> str:
    """Return the otpauth:// URI (Key URI Format) that authenticator apps import."""
    _check_parameters(digits, algorithm)
    if ":" in issuer or ":" in account:
        # The label is "issuer:account"; a colon in either part makes it ambiguous.
        raise ValueError("issuer and account must not contain ':'")
    label = f"{quote(issuer, safe='')}:{quote(account, safe='')}"
    query = urlencode(
        {
            "secret": _normalise_secret(secret),
            "issuer": issuer,
            "algorithm": algorithm,
            "digits": digits,
            "period": period,
        },
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"


def qr_svg(uri: str, *, title: str = "TOTP QR code") -> str:
    """Return `uri` as a QR code in an inline <svg> element (no XML declaration); segno escapes `title`."""
    qr = segno.make_qr(uri, error="m")
    return str(qr.svg_inline(scale=4, border=4, dark="#000", light="#fff", title=title))


def code_at(secret: str, step: int, *, digits: int, algorithm: str) -> str:
    """Return the code for time step `step` (RFC 4226 HOTP with the step as counter)."""
    _check_parameters(digits, algorithm)
    if step < 0:
        raise ValueError(f"time step must not be negative, got {step}")
    key = _decode_secret(secret)
    digest = hmac.new(key, struct.pack(">Q", step), _HASHES[algorithm]).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def time_step(now: float, *, period: int) -> int:
    """Return the RFC 6238 time step (T) at Unix time `now`."""
    if period < 1:
        raise ValueError(f"period must be at least 1 second, got {period}")
    return int(now // period)


def verify(
    secret: str,
    code: str,
    *,
    last_step: int | None,
    now: float,
    period: int,
    digits: int,
    algorithm: str,
    skew: int,
) -> int | None:
    """Return the time step `code` is valid for, or None; steps <= `last_step` are never accepted.

    Accepts steps within `skew` steps either side of the current one. Store the
    returned step as the device's new last step (atomically, see
    Store.use_totp_step) so the same code cannot be replayed.
    """
    _check_parameters(digits, algorithm)
    if skew < 0:
        raise ValueError(f"skew must not be negative, got {skew}")
    candidate = code.translate(_SEPARATORS)
    # The length and digits of what the user typed are no secret, so an early
    # answer here leaks nothing.
    if len(candidate) != digits or not (candidate.isascii() and candidate.isdigit()):
        return None
    current = time_step(now, period=period)
    matched: int | None = None
    # Every step in the window is computed and compared, matched or not, so the
    # time taken says nothing about which step (if any) matched.
    for step in range(max(current - skew, 0), current + skew + 1):
        expected = code_at(secret, step, digits=digits, algorithm=algorithm)
        equal = hmac.compare_digest(expected.encode("ascii"), candidate.encode("ascii"))
        fresh = last_step is None or step > last_step
        if equal and fresh and matched is None:
            matched = step
    return matched


def _check_parameters(digits: int, algorithm: str) -> None:
    if digits not in DIGITS:
        raise ValueError(f"digits must be one of {DIGITS}, got {digits}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


def _normalise_secret(secret: str) -> str:
    return secret.translate(_SEPARATORS).upper().rstrip("=")


def _decode_secret(secret: str) -> bytes:
    text = _normalise_secret(secret)
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except binascii.Error as exc:
        raise ValueError("the TOTP secret is not valid base32") from exc
