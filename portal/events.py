"""How audit events and devices read on the portal, in the reader's language.

The stored event is an identifier (gateway/accounts/audit.py); this is only its label. The
English labels are the identifiers with spaces, as the page showed them before translations.
Devices are named from their User-Agent (gateway/accounts/useragent.py), worded here.
"""

from __future__ import annotations

from typing import Final

from gateway.accounts import audit, useragent
from portal.i18n import N_, Translator

EVENT_LABELS: Final = {
    audit.LOGIN_SUCCEEDED: N_("login succeeded"),
    audit.LOGIN_FAILED: N_("login failed"),
    audit.LOGIN_BANNED: N_("login banned"),
    audit.LOGOUT: N_("logout"),
    audit.SECOND_FACTOR_SUCCEEDED: N_("second factor succeeded"),
    audit.SECOND_FACTOR_FAILED: N_("second factor failed"),
    audit.REAUTH_SUCCEEDED: N_("reauth succeeded"),
    audit.REAUTH_FAILED: N_("reauth failed"),
    audit.ACCOUNT_CREATED: N_("account created"),
    audit.PASSWORD_CHANGED: N_("password changed"),
    audit.TOTP_ADDED: N_("totp added"),
    audit.TOTP_REMOVED: N_("totp removed"),
    audit.WEBAUTHN_ADDED: N_("webauthn added"),
    audit.WEBAUTHN_REVOKED: N_("webauthn revoked"),
    audit.RECOVERY_CODES_GENERATED: N_("recovery codes generated"),
    audit.RECOVERY_CODE_USED: N_("recovery code used"),
    audit.ACCOUNT_RECOVERY_REQUESTED: N_("account recovery requested"),
    audit.ACCOUNT_RECOVERED: N_("account recovered"),
    audit.PASSWORD_LOGIN_ENABLED: N_("password login enabled"),
    audit.PASSWORD_LOGIN_DISABLED: N_("password login disabled"),
    audit.TOKEN_CREATED: N_("token created"),
    audit.TOKEN_REVOKED: N_("token revoked"),
    audit.TOKEN_USED: N_("token used"),
    audit.TOKEN_FAILED: N_("token failed"),
    audit.SESSION_REVOKED: N_("session revoked"),
    audit.SESSIONS_REVOKED: N_("sessions revoked"),
    audit.ADMIN_USER_CREATED: N_("admin user created"),
    audit.ADMIN_USER_MODIFIED: N_("admin user modified"),
    audit.ADMIN_USER_DISABLED: N_("admin user disabled"),
    audit.ADMIN_USER_ENABLED: N_("admin user enabled"),
    audit.ADMIN_USER_DELETED: N_("admin user deleted"),
    audit.ADMIN_PASSWORD_SET: N_("admin password set"),
    audit.ADMIN_PASSWORD_RESET_SENT: N_("admin password reset sent"),
    audit.ADMIN_SECOND_FACTORS_RESET: N_("admin second factors reset"),
    audit.ADMIN_SESSION_REVOKED: N_("admin session revoked"),
    audit.ADMIN_SESSIONS_REVOKED: N_("admin sessions revoked"),
    audit.ADMIN_TOKEN_REVOKED: N_("admin token revoked"),
    audit.ADMIN_TOKENS_REVOKED: N_("admin tokens revoked"),
}


def event_label(event: str, tr: Translator) -> str:
    """Return how `event` reads in `tr`'s language (an unknown event as its identifier, spaced)."""
    label = EVENT_LABELS.get(event)
    return tr.catalogue.gettext(label) if label else event.replace("_", " ")


def device_label(user_agent: str | None, tr: Translator) -> str:
    """Name a session's device ("Firefox 128 on Linux") in `tr`'s language, bounded in length."""
    client, system = useragent.describe_parts(user_agent)
    if client is None and system is None:
        return tr.gettext("Unknown device")
    if client is None:
        return useragent.bounded(tr.gettext("Browser on %(system)s", system=system))
    if system is None:
        return useragent.bounded(client)
    return useragent.bounded(tr.gettext("%(client)s on %(system)s", client=client, system=system))
