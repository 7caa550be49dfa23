"""The admin console: access control from the route table, one audit row per action, re-authentication,
password reset links, search, no secrets on any page, hostile input."""

from __future__ import annotations

import email
import io
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient

from gateway.accounts import audit
from gateway.factors import app_passwords
from gateway.factors.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from gateway.models import AuditEvent, Level, User
from portal.routes import ADMIN_PREFIX, ROUTES
from portal.views import recovery
from tests.http.helpers import (
    CSRF_COOKIE,
    PASSWORD,
    SESSION_COOKIE,
    Clock,
    MakeClient,
    add_totp_device,
    add_user,
    csrf_pair,
    enrol_totp,
    forward_auth,
    login,
    portal_get,
    portal_post,
    services,
    signed_in,
    with_cookies,
)

Client = TestClient[Any, Any]
REAUTH_AFTER = 120.0
NEW_PASSWORD = "a brand new passphrase"
_LINK = re.compile(r"http://localhost:8080(/auth/reset/[A-Za-z0-9_-]+)")
_PARAM = re.compile(r"\{([^}]+)\}")

ADMIN_ROUTES = [(method, path) for method, path, _ in ROUTES if path.startswith(ADMIN_PREFIX)]


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client({"admin": {"reauth_after": "2m"}, "account_recovery": {"link_ttl": "10m"}})


async def admin_session(client: Client, username: str = "root") -> str:
    await add_user(client, username, groups=("admins", "dev"))
    return await signed_in(client, username)


async def audit_rows(client: Client) -> list[AuditEvent]:
    return await services(client).store.list_audit(limit=10_000)


async def add_token(client: Client, user: User, name: str = "thunderbird") -> str:
    """Store a real app password for `user`; return the token (shown once to its owner)."""
    svc = services(client)
    token = app_passwords.generate_token()
    token_id = app_passwords.token_id_of(token)
    assert token_id is not None
    await svc.store.create_app_password(
        user.id,
        token_id=token_id,
        token_hash=app_passwords.hash_token(token, pepper=svc.app_passwords.pepper),
        name=name,
        domains=("cal.localhost",),
        level=Level.TWO_FACTOR,
        created_at=svc.clock(),
        expires_at=None,
    )
    return token


def mailed_links(client: Client) -> list[str]:
    """Return the reset link paths in the messages the file notifier wrote, oldest first."""
    links = []
    for path in services(client).notifier.messages():  # type: ignore[attr-defined]
        message = email.message_from_bytes(path.read_bytes())
        match = _LINK.search(str(message.get_payload(decode=True), "utf-8"))
        assert match is not None, message.as_string()
        links.append(match.group(1))
    return links


def concrete(path: str, username: str = "alice") -> str:
    """Fill a route's parameters: {username} with a real user, anything else with a plausible id."""
    return _PARAM.sub(lambda m: username if m.group(1) == "username" else "1", path)


# -- access control ---------------------------------------------------------------


async def test_every_admin_route_is_covered() -> None:
    """The route table lists the console's GET pages and POST actions under ADMIN_PREFIX."""
    paths = {path for _, path in ADMIN_ROUTES}
    assert {"/admin/users", "/admin/users/new", "/admin/users/{username}", "/admin/audit"} <= paths
    assert {method for method, _ in ADMIN_ROUTES} == {"GET", "POST"}
    assert len(ADMIN_ROUTES) >= 15


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_non_admin_gets_403_on_every_admin_route(
    client: Client, clock: Clock, method: str, path: str
) -> None:
    """A signed-in non-admin gets 403 on every admin URL and method, even with a stale factor check."""
    alice = await add_user(client)
    await add_user(client, "bob")
    session = await signed_in(client, "bob")
    before = len(await audit_rows(client))
    clock.advance(REAUTH_AFTER + 10)  # stale: must still be 403, never a trip to /reauth

    url = f"/auth{concrete(path)}"
    form = {"confirm": "alice", "username": "mallory", "email": "m@example.com", "setup": "password"}
    response = await (
        portal_get(client, url, session=session)
        if method == "GET"
        else portal_post(client, url, form, session=session)
    )

    assert response.status == 403, (response.status, response.headers.get("Location"))
    assert len(await audit_rows(client)) == before
    assert await services(client).store.get_user(alice.id) == alice


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_anonymous_is_sent_to_login(client: Client, method: str, path: str) -> None:
    """Without a session every admin URL redirects to the login page."""
    await add_user(client)
    url = f"/auth{concrete(path)}"

    response = await (portal_get(client, url) if method == "GET" else portal_post(client, url, {}))

    assert response.status in (302, 303)
    assert response.headers["Location"].startswith("/auth/login")


