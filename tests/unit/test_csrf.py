"""CSRF tokens: bound to the cookie secret, signed with the session keys, expiring."""

from __future__ import annotations

import time
from typing import Any

import itsdangerous.timed
import pytest

from gateway.sessions.codec import SessionCodec
from portal.csrf import CSRF_MAX_AGE, CsrfSigner, generate_csrf_secret, is_csrf_secret

KEY = "k" * 40
OLD_KEY = "o" * 40


def test_token_verifies_for_its_cookie() -> None:
    """A token made for a cookie secret verifies with that secret."""
    signer = CsrfSigner([KEY])
    secret = generate_csrf_secret()

    assert signer.verify(secret, signer.token_for(secret)) is True


def test_token_for_another_cookie_is_refused() -> None:
    """A token issued for one browser's cookie does not verify with another's."""
    signer = CsrfSigner([KEY])

    assert signer.verify(generate_csrf_secret(), signer.token_for(generate_csrf_secret())) is False


@pytest.mark.parametrize(
    ("cookie", "token"),
    [
        pytest.param(None, "x", id="no cookie"),
        pytest.param("", "x", id="empty cookie"),
        pytest.param("valid", None, id="no token"),
        pytest.param("valid", "", id="empty token"),
        pytest.param("valid", "garbage", id="garbage token"),
        pytest.param("valid", "tampered", id="tampered token"),
        pytest.param("\udcc3(", "valid", id="undecodable cookie"),
        pytest.param("é" * 32, "valid", id="non-ascii cookie"),
    ],
)
def test_invalid_inputs_are_refused(cookie: str | None, token: str | None) -> None:
    """Missing, malformed or tampered values are refused without raising."""
    signer = CsrfSigner([KEY])
    secret = generate_csrf_secret()
    good = signer.token_for(secret)
    tampered = good[:-2] + ("AA" if good[-2:] != "AA" else "BB")
    cookie = secret if cookie == "valid" else cookie
    token = {"valid": good, "tampered": tampered}.get(token or "", token)

    assert signer.verify(cookie, token) is False


def test_token_signed_with_an_unknown_key_is_refused() -> None:
    """A token made with a key the portal does not hold is refused."""
    secret = generate_csrf_secret()
    token = CsrfSigner(["x" * 40]).token_for(secret)

    assert CsrfSigner([KEY]).verify(secret, token) is False


def test_token_from_the_previous_key_still_verifies() -> None:
    """During key rotation a token signed with the second key still verifies."""
    secret = generate_csrf_secret()
    token = CsrfSigner([OLD_KEY]).token_for(secret)

    assert CsrfSigner([KEY, OLD_KEY]).verify(secret, token) is True


def test_token_is_salted_apart_from_session_cookies() -> None:
    """A session cookie signed with the same key is not a valid CSRF token."""
    secret = generate_csrf_secret()
    session_cookie = SessionCodec([KEY], max_age=60).sign(secret)

    assert CsrfSigner([KEY]).verify(secret, session_cookie) is False


@pytest.mark.parametrize(("age", "ok"), [(CSRF_MAX_AGE - 60, True), (CSRF_MAX_AGE + 60, False)])
def test_token_expires(monkeypatch: pytest.MonkeyPatch, age: float, ok: bool) -> None:
    """A token older than CSRF_MAX_AGE is refused."""
    signer = CsrfSigner([KEY])
    secret = generate_csrf_secret()
    token = signer.token_for(secret)

    class LaterTime:
        @staticmethod
        def time() -> float:
            return time.time() + age

    later: Any = LaterTime
    monkeypatch.setattr(itsdangerous.timed, "time", later)

    assert signer.verify(secret, token) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (None, False),
        ("", False),
        ("short", False),
        ("a" * 32, True),
        ("a" * 33, False),
        ("a" * 31 + "=", False),
        ("a" * 31 + "\udcff", False),
    ],
)
def test_is_csrf_secret(value: str | None, ok: bool) -> None:
    """Only values shaped like generate_csrf_secret output count as secrets."""
    assert is_csrf_secret(value) is ok


def test_generated_secrets_have_the_expected_shape() -> None:
    """Every generated secret passes is_csrf_secret and they differ."""
    secrets = {generate_csrf_secret() for _ in range(50)}

    assert len(secrets) == 50
    assert all(is_csrf_secret(s) for s in secrets)
