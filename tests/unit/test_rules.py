"""Tests for gateway.authz.rules: first-match access rules and their compiled index."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from gateway.authz.rules import CompiledRules, RuleDecision
from gateway.config import AccessControlConfig, AccessRule
from gateway.errors import ConfigError
from gateway.models import OriginalRequest, Policy, Subject

ALICE = Subject("alice", frozenset({"dev"}))
BOB = Subject("bob", frozenset({"admins", "dev"}))
CAROL = Subject("carol")


def make_request(
    host: str = "app.example.com",
    path: str = "/",
    query: str = "",
    method: str = "GET",
    client_ip: str = "203.0.113.7",
) -> OriginalRequest:
    return OriginalRequest(
        method=method,
        scheme="https",
        host=host,
        port=None,
        path=path,
        query=query,
        client_ip=ip_address(client_ip),
    )


def compile_rules(*rules: AccessRule, default: Policy = Policy.DENY) -> CompiledRules:
    return CompiledRules.from_config(AccessControlConfig(default_policy=default, rules=rules))


DOMAIN_RULES = (
    AccessRule(Policy.BYPASS, domains=("public.example.com",)),
    AccessRule(Policy.TWO_FACTOR, domains=("*.example.com",)),
    AccessRule(Policy.ONE_FACTOR, domains=("other.test", "*.deep.other.test")),
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("public.example.com", RuleDecision(Policy.BYPASS, 0)),
        ("PUBLIC.Example.COM", RuleDecision(Policy.BYPASS, 0)),
        ("app.example.com", RuleDecision(Policy.TWO_FACTOR, 1)),
        ("a.b.c.example.com", RuleDecision(Policy.TWO_FACTOR, 1)),
        ("example.com", RuleDecision(Policy.DENY, None)),
        ("example.com.evil.test", RuleDecision(Policy.DENY, None)),
        ("notexample.com", RuleDecision(Policy.DENY, None)),
        ("other.test", RuleDecision(Policy.ONE_FACTOR, 2)),
        ("x.other.test", RuleDecision(Policy.DENY, None)),
        ("x.deep.other.test", RuleDecision(Policy.ONE_FACTOR, 2)),
        ("deep.other.test", RuleDecision(Policy.DENY, None)),
    ],
)
def test_domain_matching(host: str, expected: RuleDecision) -> None:
    """Exact domains match the host only; wildcards match deeper subdomains but not the apex."""
    assert compile_rules(*DOMAIN_RULES).decide(make_request(host=host), None) == expected


@pytest.mark.parametrize(
    ("path", "query", "expected_index"),
    [
        ("/api/v1", "", 0),
        ("/static/app.js", "", 1),
        ("/static/app.js", "v=2", 1),
        ("/admin", "", 2),
        ("/admin", "x=1", 2),
        ("/admin/", "next=/", 2),
        ("/administrator", "", None),
        ("/page", "", None),
        ("/x/api/", "", None),
        ("/", "next=/api/", None),
        ("/", "x=/admin", None),
    ],
)
def test_path_regexes_search_the_path_only(path: str, query: str, expected_index: int | None) -> None:
    """Path regexes see the normalised path alone, so a query string can neither dodge nor trigger a rule."""
    rules = compile_rules(
        AccessRule(Policy.BYPASS, paths=("^/api/",)),
        AccessRule(Policy.BYPASS, paths=(r"\.css$", r"\.js$")),
        AccessRule(Policy.DENY, paths=("^/admin(/|$)",)),
    )
    assert rules.decide(make_request(path=path, query=query), None).rule_index == expected_index


@pytest.mark.parametrize(
    ("method", "client_ip", "expected_index"),
    [
        ("GET", "10.1.2.3", 0),
        ("POST", "10.1.2.3", 1),
        ("POST", "192.0.2.1", None),
        ("OPTIONS", "192.0.2.1", 2),
        ("GET", "2001:db8::1", 3),
        ("GET", "2001:db9::1", None),
    ],
)
def test_methods_and_networks(method: str, client_ip: str, expected_index: int | None) -> None:
    """Methods must be in the rule's set and the client address inside one of its networks."""
    rules = compile_rules(
        AccessRule(Policy.BYPASS, methods=("GET", "HEAD"), networks=(ip_network("10.0.0.0/8"),)),
        AccessRule(Policy.ONE_FACTOR, networks=(ip_network("10.0.0.0/8"), ip_network("::1/128"))),
        AccessRule(Policy.BYPASS, methods=("options",)),
        AccessRule(Policy.TWO_FACTOR, networks=(ip_network("2001:db8::/32"),)),
    )
    decision = rules.decide(make_request(method=method, client_ip=client_ip), None)
    assert decision.rule_index == expected_index


