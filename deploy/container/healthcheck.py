"""The container's HEALTHCHECK: exit 0 when authgate's /api/health answers 200, 1 otherwise.

It reads the same configuration as the server (AUTHGATE_CONFIG and the AUTHGATE_* environment),
so a port changed in either place is followed, and asks over loopback when authgate listens on
every interface.
"""

from __future__ import annotations

import os
import sys
import urllib.request

from gateway.config import CONFIG_PATH_VARIABLE, load_config
from gateway.errors import ConfigError

TIMEOUT = 4.0  # seconds; below the HEALTHCHECK --timeout so a hang is reported, not killed
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def main() -> int:
    try:
        config = load_config(os.environ.get(CONFIG_PATH_VARIABLE), os.environ)
    except ConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    host = _ANY.get(config.server.host, config.server.host)
    if ":" in host:
        host = f"[{host}]"
    url = f"http://{host}:{config.server.port}/api/health"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:  # noqa: S310 - a fixed http URL
            status = answer.status
    except OSError as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"healthcheck: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
