"""The forward-auth decision (pure): original request + session -> verdict."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gateway.models import Level, OriginalRequest, Policy, Subject
from gateway.rules import CompiledRules


class Verdict(enum.Enum):
    ALLOW = "allow"  # 200, identity headers when signed in
    LOGIN = "login"  # not signed in: send to the portal
    STEP_UP = "step_up"  # signed in, but a second factor is needed (or must first be enrolled)
    DENY = "deny"  # 403


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    policy: Policy
    rule_index: int | None
    with_identity: bool = False


REQUIRED_LEVEL = {Policy.ONE_FACTOR: Level.ONE_FACTOR, Policy.TWO_FACTOR: Level.TWO_FACTOR}


def decide(
    rules: CompiledRules,
    request: OriginalRequest,
    subject: Subject | None,
    level: Level,
    *,
    must_enrol: bool = False,
) -> Decision:
    """Decide what the proxy should do with a request.

    `must_enrol`: 2FA is required and the user has no second factor yet, so no app
    (but bypass ones) may be reached until they enrol ("enrol on first use").
    """
    rule = rules.decide(request, subject)
    if rule.policy is Policy.BYPASS:
        return Decision(Verdict.ALLOW, rule.policy, rule.rule_index)
    if subject is None:
        if rule.policy is Policy.DENY:
            return Decision(Verdict.DENY, rule.policy, rule.rule_index)
        return Decision(Verdict.LOGIN, rule.policy, rule.rule_index)
    if rule.policy is Policy.DENY:
        return Decision(Verdict.DENY, rule.policy, rule.rule_index)
    if must_enrol or level < REQUIRED_LEVEL[rule.policy]:
        return Decision(Verdict.STEP_UP, rule.policy, rule.rule_index)
    return Decision(Verdict.ALLOW, rule.policy, rule.rule_index, with_identity=True)
