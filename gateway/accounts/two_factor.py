"""Second factors over the store: which a user has, checking codes, enrolling, recovery sets.

Pure checks live in gateway.factors.*; this module adds storage, sealing and the
replay guard (the accepted TOTP step is written with a compare-and-set).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import TwoFactorConfig
from gateway.factors import recovery, totp
from gateway.factors.secretbox import SecretBox
from gateway.models import TotpDevice
from gateway.store.contract import Storage

TOTP = "totp"
RECOVERY = "recovery"
WEBAUTHN = "webauthn"
FEW_RECOVERY_CODES = 3  # the settings page warns at or below this many unused codes


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A TOTP secret offered to a user, not stored until confirmed with a valid code."""

    secret: str
    uri: str
    qr_svg: str


class TwoFactorService:
    def __init__(
        self,
        store: Storage,
        box: SecretBox,
        cfg: TwoFactorConfig,
        *,
        recovery_pepper: bytes,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.box = box
        self.cfg = cfg
        self.clock = clock
        self._pepper = recovery_pepper

    @property
    def enabled(self) -> bool:
        return self.cfg.mode != "disabled"

    async def kinds(self, user_id: int) -> tuple[str, ...]:
        """Return the second-factor kinds the user can use; none at all while 2FA is disabled."""
        if not self.enabled:
            return ()
        return await self.store.second_factor_kinds(user_id)

    async def has_factor(self, user_id: int) -> bool:
        """True when the user has a real second factor (recovery codes alone are only a fallback)."""
        return bool({TOTP, WEBAUTHN} & set(await self.kinds(user_id)))

    def new_enrolment(
        self, *, account: str, secret: str | None = None, qr_title: str = "TOTP QR code"
    ) -> Enrolment:
        """Offer a TOTP secret (a fresh one unless given) with its otpauth URI and QR code.

        `qr_title` names the QR code for screen readers (the portal passes it in the page's language).
        """
        secret = secret or totp.generate_secret()
        settings = self.cfg.totp
        uri = totp.provisioning_uri(
            secret,
            account=account.replace(":", "_"),
            issuer=self.cfg.issuer.replace(":", "_"),
            digits=settings.digits,
            period=settings.period,
            algorithm=settings.algorithm,
        )
        return Enrolment(secret=secret, uri=uri, qr_svg=totp.qr_svg(uri, title=qr_title))

    def check_new_code(self, secret: str, code: str) -> int | None:
        """Return the time step a code for a not-yet-stored secret is valid for, or None."""
        settings = self.cfg.totp
        return totp.verify(
            secret,
            code,
            last_step=None,
            now=self.clock(),
            period=settings.period,
            digits=settings.digits,
            algorithm=settings.algorithm,
            skew=settings.skew,
        )

    async def add_totp(self, user_id: int, name: str, secret: str, step: int) -> int:
        """Store a confirmed device with its first accepted step already used; Conflict on a taken name."""
        settings = self.cfg.totp
        sealed = self.box.seal(secret, context=totp.sealing_context(user_id))
        return await self.store.add_totp_device(
            user_id,
            name=name,
            secret_sealed=sealed,
            digits=settings.digits,
            period=settings.period,
            algorithm=settings.algorithm,
            last_step=step,
        )

    async def verify_totp(self, user_id: int, code: str) -> TotpDevice | None:
        """Return the device a code belongs to, recording its step so it is never accepted again."""
        now = self.clock()
        for device in await self.store.list_totp_devices(user_id):
            secret = self.box.open(device.secret_sealed, context=totp.sealing_context(user_id))
            step = totp.verify(
                secret,
                code,
                last_step=device.last_step,
                now=now,
                period=device.period,
                digits=device.digits,
                algorithm=device.algorithm,
                skew=self.cfg.totp.skew,
            )
            # The compare-and-set loses when a parallel request used the same code first.
            if step is not None and await self.store.use_totp_step(device.id, step, now):
                return device
        return None

    async def verify_recovery(self, user_id: int, code: str) -> bool:
        """Consume a recovery code; True when it was valid and unused."""
        stored = await self.store.unused_recovery_hashes(user_id)
        index = recovery.match_code(code, [h for _, h in stored], pepper=self._pepper)
        if index is None:
            return False
        return await self.store.use_recovery_code(stored[index][0], self.clock())

    async def new_recovery_codes(self, user_id: int) -> list[str]:
        """Replace the user's recovery codes with a new set and return it (shown once, stored hashed)."""
        codes = recovery.generate_codes(self.cfg.recovery_codes)
        await self.store.replace_recovery_codes(
            user_id, [recovery.hash_code(code, pepper=self._pepper) for code in codes]
        )
        return codes
