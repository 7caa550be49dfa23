"""ID token verification, pure: joserfc checks the signature, authlib's CodeIDToken the OIDC claims.

No JOSE is written here: joserfc parses the compact JWS, picks the key by `kid` from the
provider's JWKS and verifies the signature with an algorithm from an explicit allow-list
(never `none`, never an HMAC keyed by a public key); authlib's `CodeIDToken` then applies
OpenID Connect Core 3.1.3.7: iss, aud (and azp), exp/iat, nonce and at_hash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.external_login.errors import TokenInvalid

# Asymmetric algorithms only: the JWKS is public, so an HMAC algorithm would let anyone sign.
SIGNING_ALGORITHMS = (
    *("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    *("ES256", "ES384", "ES512", "EdDSA"),
)
LEEWAY = 60  # seconds of clock difference tolerated on exp, iat and nbf
MAX_TOKEN_LENGTH = 64 * 1024


class UnknownSigningKey(TokenInvalid):
    """The token names a key the JWKS does not hold (the provider may have rotated keys)."""


def signing_algorithms(advertised: Sequence[str] | None) -> list[str]:
    """The algorithms to accept: what discovery advertises, limited to SIGNING_ALGORITHMS (RS256 if none)."""
    offered = [alg for alg in (advertised or ["RS256"]) if alg in SIGNING_ALGORITHMS]
    return offered or ["RS256"]


def verify_id_token(
    id_token: str,
    jwks: Mapping[str, Any],
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    now: float,
    algorithms: Sequence[str],
    access_token: str | None = None,
) -> dict[str, Any]:
    """Return the claims of a valid ID token; TokenInvalid (UnknownSigningKey) naming what is wrong."""
    if not isinstance(id_token, str) or not id_token or len(id_token) > MAX_TOKEN_LENGTH:
        raise TokenInvalid("the token response carries no usable id_token")
    try:
        keys = KeySet.import_key_set(dict(jwks))  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise TokenInvalid(f"the provider's JWKS cannot be read: {type(exc).__name__}") from exc
    try:
        token = jwt.decode(id_token, keys, algorithms=list(algorithms))
    except JoseError as exc:
        if exc.error == "invalid_key_id":
            raise UnknownSigningKey("id_token names a signing key (kid) the JWKS does not hold") from exc
        raise TokenInvalid(f"id_token signature or format invalid: {exc.error}") from exc
    except (ValueError, TypeError) as exc:  # malformed header or payload that is not a JSON object
        raise TokenInvalid(f"id_token cannot be decoded: {type(exc).__name__}") from exc
    claims = CodeIDToken(
        token.claims,
        token.header,
        options={"iss": {"essential": True, "value": issuer}, "aud": {"essential": True, "value": client_id}},
        params={"nonce": nonce, "client_id": client_id, "access_token": access_token},
    )
    try:
        claims.validate(now=int(now), leeway=LEEWAY)
    except JoseError as exc:
        raise TokenInvalid(f"id_token claims invalid: {exc.error} {exc.description or ''}".strip()) from exc
    return dict(claims)
