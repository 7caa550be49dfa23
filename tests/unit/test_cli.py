"""The authgate CLI run in-process: users management and config check."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from gateway.__main__ import main
from gateway.config import load_config
from gateway.factors.passwords import PasswordHasher
from gateway.store.sqlite import Store

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "authgate.example.yml"
PASSWORD = "correct horse battery"

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.startswith("AUTHGATE_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "authgate.yml"
    config = {
        "storage": {"data_dir": str(tmp_path / "data")},
        "password": {"time_cost": 1, "memory_cost": 64, "parallelism": 1},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def run(config_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """Return a runner: run("users", "list", stdin="...") -> (exit code, stdout, stderr)."""

    def runner(*args: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = main(["--config", str(config_file), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return runner


def add(run: Run, name: str = "bob", *extra: str, password: str = PASSWORD) -> tuple[int, str, str]:
    return run(
        "users",
        "add",
        name,
        "--email",
        f"{name}@example.com",
        *extra,
        "--password-stdin",
        stdin=password + "\n",
    )


def show(run: Run, name: str = "bob") -> dict[str, object]:
    code, out, _ = run("users", "show", name)
    assert code == 0
    return dict(json.loads(out))


def test_users_add_then_show(run: Run) -> None:
    """users add stores the user with its e-mail, name and groups."""
    code, out, _ = add(run, "bob", "--name", "Bob B", "--groups", "admins, dev")

    assert code == 0
    assert "created user bob" in out
    assert show(run) == {
        "username": "bob",
        "email": "bob@example.com",
        "display_name": "Bob B",
        "groups": ["admins", "dev"],
        "disabled": False,
        "source": "local",
    }


def test_users_add_lowercases_the_username(run: Run) -> None:
    """A username given in capitals is stored in lower case."""
    assert add(run, "Carol")[0] == 0

    assert show(run, "carol")["username"] == "carol"


def test_users_add_duplicate_is_an_error(run: Run) -> None:
    """Adding an existing username fails with exit code 2 and says why."""
    add(run)

    code, _, err = add(run)

    assert code == 2
    assert "already taken" in err


def test_users_add_bad_email_is_an_error(run: Run) -> None:
    """A malformed e-mail fails with exit code 2 before asking for a password."""
    code, _, err = run("users", "add", "bob", "--email", "not-an-email", "--password-stdin", stdin=PASSWORD)

    assert code == 2
    assert "not a valid address" in err
    assert run("users", "list", "--json")[1].strip() == "[]"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("Bad Name!",), "is not allowed", id="bad username"),
        pytest.param(("bob", "--groups", "a b"), "group 'a b' is not allowed", id="bad group"),
    ],
)
def test_users_add_validation(run: Run, args: tuple[str, ...], message: str) -> None:
    """Invalid usernames and groups are refused with exit code 2."""
    name, *rest = args

    code, _, err = run(
        "users", "add", name, "--email", "x@example.com", *rest, "--password-stdin", stdin=PASSWORD
    )

    assert code == 2
    assert message in err


def test_users_add_short_password_is_an_error(run: Run) -> None:
    """A password under the minimum length is refused."""
    code, _, err = add(run, password="short")

    assert code == 2
    assert "at least 8 characters" in err


def test_users_list(run: Run) -> None:
    """users list shows every user, as text or JSON."""
    add(run, "bob")
    add(run, "alice")

    code, out, _ = run("users", "list")
    _, as_json, _ = run("users", "list", "--json")

    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["alice", "bob"]
    assert [u["username"] for u in json.loads(as_json)] == ["alice", "bob"]


def test_users_passwd_changes_the_password(run: Run, config_file: Path) -> None:
    """users passwd replaces the hash, so only the new password verifies."""
    add(run)

    code, out, _ = run("users", "passwd", "bob", "--password-stdin", stdin="a brand new password\n")

    async def password_hash() -> str | None:
        config = load_config(str(config_file), {})
        store = await Store.open(config.storage.database_path)
        try:
            found = await store.find_login("bob")
        finally:
            await store.close()
        assert found is not None
        return found[1]

    stored = asyncio.run(password_hash())
    hasher = PasswordHasher(load_config(str(config_file), {}).password)
    assert code == 0
    assert "password changed for bob" in out
    assert hasher.verify(stored, "a brand new password")
    assert not hasher.verify(stored, PASSWORD)


def test_users_disable_and_enable(run: Run) -> None:
    """users disable and enable flip the disabled flag."""
    add(run)

    assert run("users", "disable", "bob")[0] == 0
    assert show(run)["disabled"] is True
    assert run("users", "enable", "bob")[0] == 0
    assert show(run)["disabled"] is False


def test_users_modify(run: Run) -> None:
    """users modify changes only the given fields."""
    add(run, "bob", "--groups", "dev")

    code, _, _ = run("users", "modify", "bob", "--email", "robert@example.com", "--groups", "ops,admins")

    assert code == 0
    assert show(run) == {
        "username": "bob",
        "email": "robert@example.com",
        "display_name": "bob",
        "groups": ["ops", "admins"],
        "disabled": False,
        "source": "local",
    }


def test_users_modify_bad_email_is_an_error(run: Run) -> None:
    """users modify with a malformed e-mail exits 2 and changes nothing."""
    add(run)

    code, _, err = run("users", "modify", "bob", "--email", "nope")

    assert code == 2
    assert "not a valid address" in err
    assert show(run)["email"] == "bob@example.com"


def test_users_delete_needs_yes(run: Run) -> None:
    """users delete refuses without --yes and deletes with it."""
    add(run)

    refused = run("users", "delete", "bob")
    deleted = run("users", "delete", "bob", "--yes")

    assert refused[0] == 2
    assert "--yes" in refused[2]
    assert deleted[0] == 0
    assert run("users", "show", "bob")[0] == 2


@pytest.mark.parametrize("command", ["show", "disable", "enable", "passwd", "delete"])
def test_unknown_user_is_an_error(run: Run, command: str) -> None:
    """Commands naming a missing user exit 2 with "no user named"."""
    code, _, err = run("users", command, "ghost", stdin=PASSWORD + "\n")

    assert code == 2
    assert "no user named 'ghost'" in err


def test_config_check_accepts_the_example(run: Run) -> None:
    """The shipped example configuration is valid."""
    code, out, _ = run("config", "check", str(EXAMPLE))

    assert code == 0
    assert "configuration is valid" in out


def test_config_check_lists_every_problem(run: Run, tmp_path: Path) -> None:
    """A broken file exits 2 and names the key path of every problem."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        yaml.safe_dump(
            {
                "server": {"port": 70000, "trusted_proxies": ["not-a-network"]},
                "session": {"expiration": "soon", "cookies": [{"domain": "example.com"}]},
                "log": {"level": "loud"},
                "unknown_section": {},
            }
        )
    )

    code, _, err = run("config", "check", str(broken))

    assert code == 2
    for path in (
        "server.port",
        "server.trusted_proxies[0]",
        "session.expiration",
        "session.cookies[0].portal_url",
        "log.level",
        "unknown_section",
    ):
        assert path in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("server: [unclosed", "not valid YAML", id="bad yaml"),
        pytest.param("server:\n  port: 1\n  port: 2\n", "duplicate key", id="duplicate key"),
    ],
)
def test_config_check_unreadable_yaml(run: Run, tmp_path: Path, content: str, message: str) -> None:
    """YAML that does not parse exits 2 with the reason."""
    broken = tmp_path / "broken.yml"
    broken.write_text(content)

    code, _, err = run("config", "check", str(broken))

    assert code == 2
    assert message in err


