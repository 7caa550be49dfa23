"""One external sign-in from the button to a local account: provider I/O, checks, links, accounts.

    start()   discovery (cached) -> authorization URL + LoginState          (flow.begin)
    finish()  callback checks (flow) -> code exchange -> ID token (tokens) or GitHub's API
              -> ExternalIdentity (identity) -> allow-list
    account() the identity's local account: linked, to confirm, to create, or refused

HTTP goes through the `Http` protocol (client.ProviderHttp in the app), so this module has no
aiohttp in it; storage goes through the store. Tokens from the provider are used once, here, to
read who signed in, and are neither stored nor logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from gateway.config import ExternalLoginConfig, ExternalProvider
from gateway.errors import Conflict
from gateway.external_login import flow, identity, tokens
from gateway.external_login.errors import (
    CallbackRefused,
    ExternalLoginError,
    ProviderUnavailable,
    TokenInvalid,
    UnknownProvider,
)
from gateway.external_login.identity import ExternalIdentity
from gateway.models import ExternalLink, User

DISCOVERY_TTL = 3600.0  # seconds a discovery document (and its JWKS) is reused
JWKS_REFRESH_AFTER = 60.0  # an unknown kid refetches the JWKS at most this often (key rotation)
# What the sign-in page says (English %-format; %(label)s is the provider's label). The portal
# translates these: portal/views/external_login.py marks each for the catalogues.
REFUSED_LINKING_OFF = (
    "An account with your e-mail address exists here, but %(label)s sign-in cannot be linked to it. "
    "Sign in with your password instead."
)
REFUSED_NO_ACCOUNT = (
    "No account here is linked to your %(label)s account. Sign in with your password, then link "
    "%(label)s in your security settings, or ask an administrator."
)
REFUSED_NO_EMAIL = "%(label)s did not share a verified e-mail address; a new account needs one."
LINKING_OFF = "This provider cannot be linked here."
LINKED_ELSEWHERE = "That account at the provider is linked to another account here already."
EMAIL_JUST_TAKEN = "An account with your e-mail address was just created here. Please sign in again."
NO_FREE_USERNAME = "No username is free for a new account; ask an administrator."
GITHUB_API_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}


class AccountStore(Protocol):
    """The store methods external sign-in uses (every engine has them; no engine is imported here)."""

    async def find_external_link(self, provider: str, subject: str) -> tuple[ExternalLink, User] | None: ...

    async def add_external_link(
        self, user_id: int, provider: str, subject: str, *, email: str, at: float
    ) -> ExternalLink: ...

    async def touch_external_link(self, link_id: int, at: float) -> None: ...

    async def find_user_by_email(self, email: str) -> User | None: ...

    async def create_user(
        self,
        username: str,
        email: str,
        display_name: str,
        groups: Sequence[str],
        password_hash: str | None,
    ) -> User: ...


class Http(Protocol):
    async def get_json(
        self, url: str, *, headers: Mapping[str, str] | None = None, timeout: float
    ) -> Any: ...

    async def post_form(
        self,
        url: str,
        form: Mapping[str, str],
        *,
        headers: Mapping[str, str] | None = None,
        basic_auth: tuple[str, str] | None = None,
        timeout: float,
    ) -> tuple[int, Any]: ...


@dataclass(frozen=True, slots=True)
class Discovery:
    """What authgate uses of an OpenID Provider's discovery document."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    algorithms: tuple[str, ...]
    secret_post: bool  # client_secret_post rather than client_secret_basic
    iss_parameter: bool  # RFC 9207: the callback always carries iss
    fetched_at: float


@dataclass(frozen=True, slots=True)
class Account:
    """What an identity means here. Exactly one of the shapes below:

    - user + link: a linked account, sign in;
    - user, no link, confirm: an account with the same verified e-mail; link after its password;
    - no user, create: auto_create makes a new account;
    - refused: a message saying why not (no account and none may be made, or linking is off).
    """

    user: User | None = None
    link: ExternalLink | None = None
    confirm: bool = False
    create: bool = False
    refused: str = ""


def _endpoint(document: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    value = document.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or len(value) > 2048:
        raise ProviderUnavailable(f"discovery document lacks {key}")
    parts = urlsplit(value)
    local = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and local):
        raise ProviderUnavailable(f"discovery document's {key} is not an https URL")
    return value


def parse_discovery(document: Any, provider: ExternalProvider, *, now: float) -> Discovery:
    """Check a discovery document against the configured issuer (OIDC Discovery 4.3) and keep its parts."""
    if not isinstance(document, Mapping):
        raise ProviderUnavailable("discovery answer is not a JSON object")
    issuer = document.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise ProviderUnavailable("discovery document names no issuer")
    if provider.issuer and issuer.rstrip("/") != provider.issuer:
        raise ProviderUnavailable(
            f"discovery names issuer {issuer[:200]!r}, configured is {provider.issuer!r}"
        )
    methods = document.get("token_endpoint_auth_methods_supported")
    methods = methods if isinstance(methods, list) else ["client_secret_basic"]
    algorithms = document.get("id_token_signing_alg_values_supported")
    return Discovery(
        issuer=issuer,
        authorization_endpoint=str(_endpoint(document, "authorization_endpoint")),
        token_endpoint=str(_endpoint(document, "token_endpoint")),
        jwks_uri=str(_endpoint(document, "jwks_uri")),
        userinfo_endpoint=_endpoint(document, "userinfo_endpoint", required=False),
        algorithms=tuple(tokens.signing_algorithms(algorithms if isinstance(algorithms, list) else None)),
        secret_post="client_secret_basic" not in methods and "client_secret_post" in methods,
        iss_parameter=document.get("authorization_response_iss_parameter_supported") is True,
        fetched_at=now,
    )


