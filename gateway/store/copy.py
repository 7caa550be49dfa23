"""`authgate db copy`: move every row of a SQLite database into an empty PostgreSQL one.

Both ends are first brought to the current schema (one migration list for both engines:
gateway/store/migrations.py), so their tables and columns match; the copy then
- refuses a target that holds any row (nothing is ever overwritten or merged),
- reads the source in one read transaction (a consistent snapshot),
- writes every table in foreign-key order with COPY, in ONE target transaction,
- moves each id sequence past the highest id the source ever handed out (SQLite's
  AUTOINCREMENT counter included), so ids are never reused after the move,
- compares row counts per table before it commits; any difference rolls everything back.
Sessions, TOTP devices, passkeys, recovery codes and app passwords are rows like any
other: their secrets are sealed or hashed with keys kept in data_dir/secrets (or the
configuration), which the PostgreSQL instances must share, not in the database.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from gateway.errors import StorageError
from gateway.store.dsn import redact_dsn
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import Store

_BATCH = 5000
# Tables kept by each engine for itself, never copied.
_ENGINE_TABLES = {"schema_version", "sqlite_sequence"}

_TABLES = """
SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind = 'r'
ORDER BY c.relname
"""
_FOREIGN_KEYS = """
SELECT c.conrelid::regclass::text AS child, c.confrelid::regclass::text AS parent
FROM pg_constraint AS c JOIN pg_namespace AS n ON n.oid = c.connamespace
WHERE c.contype = 'f' AND n.nspname = current_schema()
"""
_COLUMNS = """
SELECT column_name, data_type FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = $1
ORDER BY ordinal_position
"""
_SERIALS = """
SELECT table_name, column_name FROM information_schema.columns
WHERE table_schema = current_schema() AND column_default LIKE 'nextval(%'
"""


@dataclass(frozen=True)
class TableCopy:
    """How many rows one table had in the source and has in the target."""

    table: str
    source_rows: int
    target_rows: int


def sqlite_path(url: str) -> Path:
    """sqlite:///abs/path (or sqlite://rel/path, or a bare path) -> the file path."""
    path = url.removeprefix("sqlite://") if url.startswith("sqlite://") else url
    if not path:
        raise StorageError("the source names no file; use sqlite:///path/to/authgate.sqlite3")
    return Path(path)


async def copy_sqlite_to_postgres(source: Path, dsn: str) -> list[TableCopy]:
    """Copy every row of the SQLite database at `source` into the empty database at `dsn`."""
    if not source.is_file():
        raise StorageError(f"no SQLite database at {str(source)!r}")
    # Opening migrates both ends to the current schema, so their tables match.
    await (await Store.open(source)).close()
    target = await PostgresStore.open(dsn)
    await target.close()
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StorageError(f"cannot connect to {redact_dsn(dsn)}: {type(exc).__name__}") from exc
    try:
        return await _copy(source, conn)
    finally:
        await conn.close()