def test_config_check_missing_file(run: Run, tmp_path: Path) -> None:
    """A missing file exits 2 and says it cannot be read."""
    code, _, err = run("config", "check", str(tmp_path / "nope.yml"))

    assert code == 2
    assert "cannot read" in err


def test_config_check_names_the_path_matching_keys(run: Run, tmp_path: Path) -> None:
    """config check refuses an unknown ambiguous_paths or path_case value and names the key."""
    broken = tmp_path / "paths.yml"
    broken.write_text(
        yaml.safe_dump(
            {
                "access_control": {
                    "ambiguous_paths": "block",
                    "rules": [{"policy": "deny", "path_case": "ignore"}],
                }
            }
        )
    )

    code, _, err = run("config", "check", str(broken))

    assert code == 2
    assert 'access_control.ambiguous_paths: "block" is not allowed; use one of refuse, allow' in err
    assert (
        'access_control.rules[0].path_case: "ignore" is not allowed; use one of sensitive, insensitive' in err
    )


def test_config_check_warns_about_tls_skip_verify(run: Run, tmp_path: Path) -> None:
    """A valid file with ldap tls_skip_verify passes, with a warning naming the key."""
    path = tmp_path / "ldap.yml"
    ldap = {
        "url": "ldaps://ldap.example.com",
        "bind_dn": "cn=authgate,dc=example,dc=com",
        "bind_password": "service-secret",
        "base_dn": "dc=example,dc=com",
        "tls_skip_verify": True,
    }
    path.write_text(yaml.safe_dump({"authentication_backend": {"ldap": ldap}}))

    code, out, err = run("config", "check", str(path))

    assert code == 0
    assert "configuration is valid" in out
    assert "warning: authentication_backend.ldap.tls_skip_verify" in err
    assert "service-secret" not in out + err
