"""create_app(config): the only place where authgate's parts are wired together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from gateway import metrics_http
from gateway.accounts.app_passwords import AppPasswordService
from gateway.accounts.audit import AuditLog
from gateway.accounts.notify import build_notifier
from gateway.accounts.two_factor import TwoFactorService
from gateway.accounts.webauthn import WebAuthnService
from gateway.authz import endpoints as authz
from gateway.authz.decision import Decisions
from gateway.authz.rules import CompiledRules
from gateway.config import Config, LdapConfig
from gateway.directory.service import DirectoryService
from gateway.errors import StoreUnavailable
from gateway.external_login.client import ProviderHttp
from gateway.external_login.service import ExternalLoginService
from gateway.factors import app_passwords
from gateway.factors.passwords import AsyncPasswordHasher, PasswordHasher
from gateway.factors.secretbox import PURPOSE_RECOVERY, PURPOSE_TOTP, SecretBox, derive_key, load_storage_key
from gateway.logs import log_event, logger
from gateway.metrics import PUBLISH_INTERVAL, Metrics, SnapshotFiles
from gateway.models import SessionRecord, User
from gateway.oidc import endpoints as oidc_endpoints
from gateway.oidc.keys import KeyRing
from gateway.oidc.service import OidcProvider
from gateway.secret_files import load_or_create_secret_lines
from gateway.services import SERVICES, Services
from gateway.sessions.codec import SessionCodec
from gateway.sessions.revocations import cache_dropper
from gateway.sessions.service import SessionService
from gateway.store.contract import Storage
from gateway.store.engine import open_store
from portal import routes as portal_routes
from portal.web import portal_base_path


def session_keys(config: Config) -> tuple[str, ...]:
    """Return the session signing keys, newest first (generated into data_dir when not configured)."""
    if config.secrets.session_keys:
        return config.secrets.session_keys
    return tuple(load_or_create_secret_lines(config.storage.data_dir, "session_keys"))


HOUSEKEEPING_INTERVAL = 60.0
ATTEMPT_RETENTION = 86400.0  # login attempts older than a day can no longer affect any ban


async def _housekeeping(store: Storage, clock: Callable[[], float], audit_retention: float) -> None:
    """Prune expired challenges, recovery links, old login attempts (and old audit rows when a
    retention is configured); runs until cancelled."""
    while True:
        await asyncio.sleep(HOUSEKEEPING_INTERVAL)
        try:
            now = clock()
            await store.prune_challenges(now)
            await store.prune_recovery_tokens(now)
            await store.prune_password_reset_tokens(now)
            await store.prune_attempts(now - ATTEMPT_RETENTION)
            if audit_retention > 0:
                await store.prune_audit(now - audit_retention)
            await store.prune_oidc(now)
        except StoreUnavailable as exc:  # locked or full: one line, and try again next round
            log_event("housekeeping_failed", logging.WARNING, reason=exc.reason)
        except Exception:  # a busy database must not end housekeeping for good
            logger.exception("housekeeping failed")


async def _publish_metrics(metrics: Metrics, files: SnapshotFiles) -> None:
    """Publish this worker's totals for the others to add to their scrapes; runs until cancelled."""
    while True:
        await asyncio.sleep(PUBLISH_INTERVAL)
        try:
            files.publish(metrics.snapshot())
        except OSError as exc:  # a full disk must not end publishing for good
            log_event("metrics_publish_failed", logging.WARNING, error=str(exc))


async def _flush_token_use(tokens: AppPasswordService, interval: float) -> None:
    """Write app-password last-use times in batches; runs until cancelled."""
    while True:
        await asyncio.sleep(interval)
        await tokens.flush_use()


def _directory(
    cfg: LdapConfig,
    store: Storage,
    sessions: SessionService,
    tokens: AppPasswordService,
    clock: Callable[[], float],
) -> DirectoryService:
    # Imported here: bonsai is an optional extra (pip install 'authgate[ldap]'), needed only
    # when a directory is configured.
    from gateway.directory.client import LdapDirectory

    return DirectoryService(LdapDirectory(cfg, clock=clock), store, sessions, cfg, clock, tokens.evict_user)


