"""The pure parts of the LDAP backend: escaping, filters, presets, entries, the re-check decision."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import config_warnings, parse_config
from gateway.directory import entries, filters
from gateway.directory.entries import AttributeMap, DirectoryEntry, Stored, decide_sync
from gateway.directory.presets import IMPLEMENTATIONS, PRESETS
from gateway.errors import ConfigError

# RFC 4515 section 4 examples, plus the bytes we escape beyond the minimum.
FILTER_VALUES = [
    (
        "Parens R Us (for all your parenthetical needs)",
        "Parens R Us \\28for all your parenthetical needs\\29",
    ),
    ("*", "\\2a"),
    ("C:\\MyFile", "C:\\5cMyFile"),
    ("\x00\x00\x00\x04", "\\00\\00\\00\\04"),
    ("Lučić", "Lu\\c4\\8di\\c4\\87"),
    ("*)(uid=*", "\\2a\\29\\28uid=\\2a"),
    (")(|(objectClass=*)", "\\29\\28|\\28objectClass=\\2a\\29"),
    ("a\nb", "a\\0ab"),
    ("plain.name-1@example.com", "plain.name-1@example.com"),
]


@pytest.mark.parametrize(("raw", "escaped"), FILTER_VALUES)
def test_escape_filter_value(raw: str, escaped: str) -> None:
    """Filter metacharacters, NUL, controls and non-ASCII bytes become \\XX (RFC 4515)."""
    assert filters.escape_filter_value(raw) == escaped


def test_escape_filter_value_survives_lone_surrogates() -> None:
    """A string decoded with surrogateescape (non-UTF-8 input) is escaped byte by byte, not an error."""
    assert filters.escape_filter_value("a\udcffb") == "a\\ffb"


DN_VALUES = [
    ("Sue, Grabbit and Runn", "Sue\\, Grabbit and Runn"),
    ("Before\x00After", "Before\\00After"),
    (" leading", "\\ leading"),
    ("trailing ", "trailing\\ "),
    ("#hash", "\\#hash"),
    ('a+b"c\\d<e>f;g=h', 'a\\+b\\"c\\\\d\\<e\\>f\\;g\\=h'),
    ("o'brien", "o'brien"),
]


@pytest.mark.parametrize(("raw", "escaped"), DN_VALUES)
def test_escape_dn_value(raw: str, escaped: str) -> None:
    """DN special characters are backslash-escaped (RFC 4514 section 2.4)."""
    assert filters.escape_dn_value(raw) == escaped


def test_render_filter_escapes_values_but_not_attribute_names() -> None:
    """{input} is escaped, {username_attribute} is the configured attribute name as is."""
    template = "(&(|({username_attribute}={input})({mail_attribute}={input}))(objectClass=person))"
    values = {"input": "*)(uid=*", "username_attribute": "uid", "mail_attribute": "mail"}

    rendered = filters.render_filter(template, values, now=0)

    assert rendered == "(&(|(uid=\\2a\\29\\28uid=\\2a)(mail=\\2a\\29\\28uid=\\2a))(objectClass=person))"
    assert filters.is_valid_filter(rendered)


def test_render_filter_dates() -> None:
    """{date-time:generalized} and {date-time:microsoft-nt} render the given time."""
    rendered = filters.render_filter(
        "(&(a>={date-time:generalized})(b>={date-time:microsoft-nt}))", {}, now=86400.0
    )
    assert rendered == "(&(a>=19700102000000Z)(b>=116445600000000000))"


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("(uid=a)", True),
        ("(&(uid=a)(objectClass=person))", True),
        ("(uid=a\\29)", True),
        ("uid=a", False),
        ("(uid=a))", False),
        ("((uid=a)", False),
        ("(uid=a)(uid=b)", False),
        ("(uid=a\\)", False),
    ],
)
def test_is_valid_filter(text: str, valid: bool) -> None:
    """A filter is one parenthesised expression with balanced parentheses."""
    assert filters.is_valid_filter(text) is valid


@pytest.mark.parametrize(
    ("dn", "name"),
    [
        ("cn=admins,ou=groups,dc=example,dc=com", "admins"),
        ("CN=Domain Admins,CN=Users,DC=corp,DC=example", "Domain Admins"),
        ("cn=a\\,b,ou=groups,dc=x", "a,b"),
        ("cn=caf\\c3\\a9,dc=x", "caf\xc3\xa9"),
        ("ou=admins,dc=x", None),
        ("garbage", None),
    ],
)
def test_group_name_from_dn(dn: str, name: str | None) -> None:
    """memberOf DNs give the group name from their first RDN when it is group_name=..."""
    assert entries.group_name_from_dn(dn, "cn") == name


@pytest.mark.parametrize(
    ("rule", "attributes", "disabled"),
    [
        ("userAccountControl", {"userAccountControl": ["512"]}, False),
        ("userAccountControl", {"userAccountControl": ["514"]}, True),
        ("userAccountControl", {"userAccountControl": ["66050"]}, True),
        ("userAccountControl", {"userAccountControl": ["junk"]}, True),
        ("userAccountControl", {}, False),
        ("ppolicy", {"pwdAccountLockedTime": ["000001010000Z"]}, True),
        ("ppolicy", {"pwdAccountLockedTime": ["20261203120000Z"]}, False),  # temporary lockout: bind decides
        ("ppolicy", {}, False),
        ("nsAccountLock", {"nsAccountLock": ["TRUE"]}, True),
        ("nsAccountLock", {"nsaccountlock": ["true"]}, True),
        ("nsAccountLock", {"nsAccountLock": ["FALSE"]}, False),
        ("accountStatus", {"accountStatus": ["inactive"]}, True),
        ("accountStatus", {"accountStatus": ["active"]}, False),
        ("none", {"userAccountControl": ["514"]}, False),
    ],
)
def test_disabled_rules(rule: str, attributes: dict[str, list[str]], disabled: bool) -> None:
    """Each implementation's disabled-account flag is read the way that directory means it."""
    assert entries.is_disabled(rule, attributes) is disabled


