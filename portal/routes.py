"""The portal's URL table (mounted under the portal URL's path)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from portal.views import login, setup

STATIC_DIR = Path(__file__).parent / "static"


def add_routes(app: web.Application, base: str) -> None:
    app.router.add_get(f"{base}/", login.home)
    if base:
        app.router.add_get(base, login.home)
    app.router.add_get(f"{base}/login", login.login_page)
    app.router.add_post(f"{base}/login", login.login_submit)
    app.router.add_post(f"{base}/logout", login.logout)
    app.router.add_get(f"{base}/setup", setup.setup_page)
    app.router.add_post(f"{base}/setup", setup.setup_submit)
    app.router.add_static(f"{base}/static", STATIC_DIR, append_version=True)
