"""Who the provider says signed in, and whether that person may sign in here. Pure.

Only a verified e-mail address is kept (an OIDC `email` with `email_verified: true`, or a
GitHub address its /user/emails marks verified): an unverified one could be anybody's, so it
never matches an allow-list, never finds an account to link and never names a new account.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config import ExternalAllowList, ExternalProvider
from gateway.external_login.errors import NotAllowed, ProviderUnavailable, TokenInvalid

MAX_SUBJECT_LENGTH = 255  # OIDC Core 2: sub is at most 255 ASCII characters
MAX_TEXT_LENGTH = 256
MAX_GROUPS = 500
_EMAIL = re.compile(r"[^@\s,;<>\"]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}")
_USERNAME_CHAR = re.compile(r"[^a-z0-9._-]+")
USERNAME_MAX = 60  # leaves room for a "-NN" suffix within the 64 characters a username may have


@dataclass(frozen=True, slots=True)
class ExternalIdentity:
    """A person as one provider describes them, reduced to what authgate uses."""

    provider: str
    subject: str  # stable at that provider; the link key (never the e-mail, which can change hands)
    username: str  # the provider's user name ("" when it gave none)
    email: str  # a verified address, "" when there is none
    display_name: str
    groups: tuple[str, ...]  # OIDC groups claim, or GitHub organisation logins (lower case)
    amr: tuple[str, ...]  # authentication methods the provider reports (RFC 8176), () when none


def _text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT_LENGTH:
        return ""
    return " ".join(value.split())  # no control characters or line breaks into pages or logs


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value[:MAX_GROUPS] if isinstance(item, str) and 0 < len(item) <= 256)


def _email(value: Any) -> str:
    text = _text(value)
    return text if _EMAIL.fullmatch(text) and ".." not in text else ""


def _subject(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > MAX_SUBJECT_LENGTH or not value.isprintable():
        raise TokenInvalid("the provider's subject (sub) is missing or malformed")
    return value


def identity_from_claims(provider: ExternalProvider, claims: Mapping[str, Any]) -> ExternalIdentity:
    """Map verified ID token (and userinfo) claims to an identity, as provider.claims says."""
    mapping = provider.claims
    verified = claims.get("email_verified") in (True, "true") or provider.assume_email_verified
    return ExternalIdentity(
        provider=provider.id,
        subject=_subject(claims.get("sub")),
        username=_text(claims.get(mapping.username)),
        email=_email(claims.get(mapping.email)) if verified else "",
        display_name=_text(claims.get(mapping.display_name)),
        groups=_strings(claims.get(mapping.groups)),
        amr=_strings(claims.get("amr")),
    )


def github_identity(
    provider: ExternalProvider,
    user: Mapping[str, Any],
    emails: Sequence[Any],
    orgs: Sequence[Any],
) -> ExternalIdentity:
    """Map GitHub's /user, /user/emails and /user/orgs answers to an identity (verified e-mail only)."""
    if not isinstance(user, Mapping):
        raise ProviderUnavailable("GitHub's /user answer is not an object")
    verified = [
        e for e in emails if isinstance(e, Mapping) and e.get("verified") is True and _email(e.get("email"))
    ]
    # The primary address when it is verified, else the first verified one.
    verified.sort(key=lambda e: e.get("primary") is not True)
    logins = [org.get("login") for org in orgs if isinstance(org, Mapping)]
    return ExternalIdentity(
        provider=provider.id,
        subject=_subject(user.get("id")),
        username=_text(user.get("login")),
        email=_email(verified[0]["email"]) if verified else "",
        display_name=_text(user.get("name")),
        groups=tuple(login.lower() for login in _strings(logins)),
        amr=(),
    )


def check_allowed(identity: ExternalIdentity, allow: ExternalAllowList) -> None:
    """Raise NotAllowed unless the identity matches one of the allow-lists (or allow_any is set)."""
    if allow.allow_any:
        return
    email = identity.email.lower()
    domain = email.rpartition("@")[2]
    if email and (email in allow.emails or domain in allow.email_domains):
        return
    if set(identity.groups) & set(allow.groups):
        return
    if set(identity.groups) & set(allow.organizations):
        return
    raise NotAllowed(
        f"{identity.provider} subject {identity.subject!r} matches no allow-list "
        f"(verified e-mail: {'yes' if email else 'none'}, {len(identity.groups)} group(s))"
    )


def provider_second_factor(identity: ExternalIdentity, provider: ExternalProvider) -> bool:
    """True when the provider is trusted for two factors and its amr reports one of trusted_amr."""
    return provider.two_factor == "provider" and bool(set(identity.amr) & set(provider.trusted_amr))


def username_base(identity: ExternalIdentity) -> str:
    """A valid local username from the provider's user name, else the e-mail's local part, else "user"."""
    for source in (identity.username, identity.email.partition("@")[0]):
        name = _USERNAME_CHAR.sub("-", source.lower()).lstrip("._-")[:USERNAME_MAX].rstrip("._-")
        if name:
            return name
    return "user"


def username_candidates(base: str, count: int = 20) -> Iterator[str]:
    """Yield base, base-2, base-3 ... (count names in all) for a new account's unique username."""
    yield base
    for number in range(2, count + 1):
        yield f"{base}-{number}"
