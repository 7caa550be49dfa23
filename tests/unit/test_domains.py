"""Which session cookie domain covers a host, and the Domain attribute it gets."""

from __future__ import annotations

import pytest

from gateway.authz.domains import cookie_domain_attribute, host_in_domain, match_cookie_domain
from gateway.config import CookieDomain

COOKIES = (
    CookieDomain(domain="example.com", portal_url="https://auth.example.com"),
    CookieDomain(domain="eu.example.com", portal_url="https://auth.eu.example.com"),
    CookieDomain(domain="example.org", portal_url="https://auth.example.org"),
    CookieDomain(domain="localhost", portal_url="http://localhost:8080"),
)


@pytest.mark.parametrize(
    ("host", "domain", "expected"),
    [
        ("example.com", "example.com", True),
        ("app.example.com", "example.com", True),
        ("a.b.example.com", "example.com", True),
        ("badexample.com", "example.com", False),
        ("example.com.evil.test", "example.com", False),
        ("com", "example.com", False),
        ("", "example.com", False),
        ("app.localhost", "localhost", True),
    ],
)
def test_host_in_domain(host: str, domain: str, expected: bool) -> None:
    """A host is in a domain when it is the domain or ends with "." + domain."""
    assert host_in_domain(host, domain) is expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("app.example.com", "example.com"),
        ("example.com", "example.com"),
        ("app.eu.example.com", "eu.example.com"),
        ("eu.example.com", "eu.example.com"),
        ("shop.example.org", "example.org"),
        ("app.localhost", "localhost"),
        ("example.net", None),
        ("notexample.com", None),
        ("example.com.evil.test", None),
    ],
)
def test_match_cookie_domain_picks_the_most_specific(host: str, expected: str | None) -> None:
    """The longest cookie domain covering the host wins; no cover gives None."""
    match = match_cookie_domain(host, COOKIES)

    assert (match.domain if match else None) == expected


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("example.com", "example.com"),
        ("localhost", None),
        ("app.localhost", None),
        ("127.0.0.1", None),
        ("::1", None),
    ],
)
def test_cookie_domain_attribute(domain: str, expected: str | None) -> None:
    """Local hosts get host-only cookies (browsers refuse Domain=localhost); others get Domain."""
    assert cookie_domain_attribute(domain) == expected
