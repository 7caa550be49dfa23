"""The `authgate` command line: serve, config check, users."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway.accounts import (
    parse_groups,
    validate_display_name,
    validate_email,
    validate_groups,
    validate_username,
)
from gateway.config import Config, load_config
from gateway.errors import AuthgateError, ConfigError, Conflict, NotFound
from gateway.factors.passwords import PasswordHasher, validate_new_password
from gateway.models import User
from gateway.store.sqlite import Store


class CliError(Exception):
    """A problem to report on stderr with exit code 2."""


def _config_path(args: argparse.Namespace) -> str | None:
    return args.config or os.environ.get("AUTHGATE_CONFIG")


def _load(args: argparse.Namespace) -> Config:
    return load_config(_config_path(args), os.environ)


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import serve

    config = _load(args)
    serve(config, workers=args.workers)
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    load_config(args.file, os.environ)
    print(f"{args.file}: configuration is valid")
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if getattr(args, "password_stdin", False):
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise CliError("the two passwords differ")
    problem = validate_new_password(password)
    if problem:
        raise CliError(problem)
    return password


def _iso(value: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def _user_dict(user: User) -> dict[str, Any]:
    return {
        "username": user.username,
        "email": user.email,
        "display_name": user.display_name,
        "groups": list(user.groups),
        "disabled": user.disabled,
    }


async def _with_store(config: Config, action: Callable[[Store], Awaitable[int]]) -> int:
    store = await Store.open(config.storage.database_path)
    try:
        return await action(store)
    finally:
        await store.close()


async def _require_user(store: Store, username: str) -> User:
    user = await store.get_user_by_name(username.lower())
    if user is None:
        raise CliError(f"no user named {username!r}")
    return user


def cmd_users(args: argparse.Namespace) -> int:
    config = _load(args)

    async def add(store: Store) -> int:
        username = args.username.lower()
        groups = parse_groups(args.groups or "")
        problems = [
            validate_username(username),
            validate_email(args.email),
            validate_display_name(args.name or username),
            validate_groups(groups),
        ]
        errors = [p for p in problems if p]
        if errors:
            raise CliError("; ".join(errors))
        password = _read_password(args)
        password_hash = await asyncio.to_thread(PasswordHasher(config.password).hash, password)
        user = await store.create_user(username, args.email, args.name or username, groups, password_hash)
        print(f"created user {user.username}")
        return 0

    async def list_(store: Store) -> int:
        users = await store.list_users()
        if args.json:
            print(json.dumps([_user_dict(u) for u in users], indent=2))
            return 0
        for u in users:
            state = "disabled" if u.disabled else "active"
            print(f"{u.username:20} {u.email:30} {state:8} {','.join(u.groups)}")
        return 0

    async def show(store: Store) -> int:
        user = await _require_user(store, args.username)
        print(json.dumps(_user_dict(user), indent=2))
        return 0

    async def passwd(store: Store) -> int:
        user = await _require_user(store, args.username)
        password = _read_password(args)
        password_hash = await asyncio.to_thread(PasswordHasher(config.password).hash, password)
        await store.set_password_hash(user.id, password_hash)
        ended = await store.delete_user_sessions(user.id)
        print(f"password changed for {user.username}; {ended} session(s) ended")
        return 0

    async def set_disabled(store: Store, disabled: bool) -> int:
        user = await _require_user(store, args.username)
        await store.set_disabled(user.id, disabled)
        print(f"{'disabled' if disabled else 'enabled'} {user.username}")
        return 0

    async def modify(store: Store) -> int:
        user = await _require_user(store, args.username)
        groups = parse_groups(args.groups) if args.groups is not None else None
        problems = [
            validate_email(args.email) if args.email is not None else None,
            validate_display_name(args.name) if args.name is not None else None,
            validate_groups(groups) if groups is not None else None,
        ]
        errors = [p for p in problems if p]
        if errors:
            raise CliError("; ".join(errors))
        await store.update_user(user.id, email=args.email, display_name=args.name, groups=groups)
        print(f"updated {user.username}")
        return 0

    async def delete(store: Store) -> int:
        user = await _require_user(store, args.username)
        if not args.yes:
            raise CliError(f"deleting {user.username} is permanent; repeat with --yes")
        await store.delete_user(user.id)
        print(f"deleted {user.username}")
        return 0

    async def two_factor(store: Store) -> int:
        user = await _require_user(store, args.username)
        if args.twofa_command == "reset":
            if not args.yes:
                raise CliError(
                    f"removing every second factor of {user.username} is permanent; repeat with --yes"
                )
            await store.reset_second_factors(user.id)
            await store.add_security_event(user.id, "second_factors_reset", "by the CLI", "cli", time.time())
            print(f"removed every second factor of {user.username}; they can enrol again at their next login")
            return 0
        devices = await store.list_totp_devices(user.id)
        # Names and dates only: an administrator never sees a secret.
        report = {
            "username": user.username,
            "mode": config.two_factor.mode,
            "totp_devices": [
                {
                    "name": d.name,
                    "algorithm": d.algorithm,
                    "digits": d.digits,
                    "period": d.period,
                    "created_at": _iso(d.created_at),
                    "last_used_at": _iso(d.last_used_at) if d.last_used_at else None,
                }
                for d in devices
            ],
            "recovery_codes_left": await store.count_unused_recovery_codes(user.id),
        }
        print(json.dumps(report, indent=2))
        return 0

    actions: dict[str, Callable[[Store], Awaitable[int]]] = {
        "add": add,
        "list": list_,
        "show": show,
        "passwd": passwd,
        "disable": lambda s: set_disabled(s, True),
        "enable": lambda s: set_disabled(s, False),
        "modify": modify,
        "delete": delete,
        "2fa": two_factor,
    }
    return asyncio.run(_with_store(config, actions[args.users_command]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authgate", description="Forward-auth gateway with a login portal.")
    parser.add_argument("-c", "--config", help="YAML configuration file (default: $AUTHGATE_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--workers", type=int, default=None, help="worker processes (0 = one per core)")
    serve.set_defaults(func=cmd_serve)

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate a configuration file")
    check.add_argument("file")
    check.set_defaults(func=cmd_config_check)

    users = commands.add_parser("users", help="manage users")
    users.set_defaults(func=cmd_users)
    user_commands = users.add_subparsers(dest="users_command", required=True)
    add = user_commands.add_parser("add", help="create a user (asks for the password)")
    add.add_argument("username")
    add.add_argument("--email", required=True)
    add.add_argument("--name", help="display name (default: the username)")
    add.add_argument("--groups", default="", help="comma-separated groups")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    listing = user_commands.add_parser("list", help="list users")
    listing.add_argument("--json", action="store_true")
    for name, text in (
        ("show", "show a user"),
        ("disable", "disable a user and end their sessions"),
        ("enable", "enable a user"),
    ):
        user_commands.add_parser(name, help=text).add_argument("username")
    passwd = user_commands.add_parser("passwd", help="set a user's password (ends their sessions)")
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true")
    modify = user_commands.add_parser("modify", help="change e-mail, display name or groups")
    modify.add_argument("username")
    modify.add_argument("--email")
    modify.add_argument("--name")
    modify.add_argument("--groups", help="comma-separated groups (replaces the current ones)")
    delete = user_commands.add_parser("delete", help="delete a user")
    delete.add_argument("username")
    delete.add_argument("--yes", action="store_true", help="confirm the deletion")
    twofa = user_commands.add_parser("2fa", help="show or reset a user's second factors")
    twofa_commands = twofa.add_subparsers(dest="twofa_command", required=True)
    twofa_commands.add_parser("show", help="list a user's second factors (never secrets)").add_argument(
        "username"
    )
    reset = twofa_commands.add_parser("reset", help="remove all of a user's second factors (lost phone)")
    reset.add_argument("username")
    reset.add_argument("--yes", action="store_true", help="confirm the reset")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"authgate: {exc}", file=sys.stderr)
        return 2
    except (CliError, Conflict, NotFound) as exc:
        print(f"authgate: {exc}", file=sys.stderr)
        return 2
    except AuthgateError as exc:
        print(f"authgate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
