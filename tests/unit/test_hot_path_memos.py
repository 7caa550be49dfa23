"""The hot path's memos: bounded, and never an answer the full computation would not give."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.authz import forwarded
from gateway.authz.forwarded import parse_auth_request, parse_forward_auth
from gateway.authz.memo import BoundedMemo
from gateway.authz.rules import MATCH_MEMO_SIZE, CompiledRules, RuleDecision
from gateway.config import AccessControlConfig, AccessRule
from gateway.errors import InvalidForwardedHeaders
from gateway.models import Level, OriginalRequest, Policy, Subject
from gateway.sessions.codec import CachedSession, SessionRecord

TRUSTED = (ip_network("10.0.0.0/8"),)
PEER = "10.0.0.2"


def nginx_headers(url: str = "https://app.example.com/a", **extra: str) -> CIMultiDictProxy[str]:
    pairs = [("X-Original-URL", url), ("X-Original-Method", "GET"), ("X-Forwarded-For", "198.51.100.7")]
    pairs += [(name.replace("_", "-"), value) for name, value in extra.items()]
    return CIMultiDictProxy(CIMultiDict(pairs))


# --- BoundedMemo -----------------------------------------------------------------------------------


def test_memo_is_bounded_and_forgets_the_oldest_first() -> None:
    """Beyond max_entries the oldest insertion goes; the newest stay."""
    memo: BoundedMemo[int, str] = BoundedMemo(3)
    for i in range(10):
        memo.put(i, str(i))

    assert len(memo) == 3
    assert [memo.get(i) for i in range(10)] == [None] * 7 + ["7", "8", "9"]


def test_memo_replacing_a_key_evicts_nothing() -> None:
    """Putting an existing key again at the bound keeps every other entry."""
    memo: BoundedMemo[str, int] = BoundedMemo(2)
    memo.put("a", 1)
    memo.put("b", 2)
    memo.put("a", 3)

    assert (memo.get("a"), memo.get("b"), len(memo)) == (3, 2, 2)


def test_memo_refuses_a_zero_bound() -> None:
    """A memo that could hold nothing is a configuration mistake."""
    with pytest.raises(ValueError, match="at least 1"):
        BoundedMemo(0)


# --- forwarded headers ------------------------------------------------------------------------------


def test_repeated_request_returns_the_memoised_parse() -> None:
    """The same headers from the same peer give the very same OriginalRequest object."""
    first = parse_auth_request(nginx_headers(), PEER, TRUSTED)
    second = parse_auth_request(nginx_headers(), PEER, TRUSTED)

    assert second is first
    assert first.host == "app.example.com" and first.client_ip == ip_address("198.51.100.7")


@pytest.mark.parametrize(
    "extra",
    [
        {"X_Original_URL": "https://other.example.com/a"},
        {"X_Forwarded_For": "203.0.113.9"},
        {"X_Original_Method": "POST"},
    ],
)
def test_a_repeated_header_is_rejected_even_after_a_memoised_success(extra: dict[str, str]) -> None:
    """Duplicates never hit the memo: a second value for a memoised header still gets a 400."""
    parse_auth_request(nginx_headers(), PEER, TRUSTED)

    with pytest.raises(InvalidForwardedHeaders, match="duplicated"):
        parse_auth_request(nginx_headers(**extra), PEER, TRUSTED)


def test_untrusted_peer_is_rejected_even_after_a_memoised_success() -> None:
    """The memo belongs to the peer: the same headers from an untrusted peer get a 400."""
    parse_auth_request(nginx_headers(), PEER, TRUSTED)

    with pytest.raises(InvalidForwardedHeaders, match="not a trusted proxy"):
        parse_auth_request(nginx_headers(), "192.0.2.1", TRUSTED)


def test_memo_belongs_to_one_trusted_tuple() -> None:
    """A peer trusted under one configuration is not trusted under another through the memo."""
    parse_auth_request(nginx_headers(), PEER, TRUSTED)

    with pytest.raises(InvalidForwardedHeaders, match="not a trusted proxy"):
        parse_auth_request(nginx_headers(), PEER, (ip_network("127.0.0.0/8"),))


def test_client_address_depends_on_the_trusted_networks() -> None:
    """The right-most untrusted X-Forwarded-For entry is chosen per trusted tuple, memo or not."""
    chain = CIMultiDict(nginx_headers())
    chain["X-Forwarded-For"] = "198.51.100.7, 10.1.2.3"
    wide = (ip_network("10.0.0.0/8"),)
    narrow = (ip_network("10.0.0.2/32"),)

    for _ in range(2):
        assert parse_auth_request(CIMultiDictProxy(chain), PEER, wide).client_ip == ip_address("198.51.100.7")
        assert parse_auth_request(CIMultiDictProxy(chain), PEER, narrow).client_ip == ip_address("10.1.2.3")


def test_a_mutable_trusted_list_is_never_memoised() -> None:
    """A list of networks may change, so it gets the full parse every time."""
    trusted = [ip_network("10.0.0.0/8")]
    assert parse_auth_request(nginx_headers(), PEER, trusted).host == "app.example.com"
    trusted[0] = ip_network("127.0.0.0/8")

    with pytest.raises(InvalidForwardedHeaders, match="not a trusted proxy"):
        parse_auth_request(nginx_headers(), PEER, trusted)


def test_forward_auth_memo_sees_every_header_it_parses() -> None:
    """Traefik headers differing only in X-Forwarded-Port give different answers."""
    base = {
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "app.example.com",
        "X-Forwarded-Uri": "/",
        "X-Forwarded-For": "198.51.100.7",
    }
    ports = [
        parse_forward_auth(CIMultiDictProxy(CIMultiDict({**base, "X-Forwarded-Port": p})), PEER, TRUSTED).port
        for p in ("443", "8443", "443")
    ]

    assert ports == [None, 8443, None]


def test_request_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many distinct URLs keep at most REQUEST_MEMO_SIZE parses, and each answer stays right."""
    trusted = (ip_network("10.0.0.0/8"),)  # a fresh tuple: fresh memos
    for i in range(forwarded.REQUEST_MEMO_SIZE + 100):
        assert parse_auth_request(nginx_headers(f"https://h{i}.example.com/p"), PEER, trusted).host == (
            f"h{i}.example.com"
        )
    memos = forwarded._memos_for(trusted)
    assert memos is not None
    assert len(memos.requests) == forwarded.REQUEST_MEMO_SIZE
    assert len(memos.clients) == 1  # one client address, whatever the URL


