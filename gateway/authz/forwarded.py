"""Proxy headers from a trusted peer -> the OriginalRequest being judged (pure).

Traefik and Caddy (forward auth) describe the original request with
X-Forwarded-Method/Proto/Host/Uri; nginx (auth_request) with X-Original-URL and
X-Original-Method. Whoever reaches authgate directly could forge these, so they
are only read from peers inside `server.trusted_proxies`; a duplicated or
malformed value raises InvalidForwardedHeaders with a reason for the 400 and
the log.

Parsing is pure, and proxies repeat the same values thousands of times a second,
so results are memoised (gateway.authz.memo, bounded): a whole OriginalRequest by the
exact header values it was built from, the client address by (peer,
X-Forwarded-For, X-Real-IP), and the trust verdict by peer. Only successes are
remembered, and only for an immutable `trusted` (a tuple): a memo belongs to one
tuple of trusted networks and is found by its identity, so a different
configuration never sees another's verdicts. A repeated header is never
memoised (it always takes the full parse, which rejects it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.authz.memo import BoundedMemo
from gateway.authz.paths import canonical_path
from gateway.config import Network
from gateway.errors import InvalidForwardedHeaders
from gateway.models import IPAddress, OriginalRequest

Headers = CIMultiDictProxy[str] | CIMultiDict[str]

DEFAULT_PORTS = {"http": 80, "https": 443}
_UNKNOWN_CLIENT = IPv4Address(0)  # 0.0.0.0: the peer address is unknown (unix socket)

# RFC 9110 token.
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 3986 reg-name restricted to unreserved characters: percent-encoding and
# sub-delims (",", ";" ...) are never in a real host and would let one header
# name two hosts.
_REG_NAME = re.compile(r"[a-z0-9\-._~]+")
_PORT = re.compile(r"[0-9]{1,5}")
_ABSOLUTE_URL = re.compile(r"(https?)://([^/?#]*)(.*)", re.IGNORECASE | re.DOTALL)
# Characters a request target never contains unencoded: controls, space, DEL, "#".
_BAD_TARGET_CHAR = re.compile(r"[\x00-\x20\x7f#]")

# Memo bounds. Values come from clients (the URL, X-Forwarded-For), so both the
# number of entries and the size of a memoised key are capped: at most about
# 4096 x 2 KiB of keys plus their results per memo, a few MiB per worker.
REQUEST_MEMO_SIZE = 4096
CLIENT_MEMO_SIZE = 4096
PEER_MEMO_SIZE = 256
MEMO_MAX_KEY_CHARS = 2048
# A process normally has one trusted-proxy tuple; tests build many configurations.
_MAX_TRUST_SETS = 8

_DUPLICATE = object()  # a header sent more than once: never memoised, the full parse rejects it


class _Memos:
    """The memos for one tuple of trusted networks."""

    __slots__ = ("trusted", "requests", "clients", "peers")

    def __init__(self, trusted: tuple[Network, ...]) -> None:
        self.trusted = trusted  # held so its id() cannot be reused by another tuple while we live
        self.requests: BoundedMemo[tuple[object, ...], OriginalRequest] = BoundedMemo(REQUEST_MEMO_SIZE)
        self.clients: BoundedMemo[tuple[object, ...], IPAddress] = BoundedMemo(CLIENT_MEMO_SIZE)
        self.peers: BoundedMemo[str, bool] = BoundedMemo(PEER_MEMO_SIZE)


_memos_by_trusted: dict[int, _Memos] = {}


def _memos_for(trusted: Sequence[Network]) -> _Memos | None:
    """Return the memos of an immutable trusted-network tuple; None for anything mutable."""
    if type(trusted) is not tuple:
        return None
    memos = _memos_by_trusted.get(id(trusted))
    if memos is not None and memos.trusted is trusted:
        return memos
    if len(_memos_by_trusted) >= _MAX_TRUST_SETS:
        _memos_by_trusted.clear()
    memos = _memos_by_trusted[id(trusted)] = _Memos(trusted)
    return memos


def _peek(headers: Headers, name: str) -> object:
    """Return a header's only value, None when absent, _DUPLICATE when repeated (never raises)."""
    values = headers.getall(name, ())
    if not values:
        return None
    return values[0] if len(values) == 1 else _DUPLICATE


def _memo_key(*parts: object) -> tuple[object, ...] | None:
    """Return parts as a memo key, or None when one is repeated or they are too long to keep."""
    size = 0
    for part in parts:
        if part is _DUPLICATE:
            return None
        if part is not None:
            size += len(part)  # type: ignore[arg-type]
    return parts if size <= MEMO_MAX_KEY_CHARS else None


