"""A throwaway PostgreSQL cluster for the tests, and store fixtures over both engines.

One cluster per test session (Debian's postgresql 15 binaries): initdb in a temp dir as
user `nobody` when the tests run as root (postgres refuses root), listening on 127.0.0.1
on a free port with its unix socket in the temp dir, fsync off. Each test gets a fresh
database copied from a template that is already migrated (CREATE DATABASE ... TEMPLATE),
which costs a few tens of milliseconds. The superuser `authgate` has a password, so the
DSN the tests use carries one, as a real deployment's does (tests check it never shows).

Missing binaries skip the tests, except under CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from gateway.store import migrations
from gateway.store.contract import Storage

PG_BIN_DIRS = ("/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")
PG_USER = "authgate"
PG_PASSWORD = "pg-test-secret-5d1c"  # noqa: S105 - a throwaway cluster's password, checked never to be logged
TEMPLATE = "authgate_template"
ENGINES = ("sqlite", "postgres")
# Empties every table but schema_version and restarts the id sequences: a fresh database's state.
# Refuses (so the database is dropped instead) when the test changed the schema version.
_EMPTY_TABLES = """
DO $$
DECLARE names text;
BEGIN
    IF (SELECT max(version) FROM schema_version) IS DISTINCT FROM %d THEN
        RAISE EXCEPTION 'schema version changed';
    END IF;
    SELECT string_agg(quote_ident(tablename), ', ') INTO names
    FROM pg_tables WHERE schemaname = current_schema() AND tablename <> 'schema_version';
    EXECUTE 'TRUNCATE ' || names || ' RESTART IDENTITY CASCADE';
END $$;
"""


def find_pg_bin() -> Path | None:
    """Return the directory holding initdb/pg_ctl/postgres, or None."""
    for candidate in PG_BIN_DIRS:
        if os.access(Path(candidate) / "initdb", os.X_OK):
            return Path(candidate)
    return None


def missing_postgres() -> None:
    message = (
        "PostgreSQL server binaries not found; install Debian's postgresql package "
        "(deploy/ensure-test-tools.sh)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temp dir, run as an unprivileged user."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="authgate-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._names = itertools.count(1)
        self._spare: list[str] = []  # emptied databases, ready for the next test
        self._as_nobody = os.geteuid() == 0
        if self._as_nobody:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
        os.chmod(self.root, 0o700)

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self._as_nobody:
            command = ["runuser", "-u", "nobody", "--", *command]
        return subprocess.run(
            command, check=check, capture_output=True, text=True, timeout=timeout, cwd=self.root
        )

    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(PG_PASSWORD + "\n")
        if self._as_nobody:
            nobody = pwd.getpwnam("nobody")
            os.chown(pwfile, nobody.pw_uid, nobody.pw_gid)
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            PG_USER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        )
        pwfile.unlink()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (fast: disconnect clients and shut down cleanly)."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run SQL as the superuser over the unix socket; return its unaligned output."""
        result = self._run(
            str(self.bin_dir / "psql"),
            "-h",
            str(self.root),
            "-p",
            str(self.port),
            "-U",
            PG_USER,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            sql,
        )
        return result.stdout.strip()

    def dsn(self, database: str) -> str:
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self, *, migrated: bool = True) -> str:
        """Create a fresh database (a copy of the migrated template, or empty) and return its DSN."""
        name = f"t{os.getpid()}_{next(self._names)}"
        template = TEMPLATE if migrated else "template0"
        self.psql(f"CREATE DATABASE {name} TEMPLATE {template}")
        return self.dsn(name)

    def fresh_database(self) -> str:
        """A migrated, empty database: a recycled one when there is one, else a new copy."""
        return self._spare.pop() if self._spare else self.create_database()

    def recycle(self, dsn: str) -> None:
        """Empty a test's database for the next test (cheaper than CREATE DATABASE), or drop it
        when the test changed what a fresh one must look like (its schema version)."""
        name = dsn.rsplit("/", 1)[1]
        try:
            self.psql(_EMPTY_TABLES % migrations.SCHEMA_VERSION, database=name)
        except subprocess.CalledProcessError:
            with contextlib.suppress(subprocess.CalledProcessError):
                self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            return
        self._spare.append(dsn)

    def terminate_backends(self, application_name: str = "authgate") -> int:
        """pg_terminate_backend every connection of `application_name`; return how many."""
        if not application_name.isidentifier():
            raise ValueError(f"not a plain name: {application_name!r}")
        query = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '%s'"
        out = self.psql(query % application_name)
        return int(out or 0)

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """Start a cluster with a migrated template database; skip (or fail under CI) without binaries."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        missing_postgres()
    assert bin_dir is not None
    server = PostgresServer(bin_dir)
    try:
        server.init()
        server.start()
        server.psql(f"CREATE DATABASE {TEMPLATE}")
        asyncio.run(_migrate(server.dsn(TEMPLATE)))
    except BaseException:
        with contextlib.suppress(Exception):
            print(server.log.read_text()[-4000:])  # noqa: T201 - shown with the failure
        server.cleanup()
        raise
    return server


async def _migrate(dsn: str) -> None:
    from gateway.store.postgres import PostgresStore

    store = await PostgresStore.open(dsn)
    await store.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL cluster (started on first use)."""
    server = start_postgres()
    yield server
    server.cleanup()


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """The DSN of a migrated database of its own for this test, empty as a fresh one."""
    dsn = postgres_server.fresh_database()
    yield dsn
    postgres_server.recycle(dsn)


class MakeStore(Protocol):
    def __call__(self, *, clock: Callable[[], float] = ..., **options: Any) -> Awaitable[Storage]: ...


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Each engine in turn: the contract tests run on SQLite and on PostgreSQL."""
    return str(request.param)


@pytest.fixture(params=ENGINES, name="storage_engine")
def both_storage_engines(request: pytest.FixtureRequest) -> str:
    """Import into an HTTP test module to run its tests on both engines (tests/http/conftest.py)."""
    return str(request.param)


@pytest.fixture
def engine_db(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Where this test's store lives: a SQLite file path, or a fresh PostgreSQL database's DSN."""
    if engine == "postgres":
        return str(request.getfixturevalue("pg_dsn"))
    return str(tmp_path / "data" / "authgate.sqlite3")


@pytest.fixture
async def make_store(engine: str, engine_db: str) -> AsyncIterator[MakeStore]:
    """Open stores on this test's database; each call is another instance (its own connections)."""
    opened: list[Storage] = []

    async def factory(*, clock: Callable[[], float] = time.time, **options: Any) -> Storage:
        store: Storage
        if engine == "postgres":
            from gateway.store.postgres import PostgresStore

            # SQLite's lock wait; the tests that shorten it test SQLite's locks (sqlite_only), and
            # PostgreSQL keeps its own timeouts (a short pool wait fails bursts on a loaded machine).
            options.pop("busy_timeout", None)
            store = await PostgresStore.open(engine_db, clock=clock, **options)
        else:
            from gateway.store.sqlite import Store

            store = await Store.open(engine_db, clock=clock, **options)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        with contextlib.suppress(Exception):
            await store.close()


def deselect_sqlite_only(items: list[pytest.Item], config: pytest.Config) -> None:
    """Drop the PostgreSQL run of tests marked sqlite_only (they test SQLite's own behaviour)."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("engine") == "postgres"
        (drop if on_postgres and item.get_closest_marker("sqlite_only") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