def test_object_guid_becomes_a_uuid() -> None:
    """AD's objectGUID (16 little-endian bytes) is stored as its usual UUID text."""
    guid = uuid.UUID("3f2504e0-4f89-11d3-9a0c-0305e82c3301")
    assert entries.external_id_text(guid.bytes_le) == str(guid)
    assert entries.external_id_text("ABC-Def") == "abc-def"


MAPPING = AttributeMap(
    external_id="entryUUID",
    username="uid",
    display_name="displayName",
    mail="mail",
    member_of="memberOf",
    group_name="cn",
    password_changed="pwdChangedTime",
    disabled_rule="ppolicy",
)


def test_entry_from_attributes() -> None:
    """Attributes map to a user: lower-case username, sorted unique groups, display name fallback."""
    entry = entries.entry_from_attributes(
        "uid=Alice,dc=x",
        {"uid": ["Alice"], "entryUUID": ["ID-1"], "mail": ["a@x"], "pwdChangedTime": ["2026"]},
        MAPPING,
        ["devs", "admins", "devs"],
    )
    assert entry == DirectoryEntry(
        dn="uid=Alice,dc=x",
        external_id="id-1",
        username="alice",
        display_name="alice",
        mail="a@x",
        groups=("admins", "devs"),
        disabled=False,
        password_stamp="2026",
    )


@pytest.mark.parametrize("missing", ["uid", "entryUUID"])
def test_entry_without_username_or_stable_id_is_refused(missing: str) -> None:
    """An entry without a username or a stable id cannot become a user."""
    attributes = {"uid": ["alice"], "entryUUID": ["id-1"]}
    del attributes[missing]
    with pytest.raises(entries.InvalidEntry):
        entries.entry_from_attributes("uid=alice,dc=x", attributes, MAPPING, [])


