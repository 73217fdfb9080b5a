"""``tpemu apps ls|login`` and ``tpemu proxy app`` (like ``tsh apps`` and ``tsh proxy app``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from tpemu.cli.common import Subparsers, command, home, proxy_kinds
from tpemu.config import Addr

ORDER = 76


def register(sub: Subparsers) -> None:
    def home_arg(s: argparse.ArgumentParser) -> None:
        s.add_argument("--home", help="profile folder (default $TPEMU_HOME or ~/.tpemu)")

    apps = command(sub, "apps", "application access (like tsh apps)", (
        "tpemu apps ls", "tpemu apps login dumper", "tpemu proxy app tcpapp --port 8080"))
    asub = apps.add_subparsers(metavar="ACTION", help="ls or login")
    s = command(asub, "ls", "list the cluster's applications", ("tpemu apps ls", "tpemu apps ls --format json"))
    s.add_argument("--format", choices=("text", "json"), default="text")
    home_arg(s)
    s.set_defaults(func=cmd_apps_ls)
    s = command(asub, "login", "get a certificate for an application (then: curl --cert …)", (
        "tpemu apps login dumper",))
    s.add_argument("name", help="the application's name (as tpemu apps ls shows it)")
    home_arg(s)
    s.set_defaults(func=cmd_apps_login)
    s = command(proxy_kinds(sub), "app", "a plain local port to an application (TLS and your app certificate)",
                ("tpemu proxy app tcpapp --port 8080",))
    s.add_argument("name", help="the application's name (log in first: tpemu apps login NAME)")
    s.add_argument("--port", type=int, default=0, help="local port (default: a free one)")
    home_arg(s)
    s.set_defaults(func=cmd_proxy_app)


def _call(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(fn())


def _prof(args: argparse.Namespace) -> Any:
    from tpemu.client.apps import current_profile

    return current_profile(home(args))


def cmd_apps_ls(args: argparse.Namespace) -> int:
    from tpemu.client.apps import describe, list_apps, public_addr

    prof = _prof(args)
    items = _call(lambda: list_apps(prof))
    if args.format == "json":
        print(json.dumps(describe(items), indent=2))
        return 0
    print(f"{'Application':<20} {'Type':<6} {'Public Address':<32} {'Description':<32} Labels")
    for a in items:
        labels = ",".join(f"{k}={v}" for k, v in sorted(a.labels.items()))
        print(f"{a.name:<20} {a.protocol:<6} {public_addr(prof, a.name):<32} {a.description or '-':<32} "
              f"{labels or '-'}")
    return 0


def cmd_apps_login(args: argparse.Namespace) -> int:
    from tpemu.client.apps import app_login

    prof = _prof(args)
    login = _call(lambda: app_login(prof, args.name))
    print(f"Logged into app {args.name!r}.")
    if login.protocol == "tcp":
        print(f"Start a local tunnel with: tpemu proxy app {args.name} --port 8080")
    else:
        print(f"Example curl command:\n  {login.curl()}")
    return 0


def cmd_proxy_app(args: argparse.Namespace) -> int:
    from tpemu.client.apps import find_login, run_tunnel

    prof = _prof(args)

    async def run() -> None:
        login = find_login(prof, args.name)

        def ready(addr: Addr) -> None:
            print(f"Proxying connections to {args.name} on {addr}", flush=True)

        await run_tunnel(login, Addr("127.0.0.1", args.port), ready)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        print("", file=sys.stderr)
    return 0
