"""Single-use recovery codes: generation, peppered hashing and constant-time matching.

Codes are 12 characters of Crockford's base32 (60 random bits) shown as
`xxxx-xxxx-xxxx`. That is far beyond guessing online, so a keyed HMAC-SHA256 is
enough for storage (no argon2): without the pepper, which lives outside the
database, a stolen hash cannot even be tested against a guess.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

DEFAULT_COUNT = 10
CODE_LENGTH = 12  # characters, 5 bits each
GROUP = 4

# Crockford's base32: no i, l, o or u, so nothing reads as another character.
ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
# What people type by mistake for 0 and 1 (Crockford's decoding rules); separators vanish.
_TYPING = str.maketrans({"o": "0", "i": "1", "l": "1", "-": None, " ": None, "\t": None})
_HASH_PREFIX = "hs256$"


def generate_codes(count: int = DEFAULT_COUNT) -> list[str]:
    """Return `count` new distinct codes formatted as xxxx-xxxx-xxxx."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    codes: list[str] = []
    while len(codes) < count:
        raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
        code = "-".join(raw[i : i + GROUP] for i in range(0, CODE_LENGTH, GROUP))
        if code not in codes:  # a repeat is astronomically unlikely, but would waste a slot
            codes.append(code)
    return codes


def normalise_code(code: str) -> str | None:
    """Return the code's canonical 12 characters, or None when it cannot be a recovery code."""
    text = code.strip().lower().translate(_TYPING)
    if len(text) != CODE_LENGTH or any(char not in ALPHABET for char in text):
        return None
    return text


def hash_code(code: str, *, pepper: bytes) -> str:
    """Return the stored form of a code: HMAC-SHA256 of its canonical form under `pepper`."""
    canonical = normalise_code(code)
    if canonical is None:
        raise ValueError("not a recovery code")
    return _hash(canonical, pepper)


def match_code(code: str, hashes: Sequence[str], *, pepper: bytes) -> int | None:
    """Return the index in `hashes` of the hash `code` matches, or None; compares against all of them."""
    canonical = normalise_code(code)
    if canonical is None:
        # What was typed is no secret, so refusing it early leaks nothing.
        return None
    candidate = _hash(canonical, pepper).encode("ascii")
    found: int | None = None
    for index, stored in enumerate(hashes):
        # No break: the time taken must not say where in the list the match was.
        if hmac.compare_digest(stored.encode("ascii"), candidate) and found is None:
            found = index
    return found


def _hash(canonical: str, pepper: bytes) -> str:
    if len(pepper) < 16:
        raise ValueError("the pepper must be at least 16 bytes")
    digest = hmac.new(pepper, canonical.encode("ascii"), hashlib.sha256).hexdigest()
    return _HASH_PREFIX + digest