def parse_forward_auth(headers: Headers, peer: str | None, trusted: Sequence[Network]) -> OriginalRequest:
    """Rebuild the original request from Traefik/Caddy X-Forwarded-* headers."""
    memos = _memos_for(trusted)
    if memos is None:
        return _parse_forward_auth(headers, peer, trusted, None)
    # Every header the full parse may read (X-Real-IP only without X-Forwarded-For, as there).
    xff = _peek(headers, "X-Forwarded-For")
    key = _memo_key(
        "forward-auth",
        peer,
        _peek(headers, "X-Forwarded-Method"),
        _peek(headers, "X-Forwarded-Proto"),
        _peek(headers, "X-Forwarded-Host"),
        _peek(headers, "X-Forwarded-Port"),
        _peek(headers, "X-Forwarded-Uri"),
        xff,
        _peek(headers, "X-Real-IP") if xff is None else None,
    )
    return _memoised(memos, key, _parse_forward_auth, headers, peer, trusted)


# The default of a header that is absent: shared, so never mutated (only read below).
_NO_VALUES: list[str] = []


def parse_auth_request(headers: Headers, peer: str | None, trusted: Sequence[Network]) -> OriginalRequest:
    """Rebuild the original request from nginx X-Original-URL/Method (or X-Forwarded-* as fallback)."""
    # Every request nginx sends comes through here: the memo hit is written out inline
    # (no helper calls), which halves its cost. Same rules as _peek and _memo_key.
    memos = _memos_by_trusted.get(id(trusted))
    if memos is None or memos.trusted is not trusted:
        memos = _memos_for(trusted)
        if memos is None:
            return _parse_auth_request(headers, peer, trusted, None)
    getall = headers.getall
    urls = getall("X-Original-URL", None)
    if urls is None:
        # The X-Forwarded-* fallback reads other headers: rare, never memoised.
        return _parse_auth_request(headers, peer, trusted, memos)
    methods = getall("X-Original-Method", None)
    if methods is None:
        methods = getall("X-Forwarded-Method", _NO_VALUES)
    xffs = getall("X-Forwarded-For", _NO_VALUES)
    real_ips = getall("X-Real-IP", _NO_VALUES) if not xffs else _NO_VALUES
    if len(urls) > 1 or len(methods) > 1 or len(xffs) > 1 or len(real_ips) > 1:
        return _parse_auth_request(headers, peer, trusted, memos)  # repeated: rejected there
    url = urls[0]
    method = methods[0] if methods else None
    xff = xffs[0] if xffs else None
    real_ip = real_ips[0] if real_ips else None
    size = len(url) + len(method or "") + len(xff or "") + len(real_ip or "") + len(peer or "")
    if size > MEMO_MAX_KEY_CHARS:
        return _parse_auth_request(headers, peer, trusted, memos)
    key = ("auth-request", peer, method, url, xff, real_ip)
    found = memos.requests.get(key)
    if found is None:
        found = _parse_auth_request(headers, peer, trusted, memos)
        memos.requests.put(key, found)
    return found


def _memoised(
    memos: _Memos,
    key: tuple[object, ...] | None,
    parse: Callable[[Headers, str | None, Sequence[Network], _Memos | None], OriginalRequest],
    headers: Headers,
    peer: str | None,
    trusted: Sequence[Network],
) -> OriginalRequest:
    # The key holds every input the parse reads, so a hit is the parse's own answer.
    if key is None:
        return parse(headers, peer, trusted, memos)
    found = memos.requests.get(key)
    if found is None:
        found = parse(headers, peer, trusted, memos)
        memos.requests.put(key, found)
    return found


def _parse_forward_auth(
    headers: Headers, peer: str | None, trusted: Sequence[Network], memos: _Memos | None
) -> OriginalRequest:
    _require_trusted_peer(headers, peer, trusted, memos)
    method = _parse_method(_single(headers, "X-Forwarded-Method"), "X-Forwarded-Method")
    return _from_forwarded_headers(headers, peer, trusted, method, memos)


