"""Managing second factors: device rename and delete in settings, the admin users page and reset."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from portal.routes import ADMIN_PREFIX, ROUTES
from tests.http.helpers import (
    PASSWORD,
    Clock,
    add_totp_device,
    add_user,
    enrol_totp,
    login,
    portal_get,
    portal_post,
    services,
    signed_in,
)

Client = TestClient[Any, Any]
ADMIN_ROUTES = [
    (method, re.sub(r"\{[^}]+\}", "1", path.replace("{username}", "alice")))
    for method, path, _ in ROUTES
    if path.startswith(ADMIN_PREFIX)
]


async def request_as(client: Client, method: str, path: str, session: str | None) -> Any:
    if method == "GET":
        return await portal_get(client, f"/auth{path}", session=session)
    return await portal_post(client, f"/auth{path}", {}, session=session)


async def test_rename_device(client: Client, clock: Clock) -> None:
    """A device can be renamed from the settings page."""
    user = await add_user(client)
    session, _, _ = await enrol_totp(client, await signed_in(client), clock)
    store = services(client).store
    (device,) = await store.list_totp_devices(user.id)

    response = await portal_post(
        client, f"/auth/settings/totp/{device.id}/rename", {"name": "work phone"}, session=session
    )

    assert response.status == 303
    assert response.headers["Location"] == "/auth/settings?done=renamed"
    assert [d.name for d in await store.list_totp_devices(user.id)] == ["work phone"]
    page = await (await portal_get(client, "/auth/settings?done=renamed", session=session)).text()
    assert "work phone" in page
    assert "Device renamed." in page


async def test_delete_device_needs_the_password(client: Client, clock: Clock) -> None:
    """Deleting a device with a wrong password deletes nothing; with the password it is gone and logged."""
    user = await add_user(client)
    session, _, _ = await enrol_totp(client, await signed_in(client), clock)
    store = services(client).store
    (device,) = await store.list_totp_devices(user.id)
    path = f"/auth/settings/totp/{device.id}/delete"

    refused = await portal_post(client, path, {"password": "not the password"}, session=session)
    assert refused.status == 401
    assert len(await store.list_totp_devices(user.id)) == 1

    deleted = await portal_post(client, path, {"password": PASSWORD}, session=session)

    assert deleted.status == 303
    assert deleted.headers["Location"] == "/auth/settings?done=deleted"
    assert await store.list_totp_devices(user.id) == []
    assert "totp_removed" in [e.event for e in await store.list_security_events(user.id)]


async def test_level_one_session_with_factor_is_sent_to_2fa_before_settings(client: Client) -> None:
    """A level-one session of a user who has a factor must pass /2fa before settings, and changes nothing."""
    user = await add_user(client)
    session = await signed_in(client)
    await add_totp_device(client, user)
    store = services(client).store
    (device,) = await store.list_totp_devices(user.id)

    page = await portal_get(client, "/auth/settings", session=session)
    delete = await portal_post(
        client, f"/auth/settings/totp/{device.id}/delete", {"password": PASSWORD}, session=session
    )
    enrol = await portal_get(client, "/auth/settings/totp/new", session=session)

    expected = "/auth/2fa?rd=http%3A%2F%2Flocalhost%3A8080%2Fauth%2Fsettings"
    assert (page.status, page.headers["Location"]) == (303, expected)
    assert (delete.status, delete.headers["Location"]) == (303, expected)
    assert (enrol.status, enrol.headers["Location"]) == (303, expected)
    assert len(await store.list_totp_devices(user.id)) == 1


async def test_admin_users_page_lists_counts_and_never_secrets(client: Client, clock: Clock) -> None:
    """The admin users page shows each user's device and code counts, but no TOTP secret or recovery code."""
    await add_user(client, "root", groups=("admins",))
    await add_user(client)
    _, secret, codes = await enrol_totp(client, await signed_in(client), clock)

    response = await portal_get(client, "/auth/admin/users", session=await signed_in(client, "root"))

    html = await response.text()
    assert response.status == 200
    assert "alice" in html
    assert "1 app, 10 recovery codes" in html
    assert "0 apps, 0 recovery codes" in html  # root
    lowered = html.lower()
    for value in (secret, secret.replace(" ", "")):
        assert value.lower() not in lowered
    for code in codes:
        assert code not in lowered
        assert code.replace("-", "") not in lowered


async def test_admin_reset_removes_factors_and_logs_event(client: Client, clock: Clock) -> None:
    """An admin's reset removes a user's second factors and writes a security event."""
    await add_user(client, "root", groups=("admins",))
    user = await add_user(client)
    await enrol_totp(client, await signed_in(client), clock)
    store = services(client).store

    response = await portal_post(
        client, "/auth/admin/users/alice/2fa/reset", {}, session=await signed_in(client, "root")
    )

    assert response.status == 303
    assert response.headers["Location"] == "/auth/admin/users?reset=1"
    assert await store.list_totp_devices(user.id) == []
    assert await store.count_unused_recovery_codes(user.id) == 0
    rows = await store.list_audit(event="admin_second_factors_reset", target="alice")
    assert [row.actor for row in rows] == ["root"]
    assert (await login(client)).headers["Location"] == "/auth/"  # no /2fa step any more


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_non_admin_gets_403_on_every_admin_route(
    client: Client, clock: Clock, method: str, path: str
) -> None:
    """A signed-in user outside the admin group gets 403 on every admin route, and nothing changes."""
    user = await add_user(client)
    await add_user(client, "bob")
    await add_totp_device(client, user)

    response = await request_as(client, method, path, await signed_in(client, "bob"))

    assert response.status == 403
    assert len(await services(client).store.list_totp_devices(user.id)) == 1


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_anonymous_admin_route_redirects_to_login(client: Client, method: str, path: str) -> None:
    """Without a session every admin route redirects to the login page."""
    user = await add_user(client)
    await add_totp_device(client, user)

    response = await request_as(client, method, path, None)

    assert response.status in (302, 303)
    assert response.headers["Location"].startswith("/auth/login")
    assert len(await services(client).store.list_totp_devices(user.id)) == 1


async def test_admin_routes_are_listed() -> None:
    """The route table names both admin routes, so the parametrized checks above cover GET and POST."""
    assert {method for method, _ in ADMIN_ROUTES} == {"GET", "POST"}
