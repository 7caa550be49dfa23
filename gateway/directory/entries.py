"""PURE: directory entries to users and groups, the disabled-account rule, what a re-check decides."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# AD's userAccountControl ACCOUNTDISABLE bit.
_AD_ACCOUNTDISABLE = 0x2
# ppolicy's value for "locked until an administrator unlocks it" (not a temporary lockout).
_PPOLICY_PERMANENT_LOCK = "000001010000Z"

Attributes = Mapping[str, Sequence[str | bytes]]


class InvalidEntry(ValueError):
    """A directory entry lacks what authgate needs (a username or a stable id)."""


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """A user as the directory describes them."""

    dn: str
    external_id: str  # entryUUID / objectGUID / ipaUniqueID ...: survives renames
    username: str  # lower case, as authgate stores usernames
    display_name: str
    mail: str
    groups: tuple[str, ...]  # group names, sorted, without duplicates
    disabled: bool
    password_stamp: str  # changes whenever the password changes ("" when not known)


@dataclass(frozen=True, slots=True)
class AttributeMap:
    """Which directory attribute holds which part of a user."""

    external_id: str
    username: str
    display_name: str
    mail: str
    member_of: str
    group_name: str
    password_changed: str
    disabled_rule: str


def _first(attributes: Attributes, name: str) -> str | bytes | None:
    if not name:
        return None
    for key, values in attributes.items():
        if key.lower() == name.lower() and values:
            return values[0]
    return None


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def external_id_text(value: str | bytes | None) -> str:
    """Turn a stable id into text: AD's objectGUID is 16 raw bytes (little-endian UUID)."""
    if isinstance(value, bytes):
        if len(value) == 16:
            return str(uuid.UUID(bytes_le=value))
        return value.hex()
    return _text(value).strip().lower()


def group_name_from_dn(dn: str, attribute: str) -> str | None:
    """Return the group name from a group DN's first RDN when it is `attribute=NAME`, else None."""
    first, _, _rest = _split_first_rdn(dn)
    name, sep, value = first.partition("=")
    if not sep or name.strip().lower() != attribute.lower():
        return None
    return _unescape_dn_value(value.strip())


def _split_first_rdn(dn: str) -> tuple[str, str, str]:
    escaped = False
    for index, char in enumerate(dn):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            return dn[:index], ",", dn[index + 1 :]
    return dn, "", ""


def _unescape_dn_value(value: str) -> str:
    out = []
    index = 0
    while index < len(value):
        char = value[index]
        if char == "\\" and index + 1 < len(value):
            pair = value[index + 1 : index + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                out.append(chr(int(pair, 16)))
                index += 3
                continue
            out.append(value[index + 1])
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def is_disabled(rule: str, attributes: Attributes) -> bool:
    """Apply a disabled-account rule (presets.DISABLED_ATTRIBUTES) to an entry's attributes."""
    if rule == "userAccountControl":
        raw = _text(_first(attributes, "userAccountControl")).strip()
        try:
            return bool(int(raw) & _AD_ACCOUNTDISABLE) if raw else False
        except ValueError:
            return True  # unreadable flags: refuse rather than guess
    if rule == "ppolicy":
        return _text(_first(attributes, "pwdAccountLockedTime")).strip() == _PPOLICY_PERMANENT_LOCK
    if rule == "nsAccountLock":
        return _text(_first(attributes, "nsAccountLock")).strip().upper() == "TRUE"
    if rule == "accountStatus":
        return _text(_first(attributes, "accountStatus")).strip().lower() == "inactive"
    return False


def entry_from_attributes(
    dn: str, attributes: Attributes, mapping: AttributeMap, groups: Sequence[str]
) -> DirectoryEntry:
    """Build a DirectoryEntry; InvalidEntry when the username or the stable id is missing."""
    username = _text(_first(attributes, mapping.username)).strip().lower()
    if not username:
        raise InvalidEntry(f"{dn}: no {mapping.username} attribute")
    external_id = external_id_text(_first(attributes, mapping.external_id))
    if not external_id:
        raise InvalidEntry(f"{dn}: no {mapping.external_id} attribute")
    display = _text(_first(attributes, mapping.display_name)).strip() or username
    return DirectoryEntry(
        dn=dn,
        external_id=external_id,
        username=username,
        display_name=display,
        mail=_text(_first(attributes, mapping.mail)).strip(),
        groups=tuple(sorted({g for g in groups if g})),
        disabled=is_disabled(mapping.disabled_rule, attributes),
        password_stamp=_text(_first(attributes, mapping.password_changed)).strip(),
    )


def groups_from_member_of(values: Sequence[str | bytes], group_name: str) -> list[str]:
    """Group names from memberOf DNs whose first RDN is `group_name=...` (others are skipped)."""
    names = [group_name_from_dn(_text(value), group_name) for value in values]
    return [name for name in names if name]


@dataclass(frozen=True, slots=True)
class Stored:
    """What authgate last recorded about a directory user."""

    user_id: int
    external_id: str
    username: str
    display_name: str
    mail: str
    groups: tuple[str, ...]
    disabled: bool
    password_stamp: str


# What a re-check decides (decide_sync).
KEEP = "keep"  # nothing changed
UPDATE = "update"  # profile or groups changed: store them, sessions re-read
END_SESSIONS = "end_sessions"  # the password changed: store, and end the sessions
DISABLE = "disable"  # disabled or gone from the directory: disable locally, end sessions


def decide_sync(stored: Stored, found: DirectoryEntry | None) -> str:
    """Decide what a re-check of a directory user means for authgate's copy."""
    if found is None or found.external_id != stored.external_id or found.disabled:
        return DISABLE
    # A new stamp (pwdChangedTime, pwdLastSet ...) means a new password; one that disappears does not.
    if found.password_stamp and found.password_stamp != stored.password_stamp:
        return END_SESSIONS
    if (
        found.username != stored.username
        or found.display_name != stored.display_name
        or found.mail != stored.mail
        or tuple(found.groups) != tuple(stored.groups)
        or stored.disabled
        or found.password_stamp != stored.password_stamp
    ):
        return UPDATE
    return KEEP