def _parse_auth_request(
    headers: Headers, peer: str | None, trusted: Sequence[Network], memos: _Memos | None
) -> OriginalRequest:
    _require_trusted_peer(headers, peer, trusted, memos)
    method_header = "X-Original-Method"
    raw_method = _single(headers, method_header)
    if raw_method is None:
        method_header = "X-Forwarded-Method"
        raw_method = _single(headers, method_header)
    method = _parse_method(raw_method, method_header)
    url = _single(headers, "X-Original-URL")
    if url is None:
        if _single(headers, "X-Forwarded-Proto") is None and _single(headers, "X-Forwarded-Host") is None:
            raise InvalidForwardedHeaders(
                "missing X-Original-URL (and no X-Forwarded-Proto/Host to fall back on)"
            )
        return _from_forwarded_headers(headers, peer, trusted, method, memos)
    match = _ABSOLUTE_URL.fullmatch(url)
    if match is None:
        raise InvalidForwardedHeaders(f"malformed X-Original-URL {url!r}: not an absolute http(s) URL")
    scheme = match.group(1).lower()
    authority, target = match.group(2), match.group(3)
    if "@" in authority:
        raise InvalidForwardedHeaders(f"malformed X-Original-URL {url!r}: userinfo is not allowed")
    host, port = _parse_host_port(authority, "X-Original-URL")
    if target.startswith("?") or not target:
        target = "/" + target
    source = "X-Original-URL"
    return _original_request(method, scheme, host, port, target, source, headers, peer, trusted, memos)


def client_address(headers: Headers, peer: str | None, trusted: Sequence[Network]) -> IPAddress:
    """Return the client's address for portal requests; never raises."""
    peer_ip = _parse_ip(peer) if peer else None
    if peer_ip is None:
        return _UNKNOWN_CLIENT
    if not _in_networks(peer_ip, trusted):
        return peer_ip
    try:
        return _client_ip(headers, peer, trusted)
    except InvalidForwardedHeaders:
        # A bad header must not lock a user out of the portal; the peer is still true.
        return peer_ip


def _from_forwarded_headers(
    headers: Headers, peer: str | None, trusted: Sequence[Network], method: str, memos: _Memos | None
) -> OriginalRequest:
    scheme = _parse_scheme(_single(headers, "X-Forwarded-Proto"))
    raw_host = _single(headers, "X-Forwarded-Host")
    if raw_host is None:
        raise InvalidForwardedHeaders("missing X-Forwarded-Host")
    host, port = _parse_host_port(raw_host, "X-Forwarded-Host")
    if port is None:
        raw_port = _single(headers, "X-Forwarded-Port")
        if raw_port is not None:
            port = _parse_port(raw_port, "X-Forwarded-Port")
    raw_uri = _single(headers, "X-Forwarded-Uri")
    target = "/" if raw_uri is None else raw_uri
    source = "X-Forwarded-Uri"
    return _original_request(method, scheme, host, port, target, source, headers, peer, trusted, memos)


def _original_request(
    method: str,
    scheme: str,
    host: str,
    port: int | None,
    target: str,
    source: str,
    headers: Headers,
    peer: str | None,
    trusted: Sequence[Network],
    memos: _Memos | None,
) -> OriginalRequest:
    # Both proxy dialects end here: one place builds the request the rules judge.
    raw_path, path, query, ambiguity = _parse_target(target, source)
    return OriginalRequest(
        method=method,
        scheme=scheme,
        host=host,
        port=None if port == DEFAULT_PORTS[scheme] else port,
        path=path,
        query=query,
        client_ip=_client_ip(headers, peer, trusted, memos),
        raw_path=raw_path,
        ambiguity=ambiguity,
    )


def _require_trusted_peer(
    headers: Headers, peer: str | None, trusted: Sequence[Network], memos: _Memos | None
) -> None:
    if memos is not None and peer and memos.peers.get(peer):
        return
    peer_ip = _parse_ip(peer) if peer else None
    if peer_ip is not None and _in_networks(peer_ip, trusted):
        if memos is not None and peer and len(peer) <= MEMO_MAX_KEY_CHARS:
            memos.peers.put(peer, True)
        return
    first = next(
        (name for name in headers if name.lower().startswith(("x-forwarded-", "x-original-"))),
        "missing",
    )
    raise InvalidForwardedHeaders(
        f"peer {peer or 'unknown'} is not a trusted proxy (server.trusted_proxies); "
        f"first forwarding header: {first}"
    )


def _single(headers: Headers, name: str) -> str | None:
    """Return the only value of a header, None if absent; raise if it is repeated."""
    values = headers.getall(name, [])
    if len(values) > 1:
        raise InvalidForwardedHeaders(f"duplicated {name}")
    return values[0] if values else None


def _parse_method(raw: str | None, name: str) -> str:
    if raw is None:
        return "GET"
    if not _METHOD.fullmatch(raw):
        raise InvalidForwardedHeaders(f"malformed {name} {raw!r}: not an HTTP method token")
    return raw.upper()


def _parse_scheme(raw: str | None) -> str:
    if raw is None:
        raise InvalidForwardedHeaders("missing X-Forwarded-Proto")
    scheme = raw.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidForwardedHeaders(f"malformed X-Forwarded-Proto {raw!r}: expected http or https")
    return scheme


