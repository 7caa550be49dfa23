"""The typed application state shared by every handler (built in app.create_app)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from gateway.app_password_service import AppPasswordService
from gateway.audit import AuditLog
from gateway.config import Config
from gateway.decision import Decisions
from gateway.factors.passwords import AsyncPasswordHasher
from gateway.notify import Notifier
from gateway.rules import CompiledRules
from gateway.session_service import SessionService
from gateway.store.sqlite import Store
from gateway.two_factor import TwoFactorService
from gateway.webauthn_service import WebAuthnService


@dataclass
class Services:
    config: Config
    store: Store
    sessions: SessionService
    rules: CompiledRules
    decisions: Decisions  # decide() over `rules`, memoised
    passwords: AsyncPasswordHasher
    two_factor: TwoFactorService
    webauthn: WebAuthnService
    notifier: Notifier
    audit: AuditLog
    app_passwords: AppPasswordService
    clock: Callable[[], float]
    csrf_keys: tuple[str, ...]


SERVICES = web.AppKey("services", Services)
