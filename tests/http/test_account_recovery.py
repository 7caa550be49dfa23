"""Account recovery by e-mail, delivered through a real SMTP server (aiosmtpd) started by the test."""

from __future__ import annotations

import asyncio
import email
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.models import Level
from portal.views import recovery
from tests.http.helpers import (
    PASSWORD,
    SESSION_COOKIE,
    Clock,
    MakeClient,
    add_user,
    forward_auth,
    portal_get,
    portal_post,
    registered_session,
    services,
    signed_in,
)
from tests.pg import both_storage_engines  # noqa: F401 - runs this module on SQLite and PostgreSQL
from tests.webauthn_authenticator import SoftAuthenticator

Client = TestClient[Any, Any]
MAIL_WAIT = 5.0  # seconds a message may take to arrive
_LINK = re.compile(r"http://localhost:8080(/auth/recover/[A-Za-z0-9_-]+)")
_TOKENS = re.compile(r'(name="csrf_token" value=|data-csrf=)"[^"]*"')


@dataclass
class Mailbox:
    """What an aiosmtpd server on 127.0.0.1 received."""

    port: int
    messages: list[Message] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        self.recipients.append(list(envelope.rcpt_tos))
        self.messages.append(email.message_from_bytes(bytes(envelope.content or b"")))
        return "250 OK"

    async def wait_for(self, count: int) -> None:
        """Poll (bounded) until `count` messages arrived."""
        deadline = time.monotonic() + MAIL_WAIT
        while len(self.messages) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(self.messages) >= count, f"{len(self.messages)} message(s) after {MAIL_WAIT}s"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[Mailbox]:
    mailbox = Mailbox(_free_port())
    controller = Controller(mailbox, hostname="127.0.0.1", port=mailbox.port)
    controller.start()
    try:
        yield mailbox
    finally:
        controller.stop()


@pytest.fixture
async def client(make_client: MakeClient, smtp: Mailbox) -> Client:
    """A portal whose notifier sends over SMTP to the test's server (security none, to 127.0.0.1)."""
    return await make_client(
        {
            "notifier": {
                "type": "smtp",
                "smtp": {"host": "127.0.0.1", "port": smtp.port, "security": "none"},
            },
            "account_recovery": {"link_ttl": "10m"},
            "regulation": {"max_retries": 10},
        }
    )


async def sent_in_background() -> None:
    """Wait for the mail tasks the request handler started (it answers before sending)."""
    await asyncio.gather(*list(recovery._background))


async def ask_for_link(client: Client, address: str = "alice@example.com") -> str:
    """Submit "Recover your account"; return the page shown."""
    response = await portal_post(client, "/auth/recover", {"email": address})
    text = await response.text()
    assert response.status == 200, text
    assert 'id="recover-sent"' in text
    return text


async def mailed_link(client: Client, smtp: Mailbox, address: str = "alice@example.com") -> str:
    """Ask for a link and return its path, read from the message the SMTP server received."""
    await ask_for_link(client, address)
    await smtp.wait_for(1)
    [message] = smtp.messages
    match = _LINK.search(str(message.get_payload(decode=True), "utf-8"))
    assert match is not None, message.as_string()
    return match.group(1)


async def use_link(client: Client, path: str, **form: str) -> Any:
    return await portal_post(client, path, form)


async def test_link_is_mailed_once_and_works_once(client: Client, smtp: Mailbox) -> None:
    """The mail reaches the SMTP server; its link signs in once (level two) and then answers 410."""
    user = await add_user(client)

    path = await mailed_link(client, smtp)
    first = await use_link(client, path, password=PASSWORD)
    second = await use_link(client, path, password=PASSWORD)

    assert smtp.recipients == [["alice@example.com"]]
    assert "Recover your" in smtp.messages[0]["Subject"]
    assert first.status == 303, await first.text()
    assert first.headers["Location"] == "/auth/settings?done=recovered"
    session = await services(client).sessions.resolve(first.cookies[SESSION_COOKIE].value)
    assert session is not None and session.user_id == user.id and session.level is Level.TWO_FACTOR
    assert second.status == 410
    assert SESSION_COOKIE not in second.cookies
    assert (await portal_get(client, path)).status == 410
    events = [e.event for e in await services(client).store.list_security_events(user.id)]
    assert "account_recovered" in events