async def _copy(source: Path, conn: asyncpg.Connection) -> list[TableCopy]:
    tables = [row[0] for row in await conn.fetch(_TABLES) if row[0] not in _ENGINE_TABLES]
    order = _dependency_order(
        tables, [(row["child"], row["parent"]) for row in await conn.fetch(_FOREIGN_KEYS)]
    )
    columns = {table: [(r[0], r[1]) for r in await conn.fetch(_COLUMNS, table)] for table in order}
    serials = [(row[0], row[1]) for row in await conn.fetch(_SERIALS) if row[0] in columns]

    filled = []
    for table in order:
        query = f"SELECT EXISTS (SELECT 1 FROM {_ident(table)})"  # noqa: S608 - a catalog name, quoted
        if await conn.fetchval(query):
            filled.append(table)
    if filled:
        raise StorageError(
            f"the target database is not empty (rows in {', '.join(filled)}); "
            "db copy only fills a new, empty database"
        )

    reader = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        source_tables = {
            row[0]
            for row in reader.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if row[0] not in _ENGINE_TABLES
        }
        if source_tables != set(order):
            raise StorageError(
                f"the two schemas differ: only in SQLite {sorted(source_tables - set(order))}, "
                f"only in PostgreSQL {sorted(set(order) - source_tables)}"
            )
        reader.execute("BEGIN")  # one snapshot for every table
        results = []
        async with conn.transaction():
            for table in order:
                names = [name for name, _type in columns[table]]
                source_columns = {row[1] for row in reader.execute(f"PRAGMA table_info({_ident(table)})")}
                if source_columns != set(names):
                    raise StorageError(f"table {table}: the columns differ between SQLite and PostgreSQL")
                count = 0
                for batch in _batches(reader, table, names):
                    converted = [_convert(row, columns[table]) for row in batch]
                    await conn.copy_records_to_table(table, records=converted, columns=names)
                    count += len(converted)
                    await asyncio.sleep(0)
                results.append((table, count))
            for table, column in serials:
                next_id = _next_id(reader, table, column)
                await conn.execute(
                    "SELECT setval(pg_get_serial_sequence($1, $2), $3, false)", table, column, next_id
                )
            checked = []
            for table, count in results:
                stored = int(await conn.fetchval(f"SELECT count(*) FROM {_ident(table)}"))  # noqa: S608 - catalog names
                checked.append(TableCopy(table=table, source_rows=count, target_rows=stored))
            wrong = [c for c in checked if c.source_rows != c.target_rows]
            if wrong:
                raise StorageError(
                    "row counts differ after the copy (nothing was kept): "
                    + ", ".join(f"{c.table} {c.source_rows} -> {c.target_rows}" for c in wrong)
                )
        reader.execute("ROLLBACK")
        return checked
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read {str(source)!r}: {exc}") from exc
    finally:
        reader.close()


def _dependency_order(tables: list[str], edges: list[tuple[str, str]]) -> list[str]:
    """Parents before children (a foreign key's target table is filled first)."""
    parents = {table: {p for c, p in edges if c == table and p != table and p in tables} for table in tables}
    order: list[str] = []
    while len(order) < len(tables):
        ready = [t for t in tables if t not in order and parents[t] <= set(order)]
        if not ready:
            raise StorageError("the foreign keys form a cycle; cannot order the tables")
        order.extend(sorted(ready))
    return order


def _batches(reader: sqlite3.Connection, table: str, names: list[str]) -> Iterator[list[tuple[Any, ...]]]:
    cursor = reader.execute(f"SELECT {', '.join(_ident(n) for n in names)} FROM {_ident(table)}")  # noqa: S608 - catalog names
    while rows := cursor.fetchmany(_BATCH):
        yield rows


def _convert(row: tuple[Any, ...], columns: list[tuple[str, str]]) -> tuple[Any, ...]:
    """SQLite's loosely typed values -> what each PostgreSQL column takes (an int in a REAL column...)."""
    out: list[Any] = []
    for value, (_name, data_type) in zip(row, columns, strict=True):
        if value is None:
            out.append(None)
        elif data_type == "double precision":
            out.append(float(value))
        elif data_type in ("bigint", "integer", "smallint"):
            out.append(int(value))
        elif data_type == "bytea":
            out.append(bytes(value))
        else:
            out.append(value if isinstance(value, str) else str(value))
    return tuple(out)


def _next_id(reader: sqlite3.Connection, table: str, column: str) -> int:
    """One past the highest id SQLite has handed out for `table`, deleted rows included."""
    highest = reader.execute(f"SELECT COALESCE(MAX({_ident(column)}), 0) FROM {_ident(table)}").fetchone()[0]  # noqa: S608 - catalog names
    counter = 0
    has_counter = reader.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone()
    if has_counter:
        found = reader.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        counter = int(found[0]) if found else 0
    return max(int(highest), counter) + 1


def _ident(name: str) -> str:
    """Quote an identifier read from a catalog (both engines' rule: double quotes, doubled inside)."""
    return '"' + name.replace('"', '""') + '"'
