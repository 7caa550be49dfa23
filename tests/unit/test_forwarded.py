"""Tests for gateway.authz.forwarded: proxy headers from trusted peers -> OriginalRequest."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address, ip_network

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.authz.forwarded import client_address, parse_auth_request, parse_forward_auth
from gateway.errors import InvalidForwardedHeaders
from gateway.models import OriginalRequest

TRUSTED = (ip_network("127.0.0.0/8"), ip_network("::1/128"), ip_network("10.0.0.0/8"))
PEER = "10.0.0.2"
CLIENT = ip_address("198.51.100.7")
UNSPECIFIED = str(IPv4Address(0))  # what client_address reports when the peer is unknown

TRAEFIK = {
    "X-Forwarded-Method": "GET",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "app.example.com",
    "X-Forwarded-Uri": "/dashboard?tab=1",
    "X-Forwarded-Port": "443",
    "X-Forwarded-For": "198.51.100.7",
    "X-Forwarded-Server": "traefik-1",
    "X-Real-Ip": "198.51.100.7",
}
CADDY = {
    "X-Forwarded-Method": "POST",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "app.example.com:8443",
    "X-Forwarded-Uri": "/api/items?id=3",
    "X-Forwarded-For": "198.51.100.7",
}
NGINX = {
    "X-Original-URL": "https://app.example.com/admin/users?page=2",
    "X-Original-Method": "DELETE",
    "X-Forwarded-For": "198.51.100.7",
    "X-Real-IP": "198.51.100.7",
}


def headers(base: dict[str, str], **changes: str | None) -> CIMultiDictProxy[str]:
    """Copy a header set, replacing (or with None removing) headers named with underscores."""
    merged = CIMultiDict(base)
    for key, value in changes.items():
        name = key.replace("_", "-")
        merged.popall(name, None)
        if value is not None:
            merged[name] = value
    return CIMultiDictProxy(merged)


def expected(**overrides: object) -> OriginalRequest:
    fields: dict[str, object] = {
        "method": "GET",
        "scheme": "https",
        "host": "app.example.com",
        "port": None,
        "path": "/dashboard",
        "query": "tab=1",
        "client_ip": CLIENT,
        "raw_path": "/dashboard",
    }
    fields.update(overrides)
    return OriginalRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("hdrs", "want"),
    [
        (headers(TRAEFIK), expected()),
        (
            headers(CADDY),
            expected(method="POST", port=8443, path="/api/items", raw_path="/api/items", query="id=3"),
        ),
        (headers(TRAEFIK, X_Forwarded_Method=None), expected()),
        (headers(TRAEFIK, X_Forwarded_Method="patch"), expected(method="PATCH")),
        (headers(TRAEFIK, X_Forwarded_Uri=None), expected(path="/", raw_path="/", query="")),
        (headers(TRAEFIK, X_Forwarded_Uri="/?"), expected(path="/", raw_path="/", query="")),
        (headers(TRAEFIK, X_Forwarded_Proto="HTTPS"), expected()),
        (headers(TRAEFIK, X_Forwarded_Host="App.Example.COM"), expected()),
        (headers(TRAEFIK, X_Forwarded_Host="app.example.com."), expected()),
        (headers(TRAEFIK, X_Forwarded_Host="app.example.com:443"), expected()),
        (headers(TRAEFIK, X_Forwarded_Port="8443"), expected(port=8443)),
        (headers(TRAEFIK, X_Forwarded_Host="app.example.com:9000"), expected(port=9000)),
        (headers(TRAEFIK, X_Forwarded_Proto="http", X_Forwarded_Port="80"), expected(scheme="http")),
        (
            headers(TRAEFIK, X_Forwarded_Proto="http", X_Forwarded_Port="443"),
            expected(scheme="http", port=443),
        ),
        (headers(TRAEFIK, X_Forwarded_Host="[2001:DB8::1]:8443"), expected(host="[2001:db8::1]", port=8443)),
        (headers(TRAEFIK, X_Forwarded_Host="[::1]"), expected(host="[::1]")),
        (headers(TRAEFIK, X_Forwarded_Host="192.0.2.1"), expected(host="192.0.2.1")),
        (headers(TRAEFIK, X_Forwarded_Host="b\u00fccher.example"), expected(host="xn--bcher-kva.example")),
    ],
)
def test_forward_auth_headers(hdrs: CIMultiDictProxy[str], want: OriginalRequest) -> None:
    """Traefik- and Caddy-style X-Forwarded-* headers rebuild the original request."""
    assert parse_forward_auth(hdrs, PEER, TRUSTED) == want


@pytest.mark.parametrize(
    ("hdrs", "want"),
    [
        (
            headers(NGINX),
            expected(method="DELETE", path="/admin/users", raw_path="/admin/users", query="page=2"),
        ),
        (
            headers(NGINX, X_Original_Method=None),
            expected(path="/admin/users", raw_path="/admin/users", query="page=2"),
        ),
        (
            headers(NGINX, X_Original_Method=None, X_Forwarded_Method="PUT"),
            expected(method="PUT", path="/admin/users", raw_path="/admin/users", query="page=2"),
        ),
        (
            headers(NGINX, X_Original_URL="HTTP://App.Example.com:80"),
            expected(method="DELETE", scheme="http", path="/", raw_path="/", query=""),
        ),
        (
            headers(NGINX, X_Original_URL="https://app.example.com?q=1"),
            expected(method="DELETE", path="/", raw_path="/", query="q=1"),
        ),
        (
            headers(NGINX, X_Original_URL="https://[2001:db8::5]:444/x"),
            expected(method="DELETE", host="[2001:db8::5]", port=444, path="/x", raw_path="/x", query=""),
        ),
        (
            headers(NGINX, X_Original_URL="https://app.example.com/%61dmin/../x/%2e%2e/admin?a=%2e"),
            expected(method="DELETE", path="/admin", raw_path="/%61dmin/../x/%2e%2e/admin", query="a=%2e"),
        ),
        (
            headers(TRAEFIK, X_Original_Method="HEAD"),
            expected(method="HEAD"),
        ),
    ],
)
def test_auth_request_headers(hdrs: CIMultiDictProxy[str], want: OriginalRequest) -> None:
    """nginx-style X-Original-URL/Method (or X-Forwarded-* as fallback) rebuild the original request."""
    assert parse_auth_request(hdrs, PEER, TRUSTED) == want


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("/%61dmin", "/admin"),
        ("/x/%2e%2e/admin", "/admin"),
        ("/x/%2E%2E/admin", "/admin"),
        ("/a/../admin", "/admin"),
        ("/../../admin", "/admin"),
        ("/a/./b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/a/..", "/"),
        ("//admin", "/admin"),
        ("/admin//", "/admin/"),
        ("/a%2f..%2fadmin", "/admin"),
        ("/caf%C3%A9", "/caf\u00e9"),
        ("/100%", "/100%"),
        ("/%zz", "/%zz"),
        ("/", "/"),
    ],
)
def test_paths_are_normalised_for_rules(uri: str, path: str) -> None:
    """The rule path is percent-decoded with dot-segments resolved; raw_path keeps what was sent."""
    request = parse_forward_auth(headers(TRAEFIK, X_Forwarded_Uri=uri), PEER, TRUSTED)
    assert (request.path, request.raw_path) == (path, uri)


@pytest.mark.parametrize(
    ("hdrs", "reason"),
    [
        (headers(TRAEFIK, X_Forwarded_Proto=None), "missing X-Forwarded-Proto"),
        (headers(TRAEFIK, X_Forwarded_Proto="ftp"), "malformed X-Forwarded-Proto"),
        (headers(TRAEFIK, X_Forwarded_Proto="https, http"), "malformed X-Forwarded-Proto"),
        (headers(TRAEFIK, X_Forwarded_Proto=""), "malformed X-Forwarded-Proto"),
        (headers(TRAEFIK, X_Forwarded_Host=None), "missing X-Forwarded-Host"),
        (headers(TRAEFIK, X_Forwarded_Host=""), "malformed X-Forwarded-Host"),
        (headers(TRAEFIK, X_Forwarded_Host="a.example.com, b.example.com"), "malformed X-Forwarded-Host"),
        (headers(TRAEFIK, X_Forwarded_Host="user@app.example.com"), "malformed X-Forwarded-Host"),
        (headers(TRAEFIK, X_Forwarded_Host="app.example.com/x"), "malformed X-Forwarded-Host"),
        (headers(TRAEFIK, X_Forwarded_Host="app%2eexample.com"), "malformed X-Forwarded-Host"),
        (headers(TRAEFIK, X_Forwarded_Host="app..example.com"), "malformed X-Forwarded-Host"),
        (headers(TRAEFIK, X_Forwarded_Host="app.example.com:0"), "malformed X-Forwarded-Host"),
        (headers(TRAEFIK, X_Forwarded_Host="app.example.com:65536"), "malformed X-Forwarded-Host"),
        (headers(TRAEFIK, X_Forwarded_Host="app.example.com:"), "malformed X-Forwarded-Host"),
        (headers(TRAEFIK, X_Forwarded_Host="app.example.com:1:2"), "malformed X-Forwarded-Host"),
        (headers(TRAEFIK, X_Forwarded_Host="[2001:db8::1"), "malformed X-Forwarded-Host"),
        (headers(TRAEFIK, X_Forwarded_Host="[nothex::1]"), "malformed X-Forwarded-Host"),
        (headers(TRAEFIK, X_Forwarded_Host="[fe80::1%eth0]"), "malformed X-Forwarded-Host"),
        (headers(TRAEFIK, X_Forwarded_Host="[::1]x"), "malformed X-Forwarded-Host"),
        (headers(TRAEFIK, X_Forwarded_Port="http"), "malformed X-Forwarded-Port"),
        (headers(TRAEFIK, X_Forwarded_Uri="dashboard"), "malformed X-Forwarded-Uri"),
        (headers(TRAEFIK, X_Forwarded_Uri="https://evil.example/"), "malformed X-Forwarded-Uri"),
        (headers(TRAEFIK, X_Forwarded_Uri="/a b"), "malformed X-Forwarded-Uri"),
        (headers(TRAEFIK, X_Forwarded_Uri="/a\tb"), "malformed X-Forwarded-Uri"),
        (headers(TRAEFIK, X_Forwarded_Uri="/a#frag"), "malformed X-Forwarded-Uri"),
        (headers(TRAEFIK, X_Forwarded_Uri="/a\x7f"), "malformed X-Forwarded-Uri"),
        (headers(TRAEFIK, X_Forwarded_Uri="/%00admin"), "malformed X-Forwarded-Uri"),
        (headers(TRAEFIK, X_Forwarded_Uri="/public%0a"), "malformed X-Forwarded-Uri"),
        (headers(TRAEFIK, X_Forwarded_Uri="/%ff"), "malformed X-Forwarded-Uri"),
        (headers(TRAEFIK, X_Forwarded_Method="GET /"), "malformed X-Forwarded-Method"),
        (headers(TRAEFIK, X_Forwarded_Method="G(E)T"), "malformed X-Forwarded-Method"),
        (headers(TRAEFIK, X_Forwarded_Method=""), "malformed X-Forwarded-Method"),
        (headers(TRAEFIK, X_Forwarded_For="not-an-ip"), "malformed X-Forwarded-For"),
        (headers(TRAEFIK, X_Forwarded_For="198.51.100.7, "), "malformed X-Forwarded-For"),
        (headers(TRAEFIK, X_Forwarded_For="198.51.100.7:5000"), "malformed X-Forwarded-For"),
        (headers(TRAEFIK, X_Forwarded_For="unknown, 10.0.0.1"), "malformed X-Forwarded-For"),
        (headers(TRAEFIK, X_Forwarded_For=None, X_Real_Ip="nope"), "malformed X-Real-IP"),
    ],
)
def test_malformed_forward_auth_headers(hdrs: CIMultiDictProxy[str], reason: str) -> None:
    """A missing or malformed header raises with a reason naming the header."""
    with pytest.raises(InvalidForwardedHeaders) as excinfo:
        parse_forward_auth(hdrs, PEER, TRUSTED)
    assert excinfo.value.reason.startswith(reason)


@pytest.mark.parametrize(
    ("hdrs", "reason"),
    [
        (headers(NGINX, X_Original_URL=None), "missing X-Original-URL"),
        (headers(NGINX, X_Original_URL="/admin"), "malformed X-Original-URL"),
        (headers(NGINX, X_Original_URL="//app.example.com/"), "malformed X-Original-URL"),
        (headers(NGINX, X_Original_URL="ftp://app.example.com/"), "malformed X-Original-URL"),
        (headers(NGINX, X_Original_URL="https://"), "malformed X-Original-URL"),
        (headers(NGINX, X_Original_URL="https://evil@app.example.com/"), "malformed X-Original-URL"),
        (headers(NGINX, X_Original_URL="https://app.example.com/a b"), "malformed X-Original-URL"),
        (headers(NGINX, X_Original_URL="https://app.example.com\\@evil/"), "malformed X-Original-URL"),
        (headers(NGINX, X_Original_URL="https://app.example.com/x#y"), "malformed X-Original-URL"),
        (headers(NGINX, X_Original_Method="GET\r\n"), "malformed X-Original-Method"),
        (headers(NGINX, X_Original_Method=None, X_Forwarded_Method="a b"), "malformed X-Forwarded-Method"),
        (
            headers(NGINX, X_Original_URL=None, X_Forwarded_Host="app.example.com"),
            "missing X-Forwarded-Proto",
        ),
    ],
)
def test_malformed_auth_request_headers(hdrs: CIMultiDictProxy[str], reason: str) -> None:
    """nginx headers that are missing or not an absolute http(s) URL raise with a reason."""
    with pytest.raises(InvalidForwardedHeaders) as excinfo:
        parse_auth_request(hdrs, PEER, TRUSTED)
    assert excinfo.value.reason.startswith(reason)


@pytest.mark.parametrize(
    "name",
    [
        "X-Forwarded-Method",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "x-forwarded-host",
        "X-Forwarded-Uri",
        "X-Forwarded-For",
        "X-Forwarded-Port",
    ],
)
def test_duplicated_forward_auth_header(name: str) -> None:
    """A header sent twice is refused rather than guessing which copy is true."""
    hdrs = CIMultiDict(headers(TRAEFIK, X_Forwarded_Host="app.example.com"))
    hdrs.add(name, hdrs.get(name, "1"))
    with pytest.raises(InvalidForwardedHeaders) as excinfo:
        parse_forward_auth(hdrs, PEER, TRUSTED)
    assert excinfo.value.reason.lower() == f"duplicated {name}".lower()


@pytest.mark.parametrize("name", ["X-Original-URL", "X-Original-Method", "X-Forwarded-For", "X-Real-IP"])
def test_duplicated_auth_request_header(name: str) -> None:
    """A duplicated nginx header is refused."""
    hdrs = CIMultiDict(NGINX)
    hdrs.add(name, hdrs[name])
    if name == "X-Real-IP":
        del hdrs["X-Forwarded-For"]
    with pytest.raises(InvalidForwardedHeaders) as excinfo:
        parse_auth_request(hdrs, PEER, TRUSTED)
    assert excinfo.value.reason == f"duplicated {name}"


@pytest.mark.parametrize(
    ("peer", "hdrs", "message"),
    [
        ("203.0.113.9", headers(TRAEFIK), "peer 203.0.113.9 is not a trusted proxy"),
        ("203.0.113.9", headers(TRAEFIK), "first forwarding header: X-Forwarded-Method"),
        ("203.0.113.9", headers({"Accept": "*/*", "X-Original-URL": "https://a.test/"}), "X-Original-URL"),
        ("203.0.113.9", headers({}), "first forwarding header: missing"),
        ("2001:db8::9", headers(CADDY), "peer 2001:db8::9 is not a trusted proxy"),
        ("unix", headers(TRAEFIK), "peer unix is not a trusted proxy"),
        (None, headers(TRAEFIK), "peer unknown is not a trusted proxy"),
        ("", headers({}), "peer unknown is not a trusted proxy"),
        ("11.0.0.1", headers(TRAEFIK), "11.0.0.1"),
    ],
)
def test_untrusted_peer_is_refused(peer: str | None, hdrs: CIMultiDictProxy[str], message: str) -> None:
    """Both parsers refuse peers outside the trusted networks, naming the peer and first header."""
    for parse in (parse_forward_auth, parse_auth_request):
        with pytest.raises(InvalidForwardedHeaders) as excinfo:
            parse(hdrs, peer, TRUSTED)
        assert message in excinfo.value.reason


@pytest.mark.parametrize(
    ("peer", "changes", "client"),
    [
        (PEER, {}, "198.51.100.7"),
        ("::1", {}, "198.51.100.7"),
        ("::ffff:10.0.0.2", {}, "198.51.100.7"),
        ("127.0.0.1", {"X_Forwarded_For": "203.0.113.1, 198.51.100.7, 10.0.0.5"}, "198.51.100.7"),
        ("127.0.0.1", {"X_Forwarded_For": "198.51.100.7,10.1.1.1,127.0.0.1"}, "198.51.100.7"),
        ("127.0.0.1", {"X_Forwarded_For": "10.9.9.9, 10.1.1.1"}, "10.9.9.9"),
        ("127.0.0.1", {"X_Forwarded_For": "2001:db8::7"}, "2001:db8::7"),
        ("127.0.0.1", {"X_Forwarded_For": "::ffff:198.51.100.7"}, "198.51.100.7"),
        ("127.0.0.1", {"X_Forwarded_For": None, "X_Real_Ip": "192.0.2.44"}, "192.0.2.44"),
        ("127.0.0.1", {"X_Forwarded_For": None, "X_Real_Ip": None}, "127.0.0.1"),
        ("::1", {"X_Forwarded_For": None, "X_Real_Ip": None}, "::1"),
    ],
)
def test_client_ip_walks_forwarded_for_from_the_right(
    peer: str, changes: dict[str, str | None], client: str
) -> None:
    """The client is the right-most untrusted X-Forwarded-For entry, then X-Real-IP, then the peer."""
    request = parse_forward_auth(headers(TRAEFIK, **changes), peer, TRUSTED)
    assert request.client_ip == ip_address(client)


@pytest.mark.parametrize(
    ("peer", "hdrs", "client"),
    [
        (PEER, headers(TRAEFIK), "198.51.100.7"),
        (PEER, headers({"X-Forwarded-For": "garbage"}), PEER),
        (PEER, headers({"X-Real-IP": "192.0.2.44"}), "192.0.2.44"),
        (PEER, headers({}), PEER),
        ("203.0.113.9", headers(TRAEFIK), "203.0.113.9"),
        ("2001:db8::9", headers(TRAEFIK), "2001:db8::9"),
        ("fe80::1%eth0", headers({}), "fe80::1"),
        ("unix", headers(TRAEFIK), UNSPECIFIED),
        (None, headers(TRAEFIK), UNSPECIFIED),
    ],
)
def test_client_address_never_raises(peer: str | None, hdrs: CIMultiDictProxy[str], client: str) -> None:
    """Portal requests get the forwarded client from trusted peers, else the peer, else 0.0.0.0."""
    assert client_address(hdrs, peer, TRUSTED) == ip_address(client)


def test_url_rebuilds_the_raw_target() -> None:
    """OriginalRequest.url keeps the encoded path and non-default port as the proxy sent them."""
    hdrs = headers(CADDY, X_Forwarded_Uri="/%61dmin/x?y=%20")
    assert parse_forward_auth(hdrs, PEER, TRUSTED).url == "https://app.example.com:8443/%61dmin/x?y=%20"


@pytest.mark.parametrize(
    ("uri", "path", "what"),
    [
        ("/admin;x", "/admin;x", "';' parameter"),
        ("/public/%5c..%5cadmin", "/public/\\..\\admin", "backslash"),
        ("/admin%2f?q=1", "/admin/", "encoded slash"),
        ("/admin", "/admin", None),
    ],
)
def test_the_request_carries_why_its_path_is_ambiguous(uri: str, path: str, what: str | None) -> None:
    """Both parsers record the ambiguity on the (memoised) OriginalRequest, for nginx and Traefik/Caddy."""
    forward = parse_forward_auth(headers(TRAEFIK, X_Forwarded_Uri=uri), PEER, TRUSTED)
    nginx = parse_auth_request(headers(NGINX, X_Original_URL=f"https://app.example.com{uri}"), PEER, TRUSTED)
    again = parse_auth_request(headers(NGINX, X_Original_URL=f"https://app.example.com{uri}"), PEER, TRUSTED)

    for request in (forward, nginx):
        assert request.path == path
        assert (request.ambiguity is None) == (what is None)
        assert what is None or what in (request.ambiguity or "")
    assert again is nginx  # a memo hit: the canonical path and its verdict are not computed again
