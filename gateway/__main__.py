"""The `authgate` command line: serve, config check, users (with tokens and sessions), audit export,
db copy."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import getpass
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from gateway.accounts import audit, useragent
from gateway.accounts.validation import (
    parse_groups,
    validate_display_name,
    validate_email,
    validate_groups,
    validate_username,
)
from gateway.config import Config, config_warnings, load_config
from gateway.errors import AuthgateError, ConfigError, Conflict, NotFound
from gateway.factors.passwords import PasswordHasher, validate_new_password
from gateway.logs import configure_logging, logger
from gateway.models import AppPassword, SessionRecord, User
from gateway.store.contract import Storage
from gateway.store.engine import open_store


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
    config = load_config(args.file, os.environ)
    for path, message in config_warnings(config):
        print(f"warning: {path}: {message}", file=sys.stderr)
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
        "source": user.source,
    }


async def _with_store(config: Config, action: Callable[[Storage], Awaitable[int]]) -> int:
    store = await open_store(config.storage)
    try:
        return await action(store)
    finally:
        await store.close()


async def _record(store: Storage, event: str, target: str | None, detail: str = "") -> None:
    """Write the audit row of a CLI admin action (actor "cli", no client address)."""
    await audit.AuditLog(store).record(event, actor=audit.CLI_ACTOR, target=target, ip=None, detail=detail)


SESSION_ID_SHOWN = 16  # hex characters of a session's id hash shown by `users sessions list`
MIN_SESSION_ID = 8  # fewest characters accepted by `users sessions revoke`


def _session_dict(record: SessionRecord) -> dict[str, Any]:
    # The id hash is a digest of the cookie's secret, so a prefix of it names a session safely.
    return {
        "id": record.id_hash[:SESSION_ID_SHOWN],
        "device": useragent.describe(record.user_agent),
        "ip": record.ip,
        "level": record.level.name.lower(),
        "created_at": _iso(record.created_at),
        "last_active": _iso(record.last_active),
        "expires_at": _iso(record.expires_at),
        "remember_me": record.remember_me,
    }


def _token_dict(token: AppPassword, now: float) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "domains": list(token.domains),
        "level": token.level.name.lower(),
        "created_at": _iso(token.created_at),
        "expires_at": _iso(token.expires_at) if token.expires_at is not None else None,
        "expired": token.expires_at is not None and token.expires_at <= now,
        "last_used_at": _iso(token.last_used_at) if token.last_used_at is not None else None,
        "last_used_ip": token.last_used_ip,
    }


def _pick_token(tokens: Sequence[AppPassword], name_or_id: str) -> AppPassword:
    """Find a token by id (digits) or else by name in any case; CliError when none matches."""
    if name_or_id.isdigit():
        for token in tokens:
            if token.id == int(name_or_id):
                return token
    for token in tokens:
        if token.name.lower() == name_or_id.lower():
            return token
    raise CliError(f"no live app password with id or name {name_or_id!r}")


def _parse_since(text: str) -> float:
    """Read an ISO 8601 date or date-time (UTC unless it says otherwise) as a timestamp."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError as exc:
        raise CliError(
            f"--since {text!r} is not an ISO 8601 date like 2025-01-31 or 2025-01-31T12:00Z"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


@contextlib.contextmanager
def _logging(config: Config) -> Iterator[None]:
    """Send audit log lines to stderr as configured while a command runs, then restore the logger."""
    saved = (list(logger.handlers), logger.level, logger.propagate)
    configure_logging(config.log.level, config.log.format)
    try:
        yield
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])  # setLevel, not assignment: it clears the logger's level cache
        logger.propagate = saved[2]


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None or path == "-":
        yield sys.stdout
        return
    # The audit trail names people and addresses: the file is private from its first byte.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from exc
    with open(fd, "w", encoding="utf-8") as stream:
        yield stream


