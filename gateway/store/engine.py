"""open_store(config): the one place that picks the storage engine the configuration names."""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.config import StorageConfig
from gateway.store.contract import Storage


async def open_store(storage: StorageConfig, *, clock: Callable[[], float] = time.time) -> Storage:
    """Open (and migrate) the store for `storage`: SQLite in data_dir, or PostgreSQL at postgres.dsn."""
    if storage.engine == "postgres":
        # Imported here so a SQLite deployment never loads the PostgreSQL driver.
        from gateway.store.postgres import PostgresStore

        pg = storage.postgres
        return await PostgresStore.open(
            pg.dsn,
            clock=clock,
            pool_size=pg.pool_size,
            connect_timeout=pg.connect_timeout,
            statement_timeout=pg.statement_timeout,
            statement_cache=not pg.pgbouncer,
        )
    from gateway.store.sqlite import Store

    return await Store.open(storage.database_path, clock=clock, busy_timeout=storage.busy_timeout)
