"""`authgate oidc ...` run in-process: hash-secret, rotate-keys, clients."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest
import yaml

from gateway.__main__ import main
from gateway.config import load_config
from gateway.factors.passwords import PasswordHasher
from gateway.oidc.keys import key_path, load_or_create_keys
from gateway.store.sqlite import Store


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.startswith("AUTHGATE_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "authgate.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "storage": {"data_dir": str(tmp_path / "data")},
                "password": {"time_cost": 1, "memory_cost": 64, "parallelism": 1},
            }
        )
    )
    return path


def run(
    config_file: Path, capsys: pytest.CaptureFixture[str], *args: str, stdin: str = ""
) -> tuple[int, str]:
    old = os.sys.stdin  # type: ignore[attr-defined]
    os.sys.stdin = io.StringIO(stdin)  # type: ignore[attr-defined]
    try:
        code = main(["--config", str(config_file), *args])
    finally:
        os.sys.stdin = old  # type: ignore[attr-defined]
    out, err = capsys.readouterr()
    return code, out + err


def test_hash_secret_prints_a_secret_and_a_hash_that_verifies(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The generated secret verifies against the printed hash with the configured argon2."""
    code, out = run(config_file, capsys, "oidc", "hash-secret")
    assert code == 0
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    secret = lines["client secret (give this to the app)"]
    digest = lines["client_secret (put this in authgate's config)"]
    hasher = PasswordHasher(load_config(str(config_file), {}).password)
    assert len(secret) >= 32 and hasher.verify(digest, secret)
    assert not hasher.verify(digest, secret + "x")


def test_hash_secret_from_stdin_refuses_short_secrets(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A secret typed in must be long enough to resist guessing."""
    code, out = run(config_file, capsys, "oidc", "hash-secret", "--secret-stdin", stdin="short\n")
    assert code == 2 and "at least 32" in out
    code, out = run(config_file, capsys, "oidc", "hash-secret", "--secret-stdin", stdin="y" * 40 + "\n")
    assert code == 0 and out.startswith("$argon2id$")


def test_rotate_keys_adds_keys_and_writes_an_audit_row(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rotate-keys leaves two live keys and two retired ones, and the audit log says so."""
    data_dir = str(config_file.parent / "data")
    before = {k.kid for k in load_or_create_keys(data_dir, now=0.0)}
    code, out = run(config_file, capsys, "oidc", "rotate-keys")
    assert code == 0 and "new signing keys" in out
    keys = load_or_create_keys(data_dir, now=0.0)
    live = {k.kid for k in keys if k.retired_at is None}
    assert len(live) == 2 and not live & before
    assert {k.kid for k in keys if k.retired_at is not None} == before
    assert key_path(data_dir).stat().st_mode & 0o077 == 0

    async def events() -> list[str]:
        store = await Store.open(f"{data_dir}/authgate.sqlite3")
        try:
            return [e.event for e in await store.list_audit()]
        finally:
            await store.close()

    assert "oidc_keys_rotated" in asyncio.run(events())


def test_revoke_ends_a_users_grants(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`oidc revoke USER --client ID` revokes that client's live grants and writes an audit row."""
    from gateway.models import OidcCode, OidcGrant

    data_dir = str(config_file.parent / "data")

    async def setup() -> None:
        store = await Store.open(f"{data_dir}/authgate.sqlite3")
        try:
            user = await store.create_user("alice", "a@example.com", "Alice", (), None)
            for grant_id, client in (("g1", "grafana"), ("g2", "gitea")):
                grant = OidcGrant(
                    grant_id, client, user.id, ("openid",), "s", 0.0, ("pwd",), "one_factor", "", 0.0, 1e12
                )
                await store.create_oidc_grant(
                    grant, OidcCode(f"c-{grant_id}", grant_id, "https://a/cb", "", 1e12)
                )
        finally:
            await store.close()

    asyncio.run(setup())
    code, out = run(config_file, capsys, "oidc", "revoke", "alice", "--client", "grafana")
    assert code == 0 and "revoked 1 grant(s) of alice (client grafana)" in out
    code, out = run(config_file, capsys, "oidc", "revoke", "alice")
    assert code == 0 and "revoked 1 grant(s)" in out
    code, out = run(config_file, capsys, "oidc", "revoke", "nobody")
    assert code == 2 and "no user" in out
