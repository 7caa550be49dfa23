#!/usr/bin/env bash
# Make sure the tools the end-to-end tests drive are installed: nginx, Chromium, oathtool, wrk,
# systemd-analyze (the unit's system call filter is checked against its own groups), node/npm
# for axe-core (the accessibility checker injected into Chromium, pinned in deploy/test-tools),
# and buildah, mmdebstrap, podman and runc (tests/e2e/test_container.py bootstraps a Debian base,
# builds deploy/Containerfile on it and runs the image; podman needs runc, crun fails on hybrid cgroups),
# and the PostgreSQL server (tests/pg.py runs initdb and its own throwaway cluster as user nobody).
# As root (CI) they are installed with apt; otherwise we print the command to run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v oathtool >/dev/null 2>&1 || need+=(oathtool)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
# PostgreSQL server binaries for tests/pg.py (the contract suite, db copy, two-instance tests)
[ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
missing=0
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing test tools: ${need[*]} (install with: sudo apt-get install ${need[*]})" >&2
    missing=1
  fi
fi
# axe-core from the npm registry, exactly the version and checksum in package-lock.json.
if [ ! -f "$here/test-tools/node_modules/axe-core/axe.min.js" ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "installing axe-core with npm ci (deploy/test-tools)"
    npm ci --prefix "$here/test-tools" --no-audit --no-fund --loglevel=error >/dev/null
  else
    missing=1
  fi
fi
[ "$missing" = 0 ] && exit 0
if [ "${CI:-}" = "true" ]; then
  exit 1
fi
echo "end-to-end tests that need them will be skipped" >&2
