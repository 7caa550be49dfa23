"""The OpenID Provider's browser-facing steps: authorization, consent, and RP-initiated logout.

Signing in reuses the portal: the authorization endpoint sends the browser to /login,
/reauth (prompt=login, max_age) or /2fa (a two_factor client or acr) with rd set to the
authorization request itself, and picks up again when the browser comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from urllib.parse import urlencode, urlsplit

from aiohttp import web
from itsdangerous import BadSignature

from gateway.accounts import audit
from gateway.logs import log_event
from gateway.models import AMR_PASSWORD, User
from gateway.oidc import protocol
from gateway.oidc.endpoints import AUTHORIZATION_PATH, issuer_path
from gateway.oidc.protocol import AuthorizationRequest, AuthorizeError
from gateway.oidc.service import OidcProvider
from gateway.oidc.tokens import InvalidToken
from gateway.sessions.codec import CachedSession
from portal.i18n import N_
from portal.web import (
    base_of,
    clear_session_cookie,
    client_ip,
    csrf_ok,
    form_text,
    read_form,
    redirect,
    render,
    services_of,
    signed_in,
    signer,
    translator,
)

CONSENT_SALT = "authgate.oidc.consent.v1"
# What the consent screen says each scope lets the app do.
SCOPE_DESCRIPTIONS = {
    "openid": N_("Know who you are (a stable identifier for your account)"),
    "profile": N_("See your name and username"),
    "email": N_("See your e-mail address"),
    "groups": N_("See the groups you belong to"),
    "offline_access": N_("Stay connected while you are away (refresh tokens)"),
}
CONSENT_MAX_AGE = 600  # seconds the consent page's form stays valid


def _provider(request: web.Request) -> OidcProvider:
    provider = services_of(request).oidc
    if provider is None:
        raise web.HTTPNotFound()
    return provider


def _message(request: web.Request, heading: str, message: str, status: int, **variables: str) -> web.Response:
    """A message page; `heading` and `message` are marked with N_ where written and translated here."""
    tr = translator(request)
    return render(
        request,
        "message.html",
        status=status,
        heading=tr.gettext(heading),
        message=tr.gettext(message, **variables),
    )


def _found(location: str) -> web.Response:
    # 302 after a GET, as browsers and relying parties expect from an authorization endpoint.
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


async def _params(request: web.Request) -> list[tuple[str, str]]:
    if request.method == "POST":
        form = await read_form(request)
        return [(k, v) for k, v in form.items() if isinstance(v, str)]
    return list(request.query.items())


def _refuse(
    request: web.Request, provider: OidcProvider, exc: AuthorizeError, state: str, uri: str
) -> web.Response:
    """Answer a refused authorization request: back to the app once its URI is verified, else a page."""
    log_event("oidc_authorize_refused", logging.INFO, error=exc.error, reason=exc.description)
    if exc.redirectable:
        return _found(protocol.error_redirect(uri, exc.error, exc.description, state, provider.issuer))
    # Never redirect to an unverified URI: the user sees why the app's request was refused.
    # The reason stays in English, like the protocol's own error descriptions.
    return _message(
        request,
        N_("This sign-in request is not valid"),
        N_("%(reason)s. Tell the app's administrator."),
        400,
        reason=exc.description,
    )


def resume_url(provider: OidcProvider, params: Sequence[tuple[str, str]]) -> str:
    """The authorization request to come back to after signing in, with prompt=login done.

    max_age goes too: every way back (login, re-authentication, second factor) has just proved
    a factor, and max_age=0 would otherwise send the user round again forever. The ID token's
    auth_time still lets the app check it.
    """
    kept = []
    for key, value in params:
        if key == "max_age":
            continue
        if key == "prompt":
            value = " ".join(p for p in value.split() if p != "login")
            if not value:
                continue
        kept.append((key, value))
    return f"{provider.issuer}{AUTHORIZATION_PATH}?{urlencode(kept)}"


async def authorize(request: web.Request) -> web.Response:
    """The authorization endpoint (code flow)."""
    provider = _provider(request)
    services = services_of(request)
    params = await _params(request)
    first = dict(params)
    try:
        areq = protocol.parse_authorization_request(params, provider.cfg)
    except AuthorizeError as exc:
        return _refuse(request, provider, exc, first.get("state", ""), first.get("redirect_uri", ""))
    found = await signed_in(request)
    session, user = found if found is not None else (None, None)
    step = protocol.needed_step(
        areq,
        level=session.level if session is not None and not session.must_enrol else None,
        auth_time=session.record.authenticated_at if session is not None else None,
        now=services.clock(),
        fresh_login=False,
    )
    if session is not None and session.must_enrol:
        step = protocol.STEP_UP  # the /2fa page sends a user who must enrol to enrolment
    if step is not None:
        if "none" in areq.prompt:
            return _refused_silently(provider, areq, protocol.prompt_none_error(step))
        back = urlencode({"rd": resume_url(provider, params)})
        if step == protocol.STEP_UP:
            return _found(f"{base_of(request)}/2fa?{back}")
        page = "reauth" if session is not None else "login"
        return _found(f"{base_of(request)}/{page}?{back}")
    assert session is not None and user is not None  # noqa: S101 - needed_step says so
    remembered = await provider.remembered_consent(user, areq.client)
    if protocol.consent_needed(areq, remembered):
        if "none" in areq.prompt:
            return _refused_silently(provider, areq, "consent_required")
        return _consent_page(request, areq, user, params)
    if remembered is None or not set(areq.scopes) <= set(remembered.scopes):
        # A trusted (implicit) client: no screen, but the user sees it under connected apps
        # and can withdraw it there like any other.
        await provider.remember_consent(user, areq, ip=client_ip(request), implicit=True)
    return await _issue(request, provider, areq, session, user)


def _refused_silently(provider: OidcProvider, areq: AuthorizationRequest, error: str) -> web.Response:
    description = {
        "login_required": "the user is not signed in",
        "interaction_required": "the user must confirm a second factor",
        "consent_required": "the user has not consented",
    }[error]
    return _found(protocol.error_redirect(areq.redirect_uri, error, description, areq.state, provider.issuer))


def _consent_page(
    request: web.Request, areq: AuthorizationRequest, user: User, params: Sequence[tuple[str, str]]
) -> web.Response:
    blob = signer(request, CONSENT_SALT).dumps({"params": list(params), "user": user.id})
    return render(
        request,
        "oidc_consent.html",
        client=areq.client,
        user=user,
        scopes=[(s, translator(request).gettext(SCOPE_DESCRIPTIONS[s])) for s in areq.scopes],
        request_blob=blob,
        action=f"{_issuer_base(request)}/api/oidc/consent",
        redirect_host=urlsplit(areq.redirect_uri).netloc,
    )


def _issuer_base(request: web.Request) -> str:
    return issuer_path(_provider(request).issuer)


async def consent_submit(request: web.Request) -> web.Response:
    """Allow or deny on the consent page; allowing is remembered for this client and scope set."""
    provider = _provider(request)
    form = await read_form(request)
    if not csrf_ok(request, form):
        return _message(request, N_("Form expired"), N_("Go back to the app and sign in again."), 403)
    found = await signed_in(request)
    if found is None:
        return _message(request, N_("Signed out"), N_("Go back to the app and sign in again."), 401)
    session, user = found
    try:
        data = signer(request, CONSENT_SALT).loads(
            form_text(form, "request", limit=16384), max_age=CONSENT_MAX_AGE
        )
        params = [(str(k), str(v)) for k, v in data["params"]]
        if data["user"] != user.id:
            raise BadSignature("consent form of another user")
    except (BadSignature, KeyError, TypeError, ValueError):
        return _message(request, N_("Form expired"), N_("Go back to the app and sign in again."), 400)
    try:
        areq = protocol.parse_authorization_request(params, provider.cfg)
    except AuthorizeError as exc:
        first = dict(params)
        return _refuse(request, provider, exc, first.get("state", ""), first.get("redirect_uri", ""))
    if form_text(form, "decision") != "allow":
        log_event("oidc_consent_denied", user=user.username, client_id=areq.client.client_id)
        return _found(
            protocol.error_redirect(
                areq.redirect_uri, "access_denied", "the user denied the request", areq.state, provider.issuer
            )
        )
    step = protocol.needed_step(
        areq,
        level=session.level,
        auth_time=session.record.authenticated_at,
        now=services_of(request).clock(),
        fresh_login=True,  # the page was shown after any prompt=login sign-in
    )
    if step is not None:
        return _found(resume_url(provider, params))
    await provider.remember_consent(user, areq, ip=client_ip(request))
    return await _issue(request, provider, areq, session, user)


async def _issue(
    request: web.Request,
    provider: OidcProvider,
    areq: AuthorizationRequest,
    session: CachedSession,
    user: User,
) -> web.Response:
    code = await provider.issue_code(
        areq,
        user,
        session_hash=session.id_hash,
        auth_time=session.record.authenticated_at,
        amr=session.record.amr or (AMR_PASSWORD,),
        acr=protocol.acr_for(session.level),
    )
    log_event("oidc_code_issued", user=user.username, client_id=areq.client.client_id)
    return _found(protocol.code_redirect(areq.redirect_uri, code, areq.state, provider.issuer))


# --- RP-initiated logout ---------------------------------------------------------------------


async def end_session(request: web.Request) -> web.Response:
    """end_session_endpoint: sign out of the portal, then back to a registered post-logout URI.

    With an id_token_hint for the browser's own session the sign-out happens at once;
    otherwise the user confirms it (a third party must not be able to sign people out).
    """
    provider = _provider(request)
    params = dict(await _params(request))
    hint = params.get("id_token_hint", "")
    target = params.get("post_logout_redirect_uri", "")
    client = provider.cfg.client(params.get("client_id", "")) if params.get("client_id") else None
    claims = None
    if hint:
        try:
            claims = provider.read_id_token_hint(hint)
        except InvalidToken:
            return _message(
                request,
                N_("Sign-out request not valid"),
                N_("The app sent an id_token_hint that is not ours."),
                400,
            )
        hinted = provider.cfg.client(str(claims["aud"]))
        if client is not None and hinted is not client:
            return _message(
                request, N_("Sign-out request not valid"), N_("client_id and id_token_hint disagree."), 400
            )
        client = hinted
    if target:
        if client is None or not protocol.redirect_uri_matches(target, client.post_logout_redirect_uris):
            return _message(
                request,
                N_("Sign-out request not valid"),
                N_("post_logout_redirect_uri is not registered for this app (it must match exactly)."),
                400,
            )
        target = protocol.add_query(target, {"state": params["state"]} if params.get("state") else {})
    found = await signed_in(request)
    if found is None:
        return (
            _found(target) if target else _message(request, N_("Signed out"), N_("You are signed out."), 200)
        )
    session, user = found
    sub = await provider.subject(user)
    if claims is not None and claims.get("sub") == sub:
        return await _sign_out(request, session, user, target, client.client_id if client else "")
    blob = signer(request, CONSENT_SALT + ".logout").dumps({"target": target, "user": user.id})
    return render(
        request,
        "oidc_logout.html",
        user=user,
        client=client,
        request_blob=blob,
        action=f"{_issuer_base(request)}/api/oidc/logout/confirm",
    )


async def logout_confirm(request: web.Request) -> web.Response:
    """The user confirmed the sign-out an app asked for."""
    form = await read_form(request)
    if not csrf_ok(request, form):
        return _message(request, N_("Form expired"), N_("Please try again."), 403)
    found = await signed_in(request)
    try:
        data = signer(request, CONSENT_SALT + ".logout").loads(
            form_text(form, "request", limit=8192), max_age=CONSENT_MAX_AGE
        )
        target = str(data["target"])
    except (BadSignature, KeyError, TypeError):
        return _message(request, N_("Form expired"), N_("Please try again."), 400)
    if found is None or data.get("user") != found[1].id:
        return (
            _found(target) if target else _message(request, N_("Signed out"), N_("You are signed out."), 200)
        )
    return await _sign_out(request, found[0], found[1], target, "")


def _signed_out_page(request: web.Request) -> web.Response:
    return _message(request, N_("Signed out"), N_("You are signed out."), 200)


async def _sign_out(
    request: web.Request, session: CachedSession, user: User, target: str, client_id: str
) -> web.Response:
    services = services_of(request)
    await services.sessions.revoke(session.id_hash)
    await services.audit.record(
        audit.LOGOUT,
        actor=user.username,
        target=user.username,
        ip=client_ip(request),
        detail=f"requested by {client_id}" if client_id else "requested by an app",
    )
    response = _found(target) if target else redirect(f"{base_of(request)}/login?signed_out=1")
    clear_session_cookie(request, response)
    return response


# --- Settings and administration ------------------------------------------------------------------


async def revoke_app(request: web.Request) -> web.Response:
    """Withdraw a consent from the settings page: the client's grants and tokens end too."""
    provider = _provider(request)
    form = await read_form(request)
    if not csrf_ok(request, form):
        return _message(request, N_("Form expired"), N_("Please try again."), 403)
    found = await signed_in(request)
    if found is None:
        return redirect(f"{base_of(request)}/login")
    user = found[1]
    await provider.revoke_consent(
        user, request.match_info["client_id"], actor=user.username, ip=client_ip(request)
    )
    return redirect(f"{base_of(request)}/settings?done=app_revoked")


async def admin_clients(request: web.Request) -> web.Response:
    """The admin console's list of OpenID Connect clients with their live grants."""
    from portal.views.admin import _admin  # the admin gate lives with the admin views

    await _admin(request)
    services = services_of(request)
    provider = services.oidc
    counts = await provider.client_ids_with_grants() if provider is not None else {}
    clients = provider.cfg.clients if provider is not None else ()
    return render(
        request,
        "admin_oidc.html",
        clients=[(c, counts.get(c.client_id, (0, 0))) for c in clients],
        issuer=provider.issuer if provider is not None else "",
    )