STORED = Stored(
    user_id=1,
    external_id="id-1",
    username="alice",
    display_name="Alice",
    mail="a@x",
    groups=("admins", "devs"),
    disabled=False,
    password_stamp="t1",
)
SAME = DirectoryEntry(
    dn="uid=alice,dc=x",
    external_id="id-1",
    username="alice",
    display_name="Alice",
    mail="a@x",
    groups=("admins", "devs"),
    disabled=False,
    password_stamp="t1",
)


def _changed(**changes: Any) -> DirectoryEntry:
    fields = {name: getattr(SAME, name) for name in SAME.__slots__}  # type: ignore[attr-defined]
    return DirectoryEntry(**{**fields, **changes})


@pytest.mark.parametrize(
    ("found", "action"),
    [
        (SAME, entries.KEEP),
        (None, entries.DISABLE),
        (_changed(disabled=True), entries.DISABLE),
        (_changed(external_id="id-2"), entries.DISABLE),  # someone else now has the name
        (_changed(password_stamp="t2"), entries.END_SESSIONS),
        (_changed(password_stamp=""), entries.UPDATE),
        (_changed(groups=("devs",)), entries.UPDATE),
        (_changed(mail="new@x"), entries.UPDATE),
        (_changed(display_name="Alice L."), entries.UPDATE),
    ],
)
def test_decide_sync(found: DirectoryEntry | None, action: str) -> None:
    """What a re-check decides for each kind of directory change."""
    assert decide_sync(STORED, found) == action


def test_first_password_change_of_a_user_without_a_stamp_ends_sessions() -> None:
    """A user who never changed the password has no stamp; the first change still counts."""
    stored = Stored(**{**{n: getattr(STORED, n) for n in STORED.__slots__}, "password_stamp": ""})  # type: ignore[attr-defined]
    assert decide_sync(stored, _changed(password_stamp="t9")) == entries.END_SESSIONS


# -- configuration -------------------------------------------------------------------------------

BASE = {
    "url": "ldaps://ldap.example.com",
    "bind_dn": "cn=authgate,dc=example,dc=com",
    "bind_password": "service-password",
    "base_dn": "dc=example,dc=com",
}


def ldap_config(**section: Any) -> Any:
    return parse_config({"authentication_backend": {"ldap": {**BASE, **section}}}).authentication_backend.ldap


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_each_preset_fills_filters_and_attributes(implementation: str) -> None:
    """Every preset gives valid filters with known placeholders and every attribute."""
    cfg = ldap_config(implementation=implementation)
    preset = PRESETS[implementation]
    assert cfg.users_filter == preset.users_filter
    assert cfg.groups_filter == preset.groups_filter
    assert filters.placeholders(cfg.users_filter) <= filters.USER_PLACEHOLDERS
    assert filters.placeholders(cfg.groups_filter) <= filters.GROUP_PLACEHOLDERS
    assert cfg.attributes.username and cfg.attributes.external_id and cfg.attributes.group_name
    values = {"input": "x", "username_attribute": "u", "mail_attribute": "m", "dn": "d", "username": "x"}
    assert filters.is_valid_filter(filters.render_filter(cfg.users_filter, values, now=0))
    assert filters.is_valid_filter(filters.render_filter(cfg.groups_filter, values, now=0))


def test_lldap_preset_searches_below_people_and_groups() -> None:
    """LLDAP keeps users in ou=people and groups in ou=groups, unless the keys say otherwise."""
    cfg = ldap_config(implementation="lldap")
    assert cfg.users_base == "ou=people,dc=example,dc=com"
    assert cfg.groups_base == "ou=groups,dc=example,dc=com"
    assert ldap_config(implementation="lldap", users_dn="ou=staff").users_base == "ou=staff,dc=example,dc=com"
    assert ldap_config(implementation="lldap", users_dn="").users_base == "dc=example,dc=com"


def test_given_keys_win_over_the_preset() -> None:
    """A configured filter or attribute replaces the preset's; the rest stay."""
    cfg = ldap_config(users_filter="(&(uid={input})(objectClass=account))", attributes={"username": "cn"})
    assert cfg.users_filter == "(&(uid={input})(objectClass=account))"
    assert cfg.attributes.username == "cn"
    assert cfg.attributes.mail == "mail"


