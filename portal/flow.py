"""The login state machine between "password accepted" and "session at level two". Pure.

    password OK ──second_factor_needed()──> "none"   -> session now
                                       ├──> "verify" -> start(step="verify") -> code page
                                       └──> "enrol"  -> start(step="enrol")  -> enrolment page

While pending, every request calls `check` (PendingExpired / TooManyAttempts send
the user back to the password form) and every wrong code goes through
`after_failure`. The state travels in a signed cookie as `to_payload()`; the cookie
must be loaded with a max_age of at least the TTL, and stays valid until it expires.

A signed cookie can be replayed, so `attempts_left` alone cannot cap guessing: a
client may resend an older cookie with more attempts left. The hard cap is the
brute-force regulation, which must record every wrong second-factor code as a
failed login for the user; `attempts_left` ends the pending state early for
honest clients. `nonce` names one pending login, for logs or a server-side counter.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from gateway.errors import AuthFailed

MODES = ("disabled", "optional", "required")
STEP_VERIFY = "verify"
STEP_ENROL = "enrol"
STEPS = (STEP_VERIFY, STEP_ENROL)
# Offered first when the user has several kinds and none was used before; recovery
# codes are the fallback, never the default.
METHOD_PREFERENCE = ("webauthn", "totp", "recovery")
PAYLOAD_VERSION = 1


class PendingLoginError(AuthFailed):
    """The pending second-factor step cannot go on; the user must start over with the password."""


class PendingExpired(PendingLoginError):
    """The pending second-factor step is older than its time limit."""


class TooManyAttempts(PendingLoginError):
    """Too many wrong codes were entered during this pending second-factor step."""


class InvalidPending(PendingLoginError):
    """The pending-login payload is malformed (wrong version, missing or mistyped fields)."""


@dataclass(frozen=True, slots=True)
class PendingLogin:
    """A user who passed the password and still owes a second factor (or its enrolment)."""

    user_id: int
    rd: str  # where to go afterwards, already validated as a safe target ("" = default)
    remember_me: bool
    started_at: float
    expires_at: float
    attempts_left: int
    method_hint: str | None = None  # the factor kind to offer first ("totp", "recovery", ...)
    step: str = STEP_VERIFY  # STEP_VERIFY or STEP_ENROL (enrol on first use)
    nonce: str = ""  # random id of this pending login
    first_factor: str = "password"  # "password" or "webauthn" (a passkey without user verification)


def second_factor_needed(*, mode: str, policy_demands_two: bool, has_factors: bool) -> str:
    """Return what follows a correct password: "none", "verify" or "enrol".

    - disabled: "none"; nobody is asked and enrolments are ignored (not deleted).
      The configuration refuses two_factor rules in this mode, so
      `policy_demands_two` cannot be true here.
    - optional: a user who has enrolled a factor is always asked for it ("verify"),
      as Proxmox and Nextcloud do: enrolling is the user's wish to be protected.
      A user without factors is let in at level one ("none"), unless the target
      demands two factors: then they enrol first ("enrol").
    - required: "verify" when the user has a factor, else "enrol" (enrol on first use).
    """
    if mode not in MODES:
        raise ValueError(f"unknown two-factor mode {mode!r}; expected one of {MODES}")
    if mode == "disabled":
        return "none"
    if has_factors:
        return STEP_VERIFY
    if mode == "required" or policy_demands_two:
        return STEP_ENROL
    return "none"


def default_method(available: Sequence[str], last_method: str | None) -> str | None:
    """Return the factor kind to offer first: the one used last if still available, else the preferred."""
    if not available:
        return None
    if last_method in available:
        return last_method
    ranked = sorted(
        available,
        key=lambda kind: (
            METHOD_PREFERENCE.index(kind) if kind in METHOD_PREFERENCE else len(METHOD_PREFERENCE)
        ),
    )
    return ranked[0]


def start(
    user_id: int,
    *,
    rd: str,
    remember_me: bool,
    now: float,
    ttl: float,
    max_attempts: int,
    step: str = STEP_VERIFY,
    method_hint: str | None = None,
    first_factor: str = "password",
) -> PendingLogin:
    """Begin the pending second-factor step right after a correct password."""
    if ttl <= 0:
        raise ValueError(f"ttl must be positive, got {ttl}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}, got {step!r}")
    return PendingLogin(
        user_id=user_id,
        rd=rd,
        remember_me=remember_me,
        started_at=now,
        expires_at=now + ttl,
        attempts_left=max_attempts,
        method_hint=method_hint,
        step=step,
        nonce=secrets.token_urlsafe(16),
        first_factor=first_factor,
    )


def check(pending: PendingLogin, *, now: float) -> None:
    """Raise PendingExpired or TooManyAttempts when the pending step may not go on."""
    if now >= pending.expires_at:
        raise PendingExpired(f"the second-factor step expired {now - pending.expires_at:.0f}s ago")
    if pending.attempts_left <= 0:
        raise TooManyAttempts("too many wrong codes; sign in with your password again")


def after_failure(pending: PendingLogin) -> PendingLogin:
    """Return the state after one wrong code (one attempt fewer, never below zero)."""
    return replace(pending, attempts_left=max(pending.attempts_left - 1, 0))


def with_method(pending: PendingLogin, method: str) -> PendingLogin:
    """Return the state with `method` as the factor kind the user chose to use."""
    return replace(pending, method_hint=method)


def enrolled(pending: PendingLogin) -> PendingLogin:
    """Return the state after enrol-on-first-use has saved a factor: the step is now verified."""
    return replace(pending, step=STEP_VERIFY)


def to_payload(pending: PendingLogin) -> dict[str, Any]:
    """Return the state as a dict of JSON primitives, for a signed cookie."""
    return {"v": PAYLOAD_VERSION, **asdict(pending)}


_FIELD_TYPES: Mapping[str, tuple[type, ...]] = {
    "user_id": (int,),
    "rd": (str,),
    "remember_me": (bool,),
    "started_at": (int, float),
    "expires_at": (int, float),
    "attempts_left": (int,),
    "method_hint": (str, type(None)),
    "step": (str,),
    "nonce": (str,),
    "first_factor": (str,),
}


def from_payload(payload: object) -> PendingLogin:
    """Rebuild the state from `to_payload` output; InvalidPending when it does not fit."""
    if not isinstance(payload, dict):
        raise InvalidPending("pending-login payload is not a mapping")
    if payload.get("v") != PAYLOAD_VERSION:
        raise InvalidPending(f"unsupported pending-login payload version {payload.get('v')!r}")
    values: dict[str, Any] = {}
    for name, types in _FIELD_TYPES.items():
        if name not in payload:
            raise InvalidPending(f"pending-login payload lacks {name!r}")
        value = payload[name]
        # bool is an int subclass: True must not pass for a user id or a count.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise InvalidPending(f"pending-login field {name!r} has the wrong type")
        values[name] = value
    if values["step"] not in STEPS:
        raise InvalidPending(f"unknown pending-login step {values['step']!r}")
    values["started_at"] = float(values["started_at"])
    values["expires_at"] = float(values["expires_at"])
    return PendingLogin(**values)
