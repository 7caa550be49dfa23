"""Configuration: YAML file + AUTHGATE_* environment -> frozen dataclasses.

Every error names the key path, the bad value and what is allowed; all errors
are collected and raised together in one ConfigError.
"""

from __future__ import annotations

import dataclasses
import difflib
import email.utils
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Network, IPv6Network, ip_network
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.directory import filters as ldap_filters
from gateway.directory.presets import GROUP_SEARCH_MODES, IMPLEMENTATIONS, PRESETS
from gateway.errors import ConfigError
from gateway.factors.passkeys import USER_VERIFICATION, check_relying_party, origin_of
from gateway.models import Level, Policy
from gateway.oidc.clients import (
    AUTH_METHODS,
    CONSENT_MODES,
    DEFAULT_SCOPES,
    GRANT_TYPES,
    SCOPES,
    SIGNING_ALGS,
    OidcClient,
    OidcProviderConfig,
    client_id_problem,
    issuer_problem,
    redirect_uri_problem,
    secret_hash_problem,
)
from gateway.store.dsn import dsn_problem

Network = IPv4Network | IPv6Network

LOOPBACK_NETWORKS: tuple[Network, ...] = (ip_network("127.0.0.0/8"), ip_network("::1/128"))


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 9091
    workers: int = 1  # 0 = one per CPU core
    trusted_proxies: tuple[Network, ...] = LOOPBACK_NETWORKS


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"  # debug | info | warning | error
    format: str = "json"  # json | text


@dataclass(frozen=True)
class PostgresConfig:
    # postgresql://user:password@host:port/database; AUTHGATE_STORAGE_POSTGRES_DSN_FILE or
    # dsn_file read it from a file. Never logged: errors show it with the password as ***.
    dsn: str = field(default="", repr=False)
    dsn_file: str = ""
    pool_size: int = 10  # most connections one authgate process holds open
    connect_timeout: float = 5.0  # seconds to open a connection (or get one from the pool)
    statement_timeout: float = 5.0  # seconds a statement may run on the server (then a 503)
    # Prepared-statement cache off, for PgBouncer in transaction mode (costs a little per query).
    pgbouncer: bool = False


@dataclass(frozen=True)
class StorageConfig:
    data_dir: str = "./data"  # SQLite database and generated secrets live here
    # Longest a request waits for a database another writer holds (SQLite's busy timeout, and
    # the wait for this process's own connection); then it fails with a 503, never hangs.
    busy_timeout: float = 5.0
    # sqlite (one machine, the default) | postgres (several instances; docs/scaling.md).
    # Left out, it is postgres when storage.postgres.dsn is set.
    engine: str = "sqlite"
    postgres: PostgresConfig = field(default_factory=PostgresConfig)

    @property
    def database_path(self) -> str:
        return f"{self.data_dir.rstrip('/')}/authgate.sqlite3"


@dataclass(frozen=True)
class SecretsConfig:
    # Newest key first. Empty = generated once into data_dir/secrets/session_keys.
    session_keys: tuple[str, ...] = ()
    # Root of the keys that encrypt TOTP secrets and pepper recovery-code hashes.
    # Empty = generated once into data_dir/secrets/storage_key.
    storage_key: str = ""


@dataclass(frozen=True)
class CookieDomain:
    domain: str  # "example.com" covers example.com and *.example.com; "localhost" is host-only
    portal_url: str  # where the login portal is reachable for this domain, e.g. https://auth.example.com
    default_redirect_url: str | None = None  # where to go after login when no rd was given


@dataclass(frozen=True)
class SessionConfig:
    cookies: tuple[CookieDomain, ...] = (
        CookieDomain(domain="localhost", portal_url="http://localhost:8080/auth"),
    )
    cookie_name: str = "authgate_session"
    secure: bool = True  # may be false only when every cookie domain is localhost
    expiration: float = 3600.0  # seconds; absolute lifetime of a normal session
    inactivity: float = 300.0  # seconds; idle timeout (not applied to remember-me sessions); 0 = off
    remember_me: float = 30 * 86400.0  # seconds; lifetime when "remember me" is ticked; 0 = no checkbox
    cache_ttl: float = 5.0  # seconds; max staleness of the forward-auth session cache
    activity_flush_interval: float = 10.0  # seconds; how often last-activity is written back


@dataclass(frozen=True)
class Argon2Config:
    time_cost: int = 3
    memory_cost: int = 65536  # KiB
    parallelism: int = 4
    max_concurrent: int = 2  # argon2 verifies running at once (bounds memory and CPU)
    niceness: int = 10  # how many nice levels below the event loop argon2 threads run (0-19)
    cpus: tuple[int, ...] = ()  # the CPUs argon2 threads may run on (empty: any)


@dataclass(frozen=True)
class RegulationConfig:
    max_retries: int = 5  # 0 = regulation off
    find_time: float = 120.0  # seconds
    ban_time: float = 300.0  # seconds


@dataclass(frozen=True)
class IdentityHeadersConfig:
    user: str = "Remote-User"
    email: str = "Remote-Email"
    groups: str = "Remote-Groups"
    name: str = "Remote-Name"


@dataclass(frozen=True)
class AccessRule:
    policy: Policy
    domains: tuple[str, ...] = ()  # exact "app.example.com" or wildcard "*.example.com"; empty = any
    paths: tuple[str, ...] = ()  # regexes (re.search) on the normalised path, not the query; empty = any
    methods: tuple[str, ...] = ()  # upper case; empty = any
    networks: tuple[Network, ...] = ()  # client address CIDRs; empty = any
    subjects: tuple[str, ...] = ()  # "user:NAME" / "group:NAME"; empty = anyone
    path_case: str = "sensitive"  # "insensitive": paths also match in any letter case (/ADMIN)


@dataclass(frozen=True)
class AccessControlConfig:
    default_policy: Policy = Policy.DENY
    rules: tuple[AccessRule, ...] = ()
    # "refuse": 400 for a path an upstream may read as another (;params, backslash, %2f ...);
    # "allow": match its canonical path anyway (see docs/access-control.md).
    ambiguous_paths: str = "refuse"


@dataclass(frozen=True)
class PortalConfig:
    title: str = "authgate"
    admin_group: str = "admins"


@dataclass(frozen=True)
class TotpConfig:
    digits: int = 6  # 6 | 8
    period: int = 30  # seconds per code, 15-120
    algorithm: str = "SHA1"  # SHA1 | SHA256 | SHA512 (upper case)
    skew: int = 1  # time steps accepted either side of the current one, 0-10


@dataclass(frozen=True)
class TwoFactorConfig:
    mode: str = "optional"  # disabled | optional | required
    issuer: str = "authgate"  # shown by authenticator apps next to the account
    totp: TotpConfig = field(default_factory=TotpConfig)  # settings for newly enrolled devices
    recovery_codes: int = 10  # codes per generated set, 4-32
    pending_ttl: float = 300.0  # seconds between password and second factor, > 0 and <= 1h
    pending_max_attempts: int = 5  # wrong codes before starting over, 1-20


@dataclass(frozen=True)
class WebAuthnConfig:
    # Loading fills these from other keys when they are not set: rp_id from the first session cookie
    # domain, rp_name from portal.title, origins from the portal_urls under rp_id. The literals below
    # are what that gives for the default session and portal sections. rp_id is "" (and origins
    # empty) only when no cookie domain can be an RP ID (e.g. 127.0.0.1): see `available`.
    rp_id: str = "localhost"
    rp_name: str = "authgate"
    origins: tuple[str, ...] = ("http://localhost:8080",)
    user_verification: str = "preferred"  # required | preferred | discouraged
    timeout: float = 60.0  # seconds a ceremony (and its challenge) stays valid

    @property
    def available(self) -> bool:
        return bool(self.rp_id and self.origins)

    def allows_origin(self, origin: str) -> bool:
        """True when passkeys work on a portal served from `origin` (scheme://host[:port])."""
        return origin in self.origins


@dataclass(frozen=True)
class FileNotifierConfig:
    directory: str = "./data/mail"  # loading makes the default <storage.data_dir>/mail


@dataclass(frozen=True)
class SmtpConfig:
    host: str = ""  # required when notifier.type is smtp
    port: int = 587
    security: str = "starttls"  # starttls | tls | none (none only to localhost)
    username: str = ""  # empty = no AUTH
    password: str = field(default="", repr=False)  # read from password_file when that is given
    password_file: str = ""
    sender: str = "authgate <authgate@localhost>"
    timeout: float = 10.0  # seconds, per SMTP operation
    tls_skip_verify: bool = False  # accept any server certificate (testing only)


@dataclass(frozen=True)
class NotifierConfig:
    type: str = "file"  # file | smtp
    file: FileNotifierConfig = field(default_factory=FileNotifierConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)


@dataclass(frozen=True)
class AccountRecoveryConfig:
    link_ttl: float = 900.0  # seconds a recovery link works, 1m-24h


@dataclass(frozen=True)
class AppPasswordsConfig:
    # What an app password counts as at forward-auth; a token never counts for more than the
    # session that created it. Revocation reaches forward-auth within session.cache_ttl.
    level: Level = Level.TWO_FACTOR  # one_factor | two_factor
    max_per_user: int = 50  # live app passwords per user, 1-1000
    default_expiry: float = 0.0  # seconds offered as the expiry of a new token; 0 = never
    reauth_after: float = 600.0  # creating one asks for a factor again when the last check is older


@dataclass(frozen=True)
class AdminConfig:
    reauth_after: float = 300.0  # admin actions ask for a factor again when the last check is older


@dataclass(frozen=True)
class AuditConfig:
    retention: float = 0.0  # seconds audit rows are kept; 0 = forever


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = False  # Prometheus metrics (docs/operations.md); off unless asked for
    # host:port of a separate listener serving /metrics; "" = /api/metrics on the main listener
    listen: str = "127.0.0.1:9959"
    # Bearer token a scrape must send; AUTHGATE_METRICS_TOKEN_FILE reads it from a file.
    token: str = field(default="", repr=False)


@dataclass(frozen=True)
class ClaimMapping:
    """Which ID token / userinfo claim fills each account field (OIDC providers)."""

    username: str = "preferred_username"
    email: str = "email"
    display_name: str = "name"
    groups: str = "groups"


@dataclass(frozen=True)
class ExternalAllowList:
    """Who may sign in through a provider; a match on any one list admits (see docs/external-login.md)."""

    allow_any: bool = False  # explicit "anyone the provider knows"; never the default
    email_domains: tuple[str, ...] = ()  # lower case; matched against a verified e-mail only
    emails: tuple[str, ...] = ()  # lower case; verified e-mail only
    groups: tuple[str, ...] = ()  # from the groups claim (OIDC)
    organizations: tuple[str, ...] = ()  # GitHub organisation logins, lower case


