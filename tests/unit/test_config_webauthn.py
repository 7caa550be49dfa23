"""Configuration of WebAuthn, the notifier and account recovery: defaults, resolution, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import (
    AccountRecoveryConfig,
    FileNotifierConfig,
    SmtpConfig,
    WebAuthnConfig,
    parse_config,
)
from gateway.errors import ConfigError

COOKIE = {"domain": "example.com", "portal_url": "https://auth.example.com/auth"}
OTHER = {"domain": "example.org", "portal_url": "https://login.example.org:8443/auth"}


def problems_of(data: object, environ: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, environ or {})
    return caught.value.problems


def paths_of(data: object, environ: dict[str, str] | None = None) -> list[str]:
    return [path for path, _ in problems_of(data, environ)]


def with_cookies(*cookies: dict[str, str], **webauthn: object) -> dict[str, object]:
    data: dict[str, object] = {"session": {"cookies": list(cookies)}}
    if webauthn:
        data["webauthn"] = webauthn
    return data


def test_defaults() -> None:
    """Without configuration WebAuthn follows the default portal; mail goes to <data_dir>/mail."""
    config = parse_config({})
    assert config.webauthn == WebAuthnConfig(
        rp_id="localhost",
        rp_name="authgate",
        origins=("http://localhost:8080",),
        user_verification="preferred",
        timeout=60.0,
    )
    assert config.webauthn.available
    assert config.notifier.type == "file"
    assert config.notifier.file == FileNotifierConfig(directory="./data/mail")
    assert config.notifier.smtp == SmtpConfig()
    assert config.account_recovery == AccountRecoveryConfig(link_ttl=900.0)


def test_defaults_follow_other_sections() -> None:
    """rp_id, rp_name, origins and the mail folder come from cookies, portal title and data_dir."""
    config = parse_config(
        {**with_cookies(COOKIE), "portal": {"title": "ACME login"}, "storage": {"data_dir": "/var/lib/ag/"}}
    )
    assert config.webauthn.rp_id == "example.com"
    assert config.webauthn.rp_name == "ACME login"
    assert config.webauthn.origins == ("https://auth.example.com",)
    assert config.webauthn.allows_origin("https://auth.example.com")
    assert config.notifier.file.directory == "/var/lib/ag/mail"


def test_several_cookie_domains_use_the_first_for_passkeys() -> None:
    """With two domains passkeys work on the first domain's portal only; that is not an error."""
    config = parse_config(with_cookies(COOKIE, OTHER))
    assert config.webauthn.rp_id == "example.com"
    assert config.webauthn.origins == ("https://auth.example.com",)
    assert not config.webauthn.allows_origin("https://login.example.org:8443")


def test_explicit_rp_id_picks_the_domain() -> None:
    """Setting rp_id to the second domain gives that portal's origin, with its port."""
    config = parse_config(with_cookies(COOKIE, OTHER, rp_id="Example.org"))
    assert config.webauthn.rp_id == "example.org"
    assert config.webauthn.origins == ("https://login.example.org:8443",)


def test_ip_cookie_domain_leaves_webauthn_unavailable() -> None:
    """A portal on 127.0.0.1 still loads; WebAuthn is simply unavailable there."""
    config = parse_config(
        {
            "session": {
                "cookies": [{"domain": "127.0.0.1", "portal_url": "http://127.0.0.1:9091/auth"}],
                "secure": False,
            }
        }
    )
    assert (config.webauthn.rp_id, config.webauthn.origins) == ("", ())
    assert not config.webauthn.available


def test_full_section() -> None:
    """Every key is read and normalised."""
    config = parse_config(
        with_cookies(
            COOKIE,
            rp_id="example.com",
            rp_name="ACME",
            origins=["https://auth.example.com/", "https://sso.example.com"],
            user_verification="Required",
            timeout="2m",
        )
    )
    assert config.webauthn == WebAuthnConfig(
        rp_id="example.com",
        rp_name="ACME",
        origins=("https://auth.example.com", "https://sso.example.com"),
        user_verification="required",
        timeout=120.0,
    )


def test_environment_overrides() -> None:
    """Each new key has a variable."""
    config = parse_config(
        with_cookies(COOKIE),
        {
            "AUTHGATE_WEBAUTHN_RP_ID": "example.com",
            "AUTHGATE_WEBAUTHN_RP_NAME": "yes",
            "AUTHGATE_WEBAUTHN_ORIGINS": "[https://auth.example.com]",
            "AUTHGATE_WEBAUTHN_USER_VERIFICATION": "discouraged",
            "AUTHGATE_WEBAUTHN_TIMEOUT": "30s",
            "AUTHGATE_NOTIFIER_TYPE": "smtp",
            "AUTHGATE_NOTIFIER_FILE": "{directory: /tmp/mail}",
            "AUTHGATE_NOTIFIER_SMTP": "{host: mail.example.com, port: 465, security: tls}",
            "AUTHGATE_ACCOUNT_RECOVERY_LINK_TTL": "1h",
        },
    )
    assert config.webauthn.rp_name == "yes"
    assert config.webauthn.user_verification == "discouraged"
    assert config.webauthn.timeout == 30.0
    assert config.notifier.type == "smtp"
    assert config.notifier.file.directory == "/tmp/mail"
    assert (config.notifier.smtp.host, config.notifier.smtp.port) == ("mail.example.com", 465)
    assert config.account_recovery.link_ttl == 3600.0