def _parse_host_port(raw: str, name: str) -> tuple[str, int | None]:
    """Split `host[:port]` (host may be a bracketed IPv6 literal) into a normalised host and port."""
    if raw.startswith("["):
        literal, bracket, rest = raw[1:].partition("]")
        if not bracket:
            raise InvalidForwardedHeaders(f"malformed {name} {raw!r}: unclosed IPv6 literal")
        host = f"[{_parse_ipv6_literal(literal, raw, name)}]"
    else:
        raw_host, colon, raw_port = raw.partition(":")
        host = _parse_reg_name(raw_host, raw, name)
        rest = colon + raw_port
    if not rest:
        return host, None
    if not rest.startswith(":"):
        raise InvalidForwardedHeaders(f"malformed {name} {raw!r}: unexpected text after the host")
    return host, _parse_port(rest[1:], name)


def _parse_ipv6_literal(literal: str, raw: str, name: str) -> str:
    # Zone identifiers ("%eth0") mean nothing to a browser-facing URL.
    if "%" in literal:
        raise InvalidForwardedHeaders(f"malformed {name} {raw!r}: zone identifiers are not allowed")
    try:
        return IPv6Address(literal).compressed
    except ValueError:
        raise InvalidForwardedHeaders(f"malformed {name} {raw!r}: invalid IPv6 address") from None


def _parse_reg_name(host: str, raw: str, name: str) -> str:
    host = host.lower()
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidForwardedHeaders(
                f"malformed {name} {raw!r}: invalid internationalised host"
            ) from None
    # "app.example.com." is the same site as "app.example.com"; rules must see one name.
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253:
        raise InvalidForwardedHeaders(f"malformed {name} {raw!r}: empty or overlong host")
    if not _REG_NAME.fullmatch(host) or "" in host.split("."):
        raise InvalidForwardedHeaders(f"malformed {name} {raw!r}: invalid characters in host")
    return host


def _parse_port(raw: str, name: str) -> int:
    if not _PORT.fullmatch(raw) or not 1 <= int(raw) <= 65535:
        raise InvalidForwardedHeaders(f"malformed {name} {raw!r}: invalid port")
    return int(raw)


def _parse_target(target: str, name: str) -> tuple[str, str, str, str | None]:
    """Split a request target into (raw path, canonical path, raw query, what makes the path ambiguous)."""
    if not target.startswith("/"):
        raise InvalidForwardedHeaders(f"malformed {name} {target!r}: must start with '/'")
    if _BAD_TARGET_CHAR.search(target) or not target.isprintable():
        raise InvalidForwardedHeaders(f"malformed {name} {target!r}: whitespace, control character or '#'")
    raw_path, _, query = target.partition("?")
    path, ambiguity = canonical_path(raw_path, name)
    return raw_path, path, query, ambiguity


def _client_ip(
    headers: Headers, peer: str | None, trusted: Sequence[Network], memos: _Memos | None = None
) -> IPAddress:
    """Return the right-most untrusted X-Forwarded-For address, else X-Real-IP, else the peer."""
    forwarded_for = _single(headers, "X-Forwarded-For")
    real_ip = _single(headers, "X-Real-IP") if forwarded_for is None else None
    key = None if memos is None else _memo_key(peer, forwarded_for, real_ip)
    if memos is None or key is None:
        return _find_client_ip(forwarded_for, real_ip, peer, trusted)
    found = memos.clients.get(key)
    if found is None:
        found = _find_client_ip(forwarded_for, real_ip, peer, trusted)
        memos.clients.put(key, found)
    return found


def _find_client_ip(
    forwarded_for: str | None, real_ip: str | None, peer: str | None, trusted: Sequence[Network]
) -> IPAddress:
    if forwarded_for is not None:
        chain = [_parse_header_ip(entry.strip(), "X-Forwarded-For") for entry in forwarded_for.split(",")]
        for address in reversed(chain):
            if not _in_networks(address, trusted):
                return address
        return chain[0]
    if real_ip is not None:
        return _parse_header_ip(real_ip.strip(), "X-Real-IP")
    peer_ip = _parse_ip(peer) if peer else None
    return _UNKNOWN_CLIENT if peer_ip is None else peer_ip


def _parse_header_ip(raw: str, name: str) -> IPAddress:
    address = _parse_ip(raw)
    if address is None:
        raise InvalidForwardedHeaders(f"malformed {name}: {raw!r} is not an IP address")
    return address


def _parse_ip(raw: str) -> IPAddress | None:
    """Parse an address, dropping an IPv6 zone and unwrapping IPv4-mapped IPv6 (dual-stack sockets)."""
    try:
        address = ip_address(raw)
    except ValueError:
        return None
    if not isinstance(address, IPv6Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return IPv6Address(int(address)) if address.scope_id else address


def _in_networks(address: IPAddress, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)
