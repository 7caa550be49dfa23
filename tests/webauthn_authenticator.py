"""A software WebAuthn authenticator for tests: EC P-256, `none` attestation, browser toJSON() output.

It takes the options JSON py_webauthn produced (as a browser would) and returns the
credential dict that navigator.credentials.create()/get() + toJSON() would give, so the
result goes straight into gateway.factors.passkeys. Knobs on the object (user_verified,
backup flags, counter) and per call (origin, rp_id) produce the bad responses tests need.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Credential:
    """One key pair the authenticator holds."""

    credential_id: bytes
    private_key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes | None  # kept only for resident (discoverable) credentials


@dataclass
class SoftAuthenticator:
    """An authenticator with knobs; every credential it creates shares the signature counter."""

    user_verified: bool = True
    resident_key: bool = True
    backup_eligible: bool = False
    backed_up: bool = False
    counter: int = 0
    counter_step: int = 1  # added before each assertion; 0 = an authenticator without a counter
    transports: tuple[str, ...] = ("internal", "hybrid")
    aaguid: bytes = bytes(16)
    credentials: list[Credential] = field(default_factory=list)

    def register(
        self, options_json: str, *, origin: str, rp_id: str | None = None, challenge: bytes | None = None
    ) -> dict[str, Any]:
        """Answer creation options like navigator.credentials.create() + toJSON()."""
        options = json.loads(options_json)
        rp = rp_id or options["rp"]["id"]
        key = ec.generate_private_key(ec.SECP256R1())
        credential_id = os.urandom(32)
        handle = unb64url(options["user"]["id"]) if self.resident_key else None
        self.credentials.append(Credential(credential_id, key, rp, handle))
        numbers = key.public_key().public_numbers()
        cose_key = {1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")}
        attested = self.aaguid + struct.pack(">H", len(credential_id)) + credential_id + cbor2.dumps(cose_key)
        auth_data = self._auth_data(rp, AT, self.counter) + attested
        client_data = self._client_data(
            "webauthn.create", challenge or unb64url(options["challenge"]), origin
        )
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return {
            "id": b64url(credential_id),
            "rawId": b64url(credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
                "transports": list(self.transports),
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }

    def assert_(
        self, options_json: str, *, origin: str, rp_id: str | None = None, challenge: bytes | None = None
    ) -> dict[str, Any]:
        """Answer request options like navigator.credentials.get() + toJSON()."""
        options = json.loads(options_json)
        rp = rp_id or options["rpId"]
        allowed = {unb64url(item["id"]) for item in options.get("allowCredentials") or []}
        candidates = [
            c
            for c in self.credentials
            if c.rp_id == rp and (c.credential_id in allowed if allowed else c.user_handle is not None)
        ]
        if not candidates:
            raise LookupError("no credential for this relying party (NotAllowedError in a browser)")
        credential = candidates[-1]
        self.counter += self.counter_step
        auth_data = self._auth_data(rp, 0, self.counter)
        client_data = self._client_data("webauthn.get", challenge or unb64url(options["challenge"]), origin)
        signed = auth_data + hashlib.sha256(client_data).digest()
        signature = credential.private_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        handle = credential.user_handle
        return {
            "id": b64url(credential.credential_id),
            "rawId": b64url(credential.credential_id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": b64url(handle) if handle is not None else None,
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }

    def _auth_data(self, rp_id: str, extra_flags: int, counter: int) -> bytes:
        flags = UP | extra_flags
        flags |= UV if self.user_verified else 0
        flags |= BE if self.backup_eligible else 0
        flags |= BS if self.backed_up else 0
        return hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + struct.pack(">I", counter)

    @staticmethod
    def _client_data(kind: str, challenge: bytes, origin: str) -> bytes:
        data = {"type": kind, "challenge": b64url(challenge), "origin": origin, "crossOrigin": False}
        return json.dumps(data, separators=(",", ":")).encode()
