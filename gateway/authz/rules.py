"""Access rules -> which policy applies to a request (pure, Authelia-compatible).

Rules are ordered and the first match wins. A rule matches when every one of
its non-empty criteria matches: domains, paths, methods, networks, subjects.

Deciding must not slow down as the rule list grows, so rules are compiled once:
regexes are precompiled and rules are indexed by exact domain and by wildcard
suffix; a request only looks at the rules that could apply to its host.

Everything but the subject is a pure function of (host, path, method, and the
client address when a candidate rule tests networks), and proxies ask about the
same few of those again and again, so the rules that match them are memoised
in a bounded memo (gateway.authz.memo): a repeated request tests no regex at all.
Results are prepared once per rule, so deciding allocates nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from heapq import merge

from gateway.authz.memo import BoundedMemo
from gateway.config import AccessControlConfig, AccessRule, Network
from gateway.errors import ConfigError
from gateway.models import IPAddress, OriginalRequest, Policy, Subject

# Enough for every host a deployment serves; clearing when full keeps memory
# bounded even if clients send arbitrary Host headers.
_HOST_CACHE_SIZE = 4096
# Distinct (host, path, method[, client]) requests whose matching rules are remembered.
MATCH_MEMO_SIZE = 8192
# Longer paths are matched every time rather than held in the memo.
MATCH_MEMO_MAX_PATH = 1024


@dataclass(frozen=True, slots=True)
class RuleDecision:
    """The policy for one request and the rule that chose it."""

    policy: Policy
    rule_index: int | None  # None = default_policy applied
    # A rule with subjects matched an anonymous request: authenticate, then decide again.
    needs_subject: bool = False


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    policy: Policy
    paths: tuple[re.Pattern[str], ...]
    methods: frozenset[str]
    networks: tuple[Network, ...]
    users: frozenset[str]
    groups: frozenset[str]
    has_subjects: bool

    def matches_request(self, request: OriginalRequest, target: str) -> bool:
        """Match every criterion except domains (done by the index) and subjects."""
        if self.methods and request.method not in self.methods:
            return False
        if self.networks and not any(request.client_ip in net for net in self.networks):
            return False
        if self.paths and not any(p.search(target) for p in self.paths):
            return False
        return True

    def matches_subject(self, subject: Subject) -> bool:
        if subject.username in self.users:
            return True
        return not self.groups.isdisjoint(subject.groups)


class CompiledRules:
    """Ordered access rules, compiled once for fast first-match lookups."""

    def __init__(
        self,
        default_policy: Policy,
        rules: tuple[_CompiledRule, ...],
        exact: dict[str, tuple[int, ...]],
        wildcard: dict[str, tuple[int, ...]],
        any_domain: tuple[int, ...],
    ) -> None:
        self._default_policy = default_policy
        self._rules = rules
        self._exact = exact
        self._wildcard = wildcard
        self._any_domain = any_domain
        self._host_cache: dict[str, tuple[tuple[int, ...], bool]] = {}
        self._matches: BoundedMemo[tuple[str, str, str, IPAddress | None], tuple[int, ...]] = BoundedMemo(
            MATCH_MEMO_SIZE
        )
        # Frozen results, built once: deciding returns one of these, never a new object.
        self._default = RuleDecision(default_policy, None)
        self._chosen = tuple(RuleDecision(rule.policy, i) for i, rule in enumerate(rules))
        self._ask_subject = tuple(
            RuleDecision(Policy.ONE_FACTOR, i, needs_subject=True) for i in range(len(rules))
        )

    @classmethod
    def from_config(cls, cfg: AccessControlConfig) -> CompiledRules:
        """Compile the configured rules; raise ConfigError naming every bad regex or subject."""
        problems: list[tuple[str, str]] = []
        compiled: list[_CompiledRule] = []
        exact: dict[str, list[int]] = {}
        wildcard: dict[str, list[int]] = {}
        any_domain: list[int] = []
        for index, rule in enumerate(cfg.rules):
            compiled.append(_compile_rule(rule, f"access_control.rules[{index}]", problems))
            if not rule.domains:
                any_domain.append(index)
            # A rule listing both a.example.com and *.example.com is indexed twice;
            # the set keeps its index once per bucket.
            for domain in {d.lower() for d in rule.domains}:
                if domain.startswith("*."):
                    wildcard.setdefault(domain[2:], []).append(index)
                else:
                    exact.setdefault(domain, []).append(index)
        if problems:
            raise ConfigError(problems)
        return cls(
            cfg.default_policy,
            tuple(compiled),
            {host: tuple(indices) for host, indices in exact.items()},
            {suffix: tuple(indices) for suffix, indices in wildcard.items()},
            tuple(any_domain),
        )

    def __len__(self) -> int:
        return len(self._rules)

    def decide(self, request: OriginalRequest, subject: Subject | None) -> RuleDecision:
        """Return the policy of the first rule matching the request, or the default policy."""
        for index in self._matching(request):
            if not self._rules[index].has_subjects:
                return self._chosen[index]
            if subject is None:
                return self._ask_subject[index]
            if self._rules[index].matches_subject(subject):
                return self._chosen[index]
        return self._default

    def _matching(self, request: OriginalRequest) -> tuple[int, ...]:
        """Return, in order, the rules matching all but subjects, up to the first without subjects."""
        host = request.host.lower()
        # The normalised path alone, never the query: with the query appended, a rule like
        # ^/admin(/|$) would miss /admin?x=1 and let it fall through to a weaker rule.
        path = request.path
        candidates, uses_networks = self._candidates(host)
        if len(path) > MATCH_MEMO_MAX_PATH:
            return self._match(candidates, request, path)
        key = (host, path, request.method, request.client_ip if uses_networks else None)
        found = self._matches.get(key)
        if found is None:
            found = self._match(candidates, request, path)
            self._matches.put(key, found)
        return found

    def _match(self, candidates: tuple[int, ...], request: OriginalRequest, path: str) -> tuple[int, ...]:
        matched: list[int] = []
        for index in candidates:
            rule = self._rules[index]
            if rule.matches_request(request, path):
                matched.append(index)
                if not rule.has_subjects:
                    break  # first match wins whoever asks: later rules can never apply
        return tuple(matched)

    def _candidates(self, host: str) -> tuple[tuple[int, ...], bool]:
        """Return, in rule order, the rules whose domains cover host, and whether any tests networks."""
        cached = self._host_cache.get(host)
        if cached is not None:
            return cached
        buckets: list[tuple[int, ...]] = [self._any_domain]
        if host in self._exact:
            buckets.append(self._exact[host])
        # "*.example.com" covers a.example.com and a.b.example.com, never example.com:
        # look up every proper suffix of the host.
        suffix = host
        while "." in suffix:
            suffix = suffix.split(".", 1)[1]
            if suffix in self._wildcard:
                buckets.append(self._wildcard[suffix])
        candidates = _merge_unique(buckets)
        uses_networks = any(self._rules[i].networks for i in candidates)
        if len(self._host_cache) >= _HOST_CACHE_SIZE:
            self._host_cache.clear()
        self._host_cache[host] = (candidates, uses_networks)
        return candidates, uses_networks


def _merge_unique(buckets: list[tuple[int, ...]]) -> tuple[int, ...]:
    """Merge sorted index tuples into one sorted tuple without duplicates."""
    non_empty = [b for b in buckets if b]
    if len(non_empty) == 1:
        return non_empty[0]
    result: list[int] = []
    for index in merge(*non_empty):
        if not result or result[-1] != index:
            result.append(index)
    return tuple(result)


def _compile_rule(rule: AccessRule, key: str, problems: list[tuple[str, str]]) -> _CompiledRule:
    paths: list[re.Pattern[str]] = []
    # An upstream that folds case (IIS, some Windows and Java servers) serves /ADMIN as /admin:
    # a rule for it must match every spelling. IGNORECASE folds Unicode too (K, the Kelvin sign).
    flags = re.IGNORECASE if rule.path_case == "insensitive" else 0
    for i, pattern in enumerate(rule.paths):
        try:
            paths.append(re.compile(pattern, flags))
        except re.error as exc:
            problems.append((f"{key}.paths[{i}]", f"invalid regular expression {pattern!r}: {exc}"))
    users: set[str] = set()
    groups: set[str] = set()
    for i, subject in enumerate(rule.subjects):
        kind, _, name = subject.partition(":")
        if kind == "user" and name:
            users.add(name)
        elif kind == "group" and name:
            groups.add(name)
        else:
            problems.append((f"{key}.subjects[{i}]", f"{subject!r} is not 'user:NAME' or 'group:NAME'"))
    return _CompiledRule(
        policy=rule.policy,
        paths=tuple(paths),
        methods=frozenset(m.upper() for m in rule.methods),
        networks=tuple(rule.networks),
        users=frozenset(users),
        groups=frozenset(groups),
        has_subjects=bool(users or groups),
    )