async def _require_user(store: Storage, username: str) -> User:
    user = await store.get_user_by_name(username.lower())
    if user is None:
        raise CliError(f"no user named {username!r}")
    return user


async def _require_local_user(store: Storage, username: str, what: str) -> User:
    """The user, unless it comes from the directory, which owns what `what` would change."""
    user = await _require_user(store, username)
    if user.from_directory:
        raise CliError(
            f"{user.username} comes from the LDAP directory: {what} there "
            "(here: `users 2fa reset`, `users sessions revoke`, `users tokens revoke`)"
        )
    return user


def cmd_users(args: argparse.Namespace) -> int:
    config = _load(args)

    async def add(store: Storage) -> int:
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
        await _record(
            store, audit.ADMIN_USER_CREATED, user.username, f"groups: {','.join(user.groups) or '-'}"
        )
        print(f"created user {user.username}")
        return 0

    async def list_(store: Storage) -> int:
        users = await store.list_users()
        if args.json:
            print(json.dumps([_user_dict(u) for u in users], indent=2))
            return 0
        for u in users:
            state = "disabled" if u.disabled else "active"
            print(f"{u.username:20} {u.email:30} {state:8} {u.source:5} {','.join(u.groups)}")
        return 0

    async def show(store: Storage) -> int:
        user = await _require_user(store, args.username)
        print(json.dumps(_user_dict(user), indent=2))
        return 0

    async def passwd(store: Storage) -> int:
        user = await _require_local_user(store, args.username, "change the password")
        password = _read_password(args)
        password_hash = await asyncio.to_thread(PasswordHasher(config.password).hash, password)
        await store.set_password_hash(user.id, password_hash)
        ended = await store.delete_user_sessions(user.id)
        await _record(store, audit.ADMIN_PASSWORD_SET, user.username, f"{ended} session(s) ended")
        print(f"password changed for {user.username}; {ended} session(s) ended")
        return 0

    async def set_disabled(store: Storage, disabled: bool) -> int:
        user = await _require_local_user(store, args.username, "disable or enable the account")
        await store.set_disabled(user.id, disabled)
        event = audit.ADMIN_USER_DISABLED if disabled else audit.ADMIN_USER_ENABLED
        await _record(store, event, user.username)
        print(f"{'disabled' if disabled else 'enabled'} {user.username}")
        return 0

    async def modify(store: Storage) -> int:
        user = await _require_local_user(store, args.username, "change e-mail, name and groups")
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
        changed = [
            key
            for key, value in (("email", args.email), ("name", args.name), ("groups", groups))
            if value is not None
        ]
        await _record(
            store, audit.ADMIN_USER_MODIFIED, user.username, f"changed: {', '.join(changed) or '-'}"
        )
        print(f"updated {user.username}")
        return 0

    async def delete(store: Storage) -> int:
        user = await _require_user(store, args.username)
        if user.from_directory and not user.disabled:
            # A live directory user would come back on the next sign-in without their factors.
            raise CliError(
                f"{user.username} comes from the LDAP directory and is active there; remove or disable "
                "it in the directory first (its row is then disabled at the next re-check)"
            )
        if not args.yes:
            raise CliError(f"deleting {user.username} is permanent; repeat with --yes")
        await store.delete_user(user.id)
        await _record(store, audit.ADMIN_USER_DELETED, user.username)
        print(f"deleted {user.username}")
        return 0

    async def two_factor(store: Storage) -> int:
        user = await _require_user(store, args.username)
        if args.twofa_command == "reset":
            if not args.yes:
                raise CliError(
                    f"removing every second factor of {user.username} is permanent; repeat with --yes"
                )
            await store.reset_second_factors(user.id)
            await _record(store, audit.ADMIN_SECOND_FACTORS_RESET, user.username)
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

    async def tokens(store: Storage) -> int:
        user = await _require_user(store, args.username)
        live = await store.list_app_passwords(user.id)
        now = time.time()
        if args.tokens_command == "list":
            if args.json:
                print(json.dumps([_token_dict(t, now) for t in live], indent=2))
                return 0
            for t in live:
                row = _token_dict(t, now)
                state = (
                    "expired" if row["expired"] else (f"until {row['expires_at']}" if t.expires_at else "")
                )
                used = f"used {row['last_used_at']} from {t.last_used_ip}" if t.last_used_at else "never used"
                domains = ",".join(t.domains) or "any domain"
                print(f"{t.id:<6} {t.name:30} {domains:30} {used} {state}".rstrip())
            return 0
        if args.all:
            if args.name_or_id is not None:
                raise CliError("give a token or --all, not both")
            count = await store.revoke_all_app_passwords(user.id, now)
            await _record(store, audit.ADMIN_TOKENS_REVOKED, user.username, f"{count} app password(s)")
            print(f"revoked {count} app password(s) of {user.username}")
            return 0
        if args.name_or_id is None:
            raise CliError("give the token's id or name, or --all")
        token = _pick_token(live, args.name_or_id)
        if not await store.revoke_app_password(user.id, token.id, now):
            raise CliError(f"app password {token.name!r} was revoked meanwhile")
        await _record(
            store, audit.ADMIN_TOKEN_REVOKED, user.username, f"app password {token.id} {token.name!r}"
        )
        print(f"revoked app password {token.name!r} of {user.username}")
        return 0

    async def sessions(store: Storage) -> int:
        user = await _require_user(store, args.username)
        records = await store.list_user_sessions(user.id)
        if args.sessions_command == "list":
            if args.json:
                print(json.dumps([_session_dict(r) for r in records], indent=2))
                return 0
            for r in records:
                row = _session_dict(r)
                print(f"{row['id']}  {row['device']:32} {r.ip:20} active {row['last_active']}")
            return 0
        if args.all:
            if args.session_id is not None:
                raise CliError("give a session id or --all, not both")
            count = await store.delete_user_sessions(user.id)
            await _record(store, audit.ADMIN_SESSIONS_REVOKED, user.username, f"{count} session(s)")
            print(f"ended {count} session(s) of {user.username}")
            return 0
        prefix = (args.session_id or "").lower()
        if len(prefix) < MIN_SESSION_ID:
            raise CliError(
                f"give at least {MIN_SESSION_ID} characters of a session id (from `sessions list`), or --all"
            )
        matches = [r for r in records if r.id_hash.startswith(prefix)]
        if len(matches) != 1:
            raise CliError(
                f"{len(matches)} sessions of {user.username} start with {prefix!r}; need exactly one"
            )
        if not await store.delete_session(matches[0].id_hash):
            raise CliError("that session ended meanwhile")
        device = useragent.describe(matches[0].user_agent)
        await _record(store, audit.ADMIN_SESSION_REVOKED, user.username, f"{device} from {matches[0].ip}")
        print(f"ended session {prefix} of {user.username}")
        return 0

    actions: dict[str, Callable[[Storage], Awaitable[int]]] = {
        "add": add,
        "list": list_,
        "show": show,
        "passwd": passwd,
        "disable": lambda s: set_disabled(s, True),
        "enable": lambda s: set_disabled(s, False),
        "modify": modify,
        "delete": delete,
        "2fa": two_factor,
        "tokens": tokens,
        "sessions": sessions,
    }
    with _logging(config):
        return asyncio.run(_with_store(config, actions[args.users_command]))