SUBJECT_RULES = (
    AccessRule(Policy.BYPASS, domains=("open.example.com",)),
    AccessRule(Policy.TWO_FACTOR, domains=("admin.example.com",), subjects=("group:admins",)),
    AccessRule(Policy.DENY, domains=("admin.example.com",)),
    AccessRule(Policy.ONE_FACTOR, domains=("*.example.com",), subjects=("user:alice", "group:ops")),
    AccessRule(Policy.TWO_FACTOR, domains=("*.example.com",)),
)


@pytest.mark.parametrize(
    ("host", "subject", "expected"),
    [
        ("open.example.com", None, RuleDecision(Policy.BYPASS, 0)),
        ("admin.example.com", None, RuleDecision(Policy.ONE_FACTOR, 1, needs_subject=True)),
        ("admin.example.com", BOB, RuleDecision(Policy.TWO_FACTOR, 1)),
        ("admin.example.com", ALICE, RuleDecision(Policy.DENY, 2)),
        ("app.example.com", None, RuleDecision(Policy.ONE_FACTOR, 3, needs_subject=True)),
        ("app.example.com", ALICE, RuleDecision(Policy.ONE_FACTOR, 3)),
        ("app.example.com", Subject("dave", frozenset({"ops"})), RuleDecision(Policy.ONE_FACTOR, 3)),
        ("app.example.com", CAROL, RuleDecision(Policy.TWO_FACTOR, 4)),
        ("elsewhere.test", None, RuleDecision(Policy.DENY, None)),
    ],
)
def test_subjects(host: str, subject: Subject | None, expected: RuleDecision) -> None:
    """Subject rules ask anonymous requests to authenticate and are skipped for non-matching users."""
    assert compile_rules(*SUBJECT_RULES).decide(make_request(host=host), subject) == expected


@pytest.mark.parametrize(
    ("rules", "expected_index"),
    [
        ((AccessRule(Policy.DENY), AccessRule(Policy.BYPASS, domains=("app.example.com",))), 0),
        ((AccessRule(Policy.BYPASS, domains=("app.example.com",)), AccessRule(Policy.DENY)), 0),
        ((AccessRule(Policy.DENY, domains=("*.example.com",)), AccessRule(Policy.BYPASS)), 0),
        ((AccessRule(Policy.DENY, paths=("^/nope",)), AccessRule(Policy.BYPASS)), 1),
        (
            (
                AccessRule(Policy.DENY, domains=("x.test",)),
                AccessRule(Policy.ONE_FACTOR, domains=("*.example.com", "app.example.com")),
                AccessRule(Policy.BYPASS),
            ),
            1,
        ),
    ],
)
def test_first_match_wins_across_index_buckets(rules: tuple[AccessRule, ...], expected_index: int) -> None:
    """Domain-less, exact and wildcard rules are merged back into configuration order."""
    decision = compile_rules(*rules, default=Policy.TWO_FACTOR).decide(make_request(), None)
    assert decision.rule_index == expected_index
    assert decision.policy is rules[expected_index].policy


@pytest.mark.parametrize("default", list(Policy))
def test_default_policy_when_nothing_matches(default: Policy) -> None:
    """Without a matching rule the default policy applies and no rule index is reported."""
    rules = compile_rules(AccessRule(Policy.BYPASS, domains=("x.test",)), default=default)
    assert rules.decide(make_request(), None) == RuleDecision(default, None)


