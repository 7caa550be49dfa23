"""The authorization-code flow's browser half, pure: the request we send and the callback we accept.

    button ──begin()──> authorization URL (state, nonce, PKCE S256) + LoginState (signed cookie)
    callback ──check_callback(params, LoginState)──> the code to exchange, or a precise refusal

The LoginState travels in a signed, short-lived, HttpOnly cookie: the `state` in the URL must
equal the one in this browser's cookie, so a callback started in another browser (login CSRF,
a stolen or replayed callback URL) is refused. The PKCE verifier and the nonce never appear in
the URL; the verifier goes to the token endpoint, the nonce must come back inside the ID token.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from gateway.external_login.errors import CallbackRefused, ProviderDenied

PAYLOAD_VERSION = 1
CANCELLED = "You cancelled signing in at the provider."
PROVIDER_REFUSED = (
    "The provider refused the sign-in request. If this keeps happening, tell the administrator."
)
MAX_PARAM_LENGTH = 4096  # longer callback parameters are refused, never compared or logged


@dataclass(frozen=True, slots=True)
class LoginState:
    """One sign-in this browser started: what the callback must match."""

    provider: str
    state: str
    nonce: str
    verifier: str  # the PKCE code_verifier
    redirect_uri: str  # sent again, identical, with the code
    rd: str  # where to go afterwards, already validated as a safe target ("" = default)
    link_user: int | None  # started from the settings page: link to this signed-in user
    started_at: float


def begin(
    *,
    provider: str,
    authorization_endpoint: str,
    client_id: str,
    scopes: Sequence[str],
    redirect_uri: str,
    rd: str,
    link_user: int | None,
    now: float,
) -> tuple[str, LoginState]:
    """Return the provider's authorization URL and the state to keep in this browser."""
    login = LoginState(
        provider=provider,
        state=secrets.token_urlsafe(32),
        nonce=secrets.token_urlsafe(32),
        verifier=secrets.token_urlsafe(48),  # 64 characters: RFC 7636 allows 43-128
        redirect_uri=redirect_uri,
        rd=rd,
        link_user=link_user,
        started_at=now,
    )
    url = prepare_grant_uri(
        authorization_endpoint,
        client_id,
        "code",
        redirect_uri=redirect_uri,
        scope=list(scopes),
        state=login.state,
        nonce=login.nonce,
        code_challenge=create_s256_code_challenge(login.verifier),
        code_challenge_method="S256",
    )
    return url, login


def _param(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if len(value) > MAX_PARAM_LENGTH:
        raise CallbackRefused(f"callback parameter {name} is {len(value)} characters long")
    return value


def check_callback(
    params: Mapping[str, str],
    login: LoginState | None,
    *,
    provider: str,
    expected_issuer: str | None,
    issuer_required: bool,
    now: float,
    ttl: float,
) -> str:
    """Return the authorization code of a callback that answers `login`; raise why not otherwise.

    In this order (RFC 6749 10.12, RFC 9207 2.4): a sign-in must have started in this browser,
    for this provider, recently; the state must match; the issuer, when the provider names it
    (or must), must be the configured one; then an error answer is reported; then the code.
    """
    if login is None:
        raise CallbackRefused("no sign-in was started in this browser (state cookie missing or invalid)")
    if login.provider != provider:
        raise CallbackRefused(f"the sign-in was started for provider {login.provider!r}, not {provider!r}")
    if now - login.started_at > ttl:
        raise CallbackRefused(f"the sign-in started {now - login.started_at:.0f}s ago (limit {ttl:g}s)")
    state = _param(params, "state")
    if not state or not hmac.compare_digest(state.encode(), login.state.encode()):
        raise CallbackRefused("state mismatch: the callback does not answer this browser's sign-in")
    iss = _param(params, "iss")
    if iss is None and issuer_required:
        raise CallbackRefused("iss missing, though the provider says it sends it (RFC 9207)")
    if iss is not None and (expected_issuer is None or iss != expected_issuer):
        raise CallbackRefused(f"iss mismatch: {iss[:200]!r} is not the configured issuer (RFC 9207)")
    error = _param(params, "error")
    if error is not None:
        description = (_param(params, "error_description") or "")[:200]
        message = CANCELLED if error == "access_denied" else PROVIDER_REFUSED
        raise ProviderDenied(f"provider answered error {error[:64]!r}: {description!r}", message)
    code = _param(params, "code")
    if not code:
        raise CallbackRefused("the callback carries neither a code nor an error")
    return code


def to_payload(login: LoginState) -> dict[str, Any]:
    """Return the state as JSON primitives, for a signed cookie."""
    return {"v": PAYLOAD_VERSION, **asdict(login)}


_FIELD_TYPES: Mapping[str, tuple[type, ...]] = {
    "provider": (str,),
    "state": (str,),
    "nonce": (str,),
    "verifier": (str,),
    "redirect_uri": (str,),
    "rd": (str,),
    "link_user": (int, type(None)),
    "started_at": (int, float),
}


def from_payload(payload: object) -> LoginState | None:
    """Rebuild the state from `to_payload` output; None when it does not fit."""
    if not isinstance(payload, dict) or payload.get("v") != PAYLOAD_VERSION:
        return None
    values: dict[str, Any] = {}
    for name, types in _FIELD_TYPES.items():
        value = payload.get(name)
        # bool is an int subclass: True must not pass for a user id.
        if not isinstance(value, types) or isinstance(value, bool):
            return None
        values[name] = value
    values["started_at"] = float(values["started_at"])
    return LoginState(**values)
