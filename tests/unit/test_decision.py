"""The forward-auth decision: rule policy + who is asking -> allow, login, step up or deny."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from gateway.config import AccessControlConfig, parse_config
from gateway.decision import Decision, Verdict, decide
from gateway.models import Level, OriginalRequest, Policy, Subject
from gateway.rules import CompiledRules

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
            Decision(Verdict.ALLOW, Policy.BYPASS, 0),
            id="bypass anon",
        ),
        pytest.param(
            "public.example.com",
            ALICE,
            Level.ONE_FACTOR,
            Decision(Verdict.ALLOW, Policy.BYPASS, 0),
            id="bypass sends no identity",
        ),
        pytest.param(
            "app.example.com",
            None,
            Level.ANONYMOUS,
            Decision(Verdict.LOGIN, Policy.ONE_FACTOR, 3),
            id="anon login",
        ),
        pytest.param(
            "app.example.com",
            ALICE,
            Level.ONE_FACTOR,
            Decision(Verdict.ALLOW, Policy.ONE_FACTOR, 3, with_identity=True),
            id="signed in",
        ),
        pytest.param(
            "app.example.com",
            ALICE,
            Level.ANONYMOUS,
            Decision(Verdict.STEP_UP, Policy.ONE_FACTOR, 3),
            id="subject without a factor steps up",
        ),
        pytest.param(
            "admin.example.com",
            None,
            Level.ANONYMOUS,
            Decision(Verdict.LOGIN, Policy.ONE_FACTOR, 1),
            id="subject rule asks anon to log in",
        ),
        pytest.param(
            "admin.example.com",
            ROOT,
            Level.ONE_FACTOR,
            Decision(Verdict.ALLOW, Policy.ONE_FACTOR, 1, with_identity=True),
            id="group member allowed",
        ),
        pytest.param(
            "admin.example.com",
            ALICE,
            Level.ONE_FACTOR,
            Decision(Verdict.DENY, Policy.DENY, 2),
            id="non-member denied",
        ),
        pytest.param(
            "other.test",
            None,
            Level.ANONYMOUS,
            Decision(Verdict.DENY, Policy.DENY, None),
            id="default deny anon",
        ),
        pytest.param(
            "other.test",
            ROOT,
            Level.ONE_FACTOR,
            Decision(Verdict.DENY, Policy.DENY, None),
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
