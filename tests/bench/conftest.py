"""The HTTP test fixtures (clock, config and client factories) for the bench tests."""

from tests.http.conftest import client, clock, make_client, make_config, storage_engine  # noqa: F401
