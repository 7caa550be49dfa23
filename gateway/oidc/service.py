"""The OpenID Provider's work over the store: codes, tokens, client authentication, logout.

No HTTP here: the endpoints (gateway/oidc/endpoints.py, portal/views/oidc.py) turn requests
into these calls and OidcError into OAuth error responses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from gateway.accounts import audit
from gateway.accounts.audit import AuditLog
from gateway.accounts.regulation import banned_until
from gateway.config import RegulationConfig
from gateway.errors import NotFound
from gateway.factors.passwords import AsyncPasswordHasher
from gateway.logs import log_event
from gateway.models import OidcCode, OidcConsent, OidcGrant, OidcToken, User
from gateway.oidc import protocol
from gateway.oidc.clients import OidcClient, OidcProviderConfig
from gateway.oidc.keys import KeyRing
from gateway.oidc.tokens import ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE, InvalidToken, read, sign
from gateway.store.contract import Storage

CLIENT_ATTEMPT_PREFIX = "oidc-client:"  # login_attempts key; ':' never occurs in a username


class OidcError(Exception):
    """An OAuth error response (RFC 6749 5.2): error code, description, HTTP status."""

    def __init__(
        self, error: str, description: str, *, status: int = 400, retry_after: int | None = None
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """What a token-endpoint request presented: how, and the id and secret (None: none sent)."""

    method: str  # "client_secret_basic" | "client_secret_post" | "none"
    client_id: str
    secret: str | None


def parse_client_credentials(
    authorization: str | None, form_id: str | None, form_secret: str | None
) -> ClientCredentials:
    """Read client credentials from the Authorization header or the form (never both)."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise OidcError("invalid_client", "use HTTP Basic or form parameters", status=401)
        if form_secret is not None:
            raise OidcError("invalid_request", "client credentials sent twice (header and form)")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise OidcError(
                "invalid_client", "the Basic credentials are not valid base64", status=401
            ) from exc
        client_id, sep, secret = decoded.partition(":")
        if not sep:
            raise OidcError("invalid_client", "the Basic credentials have no ':'", status=401)
        # RFC 6749 2.3.1: both parts are form-urlencoded before base64.
        client_id, secret = unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))
        if form_id is not None and form_id != client_id:
            raise OidcError("invalid_request", "client_id differs between header and form")
        return ClientCredentials("client_secret_basic", client_id, secret)
    if not form_id:
        raise OidcError("invalid_client", "client authentication is required", status=401)
    if form_secret is not None:
        return ClientCredentials("client_secret_post", form_id, form_secret)
    return ClientCredentials("none", form_id, None)


@dataclass(frozen=True, slots=True)
class TokenResponse:
    access_token: str
    expires_in: int
    id_token: str | None
    refresh_token: str | None
    scope: str

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        }
        if self.id_token is not None:
            body["id_token"] = self.id_token
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
        return body


@dataclass(frozen=True, slots=True)
class _Issued:
    """Tokens prepared before the store's transaction: their random parts and rows."""

    jti: str
    refresh_token: str | None
    rows: tuple[OidcToken, ...]


SECRET_CACHE_TTL = 300.0  # seconds a verified client secret skips argon2


class VerifiedSecrets:
    """The digest of each client's last verified secret, so its next calls skip argon2.

    Compared in constant time; a config reload (restart) or a different secret misses.
    Only a digest is kept: the secret itself is never stored.
    """

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._known: dict[str, tuple[bytes, float]] = {}

    @staticmethod
    def _digest(client_id: str, secret: str) -> bytes:
        return hashlib.sha256(f"{client_id}\x00{secret}".encode()).digest()

    def matches(self, client_id: str, secret: str, now: float) -> bool:
        found = self._known.get(client_id)
        if found is None or found[1] <= now:
            return False
        return hmac.compare_digest(found[0], self._digest(client_id, secret))

    def remember(self, client_id: str, secret: str, now: float) -> None:
        self._known[client_id] = (self._digest(client_id, secret), now + self._ttl)


