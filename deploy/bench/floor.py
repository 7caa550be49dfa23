"""The framework floor (scenario F): an empty aiohttp handler in authgate's process model.

Same shape as `authgate serve --workers N`: N spawned processes sharing the port
with SO_REUSEPORT, uvloop when installed, no access log. The only difference
from authgate is the handler, which does nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import signal
import sys

from aiohttp import web


async def empty(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def _serve(host: str, port: int, reuse_port: bool) -> None:
    app = web.Application()
    app.router.add_route("*", "/api/authz/auth-request", empty)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def worker_main(host: str, port: int, reuse_port: bool) -> None:
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_serve(host, port, reuse_port))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.workers <= 1:
        worker_main(args.host, args.port, False)
        return 0
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=worker_main, args=(args.host, args.port, True)) for _ in range(args.workers)
    ]
    for process in processes:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        for process in processes:
            if process.is_alive():
                process.terminate()

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for process in processes:
        process.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
