"""Encrypt small secrets at rest (TOTP seeds) with AES-256-GCM under a key kept outside the database.

A stolen copy of the SQLite file alone then yields no usable TOTP secret. Keys come
from one root: `secrets.storage_key` in the configuration, or else a random key
generated once into data_dir/secrets/storage_key (mode 0600). Each purpose gets its
own subkey (HKDF), so the TOTP cipher key and the recovery-code pepper never coincide.

Sealed format: "v1." + base64url(nonce[12] || ciphertext || tag[16]), no padding. The
caller's context (e.g. "totp:<user_id>") is authenticated as associated data.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import StorageError
from gateway.secret_files import load_or_create_secret_lines

KEY_BYTES = 32
STORAGE_KEY_FILE = "storage_key"  # under data_dir/secrets/
PURPOSE_TOTP = "totp-secrets"
PURPOSE_RECOVERY = "recovery-pepper"

_VERSION = "v1"
_NONCE_BYTES = 12
_TAG_BYTES = 16


class InvalidSealedSecret(StorageError):
    """A sealed value does not open: malformed, unknown version, wrong key, wrong context or tampered."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class SecretBox:
    """Seal and open short strings with AES-256-GCM, binding each to a context string."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, *, context: str) -> str:
        """Encrypt `plaintext` under a fresh random nonce; the result is ASCII and versioned."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), _associated_data(context))
        return f"{_VERSION}.{_b64encode(nonce + sealed)}"

    def open(self, token: str, *, context: str) -> str:
        """Decrypt a value from `seal` made with the same key and context; InvalidSealedSecret otherwise."""
        version, dot, body = token.partition(".")
        if not dot:
            raise InvalidSealedSecret("not a sealed value (no version prefix)")
        if version != _VERSION:
            raise InvalidSealedSecret(f"unknown sealed-value version {version[:8]!r}")
        try:
            raw = _b64decode(body)
        except (binascii.Error, ValueError) as exc:
            raise InvalidSealedSecret("sealed value is not valid base64url") from exc
        if len(raw) < _NONCE_BYTES + _TAG_BYTES:
            raise InvalidSealedSecret("sealed value is too short")
        nonce, sealed = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
        try:
            plaintext = self._aead.decrypt(nonce, sealed, _associated_data(context))
        except InvalidTag as exc:
            # GCM cannot tell these apart, and an attacker should not learn which it was.
            raise InvalidSealedSecret("wrong storage key, wrong context, or the value was altered") from exc
        return plaintext.decode("utf-8")


def load_storage_key(*, data_dir: str, configured: str = "") -> bytes:
    """Return the 32-byte root storage key from config, else from data_dir/secrets/storage_key."""
    if configured:
        material = configured
    else:
        # Generated once on first start; losing this file makes every TOTP secret and
        # recovery code unreadable, so it belongs in backups with the database.
        material = load_or_create_secret_lines(data_dir, STORAGE_KEY_FILE)[0]
    return _hkdf(material.encode("utf-8"), info=b"authgate storage root v1")


def derive_key(root: bytes, *, purpose: str) -> bytes:
    """Return a 32-byte subkey of `root` for one purpose (PURPOSE_TOTP, PURPOSE_RECOVERY, ...)."""
    if len(root) != KEY_BYTES:
        raise ValueError(f"the root key must be {KEY_BYTES} bytes, got {len(root)}")
    return _hkdf(root, info=f"authgate subkey v1:{purpose}".encode())


def _hkdf(material: bytes, *, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(material)


def _associated_data(context: str) -> bytes:
    # The version is authenticated too, so a future format cannot be confused with this one.
    return f"authgate-secretbox-{_VERSION}\x00{context}".encode()


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not ASCII")
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
