"""The portal's URL table (mounted under the portal URL's path)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from portal.views import (
    admin,
    devices,
    external_login,
    language,
    login,
    oidc,
    passkeys,
    password_reset,
    reauth,
    recovery,
    second_factor,
    settings,
    setup,
    tokens,
)
from portal.web import store_guard

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATIC_DIR = Path(__file__).parent / "static"

# (method, path under the portal base, handler). Admin routes are listed so tests can walk them.
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/", login.home),
    ("GET", "/login", login.login_page),
    ("POST", "/login", login.login_submit),
    ("POST", "/logout", login.logout),
    ("POST", "/language", language.choose_language),
    ("GET", "/setup", setup.setup_page),
    ("POST", "/setup", setup.setup_submit),
    ("GET", "/2fa", second_factor.second_factor_page),
    ("POST", "/2fa", second_factor.second_factor_submit),
    ("GET", "/settings", settings.settings_page),
    ("GET", "/settings/totp/new", settings.totp_new_page),
    ("POST", "/settings/totp/new", settings.totp_new_submit),
    ("POST", "/settings/totp/{device_id}/rename", settings.totp_rename),
    ("POST", "/settings/totp/{device_id}/delete", settings.totp_delete),
    ("POST", "/settings/recovery", settings.recovery_regenerate),
    ("POST", "/settings/directory-password", settings.directory_password_change),
    ("POST", "/settings/webauthn/options", passkeys.register_options),
    ("POST", "/settings/webauthn/register", passkeys.register_finish),
    ("POST", "/settings/webauthn/{device_id}/rename", passkeys.rename_key),
    ("POST", "/settings/webauthn/{device_id}/delete", passkeys.revoke_device),
    ("POST", "/settings/password-login", passkeys.password_login_toggle),
    ("POST", "/2fa/webauthn/options", passkeys.second_factor_options),
    ("POST", "/2fa/webauthn", passkeys.second_factor_finish),
    ("POST", "/login/passkey/options", passkeys.passkey_options),
    ("POST", "/login/passkey", passkeys.passkey_finish),
    # /link before /{provider}: the router tries resources in the order they were added.
    ("GET", "/login/external/link", external_login.link_page),
    ("POST", "/login/external/link", external_login.link_submit),
    ("POST", "/login/external/link/webauthn/options", external_login.link_webauthn_options),
    ("POST", "/login/external/link/webauthn", external_login.link_webauthn_finish),
    ("POST", "/login/external/{provider}", external_login.start_login),
    ("GET", "/login/external/{provider}/callback", external_login.callback),
    ("POST", "/settings/external/{provider}/link", external_login.settings_link),
    ("POST", "/settings/external/{link_id}/unlink", external_login.settings_unlink),
    ("GET", "/recover", recovery.request_page),
    ("POST", "/recover", recovery.request_submit),
    ("GET", "/recover/{token}", recovery.link_page),
    ("POST", "/recover/{token}", recovery.link_submit),
    ("GET", "/settings/tokens", tokens.tokens_page),
    ("POST", "/settings/tokens", tokens.create_token),
    ("POST", "/settings/tokens/{token_id}/revoke", tokens.revoke_token),
    ("GET", "/settings/devices", devices.devices_page),
    ("POST", "/settings/devices/revoke-others", devices.revoke_other_sessions),
    ("POST", "/settings/devices/{id_hash}/revoke", devices.revoke_session),
    ("GET", "/reauth", reauth.reauth_page),
    ("POST", "/reauth", reauth.reauth_submit),
    ("POST", "/reauth/webauthn/options", reauth.reauth_webauthn_options),
    ("POST", "/reauth/webauthn", reauth.reauth_webauthn_finish),
    ("GET", "/admin/users", admin.users_page),
    # /new before /{username}: the router tries resources in the order they were added.
    ("GET", "/admin/users/new", admin.new_user_page),
    ("POST", "/admin/users/new", admin.new_user_submit),
    ("GET", "/admin/users/{username}", admin.user_page),
    ("POST", "/admin/users/{username}", admin.user_update),
    ("POST", "/admin/users/{username}/disable", admin.disable_user),
    ("POST", "/admin/users/{username}/enable", admin.enable_user),
    ("POST", "/admin/users/{username}/delete", admin.delete_user),
    ("POST", "/admin/users/{username}/password-reset", admin.send_password_reset),
    ("POST", "/admin/users/{username}/2fa/reset", admin.reset_second_factors),
    ("POST", "/admin/users/{username}/sessions/{ref}/revoke", admin.revoke_session),
    ("POST", "/admin/users/{username}/sessions/revoke-all", admin.revoke_all_sessions),
    ("POST", "/admin/users/{username}/tokens/{token_id}/revoke", admin.revoke_token),
    ("POST", "/admin/users/{username}/tokens/revoke-all", admin.revoke_all_tokens),
    ("POST", "/admin/users/{username}/external/{link_id}/remove", admin.remove_external_link),
    ("GET", "/admin/audit", admin.audit_page),
    ("POST", "/settings/apps/{client_id}/revoke", oidc.revoke_app),
    ("GET", "/admin/oidc", oidc.admin_clients),
    ("GET", "/reset/{token}", password_reset.reset_page),
    ("POST", "/reset/{token}", password_reset.reset_submit),
)
ADMIN_PREFIX = "/admin/"


def add_routes(app: web.Application, base: str) -> None:
    # Each handler is wrapped here, not by an app-wide middleware: forward-auth keeps its
    # own (cheaper) catch and pays nothing for the portal's.
    for method, path, handler in ROUTES:
        app.router.add_route(method, f"{base}{path}", store_guard(handler))
    if base:
        app.router.add_get(base, store_guard(login.home))
    app.router.add_static(f"{base}/static", STATIC_DIR, append_version=True)


# The OpenID Provider's browser-facing endpoints, under the issuer's path (gateway/oidc/endpoints.py).
OIDC_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/api/oidc/authorization", oidc.authorize),
    ("POST", "/api/oidc/authorization", oidc.authorize),
    ("POST", "/api/oidc/consent", oidc.consent_submit),
    ("GET", "/api/oidc/logout", oidc.end_session),
    ("POST", "/api/oidc/logout", oidc.end_session),
    ("POST", "/api/oidc/logout/confirm", oidc.logout_confirm),
)


def add_oidc_routes(app: web.Application, base: str) -> None:
    for method, path, handler in OIDC_ROUTES:
        app.router.add_route(method, f"{base}{path}", store_guard(handler))
