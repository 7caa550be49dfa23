"""Recovery codes: single use at the second-factor step, regeneration, warnings, and hashes only at rest."""

from __future__ import annotations

import base64
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.http.helpers import (
    PASSWORD,
    SESSION_COOKIE,
    Clock,
    MakeClient,
    add_user,
    enrol_totp,
    password_step,
    portal_get,
    portal_post,
    recovery_codes_in,
    services,
    signed_in,
    submit_code,
)

Client = TestClient[Any, Any]


async def recover(client: Client, code: str) -> int:
    """Sign in with the password and a recovery code; return the second-factor step's status."""
    response = await submit_code(client, code, pending=await password_step(client), method="recovery")
    return response.status


async def test_each_recovery_code_works_once(client: Client, clock: Clock) -> None:
    """A recovery code completes the second-factor step once and is refused the second time."""
    await add_user(client)
    _, _, codes = await enrol_totp(client, await signed_in(client), clock)
    assert len(codes) == 10

    first = await recover(client, codes[0])
    again = await recover(client, codes[0])
    other = await recover(client, codes[1].replace("-", "").upper())

    assert (first, again, other) == (303, 401, 303)


async def test_regenerating_invalidates_the_old_set(client: Client, clock: Clock) -> None:
    """A new set made in settings (with the password) works, and the old set stops working."""
    user = await add_user(client)
    session, _, old_codes = await enrol_totp(client, await signed_in(client), clock)

    response = await portal_post(client, "/auth/settings/recovery", {"password": PASSWORD}, session=session)

    assert response.status == 200
    new_codes = recovery_codes_in(await response.text())
    assert len(new_codes) == 10
    assert not set(new_codes) & set(old_codes)
    assert await services(client).store.count_unused_recovery_codes(user.id) == 10
    assert await recover(client, old_codes[0]) == 401
    assert await recover(client, new_codes[0]) == 303


async def test_regenerating_needs_the_password(client: Client, clock: Clock) -> None:
    """With a wrong password no new set is made and the old codes keep working."""
    await add_user(client)
    session, _, old_codes = await enrol_totp(client, await signed_in(client), clock)

    response = await portal_post(
        client, "/auth/settings/recovery", {"password": "wrong one"}, session=session
    )

    assert response.status == 401
    assert recovery_codes_in(await response.text()) == []
    assert await recover(client, old_codes[0]) == 303


async def test_settings_show_remaining_codes_and_warn_when_few(make_client: MakeClient, clock: Clock) -> None:
    """Settings show how many codes remain, with a warning once three or fewer are left."""
    client = await make_client({"two_factor": {"recovery_codes": 4}})
    await add_user(client)
    session, _, codes = await enrol_totp(client, await signed_in(client), clock)

    full = await (await portal_get(client, "/auth/settings", session=session)).text()
    used = await submit_code(client, codes[0], pending=await password_step(client), method="recovery")
    low = await (
        await portal_get(client, "/auth/settings", session=used.cookies[SESSION_COOKIE].value)
    ).text()

    assert '<p id="recovery-left">4 unused recovery codes.</p>' in full
    assert "Only a few recovery codes are left" not in full
    assert '<p id="recovery-left">3 unused recovery codes.</p>' in low
    assert "Only a few recovery codes are left" in low


async def test_security_activity_lists_recovery_code_used(client: Client, clock: Clock) -> None:
    """Using a recovery code shows up as "recovery code used" in the user's security activity."""
    await add_user(client)
    _, _, codes = await enrol_totp(client, await signed_in(client), clock)

    used = await submit_code(client, codes[0], pending=await password_step(client), method="recovery")
    page = await (
        await portal_get(client, "/auth/settings", session=used.cookies[SESSION_COOKIE].value)
    ).text()

    events = page.split('id="security-events"', 1)[1].split("</ul>", 1)[0]
    assert "recovery code used" in events
    assert "9 recovery code(s) left" in events


def dump_database(path: Path) -> tuple[dict[str, list[tuple[Any, ...]]], bytes]:
    """Return every row of every table, and the raw bytes of the database and its WAL."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        names = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        tables = {name: db.execute(f'SELECT * FROM "{name}"').fetchall() for name in names}  # noqa: S608
    files = (path, path.with_name(path.name + "-wal"))
    return tables, b"".join(file.read_bytes() for file in files if file.exists())


async def test_database_holds_only_hashes(client: Client, clock: Clock) -> None:
    """No recovery code (with or without dashes) nor TOTP secret appears in any SQLite table."""
    user = await add_user(client)
    session, secret, first_codes = await enrol_totp(client, await signed_in(client), clock)
    regenerated = await portal_post(
        client, "/auth/settings/recovery", {"password": PASSWORD}, session=session
    )
    codes = first_codes + recovery_codes_in(await regenerated.text())
    assert len(codes) == 20
    assert await services(client).store.count_unused_recovery_codes(user.id) == 10

    tables, raw = dump_database(Path(services(client).config.storage.database_path))

    assert len(tables["totp_devices"]) == 1
    assert len(tables["recovery_codes"]) >= 10
    text = repr(tables).lower()
    for code in codes:
        assert code not in text
        assert code.replace("-", "") not in text
        assert code.encode() not in raw
        assert code.replace("-", "").encode() not in raw
    compact = secret.replace(" ", "")
    assert compact.lower() not in text
    assert compact.encode() not in raw
    assert base64.b32decode(compact) not in raw
