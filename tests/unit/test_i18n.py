"""Language choice (pure): Accept-Language parsing, negotiation, the picker cookie, return paths."""

from __future__ import annotations

import pytest

from gateway.accounts.useragent import MAX_OUTPUT, describe
from portal.events import device_label
from portal.i18n import (
    DEFAULT_LANGUAGE,
    LANGUAGES,
    MAX_RANGES,
    choose_language,
    negotiate_language,
    parse_accept_language,
    return_path,
    translator,
)

AVAILABLE = tuple(LANGUAGES)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("de", [("de", 1.0)], id="one tag"),
        pytest.param("de-CH, fr;q=0.8, en;q=0.5", [("de-ch", 1.0), ("fr", 0.8), ("en", 0.5)], id="ordered"),
        pytest.param("en;q=0.5, fr;q=0.9, de", [("de", 1.0), ("fr", 0.9), ("en", 0.5)], id="sorted by q"),
        pytest.param("fr, de", [("fr", 1.0), ("de", 1.0)], id="ties keep header order"),
        pytest.param("es; q=0.7", [("es", 0.7)], id="spaces around q"),
        pytest.param("es;Q=0.7", [("es", 0.7)], id="upper-case Q"),
        pytest.param("de;q=0", [("de", 0.0)], id="q zero kept for refusal"),
        pytest.param("*;q=0.1", [("*", 0.1)], id="wildcard"),
        pytest.param("de;q=1.000", [("de", 1.0)], id="three decimals"),
        pytest.param("", [], id="empty"),
    ],
)
def test_parse_accept_language(header: str, expected: list[tuple[str, float]]) -> None:
    """Ranges come back lower-cased with their q, most wanted first, ties in header order."""
    assert parse_accept_language(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("de;q=2", id="q above 1"),
        pytest.param("de;q=1.5", id="q 1.5"),
        pytest.param("de;q=-1", id="negative q"),
        pytest.param("de;q=0.1234", id="four decimals"),
        pytest.param("de;q=abc", id="q not a number"),
        pytest.param("de;q=", id="empty q"),
        pytest.param("de;q", id="q without value"),
        pytest.param("de;q=nan", id="nan"),
        pytest.param("de;q=1e0", id="exponent"),
        pytest.param("<script>", id="markup"),
        pytest.param("de_DE", id="underscore"),
        pytest.param("toolonglanguage", id="subtag over 8"),
        pytest.param("d\x00e", id="nul byte"),
        pytest.param("de-", id="trailing hyphen"),
        pytest.param("../../etc/passwd", id="path"),
        pytest.param("ÄÖ", id="non-ascii"),
    ],
)
def test_malformed_ranges_are_skipped(header: str) -> None:
    """A malformed range or q-value is dropped, never guessed at or raised on."""
    assert parse_accept_language(header) == []
    assert choose_language(None, header) == DEFAULT_LANGUAGE


def test_header_size_is_bounded() -> None:
    """A huge header is cut: only the first MAX_RANGES ranges of the first 1 KiB are read."""
    ranges = parse_accept_language(",".join(["xx"] * 10_000) + ",de")
    assert len(ranges) <= MAX_RANGES
    assert ("de", 1.0) not in ranges
    assert choose_language(None, "a" * 100_000) == DEFAULT_LANGUAGE


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("de-DE,de;q=0.9,en;q=0.8", "de", id="german browser"),
        pytest.param("fr-CA", "fr", id="regional variant"),
        pytest.param("it, es;q=0.5", "es", id="first available"),
        pytest.param("en;q=0.1, es", "es", id="q beats order"),
        pytest.param("it, pt", None, id="none available"),
        pytest.param("*", "en", id="wildcard takes the first offered"),
        pytest.param("en;q=0, *", "de", id="wildcard skips a refused language"),
        pytest.param("de;q=0, de-AT", None, id="a refused language is never served"),
        pytest.param(None, None, id="no header"),
    ],
)
def test_negotiate_language(header: str | None, expected: str | None) -> None:
    """The most wanted available language wins, matched on its primary subtag."""
    assert negotiate_language(header, AVAILABLE) == expected


