"""``tpemu db ls|login|logout|connect|env|config`` and ``tpemu proxy db --tunnel`` (like ``tsh db``)."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from tpemu.cli.common import CLIError, Subparsers, command, home, proxy_kinds, run_loop
from tpemu.config import Addr

ORDER = 70


def register(sub: Subparsers) -> None:
    def home_arg(s: argparse.ArgumentParser) -> None:
        s.add_argument("--home", help="profile folder (default $TPEMU_HOME or ~/.tpemu)")

    def route_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("--db-user", help="database user (default: your only allowed one)")
        s.add_argument("--db-name", help="database name (default: your only allowed one, for Postgres/MongoDB)")

    name_help = "the database's name (as tpemu db ls shows it)"
    db = command(sub, "db", "database access (like tsh db)", (
        "tpemu db ls", "tpemu db login pg --db-user alice --db-name app", "tpemu db connect pg -- -c 'select 1'",
        "eval \"$(tpemu db env pg)\" && psql -c 'select 1'"))
    dsub = db.add_subparsers(metavar="ACTION", help="ls, login, logout, connect, env or config")
    s = command(dsub, "ls", "list the cluster's databases", ("tpemu db ls", "tpemu db ls --format json"))
    s.add_argument("--format", choices=("text", "json"), default="text")
    home_arg(s)
    s.set_defaults(func=cmd_db_ls)
    s = command(dsub, "login", "get a certificate routed to a database", (
        "tpemu db login pg", "tpemu db login mongo --db-user alice --db-name admin"))
    s.add_argument("name", help=name_help)
    route_args(s)
    home_arg(s)
    s.set_defaults(func=cmd_db_login)
    s = command(dsub, "logout", "remove database certificates (all, or one)", ("tpemu db logout", "tpemu db logout pg"))
    s.add_argument("name", nargs="?", help=name_help + " (default: all of them)")
    home_arg(s)
    s.set_defaults(func=cmd_db_logout)
    s = command(dsub, "connect", "run psql/mariadb/mongosh/redis-cli through a local tunnel", (
        "tpemu db connect pg", "tpemu db connect pg --db-user alice -- -c 'select 1'",
        "tpemu db connect redis -- ping"))
    s.add_argument("name", help=name_help)
    route_args(s)
    home_arg(s)
    s.add_argument("client_args", nargs="*", help="arguments for the client, after -- (e.g. -- -c \"select 1\")")
    s.set_defaults(func=cmd_db_connect)
    s = command(dsub, "env", "print libpq environment variables for a Postgres database", (
        "eval \"$(tpemu db env pg)\" && psql -c 'select 1'",))
    s.add_argument("name", nargs="?", help=name_help + " (default: the only one logged in)")
    home_arg(s)
    s.set_defaults(func=cmd_db_env)
    s = command(dsub, "config", "print connection settings and client commands", (
        "tpemu db config pg", "tpemu db config pg --format json"))
    s.add_argument("name", nargs="?", help=name_help + " (default: the only one logged in)")
    s.add_argument("--format", choices=("text", "json"), default="text")
    home_arg(s)
    s.set_defaults(func=cmd_db_config)

    s = command(proxy_kinds(sub), "db", "a plain local port that tunnels to a database (TLS, ALPN, your certificate)", (
        "tpemu proxy db --tunnel pg --port 5433   # then: psql -h 127.0.0.1 -p 5433 -U alice app",))
    s.add_argument("name", help=name_help)
    s.add_argument("--tunnel", action="store_true", help="open a local tunnel (required: the only mode)")
    s.add_argument("--port", type=int, default=0, help="local port (default: a free one)")
    route_args(s)
    home_arg(s)
    s.set_defaults(func=cmd_proxy_db)


def _db_call(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(fn())


def _db_profile(args: argparse.Namespace) -> Any:
    from tpemu.client.db import current_profile

    return current_profile(home(args))


def _db_login_for(args: argparse.Namespace) -> Any:
    """The saved login for ``args.name``, logging in first when it is missing or differs."""
    from tpemu.client.db import db_login, logins

    prof = _db_profile(args)
    saved = logins(prof).get(args.name)
    if saved is not None and (args.db_user in (None, saved.db_user)) and (args.db_name in (None, saved.db_name)):
        return saved
    return _db_call(lambda: db_login(prof, args.name, args.db_user, args.db_name))


def cmd_db_ls(args: argparse.Namespace) -> int:
    from tpemu.client.db import list_databases, logins

    prof = _db_profile(args)
    items = _db_call(lambda: list_databases(prof))
    active = logins(prof)
    if args.format == "json":
        print(json.dumps([{"name": d.name, "protocol": d.protocol, "uri": d.uri, "description": d.description,
                           "labels": d.labels, "hosts": list(d.hosts), "logged_in": d.name in active,
                           "last_heartbeat": d.last_heartbeat, "connected": d.connected} for d in items], indent=2))
        return 0
    from tpemu.client.ssh import heartbeat_age

    rows = [("Name", "Protocol", "Description", "Labels", "Last heartbeat", "Connect")]
    for d in items:
        labels = ",".join(f"{k}={v}" for k, v in sorted(d.labels.items()))
        login = active.get(d.name)
        rows.append((f"> {d.name}" if login else d.name, d.protocol, d.description or "-", labels or "-",
                     "disconnected" if d.connected is False else heartbeat_age(d.last_heartbeat),
                     f"tpemu db connect {d.name}" + (f" (as {login.db_user})" if login else "")))
    # Each column as wide as its longest cell (a long description must not push the next ones).
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print(" ".join(f"{cell:<{w}}" for cell, w in zip(r, widths, strict=False)) + " " + r[-1])
    return 0


def cmd_db_login(args: argparse.Namespace) -> int:
    from tpemu.client.db import db_login

    prof = _db_profile(args)
    login = _db_call(lambda: db_login(prof, args.name, args.db_user, args.db_name))
    print(f"Logged into database {login.name} ({login.protocol}) as database user {login.db_user!r}"
          + (f", database {login.db_name!r}" if login.db_name else "") + ".")
    print(f"Certificate: {login.cert_path}")
    print(f"Connect with: tpemu db connect {login.name}   or   tpemu proxy db --tunnel {login.name}   "
          f"(settings: tpemu db config {login.name})")
    return 0


def cmd_db_logout(args: argparse.Namespace) -> int:
    from tpemu.client.db import db_logout

    removed = db_logout(_db_profile(args), args.name)
    if not removed:
        print("No database certificates to remove.")
        return 0 if args.name is None else 1
    print(f"Logged out of database{'s' if len(removed) > 1 else ''} {', '.join(removed)}.")
    return 0


def cmd_db_connect(args: argparse.Namespace) -> int:
    from tpemu.client.db import connect

    login = _db_login_for(args)
    extra = list(args.client_args) + list(getattr(args, "passthrough", []))
    code: int = _db_call(lambda: connect(login, extra))
    return code


def _saved_login(args: argparse.Namespace) -> Any:
    from tpemu.client.db import find_login

    return find_login(_db_profile(args), args.name)


def cmd_db_env(args: argparse.Namespace) -> int:
    from tpemu.client.db import env_lines

    print("\n".join(env_lines(_saved_login(args))))
    return 0


def cmd_db_config(args: argparse.Namespace) -> int:
    from tpemu.client.db import config_data, config_lines

    login = _saved_login(args)
    print(json.dumps(config_data(login), indent=2) if args.format == "json" else "\n".join(config_lines(login)))
    return 0


def cmd_proxy_db(args: argparse.Namespace) -> int:
    from tpemu.client.db import run_tunnel, tunnel_command

    if not args.tunnel:
        raise CLIError("only the --tunnel mode is emulated: tpemu proxy db --tunnel NAME [--port P]", 2)
    login = _db_login_for(args)

    def ready(addr: Addr) -> None:
        print(f"Started authenticated tunnel for the {login.protocol} database {login.name!r} on {addr} "
              f"(to {login.proxy}, as {login.db_user}).", flush=True)
        print("Use the following command to connect:\n  " + " ".join(
            repr(a) if " " in a else a for a in tunnel_command(login, addr.port)), flush=True)

    try:
        return run_loop(lambda: _tunnel_forever(run_tunnel(login, Addr("127.0.0.1", args.port), ready)), "asyncio")
    except OSError as exc:
        raise CLIError(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}") from None


async def _tunnel_forever(coro: Coroutine[Any, Any, None]) -> int:
    import signal

    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass
    return 0
