"""The portal in the reader's language: Accept-Language, the picker's cookie, English fallback."""

from __future__ import annotations

import asyncio
import email
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.http.helpers import (
    CSRF_COOKIE,
    PASSWORD,
    add_user,
    cookie_header,
    csrf_pair,
    services,
    signed_in,
    with_cookies,
)

Client = TestClient[Any, Any]
LANGUAGE_COOKIE = "authgate_lang"
_LANG = re.compile(r'<html lang="([a-z]+)"')


def lang_of(html: str) -> str:
    match = _LANG.search(html)
    assert match is not None, html[:200]
    return match.group(1)


async def get_page(client: Client, path: str = "/auth/login", **headers: str) -> tuple[int, str, Any]:
    response = await client.get(path, headers=headers, allow_redirects=False)
    return response.status, await response.text(), response


async def choose(client: Client, language: str, next_path: str = "/auth/login", **extra: str) -> Any:
    """Submit the language picker as a browser would (CSRF cookie and token)."""
    secret, token = await csrf_pair(client, "/auth/recover")
    return await client.post(
        "/auth/language",
        data={"csrf_token": token, "language": language, "next": next_path},
        headers={**cookie_header(**{CSRF_COOKIE: secret}), **extra},
        allow_redirects=False,
    )


@pytest.mark.parametrize(
    ("header", "language", "heading"),
    [
        pytest.param("de-DE,de;q=0.9,en;q=0.8", "de", "Anmelden", id="german"),
        pytest.param("fr-FR,fr;q=0.9", "fr", "Se connecter", id="french"),
        pytest.param("es-ES,es;q=0.9", "es", "Iniciar sesión", id="spanish"),
        pytest.param("it, de;q=0.5", "de", "Anmelden", id="first offered language"),
        pytest.param("en-GB", "en", "Sign in", id="english"),
    ],
)
async def test_accept_language_picks_the_page_language(
    client: Client, header: str, language: str, heading: str
) -> None:
    """Accept-Language gives the login page in that language, with <html lang> and Content-Language."""
    await add_user(client)
    status, html, response = await get_page(client, **{"Accept-Language": header})
    assert status == 200
    assert lang_of(html) == language
    assert response.headers["Content-Language"] == language
    assert f"<h1>{heading}</h1>" in html


async def test_german_login_page_is_german(client: Client) -> None:
    """The German login page has German labels, picker and script messages, not English ones."""
    await add_user(client)
    _, html, _ = await get_page(client, **{"Accept-Language": "de"})
    for german in ("Benutzername oder E-Mail", "Passwort", "Konto wiederherstellen", "Sprache"):
        assert german in html
    for english in ("Username or e-mail", "Recover your account", ">Language<"):
        assert english not in html
    assert '<option value="de" lang="de" selected>Deutsch</option>' in html
    assert '"Folgen Sie den Anweisungen Ihres Browsers' in html  # for static/webauthn.js


async def test_cookie_overrides_the_header(client: Client) -> None:
    """The picker's cookie wins over Accept-Language."""
    await add_user(client)
    headers = {"Accept-Language": "de", **cookie_header(**{LANGUAGE_COOKIE: "fr"})}
    _, html, _ = await get_page(client, **headers)
    assert lang_of(html) == "fr"
    assert "Se connecter" in html and "Anmelden" not in html


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Accept-Language": "xx-YY, zz;q=0.5"}, id="unknown languages"),
        pytest.param({"Accept-Language": "de;q=abc, fr;q=7"}, id="malformed q"),
        pytest.param({"Accept-Language": "de;q=0"}, id="german refused"),
        pytest.param({"Accept-Language": ",;;=,;q=,*;q=x," * 200}, id="junk"),
        pytest.param({"Accept-Language": "de-" + "a" * 4000}, id="huge range"),
        pytest.param({"Accept-Language": "<script>alert(1)</script>"}, id="markup"),
        pytest.param(cookie_header(**{LANGUAGE_COOKIE: "xx"}), id="unknown cookie"),
        pytest.param(cookie_header(**{LANGUAGE_COOKIE: "../../etc/passwd"}), id="path cookie"),
        pytest.param(cookie_header(**{LANGUAGE_COOKIE: "de" * 2000}), id="long cookie"),
        pytest.param(cookie_header(**{LANGUAGE_COOKIE: '"><script>'}), id="markup cookie"),
        pytest.param({}, id="nothing"),
    ],
)
async def test_unknown_or_hostile_values_fall_back_to_english(
    client: Client, headers: dict[str, str]
) -> None:
    """Unknown, malformed or hostile language values give the English page, never an error."""
    await add_user(client)
    status, html, _ = await get_page(client, **headers)
    assert status == 200
    assert lang_of(html) == "en"
    assert "<h1>Sign in</h1>" in html
    assert "<script>alert" not in html and '"><script>' not in html


