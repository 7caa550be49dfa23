"""Configuration loading: YAML + AUTHGATE_* environment -> Config, with every problem named by key path."""

from __future__ import annotations

from dataclasses import fields
from ipaddress import ip_network
from pathlib import Path

import pytest

from gateway.config import (
    AccessRule,
    Config,
    CookieDomain,
    env_variable_names,
    load_config,
    parse_config,
)
from gateway.errors import ConfigError
from gateway.models import Policy

EXAMPLE = Path(__file__).parents[2] / "config" / "authgate.example.yml"
KEY = "k" * 32
COOKIE = {"domain": "example.com", "portal_url": "https://auth.example.com"}


def problems(data: object, environ: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Return the problems parse_config reports (failing the test when it reports none)."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ or {})
    return info.value.problems


def problem_paths(data: object, environ: dict[str, str] | None = None) -> list[str]:
    return [path for path, _ in problems(data, environ)]


def with_rule(**rule: object) -> dict[str, object]:
    return {"access_control": {"rules": [{"policy": "one_factor", **rule}]}}


def test_empty_data_gives_defaults() -> None:
    """None (an empty file) and an empty mapping both give the dataclass defaults."""
    assert parse_config(None) == Config()
    assert parse_config({}) == Config()
    assert parse_config({"server": None, "session": {"inactivity": None}}) == Config()


def test_defaults_are_valid_types() -> None:
    """The defaults themselves pass validation when written out explicitly."""
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 9091, "workers": 1, "trusted_proxies": ["127.0.0.0/8"]},
            "session": {"cookies": [{"domain": "localhost", "portal_url": "http://localhost:8080/auth"}]},
        }
    )
    assert config.session.cookies == Config().session.cookies


def test_password_cpus_accepts_a_list_a_number_or_nothing() -> None:
    """CPUs for argon2: a list (also from the environment, as YAML), a single number, or none."""
    assert parse_config({"password": {"cpus": [0]}}).password.cpus == (0,)
    assert parse_config({"password": {"cpus": 0}}).password.cpus == (0,)
    assert parse_config({"password": {"cpus": []}}).password.cpus == ()
    assert parse_config({}, {"AUTHGATE_PASSWORD_CPUS": "[0]"}).password.cpus == (0,)
    assert Config().password.cpus == ()


def test_password_cpus_says_which_cpus_exist() -> None:
    [(path, message)] = problems({"password": {"cpus": [4096]}})
    assert path == "password.cpus[0]"
    assert message.startswith("4096 is not a CPU of this machine; use a list of CPU numbers 0-")


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    """A missing configuration file is a ConfigError naming the file."""
    path = str(tmp_path / "nope.yml")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.problems[0][0] == path


@pytest.mark.parametrize(
    "text",
    ["server: [unclosed", "server:\n  port: 1\n  port: 2\n", "session:\n\tinactivity: 5"],
    ids=["syntax", "duplicate-key", "tab"],
)
def test_load_invalid_yaml_names_the_file(tmp_path: Path, text: str) -> None:
    """Invalid YAML, including a duplicated key, is a ConfigError naming the file."""
    path = tmp_path / "authgate.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert info.value.problems[0][0] == str(path)
    assert "not valid YAML" in info.value.problems[0][1]


def test_load_empty_file_gives_defaults(tmp_path: Path) -> None:
    """An empty file is the default configuration."""
    path = tmp_path / "authgate.yml"
    path.write_text("# nothing yet\n")
    assert load_config(str(path), {}) == Config()


def test_load_without_file_uses_environment() -> None:
    """No file (None) still applies the environment."""
    assert load_config(None, {"AUTHGATE_SERVER_PORT": "9000"}).server.port == 9000