@dataclass(frozen=True)
class ExternalProvider:
    """One upstream identity provider (OIDC by discovery, or GitHub's OAuth2)."""

    id: str  # in URLs and the link table: lower-case letters, digits and '-'
    type: str  # "oidc" | "github"
    label: str  # the button says "Sign in with <label>"
    client_id: str
    client_secret: str = field(default="", repr=False)  # read from client_secret_file when that is given
    # oidc: the issuer; discovery is issuer + /.well-known/openid-configuration unless discovery_url is set
    issuer: str = ""
    discovery_url: str = ""
    # github: where the user authorises (web) and the REST API (GitHub Enterprise: https://ghe/api/v3)
    web_url: str = "https://github.com"
    api_url: str = "https://api.github.com"
    scopes: tuple[str, ...] = ()
    claims: ClaimMapping = field(default_factory=ClaimMapping)
    allow: ExternalAllowList = field(default_factory=ExternalAllowList)
    link: bool = True  # an existing account with the same verified e-mail may be linked (after its password)
    auto_create: bool = False  # create a local account on first sign-in; off unless asked for
    groups: tuple[str, ...] = ()  # local groups given to accounts auto_create makes
    # "local": our own second factor still applies; "provider": trust the provider's amr claim
    two_factor: str = "local"
    trusted_amr: tuple[str, ...] = ("mfa", "otp", "hwk", "sc")  # amr values that count as a second factor
    # Entra and some others send no email_verified claim: trust their e-mail as verified only on request.
    assume_email_verified: bool = False
    timeout: float = 10.0  # seconds for each request to the provider


@dataclass(frozen=True)
class ExternalLoginConfig:
    providers: tuple[ExternalProvider, ...] = ()
    login_ttl: float = 600.0  # seconds between the button and the provider's callback (state, nonce, PKCE)


@dataclass(frozen=True)
class LdapAttributes:
    # "" = the implementation's default (gateway/directory/presets.py), filled in when loading
    external_id: str = ""
    username: str = ""
    display_name: str = ""
    mail: str = ""
    member_of: str = ""
    group_name: str = ""
    password_changed: str = ""


@dataclass(frozen=True)
class LdapConfig:
    """authentication_backend.ldap (docs/ldap.md); loading fills every "" from the preset."""

    implementation: str = "openldap"  # openldap | lldap | activedirectory | freeipa | glauth
    url: str = ""  # ldap://host[:port] (with StartTLS unless start_tls: false) or ldaps://host[:port]
    start_tls: bool = True  # for ldap:// URLs; false is allowed only to a loopback address
    ca_file: str = ""  # PEM bundle to verify the server with; "" = the system's
    tls_skip_verify: bool = False  # accept any certificate (testing only; config check warns)
    bind_dn: str = ""  # the service account authgate searches with
    bind_password: str = field(default="", repr=False)  # or bind_password_file
    bind_password_file: str = ""
    base_dn: str = ""
    users_dn: str = ""  # below base_dn, e.g. ou=people ("" = the preset's, or base_dn itself)
    groups_dn: str = ""
    users_filter: str = ""  # placeholders: {input} {username_attribute} {mail_attribute} {date-time:...}
    groups_filter: str = ""  # placeholders: {dn} {username} {input} {date-time:...}
    group_search_mode: str = ""  # filter | memberof
    disabled_rule: str = ""  # filled from the implementation: which attribute disables an account
    attributes: LdapAttributes = field(default_factory=LdapAttributes)
    timeout: float = 0.0  # seconds, per LDAP operation (connect, bind, search); 0 = the preset's
    pool_size: int = 4  # service-account connections kept open
    refresh_interval: float = 300.0  # seconds between re-checks of a signed-in user against the directory
    password_change: bool = True  # offer password change through the directory (RFC 3062)

    @property
    def users_base(self) -> str:
        return f"{self.users_dn},{self.base_dn}" if self.users_dn else self.base_dn

    @property
    def groups_base(self) -> str:
        return f"{self.groups_dn},{self.base_dn}" if self.groups_dn else self.base_dn


