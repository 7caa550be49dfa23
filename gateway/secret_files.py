"""Secrets generated on first start and kept in the data folder (mode 0600)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def _write_private(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # O_EXCL: two workers starting together must not overwrite each other's key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)


def load_or_create_secret_lines(data_dir: str, name: str) -> list[str]:
    """Return the secret's lines from data_dir/secrets/NAME, creating one random key first."""
    path = Path(data_dir) / "secrets" / name
    if not path.exists():
        try:
            _write_private(path, secrets.token_urlsafe(48) + "\n")
        except FileExistsError:
            pass
    os.chmod(path, 0o600)
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty; delete it to have a new key generated")
    return lines