def cmd_audit(args: argparse.Namespace) -> int:
    config = _load(args)
    since = _parse_since(args.since) if args.since else None

    async def export(store: Storage) -> int:
        count = 0
        with _output(args.output) as stream:
            async for event in store.iter_audit(since):
                stream.write(audit.to_json_line(event) + "\n")
                count += 1
        detail = f"{count} row(s)" + (f" since {args.since}" if args.since else "")
        await _record(store, audit.ADMIN_AUDIT_EXPORTED, None, detail)
        if args.output not in (None, "-"):
            print(f"wrote {count} audit event(s) to {args.output}", file=sys.stderr)
        return 0

    with _logging(config):
        return asyncio.run(_with_store(config, export))


def cmd_db_copy(args: argparse.Namespace) -> int:
    # Imported here: only this command needs the PostgreSQL driver on a SQLite install.
    from gateway.store.copy import copy_sqlite_to_postgres, sqlite_path
    from gateway.store.dsn import dsn_problem, redact_dsn

    config = _load(args)
    source = sqlite_path(args.source) if args.source else Path(config.storage.database_path)
    target = args.target or config.storage.postgres.dsn
    if not target:
        raise CliError("give --to postgresql://... or set storage.postgres.dsn (or its _FILE variable)")
    problem = dsn_problem(target)
    if problem is not None:
        raise CliError(f"--to {problem}")
    with _logging(config):
        copied = asyncio.run(copy_sqlite_to_postgres(source, target))
    width = max(len(c.table) for c in copied)
    for c in copied:
        print(f"{c.table:<{width}}  {c.target_rows:>8} row(s)")
    total = sum(c.target_rows for c in copied)
    print(f"copied {total} row(s) in {len(copied)} tables from {source} to {redact_dsn(target)}")
    print("row counts verified table by table")
    return 0


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

    tokens = user_commands.add_parser("tokens", help="list or revoke a user's app passwords")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True)
    tokens_list = token_commands.add_parser(
        "list", help="list a user's live app passwords (never the tokens)"
    )
    tokens_list.add_argument("username")
    tokens_list.add_argument("--json", action="store_true")
    tokens_revoke = token_commands.add_parser(
        "revoke", help="revoke one app password (by id or name) or --all"
    )
    tokens_revoke.add_argument("username")
    tokens_revoke.add_argument("name_or_id", nargs="?")
    tokens_revoke.add_argument("--all", action="store_true", help="revoke every app password of the user")

    sessions = user_commands.add_parser("sessions", help="list or end a user's sessions")
    session_commands = sessions.add_subparsers(dest="sessions_command", required=True)
    sessions_list = session_commands.add_parser("list", help="list a user's sessions with device and address")
    sessions_list.add_argument("username")
    sessions_list.add_argument("--json", action="store_true")
    sessions_revoke = session_commands.add_parser("revoke", help="end one session (by id from list) or --all")
    sessions_revoke.add_argument("username")
    sessions_revoke.add_argument("session_id", nargs="?")
    sessions_revoke.add_argument("--all", action="store_true", help="end every session of the user")

    db = commands.add_parser("db", help="database tools")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_copy = db_commands.add_parser(
        "copy",
        help="copy every row from a SQLite database into an empty PostgreSQL one (docs/scaling.md)",
    )
    db_copy.add_argument(
        "--from",
        dest="source",
        help="sqlite:///path/to/authgate.sqlite3 (default: the configured data_dir's)",
    )
    db_copy.add_argument(
        "--to",
        dest="target",
        help="postgresql://user:password@host:port/database (default: storage.postgres.dsn, which can "
        "come from a file so the password stays out of the process list)",
    )
    db_copy.set_defaults(func=cmd_db_copy)

    audit_parser = commands.add_parser("audit", help="the audit log")
    audit_parser.set_defaults(func=cmd_audit)
    audit_commands = audit_parser.add_subparsers(dest="audit_command", required=True)
    export = audit_commands.add_parser("export", help="write audit events as JSON lines, oldest first")
    export.add_argument("--since", help="only events at or after this ISO 8601 date/time (UTC unless given)")
    export.add_argument("--output", help="file to write (mode 0600; default: standard output)")

    from gateway.oidc import cli as oidc_cli  # the provider's commands live with the provider

    oidc_cli.add_parser(commands, _load)
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