async def test_opening_the_link_does_not_use_it(client: Client, smtp: Mailbox) -> None:
    """GETting the link page (as a mail scanner would) twice leaves the link working."""
    await add_user(client)
    path = await mailed_link(client, smtp)

    pages = [await portal_get(client, path) for _ in range(2)]

    assert [p.status for p in pages] == [200, 200]
    assert "Recover alice" in await pages[1].text()
    assert (await use_link(client, path, password=PASSWORD)).status == 303


async def test_link_expires(client: Client, smtp: Mailbox, clock: Clock) -> None:
    """After account_recovery.link_ttl the link page and the form both answer 410."""
    await add_user(client)
    path = await mailed_link(client, smtp)
    clock.advance(services(client).config.account_recovery.link_ttl + 1)

    page = await portal_get(client, path)
    submit = await use_link(client, path, password=PASSWORD)

    assert page.status == 410
    assert submit.status == 410
    assert SESSION_COOKIE not in submit.cookies


async def test_recovery_ends_every_other_session(client: Client, smtp: Mailbox) -> None:
    """Sessions started elsewhere before the recovery stop passing forward-auth; the new one passes."""
    await add_user(client)
    elsewhere = await signed_in(client)
    assert (await forward_auth(client, elsewhere)).status == 200

    done = await use_link(client, await mailed_link(client, smtp), password=PASSWORD)

    assert done.status == 303
    assert (await forward_auth(client, elsewhere)).status == 302
    assert (await forward_auth(client, done.cookies[SESSION_COOKIE].value)).status == 200


async def test_recovery_can_revoke_every_device(client: Client, smtp: Mailbox) -> None:
    """With "revoke_devices" every registered key and passkey of the account is deleted."""
    user = await add_user(client)
    session = await registered_session(client, await signed_in(client), SoftAuthenticator())
    await registered_session(client, session, SoftAuthenticator(transports=("usb",)))
    path = await mailed_link(client, smtp)
    assert "Also revoke all 2 registered" in await (await portal_get(client, path)).text()

    done = await use_link(client, path, password=PASSWORD, revoke_devices="on")

    assert done.status == 303
    assert await services(client).store.list_webauthn_credentials(user.id) == []


async def test_recovery_keeps_devices_unless_asked(client: Client, smtp: Mailbox) -> None:
    """Without "revoke_devices" the registered keys stay."""
    user = await add_user(client)
    await registered_session(client, await signed_in(client), SoftAuthenticator())

    done = await use_link(client, await mailed_link(client, smtp), password=PASSWORD)

    assert done.status == 303
    assert len(await services(client).store.list_webauthn_credentials(user.id)) == 1


async def test_unknown_address_gets_the_same_answer_and_no_mail(client: Client, smtp: Mailbox) -> None:
    """An address no account uses gets the same status and page as a known one, and nothing is sent."""
    await add_user(client)

    unknown = await portal_post(client, "/auth/recover", {"email": "nobody@example.com"})
    unknown_text = await unknown.text()
    await sent_in_background()
    assert smtp.messages == []
    known = await portal_post(client, "/auth/recover", {"email": "alice@example.com"})
    known_text = await known.text()
    await sent_in_background()

    assert unknown.status == known.status == 200
    assert _TOKENS.sub("", unknown_text) == _TOKENS.sub("", known_text)
    assert smtp.recipients == [["alice@example.com"]]


async def test_link_needs_the_password_where_the_account_has_one(client: Client, smtp: Mailbox) -> None:
    """A missing or wrong password does not use the link (401); the right one does."""
    await add_user(client)
    path = await mailed_link(client, smtp)
    assert 'name="password"' in await (await portal_get(client, path)).text()

    missing = await use_link(client, path)
    wrong = await use_link(client, path, password="not it")
    right = await use_link(client, path, password=PASSWORD)

    assert missing.status == 401
    assert wrong.status == 401
    assert SESSION_COOKIE not in missing.cookies and SESSION_COOKIE not in wrong.cookies
    assert right.status == 303


async def test_passkey_only_account_recovers_without_password(client: Client, smtp: Mailbox) -> None:
    """An account with password sign-in off has no password field on the link page and needs none."""
    user = await add_user(client)
    session = await registered_session(client, await signed_in(client), SoftAuthenticator())
    await services(client).store.set_password_login(user.id, False)
    path = await mailed_link(client, smtp)
    assert 'name="password"' not in await (await portal_get(client, path)).text()

    done = await use_link(client, path, revoke_devices="on")

    assert done.status == 303
    assert await services(client).sessions.resolve(session) is None
    assert await services(client).store.list_webauthn_credentials(user.id) == []
