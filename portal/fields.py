"""Form-field problems as the portal words them, in the reader's language.

The gateway's validators (gateway/accounts/validation.py, gateway/factors/) decide what is
valid and word it for the CLI and the logs; here each refusal gets the portal's translated
sentence naming the field, the value and what is allowed.
"""

from __future__ import annotations

from gateway.accounts.validation import (
    validate_display_name,
    validate_email,
    validate_groups,
    validate_username,
)
from gateway.factors import app_passwords
from gateway.factors.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, validate_new_password
from portal.i18n import Translator


def username_problem(value: str, tr: Translator) -> str | None:
    """Return why `value` cannot be a username, or None."""
    if validate_username(value) is None:
        return None
    return tr.gettext(
        "The username %(value)s is not allowed: use 1-64 lower-case letters, digits, '.', '_' or '-', "
        "starting with a letter or digit.",
        value=repr(value),
    )


def email_problem(value: str, tr: Translator) -> str | None:
    """Return why `value` is not an e-mail address, or None."""
    if validate_email(value) is None:
        return None
    return tr.gettext("%(value)s is not a valid address (expected name@example.com).", value=repr(value))


def display_name_problem(value: str, tr: Translator) -> str | None:
    """Return why `value` cannot be a display name, or None."""
    if validate_display_name(value) is None:
        return None
    return tr.gettext("The display name must be 1-128 characters long, without control characters.")


def groups_problem(groups: list[str], tr: Translator) -> str | None:
    """Return why one of `groups` is not a valid group name (naming it), or None."""
    for group in groups:
        if validate_groups([group]) is not None:
            return tr.gettext(
                "The group %(value)s is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit.",
                value=repr(group),
            )
    return None


def new_password_problem(password: str, tr: Translator) -> str | None:
    """Return why `password` cannot be a new password, or None."""
    if validate_new_password(password) is None:
        return None
    if len(password) < MIN_PASSWORD_LENGTH:
        return tr.gettext("The password must be at least %(min)s characters long.", min=MIN_PASSWORD_LENGTH)
    if len(password) > MAX_PASSWORD_LENGTH:
        return tr.gettext("The password must be at most %(max)s characters long.", max=MAX_PASSWORD_LENGTH)
    return tr.gettext("The password must not consist of spaces only.")


def token_name_problem(name: str, tr: Translator) -> str | None:
    """Return why `name` cannot name an app password, or None."""
    if app_passwords.validate_name(name) is None:
        return None
    return tr.gettext(
        "The name must be 1-%(max)s characters long, without control characters.",
        max=app_passwords.MAX_NAME_LENGTH,
    )


def device_name_problem(name: str, tr: Translator) -> str | None:
    """Return why `name` cannot name a device (authenticator app, key, passkey), or None."""
    if not name.strip() or len(name) > 64:
        return tr.gettext("Give the device a name of 1-64 characters.")
    if any(ch < " " or ch == "\x7f" for ch in name):
        return tr.gettext("The device name must not contain control characters.")
    return None