def problems_of(**section: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        ldap_config(**section)
    return dict(info.value.problems)


@pytest.mark.parametrize(
    ("section", "path", "words"),
    [
        ({"url": "http://ldap"}, "url", "ldaps://"),
        ({"url": "ldap://ldap.example.com/dc=x"}, "url", "ldap://host"),
        ({"url": "ldap://ldap.example.com", "start_tls": False}, "start_tls", "unencrypted"),
        ({"implementation": "novell"}, "implementation", "openldap"),
        ({"users_filter": "uid={input}"}, "users_filter", "parentheses"),
        ({"users_filter": "(uid={inptu})"}, "users_filter", "{inptu}"),
        ({"groups_filter": "(member={mail})"}, "groups_filter", "{mail}"),
        ({"attributes": {"username": "u id"}}, "attributes.username", "attribute name"),
        ({"bind_password": ""}, "bind_password", "missing"),
        ({"bind_dn": "authgate"}, "bind_dn", "not a DN"),
        ({"timeout": "2m"}, "timeout", "too long"),
        ({"pool_size": 0}, "pool_size", "out of range"),
        ({"refresh_interval": 0}, "refresh_interval", "zero"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file", "not a readable file"),
        ({"bind_password_file": "/nonexistent/pw"}, "bind_password_file", "both"),
    ],
)
def test_config_errors_name_the_key(section: dict[str, Any], path: str, words: str) -> None:
    """Bad values give a problem at authentication_backend.ldap.KEY saying what is allowed."""
    problems = problems_of(**section)
    key = f"authentication_backend.ldap.{path}"
    assert key in problems, problems
    assert words in problems[key]


def test_missing_required_keys_are_each_reported() -> None:
    """url, base_dn, bind_dn and a password are required; each missing one is named."""
    with pytest.raises(ConfigError) as info:
        parse_config({"authentication_backend": {"ldap": {"implementation": "lldap"}}})
    paths = {path for path, _ in info.value.problems}
    assert {f"authentication_backend.ldap.{k}" for k in ("url", "base_dn", "bind_dn")} <= paths


def test_plain_ldap_to_loopback_is_allowed() -> None:
    """start_tls: false is accepted for a directory on the same machine."""
    assert ldap_config(url="ldap://127.0.0.1:3389", start_tls=False).url == "ldap://127.0.0.1:3389"


def test_bind_password_file_is_read_and_never_shown(tmp_path: Path) -> None:
    """bind_password_file is read (trailing newline dropped); repr never shows the password."""
    path = tmp_path / "pw"
    path.write_text("from-a-file\n")
    section = {k: v for k, v in BASE.items() if k != "bind_password"}
    cfg = parse_config(
        {"authentication_backend": {"ldap": {**section, "bind_password_file": str(path)}}}
    ).authentication_backend.ldap
    assert cfg.bind_password == "from-a-file"
    assert "from-a-file" not in repr(cfg)


def test_tls_skip_verify_is_warned_about() -> None:
    """tls_skip_verify is valid but config check warns, naming the key."""
    config = parse_config({"authentication_backend": {"ldap": {**BASE, "tls_skip_verify": True}}})
    assert [path for path, _ in config_warnings(config)] == ["authentication_backend.ldap.tls_skip_verify"]
    assert config_warnings(parse_config({})) == []


DOC = Path(__file__).resolve().parents[2] / "docs" / "ldap.md"


@pytest.mark.parametrize("block", re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S))
def test_every_example_in_the_docs_validates(block: str, tmp_path: Path) -> None:
    """Each worked example in docs/ldap.md is a valid configuration (files it names stood in for)."""
    data = yaml.safe_load(block)
    section = data["authentication_backend"]["ldap"]
    stand_in = tmp_path / "file"
    stand_in.write_text("secret\n")
    for key in ("bind_password_file", "ca_file"):
        if key in section:
            section[key] = str(stand_in)
    assert parse_config(data).authentication_backend.ldap is not None
