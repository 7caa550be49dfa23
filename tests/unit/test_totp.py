"""TOTP: RFC 6238 vectors, oathtool interoperability, replay refusal and the skew window."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from gateway.factors import totp

# RFC 6238 Appendix B: the seeds are ASCII, 20/32/64 bytes for SHA1/SHA256/SHA512.
RFC_KEYS = {
    "SHA1": b"12345678901234567890",
    "SHA256": b"12345678901234567890123456789012",
    "SHA512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
RFC_VECTORS = [
    (59, "SHA1", "94287082"),
    (59, "SHA256", "46119246"),
    (59, "SHA512", "90693936"),
    (1111111109, "SHA1", "07081804"),
    (1111111109, "SHA256", "68084774"),
    (1111111109, "SHA512", "25091201"),
    (1111111111, "SHA1", "14050471"),
    (1111111111, "SHA256", "67062674"),
    (1111111111, "SHA512", "99943326"),
    (1234567890, "SHA1", "89005924"),
    (1234567890, "SHA256", "91819424"),
    (1234567890, "SHA512", "93441116"),
    (2000000000, "SHA1", "69279037"),
    (2000000000, "SHA256", "90698825"),
    (2000000000, "SHA512", "38618901"),
    (20000000000, "SHA1", "65353130"),
    (20000000000, "SHA256", "77737706"),
    (20000000000, "SHA512", "47863826"),
]

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # 160 bits
NOW = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC, the start of a 30 s step
SETTINGS = {"period": 30, "digits": 6, "algorithm": "SHA1"}


def rfc_secret(algorithm: str) -> str:
    return base64.b32encode(RFC_KEYS[algorithm]).decode()


def check(code: str, *, now: float = NOW, last_step: int | None = None, skew: int = 1) -> int | None:
    return totp.verify(SECRET, code, last_step=last_step, now=now, skew=skew, **SETTINGS)  # type: ignore[arg-type]


def code_for(step: int) -> str:
    return totp.code_at(SECRET, step, digits=6, algorithm="SHA1")


@pytest.fixture(scope="module")
def oathtool() -> str:
    path = shutil.which("oathtool")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("oathtool is missing; CI must install the Debian package oathtool")
        pytest.skip("oathtool is not installed (apt-get install oathtool)")
    return path


def oath_code(tool: str, secret: str, at: float, *, algorithm: str, digits: int, period: int = 30) -> str:
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    mode = "--totp" if algorithm == "SHA1" else f"--totp={algorithm.lower()}"
    result = subprocess.run(
        [tool, mode, "-d", str(digits), "-s", str(period), "-b", secret, "--now", stamp],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip()


# -- RFC 6238 ----------------------------------------------------------------


@pytest.mark.parametrize(("at", "algorithm", "expected"), RFC_VECTORS)
def test_rfc6238_vectors_generate(at: int, algorithm: str, expected: str) -> None:
    """code_at reproduces every RFC 6238 Appendix B code."""
    step = totp.time_step(at, period=30)
    assert totp.code_at(rfc_secret(algorithm), step, digits=8, algorithm=algorithm) == expected


@pytest.mark.parametrize(("at", "algorithm", "expected"), RFC_VECTORS)
def test_rfc6238_vectors_verify(at: int, algorithm: str, expected: str) -> None:
    """verify accepts every RFC 6238 code at its time and returns its step."""
    step = totp.verify(
        rfc_secret(algorithm),
        expected,
        last_step=None,
        now=at,
        period=30,
        digits=8,
        algorithm=algorithm,
        skew=0,
    )
    assert step == at // 30


# -- oathtool ----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", totp.ALGORITHMS)
@pytest.mark.parametrize("digits", totp.DIGITS)
@pytest.mark.parametrize("offset", [0.0, 17.5, 29.999, 86_400 * 365 + 3.0])
def test_oathtool_codes_are_accepted(oathtool: str, algorithm: str, digits: int, offset: float) -> None:
    """A code oathtool derives from one of our secrets is accepted at the same moment."""
    secret = totp.generate_secret()
    at = NOW + offset
    code = oath_code(oathtool, secret, at, algorithm=algorithm, digits=digits)
    step = totp.verify(
        secret, code, last_step=None, now=at, period=30, digits=digits, algorithm=algorithm, skew=0
    )
    assert step == int(at // 30)


def test_oathtool_code_with_other_period(oathtool: str) -> None:
    """A 60-second period is honoured the same way oathtool reads it."""
    secret = totp.generate_secret()
    code = oath_code(oathtool, secret, NOW + 45, algorithm="SHA1", digits=6, period=60)
    step = totp.verify(
        secret, code, last_step=None, now=NOW + 45, period=60, digits=6, algorithm="SHA1", skew=0
    )
    assert step == int((NOW + 45) // 60)


def test_oathtool_code_from_the_provisioning_uri(oathtool: str) -> None:
    """The secret as an app reads it from the otpauth:// URI gives codes we accept."""
    secret = totp.generate_secret()
    uri = totp.provisioning_uri(
        secret, account="bob", issuer="authgate", digits=8, period=30, algorithm="SHA256"
    )
    query = parse_qs(urlsplit(uri).query)
    code = oath_code(oathtool, query["secret"][0], NOW, algorithm=query["algorithm"][0], digits=8)
    assert totp.verify(
        secret, code, last_step=None, now=NOW, period=30, digits=8, algorithm="SHA256", skew=1
    ) == int(NOW // 30)


def test_oathtool_code_refused_the_second_time(oathtool: str) -> None:
    """An oathtool code accepted once is refused when its step is passed back as last_step."""
    secret = totp.generate_secret()
    code = oath_code(oathtool, secret, NOW, algorithm="SHA1", digits=6)
    args = {"now": NOW + 5, "period": 30, "digits": 6, "algorithm": "SHA1", "skew": 1}
    step = totp.verify(secret, code, last_step=None, **args)  # type: ignore[arg-type]
    assert step is not None
    assert totp.verify(secret, code, last_step=step, **args) is None  # type: ignore[arg-type]


# -- replay and skew -----------------------------------------------------------


def test_same_code_twice_is_refused() -> None:
    """Passing the returned step back as last_step refuses the same code."""
    code = code_for(int(NOW // 30))
    step = check(code)
    assert step == int(NOW // 30)
    assert check(code, last_step=step) is None
    assert check(code, now=NOW + 10, last_step=step) is None


def test_older_code_refused_after_newer_one() -> None:
    """A code from an earlier step than the last accepted one is refused even inside the window."""
    current = int(NOW // 30)
    assert check(code_for(current), last_step=None) == current
    assert check(code_for(current - 1), last_step=current) is None


def test_next_code_accepted_after_previous() -> None:
    """After a step is used, the next step's code still works."""
    current = int(NOW // 30)
    assert check(code_for(current + 1), now=NOW + 30, last_step=current) == current + 1


@pytest.mark.parametrize("skew", [0, 1, 2, 5])
@pytest.mark.parametrize("direction", [-1, 1])
def test_codes_within_skew_are_accepted(skew: int, direction: int) -> None:
    """Codes exactly `skew` steps behind or ahead are accepted and return their own step."""
    current = int(NOW // 30)
    step = current + direction * skew
    assert check(code_for(step), skew=skew) == step


@pytest.mark.parametrize("skew", [0, 1, 2, 5])
@pytest.mark.parametrize("direction", [-1, 1])
def test_codes_outside_skew_are_refused(skew: int, direction: int) -> None:
    """Codes skew + 1 steps behind or ahead are refused."""
    current = int(NOW // 30)
    code = code_for(current + direction * (skew + 1))
    # Guard against a coincidental collision with a code inside the window.
    window = {code_for(s) for s in range(current - skew, current + skew + 1)}
    assert code not in window
    assert check(code, skew=skew) is None


@pytest.mark.parametrize("seconds", [0.0, 29.999])
def test_step_boundaries_follow_the_clock(seconds: float) -> None:
    """The whole 30 s step accepts its code with skew 0, and the next second does not."""
    code = code_for(int(NOW // 30))
    assert check(code, now=NOW + seconds, skew=0) == int(NOW // 30)
    assert check(code, now=NOW + 30, skew=0) is None


# -- input handling ------------------------------------------------------------


@pytest.mark.parametrize("shape", ["{} {}", " {}{} ", "{}-{}", "{}\t{}"])
def test_spaces_and_dashes_are_ignored(shape: str) -> None:
    """'123 456', ' 123456 ' and '123-456' are read as 123456."""
    code = code_for(int(NOW // 30))
    assert check(shape.format(code[:3], code[3:])) == int(NOW // 30)


@pytest.mark.parametrize("bad", ["", "12345", "1234567", "12345a", "١٢٣٤٥٦", "+12345", "12 34 5"])
def test_malformed_codes_are_refused(bad: str) -> None:
    """Wrong length, letters and non-ASCII digits are refused without raising."""
    assert check(bad) is None


def test_code_for_other_secret_is_refused() -> None:
    """A code from a different secret is refused."""
    other = totp.generate_secret()
    code = totp.code_at(other, int(NOW // 30), digits=6, algorithm="SHA1")
    if code != code_for(int(NOW // 30)):  # a collision is possible (1 in a million)
        assert check(code, skew=0) is None


@pytest.mark.parametrize(
    "kwargs",
    [{"digits": 7}, {"algorithm": "MD5"}, {"algorithm": "sha1"}, {"skew": -1}, {"period": 0}],
)
def test_bad_parameters_raise(kwargs: dict[str, object]) -> None:
    """Unsupported settings are programming errors, not wrong codes."""
    args: dict[str, object] = {"last_step": None, "now": NOW, "skew": 1, **SETTINGS, **kwargs}
    with pytest.raises(ValueError):
        totp.verify(SECRET, "123456", **args)  # type: ignore[arg-type]


def test_invalid_secret_raises() -> None:
    """A secret that is not base32 raises ValueError."""
    with pytest.raises(ValueError, match="base32"):
        totp.code_at("not base32!", 1, digits=6, algorithm="SHA1")


# -- secrets, URIs, QR -----------------------------------------------------------


def test_generated_secrets_are_160_bit_base32() -> None:
    """Secrets are 32 base32 characters (160 bits), distinct, and accepted by pyotp."""
    import pyotp

    secrets_ = {totp.generate_secret() for _ in range(50)}
    assert len(secrets_) == 50
    for secret in secrets_:
        assert re.fullmatch(r"[A-Z2-7]{32}", secret)
        assert len(base64.b32decode(secret)) == 20
    secret = secrets_.pop()
    assert pyotp.TOTP(secret).at(NOW) == totp.code_at(secret, int(NOW // 30), digits=6, algorithm="SHA1")


def test_secret_with_spaces_and_lower_case_is_read() -> None:
    """A secret typed in groups of four, lower case, gives the same codes."""
    spaced = " ".join(SECRET[i : i + 4] for i in range(0, 32, 4)).lower()
    assert totp.code_at(spaced, 5, digits=6, algorithm="SHA1") == code_for(5)


def test_provisioning_uri_carries_every_setting() -> None:
    """The URI names issuer and account in the label and carries secret, algorithm, digits and period."""
    uri = totp.provisioning_uri(
        SECRET, account="bob@example.com", issuer="ACME Corp", digits=8, period=60, algorithm="SHA512"
    )
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert unquote(parts.path) == "/ACME Corp:bob@example.com"
    assert parse_qs(parts.query) == {
        "secret": [SECRET],
        "issuer": ["ACME Corp"],
        "algorithm": ["SHA512"],
        "digits": ["8"],
        "period": ["60"],
    }


@pytest.mark.parametrize(("account", "issuer"), [("a:b", "authgate"), ("bob", "auth:gate")])
def test_provisioning_uri_refuses_colons(account: str, issuer: str) -> None:
    """A colon in issuer or account would make the label ambiguous."""
    with pytest.raises(ValueError):
        totp.provisioning_uri(SECRET, account=account, issuer=issuer, digits=6, period=30, algorithm="SHA1")


def test_qr_svg_is_inline_svg() -> None:
    """The QR code is an <svg> element without XML declaration, ready to embed in HTML."""
    uri = totp.provisioning_uri(
        SECRET, account="bob", issuer="authgate", digits=6, period=30, algorithm="SHA1"
    )
    svg = totp.qr_svg(uri)
    assert svg.startswith("<svg")
    assert svg.rstrip().endswith("</svg>")
    assert "<?xml" not in svg
    assert SECRET not in svg  # the image holds the data as modules, not text


def test_sealing_context_names_the_user() -> None:
    """Each user's secrets are sealed under their own context."""
    assert totp.sealing_context(7) == "totp:7"
    assert totp.sealing_context(7) != totp.sealing_context(8)