async def test_admin_sees_the_console_pages(client: Client) -> None:
    """An admin gets 200 on the list, a user's page, the create form and the audit log."""
    session = await admin_session(client)
    await add_user(client)
    for path in (
        "/auth/admin/users",
        "/auth/admin/users/alice",
        "/auth/admin/users/new",
        "/auth/admin/audit",
    ):
        response = await portal_get(client, path, session=session)
        assert response.status == 200, (path, await response.text())
        assert response.headers["Cache-Control"] == "no-store"


# -- one audit row per action --------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    name: str
    event: str
    prepare: Callable[[Client, User], Awaitable[tuple[str, dict[str, str]]]]
    target: str = "alice"


async def _create(client: Client, alice: User) -> tuple[str, dict[str, str]]:
    form = {"username": "carol", "email": "carol@example.com", "display_name": "Carol", "groups": "dev"}
    return "/admin/users/new", {**form, "setup": "password", "password": PASSWORD}


async def _modify(client: Client, alice: User) -> tuple[str, dict[str, str]]:
    return "/admin/users/alice", {
        "email": "alice@new.example",
        "display_name": "Alice A.",
        "groups": "dev, ops",
    }


def _post(suffix: str, **form: str) -> Callable[[Client, User], Awaitable[tuple[str, dict[str, str]]]]:
    async def prepare(client: Client, alice: User) -> tuple[str, dict[str, str]]:
        return f"/admin/users/alice{suffix}", dict(form)

    return prepare


async def _enable(client: Client, alice: User) -> tuple[str, dict[str, str]]:
    await services(client).store.set_disabled(alice.id, True)
    return "/admin/users/alice/enable", {}


async def _reset_factors(client: Client, alice: User) -> tuple[str, dict[str, str]]:
    await add_totp_device(client, alice)
    return "/admin/users/alice/2fa/reset", {}


async def _revoke_session(client: Client, alice: User) -> tuple[str, dict[str, str]]:
    await signed_in(client)
    (record,) = await services(client).store.list_user_sessions(alice.id)
    return f"/admin/users/alice/sessions/{record.id_hash[:16]}/revoke", {}


async def _revoke_sessions(client: Client, alice: User) -> tuple[str, dict[str, str]]:
    await signed_in(client)
    await signed_in(client)
    return "/admin/users/alice/sessions/revoke-all", {}


async def _revoke_token(client: Client, alice: User) -> tuple[str, dict[str, str]]:
    await add_token(client, alice)
    (token,) = await services(client).store.list_app_passwords(alice.id)
    return f"/admin/users/alice/tokens/{token.id}/revoke", {}


async def _revoke_tokens(client: Client, alice: User) -> tuple[str, dict[str, str]]:
    await add_token(client, alice, "git")
    await add_token(client, alice, "caldav")
    return "/admin/users/alice/tokens/revoke-all", {}


async def _remove_external_link(client: Client, alice: User) -> tuple[str, dict[str, str]]:
    link = await services(client).store.add_external_link(
        alice.id, "google", "g-1", email="a@gmail.com", at=0
    )
    return f"/admin/users/alice/external/{link.id}/remove", {}