@pytest.mark.parametrize(
    ("rule", "problem_key"),
    [
        (AccessRule(Policy.BYPASS, paths=("^/ok", "([")), "access_control.rules[0].paths[1]"),
        (AccessRule(Policy.BYPASS, subjects=("alice",)), "access_control.rules[0].subjects[0]"),
        (AccessRule(Policy.BYPASS, subjects=("user:",)), "access_control.rules[0].subjects[0]"),
        (AccessRule(Policy.BYPASS, subjects=("role:x",)), "access_control.rules[0].subjects[0]"),
    ],
)
def test_invalid_rules_raise_config_error(rule: AccessRule, problem_key: str) -> None:
    """A bad regex or subject is reported as a ConfigError naming its key path."""
    with pytest.raises(ConfigError) as excinfo:
        compile_rules(rule)
    assert [key for key, _ in excinfo.value.problems] == [problem_key]


def test_len_counts_rules() -> None:
    """len() is the number of configured rules."""
    assert len(compile_rules(*DOMAIN_RULES)) == len(DOMAIN_RULES)


def test_host_cache_stays_correct_when_cleared() -> None:
    """Deciding for more distinct hosts than the cache holds still gives correct answers."""
    rules = compile_rules(AccessRule(Policy.BYPASS, domains=("*.example.com",)))
    for i in range(5000):
        assert rules.decide(make_request(host=f"h{i}.example.com"), None).rule_index == 0
        assert rules.decide(make_request(host=f"h{i}.example.org"), None).rule_index is None


def test_ten_thousand_rules_for_distinct_domains() -> None:
    """With 10,000 rules every host still finds its own rule and earlier catch-alls still win."""
    count = 10_000
    generated = tuple(
        AccessRule(
            Policy.ONE_FACTOR if i % 2 else Policy.TWO_FACTOR,
            domains=(f"app{i}.example.com", f"*.app{i}.example.net"),
            methods=("GET",) if i % 3 == 0 else (),
        )
        for i in range(count)
    )
    tail = (AccessRule(Policy.BYPASS, paths=("^/public/",)),)
    rules = compile_rules(*generated, *tail)
    assert len(rules) == count + 1
    for i in (0, 1, 2, 3, 4999, 9998, 9999):
        expected = generated[i].policy
        assert rules.decide(make_request(host=f"app{i}.example.com"), None) == RuleDecision(expected, i)
        assert rules.decide(make_request(host=f"x.app{i}.example.net"), None).rule_index == i
        head = rules.decide(make_request(host=f"app{i}.example.com", method="HEAD", path="/public/x"), None)
        assert head.rule_index == (count if i % 3 == 0 else i)
    assert rules.decide(make_request(host="app10000.example.com"), None).rule_index is None
    assert rules.decide(make_request(host="app7.example.net"), None).rule_index is None


CASE_RULES = (
    AccessRule(Policy.DENY, paths=("^/admin(/|$)",), path_case="insensitive"),
    AccessRule(Policy.DENY, paths=("^/secret(/|$)",)),
    AccessRule(Policy.BYPASS),
)


@pytest.mark.parametrize(
    ("path", "expected_index"),
    [
        ("/admin", 0),
        ("/ADMIN", 0),
        ("/Admin/users", 0),
        ("/administrator", 2),
        ("/secret", 1),
        ("/SECRET", 2),  # case-sensitive: another path, the next rule decides
        ("/Secret/x", 2),
    ],
)
def test_path_case_insensitive_rules_match_any_letter_case(path: str, expected_index: int) -> None:
    """path_case: insensitive matches /ADMIN like /admin; a case-sensitive rule does not."""
    rules = compile_rules(*CASE_RULES)

    assert rules.decide(make_request(path=path), None).rule_index == expected_index


def test_path_case_insensitive_folds_unicode_like_the_regex_engine() -> None:
    """Case folding covers non-ASCII letters too (an upstream folding /CAFÉ to /café is covered)."""
    rules = compile_rules(
        AccessRule(Policy.DENY, paths=("^/caf\u00e9$", "^/kiosk$"), path_case="insensitive"),
        AccessRule(Policy.BYPASS),
    )

    assert rules.decide(make_request(path="/CAF\u00c9"), None).rule_index == 0
    assert rules.decide(make_request(path="/\u212aiosk"), None).rule_index == 0  # KELVIN SIGN folds to k
    assert rules.decide(make_request(path="/cafe"), None).rule_index == 1
