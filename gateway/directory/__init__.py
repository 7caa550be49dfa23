"""Users from an LDAP directory (docs/ldap.md).

Pure parts: `presets` (what each implementation fills in), `filters` (RFC 4515 / 4514
escaping and the placeholders of the search filters), `entries` (directory entries to
users and groups, the disabled-account rule, what a re-check decides). I/O: `client`
(the only module that imports bonsai) and `service` (login and the background re-check,
over the client and the store).
"""
