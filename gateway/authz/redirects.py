"""Is this return URL (`rd`) safe to redirect to? (pure)

The URL is parsed and its parts compared exactly; string prefixes are never
trusted, because `//evil.example` and `https://good.example.evil.example`
pass them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

# Letters, digits, hyphen and underscore per label after IDNA encoding; anything
# else (sub-delims, quotes, brackets) has no business in a host we redirect to.
_HOST_LABEL = re.compile(r"[a-z0-9_-]+")
_PORT = re.compile(r"[0-9]{1,5}")


def safe_redirect_target(url: str | None, cookie_domains: Sequence[str], *, allow_http: bool) -> str | None:
    """Return the normalised absolute URL if it points inside a cookie domain, else None."""
    if not url:
        return None
    # Browsers drop tabs and newlines and treat backslashes as slashes, so the
    # URL they follow may differ from the one parsed here: refuse them outright.
    if any(ch == "\\" or ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    allowed_schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in allowed_schemes:
        return None
    netloc = parts.netloc
    if not netloc:
        return None
    # Userinfo lets `https://good.example@evil.example` look like good.example.
    if "@" in netloc:
        return None
    # Percent signs in the host are decoded differently by different parsers.
    if "%" in netloc:
        return None
    if netloc.startswith("["):
        # IP literals are never inside a cookie domain.
        return None
    raw_host, colon, raw_port = netloc.partition(":")
    port = _parse_port(raw_port) if colon else None
    if colon and port is None:
        return None
    host = _normalise_host(raw_host)
    if host is None:
        return None
    if not any(host == domain or host.endswith(f".{domain}") for domain in cookie_domains):
        return None
    new_netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme, new_netloc, parts.path, parts.query, parts.fragment))


def _parse_port(raw: str) -> int | None:
    """Return the port number, or None if it is not a valid TCP port."""
    if not _PORT.fullmatch(raw):
        return None
    port = int(raw)
    if not 1 <= port <= 65535:
        return None
    return port


def _normalise_host(raw: str) -> str | None:
    """Return the lower-case, IDNA-encoded host, or None if it is not a plain DNS name."""
    host = raw.lower()
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = host.split(".")
    if not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return None
    return host