def test_example_file_loads() -> None:
    """The shipped example parses into a valid Config with the documented rules."""
    config = load_config(str(EXAMPLE), {})
    rules = config.access_control.rules
    assert config.access_control.default_policy is Policy.DENY
    assert {rule.policy for rule in rules} == set(Policy)
    assert any(rule.networks for rule in rules)
    assert any(rule.subjects for rule in rules)
    assert config.session.inactivity == 300.0


def test_example_file_documents_every_key() -> None:
    """Every key and its environment variable appear in the example file."""
    text = EXAMPLE.read_text()
    for variable, key in env_variable_names().items():
        assert variable in text, variable
        assert f"{key.split('.')[-1]}:" in text, key


def test_every_dataclass_field_has_a_variable() -> None:
    """The schema covers exactly the dataclass fields, so no key is unreachable."""
    expected = set()
    for section in fields(Config):
        for leaf in fields(getattr(Config(), section.name)):
            value = getattr(getattr(Config(), section.name), leaf.name)
            if section.name == "storage" and leaf.name == "postgres":
                # a nested section: one variable per key (a *_file key has the variable's _FILE form)
                expected |= {
                    f"storage.postgres.{f.name}" for f in fields(value) if not f.name.endswith("_file")
                }
                continue
            expected.add(f"{section.name}.{leaf.name}")
    assert set(env_variable_names().values()) == expected


def test_env_variable_names_examples() -> None:
    """Variable names are AUTHGATE_ + the upper-cased key path."""
    names = env_variable_names()
    assert names["AUTHGATE_SESSION_INACTIVITY"] == "session.inactivity"
    assert names["AUTHGATE_ACCESS_CONTROL_DEFAULT_POLICY"] == "access_control.default_policy"
    assert names["AUTHGATE_SECRETS_SESSION_KEYS"] == "secrets.session_keys"


