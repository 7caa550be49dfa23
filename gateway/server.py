"""Run the gateway: one process, or N worker processes sharing the port (SO_REUSEPORT).

With SO_REUSEPORT the kernel spreads new connections over the workers' sockets.
Workers share nothing but the SQLite database (WAL mode): a session created on
one worker is found by the others on their first cache miss, and a revocation
reaches them within `session.cache_ttl`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, InvalidHeader, LineTooLong

from gateway import metrics_http
from gateway.app import create_app, session_keys
from gateway.config import Config, split_listen
from gateway.logs import configure_logging, log_event
from gateway.metrics import prepare_directory
from gateway.store.engine import open_store
from portal.web import compile_templates


def _install_uvloop() -> str:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


# The longest header line authgate reads (name and value). nginx.conf.example's subrequest
# builds X-Original-URL from a request line and a Host header of up to 8 KiB each (nginx's
# large_client_header_buffers), so up to about 16 KiB; aiohttp's default of 8 KiB would refuse
# it with a 400, which nginx turns into a 500. Longer lines are still refused (LineTooLong).
MAX_FIELD_SIZE = 18 * 1024


def _protocol_error_reason(exc: HttpProcessingError) -> str:
    """Say what aiohttp refused without the refused bytes (they may be a cookie)."""
    if isinstance(exc, LineTooLong):
        return f"a line over {exc.args[1]} bytes"
    if isinstance(exc, InvalidHeader):
        return "an invalid header"
    first = (exc.message or "").split("\n", 1)[0]
    return first.split(":", 1)[0].strip()[:120] or "malformed request"


class _OneLineProtocolErrors(logging.Filter):
    """Turn aiohttp's traceback for a request its parser refused into one structured log line.

    aiohttp answers such a request (an overlong line, too many headers, a bad request line)
    400 itself and logs it on aiohttp.server with the whole traceback: the client's fault,
    not authgate's, so one line saying what and from where is enough. Every other record
    (a real failure inside a handler) passes through untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        log_event(
            "http_bad_request",
            logging.WARNING,
            status=exc.code,
            error=type(exc).__name__,
            reason=_protocol_error_reason(exc),
            peer=args[0] if args else None,
        )
        return False


_PROTOCOL_ERRORS = _OneLineProtocolErrors()


# On SIGTERM a worker stops accepting, lets requests in flight finish for up to this long,
# and only then closes the database (systemd's default TimeoutStopSec is 90 s).
SHUTDOWN_GRACE = 30.0


async def _start_metrics_listener(config: Config, app: web.Application, reuse_port: bool) -> web.AppRunner:
    runner = web.AppRunner(metrics_http.listener_app(app), access_log=None, handle_signals=False)
    await runner.setup()
    host, port = split_listen(config.metrics.listen)
    # Every worker listens (SO_REUSEPORT): whichever answers a scrape adds up all of them.
    await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
    return runner


async def _run_worker(config: Config, reuse_port: bool, metrics_dir: str | None = None) -> None:
    app = create_app(config, metrics_dir=metrics_dir)
    server_logger = logging.getLogger("aiohttp.server")
    if _PROTOCOL_ERRORS not in server_logger.filters:
        server_logger.addFilter(_PROTOCOL_ERRORS)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        max_field_size=MAX_FIELD_SIZE,
        shutdown_timeout=SHUTDOWN_GRACE,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port, reuse_port=reuse_port, backlog=1024)
    await site.start()
    runners = [runner]
    if config.metrics.enabled and config.metrics.listen:
        runners.insert(0, await _start_metrics_listener(config, app, reuse_port))
    compile_templates()
    # Everything built so far (modules, compiled templates, config, compiled rules) lives as
    # long as the worker: move it out of the collector's sight, so a full collection under load
    # scans only what requests created, not the whole application (tens of ms otherwise).
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log_event("worker_started", pid=os.getpid(), host=config.server.host, port=config.server.port)
    try:
        await stop.wait()
        log_event("worker_stopping", pid=os.getpid(), grace=SHUTDOWN_GRACE)
    finally:
        # Each runner closes its listening socket first, then waits for the handlers still
        # running (their answers go out whole), then runs cleanup (flushes, closes the store).
        for each in runners:
            await each.cleanup()
        log_event("worker_stopped", pid=os.getpid())


async def _prepare_database(config: Config) -> None:
    # Migrate once here so that workers never race to migrate the same file.
    store = await open_store(config.storage)
    await store.close()


def worker_main(config: Config, reuse_port: bool, metrics_dir: str | None = None) -> None:
    """Entry point of one worker process."""
    configure_logging(config.log.level, config.log.format)
    _install_uvloop()
    asyncio.run(_run_worker(config, reuse_port, metrics_dir))


def metrics_directory(config: Config) -> Path:
    """Where the workers publish their metric totals (emptied at every start)."""
    return Path(config.storage.data_dir) / "metrics"


def resolve_workers(config: Config, override: int | None) -> int:
    count = config.server.workers if override is None else override
    if count < 0:
        raise ValueError(f"--workers must be 0 (one per core) or more, not {count}")
    return count or (os.cpu_count() or 1)


def serve(config: Config, *, workers: int | None = None) -> None:
    """Serve until SIGINT/SIGTERM."""
    configure_logging(config.log.level, config.log.format)
    count = resolve_workers(config, workers)
    session_keys(config)  # create generated secrets once, before workers race for them
    asyncio.run(_prepare_database(config))
    log_event("starting", workers=count, loop=_install_uvloop() if count == 1 else "per worker")
    if count == 1:
        asyncio.run(_run_worker(config, reuse_port=False))
        return
    metrics_dir = str(prepare_directory(metrics_directory(config))) if config.metrics.enabled else None
    context = multiprocessing.get_context("spawn")
    processes: list[Any] = [
        context.Process(target=worker_main, args=(config, True, metrics_dir), name=f"authgate-worker-{i}")
        for i in range(count)
    ]
    for process in processes:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for process in processes:
        process.join()
    failed = [p.name for p in processes if p.exitcode not in (0, -signal.SIGINT, -signal.SIGTERM)]
    if failed:
        print(f"authgate: workers exited with errors: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)