@dataclass(frozen=True)
class AuthenticationBackendConfig:
    # None = local users only. Set: local users first, then the directory (docs/ldap.md).
    ldap: LdapConfig | None = None


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    password: Argon2Config = field(default_factory=Argon2Config)
    regulation: RegulationConfig = field(default_factory=RegulationConfig)
    identity_headers: IdentityHeadersConfig = field(default_factory=IdentityHeadersConfig)
    access_control: AccessControlConfig = field(default_factory=AccessControlConfig)
    portal: PortalConfig = field(default_factory=PortalConfig)
    two_factor: TwoFactorConfig = field(default_factory=TwoFactorConfig)
    webauthn: WebAuthnConfig = field(default_factory=WebAuthnConfig)
    notifier: NotifierConfig = field(default_factory=NotifierConfig)
    account_recovery: AccountRecoveryConfig = field(default_factory=AccountRecoveryConfig)
    app_passwords: AppPasswordsConfig = field(default_factory=AppPasswordsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    external_login: ExternalLoginConfig = field(default_factory=ExternalLoginConfig)
    authentication_backend: AuthenticationBackendConfig = field(default_factory=AuthenticationBackendConfig)
    oidc_provider: OidcProviderConfig = field(default_factory=OidcProviderConfig)


def config_warnings(config: Config) -> list[tuple[str, str]]:
    """Return settings that are valid but unsafe outside a test setup, as (key path, message)."""
    found: list[tuple[str, str]] = []
    ldap = config.authentication_backend.ldap
    if ldap is not None and ldap.tls_skip_verify:
        found.append(
            (
                "authentication_backend.ldap.tls_skip_verify",
                "true: any certificate is accepted, so whoever can intercept the connection sees "
                "every directory password; use ca_file instead",
            )
        )
    if config.notifier.type == "smtp" and config.notifier.smtp.tls_skip_verify:
        found.append(("notifier.smtp.tls_skip_verify", "true: any mail server certificate is accepted"))
    return found


# --- Loading -----------------------------------------------------------------------------------------

ENV_PREFIX = "AUTHGATE_"
CONFIG_PATH_VARIABLE = "AUTHGATE_CONFIG"  # read by the CLI, not a configuration key
FILE_SUFFIX = "_FILE"

Problems = list[tuple[str, str]]
_Parser = Callable[[Any, str, Problems], Any]


class _Invalid:
    """Marks a value that produced a problem; the default is used so checking can go on."""


_INVALID = _Invalid()
_NO_ENVIRONMENT: Mapping[str, str] = MappingProxyType({})

_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("json", "text")
_POLICIES = tuple(policy.value for policy in Policy)
_HTTP_METHODS = (
    *("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"),
    *("PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "MKCALENDAR"),
)
_MIN_SESSION_KEY_LENGTH = 32
_MIN_STORAGE_KEY_LENGTH = 32
_TWO_FACTOR_MODES = ("disabled", "optional", "required")
_TOTP_DIGITS = (6, 8)
_TOTP_ALGORITHMS = ("SHA1", "SHA256", "SHA512")
_MAX_ISSUER_LENGTH = 64
_MAX_PENDING_TTL = 3600.0
_MAX_CACHE_TTL = 60.0
_MAX_BUSY_TIMEOUT = 60.0  # seconds: a request should fail, not wait longer than this for the database
_MAX_REAUTH_AFTER = 86400.0
_MIN_AUDIT_RETENTION = 86400.0  # shorter would erase the trail of an attack before anyone looks
_TOKEN_LEVELS = {"one_factor": Level.ONE_FACTOR, "two_factor": Level.TWO_FACTOR}
_NOTIFIER_TYPES = ("file", "smtp")
_STORAGE_ENGINES = ("sqlite", "postgres")
_SMTP_SECURITY = ("starttls", "tls", "none")
_LOCAL_SMTP_HOSTS = ("localhost", "127.0.0.1", "::1")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATION_HELP = "use seconds or a number with s/m/h/d/w (e.g. 90s, 5m, 1h)"
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token; also RFC 6265 cookie-name
# The gateway reads or the proxy rewrites these, so an identity header with such a name would either
# be dropped on the way or let the identity overwrite routing and trust information.
_RESERVED_HEADERS = frozenset(
    {
        *("host", "cookie", "set-cookie", "authorization", "proxy-authorization", "www-authenticate"),
        *("proxy-authenticate", "content-length", "content-type", "content-encoding", "transfer-encoding"),
        *("connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect", "date"),
        *("location", "via", "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"),
        *("x-forwarded-port", "x-forwarded-uri", "x-forwarded-method", "x-original-url"),
        *("x-original-method", "x-real-ip"),
    }
)


def load_config(path: str | None, environ: Mapping[str, str]) -> Config:
    """Read the YAML file at `path` (None = no file), apply AUTHGATE_* variables and validate."""
    data: object = None
    if path is not None:
        try:
            with open(path, encoding="utf-8") as stream:
                text = stream.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([(path, f"cannot read the configuration file: {_reason(exc)}")]) from exc
        try:
            data = _load_yaml(text)
        except yaml.YAMLError as exc:
            raise ConfigError([(path, f"not valid YAML: {_one_line(exc)}")]) from exc
    return parse_config(data, environ)


def parse_config(data: object, environ: Mapping[str, str] = _NO_ENVIRONMENT) -> Config:
    """Turn parsed YAML plus AUTHGATE_* variables into a Config, reporting every problem at once."""
    problems: Problems = []
    overrides, sources = _environment_overrides(environ, problems)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(("(top level)", f"{_show(data)} is not a mapping; start with sections like server:"))
        data = {}
    _check_keys(data, _SCHEMA, "", problems)
    failed: set[str] = set()
    sections = {
        name: _parse_section(name, data.get(name), overrides.get(name, {}), sources, problems, failed)
        for name in _SCHEMA
    }
    config = Config(**sections)
    _check_across_keys(config, failed, problems)
    config = _resolve_defaults(config, data, overrides, failed, problems)
    _check_metrics(config, failed, problems)
    _check_oidc_provider(config, failed, problems)
    if problems:
        raise ConfigError(problems)
    return config


def env_variable_names() -> dict[str, str]:
    """Map every AUTHGATE_* variable to the key path it overrides."""
    names: dict[str, str] = {}
    for section, (_, parsers) in _SCHEMA.items():
        for key in parsers:
            path = f"{section}.{key}"
            nested = _NESTED_SECTIONS.get(path)
            if nested is None:
                names[f"{ENV_PREFIX}{section}_{key}".upper()] = path
                continue
            # A variable per nested key (AUTHGATE_STORAGE_POSTGRES_DSN); *_file keys have
            # none, since every variable has its own _FILE form.
            for sub in nested:
                if not sub.endswith("_file"):
                    names[f"{ENV_PREFIX}{section}_{key}_{sub}".upper()] = f"{path}.{sub}"
    return names


# --- Sections and environment -------------------------------------------------------------------------


def _parse_section(
    name: str,
    raw: object,
    overrides: dict[str, object],
    sources: dict[str, str],
    problems: Problems,
    failed: set[str],
) -> Any:
    cls, parsers = _SCHEMA[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append((name, f"{_show(raw)} is not a mapping; allowed keys: {', '.join(parsers)}"))
        raw = {}
    _check_keys(raw, parsers, name, problems)
    values = {**raw, **overrides}
    for key, override in overrides.items():
        # a nested key set by a variable joins the file's mapping rather than replacing it
        if isinstance(override, dict) and isinstance(raw.get(key), dict):
            values[key] = {**raw[key], **override}
    kwargs: dict[str, Any] = {}
    for key, parse in parsers.items():
        # null means "not set", so `inactivity:` with nothing after it keeps the default
        if values.get(key) is None:
            continue
        leaf = f"{name}.{key}"
        found: Problems = []
        value = parse(values[key], leaf, found)
        found = [
            (where, f"{message} (set by {sources[source]})") if source in sources else (where, message)
            for where, message in found
            for source in (where if where in sources else leaf,)
        ]
        problems.extend(found)
        if value is _INVALID:
            failed.add(leaf)
            continue
        kwargs[key] = value
    return cls(**kwargs)


def _environment_overrides(
    environ: Mapping[str, str], problems: Problems
) -> tuple[dict[str, dict[str, object]], dict[str, str]]:
    """Collect AUTHGATE_* values by section; also say which variable set each key path."""
    names = env_variable_names()
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX) or variable == CONFIG_PATH_VARIABLE:
            continue
        if variable in names or variable.removesuffix(FILE_SUFFIX) in names:
            continue
        # compare without the shared prefix, or every name looks alike
        suffixes = [name.removeprefix(ENV_PREFIX) for name in (*names, CONFIG_PATH_VARIABLE)]
        hint = _did_you_mean(variable.removeprefix(ENV_PREFIX), suffixes, prefix=ENV_PREFIX)
        problems.append(
            (
                variable,
                f"unknown variable{hint}; names are AUTHGATE_ + the key path, "
                "e.g. AUTHGATE_SERVER_PORT for server.port",
            )
        )

    overrides: dict[str, dict[str, object]] = {}
    sources: dict[str, str] = {}
    for variable, key in names.items():
        file_variable = variable + FILE_SUFFIX
        if variable in environ and file_variable in environ:
            problems.append((variable, f"both {variable} and {file_variable} are set; use one"))
            continue
        if variable in environ:
            value = _env_value(key, environ[variable], variable, problems)
            source = variable
        elif file_variable in environ:
            value = _env_file_value(key, environ[file_variable], file_variable, problems)
            source = file_variable
        else:
            continue
        if value is _INVALID:
            continue
        section, leaf, *nested = key.split(".")
        if nested:
            inner = overrides.setdefault(section, {}).setdefault(leaf, {})
            assert isinstance(inner, dict)  # noqa: S101 - only nested keys put dicts here
            inner[nested[0]] = value
        else:
            overrides.setdefault(section, {})[leaf] = value
        sources[key] = source
    return overrides, sources


def _env_value(key: str, text: str, variable: str, problems: Problems) -> object:
    # Plain string keys are taken verbatim: YAML would turn a title like "yes" into true.
    if key in _STRING_KEYS:
        return text
    try:
        return _load_yaml(text)
    except yaml.YAMLError as exc:
        problems.append((variable, f"not valid YAML ({_one_line(exc)}); quote it or use [a, b] for lists"))
        return _INVALID


def _env_file_value(key: str, file_path: str, variable: str, problems: Problems) -> object:
    try:
        with open(file_path, encoding="utf-8") as stream:
            text = stream.read().removesuffix("\n")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append((variable, f"cannot read {file_path}: {_reason(exc)}"))
        return _INVALID
    if key == "secrets.session_keys":
        # one key per line, so rotating is "add a line at the top"
        return [line.strip() for line in text.splitlines() if line.strip()]
    return _env_value(key, text, variable, problems)


def _check_keys(mapping: dict[Any, Any], allowed: Iterable[str], prefix: str, problems: Problems) -> None:
    allowed = list(allowed)
    for key in mapping:
        if key in allowed:
            continue
        path = f"{prefix}.{key}" if prefix else str(key)
        hint = _did_you_mean(str(key), allowed)
        problems.append((path, f"unknown key{hint}; allowed: {', '.join(allowed)}"))


def _check_across_keys(config: Config, failed: set[str], problems: Problems) -> None:
    """Check rules that relate several keys, skipping any whose inputs were already reported."""
    session = config.session
    if not failed & {"session.secure", "session.cookies"} and not session.secure:
        remote = [cookie.domain for cookie in session.cookies if not _is_local_host(cookie.domain)]
        if remote:
            problems.append(
                (
                    "session.secure",
                    f"false, but cookie domain(s) {', '.join(remote)} are not localhost; "
                    "cookies may be sent without Secure only for http://localhost",
                )
            )
    if "session.cookie_name" not in failed:
        name = session.cookie_name
        if name.startswith("__Host-"):
            problems.append(
                ("session.cookie_name", f"{_show(name)}: __Host- cookies cannot carry the Domain attribute")
            )
        if name.startswith("__Secure-") and not session.secure and "session.secure" not in failed:
            problems.append(
                ("session.cookie_name", f"{_show(name)}: __Secure- cookies need session.secure: true")
            )

    password = config.password
    if not failed & {"password.memory_cost", "password.parallelism"}:
        minimum = 8 * password.parallelism
        if password.memory_cost < minimum:
            problems.append(
                (
                    "password.memory_cost",
                    f"{password.memory_cost} is too small; argon2 needs at least 8 KiB per lane, "
                    f"so use >= {minimum} for parallelism {password.parallelism}",
                )
            )

    seen: dict[str, str] = {}
    for key in ("user", "email", "groups", "name"):
        path = f"identity_headers.{key}"
        if path in failed:
            continue
        header = getattr(config.identity_headers, key).lower()
        if header in seen:
            problems.append((path, f"{_show(header)} is already used by identity_headers.{seen[header]}"))
            continue
        seen[header] = key

    _check_two_factor_rules(config, failed, problems)


def _check_two_factor_rules(config: Config, failed: set[str], problems: Problems) -> None:
    """Refuse two_factor policies when two_factor.mode is disabled: nobody could ever satisfy them."""
    if "two_factor.mode" in failed or config.two_factor.mode != "disabled":
        return
    access = config.access_control
    hint = "never satisfiable with two_factor.mode: disabled; use optional or required, or another policy"
    if "access_control.default_policy" not in failed and access.default_policy is Policy.TWO_FACTOR:
        problems.append(("access_control.default_policy", f"two_factor is {hint}"))
    if "access_control.rules" not in failed:
        for index, rule in enumerate(access.rules):
            if rule.policy is Policy.TWO_FACTOR:
                problems.append((f"access_control.rules[{index}].policy", f"two_factor is {hint}"))


# --- Defaults that depend on other keys -----------------------------------------------------------------


def _was_set(
    data: object, overrides: dict[str, dict[str, object]], section: str, key: str, *nested: str
) -> bool:
    """Say whether the file or the environment gave a (non-null) value for the key path."""
    raw = data.get(section) if isinstance(data, dict) else None
    for source in (raw, overrides.get(section)):
        value = source.get(key) if isinstance(source, dict) else None
        for inner in nested:
            value = value.get(inner) if isinstance(value, dict) else None
        if value is not None:
            return True
    return False


def _resolve_defaults(
    config: Config,
    data: object,
    overrides: dict[str, dict[str, object]],
    failed: set[str],
    problems: Problems,
) -> Config:
    """Fill in defaults taken from other keys (RP ID, origins, mail folder) and check the result."""
    webauthn = _resolve_webauthn(config, data, overrides, failed, problems)
    notifier = config.notifier
    if not _was_set(data, overrides, "notifier", "file", "directory"):
        directory = f"{config.storage.data_dir.rstrip('/')}/mail"
        notifier = dataclasses.replace(notifier, file=FileNotifierConfig(directory=directory))
    if "notifier.type" not in failed and "notifier.smtp" not in failed and notifier.type == "smtp":
        _check_smtp(notifier.smtp, problems)
    storage = _resolve_storage(config.storage, data, overrides, failed, problems)
    oidc = config.oidc_provider
    if oidc.enabled and not oidc.issuer:
        # The provider lives where the portal does unless told otherwise.
        oidc = dataclasses.replace(oidc, issuer=config.session.cookies[0].portal_url.rstrip("/"))
    return dataclasses.replace(
        config, webauthn=webauthn, notifier=notifier, storage=storage, oidc_provider=oidc
    )


def _resolve_storage(
    storage: StorageConfig,
    data: object,
    overrides: dict[str, dict[str, object]],
    failed: set[str],
    problems: Problems,
) -> StorageConfig:
    """Infer storage.engine from storage.postgres.dsn, and refuse an engine without what it needs."""
    if failed & {"storage.engine", "storage.postgres"}:
        return storage
    has_dsn = bool(storage.postgres.dsn)
    if not _was_set(data, overrides, "storage", "engine"):
        return dataclasses.replace(storage, engine="postgres") if has_dsn else storage
    if storage.engine == "postgres" and not has_dsn:
        problems.append(
            (
                "storage.postgres.dsn",
                "required when storage.engine is postgres; set it (or storage.postgres.dsn_file, "
                "or AUTHGATE_STORAGE_POSTGRES_DSN_FILE) to a URI like postgresql://authgate@db:5432/authgate",
            )
        )
    if storage.engine == "sqlite" and has_dsn:
        problems.append(
            (
                "storage.engine",
                "sqlite, but storage.postgres.dsn is set; use engine: postgres, or remove the dsn",
            )
        )
    return storage


def _check_metrics(config: Config, failed: set[str], problems: Problems) -> None:
    """Refuse metrics that anyone could scrape."""
    metrics = config.metrics
    if "metrics.token" in failed:
        return
    if not metrics.enabled or failed & {"metrics.enabled", "metrics.listen"}:
        return
    if not metrics.listen:
        if not metrics.token:
            problems.append(
                (
                    "metrics.token",
                    "required when metrics.listen is empty (metrics on the main listener at /api/metrics); "
                    "set a token, or a separate listener such as metrics.listen: 127.0.0.1:9959",
                )
            )
        return
    host, port = split_listen(metrics.listen)
    if not metrics.token and not _is_loopback_host(host):
        problems.append(
            (
                "metrics.listen",
                f"{_show(metrics.listen)} can be reached from other hosts; set metrics.token "
                "(or AUTHGATE_METRICS_TOKEN_FILE) too, or listen on 127.0.0.1",
            )
        )
    if "server.port" not in failed and port == config.server.port:
        problems.append(
            ("metrics.listen", f"port {port} is server.port; give the metrics listener a port of its own")
        )


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_network(host).network_address.is_loopback
    except ValueError:
        return False


def split_listen(text: str) -> tuple[str, int]:
    """Split a checked listen value into host and port ([::1]:9959 -> ::1, 9959)."""
    host, _, port = text.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _resolve_webauthn(
    config: Config,
    data: object,
    overrides: dict[str, dict[str, object]],
    failed: set[str],
    problems: Problems,
) -> WebAuthnConfig:
    webauthn = config.webauthn
    rp_name = webauthn.rp_name if _was_set(data, overrides, "webauthn", "rp_name") else config.portal.title
    if failed & {"webauthn.rp_id", "webauthn.origins", "session.cookies"}:
        return dataclasses.replace(webauthn, rp_name=rp_name)
    cookies = config.session.cookies
    portal_origins = list(dict.fromkeys(origin_of(cookie.portal_url) for cookie in cookies))
    rp_id_set = _was_set(data, overrides, "webauthn", "rp_id")
    origins_set = _was_set(data, overrides, "webauthn", "origins")
    rp_id = webauthn.rp_id
    if not rp_id_set:
        # The first cookie domain that browsers accept as an RP ID (never an IP address).
        usable = [c.domain for c in cookies if not check_relying_party(c.domain, [origin_of(c.portal_url)])]
        rp_id = usable[0] if usable else ""
        if not rp_id:
            if origins_set:
                problems.append(
                    (
                        "webauthn.rp_id",
                        "no session cookie domain can serve as the RP ID (browsers refuse IP addresses); "
                        "set webauthn.rp_id to the domain name the portal is under",
                    )
                )
            return dataclasses.replace(webauthn, rp_id="", rp_name=rp_name, origins=())
    under = [origin for origin in portal_origins if _origin_host_fits(origin, rp_id)]
    origins = webauthn.origins if origins_set else tuple(under)
    for message in check_relying_party(rp_id, origins):
        path = "webauthn.rp_id" if "RP ID" in message.split("origin", 1)[0] else "webauthn.origins"
        if path == "webauthn.origins" and not origins_set and not under:
            continue  # the defaults are empty because of rp_id, reported just below
        if path == "webauthn.rp_id" and not rp_id_set:
            message += " (taken from session.cookies; set webauthn.rp_id)"
        problems.append((path, message))
    if not under:
        problems.append(
            (
                "webauthn.rp_id",
                f"{_show(rp_id)} fits no session.cookies[].portal_url ({', '.join(portal_origins)}), so "
                "passkeys would work on no portal; use the domain the portal is under",
            )
        )
    missing = [origin for origin in under if origin not in origins]
    if missing:
        problems.append(
            (
                "webauthn.origins",
                f"lacks the portal origin(s) {', '.join(missing)}; passkeys would fail there. "
                "Add them, or leave webauthn.origins out to use every portal origin under the RP ID",
            )
        )
    return dataclasses.replace(webauthn, rp_id=rp_id, rp_name=rp_name, origins=tuple(origins))


def _origin_host_fits(origin: str, rp_id: str) -> bool:
    host = urlsplit(origin).hostname or ""
    return host == rp_id or (rp_id != "localhost" and host.endswith(f".{rp_id}"))


def _check_smtp(smtp: SmtpConfig, problems: Problems) -> None:
    if not smtp.host:
        problems.append(
            ("notifier.smtp.host", "missing; notifier.type smtp needs the mail server's host name")
        )
    elif smtp.security == "none" and smtp.host not in _LOCAL_SMTP_HOSTS:
        problems.append(
            (
                "notifier.smtp.security",
                f"none sends mail (and any password) unencrypted, allowed only to localhost, not "
                f"{_show(smtp.host)}; use starttls or tls",
            )
        )
    if smtp.username and not smtp.password:
        problems.append(
            ("notifier.smtp.password", "missing while username is set; give password or password_file")
        )
    if smtp.password and not smtp.username:
        problems.append(("notifier.smtp.username", "missing while a password is set"))


# --- Leaf parsers: return the typed value, or add a problem and return _INVALID -----------------------


def _fail(problems: Problems, path: str, message: str) -> _Invalid:
    problems.append((path, message))
    return _INVALID


def _text(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, str):
        return _fail(problems, path, f"{_show(value)} is not a string")
    if not value.strip():
        return _fail(problems, path, "is empty; give a value or remove the key for the default")
    return value


def _choice(choices: tuple[str, ...]) -> _Parser:
    def parse(value: Any, path: str, problems: Problems) -> Any:
        if not isinstance(value, str) or value.lower() not in choices:
            return _fail(problems, path, f"{_show(value)} is not allowed; use one of {', '.join(choices)}")
        return value.lower()

    return parse


def _flag(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, bool):
        return _fail(problems, path, f"{_show(value)} is not a boolean; use true or false")
    return value


def _integer(minimum: int, maximum: int | None = None) -> _Parser:
    allowed = f"{minimum}-{maximum}" if maximum is not None else f"a whole number >= {minimum}"

    def parse(value: Any, path: str, problems: Problems) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            return _fail(problems, path, f"{_show(value)} is not a whole number; use {allowed}")
        if value < minimum or (maximum is not None and value > maximum):
            return _fail(problems, path, f"{value} is out of range; use {allowed}")
        return value

    return parse


def _seconds(value: Any) -> float | None:
    """Read a duration as seconds: a number, or "1h30m" style; None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if re.fullmatch(r"-?\d+(?:\.\d+)?", text):
        return float(text)
    if not _DURATION.fullmatch(text):
        return None
    return float(sum(float(amount) * _DURATION_UNITS[unit] for amount, unit in _DURATION_PART.findall(text)))


def _duration(*, positive: bool = False, maximum: float | None = None) -> _Parser:
    def parse(value: Any, path: str, problems: Problems) -> Any:
        seconds = _seconds(value)
        if seconds is None:
            return _fail(problems, path, f"{_show(value)} is not a duration; {_DURATION_HELP}")
        if seconds < 0:
            return _fail(problems, path, f"{_show(value)} is negative; use 0 or more")
        if positive and seconds == 0:
            return _fail(problems, path, f"{_show(value)} is zero; use more than 0 seconds")
        if maximum is not None and seconds > maximum:
            return _fail(problems, path, f"{_show(value)} is too long; use at most {maximum:g}s")
        return seconds

    return parse


def _duration_between(minimum: float, maximum: float) -> _Parser:
    parse_duration = _duration(positive=True, maximum=maximum)

    def parse(value: Any, path: str, problems: Problems) -> Any:
        seconds = parse_duration(value, path, problems)
        if seconds is _INVALID:
            return _INVALID
        if seconds < minimum:
            return _fail(problems, path, f"{_show(value)} is too short; use at least {minimum:g}s")
        return seconds

    return parse


def _each(
    value: Any,
    path: str,
    parse_item: Callable[[str, str, Problems], Any],
    problems: Problems,
    *,
    secret: bool = False,
) -> Any:
    """Parse a string or a list of strings item by item into a tuple; absent (None) is empty."""
    if value is None:
        return ()
    if isinstance(value, str):
        pairs = [(path, value)]
    elif isinstance(value, list):
        pairs = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
    else:
        shown = "this value" if secret else _show(value)
        return _fail(problems, path, f"{shown} is not a string or a list of strings")
    parsed = []
    for item_path, item in pairs:
        if not isinstance(item, str):
            shown = "this entry" if secret else _show(item)
            parsed.append(_fail(problems, item_path, f"{shown} is not a string"))
            continue
        parsed.append(parse_item(item, item_path, problems))
    if any(item is _INVALID for item in parsed):
        return _INVALID
    return tuple(parsed)


def _network(item: str, path: str, problems: Problems) -> Any:
    try:
        return ip_network(item.strip(), strict=False)
    except ValueError:
        return _fail(
            problems, path, f"{_show(item)} is not an IP network; use an address or a CIDR like 10.0.0.0/8"
        )


def _cpus(value: Any, path: str, problems: Problems) -> Any:
    """A list of CPU numbers of this machine (0 to cores - 1), each once; absent or [] is none."""
    count = os.cpu_count() or 1
    allowed = f"a list of CPU numbers 0-{count - 1}, e.g. [{count - 1}]"
    if value is None:
        return ()
    if isinstance(value, bool) or not isinstance(value, int | list):
        return _fail(problems, path, f"{_show(value)} is not {allowed}")
    items = [value] if isinstance(value, int) else value
    cpus: list[int] = []
    for index, item in enumerate(items):
        item_path = path if isinstance(value, int) else f"{path}[{index}]"
        if isinstance(item, bool) or not isinstance(item, int):
            return _fail(problems, item_path, f"{_show(item)} is not a CPU number; use {allowed}")
        if not 0 <= item < count:
            return _fail(problems, item_path, f"{item} is not a CPU of this machine; use {allowed}")
        if item in cpus:
            return _fail(problems, item_path, f"CPU {item} is listed twice")
        cpus.append(item)
    return tuple(cpus)


def _networks(value: Any, path: str, problems: Problems) -> Any:
    return _each(value, path, _network, problems)


def _session_key(item: str, path: str, problems: Problems) -> Any:
    # never echo the key itself: problems end up in logs
    if len(item) < _MIN_SESSION_KEY_LENGTH:
        return _fail(
            problems,
            path,
            f"key is {len(item)} characters; use at least {_MIN_SESSION_KEY_LENGTH} random characters "
            "(e.g. from `openssl rand -hex 32`)",
        )
    return item


def _session_keys(value: Any, path: str, problems: Problems) -> Any:
    return _each(value, path, _session_key, problems, secret=True)


def _storage_key(value: Any, path: str, problems: Problems) -> Any:
    # never echo the key itself: problems end up in logs
    if not isinstance(value, str):
        return _fail(problems, path, "this value is not a string")
    if len(value) < _MIN_STORAGE_KEY_LENGTH:
        return _fail(
            problems,
            path,
            f"key is {len(value)} characters; use at least {_MIN_STORAGE_KEY_LENGTH} random characters "
            "(e.g. from `openssl rand -hex 32`)",
        )
    return value


def _issuer(value: Any, path: str, problems: Problems) -> Any:
    if _text(value, path, problems) is _INVALID:
        return _INVALID
    if ":" in value:
        # the otpauth:// label is "issuer:account", so a colon would split it in the wrong place
        return _fail(problems, path, f"{_show(value)} contains ':', which authenticator apps cannot show")
    if len(value) > _MAX_ISSUER_LENGTH:
        return _fail(
            problems, path, f"{_show(value)} is too long; use at most {_MAX_ISSUER_LENGTH} characters"
        )
    return value


def _totp_digits(value: Any, path: str, problems: Problems) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value not in _TOTP_DIGITS:
        return _fail(problems, path, f"{_show(value)} is not allowed; use 6 or 8")
    return value


def _totp_algorithm(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, str) or value.upper() not in _TOTP_ALGORITHMS:
        return _fail(
            problems, path, f"{_show(value)} is not allowed; use one of {', '.join(_TOTP_ALGORITHMS)}"
        )
    return value.upper()


_TOTP_PARSERS: dict[str, _Parser] = {
    "digits": _totp_digits,
    "period": _integer(15, 120),
    "algorithm": _totp_algorithm,
    "skew": _integer(0, 10),
}


def _totp(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, dict):
        return _fail(
            problems, path, f"{_show(value)} is not a mapping; allowed keys: {', '.join(_TOTP_PARSERS)}"
        )
    _check_keys(value, _TOTP_PARSERS, path, problems)
    start = len(problems)
    kwargs: dict[str, Any] = {}
    for key, parse in _TOTP_PARSERS.items():
        # null keeps the default, as for top-level keys
        if value.get(key) is not None:
            kwargs[key] = parse(value[key], f"{path}.{key}", problems)
    if len(problems) > start:
        return _INVALID
    return TotpConfig(**kwargs)


def _rp_id(value: Any, path: str, problems: Problems) -> Any:
    if _text(value, path, problems) is _INVALID:
        return _INVALID
    # checked against the origins once every key is known (see _resolve_webauthn)
    return value.strip().lower()


def _origin_item(item: str, path: str, problems: Problems) -> Any:
    origin = item.strip()
    if not origin:
        return _fail(problems, path, "is empty; give an origin like https://auth.example.com")
    return origin.rstrip("/")


def _origins(value: Any, path: str, problems: Problems) -> Any:
    return _each(value, path, _origin_item, problems)


def _sub_section(cls: type[Any], parsers: dict[str, _Parser]) -> _Parser:
    """Parse a nested mapping (like two_factor.totp) into `cls`; keys left out keep their defaults."""

    def parse(value: Any, path: str, problems: Problems) -> Any:
        if not isinstance(value, dict):
            return _fail(
                problems, path, f"{_show(value)} is not a mapping; allowed keys: {', '.join(parsers)}"
            )
        _check_keys(value, parsers, path, problems)
        start = len(problems)
        kwargs: dict[str, Any] = {}
        for key, parse_key in parsers.items():
            if value.get(key) is not None:
                kwargs[key] = parse_key(value[key], f"{path}.{key}", problems)
        if len(problems) > start:
            return _INVALID
        return cls(**kwargs)

    return parse


def _plain_text(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, str):
        return _fail(problems, path, f"{_show(value)} is not a string")
    return value


def _password(value: Any, path: str, problems: Problems) -> Any:
    # never echo the password: problems end up in logs
    if not isinstance(value, str):
        return _fail(problems, path, "this value is not a string")
    return value


def _sender(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, str) or "\n" in value or "\r" in value:
        return _fail(problems, path, f"{_show(value)} is not an address like authgate <authgate@example.com>")
    _, address = email.utils.parseaddr(value)
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or " " in address:
        return _fail(problems, path, f"{_show(value)} is not an address like authgate <authgate@example.com>")
    return value.strip()


def _smtp_host(value: Any, path: str, problems: Problems) -> Any:
    if _text(value, path, problems) is _INVALID:
        return _INVALID
    host = value.strip().lower()
    try:
        ip_network(host)
    except ValueError:
        reason = _hostname_problem(host)
        if reason is not None:
            return _fail(problems, path, f"{_show(value)} {reason}")
    return host


_SMTP_PARSERS: dict[str, _Parser] = {
    "host": _smtp_host,
    "port": _integer(1, 65535),
    "security": _choice(_SMTP_SECURITY),
    "username": _plain_text,
    "password": _password,
    "password_file": _text,
    "sender": _sender,
    "timeout": _duration(positive=True, maximum=300.0),
    "tls_skip_verify": _flag,
}


def _smtp(value: Any, path: str, problems: Problems) -> Any:
    smtp = _sub_section(SmtpConfig, _SMTP_PARSERS)(value, path, problems)
    if smtp is _INVALID or not smtp.password_file:
        return smtp
    if smtp.password:
        return _fail(problems, f"{path}.password_file", "both password and password_file are set; use one")
    try:
        with open(smtp.password_file, encoding="utf-8") as stream:
            password = stream.read().removesuffix("\n")
    except (OSError, UnicodeDecodeError) as exc:
        return _fail(problems, f"{path}.password_file", f"cannot read {smtp.password_file}: {_reason(exc)}")
    return dataclasses.replace(smtp, password=password)


_LDAP_ATTRIBUTE_KEYS = tuple(item.name for item in fields(LdapAttributes))
_MAX_LDAP_TIMEOUT = 60.0
_MAX_REFRESH_INTERVAL = 86400.0


def _ldap_attribute(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, str) or not ldap_filters.is_attribute_name(value.strip()):
        return _fail(problems, path, f"{_show(value)} is not an LDAP attribute name (letters, digits, '-')")
    return value.strip()


def _ldap_url(value: Any, path: str, problems: Problems) -> Any:
    if _text(value, path, problems) is _INVALID:
        return _INVALID
    parts = urlsplit(value.strip())
    allowed = "use ldap://host[:port] (with StartTLS) or ldaps://host[:port]"
    try:
        port = parts.port
    except ValueError:
        return _fail(problems, path, f"{_show(value)} has an invalid port; {allowed}")
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname or parts.path not in ("", "/"):
        return _fail(problems, path, f"{_show(value)} is not allowed; {allowed}")
    if parts.query or parts.fragment or parts.username or parts.password:
        return _fail(problems, path, f"{_show(value)} carries more than a host and port; {allowed}")
    netloc = parts.netloc if port is not None else parts.hostname
    return f"{parts.scheme}://{netloc}"


def _ldap_dn(value: Any, path: str, problems: Problems) -> Any:
    if _text(value, path, problems) is _INVALID:
        return _INVALID
    if "=" not in value or "\n" in value or "\x00" in value:
        return _fail(problems, path, f"{_show(value)} is not a DN like dc=example,dc=com")
    return value.strip()


def _ldap_sub_dn(value: Any, path: str, problems: Problems) -> Any:
    # "" is allowed here: search base_dn itself (presets like lldap default to ou=people)
    if isinstance(value, str) and not value.strip():
        return ""
    return _ldap_dn(value, path, problems)


def _ldap_filter(allowed: frozenset[str]) -> _Parser:
    def parse(value: Any, path: str, problems: Problems) -> Any:
        if _text(value, path, problems) is _INVALID:
            return _INVALID
        text = value.strip()
        if not ldap_filters.is_valid_filter(text):
            return _fail(
                problems,
                path,
                f"{_show(value)} is not an LDAP filter: it must be one (...) with balanced parentheses",
            )
        unknown = sorted(ldap_filters.placeholders(text) - allowed)
        if unknown:
            return _fail(
                problems,
                path,
                f"unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; "
                f"allowed: {', '.join('{' + a + '}' for a in sorted(allowed))}",
            )
        return text

    return parse


_LDAP_PARSERS: dict[str, _Parser] = {
    "implementation": _choice(IMPLEMENTATIONS),
    "url": _ldap_url,
    "start_tls": _flag,
    "ca_file": _text,
    "tls_skip_verify": _flag,
    "bind_dn": _ldap_dn,
    "bind_password": _password,
    "bind_password_file": _text,
    "base_dn": _ldap_dn,
    "users_dn": _ldap_sub_dn,
    "groups_dn": _ldap_sub_dn,
    "users_filter": _ldap_filter(ldap_filters.USER_PLACEHOLDERS),
    "groups_filter": _ldap_filter(ldap_filters.GROUP_PLACEHOLDERS),
    "group_search_mode": _choice(GROUP_SEARCH_MODES),
    "attributes": _sub_section(LdapAttributes, dict.fromkeys(_LDAP_ATTRIBUTE_KEYS, _ldap_attribute)),
    "timeout": _duration(positive=True, maximum=_MAX_LDAP_TIMEOUT),
    "pool_size": _integer(1, 64),
    "refresh_interval": _duration_between(1.0, _MAX_REFRESH_INTERVAL),
    "password_change": _flag,
}


def _ldap(value: Any, path: str, problems: Problems) -> Any:
    """authentication_backend.ldap: parse, fill the rest from the implementation's preset, check."""
    ldap = _sub_section(LdapConfig, _LDAP_PARSERS)(value, path, problems)
    if ldap is _INVALID:
        return _INVALID
    start = len(problems)
    for key in ("url", "base_dn", "bind_dn"):
        if not getattr(ldap, key):
            problems.append((f"{path}.{key}", "missing; the directory cannot be used without it"))
    if ldap.bind_password_file:
        if ldap.bind_password:
            problems.append(
                (f"{path}.bind_password_file", "both bind_password and bind_password_file are set; use one")
            )
        else:
            try:
                with open(ldap.bind_password_file, encoding="utf-8") as stream:
                    ldap = dataclasses.replace(ldap, bind_password=stream.read().removesuffix("\n"))
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(
                    (f"{path}.bind_password_file", f"cannot read {ldap.bind_password_file}: {_reason(exc)}")
                )
    if ldap.bind_dn and not ldap.bind_password and not ldap.bind_password_file:
        # an empty password makes a simple bind "unauthenticated": it succeeds and grants nothing
        problems.append((f"{path}.bind_password", "missing; give bind_password or bind_password_file"))
    if ldap.url.startswith("ldap://") and not ldap.start_tls:
        host = urlsplit(ldap.url).hostname or ""
        if not _is_loopback_host(host):
            problems.append(
                (
                    f"{path}.start_tls",
                    f"false sends directory passwords unencrypted to {host}; allowed only to a loopback "
                    "address: use start_tls: true or an ldaps:// URL",
                )
            )
    if ldap.ca_file and not os.path.isfile(ldap.ca_file):
        problems.append((f"{path}.ca_file", f"{_show(ldap.ca_file)} is not a readable file"))
    if len(problems) > start:
        return _INVALID
    preset = PRESETS[ldap.implementation]
    given = ldap.attributes
    attributes = LdapAttributes(
        **{key: getattr(given, key) or getattr(preset, key) for key in _LDAP_ATTRIBUTE_KEYS}
    )
    # users_dn / groups_dn: a preset's default only when the key was not given at all.
    given_keys = value if isinstance(value, dict) else {}
    return dataclasses.replace(
        ldap,
        users_dn=ldap.users_dn if given_keys.get("users_dn") is not None else preset.users_dn,
        groups_dn=ldap.groups_dn if given_keys.get("groups_dn") is not None else preset.groups_dn,
        users_filter=ldap.users_filter or preset.users_filter,
        groups_filter=ldap.groups_filter or preset.groups_filter,
        group_search_mode=ldap.group_search_mode or preset.group_search_mode,
        disabled_rule=preset.disabled,
        attributes=attributes,
        timeout=ldap.timeout or preset.timeout,
    )


def _dsn(value: Any, path: str, problems: Problems) -> Any:
    # never echo the DSN: it may carry the password, and problems end up in logs
    if not isinstance(value, str):
        return _fail(problems, path, "this value is not a string")
    reason = dsn_problem(value)
    if reason is not None:
        return _fail(problems, path, reason)
    return value.strip()


_POSTGRES_PARSERS: dict[str, _Parser] = {
    "dsn": _dsn,
    "dsn_file": _text,
    "pool_size": _integer(1, 1000),
    "connect_timeout": _duration(positive=True, maximum=300.0),
    "statement_timeout": _duration(positive=True, maximum=3600.0),
    "pgbouncer": _flag,
}


def _postgres(value: Any, path: str, problems: Problems) -> Any:
    pg = _sub_section(PostgresConfig, _POSTGRES_PARSERS)(value, path, problems)
    if pg is _INVALID or not pg.dsn_file:
        return pg
    if pg.dsn:
        return _fail(problems, f"{path}.dsn_file", "both dsn and dsn_file are set; use one")
    try:
        with open(pg.dsn_file, encoding="utf-8") as stream:
            dsn = stream.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        return _fail(problems, f"{path}.dsn_file", f"cannot read {pg.dsn_file}: {_reason(exc)}")
    reason = dsn_problem(dsn)
    if reason is not None:
        return _fail(problems, f"{path}.dsn_file", f"the connection string in {pg.dsn_file} {reason}")
    return dataclasses.replace(pg, dsn=dsn)


_LISTEN_HELP = 'use host:port, e.g. 127.0.0.1:9959 or [::1]:9959 ("" = the main listener)'
_MIN_METRICS_TOKEN_LENGTH = 16


def _listen(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, str):
        return _fail(problems, path, f"{_show(value)} is not a string; {_LISTEN_HELP}")
    if value == "":
        return value
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return _fail(problems, path, f"{_show(value)} is not host:port with a port 1-65535; {_LISTEN_HELP}")
    if host.startswith("["):
        if not host.endswith("]"):
            return _fail(problems, path, f"{_show(value)}: an IPv6 address goes in brackets; {_LISTEN_HELP}")
        host = host[1:-1]
        try:
            ip_network(host)
        except ValueError:
            return _fail(problems, path, f"{_show(value)}: {host!r} is not an IPv6 address; {_LISTEN_HELP}")
        return value
    if "/" in host:
        reason = _hostname_problem(host.lower())
        return _fail(problems, path, f"{_show(value)}: the host {reason}; {_LISTEN_HELP}")
    if ":" in host:
        return _fail(problems, path, f"{_show(value)}: an IPv6 address goes in brackets; {_LISTEN_HELP}")
    try:
        ip_network(host)
    except ValueError:
        reason = _hostname_problem(host.lower())
        if reason is not None:
            return _fail(problems, path, f"{_show(value)}: the host {reason}; {_LISTEN_HELP}")
    return value


def _metrics_token(value: Any, path: str, problems: Problems) -> Any:
    # never echo the token: problems end up in logs
    if not isinstance(value, str):
        return _fail(problems, path, "this value is not a string")
    if value and (len(value) < _MIN_METRICS_TOKEN_LENGTH or not value.isprintable() or " " in value):
        return _fail(
            problems,
            path,
            f"use at least {_MIN_METRICS_TOKEN_LENGTH} printable characters without spaces, "
            "e.g. from: openssl rand -hex 32",
        )
    return value


def _token_level(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, str) or value.lower() not in _TOKEN_LEVELS:
        return _fail(problems, path, f"{_show(value)} is not allowed; use one of {', '.join(_TOKEN_LEVELS)}")
    return _TOKEN_LEVELS[value.lower()]


def _audit_retention(value: Any, path: str, problems: Problems) -> Any:
    seconds = _duration()(value, path, problems)
    if seconds is _INVALID or seconds == 0:
        return seconds
    if seconds < _MIN_AUDIT_RETENTION:
        return _fail(problems, path, f"{_show(value)} is too short; use 0 (keep forever) or at least 1d")
    return seconds


def _policy(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, str) or value.lower() not in _POLICIES:
        return _fail(problems, path, f"{_show(value)} is not a policy; use one of {', '.join(_POLICIES)}")
    return Policy(value.lower())


def _hostname_problem(host: str) -> str | None:
    """Say what is wrong with a cookie or rule domain, or None when it is a plain host name."""
    if "://" in host:
        return "is a URL; give only the host name, without scheme"
    if "/" in host:
        return "contains a path; give only the host name (match paths with path:)"
    if ":" in host:
        return "contains a port; give only the host name"
    if host.startswith("."):
        return "starts with a dot; give the domain without it (it already covers subdomains)"
    if not host.isascii():
        return "is not ASCII; use its IDNA form (xn--...)"
    if len(host) > 253 or not _HOSTNAME.fullmatch(host.lower()):
        return "is not a host name; use letters, digits, '-' and dots, like app.example.com"
    return None


def _rule_domain(item: str, path: str, problems: Problems) -> Any:
    host = item.strip().lower()
    reason = _hostname_problem(host.removeprefix("*."))
    if reason is not None:
        return _fail(problems, path, f"{_show(item)} {reason}; a wildcard looks like *.example.com")
    return host


def _rule_path(item: str, path: str, problems: Problems) -> Any:
    try:
        re.compile(item)
    except re.error as exc:
        return _fail(problems, path, f"{_show(item)} is not a valid regular expression: {exc}")
    return item


def _rule_method(item: str, path: str, problems: Problems) -> Any:
    method = item.strip().upper()
    if method not in _HTTP_METHODS:
        return _fail(problems, path, f"{_show(item)} is not an HTTP method; use {', '.join(_HTTP_METHODS)}")
    return method


def _rule_subject(item: str, path: str, problems: Problems) -> Any:
    kind, _, name = item.partition(":")
    if kind not in ("user", "group") or not name or name != name.strip():
        return _fail(problems, path, f"{_show(item)} is not a subject; use user:NAME or group:NAME")
    return item


_RULE_KEYS = ("domain", "path", "path_case", "methods", "networks", "subject", "policy")
_PATH_CASES = ("sensitive", "insensitive")
_AMBIGUOUS_PATHS = ("refuse", "allow")


def _rule(item: Any, path: str, problems: Problems) -> Any:
    if not isinstance(item, dict):
        return _fail(problems, path, f"{_show(item)} is not a mapping; allowed keys: {', '.join(_RULE_KEYS)}")
    _check_keys(item, _RULE_KEYS, path, problems)
    if item.get("policy") is None:
        policy = _fail(problems, f"{path}.policy", f"missing; use one of {', '.join(_POLICIES)}")
    else:
        policy = _policy(item["policy"], f"{path}.policy", problems)
    parsed = {
        "domains": _each(item.get("domain"), f"{path}.domain", _rule_domain, problems),
        "paths": _each(item.get("path"), f"{path}.path", _rule_path, problems),
        "methods": _each(item.get("methods"), f"{path}.methods", _rule_method, problems),
        "networks": _each(item.get("networks"), f"{path}.networks", _network, problems),
        "subjects": _each(item.get("subject"), f"{path}.subject", _rule_subject, problems),
        "path_case": (
            "sensitive"
            if item.get("path_case") is None
            else _choice(_PATH_CASES)(item["path_case"], f"{path}.path_case", problems)
        ),
    }
    if policy is Policy.BYPASS and isinstance(parsed["subjects"], tuple) and parsed["subjects"]:
        # Authelia's rule: bypass lets requests through unauthenticated, so no subject can be known
        return _fail(
            problems,
            f"{path}.subject",
            "a bypass rule cannot have subjects: bypass does not identify anyone; use one_factor",
        )
    if not isinstance(policy, Policy) or _INVALID in parsed.values():
        return _INVALID
    return AccessRule(policy=policy, **parsed)


def _rules(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, list):
        return _fail(problems, path, f"{_show(value)} is not a list of rules")
    rules = [_rule(item, f"{path}[{index}]", problems) for index, item in enumerate(value)]
    if _INVALID in rules:
        return _INVALID
    return tuple(rules)


def _is_local_host(host: str) -> bool:
    return host in ("localhost", "127.0.0.1") or host.endswith(".localhost")


def _url_problem(url: str, domain: str, *, portal: bool) -> str | None:
    """Say what is wrong with a URL that must live under the cookie domain, or None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an absolute http(s) URL like https://auth.example.com"
    if parts.username is not None:
        return "must not contain user:password@"
    try:
        parts.port  # noqa: B018 - the property raises on a bad port
    except ValueError:
        return "has an invalid port"
    host = parts.hostname
    if host != domain and not host.endswith(f".{domain}"):
        return f"has host {host}, which is not {domain} or under it, so the session cookie would not reach it"
    if parts.scheme != "https" and not _is_local_host(host):
        return "must use https (http is allowed only for localhost)"
    if portal and (parts.query or parts.fragment):
        return "must not have a query or fragment"
    return None


_COOKIE_KEYS = ("domain", "portal_url", "default_redirect_url")


def _cookie(item: Any, path: str, problems: Problems) -> Any:
    if not isinstance(item, dict):
        return _fail(
            problems, path, f"{_show(item)} is not a mapping; allowed keys: {', '.join(_COOKIE_KEYS)}"
        )
    _check_keys(item, _COOKIE_KEYS, path, problems)
    start = len(problems)
    domain = item.get("domain")
    if not isinstance(domain, str):
        _fail(problems, f"{path}.domain", f"{_show(domain)} is not a domain like example.com")
        return _INVALID
    domain = domain.strip().lower()
    reason = _hostname_problem(domain)
    if reason is not None:
        _fail(problems, f"{path}.domain", f"{_show(item['domain'])} {reason}")
        return _INVALID
    urls: dict[str, str | None] = {}
    for key in ("portal_url", "default_redirect_url"):
        url = item.get(key)
        if url is None:
            if key == "portal_url":
                _fail(
                    problems,
                    f"{path}.{key}",
                    f"missing; use a URL under {domain}, like https://auth.{domain}",
                )
            urls[key] = None
            continue
        if not isinstance(url, str):
            _fail(problems, f"{path}.{key}", f"{_show(url)} is not a URL")
            continue
        reason = _url_problem(url, domain, portal=key == "portal_url")
        if reason is not None:
            _fail(problems, f"{path}.{key}", f"{_show(url)} {reason}")
            continue
        # stored without a trailing slash, so joining a path onto it never doubles the slash
        urls[key] = url.rstrip("/") if key == "portal_url" else url
    if len(problems) > start:
        return _INVALID
    return CookieDomain(
        domain=domain,
        portal_url=str(urls["portal_url"]),
        default_redirect_url=urls.get("default_redirect_url"),
    )


def _cookies(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, list):
        return _fail(problems, path, f"{_show(value)} is not a list of cookie domains")
    if not value:
        return _fail(problems, path, "is empty; list at least one cookie domain with its portal_url")
    cookies = [_cookie(item, f"{path}[{index}]", problems) for index, item in enumerate(value)]
    if _INVALID in cookies:
        return _INVALID
    start = len(problems)
    seen: set[str] = set()
    portal_path = urlsplit(cookies[0].portal_url).path
    for index, cookie in enumerate(cookies):
        if cookie.domain in seen:
            _fail(problems, f"{path}[{index}].domain", f"{_show(cookie.domain)} is listed twice")
        seen.add(cookie.domain)
        other_path = urlsplit(cookie.portal_url).path
        if other_path != portal_path:
            _fail(
                problems,
                f"{path}[{index}].portal_url",
                f"has path {_show(other_path)} but {path}[0].portal_url has {_show(portal_path)}; "
                "the portal is mounted once, so every portal_url needs the same path",
            )
    if len(problems) > start:
        return _INVALID
    return tuple(cookies)


def _cookie_name(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        return _fail(
            problems,
            path,
            f"{_show(value)} is not a valid cookie name; use letters, digits and !#$%&'*+-.^_`|~",
        )
    return value


def _header_name(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        return _fail(
            problems,
            path,
            f"{_show(value)} is not a valid header name; use letters, digits and '-', like Remote-User",
        )
    if value.lower() in _RESERVED_HEADERS:
        return _fail(
            problems,
            path,
            f"{_show(value)} is a standard or proxy header the gateway must not overwrite; "
            "use e.g. Remote-User",
        )
    return value


# --- external_login.providers (docs/external-login.md) --------------------------------------------------

_PROVIDER_TYPES = ("oidc", "github")
_PROVIDER_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_PROVIDER_TWO_FACTOR = ("local", "provider")
_SCOPE = re.compile(r"[!#-\[\]-~]+")  # RFC 6749 scope-token: printable ASCII but space, " and \\
_DEFAULT_SCOPES = {"oidc": ("openid", "email", "profile"), "github": ("read:user", "user:email")}
_PROVIDER_KEYS = (
    *("id", "type", "label", "client_id", "client_secret", "client_secret_file", "issuer"),
    *("discovery_url", "web_url", "api_url", "scopes", "claims", "allow", "link", "auto_create"),
    *("groups", "two_factor", "trusted_amr", "assume_email_verified", "timeout"),
)
_OIDC_ONLY_KEYS = ("issuer", "discovery_url", "claims", "assume_email_verified")
_GITHUB_ONLY_KEYS = ("web_url", "api_url")
_ALLOW_KEYS = ("allow_any", "email_domains", "emails", "groups", "organizations")


def _provider_url(value: Any, path: str, problems: Problems) -> Any:
    """An absolute https URL (http only for localhost and 127.0.0.1), without query or fragment."""
    if not isinstance(value, str) or not value.strip():
        return _fail(problems, path, f"{_show(value)} is not a URL like https://login.example.com")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return _fail(problems, path, f"{_show(value)} is not an absolute http(s) URL")
    if parts.scheme != "https" and not _is_local_host(parts.hostname):
        return _fail(problems, path, f"{_show(value)} must use https (http is allowed only for localhost)")
    if parts.username is not None or parts.query or parts.fragment:
        return _fail(problems, path, f"{_show(value)} must not contain user:password@, a query or a fragment")
    return value.strip().rstrip("/")


def _scope_item(item: str, path: str, problems: Problems) -> Any:
    if not _SCOPE.fullmatch(item):
        return _fail(problems, path, f"{_show(item)} is not a scope; one word per entry, no spaces or quotes")
    return item


def _text_item(item: str, path: str, problems: Problems) -> Any:
    return _text(item, path, problems) if item.strip() else _fail(problems, path, "is empty")


def _email_domain_item(item: str, path: str, problems: Problems) -> Any:
    domain = item.strip().lower().removeprefix("@")
    reason = _hostname_problem(domain)
    if reason is not None:
        return _fail(problems, path, f"{_show(item)} {reason}; give a domain like example.com")
    return domain


def _email_item(item: str, path: str, problems: Problems) -> Any:
    local, at, domain = item.strip().lower().rpartition("@")
    if not at or not local or _hostname_problem(domain) is not None:
        return _fail(problems, path, f"{_show(item)} is not an e-mail address like ada@example.com")
    return f"{local}@{domain}"


def _local_group_item(item: str, path: str, problems: Problems) -> Any:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", item):
        return _fail(problems, path, f"{_show(item)} is not a group name; use letters, digits, '.', '_', '-'")
    return item


def _lowered(parse_item: Callable[[str, str, Problems], Any]) -> Callable[[str, str, Problems], Any]:
    def parse(item: str, path: str, problems: Problems) -> Any:
        value = parse_item(item, path, problems)
        return value if value is _INVALID else value.lower()

    return parse


# --- oidc_provider --------------------------------------------------------------------------------

_OIDC_CLIENT_KEYS = (
    *("client_id", "client_name", "client_secret", "public", "redirect_uris", "post_logout_redirect_uris"),
    *("scopes", "grant_types", "authorization_policy", "token_endpoint_auth_method"),
    *("id_token_signed_response_alg", "consent", "require_pkce"),
    *("access_token_lifespan", "id_token_lifespan", "refresh_token_lifespan"),
)
_MAX_TOKEN_LIFESPAN = 86400.0  # access and ID tokens: a day at most (refresh tokens renew them)


def _oidc_issuer(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, str) or not value.strip():
        return _fail(problems, path, f"{_show(value)} is not a URL like https://auth.example.com")
    reason = issuer_problem(value)
    if reason is not None:
        return _fail(problems, path, f"{_show(value)} {reason}")
    return value.rstrip("/")


def _redirect_uri(item: str, path: str, problems: Problems) -> Any:
    reason = redirect_uri_problem(item)
    if reason is not None:
        return _fail(problems, path, f"{_show(item)} {reason}")
    return item


def _choices(allowed: tuple[str, ...]) -> Callable[[str, str, Problems], Any]:
    def parse(item: str, path: str, problems: Problems) -> Any:
        if item not in allowed:
            hint = _did_you_mean(item, allowed)
            return _fail(
                problems, path, f"{_show(item)} is not allowed{hint}; use any of {', '.join(allowed)}"
            )
        return item

    return parse


def _list_of(parse_item: Callable[[str, str, Problems], Any]) -> _Parser:
    def parse(value: Any, path: str, problems: Problems) -> Any:
        return _each(value, path, parse_item, problems)

    return parse


_CLAIMS_PARSERS: dict[str, _Parser] = {key: _text for key in ("username", "email", "display_name", "groups")}
_ALLOW_PARSERS: dict[str, _Parser] = {
    "allow_any": _flag,
    "email_domains": _list_of(_email_domain_item),
    "emails": _list_of(_email_item),
    "groups": _list_of(_text_item),
    "organizations": _list_of(_lowered(_text_item)),
}
_PROVIDER_PARSERS: dict[str, _Parser] = {
    "id": _text,
    "type": _choice(_PROVIDER_TYPES),
    "label": _text,
    "client_id": _text,
    "client_secret": _password,
    "client_secret_file": _text,
    "issuer": _provider_url,
    "discovery_url": _provider_url,
    "web_url": _provider_url,
    "api_url": _provider_url,
    "scopes": _list_of(_scope_item),
    "claims": _sub_section(ClaimMapping, _CLAIMS_PARSERS),
    "allow": _sub_section(ExternalAllowList, _ALLOW_PARSERS),
    "link": _flag,
    "auto_create": _flag,
    "groups": _list_of(_local_group_item),
    "two_factor": _choice(_PROVIDER_TWO_FACTOR),
    "trusted_amr": _list_of(_text_item),
    "assume_email_verified": _flag,
    "timeout": _duration(positive=True, maximum=60.0),
}


def _provider(item: Any, path: str, problems: Problems) -> Any:
    if not isinstance(item, dict):
        keys = ", ".join(_PROVIDER_KEYS)
        return _fail(problems, path, f"{_show(item)} is not a mapping; allowed keys: {keys}")
    _check_keys(item, _PROVIDER_KEYS, path, problems)
    start = len(problems)
    values: dict[str, Any] = {}
    for key, parse in _PROVIDER_PARSERS.items():
        if item.get(key) is not None:
            values[key] = parse(item[key], f"{path}.{key}", problems)
    if len(problems) > start:
        return _INVALID
    provider_id = values.get("id")
    if provider_id is None:
        return _fail(problems, f"{path}.id", "missing; name the provider, e.g. id: google (used in URLs)")
    if not _PROVIDER_ID.fullmatch(provider_id):
        return _fail(
            problems,
            f"{path}.id",
            f"{_show(provider_id)} is not allowed; use 1-32 lower-case letters, digits and '-'",
        )
    kind = values.setdefault("type", "oidc")
    for key in _GITHUB_ONLY_KEYS if kind == "oidc" else _OIDC_ONLY_KEYS:
        if key in values:
            _fail(problems, f"{path}.{key}", f"is not used by type {kind}; remove it")
    if "client_id" not in values:
        _fail(problems, f"{path}.client_id", "missing; copy it from the provider's application settings")
    secret_file = values.pop("client_secret_file", None)
    if secret_file is not None and "client_secret" in values:
        _fail(problems, f"{path}.client_secret_file", "client_secret is set too; use one")
    elif secret_file is not None:
        try:
            with open(secret_file, encoding="utf-8") as stream:
                values["client_secret"] = stream.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            _fail(problems, f"{path}.client_secret_file", f"cannot read {secret_file}: {_reason(exc)}")
    if not values.get("client_secret") and f"{path}.client_secret_file" not in {p for p, _ in problems}:
        _fail(problems, f"{path}.client_secret", "missing or empty; give client_secret or client_secret_file")
    if kind == "oidc" and "issuer" not in values and "discovery_url" not in values:
        _fail(problems, f"{path}.issuer", "missing; give the issuer URL (or discovery_url) of the provider")
    scopes = values.setdefault("scopes", _DEFAULT_SCOPES[kind])
    if kind == "oidc" and "openid" not in scopes:
        _fail(problems, f"{path}.scopes", f"{_show(list(scopes))} lacks openid, which OpenID Connect needs")
    allow = values.get("allow", ExternalAllowList())
    lists = ("email_domains", "emails", "groups", "organizations")
    if not allow.allow_any and not any(getattr(allow, name) for name in lists):
        _fail(
            problems,
            f"{path}.allow",
            "is empty, which would admit nobody; list email_domains, emails, groups or organizations "
            "(or set allow_any: true to admit anyone who has an account there)",
        )
    elif allow.allow_any and any(getattr(allow, name) for name in lists):
        _fail(problems, f"{path}.allow.allow_any", "true admits everyone, so the lists do nothing; use one")
    if kind == "oidc" and allow.organizations:
        _fail(problems, f"{path}.allow.organizations", "only GitHub has organisations; use groups for OIDC")
    if kind == "github" and allow.organizations and "read:org" not in scopes:
        values["scopes"] = (*scopes, "read:org")  # /user/orgs lists private memberships only with it
    if kind == "github" and values.get("two_factor") == "provider":
        _fail(problems, f"{path}.two_factor", "provider needs amr, which GitHub never sends; use local")
    if len(problems) > start:
        return _INVALID
    values.setdefault("label", "GitHub" if kind == "github" else provider_id)
    return ExternalProvider(**values)


def _external_providers(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, list):
        return _fail(problems, path, f"{_show(value)} is not a list of providers")
    providers = [_provider(item, f"{path}[{index}]", problems) for index, item in enumerate(value)]
    if _INVALID in providers:
        return _INVALID
    seen: set[str] = set()
    for index, provider in enumerate(providers):
        if provider.id in seen:
            return _fail(problems, f"{path}[{index}].id", f"{_show(provider.id)} is listed twice")
        seen.add(provider.id)
    return tuple(providers)


def _oidc_client(item: Any, path: str, problems: Problems) -> Any:
    if not isinstance(item, dict):
        return _fail(
            problems, path, f"{_show(item)} is not a mapping; allowed keys: {', '.join(_OIDC_CLIENT_KEYS)}"
        )
    start = len(problems)
    _check_keys(item, _OIDC_CLIENT_KEYS, path, problems)
    kwargs: dict[str, Any] = {}
    client_id = item.get("client_id")
    if not isinstance(client_id, str):
        _fail(problems, f"{path}.client_id", f"missing or not a string ({_show(client_id)})")
    elif (reason := client_id_problem(client_id)) is not None:
        _fail(problems, f"{path}.client_id", f"{_show(client_id)} {reason}")
    else:
        kwargs["client_id"] = client_id
    if item.get("client_name") is not None:
        kwargs["client_name"] = _text(item["client_name"], f"{path}.client_name", problems)
    public = False
    if item.get("public") is not None:
        public = _flag(item["public"], f"{path}.public", problems)
        kwargs["public"] = public is True
    secret = item.get("client_secret")
    if public is True:
        if secret is not None:
            _fail(
                problems, f"{path}.client_secret", "a public client has no secret; remove it or public: true"
            )
    elif secret is None:
        _fail(
            problems,
            f"{path}.client_secret",
            "missing; give an argon2 hash from `authgate oidc hash-secret`, or set public: true",
        )
    elif not isinstance(secret, str) or (reason := secret_hash_problem(secret)) is not None:
        # never echo the value: it may be the plain secret, and problems end up in logs
        _fail(problems, f"{path}.client_secret", reason or "is not a string")
    else:
        kwargs["client_secret_hash"] = secret
    uris = _each(item.get("redirect_uris"), f"{path}.redirect_uris", _redirect_uri, problems)
    if uris == ():
        _fail(problems, f"{path}.redirect_uris", "missing; list the exact callback URL(s) of the app")
    kwargs["redirect_uris"] = uris
    kwargs["post_logout_redirect_uris"] = _each(
        item.get("post_logout_redirect_uris"), f"{path}.post_logout_redirect_uris", _redirect_uri, problems
    )
    scopes = DEFAULT_SCOPES
    if item.get("scopes") is not None:
        scopes = _each(item["scopes"], f"{path}.scopes", _choices(SCOPES), problems)
        if isinstance(scopes, tuple) and "openid" not in scopes:
            _fail(problems, f"{path}.scopes", "must include openid")
        kwargs["scopes"] = scopes
    grants: Any = ("authorization_code",)
    if item.get("grant_types") is not None:
        grants = _each(item["grant_types"], f"{path}.grant_types", _choices(GRANT_TYPES), problems)
        if isinstance(grants, tuple) and "authorization_code" not in grants:
            _fail(problems, f"{path}.grant_types", "must include authorization_code (the only flow offered)")
        kwargs["grant_types"] = grants
    if isinstance(grants, tuple) and isinstance(scopes, tuple):
        if ("refresh_token" in grants) != ("offline_access" in scopes):
            _fail(
                problems,
                f"{path}.grant_types",
                "refresh_token and the offline_access scope go together (refresh tokens are issued "
                "only for offline_access); list both or neither",
            )
    if item.get("authorization_policy") is not None:
        kwargs["authorization_policy"] = _token_level(
            item["authorization_policy"], f"{path}.authorization_policy", problems
        )
    method = item.get("token_endpoint_auth_method")
    if method is not None:
        method = _choice(AUTH_METHODS)(method, f"{path}.token_endpoint_auth_method", problems)
    if public is True:
        if method not in (None, "none"):
            _fail(problems, f"{path}.token_endpoint_auth_method", "a public client authenticates with none")
        kwargs["token_endpoint_auth_method"] = "none"  # noqa: S105 - a method name
    elif method == "none":
        _fail(
            problems,
            f"{path}.token_endpoint_auth_method",
            "none is only for public clients; use client_secret_basic or client_secret_post",
        )
    elif isinstance(method, str):
        kwargs["token_endpoint_auth_method"] = method
    alg = item.get("id_token_signed_response_alg")
    if alg is not None:
        if alg not in SIGNING_ALGS:
            _fail(
                problems,
                f"{path}.id_token_signed_response_alg",
                f"{_show(alg)} is not allowed; use one of {', '.join(SIGNING_ALGS)}",
            )
        kwargs["id_token_signed_response_alg"] = alg
    if item.get("consent") is not None:
        kwargs["consent"] = _choice(CONSENT_MODES)(item["consent"], f"{path}.consent", problems)
    if item.get("require_pkce") is not None:
        kwargs["require_pkce"] = _flag(item["require_pkce"], f"{path}.require_pkce", problems)
    for key in ("access_token_lifespan", "id_token_lifespan", "refresh_token_lifespan"):
        if item.get(key) is not None:
            maximum = None if key == "refresh_token_lifespan" else _MAX_TOKEN_LIFESPAN
            kwargs[key] = _duration(positive=True, maximum=maximum)(item[key], f"{path}.{key}", problems)
    if len(problems) > start or "client_id" not in kwargs:
        return _INVALID
    return OidcClient(**kwargs)


def _oidc_clients(value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, list):
        return _fail(problems, path, f"{_show(value)} is not a list of clients")
    clients = [_oidc_client(item, f"{path}[{index}]", problems) for index, item in enumerate(value)]
    seen: dict[str, int] = {}
    for index, client in enumerate(clients):
        if not isinstance(client, OidcClient):
            continue
        if client.client_id in seen:
            clients[index] = _fail(
                problems,
                f"{path}[{index}].client_id",
                f"{_show(client.client_id)} is already the id of {path}[{seen[client.client_id]}]; "
                "client ids must be unique",
            )
        seen.setdefault(client.client_id, index)
    if _INVALID in clients:
        return _INVALID
    return tuple(clients)


def _check_oidc_provider(config: Config, failed: set[str], problems: Problems) -> None:
    """The provider lives in the portal; retired keys stay published as long as their tokens live."""
    oidc = config.oidc_provider
    if not oidc.enabled or failed & {"oidc_provider.key_retention", "oidc_provider.clients"}:
        return
    portals = [cookie.portal_url.rstrip("/") for cookie in config.session.cookies]
    if not failed & {"oidc_provider.issuer", "session.cookies"} and oidc.issuer not in portals:
        problems.append(
            (
                "oidc_provider.issuer",
                f"{_show(oidc.issuer)} is not one of the portal URLs ({', '.join(portals)}); the "
                "provider signs users in through the portal, so the issuer must be a session.cookies "
                "portal_url (or leave it out to use the first)",
            )
        )
    longest = max(
        [oidc.access_token_lifespan, oidc.id_token_lifespan]
        + [c.access_token_lifespan or 0 for c in oidc.clients]
        + [c.id_token_lifespan or 0 for c in oidc.clients]
    )
    if oidc.key_retention < longest:
        problems.append(
            (
                "oidc_provider.key_retention",
                f"{oidc.key_retention:g}s is shorter than the longest token lifetime ({longest:g}s); "
                "tokens signed by a retired key would stop verifying before they expire",
            )
        )


_SCHEMA: dict[str, tuple[type[Any], dict[str, _Parser]]] = {
    "server": (
        ServerConfig,
        {"host": _text, "port": _integer(1, 65535), "workers": _integer(0), "trusted_proxies": _networks},
    ),
    "log": (LogConfig, {"level": _choice(_LOG_LEVELS), "format": _choice(_LOG_FORMATS)}),
    "storage": (
        StorageConfig,
        {
            "data_dir": _text,
            "busy_timeout": _duration(positive=True, maximum=_MAX_BUSY_TIMEOUT),
            "engine": _choice(_STORAGE_ENGINES),
            "postgres": _postgres,
        },
    ),
    "secrets": (SecretsConfig, {"session_keys": _session_keys, "storage_key": _storage_key}),
    "session": (
        SessionConfig,
        {
            "cookies": _cookies,
            "cookie_name": _cookie_name,
            "secure": _flag,
            "expiration": _duration(positive=True),
            "inactivity": _duration(),
            "remember_me": _duration(),
            "cache_ttl": _duration(positive=True, maximum=_MAX_CACHE_TTL),
            "activity_flush_interval": _duration(positive=True),
        },
    ),
    "password": (
        Argon2Config,
        {
            "time_cost": _integer(1),
            "memory_cost": _integer(8),
            "parallelism": _integer(1),
            "max_concurrent": _integer(1),
            "niceness": _integer(0, 19),
            "cpus": _cpus,
        },
    ),
    "regulation": (
        RegulationConfig,
        {"max_retries": _integer(0), "find_time": _duration(), "ban_time": _duration()},
    ),
    "identity_headers": (
        IdentityHeadersConfig,
        {"user": _header_name, "email": _header_name, "groups": _header_name, "name": _header_name},
    ),
    "access_control": (
        AccessControlConfig,
        {"default_policy": _policy, "rules": _rules, "ambiguous_paths": _choice(_AMBIGUOUS_PATHS)},
    ),
    "portal": (PortalConfig, {"title": _text, "admin_group": _text}),
    "two_factor": (
        TwoFactorConfig,
        {
            "mode": _choice(_TWO_FACTOR_MODES),
            "issuer": _issuer,
            "totp": _totp,
            "recovery_codes": _integer(4, 32),
            "pending_ttl": _duration(positive=True, maximum=_MAX_PENDING_TTL),
            "pending_max_attempts": _integer(1, 20),
        },
    ),
    "webauthn": (
        WebAuthnConfig,
        {
            "rp_id": _rp_id,
            "rp_name": _text,
            "origins": _origins,
            "user_verification": _choice(USER_VERIFICATION),
            "timeout": _duration(positive=True, maximum=600.0),
        },
    ),
    "notifier": (
        NotifierConfig,
        {
            "type": _choice(_NOTIFIER_TYPES),
            "file": _sub_section(FileNotifierConfig, {"directory": _text}),
            "smtp": _smtp,
        },
    ),
    "account_recovery": (AccountRecoveryConfig, {"link_ttl": _duration_between(60.0, 86400.0)}),
    "app_passwords": (
        AppPasswordsConfig,
        {
            "level": _token_level,
            "max_per_user": _integer(1, 1000),
            "default_expiry": _duration(),
            "reauth_after": _duration(positive=True, maximum=_MAX_REAUTH_AFTER),
        },
    ),
    "admin": (AdminConfig, {"reauth_after": _duration(positive=True, maximum=_MAX_REAUTH_AFTER)}),
    "audit": (AuditConfig, {"retention": _audit_retention}),
    "metrics": (
        MetricsConfig,
        {"enabled": _flag, "listen": _listen, "token": _metrics_token},
    ),
    "external_login": (
        ExternalLoginConfig,
        {"providers": _external_providers, "login_ttl": _duration_between(60.0, 3600.0)},
    ),
    "authentication_backend": (AuthenticationBackendConfig, {"ldap": _ldap}),
    "oidc_provider": (
        OidcProviderConfig,
        {
            "issuer": _oidc_issuer,
            "clients": _oidc_clients,
            "access_token_lifespan": _duration(positive=True, maximum=_MAX_TOKEN_LIFESPAN),
            "id_token_lifespan": _duration(positive=True, maximum=_MAX_TOKEN_LIFESPAN),
            "refresh_token_lifespan": _duration(positive=True),
            "authorization_code_lifespan": _duration_between(10.0, 600.0),
            "key_retention": _duration(positive=True),
        },
    ),
}

# Keys typed `str` in the dataclasses take environment values verbatim instead of through YAML.
_STRING_KEYS = frozenset(
    f"{section}.{item.name}"
    for section, (cls, _) in _SCHEMA.items()
    for item in fields(cls)
    if item.type == "str"
) | {"storage.postgres.dsn"}

# Sub-sections whose keys each get an AUTHGATE_* variable, instead of one for the mapping.
_NESTED_SECTIONS: dict[str, dict[str, _Parser]] = {"storage.postgres": _POSTGRES_PARSERS}


# --- YAML and message helpers --------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, where PyYAML would silently keep the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, list | dict):
            continue  # unhashable: construct_mapping below reports it
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_yaml(text: str) -> object:
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader


def _show(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _did_you_mean(word: str, choices: Iterable[str], *, prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
