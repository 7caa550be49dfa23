"""Sending e-mail (account recovery links): to files for development and tests, or over SMTP.

`build_notifier(cfg)` picks one from the notifier section; handlers only see the Notifier protocol.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import secrets
import smtplib
import ssl
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from gateway.config import NotifierConfig, SmtpConfig
from gateway.errors import AuthgateError


class NotificationFailed(AuthgateError):
    """A message could not be handed over; .reason says why (never containing a password)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Notifier(Protocol):
    async def send(self, *, to: str, subject: str, body: str) -> None:
        """Deliver one plain-text message to `to`; raise NotificationFailed."""


def build_message(*, sender: str, to: str, subject: str, body: str) -> EmailMessage:
    """Return an RFC 5322 message; refuse header injection through `to` or `subject`."""
    for name, value in (("to", to), ("subject", subject)):
        if "\r" in value or "\n" in value:
            raise NotificationFailed(f"the {name} header contains a line break")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(localtime=False)
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = email.utils.make_msgid(domain=domain)
    message.set_content(body)
    return message


class FileNotifier:
    """Write each message to its own file in `directory` (mode 0600), for `make run` and tests."""

    def __init__(self, directory: str | os.PathLike[str], *, sender: str = "authgate <authgate@localhost>"):
        self.directory = Path(directory)
        self.sender = sender

    async def send(self, *, to: str, subject: str, body: str) -> None:
        """Write the message as <timestamp>-<random>.eml."""
        message = build_message(sender=self.sender, to=to, subject=subject, body=body)
        await asyncio.to_thread(self._write, message.as_bytes())

    def _write(self, data: bytes) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = self.directory / f"{stamp}-{secrets.token_hex(6)}.eml"
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # O_EXCL and 0600 from the start: the message carries a recovery link.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            raise NotificationFailed(f"cannot write {path}: {exc.strerror or exc}") from exc

    def messages(self) -> list[Path]:
        """Return the message files written so far, oldest first (for tests and `make run`)."""
        if not self.directory.exists():
            return []
        return sorted(self.directory.glob("*.eml"))


class SmtpNotifier:
    """Send through an SMTP server (STARTTLS, implicit TLS or, to localhost only, plain)."""

    def __init__(self, cfg: SmtpConfig) -> None:
        if not cfg.host:
            raise ValueError("SmtpNotifier needs a host")
        self.cfg = cfg

    async def send(self, *, to: str, subject: str, body: str) -> None:
        """Deliver the message; raise NotificationFailed with the server's or the network's reason."""
        message = build_message(sender=self.cfg.sender, to=to, subject=subject, body=body)
        # smtplib blocks; a thread keeps the event loop serving other requests meanwhile.
        await asyncio.to_thread(self._deliver, message)

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.cfg.tls_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _deliver(self, message: EmailMessage) -> None:
        cfg = self.cfg
        where = f"{cfg.host}:{cfg.port}"
        try:
            client: smtplib.SMTP
            if cfg.security == "tls":
                client = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=self._context())
            else:
                client = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
            with client:
                if cfg.security == "starttls":
                    client.starttls(context=self._context())
                if cfg.username:
                    client.login(cfg.username, cfg.password)
                refused = client.send_message(message)
        except smtplib.SMTPAuthenticationError as exc:
            raise NotificationFailed(
                f"{where} refused the login of {cfg.username!r} ({exc.smtp_code})"
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise NotificationFailed(f"{where} does not support {_first_line(exc)}") from exc
        except smtplib.SMTPRecipientsRefused as exc:
            raise NotificationFailed(f"{where} refused every recipient") from exc
        except smtplib.SMTPResponseException as exc:
            raise NotificationFailed(f"{where} answered {exc.smtp_code}: {_decode(exc.smtp_error)}") from exc
        except smtplib.SMTPException as exc:
            raise NotificationFailed(f"SMTP error with {where}: {_first_line(exc)}") from exc
        except ssl.SSLError as exc:
            raise NotificationFailed(f"TLS with {where} failed: {exc.reason or exc}") from exc
        except OSError as exc:
            raise NotificationFailed(f"cannot reach {where}: {exc.strerror or exc}") from exc
        if refused:
            raise NotificationFailed(f"{where} refused {', '.join(sorted(refused))}")


def build_notifier(cfg: NotifierConfig) -> Notifier:
    """Return the notifier the configuration names."""
    if cfg.type == "smtp":
        return SmtpNotifier(cfg.smtp)
    return FileNotifier(cfg.file.directory, sender=cfg.smtp.sender)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _decode(value: bytes | str) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return " ".join(text.split())[:200]
