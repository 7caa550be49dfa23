"""Fixtures for HTTP tests: a controllable clock, config and app client factories."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiohttp import DummyCookieJar
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.config import Config
from tests.http.helpers import Clock, MakeClient, build_config


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def storage_engine() -> str:
    """SQLite; a module runs on both engines by importing tests.pg.both_storage_engines."""
    return "sqlite"


@pytest.fixture
def make_config(tmp_path: Path, storage_engine: str, request: pytest.FixtureRequest) -> Callable[..., Config]:
    engine: dict[str, Any] = {}
    if storage_engine == "postgres":
        engine = {"storage": {"postgres": {"dsn": request.getfixturevalue("pg_dsn")}}}
    return partial(build_config, tmp_path, engine=engine)


@pytest.fixture
def make_client(aiohttp_client: Any, make_config: Callable[..., Config], clock: Clock) -> MakeClient:
    """Return a factory of test clients; cookies are never stored, each test sends them by hand."""

    async def factory(overrides: Mapping[str, Any] | None = None, *, config: Config | None = None) -> Any:
        app = create_app(config or make_config(overrides), clock=clock)
        return await aiohttp_client(app, cookie_jar=DummyCookieJar())

    return factory


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient[Any, Any]:
    return await make_client()
