"""Short, human names for User-Agent strings on the devices page (pure).

"Firefox 128 on Linux", "Safari 17 on iPhone", "curl 8.5", "Unknown device". Not a full parser:
enough to tell a user's own devices apart. The result is plain text, bounded in length and free of
control characters, whatever the client sent.
"""

from __future__ import annotations

import re

UNKNOWN = "Unknown device"
MAX_INPUT = 512  # longer headers are cut before matching, so a huge value costs nothing
MAX_OUTPUT = 60

# Browsers and mail clients, most specific first: Edge and Opera also say Chrome, Chrome says Safari.
_BROWSERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Thunderbird", re.compile(r"\bThunderbird/(\d+)")),
    ("Edge", re.compile(r"\bEdg(?:e|A|iOS)?/(\d+)")),
    ("Opera", re.compile(r"\b(?:OPR|OPiOS)/(\d+)")),
    ("Samsung Internet", re.compile(r"\bSamsungBrowser/(\d+)")),
    ("Firefox", re.compile(r"\b(?:Firefox|FxiOS)/(\d+)")),
    ("Chrome", re.compile(r"\b(?:Chrome|CriOS|Chromium)/(\d+)")),
    ("Safari", re.compile(r"\bVersion/(\d+)(?:[.\d]*)?(?: Mobile/\w+)? Safari/")),
)

# Clients that name themselves first; shown with major.minor.
_TOOLS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("DAVx⁵", re.compile(r"^DAVx5/(\d+(?:\.\d+)?)")),
    ("curl", re.compile(r"^curl/(\d+(?:\.\d+)?)")),
    ("Wget", re.compile(r"^Wget/(\d+(?:\.\d+)?)")),
    ("git", re.compile(r"^git/(\d+(?:\.\d+)?)")),
    ("python-requests", re.compile(r"^python-requests/(\d+(?:\.\d+)?)")),
    ("Python aiohttp", re.compile(r"^Python/[\d.]+ aiohttp/(\d+(?:\.\d+)?)")),
    ("python-httpx", re.compile(r"^python-httpx/(\d+(?:\.\d+)?)")),
    ("Go HTTP client", re.compile(r"^Go-http-client/(\d+(?:\.\d+)?)")),
    ("okhttp", re.compile(r"^okhttp/(\d+(?:\.\d+)?)")),
)

# Order matters: iPhones say "like Mac OS X", Android says Linux.
_SYSTEMS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("iPhone", re.compile(r"\biPhone\b")),
    ("iPad", re.compile(r"\biPad\b")),
    ("Android", re.compile(r"\bAndroid\b")),
    ("ChromeOS", re.compile(r"\bCrOS\b")),
    ("Windows", re.compile(r"\bWindows\b")),
    ("macOS", re.compile(r"\b(?:Macintosh|Mac OS X)\b")),
    ("Linux", re.compile(r"\b(?:Linux|X11|Ubuntu|Fedora)\b")),
)

# A generic first product token, "Name/1.2.3", for clients we do not know by name.
_PRODUCT = re.compile(r"^([A-Za-z][A-Za-z0-9._+-]{0,30})/(\d+(?:\.\d+)?)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def describe(user_agent: str | None) -> str:
    """Name the browser or client and its system in a few words, or "Unknown device"."""
    client, system = describe_parts(user_agent)
    if client is None and system is None:
        return UNKNOWN
    if client is None:
        return bounded(f"Browser on {system}")
    return bounded(_join(client, system))


def describe_parts(user_agent: str | None) -> tuple[str | None, str | None]:
    """Return (client, system) of a User-Agent, each None when unknown, for callers that word them.

    The portal uses it to say "Firefox 128 on Linux" in the reader's language; `describe` is the
    English wording of the same parts.
    """
    if not user_agent:
        return None, None
    text = _CONTROL.sub(" ", user_agent[:MAX_INPUT]).strip()
    if not text:
        return None, None
    system = _system(text)
    for name, pattern in _TOOLS:
        match = pattern.search(text)
        if match:
            return f"{name} {match.group(1)}", system
    for name, pattern in _BROWSERS:
        match = pattern.search(text)
        if match:
            return f"{name} {match.group(1)}", system
    if text.startswith("Mozilla/") and system:
        return None, system
    match = _PRODUCT.match(text)
    if match and match.group(1) != "Mozilla":
        return f"{match.group(1)} {match.group(2)}", system
    return None, None


def _system(text: str) -> str | None:
    for name, pattern in _SYSTEMS:
        if pattern.search(text):
            return name
    return None


def _join(client: str, system: str | None) -> str:
    return f"{client} on {system}" if system else client


def bounded(text: str) -> str:
    """Cut `text` to MAX_OUTPUT characters (with an ellipsis)."""
    return text if len(text) <= MAX_OUTPUT else text[: MAX_OUTPUT - 1] + "…"