@pytest.mark.parametrize(
    ("webauthn", "path", "fragment"),
    [
        ({"rp_id": "127.0.0.1"}, "webauthn.rp_id", "IP address"),
        ({"rp_id": "example.org"}, "webauthn.rp_id", "fits no session.cookies"),
        ({"rp_id": "auth.example.com/x"}, "webauthn.rp_id", "domain name"),
        ({"origins": ["https://evil.example"]}, "webauthn.origins", "not the RP ID"),
        ({"origins": ["http://auth.example.com"]}, "webauthn.origins", "https"),
        ({"origins": ["https://sso.example.com"]}, "webauthn.origins", "lacks the portal origin"),
        ({"origins": ["https://auth.example.com:443"]}, "webauthn.origins", "as browsers send it"),
        ({"user_verification": "always"}, "webauthn.user_verification", "required"),
        ({"timeout": "0s"}, "webauthn.timeout", "zero"),
        ({"timeout": "1h"}, "webauthn.timeout", "too long"),
        ({"rp_name": ""}, "webauthn.rp_name", "empty"),
    ],
)
def test_webauthn_problems(webauthn: dict[str, object], path: str, fragment: str) -> None:
    """Each bad value is reported at its key path with the reason."""
    found = problems_of(with_cookies(COOKIE, **webauthn))
    assert any(where == path and fragment in message for where, message in found), found


def test_rp_id_subdomain_that_excludes_the_portal() -> None:
    """An rp_id under which the portal does not live is a start-up error naming webauthn.rp_id."""
    assert paths_of(with_cookies(COOKIE, rp_id="sso.example.com")) == ["webauthn.rp_id"]


def test_origins_without_usable_rp_id() -> None:
    """Origins given while no cookie domain can be the RP ID ask for webauthn.rp_id."""
    data = {
        "session": {
            "cookies": [{"domain": "127.0.0.1", "portal_url": "http://127.0.0.1:9091/auth"}],
            "secure": False,
        },
        "webauthn": {"origins": ["http://localhost:9091"]},
    }
    assert "webauthn.rp_id" in paths_of(data)


def test_smtp_section(tmp_path: Path) -> None:
    """SMTP settings are read; the password may come from password_file."""
    secret = tmp_path / "smtp_password"
    secret.write_text("s3cret\n")
    config = parse_config(
        {
            "notifier": {
                "type": "SMTP",
                "smtp": {
                    "host": "Mail.Example.com",
                    "port": 465,
                    "security": "tls",
                    "username": "authgate",
                    "password_file": str(secret),
                    "sender": "ACME <noreply@example.com>",
                    "timeout": "30s",
                    "tls_skip_verify": True,
                },
            }
        }
    )
    smtp = config.notifier.smtp
    assert (smtp.host, smtp.port, smtp.security, smtp.username) == (
        "mail.example.com",
        465,
        "tls",
        "authgate",
    )
    assert smtp.password == "s3cret"
    assert "s3cret" not in repr(config)
    assert (smtp.sender, smtp.timeout, smtp.tls_skip_verify) == ("ACME <noreply@example.com>", 30.0, True)


@pytest.mark.parametrize(
    ("notifier", "path"),
    [
        ({"type": "pigeon"}, "notifier.type"),
        ({"type": "smtp"}, "notifier.smtp.host"),
        (
            {"type": "smtp", "smtp": {"host": "mail.example.com", "security": "none"}},
            "notifier.smtp.security",
        ),
        ({"type": "smtp", "smtp": {"host": "localhost", "username": "a"}}, "notifier.smtp.password"),
        ({"type": "smtp", "smtp": {"host": "localhost", "password": "p"}}, "notifier.smtp.username"),
        ({"smtp": {"port": 0}}, "notifier.smtp.port"),
        ({"smtp": {"security": "ssl"}}, "notifier.smtp.security"),
        ({"smtp": {"sender": "not an address"}}, "notifier.smtp.sender"),
        ({"smtp": {"sender": "a@b.example\r\nBcc: x@y"}}, "notifier.smtp.sender"),
        ({"smtp": {"host": "https://mail.example.com"}}, "notifier.smtp.host"),
        ({"smtp": {"password_file": "/nonexistent/authgate-smtp"}}, "notifier.smtp.password_file"),
        ({"smtp": {"colour": "blue"}}, "notifier.smtp.colour"),
        ({"file": {"directory": ""}}, "notifier.file.directory"),
        ({"smtp": "mail.example.com"}, "notifier.smtp"),
    ],
)
def test_notifier_problems(notifier: dict[str, object], path: str) -> None:
    """Each bad notifier value is reported at its key path."""
    assert path in paths_of({"notifier": notifier})


def test_plain_smtp_to_localhost_is_allowed() -> None:
    """security none is fine for a mail relay on the same machine."""
    config = parse_config({"notifier": {"type": "smtp", "smtp": {"host": "127.0.0.1", "security": "none"}}})
    assert config.notifier.smtp.security == "none"


def test_smtp_password_is_never_echoed() -> None:
    """A bad password value is reported without its content."""
    [(path, message)] = problems_of({"notifier": {"smtp": {"password": ["hunter2"]}}})
    assert path == "notifier.smtp.password" and "hunter2" not in message


def test_password_and_password_file_together(tmp_path: Path) -> None:
    """Giving both the password and a file for it is refused."""
    secret = tmp_path / "p"
    secret.write_text("x")
    data = {"notifier": {"smtp": {"password": "y", "password_file": str(secret)}}}
    assert "notifier.smtp.password_file" in paths_of(data)


@pytest.mark.parametrize(("value", "ok"), [("1m", True), ("24h", True), ("59s", False), ("25h", False)])
def test_link_ttl_bounds(value: str, ok: bool) -> None:
    """Recovery links last between one minute and one day."""
    data = {"account_recovery": {"link_ttl": value}}
    if ok:
        assert parse_config(data).account_recovery.link_ttl > 0
    else:
        assert paths_of(data) == ["account_recovery.link_ttl"]
