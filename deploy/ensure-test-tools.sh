#!/usr/bin/env bash
# Make sure the tools the end-to-end tests drive are installed: nginx, Chromium, oathtool, wrk,
# systemd-analyze (the unit's system call filter is checked against its own groups), and buildah,
# mmdebstrap, podman and runc (tests/e2e/test_container.py bootstraps a Debian base, builds
# deploy/Containerfile on it and runs the image; podman needs runc, crun fails on hybrid cgroups).
# As root (CI) they are installed with apt; otherwise we print the command to run.
set -euo pipefail
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
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${need[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  exit 0
fi
echo "missing test tools: ${need[*]} (install with: sudo apt-get install ${need[*]})" >&2
if [ "${CI:-}" = "true" ]; then
  exit 1
fi
echo "end-to-end tests that need them will be skipped" >&2
