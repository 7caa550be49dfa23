"""Tests for gateway.authz.paths: the one canonical path rules match, and what makes a path ambiguous."""

from __future__ import annotations

import pytest

from gateway.authz.paths import canonical_path, remove_dot_segments
from gateway.errors import InvalidForwardedHeaders


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/", "/"),
        ("/admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("/public/../admin", "/admin"),
        ("/public/%2e%2e/admin", "/admin"),
        ("/public/%2E%2E/admin", "/admin"),
        ("/public/./x", "/public/x"),
        ("/../../admin", "/admin"),
        ("//admin", "/admin"),
        ("/admin/", "/admin/"),
        ("/a/b/..", "/a/"),
        ("/ADMIN", "/ADMIN"),
        ("/caf%C3%A9", "/caf\u00e9"),
        ("/a%20b", "/a b"),
    ],
)
def test_unambiguous_paths_are_decoded_once_and_resolved(raw: str, canonical: str) -> None:
    """Decoding happens once, then dot segments are resolved; the result is not ambiguous."""
    assert canonical_path(raw, "X-Forwarded-Uri") == (canonical, None)


def test_a_percent_decoded_once_stays_encoded() -> None:
    """%2525 decodes once to %25; that is a second encoding, reported as ambiguous."""
    path, ambiguity = canonical_path("/a%2525", "X-Forwarded-Uri")

    assert path == "/a%25"
    assert ambiguity is not None and "double percent-encoding" in ambiguity


@pytest.mark.parametrize(
    ("raw", "canonical", "what"),
    [
        ("/admin;x", "/admin;x", "';' parameter"),
        ("/admin;jsessionid=1/x", "/admin;jsessionid=1/x", "';' parameter"),
        ("/admin%3bx", "/admin;x", "';' parameter"),
        ("/admin%3Bx", "/admin;x", "';' parameter"),
        ("/public\\..\\admin", "/public\\..\\admin", "backslash"),
        ("/public/%5c..%5cadmin", "/public/\\..\\admin", "backslash"),
        ("/public/%5C..%5Cadmin", "/public/\\..\\admin", "backslash"),
        ("/admin%2f", "/admin/", "encoded slash"),
        ("/public%2f..%2fadmin", "/admin", "encoded slash"),
        ("/admin%3fx", "/admin?x", "encoded '?' or '#'"),
        ("/admin%23x", "/admin#x", "encoded '?' or '#'"),
        ("/admin%zz", "/admin%zz", "invalid percent-encoding"),
        ("/admin%4", "/admin%4", "invalid percent-encoding"),
        ("/100%", "/100%", "invalid percent-encoding"),
        ("/%252e%252e/admin", "/%2e%2e/admin", "double percent-encoding"),
        ("/admin%20", "/admin ", "whitespace"),
        ("/admin%20/x", "/admin /x", "whitespace"),
        ("/admin%C2%A0", "/admin\u00a0", "whitespace"),
    ],
)
def test_ambiguous_paths_name_what_makes_them_so(raw: str, canonical: str, what: str) -> None:
    """Paths an upstream may read as another are canonicalised and say why they are ambiguous."""
    path, ambiguity = canonical_path(raw, "X-Forwarded-Uri")

    assert path == canonical
    assert ambiguity is not None and what in ambiguity


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("/admin%00", "encoded control character"),
        ("/admin%09", "encoded control character"),
        ("/public%0a", "encoded control character"),
        ("/admin%7f", "encoded control character"),
        ("/admin%ff", "not UTF-8"),
        ("/admin%c3%28", "not UTF-8"),
    ],
)
def test_paths_that_cannot_be_matched_are_refused_whatever_the_setting(raw: str, reason: str) -> None:
    """Control characters and non-UTF-8 after decoding raise, naming the header."""
    with pytest.raises(InvalidForwardedHeaders) as excinfo:
        canonical_path(raw, "X-Original-URL")

    assert excinfo.value.reason.startswith(f"malformed X-Original-URL {raw!r}")
    assert reason in excinfo.value.reason


@pytest.mark.parametrize(
    ("path", "resolved"),
    [
        ("/a/b/../c", "/a/c"),
        ("/a/./b", "/a/b"),
        ("/..", "/"),
        ("/a/..", "/"),
        ("/a//b/", "/a/b/"),
        ("/.", "/"),
    ],
)
def test_remove_dot_segments_never_climbs_above_the_root(path: str, resolved: str) -> None:
    """RFC 3986 dot-segment removal, with repeated slashes merged and the root as a floor."""
    assert remove_dot_segments(path) == resolved