ACTIONS = [
    Action("create", audit.ADMIN_USER_CREATED, _create, target="carol"),
    Action("modify", audit.ADMIN_USER_MODIFIED, _modify),
    Action("disable", audit.ADMIN_USER_DISABLED, _post("/disable")),
    Action("enable", audit.ADMIN_USER_ENABLED, _enable),
    Action("delete", audit.ADMIN_USER_DELETED, _post("/delete", confirm="alice")),
    Action("reset 2FA", audit.ADMIN_SECOND_FACTORS_RESET, _reset_factors),
    Action("send reset link", audit.ADMIN_PASSWORD_RESET_SENT, _post("/password-reset")),
    Action("revoke session", audit.ADMIN_SESSION_REVOKED, _revoke_session),
    Action("revoke all sessions", audit.ADMIN_SESSIONS_REVOKED, _revoke_sessions),
    Action("revoke token", audit.ADMIN_TOKEN_REVOKED, _revoke_token),
    Action("revoke all tokens", audit.ADMIN_TOKENS_REVOKED, _revoke_tokens),
    Action("remove a linked provider", audit.ADMIN_EXTERNAL_UNLINKED, _remove_external_link),
]


@pytest.mark.parametrize("action", ACTIONS, ids=[a.name for a in ACTIONS])
async def test_each_admin_action_writes_one_audit_row(client: Client, action: Action) -> None:
    """Each admin action succeeds and writes exactly one audit row: its event, the admin, the user, the IP."""
    session = await admin_session(client)
    alice = await add_user(client)
    path, form = await action.prepare(client, alice)
    before = {row.id for row in await audit_rows(client)}

    response = await portal_post(client, f"/auth{path}", form, session=session)

    assert response.status == 303, await response.text()
    assert "/reauth" not in response.headers["Location"]
    new = [row for row in await audit_rows(client) if row.id not in before]
    assert [(r.event, r.actor, r.target, r.ip) for r in new] == [
        (action.event, "root", action.target, "127.0.0.1")
    ]


async def test_actions_take_effect(client: Client) -> None:
    """Disable ends sessions at forward-auth; revoke-all ends tokens; delete needs the typed name."""
    session = await admin_session(client)
    alice = await add_user(client)
    alice_session = await signed_in(client)
    await add_token(client, alice)
    store = services(client).store
    assert (await forward_auth(client, alice_session)).status == 200

    await portal_post(client, "/auth/admin/users/alice/disable", {}, session=session)
    assert (await forward_auth(client, alice_session)).status != 200
    assert (await store.get_user(alice.id)).disabled  # type: ignore[union-attr]
    assert SESSION_COOKIE not in (await login(client)).cookies

    await portal_post(client, "/auth/admin/users/alice/tokens/revoke-all", {}, session=session)
    assert await store.list_app_passwords(alice.id) == []

    refused = await portal_post(
        client, "/auth/admin/users/alice/delete", {"confirm": "alic"}, session=session
    )
    assert refused.status == 400
    assert 'id="confirm-error"' in await refused.text()
    await portal_post(client, "/auth/admin/users/alice/delete", {"confirm": "alice"}, session=session)
    assert await store.get_user(alice.id) is None


async def test_modify_changes_fields(client: Client) -> None:
    """Editing a user stores the new e-mail, display name and groups."""
    session = await admin_session(client)
    alice = await add_user(client)

    response = await portal_post(
        client,
        "/auth/admin/users/alice",
        {"email": "a@new.example", "display_name": "Alice Liddell", "groups": "dev, ops, dev"},
        session=session,
    )

    assert response.headers["Location"] == "/auth/admin/users/alice?done=saved"
    user = await services(client).store.get_user(alice.id)
    assert user is not None
    assert (user.email, user.display_name, user.groups) == ("a@new.example", "Alice Liddell", ("dev", "ops"))