async def test_non_utf8_accept_language_is_harmless(client: Client) -> None:
    """Raw non-UTF-8 bytes in Accept-Language give the English page, not an error."""
    await add_user(client)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    request = b"GET /auth/login HTTP/1.1\r\nHost: localhost\r\nAccept-Language: d\xe9\xff;q=1\r\n"
    writer.write(request + b"Connection: close\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 200") and b'<html lang="en"' in answer


async def test_picker_sets_a_long_lived_cookie_and_goes_back(client: Client) -> None:
    """Choosing a language sets a lax, HTTP-only, year-long cookie and returns to the same page."""
    await add_user(client)
    back = "/auth/login?rd=http%3A%2F%2Fapp.localhost%2Fdocs"
    response = await choose(client, "es", back)
    assert response.status == 303
    assert response.headers["Location"] == back
    cookie = response.cookies[LANGUAGE_COOKIE]
    assert cookie.value == "es"
    assert cookie["httponly"] and cookie["samesite"] == "Lax"
    assert int(cookie["max-age"]) >= 365 * 86400 - 1
    assert cookie["path"] == "/auth"
    _, html, _ = await get_page(client, back, **cookie_header(**{LANGUAGE_COOKIE: "es"}))
    assert lang_of(html) == "es" and "Iniciar sesión" in html
    assert 'value="http://app.localhost/docs"' in html  # rd survived the switch


@pytest.mark.parametrize(
    "next_path",
    [
        "https://evil.example/",
        "//evil.example/auth/",
        "/\\evil.example",
        "/elsewhere",
        "javascript:alert(1)",
        "",
    ],
)
async def test_picker_returns_only_to_portal_paths(client: Client, next_path: str) -> None:
    """A return path that is not a plain path on the portal sends the browser to the portal root."""
    response = await choose(client, "de", next_path)
    assert response.status == 303
    assert response.headers["Location"] == "/auth/"
    assert response.cookies[LANGUAGE_COOKIE].value == "de"


@pytest.mark.parametrize("value", ["xx", "DE", "de;q=1", "", "<b>"])
async def test_picker_refuses_an_unknown_language(client: Client, value: str) -> None:
    """An unknown language is refused with a 400 that names the value and the languages offered."""
    response = await choose(client, value)
    text = await response.text()
    assert response.status == 400
    assert LANGUAGE_COOKIE not in response.cookies
    assert "is not offered" in text and "de (Deutsch)" in text
    assert "<b>" not in text


async def test_picker_needs_the_csrf_token(client: Client) -> None:
    """A picker POST without a valid CSRF token is refused and sets nothing."""
    response = await client.post(
        "/auth/language", data={"language": "de", "next": "/auth/login"}, allow_redirects=False
    )
    assert response.status == 403
    assert LANGUAGE_COOKIE not in response.cookies


async def test_picker_is_shown_only_on_pages_reached_by_get(client: Client) -> None:
    """Form answers (which cannot be reloaded in another language) carry no picker; pages do."""
    await add_user(client)
    _, page, _ = await get_page(client)
    assert 'id="language-picker"' in page
    secret, token = await csrf_pair(client)
    failed = await client.post(
        "/auth/login",
        data={"csrf_token": token, "username": "alice", "password": "wrong password"},
        headers=cookie_header(**{CSRF_COOKIE: secret}),
        allow_redirects=False,
    )
    assert failed.status == 401
    assert 'id="language-picker"' not in await failed.text()


async def test_errors_from_views_are_translated(client: Client) -> None:
    """A view's error message (wrong password) comes in the reader's language."""
    await add_user(client)
    secret, token = await csrf_pair(client)
    response = await client.post(
        "/auth/login",
        data={"csrf_token": token, "username": "alice", "password": "wrong password"},
        headers={**cookie_header(**{CSRF_COOKIE: secret}), "Accept-Language": "de"},
        allow_redirects=False,
    )
    assert response.status == 401
    text = await response.text()
    assert "Benutzername oder Passwort falsch." in text
    assert "Incorrect username or password." not in text


