"""WebAuthn over the store: single-use challenges, registering devices, checking assertions."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.config import WebAuthnConfig
from gateway.factors import passkeys
from gateway.factors.passkeys import InvalidWebAuthn
from gateway.models import User, WebAuthnCredential
from gateway.store.contract import Storage

REGISTER = "register"
SECOND_FACTOR = "second-factor"
PASSKEY_LOGIN = "passkey-login"
REAUTH = "reauth"
EXTERNAL_LINK = "external-link"  # confirming that an account is yours before linking a provider to it


@dataclass(frozen=True, slots=True)
class Ceremony:
    """What the browser needs to start a ceremony; the challenge itself stays in storage."""

    challenge_id: str
    options_json: str


@dataclass(frozen=True, slots=True)
class Assertion:
    user: User
    credential: WebAuthnCredential
    user_verified: bool


def _challenge_key(challenge_id: str) -> str:
    return hashlib.sha256(challenge_id.encode()).hexdigest()


class WebAuthnService:
    def __init__(self, store: Storage, cfg: WebAuthnConfig, clock: Callable[[], float]) -> None:
        self.store = store
        self.cfg = cfg
        self.clock = clock

    @property
    def _timeout_ms(self) -> int:
        return int(self.cfg.timeout * 1000)

    async def _remember(self, purpose: str, challenge: bytes, user_id: int | None) -> str:
        challenge_id = secrets.token_urlsafe(24)
        await self.store.put_challenge(
            _challenge_key(challenge_id),
            purpose=purpose,
            challenge=challenge,
            user_id=user_id,
            expires_at=self.clock() + self.cfg.timeout,
        )
        return challenge_id

    async def _take(self, challenge_id: object, purpose: str) -> tuple[bytes, int | None]:
        if not isinstance(challenge_id, str) or not challenge_id or len(challenge_id) > 128:
            raise InvalidWebAuthn("missing challenge id")
        taken = await self.store.take_challenge(
            _challenge_key(challenge_id), purpose=purpose, now=self.clock()
        )
        if taken is None:
            raise InvalidWebAuthn("the challenge is unknown, used or expired; please try again")
        return taken

    async def begin_registration(self, user: User) -> Ceremony:
        """Start registering a new device for a user (existing ones are excluded)."""
        existing = await self.store.list_webauthn_credentials(user.id)
        options_json, challenge = passkeys.registration_options(
            rp_id=self.cfg.rp_id,
            rp_name=self.cfg.rp_name,
            user_handle=await self.store.get_or_create_user_handle(user.id),
            username=user.username,
            display_name=user.display_name,
            exclude_credentials=[c.credential_id for c in existing],
            user_verification=self.cfg.user_verification,
            timeout_ms=self._timeout_ms,
        )
        return Ceremony(await self._remember(REGISTER, challenge, user.id), options_json)

    async def finish_registration(
        self, user: User, challenge_id: object, credential: Any
    ) -> WebAuthnCredential:
        """Verify the new device and store it under a default name; InvalidWebAuthn otherwise."""
        challenge, owner = await self._take(challenge_id, REGISTER)
        if owner != user.id:
            raise InvalidWebAuthn("this challenge was issued to another account")
        new = passkeys.verify_registration(
            credential,
            challenge=challenge,
            rp_id=self.cfg.rp_id,
            origins=self.cfg.origins,
            user_verification=self.cfg.user_verification,
        )
        taken = [c.name for c in await self.store.list_webauthn_credentials(user.id)]
        name = passkeys.unique_name(
            passkeys.default_device_name(new.aaguid, new.transports, new.device_type), taken
        )
        pk = await self.store.add_webauthn_credential(
            user.id,
            credential_id=new.credential_id,
            public_key=new.public_key,
            sign_count=new.sign_count,
            transports=new.transports,
            aaguid=new.aaguid,
            backup_eligible=new.backup_eligible,
            backed_up=new.backed_up,
            device_type=new.device_type,
            name=name,
        )
        for stored in await self.store.list_webauthn_credentials(user.id):
            if stored.id == pk:
                return stored
        raise InvalidWebAuthn("the new device could not be read back")

    async def begin_authentication(self, user: User | None, purpose: str) -> Ceremony:
        """Start an assertion: for a known user (second factor) or anyone (passkey login)."""
        allow: list[tuple[bytes, tuple[str, ...]]] = []
        if user is not None:
            allow = [
                (c.credential_id, c.transports) for c in await self.store.list_webauthn_credentials(user.id)
            ]
            if not allow:
                raise InvalidWebAuthn("this account has no security key or passkey")
        options_json, challenge = passkeys.authentication_options(
            rp_id=self.cfg.rp_id,
            allow_credentials=allow,
            user_verification=self.cfg.user_verification,
            timeout_ms=self._timeout_ms,
        )
        return Ceremony(await self._remember(purpose, challenge, user.id if user else None), options_json)

    async def finish_authentication(self, challenge_id: object, credential: Any, purpose: str) -> Assertion:
        """Verify an assertion and record its use; the challenge is consumed whatever the outcome."""
        challenge, expected_user = await self._take(challenge_id, purpose)
        stored = await self.store.get_webauthn_credential_by_id(passkeys.credential_id_of(credential))
        if stored is None:
            raise InvalidWebAuthn("this security key or passkey is not registered here")
        if expected_user is not None and stored.user_id != expected_user:
            raise InvalidWebAuthn("this security key belongs to another account")
        handle = passkeys.user_handle_of(credential)
        if handle is not None and handle != await self.store.get_or_create_user_handle(stored.user_id):
            # py_webauthn leaves the user handle to us: it must name the credential's owner.
            raise InvalidWebAuthn("the passkey's user handle does not match its account")
        if purpose == PASSKEY_LOGIN and handle is None:
            raise InvalidWebAuthn("a passkey login needs a discoverable credential")
        result = passkeys.verify_authentication(
            credential,
            challenge=challenge,
            rp_id=self.cfg.rp_id,
            origins=self.cfg.origins,
            public_key=stored.public_key,
            current_sign_count=stored.sign_count,
            user_verification=self.cfg.user_verification,
        )
        await self.store.update_webauthn_use(
            stored.id, sign_count=result.new_sign_count, backed_up=result.backed_up, at=self.clock()
        )
        user = await self.store.get_user(stored.user_id)
        if user is None or user.disabled:
            raise InvalidWebAuthn("this account cannot sign in")
        return Assertion(user, stored, result.user_verified)
