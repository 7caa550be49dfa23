"""CSRF tokens (pure): a signed double-submit token bound to a random cookie value."""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Sequence

from itsdangerous import BadSignature, URLSafeTimedSerializer

CSRF_SALT = "authgate.csrf.v1"
CSRF_MAX_AGE = 12 * 3600
# What generate_csrf_secret produces; a cookie holding anything else is replaced, not signed or compared.
_SECRET = re.compile(r"[A-Za-z0-9_-]{32}")


def generate_csrf_secret() -> str:
    """Return a new random value for the CSRF cookie."""
    return secrets.token_urlsafe(24)


def is_csrf_secret(value: str | None) -> bool:
    """True when value has the shape of a CSRF cookie secret we issued."""
    return value is not None and _SECRET.fullmatch(value) is not None


class CsrfSigner:
    def __init__(self, keys: Sequence[str]) -> None:
        self._serializer = URLSafeTimedSerializer(list(reversed(keys)), salt=CSRF_SALT)

    def token_for(self, cookie_secret: str) -> str:
        """Return the form token that matches a CSRF cookie value."""
        return self._serializer.dumps(cookie_secret)

    def verify(self, cookie_secret: str | None, token: str | None) -> bool:
        """True when the form token was issued for this cookie value and is recent enough."""
        if cookie_secret is None or not is_csrf_secret(cookie_secret) or not token:
            return False
        try:
            expected = self._serializer.loads(token, max_age=CSRF_MAX_AGE)
        except BadSignature:
            return False
        # Both sides have the secret's ASCII shape here; compare_digest would raise on other text.
        return (
            isinstance(expected, str)
            and is_csrf_secret(expected)
            and hmac.compare_digest(expected, cookie_secret)
        )
