"""Configuration of second factors: two_factor.* and secrets.storage_key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import TotpConfig, TwoFactorConfig, parse_config
from gateway.errors import ConfigError
from gateway.models import Policy

KEY = "0123456789" * 4  # 40 characters, all digits: must stay a string


def problems_of(data: object, environ: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, environ or {})
    return caught.value.problems


def test_defaults() -> None:
    """Without configuration 2FA is optional with standard TOTP settings and a generated storage key."""
    config = parse_config({})
    assert config.two_factor == TwoFactorConfig()
    assert config.two_factor.mode == "optional"
    assert config.two_factor.issuer == "authgate"
    assert config.two_factor.totp == TotpConfig(digits=6, period=30, algorithm="SHA1", skew=1)
    assert config.two_factor.recovery_codes == 10
    assert config.two_factor.pending_ttl == 300.0
    assert config.two_factor.pending_max_attempts == 5
    assert config.secrets.storage_key == ""


def test_full_section() -> None:
    """Every key is read; the algorithm is upper-cased and durations become seconds."""
    config = parse_config(
        {
            "two_factor": {
                "mode": "Required",
                "issuer": "ACME Corp",
                "totp": {"digits": 8, "period": 60, "algorithm": "sha256", "skew": 0},
                "recovery_codes": 16,
                "pending_ttl": "2m",
                "pending_max_attempts": 3,
            },
            "secrets": {"storage_key": KEY},
        }
    )
    assert config.two_factor == TwoFactorConfig(
        mode="required",
        issuer="ACME Corp",
        totp=TotpConfig(digits=8, period=60, algorithm="SHA256", skew=0),
        recovery_codes=16,
        pending_ttl=120.0,
        pending_max_attempts=3,
    )
    assert config.secrets.storage_key == KEY


def test_partial_totp_keeps_other_defaults() -> None:
    """Keys left out of two_factor.totp keep their defaults; null does too."""
    totp = parse_config({"two_factor": {"totp": {"digits": 8, "skew": None}}}).two_factor.totp
    assert totp == TotpConfig(digits=8)


def test_environment_overrides() -> None:
    """Each two_factor key and the storage key have a variable; the key is taken verbatim."""
    config = parse_config(
        {},
        {
            "AUTHGATE_TWO_FACTOR_MODE": "disabled",
            "AUTHGATE_TWO_FACTOR_ISSUER": "yes",
            "AUTHGATE_TWO_FACTOR_TOTP": "{digits: 8, algorithm: SHA512}",
            "AUTHGATE_TWO_FACTOR_RECOVERY_CODES": "12",
            "AUTHGATE_TWO_FACTOR_PENDING_TTL": "90s",
            "AUTHGATE_TWO_FACTOR_PENDING_MAX_ATTEMPTS": "2",
            "AUTHGATE_SECRETS_STORAGE_KEY": KEY,
        },
    )
    assert config.two_factor == TwoFactorConfig(
        mode="disabled",
        issuer="yes",
        totp=TotpConfig(digits=8, algorithm="SHA512"),
        recovery_codes=12,
        pending_ttl=90.0,
        pending_max_attempts=2,
    )
    assert config.secrets.storage_key == KEY


def test_storage_key_from_file(tmp_path: Path) -> None:
    """AUTHGATE_SECRETS_STORAGE_KEY_FILE reads the key, dropping one trailing newline."""
    path = tmp_path / "storage_key"
    path.write_text(KEY + "\n")
    config = parse_config({}, {"AUTHGATE_SECRETS_STORAGE_KEY_FILE": str(path)})
    assert config.secrets.storage_key == KEY


@pytest.mark.parametrize(
    ("section", "value", "path"),
    [
        ("two_factor", {"mode": "sometimes"}, "two_factor.mode"),
        ("two_factor", {"mode": True}, "two_factor.mode"),
        ("two_factor", {"issuer": ""}, "two_factor.issuer"),
        ("two_factor", {"issuer": "acme:corp"}, "two_factor.issuer"),
        ("two_factor", {"issuer": "x" * 65}, "two_factor.issuer"),
        ("two_factor", {"totp": "sha1"}, "two_factor.totp"),
        ("two_factor", {"totp": {"window": 1}}, "two_factor.totp.window"),
        ("two_factor", {"totp": {"digits": 7}}, "two_factor.totp.digits"),
        ("two_factor", {"totp": {"digits": True}}, "two_factor.totp.digits"),
        ("two_factor", {"totp": {"digits": "6"}}, "two_factor.totp.digits"),
        ("two_factor", {"totp": {"digits": 6.0}}, "two_factor.totp.digits"),
        ("two_factor", {"totp": {"period": 14}}, "two_factor.totp.period"),
        ("two_factor", {"totp": {"period": 121}}, "two_factor.totp.period"),
        ("two_factor", {"totp": {"algorithm": "MD5"}}, "two_factor.totp.algorithm"),
        ("two_factor", {"totp": {"skew": -1}}, "two_factor.totp.skew"),
        ("two_factor", {"totp": {"skew": 11}}, "two_factor.totp.skew"),
        ("two_factor", {"recovery_codes": 3}, "two_factor.recovery_codes"),
        ("two_factor", {"recovery_codes": 33}, "two_factor.recovery_codes"),
        ("two_factor", {"pending_ttl": 0}, "two_factor.pending_ttl"),
        ("two_factor", {"pending_ttl": "2h"}, "two_factor.pending_ttl"),
        ("two_factor", {"pending_max_attempts": 0}, "two_factor.pending_max_attempts"),
        ("two_factor", {"pending_max_attempts": 21}, "two_factor.pending_max_attempts"),
        ("two_factor", {"moed": "required"}, "two_factor.moed"),
        ("secrets", {"storage_key": "short"}, "secrets.storage_key"),
        ("secrets", {"storage_key": 12345}, "secrets.storage_key"),
    ],
)
def test_invalid_values_name_their_key(section: str, value: dict[str, object], path: str) -> None:
    """Each invalid value is reported under its full key path."""
    assert path in [where for where, _ in problems_of({section: value})]


def test_every_totp_problem_is_reported_at_once() -> None:
    """Several bad TOTP settings give one problem each."""
    found = problems_of({"two_factor": {"totp": {"digits": 7, "period": 1, "algorithm": "x", "skew": 99}}})
    assert {where for where, _ in found} == {
        "two_factor.totp.digits",
        "two_factor.totp.period",
        "two_factor.totp.algorithm",
        "two_factor.totp.skew",
    }


def test_short_storage_key_is_not_echoed() -> None:
    """The problem message says how long the key is, never what it is."""
    secret = "s3cr3t-but-short"
    [(where, message)] = problems_of({"secrets": {"storage_key": secret}})
    assert where == "secrets.storage_key"
    assert secret not in message
    assert "16 characters" in message


RULE = {"domain": "app.example.com", "policy": "two_factor"}


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_two_factor_rules_allowed_when_enabled(mode: str) -> None:
    """two_factor rules and default policy are fine in optional and required modes."""
    config = parse_config(
        {
            "two_factor": {"mode": mode},
            "access_control": {"default_policy": "two_factor", "rules": [RULE]},
        }
    )
    assert config.access_control.rules[0].policy is Policy.TWO_FACTOR


def test_two_factor_rules_refused_when_disabled() -> None:
    """With mode disabled a two_factor rule or default policy could never be met, so it is an error."""
    found = problems_of(
        {
            "two_factor": {"mode": "disabled"},
            "access_control": {
                "default_policy": "two_factor",
                "rules": [{"domain": "a.example.com", "policy": "one_factor"}, RULE],
            },
        }
    )
    assert {where for where, _ in found} == {
        "access_control.default_policy",
        "access_control.rules[1].policy",
    }
    assert all("disabled" in message for _, message in found)


def test_disabled_mode_with_one_factor_rules_is_fine() -> None:
    """Disabling 2FA with ordinary rules is a valid configuration."""
    config = parse_config(
        {"two_factor": {"mode": "disabled"}, "access_control": {"rules": [{"policy": "one_factor"}]}}
    )
    assert config.two_factor.mode == "disabled"
