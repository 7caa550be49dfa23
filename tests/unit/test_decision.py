"""The forward-auth decision: rule policy + who is asking -> allow, login, step up or deny."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address

import pytest

from gateway.authz.decision import Decision, Decisions, Verdict, decide, make_decision
from gateway.authz.rules import CompiledRules
from gateway.config import AccessControlConfig, parse_config
from gateway.models import Level, OriginalRequest, Policy, Subject

RULES = CompiledRules.from_config(
    parse_config(
        {
            "access_control": {
                "default_policy": "deny",
                "rules": [
                    {"domain": "public.example.com", "policy": "bypass"},
                    {"domain": "admin.example.com", "subject": "group:admins", "policy": "one_factor"},
                    {"domain": "admin.example.com", "policy": "deny"},
                    {"domain": "*.example.com", "policy": "one_factor"},
                ],
            }
        }
    ).access_control
)

ALICE = Subject("alice", frozenset({"dev"}))
ROOT = Subject("root", frozenset({"admins"}))


def request(host: str) -> OriginalRequest:
    return OriginalRequest(
        method="GET",
        scheme="https",
        host=host,
        port=None,
        path="/",
        query="",
        client_ip=ip_address("192.0.2.1"),
    )


@pytest.mark.parametrize(
    ("host", "subject", "level", "expected"),
    [
        pytest.param(
            "public.example.com",
            None,
            Level.ANONYMOUS,
            make_decision(Verdict.ALLOW, Policy.BYPASS, 0),
            id="bypass anon",
        ),
        pytest.param(
            "public.example.com",
            ALICE,
            Level.ONE_FACTOR,
            make_decision(Verdict.ALLOW, Policy.BYPASS, 0),
            id="bypass sends no identity",
        ),
        pytest.param(
            "app.example.com",
            None,
            Level.ANONYMOUS,
            make_decision(Verdict.LOGIN, Policy.ONE_FACTOR, 3),
            id="anon login",
        ),
        pytest.param(
            "app.example.com",
            ALICE,
            Level.ONE_FACTOR,
            make_decision(Verdict.ALLOW, Policy.ONE_FACTOR, 3, with_identity=True),
            id="signed in",
        ),
        pytest.param(
            "app.example.com",
            ALICE,
            Level.ANONYMOUS,
            make_decision(Verdict.STEP_UP, Policy.ONE_FACTOR, 3),
            id="subject without a factor steps up",
        ),
        pytest.param(
            "admin.example.com",
            None,
            Level.ANONYMOUS,
            make_decision(Verdict.LOGIN, Policy.ONE_FACTOR, 1),
            id="subject rule asks anon to log in",
        ),
        pytest.param(
            "admin.example.com",
            ROOT,
            Level.ONE_FACTOR,
            make_decision(Verdict.ALLOW, Policy.ONE_FACTOR, 1, with_identity=True),
            id="group member allowed",
        ),
        pytest.param(
            "admin.example.com",
            ALICE,
            Level.ONE_FACTOR,
            make_decision(Verdict.DENY, Policy.DENY, 2),
            id="non-member denied",
        ),
        pytest.param(
            "other.test",
            None,
            Level.ANONYMOUS,
            make_decision(Verdict.DENY, Policy.DENY, None),
            id="default deny anon",
        ),
        pytest.param(
            "other.test",
            ROOT,
            Level.ONE_FACTOR,
            make_decision(Verdict.DENY, Policy.DENY, None),
            id="default deny user",
        ),
    ],
)
def test_decide(host: str, subject: Subject | None, level: Level, expected: Decision) -> None:
    """decide() maps the matching rule and the session to one verdict."""
    assert decide(RULES, request(host), subject, level) == expected


def test_two_factor_policy_needs_a_second_factor() -> None:
    """A one-factor session on a two_factor rule steps up; a two-factor session passes."""
    # Built directly: the config parser refuses two_factor until second factors ship.
    rules = CompiledRules.from_config(AccessControlConfig(default_policy=Policy.TWO_FACTOR))

    assert decide(rules, request("a.example.com"), ALICE, Level.ONE_FACTOR).verdict is Verdict.STEP_UP
    assert decide(rules, request("a.example.com"), ALICE, Level.TWO_FACTOR).verdict is Verdict.ALLOW


@dataclass(frozen=True)
class Entry:
    """A stand-in for a cached session entry: what decisions read of it."""

    subject: Subject
    level: Level
    must_enrol: bool = False


def test_memoised_decisions_match_decide_for_every_case() -> None:
    """Decisions gives decide()'s answer, asked once or many times, for sessions and without."""
    decisions = Decisions(RULES)
    cases = [
        (request(host), subject)
        for host in ("public.example.com", "app.example.com", "admin.example.com")
        for subject in (None, ALICE, ROOT)
    ]
    entries = {s: Entry(s, Level.ONE_FACTOR) for s in (ALICE, ROOT)}
    for _ in range(3):
        for original, subject in cases:
            if subject is None:
                got = decisions.for_anonymous(original)
                assert got == decide(RULES, original, None, Level.ANONYMOUS)
            else:
                got = decisions.for_session(original, entries[subject])
                assert got == decide(RULES, original, subject, Level.ONE_FACTOR)


def test_memoised_decisions_tell_entries_apart_by_identity() -> None:
    """Two entries for different people (or the same person after step-up) never share a decision."""
    decisions = Decisions(RULES)
    admin_area = request("admin.example.com")
    assert decisions.for_session(admin_area, Entry(ROOT, Level.ONE_FACTOR)).verdict is Verdict.ALLOW
    assert decisions.for_session(admin_area, Entry(ALICE, Level.ONE_FACTOR)).verdict is Verdict.DENY
    app = request("app.example.com")
    assert decisions.for_session(app, Entry(ALICE, Level.ANONYMOUS)).verdict is Verdict.STEP_UP
    assert decisions.for_session(app, Entry(ALICE, Level.ONE_FACTOR)).verdict is Verdict.ALLOW
    assert (
        decisions.for_session(app, Entry(ALICE, Level.ONE_FACTOR, must_enrol=True)).verdict is Verdict.STEP_UP
    )


def test_memoised_decisions_never_answer_for_a_reused_id() -> None:
    """An id() seen before but now naming another object is decided afresh, not looked up."""
    decisions = Decisions(RULES, size=1)
    alice = Entry(ALICE, Level.ONE_FACTOR)
    first = request("app.example.com")
    assert decisions.for_session(first, alice).verdict is Verdict.ALLOW
    # Push `first` out, let it go, and build a different request until one lands on its id.
    decisions.for_session(request("public.example.com"), alice)
    old_id = id(first)
    del first
    for _ in range(10_000):
        other = request("other.test")
        if id(other) == old_id:
            break
    assert decisions.for_session(other, alice) == decide(RULES, other, ALICE, Level.ONE_FACTOR)
    assert decisions.for_anonymous(other) == make_decision(Verdict.DENY, Policy.DENY, None)


def test_memoised_decisions_are_bounded() -> None:
    decisions = Decisions(RULES, size=4)
    alice = Entry(ALICE, Level.ONE_FACTOR)
    for i in range(100):
        decisions.for_session(request(f"h{i}.example.com"), alice)
        decisions.for_anonymous(request(f"h{i}.example.com"))
    assert len(decisions._signed_in) == 4
    assert len(decisions._anonymous) == 4