def test_parsed_values_are_typed() -> None:
    """Valid values become durations in seconds, networks, Policy members and tuples."""
    config = parse_config(
        {
            "server": {"trusted_proxies": "10.0.0.1"},
            "secrets": {"session_keys": [KEY]},
            "session": {
                "cookies": [{**COOKIE, "portal_url": "https://auth.example.com/"}],
                "expiration": "2h",
            },
            "access_control": {
                "default_policy": "one_factor",
                "rules": [
                    {
                        "domain": "App.Example.com",
                        "path": ["^/api"],
                        "methods": "get",
                        "networks": ["192.168.1.7/24"],
                        "subject": "group:dev",
                        "policy": "deny",
                    }
                ],
            },
        }
    )
    assert config.server.trusted_proxies == (ip_network("10.0.0.1/32"),)
    assert config.secrets.session_keys == (KEY,)
    assert config.session.cookies == (CookieDomain("example.com", "https://auth.example.com"),)
    assert config.session.expiration == 7200.0
    assert config.access_control.default_policy is Policy.ONE_FACTOR
    assert config.access_control.rules == (
        AccessRule(
            Policy.DENY,
            domains=("app.example.com",),
            paths=("^/api",),
            methods=("GET",),
            networks=(ip_network("192.168.1.0/24"),),
            subjects=("group:dev",),
        ),
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1h30m", 5400.0),
        ("1d2h3m4s", 93784.0),
        ("1.5h", 5400.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    """Durations are seconds or numbers with s/m/h/d/w units, combinable."""
    assert parse_config({"session": {"inactivity": value}}).session.inactivity == seconds


@pytest.mark.parametrize("value", ["5 minutes", "5x", "h", "1h 30m", "", True, [5], "-1m", ".inf"])
def test_invalid_durations(value: object) -> None:
    """Anything else is reported with the allowed forms."""
    [(path, message)] = problems({"session": {"inactivity": value}})
    assert path == "session.inactivity"
    assert "duration" in message


def test_duration_message_names_value_and_forms() -> None:
    """The message quotes the bad value and says what is allowed."""
    [(_, message)] = problems({"session": {"inactivity": "5 minutes"}})
    assert message == (
        '"5 minutes" is not a duration; use seconds or a number with s/m/h/d/w (e.g. 90s, 5m, 1h)'
    )


def test_negative_duration() -> None:
    """Durations are never negative."""
    assert problem_paths({"regulation": {"ban_time": -5}}) == ["regulation.ban_time"]


@pytest.mark.parametrize(
    ("data", "path"),
    [
        # unknown keys at every level
        ({"sever": {}}, "sever"),
        ({"server": {"prot": 1}}, "server.prot"),
        ({"session": {"cookies": [{**COOKIE, "domian": "x"}]}}, "session.cookies[0].domian"),
        (with_rule(domains="a.example.com"), "access_control.rules[0].domains"),
        # sections and types
        ({"server": "yes"}, "server"),
        ({"server": {"port": "http"}}, "server.port"),
        ({"server": {"host": ""}}, "server.host"),
        ({"session": {"secure": "no way"}}, "session.secure"),
        ({"storage": {"data_dir": 5}}, "storage.data_dir"),
        ({"portal": {"title": ["a"]}}, "portal.title"),
        # server
        ({"server": {"port": 0}}, "server.port"),
        ({"server": {"port": 65536}}, "server.port"),
        ({"server": {"port": True}}, "server.port"),
        ({"server": {"workers": -1}}, "server.workers"),
        ({"server": {"trusted_proxies": ["10.0.0.0/33"]}}, "server.trusted_proxies[0]"),
        ({"server": {"trusted_proxies": "proxy.local"}}, "server.trusted_proxies"),
        # log
        ({"log": {"level": "verbose"}}, "log.level"),
        ({"log": {"format": "xml"}}, "log.format"),
        # secrets
        ({"secrets": {"session_keys": ["short"]}}, "secrets.session_keys[0]"),
        ({"secrets": {"session_keys": [KEY, 123]}}, "secrets.session_keys[1]"),
        # session durations
        ({"session": {"expiration": 0}}, "session.expiration"),
        ({"session": {"cache_ttl": 0}}, "session.cache_ttl"),
        ({"session": {"cache_ttl": "2m"}}, "session.cache_ttl"),
        ({"session": {"activity_flush_interval": 0}}, "session.activity_flush_interval"),
        ({"session": {"remember_me": "-1d"}}, "session.remember_me"),
        # cookies
        ({"session": {"cookies": []}}, "session.cookies"),
        ({"session": {"cookies": COOKIE}}, "session.cookies"),
        ({"session": {"cookies": ["example.com"]}}, "session.cookies[0]"),
        ({"session": {"cookies": [{**COOKIE, "domain": ".example.com"}]}}, "session.cookies[0].domain"),
        (
            {"session": {"cookies": [{**COOKIE, "domain": "https://example.com"}]}},
            "session.cookies[0].domain",
        ),
        ({"session": {"cookies": [{"domain": "example.com"}]}}, "session.cookies[0].portal_url"),
        (
            {"session": {"cookies": [{**COOKIE, "portal_url": "https://auth.example.org"}]}},
            "session.cookies[0].portal_url",
        ),
        (
            {"session": {"cookies": [{**COOKIE, "portal_url": "https://evilexample.com"}]}},
            "session.cookies[0].portal_url",
        ),
        (
            {"session": {"cookies": [{**COOKIE, "portal_url": "http://auth.example.com"}]}},
            "session.cookies[0].portal_url",
        ),
        (
            {"session": {"cookies": [{**COOKIE, "portal_url": "https://auth.example.com/?next=1"}]}},
            "session.cookies[0].portal_url",
        ),
        (
            {"session": {"cookies": [{**COOKIE, "portal_url": "https://auth.example.com/#top"}]}},
            "session.cookies[0].portal_url",
        ),
        (
            {"session": {"cookies": [{**COOKIE, "portal_url": "auth.example.com"}]}},
            "session.cookies[0].portal_url",
        ),
        (
            {"session": {"cookies": [{**COOKIE, "default_redirect_url": "https://evil.example"}]}},
            "session.cookies[0].default_redirect_url",
        ),
        (
            {
                "session": {
                    "cookies": [
                        {"domain": "example.com", "portal_url": "https://auth.example.com/auth"},
                        {"domain": "example.org", "portal_url": "https://auth.example.org/login"},
                    ]
                }
            },
            "session.cookies[1].portal_url",
        ),
        ({"session": {"cookies": [COOKIE, COOKIE]}}, "session.cookies[1].domain"),
        ({"session": {"cookies": [COOKIE], "secure": False}}, "session.secure"),
        ({"session": {"cookie_name": "my session"}}, "session.cookie_name"),
        ({"session": {"cookie_name": "a;b"}}, "session.cookie_name"),
        ({"session": {"cookie_name": "__Host-session"}}, "session.cookie_name"),
        # password
        ({"password": {"time_cost": 0}}, "password.time_cost"),
        ({"password": {"memory_cost": 31, "parallelism": 4}}, "password.memory_cost"),
        ({"password": {"parallelism": 0}}, "password.parallelism"),
        ({"password": {"max_concurrent": 0}}, "password.max_concurrent"),
        ({"password": {"niceness": -1}}, "password.niceness"),
        ({"password": {"niceness": 20}}, "password.niceness"),
        ({"password": {"cpus": [-1]}}, "password.cpus[0]"),
        ({"password": {"cpus": [0, 4096]}}, "password.cpus[1]"),
        ({"password": {"cpus": [0, 0]}}, "password.cpus[1]"),
        ({"password": {"cpus": ["0"]}}, "password.cpus[0]"),
        ({"password": {"cpus": "0-1"}}, "password.cpus"),
        ({"password": {"cpus": True}}, "password.cpus"),
        # regulation
        ({"regulation": {"max_retries": -1}}, "regulation.max_retries"),
        ({"regulation": {"find_time": "soon"}}, "regulation.find_time"),
        # identity headers
        ({"identity_headers": {"user": "Remote User"}}, "identity_headers.user"),
        ({"identity_headers": {"email": "Authorization"}}, "identity_headers.email"),
        ({"identity_headers": {"groups": "x-forwarded-for"}}, "identity_headers.groups"),
        ({"identity_headers": {"name": "remote-user"}}, "identity_headers.name"),
        # access control
        ({"access_control": {"default_policy": "allow"}}, "access_control.default_policy"),
        ({"access_control": {"rules": {"policy": "deny"}}}, "access_control.rules"),
        ({"access_control": {"rules": ["deny"]}}, "access_control.rules[0]"),
        ({"access_control": {"rules": [{"domain": "a.example.com"}]}}, "access_control.rules[0].policy"),
        (with_rule(policy="allow"), "access_control.rules[0].policy"),
        (with_rule(domain="https://app.example.com"), "access_control.rules[0].domain"),
        (with_rule(domain="app.example.com:8443"), "access_control.rules[0].domain"),
        (with_rule(domain="app.example.com/admin"), "access_control.rules[0].domain"),
        (with_rule(domain=["ok.example.com", "bad_host!"]), "access_control.rules[0].domain[1]"),
        (with_rule(domain="*"), "access_control.rules[0].domain"),
        (with_rule(path="^/(admin"), "access_control.rules[0].path"),
        (with_rule(path=["^/ok", "*bad"]), "access_control.rules[0].path[1]"),
        (with_rule(methods=["GET", "FETCH"]), "access_control.rules[0].methods[1]"),
        (with_rule(networks="10.0.0.0/40"), "access_control.rules[0].networks"),
        (with_rule(subject="alice"), "access_control.rules[0].subject"),
        (with_rule(subject="role:admins"), "access_control.rules[0].subject"),
        (with_rule(subject="user:"), "access_control.rules[0].subject"),
        (with_rule(subject=5), "access_control.rules[0].subject"),
        (with_rule(policy="bypass", subject="group:dev"), "access_control.rules[0].subject"),
        (with_rule(path_case="ignore"), "access_control.rules[0].path_case"),
        (with_rule(path_case=True), "access_control.rules[0].path_case"),
        ({"access_control": {"ambiguous_paths": "block"}}, "access_control.ambiguous_paths"),
        ({"access_control": {"ambiguous_paths": False}}, "access_control.ambiguous_paths"),
    ],
)
def test_each_rule_reports_its_key_path(data: object, path: str) -> None:
    """Each validation rule produces exactly one problem naming the key path."""
    assert problem_paths(data) == [path]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"server": {"prot": 1}}, ["unknown key", "did you mean port", "allowed: host, port"]),
        ({"server": {"port": 70000}}, ["70000", "1-65535"]),
        ({"log": {"level": "verbose"}}, ['"verbose"', "debug, info, warning, error"]),
        (with_rule(path="^/(admin"), ['"^/(admin"', "missing )"]),
        (with_rule(methods="FETCH"), ['"FETCH"', "PROPFIND"]),
        (with_rule(subject="alice"), ['"alice"', "user:NAME or group:NAME"]),
        (with_rule(policy="bypass", subject="user:bob"), ["bypass"]),
        (with_rule(path_case="ignore"), ['"ignore"', "sensitive, insensitive"]),
        ({"access_control": {"ambiguous_paths": "block"}}, ['"block"', "refuse, allow"]),
        ({"session": {"secure": False, "cookies": [COOKIE]}}, ["only for http://localhost", "example.com"]),
    ],
)
def test_messages_name_value_and_what_is_allowed(data: object, words: list[str]) -> None:
    """Messages quote the bad value and say what is allowed."""
    [(_, message)] = problems(data)
    for word in words:
        assert word in message