async def test_unchanged_edit_writes_no_row(client: Client) -> None:
    """Saving the form without changes changes nothing and writes no audit row."""
    session = await admin_session(client)
    await add_user(client, name="Alice")
    before = len(await audit_rows(client))

    response = await portal_post(
        client,
        "/auth/admin/users/alice",
        {"email": "alice@example.com", "display_name": "Alice", "groups": "dev"},
        session=session,
    )

    assert response.headers["Location"].endswith("done=unchanged")
    assert len(await audit_rows(client)) == before


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"username": "Bad Name!"}, "username"),
        ({"username": "new"}, "username"),
        ({"username": "alice"}, "username"),  # taken
        ({"email": "not-an-address"}, "email"),
        ({"email": "alice@example.com"}, "email"),  # taken
        ({"groups": "dev, bad group"}, "groups"),
        ({"password": "short"}, "password"),
        ({"setup": "carrier-pigeon"}, "setup"),
        ({"display_name": "x\x01y"}, "display_name"),
    ],
)
async def test_create_validation_names_the_field(client: Client, form: dict[str, str], field: str) -> None:
    """An invalid create form is answered 4xx, marks the field invalid and creates nobody."""
    session = await admin_session(client)
    await add_user(client)
    before = len(await services(client).store.list_users())
    good = {
        "username": "carol",
        "email": "carol@example.com",
        "groups": "dev",
        "setup": "password",
        "password": PASSWORD,
    }

    response = await portal_post(client, "/auth/admin/users/new", {**good, **form}, session=session)

    text = await response.text()
    assert response.status in (400, 409), text
    assert f'id="{field}-error"' in text or f'id="{field}" aria-invalid="true"' in text
    assert PASSWORD not in text
    assert len(await services(client).store.list_users()) == before


async def test_admin_cannot_lock_themselves_out(client: Client) -> None:
    """An admin cannot disable or delete their own account, nor drop their own admin group."""
    session = await admin_session(client)
    store = services(client).store

    disable = await portal_post(client, "/auth/admin/users/root/disable", {}, session=session)
    delete = await portal_post(client, "/auth/admin/users/root/delete", {"confirm": "root"}, session=session)
    demote = await portal_post(
        client,
        "/auth/admin/users/root",
        {"email": "root@example.com", "display_name": "Root", "groups": "dev"},
        session=session,
    )

    assert (disable.status, delete.status, demote.status) == (400, 400, 400)
    root = await store.get_user_by_name("root")
    assert root is not None and not root.disabled and "admins" in root.groups


# -- re-authentication -------------------------------------------------------------------------


async def test_stale_admin_is_sent_to_reauth_then_the_action_works(client: Client, clock: Clock) -> None:
    """After admin.reauth_after a POST goes to /reauth (nothing done, no row); after re-auth it works."""
    session = await admin_session(client)
    alice = await add_user(client)
    clock.advance(REAUTH_AFTER + 1)
    before = len(await audit_rows(client))

    page = await portal_get(client, "/auth/admin/users/alice", session=session)
    stale = await portal_post(client, "/auth/admin/users/alice/disable", {}, session=session)

    assert page.status == 200  # reading needs no fresh factor check
    assert stale.status == 303
    location = stale.headers["Location"]
    assert location.startswith("/auth/reauth?rd=")
    assert "admin%2Fusers%2Falice" in location
    assert not (await services(client).store.get_user(alice.id)).disabled  # type: ignore[union-attr]
    assert len(await audit_rows(client)) == before

    rd = "http://localhost:8080/auth/admin/users/alice"
    again = await portal_post(client, "/auth/reauth", {"password": PASSWORD, "rd": rd}, session=session)
    assert (again.status, again.headers["Location"]) == (303, rd)

    done = await portal_post(client, "/auth/admin/users/alice/disable", {}, session=session)
    assert done.headers["Location"] == "/auth/admin/users/alice?done=disabled"
    assert (await services(client).store.get_user(alice.id)).disabled  # type: ignore[union-attr]


async def test_csrf_is_checked_on_admin_actions(client: Client) -> None:
    """An admin POST without the CSRF token is refused and changes nothing."""
    session = await admin_session(client)
    alice = await add_user(client)
    secret, _token = await csrf_pair(client)

    response = await client.post(
        "/auth/admin/users/alice/disable",
        data={"csrf_token": "forged"},
        headers=with_cookies(session, **{CSRF_COOKIE: secret}),
        allow_redirects=False,
    )

    assert response.status == 403
    assert not (await services(client).store.get_user(alice.id)).disabled  # type: ignore[union-attr]