class OidcProvider:
    def __init__(
        self,
        cfg: OidcProviderConfig,
        store: Storage,
        keys: KeyRing,
        hasher: AsyncPasswordHasher,
        regulation: RegulationConfig,
        audit_log: AuditLog,
        clock: Callable[[], float],
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.keys = keys
        self.hasher = hasher
        self.regulation = regulation
        self.audit = audit_log
        self.clock = clock
        self._secret_cache = VerifiedSecrets(SECRET_CACHE_TTL)

    @property
    def issuer(self) -> str:
        return self.cfg.issuer

    # -- lifetimes ------------------------------------------------------------------------------

    def _access_lifespan(self, client: OidcClient) -> float:
        return client.access_token_lifespan or self.cfg.access_token_lifespan

    def _id_lifespan(self, client: OidcClient) -> float:
        return client.id_token_lifespan or self.cfg.id_token_lifespan

    def _refresh_lifespan(self, client: OidcClient) -> float:
        return client.refresh_token_lifespan or self.cfg.refresh_token_lifespan

    def _offline(self, client: OidcClient, scopes: Sequence[str]) -> bool:
        return "offline_access" in scopes and "refresh_token" in client.grant_types

    # -- authorization --------------------------------------------------------------------------

    async def subject(self, user: User) -> str:
        return protocol.subject_of(await self.store.get_or_create_user_handle(user.id))

    async def remembered_consent(self, user: User, client: OidcClient) -> OidcConsent | None:
        return await self.store.get_oidc_consent(user.id, client.client_id)

    async def remember_consent(
        self, user: User, request: protocol.AuthorizationRequest, *, ip: str, implicit: bool = False
    ) -> None:
        """Store the user's consent to these scopes for this client (merged with earlier ones)."""
        client = request.client
        earlier = await self.store.get_oidc_consent(user.id, client.client_id)
        scopes = tuple(sorted(set(request.scopes) | set(earlier.scopes if earlier else ())))
        await self.store.put_oidc_consent(OidcConsent(user.id, client.client_id, scopes, self.clock()))
        await self.audit.record(
            audit.OIDC_CONSENT_GRANTED,
            actor=user.username,
            target=user.username,
            ip=ip,
            detail=f"{client.client_id}: {' '.join(scopes)}"
            + (" (implicit: no consent screen)" if implicit else ""),
        )

    async def revoke_consent(self, user: User, client_id: str, *, actor: str, ip: str | None) -> bool:
        """Forget a consent and end the client's grants and tokens for the user."""
        done = await self.store.delete_oidc_consent(user.id, client_id, now=self.clock())
        if done:
            await self.audit.record(
                audit.OIDC_CONSENT_REVOKED, actor=actor, target=user.username, ip=ip, detail=client_id
            )
        return done

    async def issue_code(
        self,
        request: protocol.AuthorizationRequest,
        user: User,
        *,
        session_hash: str,
        auth_time: float,
        amr: tuple[str, ...],
        acr: str,
    ) -> str:
        """Create the grant and its single-use authorization code; return the code."""
        now = self.clock()
        client = request.client
        if self._offline(client, request.scopes):
            ends = now + self._refresh_lifespan(client)
        else:
            ends = now + max(self._access_lifespan(client), self.cfg.authorization_code_lifespan)
        grant = OidcGrant(
            id=secrets.token_urlsafe(16),
            client_id=client.client_id,
            user_id=user.id,
            scopes=request.scopes,
            session_hash=session_hash,
            auth_time=auth_time,
            amr=amr,
            acr=acr,
            nonce=request.nonce,
            created_at=now,
            expires_at=ends,
        )
        code = secrets.token_urlsafe(32)
        await self.store.create_oidc_grant(
            grant,
            OidcCode(
                code_hash=protocol.token_hash(code),
                grant_id=grant.id,
                redirect_uri=request.redirect_uri,
                code_challenge=request.code_challenge,
                expires_at=now + self.cfg.authorization_code_lifespan,
            ),
        )
        return code

    # -- client authentication ------------------------------------------------------------------

    async def authenticate_client(self, credentials: ClientCredentials, *, ip: str) -> OidcClient:
        """Return the client the credentials prove, or raise OidcError (invalid_client, 401).

        Failed secrets count toward regulation like failed passwords, keyed by client id and
        by address; the argon2 check runs for unknown clients too, so timing tells nothing.
        """
        client = self.cfg.client(credentials.client_id)
        if client is not None and client.public:
            if credentials.method != "none":
                raise OidcError("invalid_client", "a public client sends no secret", status=401)
            return client
        if client is not None and credentials.method != client.token_endpoint_auth_method:
            raise OidcError(
                "invalid_client",
                f"this client authenticates with {client.token_endpoint_auth_method}",
                status=401,
            )
        if credentials.secret is None:
            raise OidcError("invalid_client", "client authentication is required", status=401)
        now = self.clock()
        cfg = self.regulation
        # Keyed by client and address: wrong secrets sent from elsewhere cannot lock the real
        # app out (one client serves all its users), and the address key bans the sender.
        key = f"{CLIENT_ATTEMPT_PREFIX}{credentials.client_id[:100]}@{ip}"
        failures: list[float] = []
        if cfg.max_retries > 0:
            since = now - cfg.find_time - cfg.ban_time
            failures = await self.store.failures_since(username=key, since=since)
            ends = [
                banned_until(failures, now=now, cfg=cfg),
                banned_until(await self.store.failures_since(ip=ip, since=since), now=now, cfg=cfg),
            ]
            active = [end for end in ends if end is not None]
            if active:
                raise OidcError(
                    "invalid_client",
                    "too many failed client authentications; try again later",
                    status=429,
                    retry_after=max(1, round(max(active) - now)),
                )
        if client is not None and self._secret_cache.matches(client.client_id, credentials.secret, now):
            return client
        # None makes the hasher verify a dummy hash: an unknown client costs the same time.
        stored = client.client_secret_hash if client is not None else None
        ok = await self.hasher.verify(stored, credentials.secret)
        if not ok or client is None:
            await self.store.record_attempt(key, ip, False, now)
            await self.audit.record(
                audit.OIDC_CLIENT_AUTH_FAILED,
                actor=None,
                ip=ip,
                detail=f"client {credentials.client_id[:100]!r}: "
                + ("wrong secret" if client else "unknown"),
            )
            raise OidcError("invalid_client", "client authentication failed", status=401)
        if failures:
            await self.store.record_attempt(key, ip, True, now)  # a success wipes the slate
        self._secret_cache.remember(client.client_id, credentials.secret, now)
        return client

    # -- the token endpoint ---------------------------------------------------------------------

    def _prepare(
        self, client: OidcClient, grant_id: str, scopes: Sequence[str], now: float, ends: float
    ) -> _Issued:
        jti = secrets.token_urlsafe(16)
        rows = [OidcToken(jti, "access", grant_id, now, now + self._access_lifespan(client))]
        refresh = None
        if self._offline(client, scopes):
            refresh = secrets.token_urlsafe(32)
            rows.append(OidcToken(protocol.token_hash(refresh), "refresh", grant_id, now, ends))
        return _Issued(jti, refresh, tuple(rows))

    async def exchange_code(
        self, client: OidcClient, *, code: str, redirect_uri: str, verifier: str | None, ip: str
    ) -> TokenResponse:
        """grant_type=authorization_code: one use of a code; a second use revokes the grant."""
        if not code or not redirect_uri:
            raise OidcError("invalid_request", "code and redirect_uri are required")
        now = self.clock()
        prepared: list[_Issued] = []

        def tokens(grant: OidcGrant, stored: OidcCode) -> Sequence[OidcToken]:
            # Raising here leaves the code unused: a code sent by the wrong client, or with the
            # wrong redirect URI or verifier, does not burn the real client's code.
            if grant.client_id != client.client_id:
                raise OidcError("invalid_grant", "the code was issued to another client")
            if not protocol.redirect_uri_matches(redirect_uri, (stored.redirect_uri,)):
                raise OidcError("invalid_grant", "redirect_uri differs from the authorization request")
            if not protocol.verify_pkce(stored.code_challenge, verifier):
                raise OidcError("invalid_grant", "the PKCE code_verifier does not match")
            issued = self._prepare(client, grant.id, grant.scopes, now, grant.expires_at)
            prepared.append(issued)
            return issued.rows

        # The last prepared set is the one stored: an engine may retry a transaction that lost
        # a serialization race, calling `tokens` again.
        outcome, grant, _ = await self.store.redeem_oidc_code(
            protocol.token_hash(code), now=now, tokens=tokens
        )
        if outcome == "reused" and grant is not None:
            user = await self.store.get_user(grant.user_id)
            await self.audit.record(
                audit.OIDC_GRANT_REVOKED,
                actor=None,
                target=user.username if user else None,
                ip=ip,
                detail=f"{grant.client_id}: authorization code used twice; its grant and tokens are revoked",
            )
        if outcome != "ok" or grant is None:
            raise OidcError("invalid_grant", f"the authorization code is {_OUTCOME_WORDS[outcome]}")
        return await self._respond(client, grant, prepared[-1], grant.scopes, ip=ip, nonce=grant.nonce)

    async def refresh(
        self, client: OidcClient, *, refresh_token: str, scope: str | None, ip: str
    ) -> TokenResponse:
        """grant_type=refresh_token: rotate the token; a reused one revokes the whole grant."""
        if "refresh_token" not in client.grant_types:
            raise OidcError("unauthorized_client", "this client may not use refresh tokens")
        if not refresh_token:
            raise OidcError("invalid_request", "refresh_token is required")
        now = self.clock()
        prepared: list[_Issued] = []
        narrowed: list[tuple[str, ...]] = []

        def tokens(grant: OidcGrant) -> Sequence[OidcToken]:
            if grant.client_id != client.client_id:
                raise OidcError("invalid_grant", "the refresh token was issued to another client")
            scopes = grant.scopes
            if scope is not None:
                asked = tuple(dict.fromkeys(scope.split()))
                if not set(asked) <= set(grant.scopes):
                    raise OidcError("invalid_scope", "a refresh cannot widen the granted scopes")
                scopes = asked
            narrowed.append(scopes)
            # The refresh token keeps the grant's scopes; only this access token is narrowed.
            issued = self._prepare(client, grant.id, grant.scopes, now, grant.expires_at)
            prepared.append(issued)
            return issued.rows

        outcome, grant = await self.store.rotate_oidc_refresh_token(
            protocol.token_hash(refresh_token), now=now, tokens=tokens
        )
        if outcome == "reused" and grant is not None:
            user = await self.store.get_user(grant.user_id)
            await self.audit.record(
                audit.OIDC_GRANT_REVOKED,
                actor=None,
                target=user.username if user else None,
                ip=ip,
                detail=f"{grant.client_id}: refresh token reused after rotation; the grant is revoked",
            )
        if outcome != "ok" or grant is None:
            raise OidcError("invalid_grant", f"the refresh token is {_OUTCOME_WORDS[outcome]}")
        # No nonce in a refreshed ID token (OIDC Core 12.2): it answers no authorization request.
        return await self._respond(client, grant, prepared[-1], narrowed[-1], ip=ip, nonce="")

    async def _respond(
        self,
        client: OidcClient,
        grant: OidcGrant,
        issued: _Issued,
        scopes: Sequence[str],
        *,
        ip: str,
        nonce: str,
    ) -> TokenResponse:
        user = await self.store.get_user(grant.user_id)
        if user is None or user.disabled:
            await self.store.revoke_oidc_grant(grant.id, now=self.clock(), reason="user disabled or deleted")
            raise OidcError("invalid_grant", "the user's account is disabled")
        now = self.clock()
        sub = await self.subject(user)
        alg = client.id_token_signed_response_alg
        access_life = int(self._access_lifespan(client))
        access = sign(
            self.keys,
            alg,
            {
                "iss": self.issuer,
                "sub": sub,
                "aud": client.client_id,
                "client_id": client.client_id,
                "iat": int(now),
                "exp": int(now) + access_life,
                "jti": issued.jti,
                "scope": " ".join(scopes),
                "auth_time": int(grant.auth_time),
                "acr": grant.acr,
                "amr": list(grant.amr),
            },
            typ=ACCESS_TOKEN_TYPE,
        )
        # Every response carries an ID token: both grants are OpenID Connect ones.
        claims: dict[str, Any] = {
            **protocol.user_claims(user, sub, scopes),
            "iss": self.issuer,
            "aud": client.client_id,
            "azp": client.client_id,
            "iat": int(now),
            "exp": int(now + self._id_lifespan(client)),
            "auth_time": int(grant.auth_time),
            "acr": grant.acr,
            "amr": list(grant.amr),
            "sid": protocol.session_id_claim(grant.session_hash),
        }
        if nonce:
            claims["nonce"] = nonce
        id_token_value = sign(self.keys, alg, claims, typ=ID_TOKEN_TYPE)
        await self.audit.record(
            audit.OIDC_TOKENS_ISSUED,
            actor=user.username,
            target=user.username,
            ip=ip,
            detail=f"{client.client_id}: {' '.join(scopes)}"
            + (" + refresh token" if issued.refresh_token else ""),
        )
        return TokenResponse(
            access_token=access,
            expires_in=access_life,
            id_token=id_token_value,
            refresh_token=issued.refresh_token,
            scope=" ".join(scopes),
        )

    # -- using tokens ---------------------------------------------------------------------------

    async def _live_access_token(self, token: str) -> tuple[dict[str, Any], OidcGrant, User]:
        """Verify an access token, its row and grant, and its user; raise InvalidToken."""
        claims = read(
            self.keys.verification_keys(), token, issuer=self.issuer, now=self.clock(), typ=ACCESS_TOKEN_TYPE
        )
        found = await self.store.find_oidc_token(str(claims.get("jti", "")))
        if found is None:
            raise InvalidToken("unknown or pruned")
        row, grant = found
        if row.kind != "access" or row.revoked_at is not None or grant.revoked_at is not None:
            raise InvalidToken("revoked")
        user = await self.store.get_user(grant.user_id)
        if user is None or user.disabled:
            raise InvalidToken("the user's account is disabled")
        return claims, grant, user

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        """The claims for the userinfo endpoint; InvalidToken when the token is not live."""
        claims, _grant, user = await self._live_access_token(access_token)
        return protocol.user_claims(user, str(claims["sub"]), str(claims.get("scope", "")).split())

    async def introspect(self, client: OidcClient, token: str) -> dict[str, Any]:
        """RFC 7662: what the token is, to the client it was issued to; else {"active": false}."""
        inactive = {"active": False}
        if not token:
            return inactive
        if token.count(".") == 2:
            try:
                claims, grant, user = await self._live_access_token(token)
            except InvalidToken:
                return inactive
            if grant.client_id != client.client_id:
                return inactive
            return {
                "active": True,
                "token_type": "Bearer",
                **{k: claims[k] for k in ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "jti")},
                "username": user.username,
            }
        found = await self.store.find_oidc_token(protocol.token_hash(token))
        if found is None:
            return inactive
        row, grant = found
        now = self.clock()
        live = (
            row.used_at is None
            and row.revoked_at is None
            and grant.revoked_at is None
            and row.expires_at > now
        )
        owner = await self.store.get_user(grant.user_id)
        if not live or grant.client_id != client.client_id or owner is None or owner.disabled:
            return inactive
        user = owner
        return {
            "active": True,
            "token_type": "refresh_token",
            "scope": " ".join(grant.scopes),
            "client_id": grant.client_id,
            "sub": await self.subject(user),
            "username": user.username,
            "exp": int(row.expires_at),
            "iat": int(row.issued_at),
            "iss": self.issuer,
        }

    async def revoke(self, client: OidcClient, token: str, *, ip: str) -> None:
        """RFC 7009: revoke a token of this client; unknown tokens are ignored (200 either way).

        A refresh token takes its whole grant with it (the access tokens too, 2.1).
        """
        if not token:
            raise OidcError("invalid_request", "token is required")
        now = self.clock()
        if token.count(".") == 2:
            try:
                claims = read(
                    self.keys.verification_keys(), token, issuer=self.issuer, now=now, typ=ACCESS_TOKEN_TYPE
                )
            except InvalidToken:
                return
            found = await self.store.find_oidc_token(str(claims.get("jti", "")))
            if found is None or found[1].client_id != client.client_id:
                return
            if await self.store.revoke_oidc_token(found[0].token_hash, now=now):
                await self._revoked(found[1], "access token", ip)
            return
        found = await self.store.find_oidc_token(protocol.token_hash(token))
        if found is None or found[0].kind != "refresh" or found[1].client_id != client.client_id:
            return
        if await self.store.revoke_oidc_grant(
            found[1].id, now=now, reason="refresh token revoked by the client"
        ):
            await self._revoked(found[1], "refresh token (and its grant)", ip)

    async def _revoked(self, grant: OidcGrant, what: str, ip: str) -> None:
        user = await self.store.get_user(grant.user_id)
        name = user.username if user else None
        await self.audit.record(
            audit.OIDC_TOKEN_REVOKED,
            actor=grant.client_id,
            target=name,
            ip=ip,
            detail=f"{grant.client_id}: {what}",
        )

    # -- logout ---------------------------------------------------------------------------------

    def read_id_token_hint(self, hint: str) -> dict[str, Any]:
        """Verify an id_token_hint (expired is fine); raise InvalidToken."""
        claims = read(
            self.keys.verification_keys(),
            hint,
            issuer=self.issuer,
            now=self.clock(),
            typ=None,
            check_expiry=False,
        )
        if self.cfg.client(str(claims.get("aud", ""))) is None:
            raise InvalidToken("for no client of ours")
        return claims

    async def client_ids_with_grants(self) -> dict[str, tuple[int, int]]:
        return await self.store.count_oidc_grants(self.clock())


_OUTCOME_WORDS = {
    "unknown": "not valid",
    "expired": "expired",
    "revoked": "revoked",
    "reused": "already used; every token issued from it is now revoked",
}


def log_refusal(endpoint: str, exc: OidcError, *, client_id: str | None, ip: str) -> None:
    """One log line per refused protocol request (never with a token or secret)."""
    log_event(
        "oidc_refused",
        logging.WARNING if exc.status in (401, 429) else logging.INFO,
        endpoint=endpoint,
        error=exc.error,
        reason=exc.description,
        client_id=(client_id or "")[:100],
        client_ip=ip,
    )


__all__ = ["NotFound", "OidcError", "OidcProvider"]