class ExternalLoginService:
    """The configured providers, their cached metadata, and the sign-in steps."""

    def __init__(
        self,
        config: ExternalLoginConfig,
        http: Http,
        store: AccountStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.providers = {provider.id: provider for provider in config.providers}
        self._http = http
        self._store = store
        self._clock = clock
        self._discovery: dict[str, Discovery] = {}
        self._jwks: dict[str, tuple[float, dict[str, Any]]] = {}

    def provider(self, provider_id: str) -> ExternalProvider:
        """Return the configured provider; UnknownProvider otherwise."""
        found = self.providers.get(provider_id)
        if found is None:
            raise UnknownProvider(f"no provider {provider_id[:64]!r} is configured")
        return found

    # -- the browser's trip to the provider and back ----------------------------------------------------

    async def start(
        self, provider_id: str, *, redirect_uri: str, rd: str, link_user: int | None = None
    ) -> tuple[str, flow.LoginState]:
        """Return where to send the browser and the LoginState to keep in its cookie."""
        provider = self.provider(provider_id)
        if provider.type == "github":
            endpoint = f"{provider.web_url}/login/oauth/authorize"
        else:
            endpoint = (await self.discovery(provider)).authorization_endpoint
        return flow.begin(
            provider=provider.id,
            authorization_endpoint=endpoint,
            client_id=provider.client_id,
            scopes=provider.scopes,
            redirect_uri=redirect_uri,
            rd=rd,
            link_user=link_user,
            now=self._clock(),
        )

    async def finish(
        self, provider_id: str, params: Mapping[str, str], login: flow.LoginState | None
    ) -> ExternalIdentity:
        """Check the callback, redeem its code and return the allowed identity; ExternalLoginError."""
        provider = self.provider(provider_id)
        discovery = await self.discovery(provider) if provider.type == "oidc" else None
        code = flow.check_callback(
            params,
            login,
            provider=provider.id,
            # GitHub names no issuer; should it send iss one day, its web URL is the one to expect.
            expected_issuer=discovery.issuer if discovery else provider.web_url,
            issuer_required=bool(discovery and discovery.iss_parameter),
            now=self._clock(),
            ttl=self.config.login_ttl,
        )
        if login is None:  # check_callback refuses this already; kept for the type checker
            raise CallbackRefused("no sign-in was started in this browser")
        if discovery is None:
            found = await self._github_identity(provider, code, login)
        else:
            found = await self._oidc_identity(provider, discovery, code, login)
        identity.check_allowed(found, provider.allow)
        return found

    async def discovery(self, provider: ExternalProvider) -> Discovery:
        """Return the provider's discovery document, fetched at most once per DISCOVERY_TTL."""
        now = self._clock()
        cached = self._discovery.get(provider.id)
        if cached is not None and now - cached.fetched_at < DISCOVERY_TTL:
            return cached
        url = provider.discovery_url or f"{provider.issuer}/.well-known/openid-configuration"
        document = await self._http.get_json(url, timeout=provider.timeout)
        found = parse_discovery(document, provider, now=now)
        self._discovery[provider.id] = found
        return found

    async def _keys(
        self, provider: ExternalProvider, discovery: Discovery, *, refresh: bool
    ) -> dict[str, Any]:
        now = self._clock()
        cached = self._jwks.get(provider.id)
        if cached is not None and now - cached[0] < DISCOVERY_TTL and not refresh:
            return cached[1]
        if cached is not None and refresh and now - cached[0] < JWKS_REFRESH_AFTER:
            return cached[1]  # fetched a moment ago: an unknown kid is not a rotation then
        jwks = await self._http.get_json(discovery.jwks_uri, timeout=provider.timeout)
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise ProviderUnavailable("the provider's JWKS is not a JSON object with keys")
        self._jwks[provider.id] = (now, jwks)
        return jwks

    async def _redeem(
        self, provider: ExternalProvider, url: str, code: str, login: flow.LoginState, *, secret_post: bool
    ) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": login.redirect_uri,
            "code_verifier": login.verifier,
            "client_id": provider.client_id,
        }
        if secret_post:
            form["client_secret"] = provider.client_secret
        status, body = await self._http.post_form(
            url,
            form,
            basic_auth=None if secret_post else (provider.client_id, provider.client_secret),
            timeout=provider.timeout,
        )
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, str):
            # invalid_grant: the code was used already, expired, or the PKCE verifier does not fit it.
            raise CallbackRefused(f"the token endpoint answered {status} {error[:64]!r}")
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise ProviderUnavailable(f"the token endpoint answered {status} without an access token")
        return body

    async def _oidc_identity(
        self, provider: ExternalProvider, discovery: Discovery, code: str, login: flow.LoginState
    ) -> ExternalIdentity:
        answer = await self._redeem(
            provider, discovery.token_endpoint, code, login, secret_post=discovery.secret_post
        )
        access_token = answer["access_token"]

        def verify(jwks: dict[str, Any]) -> dict[str, Any]:
            return tokens.verify_id_token(
                answer.get("id_token", ""),
                jwks,
                issuer=discovery.issuer,
                client_id=provider.client_id,
                nonce=login.nonce,
                now=self._clock(),
                algorithms=discovery.algorithms,
                access_token=access_token,
            )

        try:
            claims = verify(await self._keys(provider, discovery, refresh=False))
        except tokens.UnknownSigningKey:
            claims = verify(await self._keys(provider, discovery, refresh=True))
        if discovery.userinfo_endpoint:
            info = await self._http.get_json(
                discovery.userinfo_endpoint,
                headers={"Authorization": f"Bearer {access_token}"},
                timeout=provider.timeout,
            )
            # OIDC Core 5.3.2: userinfo about another subject must not be used.
            if not isinstance(info, dict) or info.get("sub") != claims.get("sub"):
                raise TokenInvalid("userinfo describes another subject than the ID token")
            claims = {**info, **claims}  # the signed ID token wins where both speak
        return identity.identity_from_claims(provider, claims)

    async def _github_identity(
        self, provider: ExternalProvider, code: str, login: flow.LoginState
    ) -> ExternalIdentity:
        answer = await self._redeem(
            provider, f"{provider.web_url}/login/oauth/access_token", code, login, secret_post=True
        )
        headers = {**GITHUB_API_HEADERS, "Authorization": f"Bearer {answer['access_token']}"}
        api = provider.api_url
        user = await self._http.get_json(f"{api}/user", headers=headers, timeout=provider.timeout)
        try:
            emails = await self._http.get_json(
                f"{api}/user/emails", headers=headers, timeout=provider.timeout
            )
        except ProviderUnavailable:
            emails = []  # no user:email scope granted: no verified address, which is still an answer
        orgs: Any = []
        if provider.allow.organizations:
            orgs = await self._http.get_json(
                f"{api}/user/orgs?per_page=100", headers=headers, timeout=provider.timeout
            )
        return identity.github_identity(
            provider, user, emails if isinstance(emails, list) else [], orgs if isinstance(orgs, list) else []
        )

    # -- the local account ---------------------------------------------------------------------------

    async def account(self, found: ExternalIdentity) -> Account:
        """Decide what the identity's first (or next) sign-in does here."""
        provider = self.provider(found.provider)
        linked = await self._store.find_external_link(found.provider, found.subject)
        if linked is not None:
            link, user = linked
            return Account(user=user, link=link)
        same_email = await self._store.find_user_by_email(found.email) if found.email else None
        if same_email is not None:
            if provider.link:
                return Account(user=same_email, confirm=True)
            return Account(refused=REFUSED_LINKING_OFF)
        if not provider.auto_create:
            return Account(refused=REFUSED_NO_ACCOUNT)
        if not found.email:
            return Account(refused=REFUSED_NO_EMAIL)
        return Account(create=True)

    async def link(self, user: User, found: ExternalIdentity) -> ExternalLink:
        """Link the identity to `user`; ExternalLoginError when it is linked to another account already."""
        if not self.provider(found.provider).link:
            raise ExternalLoginError(
                "linking is off for this provider", "This provider cannot be linked here."
            )
        try:
            return await self._store.add_external_link(
                user.id, found.provider, found.subject, email=found.email, at=self._clock()
            )
        except Conflict as exc:
            existing = await self._store.find_external_link(found.provider, found.subject)
            if existing is not None and existing[1].id == user.id:
                return existing[0]
            raise ExternalLoginError("identity is linked to another account", LINKED_ELSEWHERE) from exc

    async def create_account(self, found: ExternalIdentity) -> tuple[User, ExternalLink]:
        """Create a password-less local account for the identity (auto_create) and link it."""
        provider = self.provider(found.provider)
        display = found.display_name or found.username or found.email.partition("@")[0]
        for username in identity.username_candidates(identity.username_base(found)):
            try:
                user = await self._store.create_user(username, found.email, display, provider.groups, None)
            except Conflict as exc:
                if str(exc).startswith("e-mail"):
                    raise ExternalLoginError(
                        "e-mail taken while creating the account", EMAIL_JUST_TAKEN
                    ) from exc
                continue
            link = await self._store.add_external_link(
                user.id, found.provider, found.subject, email=found.email, at=self._clock()
            )
            return user, link
        raise ExternalLoginError(
            "no free username for the new account",
            "No username is free for a new account; ask an administrator.",
        )

    async def touch(self, link: ExternalLink) -> None:
        await self._store.touch_external_link(link.id, self._clock())
