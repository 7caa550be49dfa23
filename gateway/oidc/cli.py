"""`authgate oidc ...`: hash a client secret, rotate the signing keys, list the clients."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

from gateway.accounts import audit
from gateway.config import Config
from gateway.factors.passwords import PasswordHasher
from gateway.oidc.keys import key_path, rotate_keys
from gateway.store.contract import Storage
from gateway.store.engine import open_store

MIN_SECRET_LENGTH = 32  # characters; a generated secret has 43


def cmd_hash_secret(args: argparse.Namespace, config: Config) -> int:
    """Print a new random client secret and its hash (or hash one read from standard input)."""
    if args.secret_stdin:
        secret = sys.stdin.readline().rstrip("\n")
        if len(secret) < MIN_SECRET_LENGTH:
            print(f"authgate: a client secret needs at least {MIN_SECRET_LENGTH} characters", file=sys.stderr)
            return 2
    else:
        secret = secrets.token_urlsafe(32)
    digest = PasswordHasher(config.password).hash(secret)
    if not args.secret_stdin:
        # The secret goes to the app's configuration; only the hash goes into authgate's.
        print(f"client secret (give this to the app): {secret}")
        print(f"client_secret (put this in authgate's config): {digest}")
    else:
        print(digest)
    return 0


def cmd_rotate_keys(args: argparse.Namespace, config: Config) -> int:
    """Add new signing keys; the old ones stay published for oidc_provider.key_retention."""
    now = time.time()
    retention = config.oidc_provider.key_retention
    new, dropped = rotate_keys(config.storage.data_dir, now=now, retention=retention)
    kids = ", ".join(f"{k.alg} {k.kid}" for k in new)
    print(f"new signing keys: {kids}")
    print(f"the previous keys stay published for {retention:g}s; dropped {len(dropped)} expired key(s)")
    print(f"({key_path(config.storage.data_dir)}; running workers pick the change up by themselves)")

    async def record(store: Storage) -> None:
        await audit.AuditLog(store).record(
            audit.OIDC_KEYS_ROTATED, actor=audit.CLI_ACTOR, detail=f"new keys {kids}; dropped {len(dropped)}"
        )

    asyncio.run(_with_store(config, record))
    return 0


def cmd_clients(args: argparse.Namespace, config: Config) -> int:
    """List the configured clients (never their secrets)."""
    for client in config.oidc_provider.clients:
        kind = "public" if client.public else client.token_endpoint_auth_method
        print(
            f"{client.client_id}\t{client.name}\t{kind}\t{client.authorization_policy.name.lower()}\t"
            f"{' '.join(client.scopes)}\t{' '.join(client.redirect_uris)}"
        )
    return 0


def cmd_revoke(args: argparse.Namespace, config: Config) -> int:
    """End a user's grants (all, or one client's): their access and refresh tokens stop at once."""

    async def revoke(store: Storage) -> int:
        user = await store.get_user_by_name(args.username.lower())
        if user is None:
            print(f"authgate: no user {args.username!r}", file=sys.stderr)
            return 2
        count = await store.revoke_oidc_grants(
            user.id, args.client, now=time.time(), reason="revoked by the cli"
        )
        what = f"client {args.client}" if args.client else "every client"
        await audit.AuditLog(store).record(
            audit.OIDC_GRANT_REVOKED,
            actor=audit.CLI_ACTOR,
            target=user.username,
            detail=f"{count} grant(s), {what}",
        )
        print(f"revoked {count} grant(s) of {user.username} ({what})")
        return 0

    result: list[int] = []

    async def run(store: Storage) -> None:
        result.append(await revoke(store))

    asyncio.run(_with_store(config, run))
    return result[0]


async def _with_store(config: Config, action: Callable[[Storage], Any]) -> None:
    store = await open_store(config.storage)
    try:
        await action(store)
    finally:
        await store.close()


def add_parser(commands: Any, load: Callable[[argparse.Namespace], Config]) -> None:
    """Add `oidc` and its subcommands to the CLI's subparsers."""
    oidc = commands.add_parser("oidc", help="the OpenID Provider: client secrets, signing keys, clients")
    sub = oidc.add_subparsers(dest="oidc_command", required=True)
    hash_secret = sub.add_parser("hash-secret", help="make a client secret and the hash for the config")
    hash_secret.add_argument(
        "--secret-stdin", action="store_true", help="hash the secret read from standard input instead"
    )
    actions = {
        "hash-secret": cmd_hash_secret,
        "rotate-keys": cmd_rotate_keys,
        "clients": cmd_clients,
        "revoke": cmd_revoke,
    }
    sub.add_parser("rotate-keys", help="new signing keys now; old ones published until their tokens expire")
    sub.add_parser("clients", help="list the configured clients")
    revoke = sub.add_parser("revoke", help="end a user's grants and their tokens (all clients or one)")
    revoke.add_argument("username")
    revoke.add_argument("--client", help="only this client id")

    def run(args: argparse.Namespace) -> int:
        return actions[args.oidc_command](args, load(args))

    oidc.set_defaults(func=run)
