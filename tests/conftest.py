"""Fixtures every test directory shares: the PostgreSQL cluster and the two-engine store factory."""

from __future__ import annotations

import pytest

from tests.pg import deselect_sqlite_only, engine, engine_db, make_store, pg_dsn, postgres_server

__all__ = ["engine", "engine_db", "make_store", "pg_dsn", "postgres_server"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    deselect_sqlite_only(items, config)