def test_session_key_is_never_echoed() -> None:
    """A too-short session key is reported by length, not by value."""
    [(_, message)] = problems({"secrets": {"session_keys": ["hunter2"]}})
    assert "hunter2" not in message
    assert "32" in message


@pytest.mark.parametrize(
    "cookie",
    [
        {"domain": "localhost", "portal_url": "http://localhost:8080/auth"},
        {"domain": "localhost", "portal_url": "http://auth.localhost"},
        {"domain": "127.0.0.1", "portal_url": "http://127.0.0.1:9091/auth"},
    ],
)
def test_http_and_insecure_cookies_allowed_for_localhost(cookie: dict[str, str]) -> None:
    """Plain http and secure: false are fine when every cookie domain is local."""
    config = parse_config({"session": {"cookies": [cookie], "secure": False}})
    assert config.session.secure is False


def test_portal_url_trailing_slash_is_dropped() -> None:
    """portal_url is normalised without a trailing slash; paths compare equal with or without one."""
    config = parse_config(
        {
            "session": {
                "cookies": [
                    {"domain": "example.com", "portal_url": "https://auth.example.com/auth/"},
                    {"domain": "example.org", "portal_url": "https://example.org/auth"},
                ]
            }
        }
    )
    assert [cookie.portal_url for cookie in config.session.cookies] == [
        "https://auth.example.com/auth",
        "https://example.org/auth",
    ]


