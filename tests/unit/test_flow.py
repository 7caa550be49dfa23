"""The pending second-factor state machine and the two-factor policy table."""

from __future__ import annotations

import json
from functools import partial

import pytest

from gateway.errors import AuthFailed
from portal import flow
from portal.flow import InvalidPending, PendingExpired, PendingLogin, TooManyAttempts

NOW = 1_000_000.0
begin = partial(flow.start, 7, rd="https://app.example.com/x?y=1", remember_me=True, now=NOW, ttl=300.0)


# -- policy table --------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "demands_two", "has_factors", "expected"),
    [
        # disabled: nobody is asked, enrolments are ignored
        ("disabled", False, False, "none"),
        ("disabled", False, True, "none"),
        ("disabled", True, False, "none"),
        ("disabled", True, True, "none"),
        # optional: enrolled users are always asked; others only enrol when a rule demands it
        ("optional", False, False, "none"),
        ("optional", False, True, "verify"),
        ("optional", True, False, "enrol"),
        ("optional", True, True, "verify"),
        # required: enrol on first use
        ("required", False, False, "enrol"),
        ("required", False, True, "verify"),
        ("required", True, False, "enrol"),
        ("required", True, True, "verify"),
    ],
)
def test_second_factor_needed(mode: str, demands_two: bool, has_factors: bool, expected: str) -> None:
    """Each mode, rule demand and enrolment state leads to the documented next step."""
    assert (
        flow.second_factor_needed(mode=mode, policy_demands_two=demands_two, has_factors=has_factors)
        == expected
    )


def test_unknown_mode_raises() -> None:
    """A mode outside disabled/optional/required is a programming error."""
    with pytest.raises(ValueError):
        flow.second_factor_needed(mode="sometimes", policy_demands_two=False, has_factors=True)


@pytest.mark.parametrize(
    ("available", "last", "expected"),
    [
        ((), None, None),
        (("totp",), None, "totp"),
        (("recovery", "totp"), None, "totp"),
        (("recovery", "totp"), "recovery", "recovery"),
        (("recovery", "totp", "webauthn"), None, "webauthn"),
        (("recovery", "totp"), "webauthn", "totp"),  # last kind was removed since
        (("recovery",), "totp", "recovery"),
        (("smartcard", "recovery"), None, "recovery"),
    ],
)
def test_default_method(available: tuple[str, ...], last: str | None, expected: str | None) -> None:
    """The last used kind comes first while it exists, else the preferred one (never recovery first)."""
    assert flow.default_method(available, last) == expected


# -- pending state ---------------------------------------------------------------


def test_start_fills_the_state() -> None:
    """start records who, where to, when it ends and how many attempts remain."""
    pending = begin(max_attempts=5, method_hint="totp")
    assert pending.user_id == 7
    assert pending.rd == "https://app.example.com/x?y=1"
    assert pending.remember_me is True
    assert pending.started_at == NOW
    assert pending.expires_at == NOW + 300.0
    assert pending.attempts_left == 5
    assert pending.method_hint == "totp"
    assert pending.step == flow.STEP_VERIFY
    assert len(pending.nonce) >= 16


def test_each_start_has_its_own_nonce() -> None:
    """Two pending logins are distinguishable."""
    assert begin(max_attempts=5).nonce != begin(max_attempts=5).nonce


