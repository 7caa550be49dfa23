"""Tests for gateway.authz.redirects: which return URLs may be redirected to."""

from __future__ import annotations

import pytest

from gateway.authz.redirects import safe_redirect_target

DOMAINS = ("good.example",)


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        "/foo",
        "foo",
        "//evil.example",
        "//good.example/x",
        "https://good.example@evil.example",
        "https://user:pass@good.example/",
        "https://good.example.evil.example",
        "https://evil.example/good.example",
        "https://notgood.example",
        "https://evil.example\\@good.example",
        "https:\\\\evil.example",
        "/\\evil.example",
        "HTTPS://EVIL.EXAMPLE",
        "https://good%2eexample",
        "https://evil.example%2f.good.example",
        "https://g\u043e\u043ed.example",  # Cyrillic o lookalikes
        "https://app.g\u043e\u043ed.example/",
        "javascript:alert(1)",
        "javascript://good.example/%0aalert(1)",
        "data:text/html,x",
        "ftp://good.example/",
        "http://good.example/",
        "https://good.example\t.evil.example",
        "https://good.example\n.evil.example",
        "https://good.example\r\n/x",
        " https://good.example/",
        "https://good.example /x",
        "https://good.example\x00.evil.example",
        "https://good.example\x7f/",
        "https://good.example:99999",
        "https://good.example:0/",
        "https://good.example:",
        "https://good.example:80:80/",
        "https://good.example:+443/",
        "https://good.example:44a/",
        "https://[::1]/",
        "https://[::1",
        "https://.good.example/",
        "https://a..good.example/",
        "https://good.example./",
        "https://ev!l.good.example/",
        "https:///good.example",
        "https:good.example",
    ],
)
def test_unsafe_targets_are_refused(url: str | None) -> None:
    """Every attack string and non-absolute URL yields None."""
    assert safe_redirect_target(url, DOMAINS, allow_http=False) is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://good.example", "https://good.example"),
        ("https://good.example/", "https://good.example/"),
        ("https://app.good.example/x?y=1#z", "https://app.good.example/x?y=1#z"),
        ("HTTPS://App.Good.Example/x", "https://app.good.example/x"),
        ("https://a.b.good.example:8443/p", "https://a.b.good.example:8443/p"),
        ("https://good.example//evil.example", "https://good.example//evil.example"),
        ("https://good.example/@evil.example", "https://good.example/@evil.example"),
        ("https://good.example/%2e%2e/x", "https://good.example/%2e%2e/x"),
        ("https://b\u00fccher.good.example/", "https://xn--bcher-kva.good.example/"),
        ("https://B\u00dcCHER.good.example/", "https://xn--bcher-kva.good.example/"),
    ],
)
def test_safe_targets_are_normalised(url: str, expected: str) -> None:
    """A URL inside a cookie domain comes back re-assembled with a lower-case, punycoded host."""
    assert safe_redirect_target(url, DOMAINS, allow_http=False) == expected


@pytest.mark.parametrize(
    ("url", "allow_http", "expected"),
    [
        ("http://good.example/", True, "http://good.example/"),
        ("http://good.example/", False, None),
        ("https://good.example/", True, "https://good.example/"),
        ("http://evil.example/", True, None),
    ],
)
def test_http_only_when_allowed(url: str, allow_http: bool, expected: str | None) -> None:
    """Plain http is accepted only when allow_http is set."""
    assert safe_redirect_target(url, DOMAINS, allow_http=allow_http) == expected


@pytest.mark.parametrize(
    ("url", "domains", "expected"),
    [
        ("http://localhost:8080/app", ("localhost",), "http://localhost:8080/app"),
        ("http://evil-localhost/", ("localhost",), None),
        ("https://b.test/", ("a.test", "b.test"), "https://b.test/"),
        ("https://x.a.test/", ("a.test", "b.test"), "https://x.a.test/"),
        ("https://good.example/", (), None),
    ],
)
def test_any_cookie_domain_may_match(url: str, domains: tuple[str, ...], expected: str | None) -> None:
    """The host may equal, or be a subdomain of, any one of the cookie domains."""
    assert safe_redirect_target(url, domains, allow_http=True) == expected
