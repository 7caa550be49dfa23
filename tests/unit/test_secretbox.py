"""SecretBox: AES-256-GCM sealing of TOTP secrets, and where its keys come from."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from gateway.errors import StorageError
from gateway.factors.secretbox import (
    PURPOSE_RECOVERY,
    PURPOSE_TOTP,
    InvalidSealedSecret,
    SecretBox,
    derive_key,
    load_storage_key,
)

KEY = bytes(range(32))
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(KEY)


def flip_last_byte(token: str) -> str:
    version, body = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[-1] ^= 0x01
    return f"{version}.{base64.urlsafe_b64encode(bytes(raw)).decode().rstrip('=')}"


def test_round_trip(box: SecretBox) -> None:
    """A sealed value opens to the same text with the same key and context."""
    token = box.seal(SECRET, context="totp:1")
    assert box.open(token, context="totp:1") == SECRET


def test_sealed_value_hides_the_plaintext(box: SecretBox) -> None:
    """The sealed form is versioned ASCII and does not contain the secret."""
    token = box.seal(SECRET, context="totp:1")
    assert token.startswith("v1.")
    assert token.isascii()
    assert SECRET not in token


def test_each_seal_uses_a_fresh_nonce(box: SecretBox) -> None:
    """Sealing the same text twice gives different values that both open."""
    first, second = box.seal(SECRET, context="c"), box.seal(SECRET, context="c")
    assert first != second
    assert box.open(first, context="c") == box.open(second, context="c") == SECRET


def test_non_ascii_round_trip(box: SecretBox) -> None:
    """Any Unicode text survives sealing."""
    assert box.open(box.seal("pässwörd ✓", context="x"), context="x") == "pässwörd ✓"


def test_tampered_value_is_refused(box: SecretBox) -> None:
    """Changing one bit of the ciphertext makes open fail."""
    token = flip_last_byte(box.seal(SECRET, context="totp:1"))
    with pytest.raises(InvalidSealedSecret, match="altered"):
        box.open(token, context="totp:1")


def test_wrong_context_is_refused(box: SecretBox) -> None:
    """A value sealed for user 1 does not open as user 2's."""
    token = box.seal(SECRET, context="totp:1")
    with pytest.raises(InvalidSealedSecret):
        box.open(token, context="totp:2")


def test_wrong_key_is_refused(box: SecretBox) -> None:
    """A value sealed under one key does not open under another."""
    token = box.seal(SECRET, context="totp:1")
    with pytest.raises(InvalidSealedSecret):
        SecretBox(bytes(32)).open(token, context="totp:1")


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "no version prefix"),
        ("JBSWY3DP", "no version prefix"),
        ("v2.AAAA", "unknown sealed-value version"),
        ("v1.***", "base64url"),
        ("v1.é", "base64url"),
        ("v1.AAAA", "too short"),
    ],
)
def test_malformed_values_are_refused(box: SecretBox, token: str, reason: str) -> None:
    """Malformed input raises InvalidSealedSecret with a precise reason."""
    with pytest.raises(InvalidSealedSecret, match=reason) as caught:
        box.open(token, context="c")
    assert isinstance(caught.value, StorageError)


@pytest.mark.parametrize("length", [0, 16, 31, 33])
def test_key_must_be_32_bytes(length: int) -> None:
    """Only AES-256 keys are accepted."""
    with pytest.raises(ValueError):
        SecretBox(bytes(length))


def test_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    """Without a configured key, one is generated into data_dir/secrets/storage_key and reused."""
    first = load_storage_key(data_dir=str(tmp_path))
    path = tmp_path / "secrets" / "storage_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 32
    assert load_storage_key(data_dir=str(tmp_path)) == first


def test_configured_key_wins_over_the_file(tmp_path: Path) -> None:
    """secrets.storage_key is used when set, and no key file is created."""
    configured = "k" * 40
    key = load_storage_key(data_dir=str(tmp_path), configured=configured)
    assert key == load_storage_key(data_dir=str(tmp_path / "other"), configured=configured)
    assert not (tmp_path / "secrets" / "storage_key").exists()
    assert key != load_storage_key(data_dir=str(tmp_path), configured="j" * 40)


def test_secrets_survive_a_restart(tmp_path: Path) -> None:
    """A box built again from the same data folder opens what the first sealed."""
    token = SecretBox(derive_key(load_storage_key(data_dir=str(tmp_path)), purpose=PURPOSE_TOTP)).seal(
        SECRET, context="totp:1"
    )
    again = SecretBox(derive_key(load_storage_key(data_dir=str(tmp_path)), purpose=PURPOSE_TOTP))
    assert again.open(token, context="totp:1") == SECRET


def test_subkeys_differ_by_purpose() -> None:
    """The TOTP key and the recovery pepper are different keys from one root."""
    totp_key = derive_key(KEY, purpose=PURPOSE_TOTP)
    pepper = derive_key(KEY, purpose=PURPOSE_RECOVERY)
    assert len(totp_key) == len(pepper) == 32
    assert len({totp_key, pepper, KEY}) == 3
    assert derive_key(KEY, purpose=PURPOSE_TOTP) == totp_key