@pytest.mark.parametrize(
    ("cookie", "header", "expected"),
    [
        pytest.param("fr", "de", "fr", id="cookie beats header"),
        pytest.param(None, "es", "es", id="header without cookie"),
        pytest.param("xx", "de", "de", id="unknown cookie ignored"),
        pytest.param("DE", None, "en", id="cookie must be exact"),
        pytest.param("de;q=1", None, "en", id="cookie is not a header"),
        pytest.param("", "", "en", id="nothing"),
    ],
)
def test_choose_language(cookie: str | None, header: str | None, expected: str) -> None:
    """The picker's cookie wins when it names a language offered, then Accept-Language, then English."""
    assert choose_language(cookie, header) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("/auth/login?rd=https%3A%2F%2Fapp.example.com%2F", None, id="portal page with query"),
        pytest.param("/auth/settings", None, id="portal page"),
        pytest.param("/auth", None, id="portal root without slash"),
        pytest.param("https://evil.example/auth/", "/auth/", id="absolute URL"),
        pytest.param("//evil.example/auth/", "/auth/", id="scheme-relative"),
        pytest.param("/\\evil.example", "/auth/", id="backslash"),
        pytest.param("/auth/\\\\evil", "/auth/", id="backslash inside"),
        pytest.param("/auth/x\r\nSet-Cookie: a=b", "/auth/", id="header injection"),
        pytest.param("/other/app", "/auth/", id="outside the portal"),
        pytest.param("/authx", "/auth/", id="prefix is not a path"),
        pytest.param("auth/login", "/auth/", id="relative"),
        pytest.param("javascript:alert(1)", "/auth/", id="javascript"),
        pytest.param("", "/auth/", id="empty"),
        pytest.param(None, "/auth/", id="missing"),
        pytest.param("/auth/" + "a" * 5000, "/auth/", id="too long"),
    ],
)
def test_return_path(value: str | None, expected: str | None) -> None:
    """Only a plain path under the portal is returned to; anything else goes to the portal root."""
    assert return_path(value, "/auth") == (value if expected is None else expected)


def test_return_path_at_the_root() -> None:
    """A portal mounted at / accepts any plain absolute path and still refuses other hosts."""
    assert return_path("/settings", "") == "/settings"
    assert return_path("//evil.example", "") == "/"


def test_translator_formats_after_translating() -> None:
    """Placeholders are filled after translation, and plural forms follow the language's rule."""
    de = translator("de")
    assert de.gettext("Hello, %(name)s", name="Ada") == "Hallo, Ada"
    one = "That code is not valid. %(num)s attempt left."
    many = "That code is not valid. %(num)s attempts left."
    assert de.ngettext(one, many, 1) == "Dieser Code ist ungültig. Noch 1 Versuch."
    assert de.ngettext(one, many, 2) == "Dieser Code ist ungültig. Noch 2 Versuche."
    assert translator("fr").ngettext(one, many, 0) == "Ce code n'est pas valide. Il vous reste 0 tentative."
    assert translator("en").gettext("Hello, %(name)s", name="Ada") == "Hello, Ada"
    assert translator("xx").language == DEFAULT_LANGUAGE


FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


@pytest.mark.parametrize(
    ("user_agent", "language", "expected"),
    [
        pytest.param(FIREFOX_LINUX, "en", "Firefox 128 on Linux", id="en"),
        pytest.param(FIREFOX_LINUX, "de", "Firefox 128 auf Linux", id="de"),
        pytest.param(FIREFOX_LINUX, "fr", "Firefox 128 sur Linux", id="fr"),
        pytest.param("Mozilla/5.0 (Windows NT 10.0)", "es", "Navegador en Windows", id="browser unknown"),
        pytest.param("curl/8.5.0", "de", "curl 8.5", id="client only"),
        pytest.param(None, "de", "Unbekanntes Gerät", id="unknown"),
        pytest.param("\x00\x01", "fr", "Appareil inconnu", id="control characters"),
    ],
)
def test_device_label(user_agent: str | None, language: str, expected: str) -> None:
    """Devices are named in the reader's language; English matches the gateway's own wording."""
    assert device_label(user_agent, translator(language)) == expected
    if language == "en":
        assert expected == describe(user_agent)


def test_device_label_is_bounded() -> None:
    """A long client name stays within the gateway's bound in every language."""
    label = device_label("A" * 30 + "/1.0 (Windows", translator("de"))
    assert len(label) <= MAX_OUTPUT and label.endswith("Windows")