def test_two_factor_policy_accepted() -> None:
    """two_factor is a valid policy (second factors exist; the disabled mode is checked separately)."""
    config = parse_config({"access_control": {"default_policy": "two_factor"}})
    assert config.access_control.default_policy is Policy.TWO_FACTOR


def test_several_problems_reported_at_once() -> None:
    """Every problem in every section is reported in one ConfigError."""
    paths = problem_paths(
        {
            "server": {"port": 0, "typo": 1},
            "log": {"level": "loud"},
            "session": {"inactivity": "soon", "cookies": [{**COOKIE, "portal_url": "ftp://x"}]},
            "access_control": {"rules": [{"policy": "deny", "path": "(", "methods": "FETCH"}]},
        },
        {"AUTHGATE_NOPE": "1"},
    )
    assert sorted(paths) == sorted(
        [
            "AUTHGATE_NOPE",
            "server.typo",
            "server.port",
            "log.level",
            "session.cookies[0].portal_url",
            "session.inactivity",
            "access_control.rules[0].path",
            "access_control.rules[0].methods",
        ]
    )


def test_error_message_lists_every_problem() -> None:
    """str(ConfigError) shows each key path on its own line."""
    with pytest.raises(ConfigError) as info:
        parse_config({"server": {"port": 0}, "log": {"level": "x"}})
    assert "2 problem(s)" in str(info.value)
    assert "  server.port: " in str(info.value)
    assert "  log.level: " in str(info.value)


