"""storage.engine and storage.postgres: the engine follows the DSN, errors name the key, the DSN's
password never appears in an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.store.dsn import redact_dsn

DSN = "postgresql://authgate:s3cret-pw@db.example.com:5432/authgate"


def problems(data: object, environ: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, environ or {})
    assert "s3cret-pw" not in str(caught.value)
    return caught.value.problems


def test_sqlite_is_the_default() -> None:
    """Without a DSN the engine is SQLite in data_dir."""
    config = parse_config({})
    assert config.storage.engine == "sqlite"
    assert config.storage.postgres.dsn == ""


def test_a_dsn_makes_the_engine_postgres() -> None:
    """storage.postgres.dsn alone selects PostgreSQL; its other keys keep their defaults."""
    storage = parse_config({"storage": {"postgres": {"dsn": DSN}}}).storage
    assert (storage.engine, storage.postgres.dsn, storage.postgres.pool_size) == ("postgres", DSN, 10)
    assert "s3cret-pw" not in repr(storage)


def test_postgres_keys_from_the_environment() -> None:
    """AUTHGATE_STORAGE_POSTGRES_* set single keys and join the file's mapping."""
    config = parse_config(
        {"storage": {"postgres": {"pool_size": 4}}},
        {"AUTHGATE_STORAGE_POSTGRES_DSN": DSN, "AUTHGATE_STORAGE_POSTGRES_STATEMENT_TIMEOUT": "2s"},
    )
    pg = config.storage.postgres
    assert (pg.dsn, pg.pool_size, pg.statement_timeout, config.storage.engine) == (DSN, 4, 2.0, "postgres")


def test_dsn_from_a_file(tmp_path: Path) -> None:
    """AUTHGATE_STORAGE_POSTGRES_DSN_FILE and storage.postgres.dsn_file read the DSN from a file."""
    path = tmp_path / "dsn"
    path.write_text(DSN + "\n")
    by_variable = parse_config({}, {"AUTHGATE_STORAGE_POSTGRES_DSN_FILE": str(path)})
    by_key = parse_config({"storage": {"postgres": {"dsn_file": str(path)}}})
    assert by_variable.storage.postgres.dsn == by_key.storage.postgres.dsn == DSN


@pytest.mark.parametrize(
    ("data", "key", "text"),
    [
        (
            {"storage": {"engine": "postgres"}},
            "storage.postgres.dsn",
            "required when storage.engine is postgres",
        ),
        ({"storage": {"engine": "mysql"}}, "storage.engine", "use one of sqlite, postgres"),
        ({"storage": {"engine": "sqlite", "postgres": {"dsn": DSN}}}, "storage.engine", "dsn is set"),
        (
            {"storage": {"postgres": {"dsn": "host=db password=s3cret-pw"}}},
            "storage.postgres.dsn",
            "postgresql://",
        ),
        (
            {"storage": {"postgres": {"dsn": "mysql://u:s3cret-pw@h/db"}}},
            "storage.postgres.dsn",
            "postgresql://",
        ),
        (
            {"storage": {"postgres": {"dsn": "postgresql://u:s3cret-pw@h"}}},
            "storage.postgres.dsn",
            "no database",
        ),
        (
            {"storage": {"postgres": {"dsn": "postgresql://u:s3cret-pw@h:x/db"}}},
            "storage.postgres.dsn",
            "valid URI",
        ),
        ({"storage": {"postgres": {"dsn": DSN, "pool_size": 0}}}, "storage.postgres.pool_size", "1-1000"),
        (
            {"storage": {"postgres": {"dsn": DSN, "connect_timeout": "0s"}}},
            "storage.postgres.connect_timeout",
            "zero",
        ),
        ({"storage": {"postgres": {"dsn": DSN, "poolsize": 3}}}, "storage.postgres.poolsize", "pool_size"),
        ({"storage": {"postgres": "postgresql://x"}}, "storage.postgres", "not a mapping"),
    ],
)
def test_errors_name_the_key(data: object, key: str, text: str) -> None:
    """Each bad value is reported at its key path, saying what is allowed, without the password."""
    found = problems(data)
    assert any(path == key and text in message for path, message in found), found


def test_dsn_and_dsn_file_together_are_refused(tmp_path: Path) -> None:
    """Both dsn and dsn_file: one problem at dsn_file; an unreadable file names its path."""
    path = tmp_path / "dsn"
    path.write_text(DSN)
    found = problems({"storage": {"postgres": {"dsn": DSN, "dsn_file": str(path)}}})
    assert found == [("storage.postgres.dsn_file", "both dsn and dsn_file are set; use one")]
    missing = problems({"storage": {"postgres": {"dsn_file": str(tmp_path / "nope")}}})
    assert missing[0][0] == "storage.postgres.dsn_file" and "cannot read" in missing[0][1]


def test_a_bad_dsn_from_the_environment_names_the_variable() -> None:
    """A DSN set by a variable is reported at its key, saying which variable set it."""
    found = problems({}, {"AUTHGATE_STORAGE_POSTGRES_DSN": "host=db password=s3cret-pw"})
    assert found[0][0] == "storage.postgres.dsn"
    assert "(set by AUTHGATE_STORAGE_POSTGRES_DSN)" in found[0][1]


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (DSN, "postgresql://authgate:***@db.example.com:5432/authgate"),
        ("postgresql://authgate@db/authgate", "postgresql://authgate@db/authgate"),
        (
            "postgres://u:p%40ss@[::1]:5432/db?sslmode=verify-full",
            "postgres://u:***@[::1]:5432/db?sslmode=verify-full",
        ),
        (
            "postgresql://u@h/db?password=s3cret-pw&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
    ],
)
def test_redact_dsn(dsn: str, shown: str) -> None:
    """Logs and errors show the DSN with every password replaced by ***."""
    assert redact_dsn(dsn) == shown
