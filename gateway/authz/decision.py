"""The forward-auth decision (pure): original request + session -> verdict."""

from __future__ import annotations

import enum
from typing import NamedTuple, Protocol

from gateway.authz.memo import BoundedMemo
from gateway.authz.rules import CompiledRules
from gateway.models import Level, OriginalRequest, Policy, Subject


class Verdict(enum.Enum):
    ALLOW = "allow"  # 200, identity headers when signed in
    LOGIN = "login"  # not signed in: send to the portal
    STEP_UP = "step_up"  # signed in, but a second factor is needed (or must first be enrolled)
    DENY = "deny"  # 403


# A decision's place in the metrics' flat count array (gateway/metrics.py): the verdict's
# position here plus VERDICT_COUNT per rule, the default policy first.
VERDICT_ORDER: tuple[Verdict, ...] = (Verdict.ALLOW, Verdict.LOGIN, Verdict.STEP_UP, Verdict.DENY)
VERDICT_COUNT = len(VERDICT_ORDER)


def decision_slot(verdict: Verdict, rule_index: int | None) -> int:
    """Return where a (verdict, rule) pair is counted; the default policy has rule slot 0."""
    return VERDICT_ORDER.index(verdict) + VERDICT_COUNT * (0 if rule_index is None else rule_index + 1)


class Decision(NamedTuple):
    # A named tuple, not a frozen dataclass: one is built per forward-auth request, and a
    # tuple costs a quarter as much to build (no per-field object.__setattr__).
    verdict: Verdict
    policy: Policy
    rule_index: int | None
    with_identity: bool = False
    # decision_slot(verdict, rule_index), computed once here, so that counting a decision on
    # the hot path is one list increment (an Enum in a dict key would hash in Python code).
    slot: int = -1


def make_decision(
    verdict: Verdict, policy: Policy, rule_index: int | None, with_identity: bool = False
) -> Decision:
    """Build a Decision with its metrics slot."""
    return Decision(verdict, policy, rule_index, with_identity, decision_slot(verdict, rule_index))


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
        return make_decision(Verdict.ALLOW, rule.policy, rule.rule_index)
    if subject is None:
        if rule.policy is Policy.DENY:
            return make_decision(Verdict.DENY, rule.policy, rule.rule_index)
        return make_decision(Verdict.LOGIN, rule.policy, rule.rule_index)
    if rule.policy is Policy.DENY:
        return make_decision(Verdict.DENY, rule.policy, rule.rule_index)
    # An identity test, not a dict keyed by Policy: hashing an Enum runs Python code.
    required = Level.TWO_FACTOR if rule.policy is Policy.TWO_FACTOR else Level.ONE_FACTOR
    if must_enrol or level < required:
        return make_decision(Verdict.STEP_UP, rule.policy, rule.rule_index)
    return make_decision(Verdict.ALLOW, rule.policy, rule.rule_index, with_identity=True)


class SignedIn(Protocol):
    """What a decision reads of a session (gateway.sessions.codec.CachedSession)."""

    @property
    def subject(self) -> Subject: ...
    @property
    def level(self) -> Level: ...
    @property
    def must_enrol(self) -> bool: ...


# Memoised decisions; each holds the objects its key names (see Decisions).
DECISION_MEMO_SIZE = 8192


class Decisions:
    """decide() over one rule set, remembered by the identity of its inputs.

    The forwarded-header memo hands out the same OriginalRequest object for the same
    headers, and a cached session entry's subject, level and must_enrol never change (a
    re-read makes a new entry), so (request, entry) identities stand for every input of
    decide(). Each memo entry holds the objects its key names, so no id() in a key can be
    reused by another object while it is remembered; both memos are bounded in entries,
    and a request's URL in size (gateway.authz.forwarded's key bound).
    """

    def __init__(self, rules: CompiledRules, size: int = DECISION_MEMO_SIZE) -> None:
        self.rules = rules
        self._signed_in: BoundedMemo[tuple[int, int], tuple[OriginalRequest, SignedIn, Decision]]
        self._signed_in = BoundedMemo(size)
        self._anonymous: BoundedMemo[int, tuple[OriginalRequest, Decision]] = BoundedMemo(size)

    def for_session(self, request: OriginalRequest, session: SignedIn) -> Decision:
        """decide() for a signed-in request."""
        key = (id(request), id(session))
        known = self._signed_in.get(key)
        if known is not None and known[0] is request and known[1] is session:
            return known[2]
        decision = decide(self.rules, request, session.subject, session.level, must_enrol=session.must_enrol)
        self._signed_in.put(key, (request, session, decision))
        return decision

    def for_anonymous(self, request: OriginalRequest) -> Decision:
        """decide() for a request without a session."""
        known = self._anonymous.get(id(request))
        if known is not None and known[0] is request:
            return known[1]
        decision = decide(self.rules, request, None, Level.ANONYMOUS)
        self._anonymous.put(id(request), (request, decision))
        return decision
