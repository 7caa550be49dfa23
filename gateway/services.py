"""The typed application state shared by every handler (built in app.create_app)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from gateway.accounts.app_passwords import AppPasswordService
from gateway.accounts.audit import AuditLog
from gateway.accounts.notify import Notifier
from gateway.accounts.two_factor import TwoFactorService
from gateway.accounts.webauthn import WebAuthnService
from gateway.authz.decision import Decisions
from gateway.authz.rules import CompiledRules
from gateway.config import Config
from gateway.directory.service import DirectoryService
from gateway.external_login.service import ExternalLoginService
from gateway.factors.passwords import AsyncPasswordHasher
from gateway.metrics import Metrics
from gateway.oidc.service import OidcProvider
from gateway.sessions.service import SessionService
from gateway.store.contract import Storage


@dataclass
class Services:
    config: Config
    store: Storage
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
    metrics: Metrics  # this worker's counts (gateway/metrics.py)
    external_login: ExternalLoginService  # sign-in through external providers
    directory: DirectoryService | None = None  # authentication_backend.ldap; None = local users only
    oidc: OidcProvider | None = None  # the OpenID Provider, when oidc_provider has clients


SERVICES = web.AppKey("services", Services)
