"""Signing keys: generated once into the data folder, rotated with the old keys kept published."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from gateway.oidc.keys import KeyFileError, KeyRing, key_path, load_or_create_keys, rotate_keys


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_first_start_generates_one_rsa_and_one_ec_key(tmp_path: Path) -> None:
    """The key file is created with mode 0600, one RS256 and one ES256 key, kids set."""
    keys = load_or_create_keys(str(tmp_path), now=1.0)
    assert sorted(k.alg for k in keys) == ["ES256", "RS256"]
    assert all(k.kid and k.retired_at is None for k in keys)
    assert stat.S_IMODE(key_path(str(tmp_path)).stat().st_mode) == 0o600
    # a second start reads the same keys instead of making new ones
    assert [k.kid for k in load_or_create_keys(str(tmp_path), now=2.0)] == [k.kid for k in keys]


def test_the_jwks_holds_no_private_parts(tmp_path: Path) -> None:
    """Only public members are published."""
    ring = KeyRing(str(tmp_path), retention=60, clock=Clock())
    for item in ring.jwks()["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(item)
        assert item["use"] == "sig" and item["kid"]


def test_rotation_signs_with_the_new_key_and_keeps_the_old_published(tmp_path: Path) -> None:
    """After rotate-keys the running ring signs with the new key; tokens of the old still verify."""
    clock = Clock()
    ring = KeyRing(str(tmp_path), retention=3600, clock=clock)
    old = ring.signing_key("RS256")
    token = jwt.encode({"alg": "RS256", "kid": old.kid}, {"sub": "1"}, old)
    clock.now += 10
    rotate_keys(str(tmp_path), now=clock.now, retention=3600)
    new = ring.signing_key("RS256")
    assert new.kid != old.kid
    published = KeySet.import_key_set(ring.jwks())
    assert jwt.decode(token, published, algorithms=["RS256"]).claims == {"sub": "1"}
    assert {old.kid, new.kid} <= {k["kid"] for k in ring.jwks()["keys"]}


def test_retired_keys_are_dropped_after_the_retention(tmp_path: Path) -> None:
    """A key retired longer ago than the retention leaves the file at the next rotation."""
    first = {k.kid for k in load_or_create_keys(str(tmp_path), now=0.0)}
    rotate_keys(str(tmp_path), now=100.0, retention=50)
    _, dropped = rotate_keys(str(tmp_path), now=200.0, retention=50)
    assert {k.kid for k in dropped} == first
    kept = {k["jwk"]["kid"] for k in json.loads(key_path(str(tmp_path)).read_text())["keys"]}
    assert not first & kept and len(kept) == 4


def test_a_damaged_key_file_is_a_clear_error(tmp_path: Path) -> None:
    """A broken file is reported with its path, never silently replaced (tokens would stop verifying)."""
    path = key_path(str(tmp_path))
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(KeyFileError, match="oidc_keys.json"):
        KeyRing(str(tmp_path), retention=60, clock=Clock())
