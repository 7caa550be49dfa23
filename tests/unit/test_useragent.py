"""Device names for the sessions page, from real User-Agent strings."""

from __future__ import annotations

import pytest

from gateway.accounts.useragent import MAX_OUTPUT, UNKNOWN, describe


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
            "Firefox 128 on Linux",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
            "Firefox 133 on Windows",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Safari/537.36",
            "Chrome 131 on macOS",
        ),
        (
            "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Mobile Safari/537.36",
            "Chrome 131 on Android",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.86",
            "Edge 131 on Windows",
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/17.1 Safari/605.1.15",
            "Safari 17 on macOS",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1",
            "Safari 17 on iPhone",
        ),
        (
            "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1",
            "Chrome 120 on iPad",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) FxiOS/121.0 Mobile/15E148 Safari/605.1.15",
            "Firefox 121 on iPhone",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/120.0.0.0 Safari/537.36 OPR/106.0.0.0",
            "Opera 106 on Windows",
        ),
        (
            "Mozilla/5.0 (Linux; Android 13; SAMSUNG SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
            "SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
            "Samsung Internet 23 on Android",
        ),
        (
            "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Safari/537.36",
            "Chrome 131 on ChromeOS",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 Thunderbird/115.6.0",
            "Thunderbird 115 on Windows",
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.2",
            "Thunderbird 128 on Linux",
        ),
        ("curl/8.5.0", "curl 8.5"),
        ("Wget/1.21.4", "Wget 1.21"),
        ("git/2.43.0", "git 2.43"),
        ("python-requests/2.31.0", "python-requests 2.31"),
        ("Python/3.11 aiohttp/3.9.5", "Python aiohttp 3.9"),
        ("python-httpx/0.27.0", "python-httpx 0.27"),
        ("Go-http-client/1.1", "Go HTTP client 1.1"),
        ("okhttp/4.12.0", "okhttp 4.12"),
        (
            "DAVx5/4.3.13-ose (2023/12/18; dav4jvm; okhttp/4.12.0) Android/13",
            "DAVx⁵ 4.3 on Android",
        ),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Gecko", "Browser on Windows"),
        ("Thunderbird", UNKNOWN),
        ("Mozilla/5.0", UNKNOWN),
        ("", UNKNOWN),
        (None, UNKNOWN),
        ("   ", UNKNOWN),
        ("\x00\x01", UNKNOWN),
        ("???", UNKNOWN),
        ("Evolution/3.50.2", "Evolution 3.50"),
    ],
)
def test_describe(user_agent: str | None, expected: str) -> None:
    """Browsers, mail clients and tools get a short name, their system when known, else Unknown device."""
    assert describe(user_agent) == expected


def test_describe_is_bounded_and_clean() -> None:
    """Whatever the client sends, the name is short and free of control characters."""
    name = describe("A" * 30 + "/1.0 (Windows\r\n" + "x" * 10_000)
    assert len(name) <= MAX_OUTPUT
    assert not any(ord(ch) < 32 for ch in name)
    assert describe("Firefox/1\x00\x1b[31m on Linux") == "Firefox 1 on Linux"
