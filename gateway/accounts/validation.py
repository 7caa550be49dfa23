"""Validation of account fields (pure); each returns an error message or None."""

from __future__ import annotations

import re

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
EMAIL_RE = re.compile(r"^[^@\s,;<>\"]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}$")


def validate_username(value: str) -> str | None:
    if not USERNAME_RE.fullmatch(value):
        return (
            f"username {value!r} is not allowed: use 1-64 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return None


def validate_email(value: str) -> str | None:
    if not EMAIL_RE.fullmatch(value) or ".." in value:
        return f"e-mail {value!r} is not a valid address (expected name@example.com)"
    return None


def validate_display_name(value: str) -> str | None:
    if not value.strip() or len(value) > 128:
        return "display name must be 1-128 characters"
    if any(ch < " " or ch == "\x7f" for ch in value):
        return "display name must not contain control characters"
    return None


def validate_groups(groups: list[str]) -> str | None:
    for group in groups:
        if not GROUP_RE.fullmatch(group):
            return (
                f"group {group!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
    return None


def parse_groups(text: str) -> list[str]:
    """Split a comma-separated group list, dropping blanks and duplicates, keeping order."""
    seen: dict[str, None] = {}
    for part in text.split(","):
        if part.strip():
            seen[part.strip()] = None
    return list(seen)
