"""A tiny upstream app that shows the identity headers authgate's proxy passed to it.

Run: python deploy/demo/app.py --port 9080. `?format=json` answers in JSON (used by tests).
"""

from __future__ import annotations

import argparse
import html

from aiohttp import web

IDENTITY_HEADERS = ("Remote-User", "Remote-Email", "Remote-Groups", "Remote-Name")


async def show(request: web.Request) -> web.Response:
    received = {name: request.headers.get(name) for name in IDENTITY_HEADERS}
    if request.query.get("format") == "json":
        return web.json_response({"path": request.path, "method": request.method, "headers": received})
    portal = request.app[PORTAL_KEY]
    rows = "".join(
        f"<tr><th scope='row'>{html.escape(k)}</th><td>{html.escape(v or '(not sent)')}</td></tr>"
        for k, v in received.items()
    )
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Demo app</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}}
th{{text-align:left;padding-right:1rem}}td{{font-family:monospace}}</style></head><body>
<h1>Demo app</h1>
<p>This page sits behind authgate. It trusts these headers from the proxy:</p>
<table id="identity">{rows}</table>
<p>Requested: <code>{html.escape(request.method)} {html.escape(request.path_qs)}</code></p>
<p><a href="{html.escape(portal)}/">Your authgate account and sign-out</a></p>
</body></html>"""
    return web.Response(text=body, content_type="text/html")


PORTAL_KEY = web.AppKey("portal", str)


def create_demo_app(portal_url: str) -> web.Application:
    app = web.Application()
    app[PORTAL_KEY] = portal_url
    app.router.add_route("*", "/{tail:.*}", show)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="authgate demo upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9080)
    parser.add_argument("--portal", default="http://localhost:8080/auth")
    args = parser.parse_args()
    web.run_app(create_demo_app(args.portal), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