def test_overlong_values_are_parsed_but_not_memoised() -> None:
    """A URL longer than the key cap still works and never enters the memo."""
    trusted = (ip_network("10.0.0.0/8"),)
    long_url = "https://app.example.com/" + "a" * forwarded.MEMO_MAX_KEY_CHARS

    assert parse_auth_request(nginx_headers(long_url), PEER, trusted).path.startswith("/aaa")
    memos = forwarded._memos_for(trusted)
    assert memos is not None and len(memos.requests) == 0


# --- rules ---------------------------------------------------------------------------------------------


def request(path: str = "/", method: str = "GET", client_ip: str = "203.0.113.7") -> OriginalRequest:
    return OriginalRequest(
        method=method,
        scheme="https",
        host="app.example.com",
        port=None,
        path=path,
        query="",
        client_ip=ip_address(client_ip),
    )


def rules(*items: AccessRule) -> CompiledRules:
    return CompiledRules.from_config(AccessControlConfig(default_policy=Policy.DENY, rules=items))


def test_rule_memo_keeps_subjects_out_of_the_key() -> None:
    """The same request decided for different subjects gets each subject's own rule."""
    compiled = rules(
        AccessRule(Policy.TWO_FACTOR, domains=("app.example.com",), subjects=("group:admins",)),
        AccessRule(Policy.ONE_FACTOR, domains=("app.example.com",), subjects=("user:carol",)),
        AccessRule(Policy.DENY, domains=("app.example.com",)),
    )
    admins, carol, dave = Subject("bob", frozenset({"admins"})), Subject("carol"), Subject("dave")

    answers = [compiled.decide(request(), s) for s in (admins, carol, dave, None, admins)]

    assert answers == [
        RuleDecision(Policy.TWO_FACTOR, 0),
        RuleDecision(Policy.ONE_FACTOR, 1),
        RuleDecision(Policy.DENY, 2),
        RuleDecision(Policy.ONE_FACTOR, 0, needs_subject=True),
        RuleDecision(Policy.TWO_FACTOR, 0),
    ]


def test_rule_memo_keys_on_the_client_when_a_rule_tests_networks() -> None:
    """A network rule answers per client address even for an identical host, path and method."""
    compiled = rules(
        AccessRule(Policy.BYPASS, domains=("app.example.com",), networks=(ip_network("10.0.0.0/8"),)),
        AccessRule(Policy.ONE_FACTOR, domains=("app.example.com",)),
    )

    indices = [
        compiled.decide(request(client_ip=ip), None).rule_index for ip in ("10.1.1.1", "192.0.2.1")
    ] * 2

    assert indices == [0, 1, 0, 1]


@pytest.mark.parametrize(
    ("path", "method", "expected"), [("/admin", "GET", 0), ("/x", "GET", 1), ("/x", "PUT", 2)]
)
def test_rule_memo_keys_on_path_and_method(path: str, method: str, expected: int) -> None:
    """Paths and methods each select their own rule, asked twice."""
    compiled = rules(
        AccessRule(Policy.DENY, domains=("app.example.com",), paths=("^/admin",)),
        AccessRule(Policy.ONE_FACTOR, domains=("app.example.com",), methods=("GET",)),
        AccessRule(Policy.TWO_FACTOR, domains=("*.example.com",)),
    )
    for _ in range(2):
        assert compiled.decide(request(path, method), None).rule_index == expected


def test_rule_memo_is_bounded() -> None:
    """Distinct paths beyond the memo's size are still matched correctly, the memo stays bounded."""
    compiled = rules(AccessRule(Policy.BYPASS, domains=("app.example.com",), paths=("^/p/[0-9]*7$",)))
    for i in range(MATCH_MEMO_SIZE + 50):
        expected = 0 if str(i).endswith("7") else None
        assert compiled.decide(request(f"/p/{i}"), None).rule_index == expected
    assert len(compiled._matches) == MATCH_MEMO_SIZE


# --- sessions ----------------------------------------------------------------------------------


def test_cached_session_prepares_its_response_headers_once() -> None:
    """The identity headers are kept in the cache entry as a ready answer head, in order."""
    record = SessionRecord("h", 1, Level.ONE_FACTOR, 0.0, 0.0, 0.0, 10.0, False, "127.0.0.1", "ua")
    entry = CachedSession(
        id_hash="h",
        user_id=1,
        subject=Subject("bob"),
        level=Level.ONE_FACTOR,
        headers=(("Remote-User", "bob"), ("Remote-Groups", "a,b")),
        expires_at=10.0,
        remember_me=False,
        last_active=0.0,
        refresh_at=5.0,
        record=record,
    )

    assert entry.answer_head == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nRemote-User: bob\r\nRemote-Groups: a,b\r\n"
    )
