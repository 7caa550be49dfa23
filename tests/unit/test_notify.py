"""E-mail notifiers: the file notifier and SMTP against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from gateway.accounts.notify import FileNotifier, NotificationFailed, SmtpNotifier, build_notifier
from gateway.config import FileNotifierConfig, NotifierConfig, SmtpConfig, parse_config

SECRET = "correct horse battery staple"


@dataclass
class Inbox:
    """An aiosmtpd handler that keeps every message it is given."""

    messages: list[email.message.EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd API
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(parsed)  # type: ignore[arg-type]
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


def check_login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"authgate", SECRET.encode())
    # handled=False makes aiosmtpd answer 535 itself (its default, True, answers nothing)
    return AuthResult(success=ok, handled=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield inbox, controller.port
    finally:
        controller.stop()


@pytest.fixture
def smtp_auth_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=check_login,
        # AUTH offered without TLS: aiosmtpd warns only when it is also required.
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield inbox, controller.port
    finally:
        controller.stop()


def smtp_config(port: int, **overrides: Any) -> SmtpConfig:
    settings: dict[str, Any] = {"host": "127.0.0.1", "port": port, "security": "none"}
    return SmtpConfig(**{**settings, "sender": "authgate <auth@example.com>", **overrides})


async def test_file_notifier_writes_a_parsable_private_message(tmp_path: Path) -> None:
    """Each message is one 0600 file that parses back with its headers and body."""
    notifier = FileNotifier(tmp_path / "mail", sender="authgate <auth@example.com>")
    await notifier.send(to="bob@example.com", subject="Recover your account", body="Open https://x/r?t=1\n")
    await notifier.send(to="alice@example.com", subject="Second", body="two")
    files = notifier.messages()
    assert len(files) == 2
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    parsed = [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in files]
    first = next(m for m in parsed if m["To"] == "bob@example.com")
    assert first["From"] == "authgate <auth@example.com>"
    assert first["Subject"] == "Recover your account"
    assert first["Message-ID"] and first["Date"]
    assert first.get_content() == "Open https://x/r?t=1\n"  # type: ignore[attr-defined]


async def test_header_injection_is_refused(tmp_path: Path) -> None:
    """A line break in the recipient or subject is refused, not written."""
    notifier = FileNotifier(tmp_path)
    with pytest.raises(NotificationFailed, match="line break"):
        await notifier.send(to="bob@example.com\r\nBcc: eve@example.com", subject="x", body="y")
    with pytest.raises(NotificationFailed, match="line break"):
        await notifier.send(to="bob@example.com", subject="x\nBcc: eve@example.com", body="y")
    assert notifier.messages() == []


async def test_file_notifier_unwritable_directory(tmp_path: Path) -> None:
    """A folder that cannot be created is NotificationFailed."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(NotificationFailed, match="cannot write"):
        await FileNotifier(blocker / "mail").send(to="bob@example.com", subject="x", body="y")


async def test_smtp_delivers_to_a_real_server(smtp_server: tuple[Inbox, int]) -> None:
    """A plain SMTP server on localhost receives the message with envelope and headers."""
    inbox, port = smtp_server
    await SmtpNotifier(smtp_config(port)).send(to="bob@example.com", subject="Hello", body="Body text")
    assert inbox.envelopes == [("auth@example.com", ["bob@example.com"])]
    (message,) = inbox.messages
    assert message["Subject"] == "Hello"
    assert message.get_content().strip() == "Body text"  # type: ignore[attr-defined]


async def test_smtp_with_auth(smtp_auth_server: tuple[Inbox, int]) -> None:
    """With username and password the notifier logs in before sending."""
    inbox, port = smtp_auth_server
    notifier = SmtpNotifier(smtp_config(port, username="authgate", password=SECRET))
    await notifier.send(to="bob@example.com", subject="Hello", body="Body")
    assert len(inbox.messages) == 1


async def test_smtp_wrong_password_never_shows_it(smtp_auth_server: tuple[Inbox, int]) -> None:
    """A refused login is NotificationFailed naming the user, not the password."""
    inbox, port = smtp_auth_server
    notifier = SmtpNotifier(smtp_config(port, username="authgate", password="hunter2-wrong", timeout=3.0))
    with pytest.raises(NotificationFailed) as caught:
        await notifier.send(to="bob@example.com", subject="Hello", body="Body")
    assert "authgate" in caught.value.reason
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(notifier.cfg)
    assert inbox.messages == []


async def test_starttls_against_a_server_without_it(smtp_server: tuple[Inbox, int]) -> None:
    """STARTTLS to a server that does not offer it fails instead of sending in the clear."""
    inbox, port = smtp_server
    notifier = SmtpNotifier(smtp_config(port, security="starttls"))
    with pytest.raises(NotificationFailed, match="STARTTLS|starttls"):
        await notifier.send(to="bob@example.com", subject="x", body="y")
    assert inbox.messages == []


async def test_connection_refused() -> None:
    """Nothing listening is NotificationFailed saying where."""
    port = free_port()
    with pytest.raises(NotificationFailed, match=f"cannot reach 127.0.0.1:{port}"):
        await SmtpNotifier(smtp_config(port)).send(to="bob@example.com", subject="x", body="y")


def test_build_notifier_picks_the_configured_kind(tmp_path: Path) -> None:
    """type file gives a FileNotifier in the configured folder, smtp an SmtpNotifier."""
    notifier = build_notifier(NotifierConfig(type="file", file=FileNotifierConfig(directory=str(tmp_path))))
    assert isinstance(notifier, FileNotifier) and notifier.directory == tmp_path
    config = parse_config({"notifier": {"type": "smtp", "smtp": {"host": "mail.example.com"}}})
    smtp = build_notifier(config.notifier)
    assert isinstance(smtp, SmtpNotifier) and smtp.cfg.host == "mail.example.com"