# -- password reset links ----------------------------------------------------------------------


async def send_link(client: Client, session: str) -> str:
    response = await portal_post(client, "/auth/admin/users/alice/password-reset", {}, session=session)
    assert response.headers["Location"] == "/auth/admin/users/alice?done=reset_sent"
    return mailed_links(client)[-1]


async def test_reset_link_works_once_and_ends_sessions(client: Client) -> None:
    """Opening the link uses nothing; setting a password ends every session and works once only."""
    admin = await admin_session(client)
    await add_user(client)
    alice_session = await signed_in(client)
    path = await send_link(client, admin)

    assert (await portal_get(client, path)).status == 200
    assert (await portal_get(client, path)).status == 200  # a mail scanner opening it used nothing up
    first = await portal_post(client, path, {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    second = await portal_post(
        client, path, {"password": "yet another passphrase", "confirm": "yet another passphrase"}
    )

    assert first.status == 200, await first.text()
    assert "Password changed" in await first.text()
    assert second.status == 410
    assert (await portal_get(client, path)).status == 410
    assert (await forward_auth(client, alice_session)).status != 200
    assert SESSION_COOKIE not in (await login(client, password=PASSWORD)).cookies
    assert (await login(client, password=NEW_PASSWORD)).status == 303
    changed = await services(client).store.list_audit(event=audit.PASSWORD_CHANGED)
    assert [(r.actor, r.target) for r in changed] == [("alice", "alice")]


async def test_reset_link_checks_the_new_password(client: Client) -> None:
    """A too-short or mismatched password is refused and the link stays usable."""
    admin = await admin_session(client)
    await add_user(client)
    path = await send_link(client, admin)

    short = await portal_post(client, path, {"password": "short", "confirm": "short"})
    differ = await portal_post(client, path, {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD + "x"})

    assert (short.status, differ.status) == (400, 400)
    assert (await portal_get(client, path)).status == 200


async def test_password_forms_state_the_rules_before_the_field(client: Client) -> None:
    """The reset page and the new-user form write the password rules above the password field."""
    admin = await admin_session(client)
    await add_user(client)
    path = await send_link(client, admin)
    rules = f"At least {MIN_PASSWORD_LENGTH} and at most {MAX_PASSWORD_LENGTH} characters, not only spaces."

    for page in (path, "/auth/admin/users/new"):
        html = await (await portal_get(client, page, session=admin)).text()
        assert rules in html, page
        assert html.index(rules) < html.index('<input id="password"'), page


async def test_reset_link_expires(client: Client, clock: Clock) -> None:
    """After account_recovery.link_ttl the link answers 410, on GET and POST."""
    admin = await admin_session(client)
    await add_user(client)
    path = await send_link(client, admin)

    clock.advance(600 + 1)

    assert (await portal_get(client, path)).status == 410
    assert (
        await portal_post(client, path, {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    ).status == 410
    assert SESSION_COOKIE not in (await login(client, password=NEW_PASSWORD)).cookies


async def test_reset_and_recovery_tokens_do_not_cross(client: Client) -> None:
    """A reset token does not work on /recover/, and a recovery token does not work on /reset/."""
    admin = await admin_session(client)
    alice = await add_user(client)
    reset_token = (await send_link(client, admin)).rsplit("/", 1)[1]
    recovery_token = "r" * 43
    now = services(client).clock()
    await services(client).store.create_recovery_token(
        recovery._token_key(recovery_token), alice.id, created_at=now, expires_at=now + 600
    )

    assert (await portal_get(client, f"/auth/recover/{reset_token}")).status == 410
    assert (await portal_post(client, f"/auth/recover/{reset_token}", {"password": PASSWORD})).status == 410
    assert (await portal_get(client, f"/auth/reset/{recovery_token}")).status == 410
    crossed = await portal_post(
        client, f"/auth/reset/{recovery_token}", {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD}
    )
    assert crossed.status == 410
    assert (await portal_get(client, f"/auth/reset/{reset_token}")).status == 200


async def test_create_with_a_set_password_link(client: Client) -> None:
    """A user created with "e-mail a link" has no password until they use the mailed link."""
    session = await admin_session(client)
    form = {"username": "carol", "email": "carol@example.com", "groups": "", "setup": "link"}

    response = await portal_post(client, "/auth/admin/users/new", form, session=session)

    assert response.headers["Location"] == "/auth/admin/users/carol?done=created"
    assert SESSION_COOKIE not in (await login(client, "carol", "")).cookies
    [path] = mailed_links(client)
    assert (
        await portal_post(client, path, {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    ).status == 200
    assert (await login(client, "carol", NEW_PASSWORD)).status == 303


# -- search, audit page ------------------------------------------------------------------------


async def test_search_finds_by_name_email_and_display_name(client: Client) -> None:
    """?q= matches usernames, e-mails and display names, case-insensitively; % is not a wildcard."""
    session = await admin_session(client)
    await add_user(client, "alice", name="Alice Liddell")
    await add_user(client, "bob", email="bob@builders.example")
    await add_user(client, "carol", name="Carol Zebra")

    async def found(query: str) -> set[str]:
        response = await client.get(
            "/auth/admin/users", params={"q": query}, headers=with_cookies(session), allow_redirects=False
        )
        assert response.status == 200
        return set(re.findall(r'href="/auth/admin/users/([a-z0-9._-]+)"', await response.text())) - {"new"}

    assert await found("ALI") == {"alice"}
    assert await found("builders") == {"bob"}
    assert await found("zebra") == {"carol"}
    assert await found("%") == set()
    assert await found("") == {"root", "alice", "bob", "carol"}


async def test_audit_page_filters_and_pages(client: Client, clock: Clock) -> None:
    """The audit log filters by actor, target, event and day, newest first, 50 a page."""
    session = await admin_session(client)
    store = services(client).store
    for i in range(60):
        await store.add_audit(at=clock() + i, event="login_failed", actor="eve", target="bob", ip="10.0.0.9")
    await store.add_audit(at=clock() + 100, event="logout", actor="zed", target="zed", ip=None)

    async def page(**params: str) -> str:
        response = await client.get("/auth/admin/audit", params=params, headers=with_cookies(session))
        assert response.status == 200, await response.text()
        return await response.text()

    first = await page(actor="eve")
    second = await page(actor="eve", page="2")
    assert first.count("login failed") == 50 and 'rel="next"' in first
    assert second.count("login failed") == 10 and 'rel="next"' not in second
    assert "zed" not in first
    assert "zed" in await page(event="logout")
    assert "login failed" not in await page(target="nobody")
    assert "login failed" not in await page(since="2999-01-01")
    assert "login failed" in await page(until="2999-01-01", actor="eve")


# -- no secrets ------------------------------------------------------------------------------------


async def test_no_secret_on_any_admin_page(client: Client, clock: Clock) -> None:
    """Admin pages show no TOTP secret, recovery code, app password, token id or hash, or session id."""
    session = await admin_session(client)
    alice = await add_user(client)
    alice_session, secret, codes = await enrol_totp(client, await signed_in(client), clock)
    token = await add_token(client, alice)
    _record, _user, token_hash = await services(client).store.find_app_password(
        app_passwords.token_id_of(token) or ""
    )  # type: ignore[misc]
    await portal_post(client, "/auth/admin/users/alice/password-reset", {}, session=session)
    reset_token = mailed_links(client)[-1].rsplit("/", 1)[1]
    assert codes and secret

    secrets_ = [
        secret,
        secret.replace(" ", ""),
        token,
        app_passwords.token_id_of(token) or "",
        token_hash,
        reset_token,
        alice_session,
        alice_session.split(".")[0],
        *codes,
        *(code.replace("-", "") for code in codes),
    ]
    for path in (
        "/auth/admin/users",
        "/auth/admin/users/alice",
        "/auth/admin/audit",
        "/auth/admin/users?q=alice",
    ):
        response = await portal_get(client, path, session=session)
        html = (await response.text()).lower()
        assert response.status == 200
        assert "thunderbird" in html or path != "/auth/admin/users/alice"
        for value in secrets_:
            assert value.lower() not in html, (path, value)


# -- hostile input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "username",
    [
        "ALICE",
        "..",
        "%2e%2e",
        "al%00ice",
        "a" * 5000,
        "al ice",
        "%C3%A9lise",
        "alice%0d%0aX-Evil:1",
        "-alice",
    ],
)
async def test_bad_usernames_in_the_url_are_404(client: Client, username: str) -> None:
    """Odd names in the URL get 404 (or 400), never 500, on GET and POST."""
    session = await admin_session(client)
    await add_user(client)

    get = await portal_get(client, f"/auth/admin/users/{username}", session=session)
    post = await portal_post(client, f"/auth/admin/users/{username}/disable", {}, session=session)

    assert 400 <= get.status < 500 and 400 <= post.status < 500, (get.status, post.status)


@pytest.mark.parametrize(
    "path",
    [
        "/auth/admin/users/alice/sessions/zz/revoke",
        "/auth/admin/users/alice/sessions/0123456789abcdef/revoke",
        "/auth/admin/users/alice/tokens/-1/revoke",
        "/auth/admin/users/alice/tokens/0/revoke",
        "/auth/admin/users/alice/tokens/99999999999999999999999999/revoke",
        "/auth/admin/users/alice/tokens/1e3/revoke",
    ],
)
async def test_bad_ids_in_the_url_are_4xx(client: Client, path: str) -> None:
    """Unknown or malformed session and token ids are answered 4xx and write no audit row."""
    session = await admin_session(client)
    await add_user(client)
    before = len(await audit_rows(client))

    response = await portal_post(client, path, {}, session=session)

    assert 400 <= response.status < 500
    assert len(await audit_rows(client)) == before


async def test_huge_and_wrongly_typed_fields_are_4xx(client: Client) -> None:
    """Oversized fields, file uploads instead of text, and oversized bodies get 4xx, never 500."""
    session = await admin_session(client)
    await add_user(client)
    secret, token = await csrf_pair(client)
    headers = with_cookies(session, **{CSRF_COOKIE: secret})

    huge = await portal_post(
        client,
        "/auth/admin/users/new",
        {"username": "a" * 5000, "email": "b" * 5000, "groups": "g," * 2000, "setup": "password"},
        session=session,
    )
    upload = FormData()
    upload.add_field("csrf_token", token)
    upload.add_field("email", b"x@example.com", filename="email.txt")
    upload.add_field("display_name", b"Alice", filename="name.txt")
    upload.add_field("groups", b"dev", filename="groups.txt")
    typed = await client.post("/auth/admin/users/alice", data=upload, headers=headers, allow_redirects=False)
    body = await client.post(
        "/auth/admin/users/alice",
        data=io.BytesIO(f"csrf_token={token}&email={'x' * 3_000_000}".encode()),
        headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
        allow_redirects=False,
    )

    assert huge.status == 400
    assert typed.status == 400
    assert 400 <= body.status < 500


@pytest.mark.parametrize(
    "query",
    [
        {"since": "yesterday"},
        {"until": "2025-13-45"},
        {"page": "-1"},
        {"page": "abc"},
        {"page": "9" * 50},
        {"since": "20250101"},
    ],
)
async def test_bad_audit_filters_are_400(client: Client, query: dict[str, str]) -> None:
    """Malformed audit filters get 400 with a message, never 500."""
    session = await admin_session(client)

    response = await client.get("/auth/admin/audit", params=query, headers=with_cookies(session))

    assert response.status == 400
    assert 'id="error"' in await response.text()


async def test_huge_search_is_fine(client: Client) -> None:
    """A very long search query is cut, not an error."""
    session = await admin_session(client)

    response = await client.get(
        "/auth/admin/users", params={"q": "x" * 50_000}, headers=with_cookies(session)
    )

    assert response.status in (200, 400, 414)
