"""A request path -> the one canonical path access rules match, and why it may be ambiguous (pure).

Rules match one canonical path: percent-decoded once, dot segments resolved (RFC 3986
remove_dot_segments, never climbing above the root), repeated slashes merged, the query
left out. An upstream may still read the same bytes as another path: Tomcat and Spring
drop `;params`, Windows servers turn `\\` into `/` and drop a segment's trailing spaces,
some servers decode `%2f` into a separator, `%3f` into a query, or decode twice. Such a path is ambiguous:
whether the rule written for `/admin` covers what the upstream serves depends on the
upstream. `canonical_path` names the first such ambiguity; the forward-auth endpoints
refuse those requests unless `access_control.ambiguous_paths` is `allow`.

A path that cannot be matched safely at all (not UTF-8 after decoding, a control
character after decoding: a decoded newline would let a regex's `$` match early) raises
InvalidForwardedHeaders whatever the setting.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from gateway.errors import InvalidForwardedHeaders

_BAD_DECODED_CHAR = re.compile(r"[\x00-\x1f\x7f]")
# Each raw-path ambiguity, in the order they are reported.
_RAW_AMBIGUITIES = (
    (re.compile(r"%(?![0-9A-Fa-f]{2})"), "invalid percent-encoding (a '%' not followed by two hex digits)"),
    (re.compile(r"%2[fF]"), "an encoded slash (%2f)"),
    (re.compile(r"%5[cC]|\\"), "a backslash (raw or %5c)"),
    (re.compile(r";|%3[bB]"), "a ';' parameter (raw or %3b)"),
    # Decoded, these end the path for an upstream that decodes before it splits the URL.
    (re.compile(r"%(?:3[fF]|23)"), "an encoded '?' or '#' (%3f, %23)"),
)
# After one decoding: what a second decoding would still change.
_DOUBLE_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")
# A segment ending in whitespace ("/admin%20"): Windows drops it and reads "/admin".
_TRAILING_SPACE = re.compile(r"\s(?:/|$)")


def canonical_path(raw_path: str, name: str) -> tuple[str, str | None]:
    """Return (canonical path, what makes it ambiguous or None) for a raw path starting with '/'.

    `name` is the header the path came from, for the error message.
    """
    ambiguity = None
    if "%" in raw_path or "\\" in raw_path or ";" in raw_path:
        for pattern, what in _RAW_AMBIGUITIES:
            if pattern.search(raw_path):
                ambiguity = what
                break
    try:
        decoded = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        reason = f"malformed {name} {raw_path!r}: percent-encoding is not UTF-8"
        raise InvalidForwardedHeaders(reason) from None
    if "%" in raw_path:
        # Rules are regexes: a decoded newline would let "$" match early, a NUL cut a path short.
        if _BAD_DECODED_CHAR.search(decoded):
            raise InvalidForwardedHeaders(f"malformed {name} {raw_path!r}: encoded control character in path")
        if ambiguity is None and _DOUBLE_ENCODED.search(decoded):
            ambiguity = "double percent-encoding (%25 followed by two hex digits)"
        # Only decoding can produce whitespace: the caller refuses it raw (not printable).
        if ambiguity is None and _TRAILING_SPACE.search(decoded):
            ambiguity = "a path segment ending in whitespace"
    return remove_dot_segments(decoded), ambiguity


def remove_dot_segments(path: str) -> str:
    """Resolve "." and ".." (never above the root) and merge repeated slashes."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment not in ("", "."):
            kept.append(segment)
    normalised = "/" + "/".join(kept)
    # "/a/" and "/a/b/.." name a directory: keep the trailing slash rules may test for.
    if kept and segments[-1] in ("", ".", ".."):
        normalised += "/"
    return normalised
