"""Secrets generated on first start and kept in the data folder (mode 0600)."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path


def write_private_file(path: Path, content: str, *, replace: bool = False) -> None:
    """Write a mode-0600 file that appears complete or not at all.

    The content goes to a private temporary file first (flushed and synced), then into place:
    a worker starting at the same moment never reads it half-written or empty, and a crash
    mid-write leaves no empty key behind. replace=False links it (FileExistsError when another
    worker won; its key is never overwritten); replace=True renames it over the old file.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def load_or_create_secret_lines(data_dir: str, name: str) -> list[str]:
    """Return the secret's lines from data_dir/secrets/NAME, creating one random key first."""
    path = Path(data_dir) / "secrets" / name
    if not path.exists():
        try:
            write_private_file(path, secrets.token_urlsafe(48) + "\n")
        except FileExistsError:
            pass
    os.chmod(path, 0o600)
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty; delete it to have a new key generated")
    return lines
