"""The provider's signing keys: generated on first start into the data folder, rotated by the CLI.

One file, data_dir/secrets/oidc_keys.json (mode 0600), holds every key as a private JWK
(joserfc) with when it was created and, once rotated out, retired. The newest live RSA key
signs RS256, the newest live EC P-256 key signs ES256; retired keys stay in the published
JWKS for `key_retention` seconds, so tokens they signed keep verifying until they expire.
Workers re-read the file when it changes, so a rotation needs no restart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, KeySet, RSAKey

from gateway.secret_files import write_private_file

KEYS_FILE = "oidc_keys.json"
RSA_BITS = 2048
_KINDS: dict[str, tuple[str, Callable[[], RSAKey | ECKey]]] = {
    "RS256": (
        "RSA",
        lambda: RSAKey.generate_key(RSA_BITS, parameters={"use": "sig", "alg": "RS256"}, private=True),
    ),
    "ES256": (
        "EC",
        lambda: ECKey.generate_key("P-256", parameters={"use": "sig", "alg": "ES256"}, private=True),
    ),
}
ALGORITHMS = tuple(_KINDS)


class KeyFileError(Exception):
    """The key file cannot be read or does not hold usable keys."""


@dataclass(frozen=True, slots=True)
class StoredKey:
    jwk: dict[str, Any]  # private JWK with kid, alg and use
    created_at: float
    retired_at: float | None

    @property
    def kid(self) -> str:
        return str(self.jwk["kid"])

    @property
    def alg(self) -> str:
        return str(self.jwk["alg"])


def generate_key(alg: str, now: float) -> StoredKey:
    """Return a new private signing key for `alg` (RS256 or ES256), its kid the RFC 7638 thumbprint."""
    key = _KINDS[alg][1]()
    key.ensure_kid()
    return StoredKey(jwk=key.as_dict(private=True), created_at=now, retired_at=None)


def _dump(keys: list[StoredKey]) -> str:
    items = [{"jwk": k.jwk, "created_at": k.created_at, "retired_at": k.retired_at} for k in keys]
    return json.dumps({"keys": items}, indent=1) + "\n"


def _parse(text: str, path: Path) -> list[StoredKey]:
    try:
        data = json.loads(text)
        keys = [
            StoredKey(
                jwk=dict(item["jwk"]), created_at=float(item["created_at"]), retired_at=item["retired_at"]
            )
            for item in data["keys"]
        ]
        for key in keys:
            if key.alg not in _KINDS or not key.jwk.get("kid"):
                raise ValueError(f"key without kid or with an unknown alg {key.jwk.get('alg')!r}")
            KeySet.import_key_set({"keys": [key.jwk]})
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(
            f"{path} does not hold OIDC signing keys ({exc}); restore it from a backup"
        ) from exc
    return keys


def key_path(data_dir: str) -> Path:
    return Path(data_dir) / "secrets" / KEYS_FILE


def load_or_create_keys(data_dir: str, *, now: float) -> list[StoredKey]:
    """Read the key file, creating it with one RS256 and one ES256 key on first start."""
    path = key_path(data_dir)
    if not path.exists():
        try:
            write_private_file(path, _dump([generate_key(alg, now) for alg in ALGORITHMS]))
        except FileExistsError:
            pass
    return read_keys(path)


def read_keys(path: Path) -> list[StoredKey]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from exc
    return _parse(text, path)


def rotate_keys(data_dir: str, *, now: float, retention: float) -> tuple[list[StoredKey], list[StoredKey]]:
    """Retire the live keys, add a new one per algorithm, drop keys retired over `retention` ago.

    Returns (new keys, dropped keys). The new keys sign from the next token on; the retired
    ones stay published until `retention` has passed.
    """
    keys = load_or_create_keys(data_dir, now=now)
    kept, dropped = [], []
    for key in keys:
        if key.retired_at is None:
            kept.append(StoredKey(jwk=key.jwk, created_at=key.created_at, retired_at=now))
        elif now - key.retired_at < retention:
            kept.append(key)
        else:
            dropped.append(key)
    new = [generate_key(alg, now) for alg in ALGORITHMS]
    write_private_file(key_path(data_dir), _dump(new + kept), replace=True)
    return new, dropped


class KeyRing:
    """The keys one process signs with and publishes, re-read when the file changes."""

    def __init__(self, data_dir: str, *, retention: float, clock: Callable[[], float]) -> None:
        self._path = key_path(data_dir)
        self._retention = retention
        self._clock = clock
        self._stamp: tuple[int, int] = (-1, -1)
        self._signing: dict[str, RSAKey | ECKey] = {}
        self._public: dict[str, Any] = {"keys": []}
        self._verify = KeySet([])
        load_or_create_keys(data_dir, now=clock())
        self._refresh()

    def _refresh(self) -> None:
        try:
            info = self._path.stat()
        except OSError:
            return  # keep the keys in memory; the file may be mid-replace
        stamp = (info.st_mtime_ns, info.st_ino)  # a rotation replaces the file: a new inode
        if stamp == self._stamp:
            return
        keys = read_keys(self._path)
        now = self._clock()
        published = [k for k in keys if k.retired_at is None or now - k.retired_at < self._retention]
        signing: dict[str, RSAKey | ECKey] = {}
        for key in sorted((k for k in keys if k.retired_at is None), key=lambda k: k.created_at):
            signing[key.alg] = KeySet.import_key_set({"keys": [key.jwk]}).keys[0]  # type: ignore[assignment]
        missing = set(ALGORITHMS) - set(signing)
        if missing:
            raise KeyFileError(f"{self._path} has no live key for {', '.join(sorted(missing))}")
        public = [KeySet.import_key_set({"keys": [k.jwk]}).keys[0].as_dict(private=False) for k in published]
        for item in public:
            item.setdefault("use", "sig")
        self._signing = signing
        self._public = {"keys": public}
        self._verify = KeySet.import_key_set({"keys": public})  # type: ignore[typeddict-item]
        self._stamp = stamp

    def signing_key(self, alg: str) -> RSAKey | ECKey:
        """Return the key that signs `alg` now."""
        self._refresh()
        return self._signing[alg]

    def jwks(self) -> dict[str, Any]:
        """Return the public JWK Set to publish (live and recently retired keys)."""
        self._refresh()
        return self._public

    def verification_keys(self) -> KeySet:
        """Return the public keys a token of ours may be signed with."""
        self._refresh()
        return self._verify