async def test_json_errors_are_translated(client: Client) -> None:
    """The portal's fetch() errors (JSON) are in the reader's language too."""
    response = await client.post(
        "/auth/login/passkey/options", json={}, headers={"Accept-Language": "es"}, allow_redirects=False
    )
    assert response.status == 403
    assert (await response.json())[
        "error"
    ] == "La página ha caducado. Vuelva a cargarla e inténtelo de nuevo."


ACCOUNT_PAGES = [
    ("/auth/", "Sicherheitseinstellungen"),
    ("/auth/settings", "Letzte sicherheitsrelevante Aktivitäten"),
    ("/auth/settings/devices", "Angemeldete Geräte"),
    ("/auth/settings/tokens", "App-Passwort erstellen"),
    ("/auth/settings/totp/new", "Authenticator-App hinzufügen"),
    ("/auth/admin/users", "Benutzer suchen"),
    ("/auth/admin/users/new", "Neuer Benutzer"),
    ("/auth/admin/users/root", "Zweite Faktoren"),
    ("/auth/admin/audit", "Audit-Protokoll"),
]


@pytest.mark.parametrize(("path", "german"), ACCOUNT_PAGES)
async def test_signed_in_pages_are_german(client: Client, path: str, german: str) -> None:
    """Account and admin pages render in German for a German browser, with German event labels."""
    await add_user(client, "root", groups=("admins",))
    session = await signed_in(client, "root")
    response = await client.get(
        path, headers={**with_cookies(session), "Accept-Language": "de"}, allow_redirects=False
    )
    html = await response.text()
    assert response.status == 200, html
    assert lang_of(html) == "de"
    assert german in html
    if path == "/auth/settings":
        assert "Anmeldung erfolgreich" in html  # the login just made, as "Recent security activity" shows it


@pytest.mark.parametrize("language", ["en", "de", "fr", "es"])
async def test_recovery_mail_is_in_the_readers_language(make_client: Any, language: str) -> None:
    """The recovery e-mail is written in the language of the page it was asked for on."""
    client = await make_client({"account_recovery": {"link_ttl": "10m"}})
    await add_user(client)
    secret, token = await csrf_pair(client)
    response = await client.post(
        "/auth/recover",
        data={"csrf_token": token, "email": "alice@example.com"},
        headers={**cookie_header(**{CSRF_COOKIE: secret}), "Accept-Language": language},
    )
    assert response.status == 200
    notifier = services(client).notifier
    for _ in range(200):  # the mail goes out in a background task: wait for it (10 s at most)
        if notifier.messages():  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.05)
    [path] = notifier.messages()  # type: ignore[attr-defined]
    message = email.message_from_bytes(path.read_bytes())
    body = str(message.get_payload(decode=True), "utf-8")
    greeting = {"en": "Hello Alice,", "de": "Hallo Alice,", "fr": "Bonjour Alice,", "es": "Hola, Alice:"}
    assert body.startswith(greeting[language])
    assert "/auth/recover/" in body
    subject = {"en": "Recover your", "de": "wiederherstellen", "fr": "Récupérez", "es": "Recupere"}
    assert subject[language] in str(email.header.make_header(email.header.decode_header(message["Subject"])))


async def test_english_stays_the_default(client: Client) -> None:
    """Without any language signal the portal is English, as before translations."""
    await add_user(client)
    session = await signed_in(client)
    response = await client.get("/auth/", headers=with_cookies(session))
    html = await response.text()
    assert lang_of(html) == "en"
    assert "You are signed in as" in html and PASSWORD not in html


@pytest.mark.parametrize("language", ["en", "de"])
async def test_values_in_translations_are_escaped(client: Client, language: str) -> None:
    """A value placed into a translated sentence (the user search term) is HTML-escaped."""
    await add_user(client, "root", groups=("admins",))
    session = await signed_in(client, "root")
    response = await client.get(
        "/auth/admin/users?q=%3Cscript%3Ex%3C%2Fscript%3E",
        headers={**with_cookies(session), "Accept-Language": language},
    )
    html = await response.text()
    assert response.status == 200
    assert "<script>x</script>" not in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html
    assert ("0 users match" if language == "en" else "0 Benutzer passen zu") in html
