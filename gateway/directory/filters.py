"""PURE: escaping for LDAP filters (RFC 4515) and DN values (RFC 4514), and filter placeholders.

Every value that reaches a filter or a DN goes through these, so a username like
`*)(uid=*` is a literal string to the server and never a piece of filter syntax.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

# RFC 4515 section 3: these must be written as \XX in an assertion value; we escape every
# byte outside printable ASCII too, so no control or non-ASCII byte reaches the server raw.
_FILTER_SPECIAL = frozenset(b"*()\\\x00")

# Seconds between 1601-01-01 (Windows FILETIME epoch, AD's accountExpires) and 1970-01-01.
_NT_EPOCH_OFFSET = 11_644_473_600

_PLACEHOLDER = re.compile(r"\{([a-z_-]+(?::[a-z-]+)?)\}")
# Placeholders a users_filter / groups_filter may hold (docs/ldap.md).
USER_PLACEHOLDERS = frozenset(
    {"input", "username_attribute", "mail_attribute", "date-time:generalized", "date-time:microsoft-nt"}
)
GROUP_PLACEHOLDERS = frozenset(
    {"dn", "username", "input", "date-time:generalized", "date-time:microsoft-nt", "username_attribute"}
)


class InvalidFilterValue(ValueError):
    """A value cannot be used in a filter at all (it is not text)."""


def escape_filter_value(value: str) -> str:
    """Escape an assertion value for a search filter (RFC 4515), byte by byte of its UTF-8."""
    out = []
    for byte in value.encode("utf-8", errors="surrogateescape"):
        if byte in _FILTER_SPECIAL or byte < 0x20 or byte > 0x7E:
            out.append(f"\\{byte:02x}")
        else:
            out.append(chr(byte))
    return "".join(out)


def escape_dn_value(value: str) -> str:
    """Escape an attribute value for use inside a DN (RFC 4514 section 2.4)."""
    out = []
    for index, char in enumerate(value):
        if char in ',+"\\<>;=':
            out.append("\\" + char)
        elif char == "\x00":
            out.append("\\00")
        elif (char == " " and index in (0, len(value) - 1)) or (char == "#" and index == 0):
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def placeholders(template: str) -> set[str]:
    """Return the placeholder names used in a filter template."""
    return set(_PLACEHOLDER.findall(template))


def render_filter(template: str, values: Mapping[str, str], *, now: float) -> str:
    """Fill a filter template: `values` are raw and escaped here; attribute names are taken as is.

    `{username_attribute}` and `{mail_attribute}` are attribute names from the configuration
    (checked to be attribute names when loading it); everything else is escaped as a value.
    """

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "date-time:generalized":
            return datetime.fromtimestamp(now, UTC).strftime("%Y%m%d%H%M%SZ")
        if name == "date-time:microsoft-nt":
            return str(int((now + _NT_EPOCH_OFFSET) * 10_000_000))
        if name not in values:
            raise KeyError(name)
        if name.endswith("_attribute"):
            return values[name]
        return escape_filter_value(values[name])

    return _PLACEHOLDER.sub(fill, template)


def is_valid_filter(text: str) -> bool:
    """Check a filter's shape: enclosed in parentheses, balanced, nothing after the end."""
    if not text.startswith("(") or not text.endswith(")"):
        return False
    depth = 0
    escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0 or (depth == 0 and index != len(text) - 1):
                return False
    return depth == 0 and not escaped


_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]*|\d+(?:\.\d+)+")


def is_attribute_name(text: str) -> bool:
    """An attribute description as RFC 4512 allows it (a name or a numeric OID)."""
    return bool(_ATTRIBUTE.fullmatch(text))
