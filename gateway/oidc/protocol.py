"""The OpenID Connect rules, as pure functions over plain data (no I/O, time passed in).

Authorization requests are parsed in the order the specs give their checks (RFC 6749 4.1,
RFC 7636, OpenID Connect Core 1.0 3.1.2); each refusal is an AuthorizeError that says
whether it may be sent back to the client's redirect URI (only once client and redirect
URI are known to match, RFC 6749 4.1.2.1) or must be shown to the user instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from gateway.models import Level, OidcConsent, User
from gateway.oidc.clients import SCOPES, OidcClient, OidcProviderConfig

PROMPTS = ("none", "login", "consent", "select_account")
ACR_ONE_FACTOR = "one_factor"
ACR_TWO_FACTOR = "two_factor"
ACR_VALUES = (ACR_ONE_FACTOR, ACR_TWO_FACTOR)
MAX_STATE_LENGTH = 2048
MAX_NONCE_LENGTH = 512
_PKCE_VALUE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")  # RFC 7636 4.1 (verifier) and 4.2 (S256 challenge)
# Parameters an authorization request may carry; repeating any of them is refused (RFC 6749 3.1).
_SINGLE = (
    *("client_id", "redirect_uri", "response_type", "scope", "state", "nonce", "prompt", "max_age"),
    *("code_challenge", "code_challenge_method", "acr_values", "response_mode", "login_hint", "display"),
    *("ui_locales", "claims_locales", "id_token_hint", "request", "request_uri"),
)
SCOPE_CLAIMS = {
    "profile": ("name", "preferred_username"),
    "email": ("email", "email_verified"),
    "groups": ("groups",),
}


class AuthorizeError(Exception):
    """An authorization request that is refused.

    `redirectable`: the client and redirect URI were verified, so the error goes back to the
    client (with state); otherwise the user sees it and nothing is redirected.
    """

    def __init__(self, error: str, description: str, *, redirectable: bool) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.redirectable = redirectable


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    client: OidcClient
    redirect_uri: str
    scopes: tuple[str, ...]  # requested and allowed for the client, in request order
    state: str
    nonce: str
    code_challenge: str  # S256 challenge, "" when none was sent
    prompt: frozenset[str]
    max_age: int | None
    acr_values: tuple[str, ...]

    @property
    def required_level(self) -> Level:
        """The client's policy, raised to two factors when the request asks for that acr."""
        if ACR_TWO_FACTOR in self.acr_values:
            return Level.TWO_FACTOR
        return max(self.client.authorization_policy, Level.ONE_FACTOR)


def _single(params: Sequence[tuple[str, str]], keys: Sequence[str], *, redirectable: bool) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in params:
        if key in found and key in keys:
            raise AuthorizeError(
                "invalid_request", f"the parameter {key} is repeated", redirectable=redirectable
            )
        found.setdefault(key, value)
    return found


def parse_authorization_request(
    params: Sequence[tuple[str, str]], provider: OidcProviderConfig
) -> AuthorizationRequest:
    """Check an authorization request (query parameters, in order) and return it, or raise AuthorizeError."""
    # Until client and redirect URI are known, an error cannot be sent back to the client.
    first = _single(params, ("client_id", "redirect_uri"), redirectable=False)
    client = provider.client(first.get("client_id", ""))
    if client is None:
        raise AuthorizeError("invalid_request", "unknown client_id", redirectable=False)
    redirect_uri = first.get("redirect_uri", "")
    if not redirect_uri:
        raise AuthorizeError("invalid_request", "redirect_uri is required", redirectable=False)
    if not redirect_uri_matches(redirect_uri, client.redirect_uris):
        raise AuthorizeError(
            "invalid_request", "redirect_uri is not registered for this client", redirectable=False
        )
    # From here on errors go back to the client.
    args = _single(params, _SINGLE, redirectable=True)
    if "request" in args or "request_uri" in args:
        raise AuthorizeError("request_not_supported", "request objects are not supported", redirectable=True)
    if args.get("response_type") != "code":
        raise AuthorizeError(
            "unsupported_response_type", "only response_type=code is supported", redirectable=True
        )
    if args.get("response_mode", "query") != "query":
        raise AuthorizeError("invalid_request", "only response_mode=query is supported", redirectable=True)
    requested = args.get("scope", "").split()
    if "openid" not in requested:
        raise AuthorizeError("invalid_scope", "the openid scope is required", redirectable=True)
    # Scopes the client may not have are left out (RFC 6749 3.3), not refused.
    scopes = tuple(s for s in dict.fromkeys(requested) if s in SCOPES and s in client.scopes)
    state = args.get("state", "")
    nonce = args.get("nonce", "")
    if len(state) > MAX_STATE_LENGTH or len(nonce) > MAX_NONCE_LENGTH:
        raise AuthorizeError("invalid_request", "state or nonce is too long", redirectable=True)
    challenge = args.get("code_challenge", "")
    method = args.get("code_challenge_method", "")
    if challenge:
        if method != "S256":
            # A missing method means plain (RFC 7636 4.3), which gives no protection.
            raise AuthorizeError(
                "invalid_request", "code_challenge_method must be S256 (plain is refused)", redirectable=True
            )
        if len(challenge) != 43 or not _PKCE_VALUE.fullmatch(challenge):
            raise AuthorizeError(
                "invalid_request", "code_challenge is not an S256 challenge", redirectable=True
            )
    elif method:
        raise AuthorizeError(
            "invalid_request", "code_challenge_method without code_challenge", redirectable=True
        )
    elif client.pkce_required:
        raise AuthorizeError(
            "invalid_request", "this client must use PKCE (code_challenge with S256)", redirectable=True
        )
    prompt = frozenset(args.get("prompt", "").split())
    if not prompt <= set(PROMPTS):
        raise AuthorizeError("invalid_request", f"prompt may hold {', '.join(PROMPTS)}", redirectable=True)
    if "none" in prompt and len(prompt) > 1:
        raise AuthorizeError("invalid_request", "prompt=none cannot be combined", redirectable=True)
    max_age = None
    if "max_age" in args:
        if not args["max_age"].isdigit() or len(args["max_age"]) > 10:
            raise AuthorizeError("invalid_request", "max_age must be a number of seconds", redirectable=True)
        max_age = int(args["max_age"])
    acr_values = tuple(args.get("acr_values", "").split())
    return AuthorizationRequest(
        client=client,
        redirect_uri=redirect_uri,
        scopes=scopes,
        state=state,
        nonce=nonce,
        code_challenge=challenge,
        prompt=prompt,
        max_age=max_age,
        acr_values=acr_values,
    )


