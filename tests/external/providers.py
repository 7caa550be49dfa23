"""Real provider processes for the external-login tests: oidc-provider-mock, and a small GitHub.

`oidc-provider-mock` (PyPI) is a real OpenID Provider built on authlib: discovery, JWKS, RS256
ID tokens, userinfo. It takes its issuer from the Host header, accepts any client, and its
authorization form POSTs `sub`. GitHub cannot be reached from here, so `fake_github.py` speaks
the parts of GitHub's OAuth2 and REST API that authgate uses, as a process of its own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import ROOT, Service, free_ports, http_ok

GITHUB_CLIENT_ID = "Iv1.authgate-tests"
GITHUB_CLIENT_SECRET = "github-test-secret"  # noqa: S105 - a test credential
OIDC_CLIENT_ID = "authgate"
OIDC_CLIENT_SECRET = "oidc-test-secret"  # noqa: S105 - a test credential


def _mock_available() -> None:
    # find_spec, not import: importing it here would raise authlib's deprecation warning as an error.
    if importlib.util.find_spec("oidc_provider_mock") is None:
        message = "oidc-provider-mock is not installed; `pip install oidc-provider-mock` (dev extra)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def oidc_provider(directory: Path, *, token_max_age: int | None = None) -> Iterator[str]:
    """Run oidc-provider-mock on a free port of 127.0.0.1; yield its issuer URL."""
    _mock_available()
    (port,) = free_ports(1)
    command = [sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port", str(port)]
    if token_max_age is not None:
        command += ["--token-max-age", str(token_max_age)]
    service = Service.start("oidc-provider-mock", command, directory / f"oidc-{port}.log")
    try:
        issuer = f"http://127.0.0.1:{port}"
        service.wait_until(lambda: http_ok(f"{issuer}/.well-known/openid-configuration"), "no discovery")
        yield issuer
    finally:
        service.stop()


@contextmanager
def github_provider(directory: Path) -> Iterator[str]:
    """Run tests/external/fake_github.py on a free port; yield its base URL (web and API alike)."""
    (port,) = free_ports(1)
    command = [sys.executable, str(ROOT / "tests/external/fake_github.py"), "--port", str(port)]
    command += ["--client-id", GITHUB_CLIENT_ID, "--client-secret", GITHUB_CLIENT_SECRET]
    service = Service.start("fake github", command, directory / f"github-{port}.log")
    try:
        base = f"http://127.0.0.1:{port}"
        service.wait_until(lambda: http_ok(f"{base}/_health"), "no health")
        yield base
    finally:
        service.stop()


def _put(url: str, body: Mapping[str, Any]) -> None:
    request = urllib.request.Request(  # noqa: S310 - a local test URL
        url, data=json.dumps(body).encode(), method="PUT", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - a local test URL
        assert response.status in (200, 204), response.status


def put_oidc_user(issuer: str, sub: str, claims: Mapping[str, Any]) -> None:
    """Create or replace a user of oidc-provider-mock (its claims go into ID token and userinfo)."""
    _put(f"{issuer}/users/{sub}", claims)


def put_github_user(
    base: str, login: str, *, user_id: int, emails: list[dict[str, Any]], orgs: list[str]
) -> None:
    """Create or replace a user of the fake GitHub."""
    _put(f"{base}/_users/{login}", {"id": user_id, "name": login.title(), "emails": emails, "orgs": orgs})


def oidc_provider_config(issuer: str, **extra: Any) -> dict[str, Any]:
    """An external_login provider entry for oidc-provider-mock."""
    return {
        "id": "mock",
        "label": "Mock IdP",
        "issuer": issuer,
        "client_id": OIDC_CLIENT_ID,
        "client_secret": OIDC_CLIENT_SECRET,
        "scopes": ["openid", "email", "profile"],
        "allow": {"email_domains": ["example.com"]},
        **extra,
    }


def github_provider_config(base: str, **extra: Any) -> dict[str, Any]:
    """An external_login provider entry for the fake GitHub."""
    return {
        "id": "github",
        "type": "github",
        "web_url": base,
        "api_url": f"{base}/api",
        "client_id": GITHUB_CLIENT_ID,
        "client_secret": GITHUB_CLIENT_SECRET,
        "allow": {"organizations": ["acme"]},
        **extra,
    }
