"""Forward-auth for non-browser clients: app passwords over HTTP Basic or Bearer.

Only app passwords are accepted: an account password sent over Basic is refused
whatever the rule (it would need an argon2 verify per request, and could never
satisfy two_factor). Wrong tokens count toward brute-force regulation; a client
address with recent failures is checked against its ban before anything else, so
valid tokens from other addresses stay on the cached fast path.
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.accounts import audit
from gateway.accounts.regulation import banned_until
from gateway.authz.decision import Verdict, decide
from gateway.authz.prepared import PLAIN_OK_HEAD, answer
from gateway.factors.app_passwords import (
    AppPasswordDomainRefused,
    InvalidAppPassword,
    InvalidAuthorization,
    parse_authorization,
)
from gateway.logs import log_event
from gateway.models import OriginalRequest
from gateway.services import Services

CHALLENGE = {"WWW-Authenticate": 'Basic realm="authgate", charset="UTF-8"'}


def _unauthorized(reason: str) -> web.Response:
    return web.Response(status=401, headers=CHALLENGE, text=f"401 unauthorized: {reason}\n")


async def _banned(services: Services, key: str, ip: str) -> bool:
    cfg = services.config.regulation
    if cfg.max_retries == 0:
        return False
    now = services.clock()
    since = now - cfg.find_time - cfg.ban_time
    for failures in (
        await services.store.failures_since(username=key, since=since),
        await services.store.failures_since(ip=ip, since=since),
    ):
        if banned_until(failures, now=now, cfg=cfg) is not None:
            return True
    return False


async def answer_with_token(
    services: Services, request: web.BaseRequest, original: OriginalRequest, authorization: str
) -> web.StreamResponse | None:
    """Answer a request that carries Authorization; None when it holds no Basic/Bearer credential."""
    try:
        credentials = parse_authorization(authorization)
    except InvalidAuthorization as exc:
        return _unauthorized(exc.reason if hasattr(exc, "reason") else "malformed Authorization header")
    if credentials is None:
        return None
    ip = str(original.client_ip)
    key = (credentials.username or "").lower() or f"token@{ip}"
    tokens = services.app_passwords
    if tokens.is_suspect(ip) and await _banned(services, key, ip):
        services.metrics.refused_by_regulation()
        services.metrics.reject("app_password_banned")
        return _unauthorized("too many failed attempts; try again later")
    try:
        token = await tokens.resolve(authorization, credentials, host=original.host, ip=ip)
    except AppPasswordDomainRefused:
        services.metrics.reject("app_password_domain")
        log_event("access_denied", reason="app password not valid for this domain", host=original.host)
        return web.Response(status=403, text="403 forbidden: this app password is not valid here\n")
    except InvalidAppPassword as exc:
        services.metrics.reject("invalid_app_password")
        tokens.mark_suspect(ip)
        await services.store.record_attempt(key, ip, False, services.clock())
        await services.audit.record(
            audit.TOKEN_FAILED, actor=None, target=credentials.username, ip=ip, detail=str(exc)
        )
        return _unauthorized("invalid credentials")
    decision = decide(services.rules, original, token.subject, token.level)
    services.metrics.app_password_used()
    services.metrics.decided(decision, 0)  # timed, when chosen, by the caller
    if decision.verdict is Verdict.ALLOW:
        if decision.with_identity:
            return answer(request, 200, token.answer_head, token.headers)
        return answer(request, 200, PLAIN_OK_HEAD)
    log_event(
        "access_denied",
        logging.INFO,
        user=token.username,
        method=original.method,
        url=original.url,
        client_ip=ip,
        rule=decision.rule_index,
        reason="app password" if decision.verdict is Verdict.DENY else "app password level too low",
    )
    return web.Response(status=403, text="403 forbidden\n")
