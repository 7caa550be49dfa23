"""Secrets generated in the data folder: complete or absent, never empty, never overwritten."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from gateway.secret_files import load_or_create_secret_lines, write_private_file


def test_workers_starting_together_all_read_the_one_key(tmp_path: Path) -> None:
    """Twenty threads creating the same secret at once all get the same complete key."""
    results: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(20)

    def create() -> None:
        start.wait()
        try:
            results.append(load_or_create_secret_lines(str(tmp_path), "storage_key"))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert len(results) == 20 and all(result == results[0] for result in results)
    assert len(results[0]) == 1 and len(results[0][0]) >= 64
    path = tmp_path / "secrets" / "storage_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["storage_key"]  # no temporary left


def test_an_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    """Without replace, a file already in place is kept and the writer is told."""
    path = tmp_path / "secrets" / "key"
    write_private_file(path, "first\n")
    with pytest.raises(FileExistsError):
        write_private_file(path, "second\n")
    assert path.read_text() == "first\n"
    write_private_file(path, "rotated\n", replace=True)
    assert path.read_text() == "rotated\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["key"]


def test_an_empty_key_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """A key emptied by hand (not by authgate) is an error naming the file and the fix."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "session_keys").write_text("\n")
    with pytest.raises(ValueError, match="session_keys is empty; delete it"):
        load_or_create_secret_lines(str(tmp_path), "session_keys")