@pytest.mark.parametrize(
    ("variable", "value", "key", "expected"),
    [
        ("AUTHGATE_SERVER_PORT", "9000", "server.port", 9000),
        ("AUTHGATE_SERVER_HOST", "::1", "server.host", "::1"),
        ("AUTHGATE_PORTAL_TITLE", "yes", "portal.title", "yes"),
        ("AUTHGATE_PORTAL_TITLE", "Acme: login", "portal.title", "Acme: login"),
        ("AUTHGATE_SESSION_COOKIE_NAME", "sid", "session.cookie_name", "sid"),
        ("AUTHGATE_SESSION_INACTIVITY", "10m", "session.inactivity", 600.0),
        ("AUTHGATE_SESSION_SECURE", "true", "session.secure", True),
        (
            "AUTHGATE_ACCESS_CONTROL_DEFAULT_POLICY",
            "one_factor",
            "access_control.default_policy",
            Policy.ONE_FACTOR,
        ),
        ("AUTHGATE_SECRETS_SESSION_KEYS", f"[{KEY}, {'b' * 40}]", "secrets.session_keys", (KEY, "b" * 40)),
        (
            "AUTHGATE_SERVER_TRUSTED_PROXIES",
            "[10.0.0.0/8, fd00::/8]",
            "server.trusted_proxies",
            (ip_network("10.0.0.0/8"), ip_network("fd00::/8")),
        ),
        (
            "AUTHGATE_ACCESS_CONTROL_RULES",
            '[{"domain": "a.example.com", "policy": "deny"}]',
            "access_control.rules",
            (AccessRule(Policy.DENY, domains=("a.example.com",)),),
        ),
        (
            "AUTHGATE_SESSION_COOKIES",
            "[{domain: example.com, portal_url: 'https://auth.example.com'}]",
            "session.cookies",
            (CookieDomain("example.com", "https://auth.example.com"),),
        ),
    ],
)
def test_environment_overrides(variable: str, value: str, key: str, expected: object) -> None:
    """An AUTHGATE_* variable sets its key, parsed as YAML except for plain string keys."""
    config = parse_config({}, {variable: value})
    section, leaf = key.split(".")
    assert getattr(getattr(config, section), leaf) == expected


def test_environment_wins_over_file() -> None:
    """A variable overrides the same key from YAML and leaves the rest of the section alone."""
    config = parse_config({"server": {"port": 1234, "host": "::1"}}, {"AUTHGATE_SERVER_PORT": "9000"})
    assert (config.server.port, config.server.host) == (9000, "::1")


def test_environment_problem_names_the_variable() -> None:
    """A bad value from the environment is reported at its key path and names the variable."""
    [(path, message)] = problems({}, {"AUTHGATE_SERVER_PORT": "0"})
    assert path == "server.port"
    assert "AUTHGATE_SERVER_PORT" in message


def test_environment_invalid_yaml() -> None:
    """A variable that is not valid YAML is reported by name."""
    assert problem_paths({}, {"AUTHGATE_ACCESS_CONTROL_RULES": "[{policy: deny"}) == [
        "AUTHGATE_ACCESS_CONTROL_RULES"
    ]


