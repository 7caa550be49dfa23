"""The Prometheus scrape endpoint: /metrics on its own listener, or /api/metrics on the main one.

Never public by default: metrics are off unless `metrics.enabled`; the separate listener
binds 127.0.0.1 unless told otherwise (config refuses another address without a token),
and the main listener serves them only with `metrics.token`. The counting itself is in
gateway/metrics.py; this module only answers scrapes.
"""

from __future__ import annotations

import hmac
import logging

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.errors import StorageError
from gateway.logs import log_event
from gateway.metrics import SnapshotFiles, exposition, merge, read_gauges
from gateway.services import SERVICES

SNAPSHOT_FILES: web.AppKey[SnapshotFiles | None] = web.AppKey("metrics_snapshot_files")
_MAIN_APP = web.AppKey("metrics_main_app", web.Application)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="authgate metrics"'}


def _authorized(request: web.Request, token: str) -> bool:
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # compare_digest on bytes: any header text compares in constant time, never raises
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


async def _scrape(app: web.Application) -> bytes:
    services = app[SERVICES]
    files = app[SNAPSHOT_FILES]
    try:
        gauges = await read_gauges(services.store, services.config, services.clock())
    except StorageError as exc:
        # The counters still answer; the gauges that need the database are left out.
        log_event("metrics_gauges_failed", logging.WARNING, error=str(exc))
        gauges = {}
    # After the gauges, so that an error reading them is already counted.
    totals = merge([services.metrics.snapshot(), *(files.others() if files is not None else ())])
    return exposition(totals, gauges)


async def _answer(request: web.Request, app: web.Application) -> web.Response:
    if not _authorized(request, app[SERVICES].config.metrics.token):
        log_event("metrics_unauthorized", logging.WARNING, peer=request.remote)
        return web.Response(status=401, headers=CHALLENGE, text="401 unauthorized: send the metrics token\n")
    body = await _scrape(app)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


async def _main_metrics(request: web.Request) -> web.Response:
    return await _answer(request, request.app)


async def _listener_metrics(request: web.Request) -> web.Response:
    return await _answer(request, request.app[_MAIN_APP])


def add_main_route(app: web.Application) -> None:
    """Serve /api/metrics on the main listener (config makes sure a token guards it)."""
    app.router.add_get("/api/metrics", _main_metrics)


def listener_app(main: web.Application) -> web.Application:
    """The separate metrics listener's application, reading the main application's counts."""
    app = web.Application(client_max_size=1024)
    app[_MAIN_APP] = main
    app.router.add_get("/metrics", _listener_metrics)
    return app
