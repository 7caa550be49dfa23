"""Session cookies (sign, verify, rotate, expire), Cookie header parsing, the cache and end reasons."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from gateway.errors import SessionInvalid
from gateway.models import Level, SessionRecord, Subject, User
from gateway.sessions.codec import (
    CachedSession,
    SessionCache,
    SessionCodec,
    build_identity_headers,
    cookie_values,
    generate_session_id,
    hash_session_id,
    session_end_reason,
)

OLD_KEY = "o" * 40
NEW_KEY = "n" * 40
MAX_AGE = 3600.0


def now() -> float:
    # itsdangerous stamps cookies with the real time; verification takes ours.
    return time.time()


def test_sign_then_verify_round_trips() -> None:
    """A signed session id verifies back to itself and its signing time."""
    codec = SessionCodec([NEW_KEY], max_age=MAX_AGE)
    session_id = generate_session_id()

    verified, signed_at = codec.verify(codec.sign(session_id), now=now())

    assert verified == session_id
    assert abs(signed_at - now()) < 5


def test_session_ids_are_random_and_hashed_for_storage() -> None:
    """Session ids differ every time and storage sees only their sha256."""
    first, second = generate_session_id(), generate_session_id()

    assert first != second
    assert len(first) >= 43
    assert hash_session_id(first) != first
    assert len(hash_session_id(first)) == 64


@pytest.mark.parametrize(
    "tamper",
    [
        # A middle character: the last one of the base64 signature also carries 2 unused bits,
        # so changing only those would leave the decoded signature as it was.
        pytest.param(lambda c: c[:-5] + ("A" if c[-5] != "A" else "B") + c[-4:], id="signature changed"),
        pytest.param(lambda c: ("A" if c[0] != "A" else "B") + c[1:], id="session id changed"),
        pytest.param(lambda c: c.rsplit(".", 1)[0], id="signature removed"),
        pytest.param(lambda c: c + ".extra", id="extra part"),
        pytest.param(lambda c: "", id="empty"),
        pytest.param(lambda c: "no-dots-at-all", id="no separator"),
        pytest.param(lambda c: "\udcff" + c, id="surrogate"),
        pytest.param(lambda c: "é" + c, id="non-ascii"),
    ],
)
def test_tampered_cookie_is_invalid(tamper: Callable[[str], str]) -> None:
    """Any change to a signed cookie raises SessionInvalid."""
    codec = SessionCodec([NEW_KEY], max_age=MAX_AGE)
    cookie = codec.sign(generate_session_id())

    with pytest.raises(SessionInvalid):
        codec.verify(tamper(cookie), now=now())


@pytest.mark.parametrize(
    ("offset", "valid"),
    [
        pytest.param(0.0, True, id="fresh"),
        pytest.param(MAX_AGE - 10, True, id="just under max age"),
        pytest.param(MAX_AGE + 10, False, id="just over max age"),
        pytest.param(10 * MAX_AGE, False, id="long expired"),
    ],
)
def test_max_age_is_checked_against_the_callers_clock(offset: float, valid: bool) -> None:
    """A cookie older than max_age by the given clock is invalid."""
    codec = SessionCodec([NEW_KEY], max_age=MAX_AGE)
    cookie = codec.sign("id")

    if valid:
        assert codec.verify(cookie, now=now() + offset)[0] == "id"
    else:
        with pytest.raises(SessionInvalid, match="max age"):
            codec.verify(cookie, now=now() + offset)


def test_old_key_still_verifies_after_rotation() -> None:
    """A cookie signed with the previous key verifies while that key is listed second."""
    old_cookie = SessionCodec([OLD_KEY], max_age=MAX_AGE).sign("id")

    rotated = SessionCodec([NEW_KEY, OLD_KEY], max_age=MAX_AGE)

    assert rotated.verify(old_cookie, now=now())[0] == "id"


def test_new_cookies_use_the_first_key() -> None:
    """After rotation new cookies are signed with the newest (first) key."""
    cookie = SessionCodec([NEW_KEY, OLD_KEY], max_age=MAX_AGE).sign("id")

    assert SessionCodec([NEW_KEY], max_age=MAX_AGE).verify(cookie, now=now())[0] == "id"
    with pytest.raises(SessionInvalid):
        SessionCodec([OLD_KEY], max_age=MAX_AGE).verify(cookie, now=now())


def test_unknown_key_does_not_verify() -> None:
    """A cookie signed with a key not in the list is invalid."""
    cookie = SessionCodec(["x" * 40], max_age=MAX_AGE).sign("id")

    with pytest.raises(SessionInvalid):
        SessionCodec([NEW_KEY, OLD_KEY], max_age=MAX_AGE).verify(cookie, now=now())


def test_codec_needs_a_key() -> None:
    """An empty key list is a programming error."""
    with pytest.raises(ValueError, match="key"):
        SessionCodec([], max_age=MAX_AGE)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, [], id="no header"),
        pytest.param("", [], id="empty"),
        pytest.param("other=1", [], id="other cookie only"),
        pytest.param("s=abc", ["abc"], id="one"),
        pytest.param("a=1; s=abc; b=2", ["abc"], id="among others"),
        pytest.param("s=one; s=two", ["one", "two"], id="repeated, in order"),
        pytest.param('s="quoted"', ["quoted"], id="quotes stripped"),
        pytest.param("  s = abc  ", ["abc"], id="spaces trimmed"),
        pytest.param("ss=abc; s_=x; xs=y", [], id="similar names"),
        pytest.param("s", [], id="name without value"),
        pytest.param("s=", [""], id="empty value"),
        pytest.param("s=a=b", ["a=b"], id="equals in value"),
        pytest.param(";;s=abc;;", ["abc"], id="stray separators"),
        pytest.param('a="x s=1"', [], id="name inside another cookie's quoted value"),
        pytest.param("a=s=1", [], id="name inside another cookie's value"),
        pytest.param("a=1;\ts=2", ["2"], id="tab before the name"),
        pytest.param("a=s; s=2", ["2"], id="value equal to the name first"),
        pytest.param("s=1; as=2", ["1"], id="name as the end of a later name"),
    ],
)
def test_cookie_values(header: str | None, expected: list[str]) -> None:
    """cookie_values returns every value of the named cookie in order."""
    assert cookie_values(header, "s") == expected


def test_identity_headers_drop_control_characters() -> None:
    """Header values never carry a line break, whatever is stored."""
    user = User(1, "bob", "bob@example.com", "Bob\r\nX-Evil: 1", ("a", "b"), False, 0.0)

    headers = build_identity_headers(user, ("U", "E", "G", "N"))

    assert headers == (("U", "bob"), ("E", "bob@example.com"), ("G", "a,b"), ("N", "BobX-Evil: 1"))


def record(*, expires_at: float = 1000.0, remember_me: bool = False, id_hash: str = "h") -> SessionRecord:
    return SessionRecord(
        id_hash=id_hash,
        user_id=1,
        level=Level.ONE_FACTOR,
        created_at=0.0,
        authenticated_at=0.0,
        last_active=0.0,
        expires_at=expires_at,
        remember_me=remember_me,
        ip="192.0.2.1",
        user_agent="ua",
    )


@pytest.mark.parametrize(
    ("now_", "last_active", "inactivity", "remember_me", "expected"),
    [
        pytest.param(100.0, 90.0, 300.0, False, None, id="active"),
        pytest.param(1000.0, 999.0, 300.0, False, "expired", id="at expiry"),
        pytest.param(1500.0, 1499.0, 0.0, True, "expired", id="expiry applies to remember-me"),
        pytest.param(400.0, 89.0, 300.0, False, "inactive", id="idle past inactivity + grace"),
        pytest.param(400.0, 90.0, 300.0, False, None, id="idle exactly inactivity + grace"),
        pytest.param(900.0, 0.0, 0.0, False, None, id="inactivity off"),
        pytest.param(900.0, 0.0, 300.0, True, None, id="remember-me ignores inactivity"),
        pytest.param(1200.0, 0.0, 300.0, False, "expired", id="expired wins over inactive"),
    ],
)
def test_session_end_reason(
    now_: float, last_active: float, inactivity: float, remember_me: bool, expected: str | None
) -> None:
    """session_end_reason says expired, inactive or None (alive) for a clock offset."""
    rec = record(expires_at=1000.0, remember_me=remember_me)

    reason = session_end_reason(rec, now=now_, last_active=last_active, inactivity=inactivity, grace=10.0)

    assert reason == expected


def entry(id_hash: str, *, user_id: int = 1, refresh_at: float = 100.0) -> CachedSession:
    return CachedSession(
        id_hash=id_hash,
        user_id=user_id,
        subject=Subject("bob"),
        level=Level.ONE_FACTOR,
        headers=(),
        expires_at=1000.0,
        remember_me=False,
        last_active=0.0,
        refresh_at=refresh_at,
        record=record(id_hash=id_hash),
    )


def test_cache_returns_fresh_entries_only() -> None:
    """get() hides an entry once its refresh time is reached; peek() still shows it."""
    cache = SessionCache()
    cache.put("c", entry("h", refresh_at=100.0))

    assert cache.get("c", 99.9) is not None
    assert cache.get("c", 100.0) is None
    assert cache.peek("c") is not None
    assert cache.get("missing", 0.0) is None


def test_cache_is_bounded_and_evicts_the_oldest() -> None:
    """Beyond max_entries the oldest insertion is dropped."""
    cache = SessionCache(max_entries=3)
    for name in ("a", "b", "c", "d"):
        cache.put(name, entry(name))

    assert len(cache) == 3
    assert cache.peek("a") is None
    assert [cache.peek(n) is not None for n in ("b", "c", "d")] == [True, True, True]


def test_cache_replacing_an_entry_does_not_evict() -> None:
    """Putting an existing key again at the bound keeps every other entry."""
    cache = SessionCache(max_entries=2)
    cache.put("a", entry("a"))
    cache.put("b", entry("b"))

    cache.put("a", entry("a"))

    assert len(cache) == 2
    assert cache.peek("b") is not None


def test_cache_evicts_every_cookie_of_a_session() -> None:
    """evict_session drops all cookie values mapping to one session id hash."""
    cache = SessionCache()
    cache.put("c1", entry("h1"))
    cache.put("c1-other-key", entry("h1"))
    cache.put("c2", entry("h2"))

    cache.evict_session("h1")

    assert len(cache) == 1
    assert cache.peek("c2") is not None


def test_cache_evicts_a_user_but_one_session() -> None:
    """evict_user drops a user's sessions, optionally sparing the current one."""
    cache = SessionCache()
    cache.put("a", entry("h1", user_id=1))
    cache.put("b", entry("h2", user_id=1))
    cache.put("c", entry("h3", user_id=2))

    cache.evict_user(1, keep_id_hash="h2")

    assert cache.peek("a") is None
    assert cache.peek("b") is not None
    assert cache.peek("c") is not None
