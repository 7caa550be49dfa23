"""The portal's languages: which one a browser gets, and the catalogues that translate into it.

Pure: no aiohttp. The HTTP layer (portal/web.py) passes in the language cookie and the
Accept-Language header and gets back a language code and a Translator.

Every message id is an English %-format string (`%(name)s`), formatted after translation the
same way in Python and in templates (Jinja2's newstyle gettext), so a literal percent sign is
written `%%` everywhere.
"""

from __future__ import annotations

import functools
import gettext
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from babel.support import Translations

# The language code and its name in that language (what the picker shows), English first.
LANGUAGES: Final = {"en": "English", "de": "Deutsch", "fr": "Français", "es": "Español"}
DEFAULT_LANGUAGE: Final = "en"
LOCALE_DIR: Final = Path(__file__).parent / "locale"
DOMAIN: Final = "messages"

# Bounds for a header anyone can send: longer input is cut, not parsed.
MAX_HEADER_LENGTH: Final = 1024
MAX_RANGES: Final = 32
_RANGE = re.compile(r"(?:[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*|\*)")
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")
MAX_RETURN_PATH: Final = 2048


def N_(message: str) -> str:  # noqa: N802 - the conventional gettext marker name
    """Mark a message for extraction without translating it (it is translated where shown)."""
    return message


def parse_accept_language(header: str | None) -> list[tuple[str, float]]:
    """Return the language ranges of an Accept-Language header with their q, most wanted first.

    Malformed ranges and q-values are skipped, not guessed at; ranges with q=0 ("not this
    one") are kept so that callers can exclude them. Equal q keeps the header's order.
    """
    if not header:
        return []
    ranges: list[tuple[str, float]] = []
    for item in header[:MAX_HEADER_LENGTH].split(",")[:MAX_RANGES]:
        tag, _, params = item.partition(";")
        tag = tag.strip()
        if not _RANGE.fullmatch(tag):
            continue
        q = _parse_q(params)
        if q is not None:
            ranges.append((tag.lower(), q))
    return sorted(ranges, key=lambda pair: -pair[1])


def _parse_q(params: str) -> float | None:
    """Return the q of a range's parameters (1 when absent), or None when it is malformed."""
    q = 1.0
    for param in params.split(";") if params.strip() else []:
        name, equals, value = param.strip().partition("=")
        if name.strip().lower() != "q":
            continue  # other parameters are not defined for Accept-Language: ignore them
        value = value.strip()
        if not equals or not _QVALUE.fullmatch(value):
            return None
        q = float(value)
    return q


def negotiate_language(header: str | None, available: tuple[str, ...]) -> str | None:
    """Return the available language the header asks for most, or None when it names none.

    Matching is on the primary subtag ("de-CH" is served German), the first matching range
    wins, and a language refused with q=0 ("de;q=0") is never chosen, not even for "*".
    """
    ranges = parse_accept_language(header)
    refused = {tag for tag, q in ranges if q == 0}
    for tag, q in ranges:
        if q == 0:
            continue
        if tag == "*":
            return next((lang for lang in available if lang not in refused), None)
        primary = tag.split("-")[0]
        if primary in available and primary not in refused:
            return primary
    return None


def choose_language(cookie: str | None, accept_language: str | None) -> str:
    """Return the language for a request: the picker's cookie, else Accept-Language, else English."""
    if cookie in LANGUAGES:
        return cookie
    return negotiate_language(accept_language, tuple(LANGUAGES)) or DEFAULT_LANGUAGE


def return_path(value: str | None, base: str) -> str:
    """Return `value` when it is a path on the portal itself, else the portal's root.

    Only a plain absolute path under `base` passes: no scheme, no host, no "//" or backslash
    (which browsers read as another host), no control characters.
    """
    fallback = f"{base}/"
    if not value or len(value) > MAX_RETURN_PATH or not value.startswith("/"):
        return fallback
    if value.startswith("//") or "\\" in value or any(ch < " " or ch == "\x7f" for ch in value):
        return fallback
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return fallback
    if base and parts.path != base and not parts.path.startswith(f"{base}/"):
        return fallback
    return value


@dataclass(frozen=True, slots=True)
class Translator:
    """Translate into one language; messages are %-format strings filled after translation."""

    language: str
    catalogue: gettext.NullTranslations

    def gettext(self, message: str, **variables: Any) -> str:
        """Return `message` in this language, with its %(name)s placeholders filled."""
        return self.catalogue.gettext(message) % variables

    def ngettext(self, singular: str, plural: str, num: int, **variables: Any) -> str:
        """Return the form of a message for `num` (also available as %(num)s)."""
        return self.catalogue.ngettext(singular, plural, num) % {"num": num, **variables}


@functools.cache
def translator(language: str) -> Translator:
    """Return the Translator of a supported language (English for anything else).

    A missing catalogue is an error, not a silent fall-back to English: it is a broken install.
    """
    if language not in LANGUAGES or language == DEFAULT_LANGUAGE:
        return Translator(DEFAULT_LANGUAGE, gettext.NullTranslations())
    path = LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.mo"
    with path.open("rb") as mo:
        return Translator(language, Translations(mo, domain=DOMAIN))