def create_app(
    config: Config, *, clock: Callable[[], float] = time.time, metrics_dir: str | None = None
) -> web.Application:
    """Build the aiohttp application for a validated configuration.

    `metrics_dir`: where the workers of `serve --workers N` publish their metric totals
    (gateway/metrics.py); None for a single process.
    """
    app = web.Application(client_max_size=64 * 1024)
    keys = session_keys(config)
    cfg = config.session
    codec = SessionCodec(keys, max_age=max(cfg.expiration, cfg.remember_me))
    rules = CompiledRules.from_config(config.access_control)
    metrics = Metrics(len(rules))
    snapshot_files = SnapshotFiles(metrics_dir) if metrics_dir is not None else None

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        store = await open_store(config.storage)
        metrics.store_errors = store.error_counts
        hasher = AsyncPasswordHasher(
            PasswordHasher(config.password),
            config.password.max_concurrent,
            niceness=config.password.niceness,
            cpus=config.password.cpus,
        )
        storage_root = load_storage_key(
            data_dir=config.storage.data_dir, configured=config.secrets.storage_key
        )
        two_factor = TwoFactorService(
            store,
            SecretBox(derive_key(storage_root, purpose=PURPOSE_TOTP)),
            config.two_factor,
            recovery_pepper=derive_key(storage_root, purpose=PURPOSE_RECOVERY),
            clock=clock,
        )

        async def must_enrol(user: User, _record: SessionRecord) -> bool:
            return config.two_factor.mode == "required" and not await two_factor.has_factor(user.id)

        tokens = AppPasswordService(
            store,
            config.app_passwords,
            config.identity_headers,
            pepper=derive_key(storage_root, purpose=app_passwords.PEPPER_PURPOSE),
            cache_ttl=cfg.cache_ttl,
            clock=clock,
        )
        sessions = SessionService(store, codec, cfg, config.identity_headers, clock, must_enrol)
        # One client session for every provider: its connection pool is bounded, cookies are not kept.
        provider_http = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), connector=aiohttp.TCPConnector(limit=20)
        )
        ldap = config.authentication_backend.ldap
        directory = _directory(ldap, store, sessions, tokens, clock) if ldap is not None else None
        sessions.directory_configured = tokens.directory_configured = directory is not None
        audit_log = AuditLog(store, clock=clock, counter=metrics)
        oidc = None
        if config.oidc_provider.enabled:
            oidc = OidcProvider(
                config.oidc_provider,
                store,
                KeyRing(config.storage.data_dir, retention=config.oidc_provider.key_retention, clock=clock),
                hasher,
                config.regulation,
                audit_log,
                clock,
            )
        app[SERVICES] = Services(
            config=config,
            store=store,
            sessions=sessions,
            rules=rules,
            decisions=Decisions(rules),
            passwords=hasher,
            two_factor=two_factor,
            webauthn=WebAuthnService(store, config.webauthn, clock),
            notifier=build_notifier(config.notifier),
            audit=audit_log,
            app_passwords=tokens,
            clock=clock,
            csrf_keys=keys,
            metrics=metrics,
            external_login=ExternalLoginService(
                config.external_login, ProviderHttp(provider_http), store, clock=clock
            ),
            directory=directory,
            oidc=oidc,
        )
        # Other instances' revocations reach this one's caches at once (PostgreSQL); on
        # SQLite the store never calls it and cache_ttl bounds them.
        store.subscribe_revocations(cache_dropper(sessions, tokens))
        tasks = [
            asyncio.create_task(sessions.run_flusher()),
            asyncio.create_task(_housekeeping(store, clock, config.audit.retention)),
            asyncio.create_task(_flush_token_use(tokens, cfg.activity_flush_interval)),
        ]
        if snapshot_files is not None:
            tasks.append(asyncio.create_task(_publish_metrics(metrics, snapshot_files)))
        if directory is not None:
            tasks.append(asyncio.create_task(directory.run()))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await sessions.flush_activity()
        await tokens.flush_use()
        if snapshot_files is not None:
            with contextlib.suppress(OSError):
                snapshot_files.publish(metrics.snapshot())
        hasher.close()
        await provider_http.close()
        if directory is not None:
            await directory.directory.close()
        await store.close()

    app.cleanup_ctx.append(lifetime)
    app[metrics_http.SNAPSHOT_FILES] = snapshot_files
    authz.add_routes(app)
    if config.metrics.enabled and not config.metrics.listen:
        metrics_http.add_main_route(app)
    portal_routes.add_routes(app, portal_base_path(config))
    if config.oidc_provider.enabled:
        oidc_endpoints.add_routes(app, config.oidc_provider.issuer)
        portal_routes.add_oidc_routes(app, oidc_endpoints.issuer_path(config.oidc_provider.issuer))
    return app
