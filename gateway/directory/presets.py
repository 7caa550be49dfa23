# ruff: noqa: S106 - "password_changed" holds an attribute name, never a password
"""PURE: what each directory implementation fills in when the configuration leaves it out.

Modelled on Authelia's LDAP implementations (internal/configuration/schema), checked
against each product's documentation; docs/ldap.md has a worked example for each.
`disabled` names the attribute test authgate itself applies to an entry (on top of the
users_filter, which may already exclude disabled accounts on the server side).
"""

from __future__ import annotations

from dataclasses import dataclass

IMPLEMENTATIONS = ("openldap", "lldap", "activedirectory", "freeipa", "glauth")
GROUP_SEARCH_MODES = ("filter", "memberof")


@dataclass(frozen=True, slots=True)
class Preset:
    users_filter: str
    groups_filter: str
    group_search_mode: str  # "filter": search groups with groups_filter; "memberof": read member_of
    users_dn: str  # under base_dn, e.g. "ou=people"; "" = base_dn itself
    groups_dn: str
    external_id: str  # a stable id that survives renames
    username: str
    display_name: str
    mail: str
    member_of: str
    group_name: str
    password_changed: str  # attribute that changes with the password ("" = none known)
    disabled: str  # which disabled-account rule applies (entries.is_disabled)
    timeout: float


_MAIL_OR_NAME = "(|({username_attribute}={input})({mail_attribute}={input}))"

PRESETS: dict[str, Preset] = {
    # OpenLDAP with inetOrgPerson users and groupOfNames groups; accounts locked by the
    # ppolicy overlay (pwdAccountLockedTime=000001010000Z) count as disabled.
    "openldap": Preset(
        users_filter=f"(&{_MAIL_OR_NAME}(objectClass=inetOrgPerson))",
        groups_filter="(&(member={dn})(objectClass=groupOfNames))",
        group_search_mode="filter",
        users_dn="",
        groups_dn="",
        external_id="entryUUID",
        username="uid",
        display_name="displayName",
        mail="mail",
        member_of="memberOf",
        group_name="cn",
        password_changed="pwdChangedTime",
        disabled="ppolicy",
        timeout=5.0,
    ),
    "lldap": Preset(
        users_filter=f"(&{_MAIL_OR_NAME}(objectClass=person))",
        groups_filter="(&(member={dn})(objectClass=groupOfUniqueNames))",
        group_search_mode="filter",
        users_dn="ou=people",
        groups_dn="ou=groups",
        external_id="entryUUID",
        username="uid",
        display_name="cn",
        mail="mail",
        member_of="memberOf",
        group_name="cn",
        password_changed="",
        disabled="none",
        timeout=5.0,
    ),
    # Enabled normal user accounts only (sAMAccountType 805306368, ACCOUNTDISABLE bit 2 of
    # userAccountControl clear, password not expired-by-admin, account not expired).
    "activedirectory": Preset(
        users_filter=(
            f"(&{_MAIL_OR_NAME}(sAMAccountType=805306368)"
            "(!(userAccountControl:1.2.840.113556.1.4.803:=2))(!(pwdLastSet=0))"
            "(|(!(accountExpires=*))(accountExpires=0)(accountExpires>={date-time:microsoft-nt})))"
        ),
        groups_filter="(&(member={dn})(|(sAMAccountType=268435456)(sAMAccountType=536870912)))",
        group_search_mode="filter",
        users_dn="",
        groups_dn="",
        external_id="objectGUID",
        username="sAMAccountName",
        display_name="displayName",
        mail="mail",
        member_of="memberOf",
        group_name="cn",
        password_changed="pwdLastSet",
        disabled="userAccountControl",
        timeout=5.0,
    ),
    "freeipa": Preset(
        users_filter=(
            f"(&{_MAIL_OR_NAME}(objectClass=person)(!(nsAccountLock=TRUE))"
            "(krbPasswordExpiration>={date-time:generalized})"
            "(|(!(krbPrincipalExpiration=*))(krbPrincipalExpiration>={date-time:generalized})))"
        ),
        groups_filter="(&(member={dn})(objectClass=groupOfNames))",
        group_search_mode="filter",
        users_dn="cn=users,cn=accounts",
        groups_dn="cn=groups,cn=accounts",
        external_id="ipaUniqueID",
        username="uid",
        display_name="displayName",
        mail="mail",
        member_of="memberOf",
        group_name="cn",
        password_changed="krbLastPwdChange",
        disabled="nsAccountLock",
        timeout=5.0,
    ),
    "glauth": Preset(
        users_filter=f"(&{_MAIL_OR_NAME}(objectClass=posixAccount)(!(accountStatus=inactive)))",
        groups_filter="(&(uniqueMember={dn})(objectClass=posixGroup))",
        group_search_mode="filter",
        users_dn="",
        groups_dn="",
        external_id="uidNumber",
        username="cn",
        display_name="description",
        mail="mail",
        member_of="memberOf",
        group_name="cn",
        password_changed="",
        disabled="accountStatus",
        timeout=5.0,
    ),
}

# Attributes each disabled-account rule reads from the user entry.
DISABLED_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "none": (),
    "ppolicy": ("pwdAccountLockedTime",),
    "userAccountControl": ("userAccountControl",),
    "nsAccountLock": ("nsAccountLock",),
    "accountStatus": ("accountStatus",),
}