@pytest.mark.parametrize("kwargs", [{"ttl": 0.0}, {"max_attempts": 0}, {"step": "later"}])
def test_start_refuses_bad_arguments(kwargs: dict[str, object]) -> None:
    """A zero TTL, zero attempts or an unknown step are programming errors."""
    args: dict[str, object] = {"rd": "", "remember_me": False, "now": NOW, "ttl": 300.0, "max_attempts": 5}
    with pytest.raises(ValueError):
        flow.start(1, **{**args, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize("offset", [0.0, 1.0, 299.999])
def test_check_passes_before_expiry(offset: float) -> None:
    """The state is usable until its TTL has elapsed."""
    flow.check(begin(max_attempts=5), now=NOW + offset)


@pytest.mark.parametrize("offset", [300.0, 300.001, 86_400.0])
def test_check_expires(offset: float) -> None:
    """At and after start + TTL the state is expired."""
    with pytest.raises(PendingExpired):
        flow.check(begin(max_attempts=5), now=NOW + offset)


def test_attempts_are_capped() -> None:
    """After max_attempts failures check raises TooManyAttempts, not before."""
    pending = begin(max_attempts=3)
    for _ in range(3):
        flow.check(pending, now=NOW + 1)
        pending = flow.after_failure(pending)
    assert pending.attempts_left == 0
    with pytest.raises(TooManyAttempts):
        flow.check(pending, now=NOW + 1)


def test_attempts_never_go_negative() -> None:
    """Extra failures keep attempts_left at zero."""
    pending = flow.after_failure(flow.after_failure(begin(max_attempts=1)))
    assert pending.attempts_left == 0


def test_expiry_wins_over_attempts() -> None:
    """An expired state with no attempts left reports expiry."""
    pending = flow.after_failure(begin(max_attempts=1))
    with pytest.raises(PendingExpired):
        flow.check(pending, now=NOW + 301)


def test_failures_do_not_extend_the_deadline() -> None:
    """A wrong code does not buy more time."""
    pending = flow.after_failure(begin(max_attempts=5))
    assert pending.expires_at == NOW + 300.0


def test_errors_are_auth_failures() -> None:
    """Views may catch every pending-state error as AuthFailed."""
    for exc in (PendingExpired, TooManyAttempts, InvalidPending):
        assert issubclass(exc, flow.PendingLoginError)
        assert issubclass(exc, AuthFailed)


def test_with_method_and_enrolled() -> None:
    """with_method records the chosen kind; enrolled moves enrol on first use to verified."""
    pending = begin(max_attempts=5, step=flow.STEP_ENROL)
    assert flow.with_method(pending, "recovery").method_hint == "recovery"
    assert flow.enrolled(pending).step == flow.STEP_VERIFY
    assert flow.enrolled(pending).attempts_left == pending.attempts_left


# -- payload -----------------------------------------------------------------------


def test_payload_round_trip_through_json() -> None:
    """to_payload gives JSON primitives that from_payload turns back into the same state."""
    pending = flow.after_failure(begin(max_attempts=5, method_hint="totp", step=flow.STEP_ENROL))
    payload = json.loads(json.dumps(flow.to_payload(pending)))
    assert flow.from_payload(payload) == pending


def test_payload_with_integer_times() -> None:
    """Whole-second times (JSON integers) are read as floats."""
    payload = flow.to_payload(flow.start(1, rd="", remember_me=False, now=100, ttl=300, max_attempts=5))
    pending = flow.from_payload(json.loads(json.dumps(payload)))
    assert isinstance(pending.started_at, float)
    assert pending.expires_at == 400.0


def good_payload() -> dict[str, object]:
    return flow.to_payload(begin(max_attempts=5))


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"v": None},
        {"user_id": "7"},
        {"user_id": True},
        {"attempts_left": 2.5},
        {"attempts_left": False},
        {"remember_me": 1},
        {"expires_at": "soon"},
        {"method_hint": 3},
        {"step": "later"},
        {"rd": None},
    ],
)
def test_bad_payloads_are_refused(change: dict[str, object]) -> None:
    """Wrong version, mistyped fields or unknown steps raise InvalidPending."""
    with pytest.raises(InvalidPending):
        flow.from_payload({**good_payload(), **change})


@pytest.mark.parametrize("missing", ["v", "user_id", "expires_at", "attempts_left", "nonce"])
def test_payload_missing_field_is_refused(missing: str) -> None:
    """Every field is required."""
    payload = good_payload()
    del payload[missing]
    with pytest.raises(InvalidPending):
        flow.from_payload(payload)


@pytest.mark.parametrize("payload", [None, [], "x", 7])
def test_non_mapping_payload_is_refused(payload: object) -> None:
    """Anything but a dict is refused."""
    with pytest.raises(InvalidPending):
        flow.from_payload(payload)


def test_pending_login_is_frozen() -> None:
    """The state cannot be changed in place; transitions return new values."""
    pending = begin(max_attempts=5)
    with pytest.raises(AttributeError):
        pending.attempts_left = 99  # type: ignore[misc]
    assert isinstance(pending, PendingLogin)
