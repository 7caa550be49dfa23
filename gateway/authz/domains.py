"""Which session cookie domain a host belongs to (pure)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config import CookieDomain

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def host_in_domain(host: str, domain: str) -> bool:
    """True when host is the domain itself or one of its subdomains (label-exact)."""
    return host == domain or host.endswith("." + domain)


def match_cookie_domain(host: str, cookies: Sequence[CookieDomain]) -> CookieDomain | None:
    """Return the most specific cookie domain covering host, or None."""
    best: CookieDomain | None = None
    for cookie in cookies:
        if host_in_domain(host, cookie.domain) and (best is None or len(cookie.domain) > len(best.domain)):
            best = cookie
    return best


def cookie_domain_attribute(domain: str) -> str | None:
    """Return the Set-Cookie Domain attribute, or None for a host-only cookie.

    Browsers refuse Domain=localhost, so localhost gets a host-only cookie.
    """
    if domain in LOCAL_HOSTS or domain.endswith(".localhost"):
        return None
    return domain
