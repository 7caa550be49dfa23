"""Why an external sign-in was refused: each carries a log reason and a message for the person."""

from __future__ import annotations

from gateway.errors import AuthFailed


class ExternalLoginError(AuthFailed):
    """An external sign-in cannot go on.

    `reason` is short text for the log (never a token or code); `message` is what the
    sign-in page tells the person, an English %-format string the portal translates and then
    fills with `params` (portal/views/external_login.py lists every one for the catalogues);
    `status` the HTTP status of that page.
    """

    status = 400
    message = "Signing in with that provider did not work. Please try again."

    def __init__(self, reason: str, message: str | None = None, **params: str) -> None:
        self.reason = reason
        if message is not None:
            self.message = message
        self.params = params
        super().__init__(reason)


class UnknownProvider(ExternalLoginError):
    """The URL names no configured provider."""

    status = 404
    message = "There is no such sign-in provider here."


class CallbackRefused(ExternalLoginError):
    """The callback does not belong to a sign-in this browser started (state, iss, error, expiry)."""

    message = (
        "This sign-in could not be verified (it may have expired, or the link was changed). "
        "Please start again."
    )


class ProviderDenied(ExternalLoginError):
    """The provider answered with an error (the user cancelled, or the client is misconfigured)."""

    status = 403
    message = "The provider did not sign you in. Please try again."


class TokenInvalid(ExternalLoginError):
    """The ID token's signature, issuer, audience, expiry or nonce is wrong."""

    message = "The provider's answer could not be verified, so you were not signed in."


class ProviderUnavailable(ExternalLoginError):
    """The provider could not be reached or gave an unusable answer."""

    status = 502
    message = "The sign-in provider cannot be reached right now. Please try again in a moment."


class NotAllowed(ExternalLoginError):
    """The identity is not on the provider's allow-list."""

    status = 403
    message = "Your account at that provider is not allowed to sign in here."
