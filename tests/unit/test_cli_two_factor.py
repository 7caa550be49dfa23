"""`authgate users 2fa show|reset`: names and counts only, and a reset that asks for --yes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gateway.__main__ import main
from gateway.accounts.two_factor import TwoFactorService
from gateway.config import load_config
from gateway.factors.passwords import PasswordHasher
from gateway.factors.secretbox import PURPOSE_RECOVERY, PURPOSE_TOTP, SecretBox, derive_key, load_storage_key
from gateway.store.sqlite import Store

Run = Callable[..., Awaitable[tuple[int, str, str]]]


@dataclass(frozen=True)
class Enrolled:
    secret: str
    codes: list[str]


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.startswith("AUTHGATE_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "authgate.yml"
    config = {
        "storage": {"data_dir": str(tmp_path / "data")},
        "password": {"time_cost": 1, "memory_cost": 64, "parallelism": 1},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def run(config_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """Return a runner: await run("users", "2fa", "show", "bob") -> (exit code, stdout, stderr)."""

    async def runner(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(""))
        # The CLI runs its own event loop, so it gets a thread of its own.
        code = await asyncio.to_thread(main, ["--config", str(config_file), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return runner


@pytest.fixture
async def bob(config_file: Path) -> Enrolled:
    """Create bob with a TOTP device and recovery codes, sealed with the data folder's key."""
    config = load_config(str(config_file), {})
    store = await Store.open(config.storage.database_path)
    try:
        password_hash = PasswordHasher(config.password).hash("correct horse battery")
        user = await store.create_user("bob", "bob@example.com", "Bob", [], password_hash)
        root = load_storage_key(data_dir=config.storage.data_dir, configured=config.secrets.storage_key)
        two_factor = TwoFactorService(
            store,
            SecretBox(derive_key(root, purpose=PURPOSE_TOTP)),
            config.two_factor,
            recovery_pepper=derive_key(root, purpose=PURPOSE_RECOVERY),
            clock=time.time,
        )
        secret = two_factor.new_enrolment(account="bob").secret
        await two_factor.add_totp(user.id, "pixel-7 authy", secret, 0)
        codes = await two_factor.new_recovery_codes(user.id)
    finally:
        await store.close()
    return Enrolled(secret, codes)


async def test_2fa_show_lists_devices_without_secrets(run: Run, bob: Enrolled) -> None:
    """`users 2fa show` prints the device's name and settings and the code count, never a secret or code."""
    code, out, _ = await run("users", "2fa", "show", "bob")

    assert code == 0
    report = json.loads(out)
    assert report["username"] == "bob"
    assert report["recovery_codes_left"] == 10
    (device,) = report["totp_devices"]
    assert device["name"] == "pixel-7 authy"
    assert (device["algorithm"], device["digits"], device["period"]) == ("SHA1", 6, 30)
    assert bob.secret not in out
    assert bob.secret.lower() not in out.lower()
    for recovery_code in bob.codes:
        assert recovery_code not in out
        assert recovery_code.replace("-", "") not in out


async def test_2fa_reset_without_yes_refuses(run: Run, bob: Enrolled) -> None:
    """`users 2fa reset` without --yes exits 2 and removes nothing."""
    code, _, err = await run("users", "2fa", "reset", "bob")

    assert code == 2
    assert "--yes" in err
    _, out, _ = await run("users", "2fa", "show", "bob")
    report = json.loads(out)
    assert len(report["totp_devices"]) == 1
    assert report["recovery_codes_left"] == 10


async def test_2fa_reset_with_yes_removes_every_factor(run: Run, bob: Enrolled) -> None:
    """`users 2fa reset --yes` removes the devices and recovery codes."""
    code, out, _ = await run("users", "2fa", "reset", "bob", "--yes")

    assert code == 0
    assert "removed every second factor of bob" in out
    _, shown, _ = await run("users", "2fa", "show", "bob")
    report = json.loads(shown)
    assert report["totp_devices"] == []
    assert report["recovery_codes_left"] == 0


async def test_2fa_show_unknown_user_is_an_error(run: Run) -> None:
    """`users 2fa show` for a user who does not exist exits 2 and names them."""
    code, _, err = await run("users", "2fa", "show", "nobody")

    assert code == 2
    assert "nobody" in err
