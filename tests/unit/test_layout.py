"""The layout's import boundaries: aiohttp only in the HTTP layer, database drivers only in the store."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTTP_LAYER = {
    "gateway/app.py",
    "gateway/server.py",
    "gateway/services.py",
    "gateway/metrics_http.py",
    "gateway/authz/endpoints.py",
    "gateway/authz/tokens.py",
    "gateway/authz/prepared.py",
    "gateway/external_login/client.py",  # the HTTP client adapter to identity providers
    "gateway/oidc/endpoints.py",
}
DRIVERS = {"aiosqlite", "sqlite3", "asyncpg", "psycopg", "psycopg_pool"}
PURE_PACKAGES = ("gateway/factors/",)
LDAP_CLIENTS = {"bonsai", "ldap3", "ldap"}
LDAP_ADAPTER = "gateway/directory/client.py"
PURE_MODULES = {
    "gateway/authz/forwarded.py",
    "gateway/authz/paths.py",
    "gateway/authz/rules.py",
    "gateway/authz/decision.py",
    "gateway/authz/redirects.py",
    "gateway/authz/domains.py",
    "gateway/authz/wire.py",
    "gateway/authz/memo.py",
    "gateway/sessions/codec.py",
    "gateway/external_login/flow.py",
    "gateway/external_login/identity.py",
    "gateway/external_login/tokens.py",
    "gateway/directory/filters.py",
    "gateway/directory/presets.py",
    "gateway/directory/entries.py",
    "gateway/oidc/clients.py",
    "gateway/oidc/protocol.py",
}


def gateway_modules() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "gateway").rglob("*.py"))


def imported_roots(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text(), filename=path)
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", gateway_modules())
def test_aiohttp_only_in_the_http_layer(path: str) -> None:
    """Only the HTTP layer imports aiohttp; the rest of gateway/ is testable without a server."""
    if path in HTTP_LAYER:
        return
    assert "aiohttp" not in imported_roots(path), f"{path} imports aiohttp outside the HTTP layer"


@pytest.mark.parametrize("path", gateway_modules())
def test_database_drivers_only_in_the_store(path: str) -> None:
    """Only gateway/store/ talks to a database driver."""
    if path.startswith("gateway/store/"):
        return
    assert not imported_roots(path) & DRIVERS, f"{path} imports a database driver outside gateway/store/"


@pytest.mark.parametrize("path", gateway_modules())
def test_ldap_client_only_in_the_directory_adapter(path: str) -> None:
    """Only gateway/directory/client.py imports the LDAP library (an optional extra)."""
    if path == LDAP_ADAPTER:
        return
    assert not imported_roots(path) & LDAP_CLIENTS, f"{path} imports an LDAP client outside {LDAP_ADAPTER}"


def test_the_ldap_adapter_is_imported_only_when_configured() -> None:
    """gateway/app.py imports the adapter inside a function, so bonsai is needed only with a directory."""
    tree = ast.parse((ROOT / "gateway/app.py").read_text())
    top_level = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert "gateway.directory.client" not in top_level


@pytest.mark.parametrize(
    "path", [p for p in gateway_modules() if p in PURE_MODULES or p.startswith(PURE_PACKAGES)]
)
def test_pure_modules_do_no_io(path: str) -> None:
    """The pure core imports neither aiohttp nor the store."""
    roots = imported_roots(path)
    tree = ast.parse((ROOT / path).read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "aiohttp" not in roots
    assert not any(m.startswith("gateway.store") for m in modules), f"{path} imports the store"


ENGINE_MODULES = ("gateway.store.sqlite", "gateway.store.postgres")


@pytest.mark.parametrize(
    "path", [*gateway_modules(), *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "portal").rglob("*.py"))]
)
def test_callers_type_against_the_storage_contract(path: str) -> None:
    """Outside gateway/store/, code uses gateway.store.contract.Storage, never an engine's class."""
    if path.startswith("gateway/store/"):
        return
    tree = ast.parse((ROOT / path).read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    modules |= {alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names}
    assert not modules & set(ENGINE_MODULES), f"{path} imports an engine module directly"


PORTAL_PURE_MODULES = ("portal/i18n.py", "portal/events.py", "portal/fields.py", "portal/flow.py")


@pytest.mark.parametrize("path", PORTAL_PURE_MODULES)
def test_portal_pure_modules_do_no_io(path: str) -> None:
    """The portal's pure modules (language choice, labels, field wording, login flow) need no server."""
    roots = imported_roots(path)
    tree = ast.parse((ROOT / path).read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "aiohttp" not in roots, f"{path} imports aiohttp"
    assert not any(m.startswith(("gateway.store", "portal.web")) for m in modules), f"{path} does I/O"
