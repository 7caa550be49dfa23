"""ID tokens and access tokens: JWTs signed and checked with joserfc (no hand-written JOSE).

Access tokens are JWTs in the RFC 9068 profile (typ at+jwt) so resource servers can check
them offline against the JWKS; each also has a row (by jti) so userinfo, introspection and
revocation see a revoked grant at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from gateway.oidc.keys import ALGORITHMS, KeyRing

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type
ID_TOKEN_TYPE = "JWT"  # noqa: S105 - a media type


class InvalidToken(Exception):
    """A token that is not ours, is damaged, expired, or of the wrong kind."""


def sign(keys: KeyRing, alg: str, claims: Mapping[str, Any], *, typ: str) -> str:
    """Sign `claims` with the current key for `alg` (RS256 or ES256)."""
    key = keys.signing_key(alg)
    return jwt.encode({"alg": alg, "kid": key.kid or "", "typ": typ}, dict(claims), key)


def read(
    keys: KeySet,
    token: str,
    *,
    issuer: str,
    now: float,
    typ: str | None,
    check_expiry: bool = True,
) -> dict[str, Any]:
    """Verify a token of ours and return its claims, or raise InvalidToken.

    `typ`: the header type it must carry (None: any). `check_expiry` False for the
    id_token_hint of a logout, which may have expired (OIDC RP-Initiated Logout 2).
    """
    if not isinstance(token, str) or len(token) > 16384 or token.count(".") != 2:
        raise InvalidToken("not a compact JWS")
    try:
        decoded = jwt.decode(token, keys, algorithms=list(ALGORITHMS))
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise InvalidToken(f"the signature does not verify ({type(exc).__name__})") from exc
    if typ is not None and str(decoded.header.get("typ", "")).lower() != typ.lower():
        raise InvalidToken(f"not a token of type {typ}")
    claims = dict(decoded.claims)
    if claims.get("iss") != issuer:
        raise InvalidToken("issued by someone else")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise InvalidToken("no expiry")
    if check_expiry and exp <= now:
        raise InvalidToken("expired")
    return claims