def redirect_uri_matches(candidate: str, registered: Sequence[str]) -> bool:
    """True when `candidate` is one of the registered URIs, character for character.

    No normalisation at all (OAuth 2.0 Security BCP 4.1.3): not case, not a trailing slash,
    not a prefix, not a default port.
    """
    return any(hmac.compare_digest(candidate.encode(), uri.encode()) for uri in registered)


def error_redirect(redirect_uri: str, error: str, description: str, state: str, issuer: str) -> str:
    """The URL that sends an authorization error back to the client (with iss, RFC 9207)."""
    params = {"error": error, "error_description": description, "iss": issuer}
    if state:
        params["state"] = state
    return add_query(redirect_uri, params)


def code_redirect(redirect_uri: str, code: str, state: str, issuer: str) -> str:
    """The URL that hands the authorization code to the client (with iss, RFC 9207)."""
    params = {"code": code, "iss": issuer}
    if state:
        params["state"] = state
    return add_query(redirect_uri, params)


def add_query(url: str, params: dict[str, str]) -> str:
    """Append parameters to a URL that may already have a query."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


# --- What the user must do first --------------------------------------------------------------

LOGIN = "login"
STEP_UP = "step_up"
CONSENT = "consent"


def needed_step(
    request: AuthorizationRequest,
    *,
    level: Level | None,
    auth_time: float | None,
    now: float,
    fresh_login: bool,
) -> str | None:
    """Return LOGIN or STEP_UP when the session does not satisfy the request, else None.

    `level`/`auth_time`: the browser's session (None: not signed in). `fresh_login`: the user
    signed in for this very request, so prompt=login is satisfied.
    """
    if level is None or auth_time is None:
        return LOGIN
    if "login" in request.prompt and not fresh_login:
        return LOGIN
    if request.max_age is not None and now - auth_time > request.max_age:
        return LOGIN
    if level < request.required_level:
        return STEP_UP
    return None


def consent_needed(request: AuthorizationRequest, remembered: OidcConsent | None) -> bool:
    """True when the consent screen must be shown: asked for, or scopes not yet allowed."""
    if "consent" in request.prompt:
        return True
    if request.client.consent == "implicit":
        return False
    return remembered is None or not set(request.scopes) <= set(remembered.scopes)


def prompt_none_error(step: str) -> str:
    """The error for prompt=none when the user would have to act (OIDC Core 3.1.2.6)."""
    return {LOGIN: "login_required", STEP_UP: "interaction_required", CONSENT: "consent_required"}[step]


def acr_for(level: Level) -> str:
    return ACR_TWO_FACTOR if level >= Level.TWO_FACTOR else ACR_ONE_FACTOR


# --- PKCE -------------------------------------------------------------------------------------


def s256_challenge(verifier: str) -> str:
    """Return the S256 code challenge of a verifier (RFC 7636 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verify_pkce(challenge: str, verifier: str | None) -> bool:
    """True when the verifier fits the stored challenge; no challenge means no verifier allowed."""
    if not challenge:
        # A verifier for a code that was issued without a challenge is an injected code (RFC 9700 2.1.1).
        return verifier is None
    if verifier is None or not _PKCE_VALUE.fullmatch(verifier):
        return False
    return hmac.compare_digest(s256_challenge(verifier), challenge)


# --- Claims -------------------------------------------------------------------------------------


def user_claims(user: User, subject: str, scopes: Sequence[str]) -> dict[str, Any]:
    """Return the claims the granted scopes release about a user (userinfo and ID token)."""
    claims: dict[str, Any] = {"sub": subject}
    if "profile" in scopes:
        claims["name"] = user.display_name or user.username
        claims["preferred_username"] = user.username
    if "email" in scopes:
        claims["email"] = user.email
        # Addresses are set by an administrator or at setup, not by the user themselves.
        claims["email_verified"] = True
    if "groups" in scopes:
        claims["groups"] = list(user.groups)
    return claims


def subject_of(user_handle: bytes) -> str:
    """The sub claim: the user's random WebAuthn user handle, never reused after deletion."""
    return base64.urlsafe_b64encode(user_handle).rstrip(b"=").decode("ascii")


def session_id_claim(session_hash: str) -> str:
    """The sid claim for a portal session, derived so the storage key itself is never shown."""
    return hashlib.sha256(f"authgate.oidc.sid:{session_hash}".encode()).hexdigest()[:32]


def token_hash(token: str) -> str:
    """The storage key of a code or refresh token."""
    return hashlib.sha256(token.encode()).hexdigest()