def test_config_path_variable_is_not_a_key() -> None:
    """AUTHGATE_CONFIG belongs to the CLI and is ignored here."""
    assert parse_config({}, {"AUTHGATE_CONFIG": "/etc/authgate.yml"}) == Config()


@pytest.mark.parametrize(
    ("variable", "hint"),
    [
        ("AUTHGATE_SESSION_INACTIVTY", "AUTHGATE_SESSION_INACTIVITY"),
        ("AUTHGATE_CONFIG_FILE", "AUTHGATE_CONFIG"),
        ("AUTHGATE_SERVER", None),
    ],
)
def test_unknown_environment_variable(variable: str, hint: str | None) -> None:
    """Unknown AUTHGATE_* variables are errors naming them, with a suggestion when one is close."""
    [(path, message)] = problems({}, {variable: "1", "OTHER_THING": "ignored"})
    assert path == variable
    assert "unknown variable" in message
    if hint is not None:
        assert f"did you mean {hint}?" in message


def test_file_variable(tmp_path: Path) -> None:
    """AUTHGATE_<KEY>_FILE reads the value from a file, one trailing newline stripped."""
    title = tmp_path / "title"
    title.write_text("Acme login\n")
    port = tmp_path / "port"
    port.write_text("9000\n")
    config = parse_config(
        {}, {"AUTHGATE_PORTAL_TITLE_FILE": str(title), "AUTHGATE_SERVER_PORT_FILE": str(port)}
    )
    assert config.portal.title == "Acme login"
    assert config.server.port == 9000


def test_session_keys_file_holds_one_key_per_line(tmp_path: Path) -> None:
    """The session keys file lists one key per line, newest first, blank lines ignored."""
    keys = tmp_path / "session_keys"
    keys.write_text(f"{'n' * 40}\n\n{KEY}\n")
    config = parse_config({}, {"AUTHGATE_SECRETS_SESSION_KEYS_FILE": str(keys)})
    assert config.secrets.session_keys == ("n" * 40, KEY)


def test_file_variable_unreadable(tmp_path: Path) -> None:
    """An unreadable file is reported under the _FILE variable's name."""
    [(path, message)] = problems({}, {"AUTHGATE_SECRETS_SESSION_KEYS_FILE": str(tmp_path / "missing")})
    assert path == "AUTHGATE_SECRETS_SESSION_KEYS_FILE"
    assert "missing" in message


def test_plain_and_file_variable_both_set(tmp_path: Path) -> None:
    """Setting a key both directly and through _FILE is an error."""
    secret = tmp_path / "port"
    secret.write_text("9000")
    [(path, message)] = problems(
        {}, {"AUTHGATE_SERVER_PORT": "9000", "AUTHGATE_SERVER_PORT_FILE": str(secret)}
    )
    assert path == "AUTHGATE_SERVER_PORT"
    assert "AUTHGATE_SERVER_PORT_FILE" in message


def test_top_level_must_be_a_mapping() -> None:
    """A YAML document that is not a mapping is reported."""
    assert problem_paths(["server"]) == ["(top level)"]


def test_path_safety_keys_default_to_the_strict_choice() -> None:
    """Ambiguous paths are refused and rules match case-sensitively unless the config says otherwise."""
    strict = parse_config(with_rule(path="^/admin"), {})
    relaxed = parse_config(
        {
            "access_control": {
                "ambiguous_paths": "allow",
                "rules": [{"policy": "deny", "path_case": "insensitive"}],
            }
        },
        {},
    )

    assert (strict.access_control.ambiguous_paths, strict.access_control.rules[0].path_case) == (
        "refuse",
        "sensitive",
    )
    assert (relaxed.access_control.ambiguous_paths, relaxed.access_control.rules[0].path_case) == (
        "allow",
        "insensitive",
    )
