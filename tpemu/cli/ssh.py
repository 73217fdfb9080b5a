"""``tpemu ssh``, ``ls``, ``proxy ssh`` and ``config`` (like ``tsh ssh/ls/proxy ssh/config``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from tpemu.cli.common import CLIError, Subparsers, command, home, proxy_kinds
from tpemu.config import Addr

ORDER = 60


def register(sub: Subparsers) -> None:
    def profile_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("--home", help="profile folder (default $TPEMU_HOME or ~/.tpemu)")
        s.add_argument("--proxy", help="use the profile of this proxy (HOST[:PORT]; default: the current one)")

    s = command(sub, "ssh", "run a command or a shell on a node through the proxy (like tsh ssh)", (
        "tpemu ssh root@node1                 # an interactive shell", "tpemu ssh -l root node1 uname -a",
        "tpemu ssh -T root@node1.mycluster cat /etc/hostname"))
    s.add_argument("-p", "--port", type=int, help="the node's SSH port (default 3022)")
    s.add_argument("-l", "--login", help="remote login (default: the one in LOGIN@NODE, else the local user)")
    tty = s.add_mutually_exclusive_group()
    tty.add_argument("-t", dest="tty", action="store_const", const=True, help="force a pseudo-terminal")
    tty.add_argument("-T", dest="tty", action="store_const", const=False, help="never a pseudo-terminal")
    profile_args(s)
    s.add_argument("target", metavar="[LOGIN@]NODE", help="node name, host ID or address (NODE.CLUSTER works too)")
    s.add_argument("command", nargs=argparse.REMAINDER, help="command to run (default: a shell)")
    s.set_defaults(func=cmd_ssh)

    s = command(sub, "ls", "list the cluster's SSH nodes (like tsh ls)", ("tpemu ls", "tpemu ls -v --format json"))
    s.add_argument("-v", "--verbose", action="store_true", help="show node IDs")
    s.add_argument("--format", choices=("text", "json"), default="text")
    profile_args(s)
    s.set_defaults(func=cmd_ls)

    s = command(proxy_kinds(sub), "ssh", "splice stdin/stdout to a node's SSH service (OpenSSH ProxyCommand)", (
        "ssh -o 'ProxyCommand tpemu proxy ssh %r@%h:%p' root@node1",))
    s.add_argument("--cluster", help="the cluster (default: the profile's)")
    s.add_argument("-l", "--login", help="remote login (only logged; OpenSSH sends its own)")
    profile_args(s)
    s.add_argument("target", metavar="[LOGIN@]NODE[:PORT]", help="what ProxyCommand passes: %%r@%%h:%%p")
    s.set_defaults(func=cmd_proxy_ssh)

    s = command(sub, "config", "print an OpenSSH config block for the cluster (like tsh config)", (
        "tpemu config > ~/.ssh/tpemu.conf && ssh -F ~/.ssh/tpemu.conf root@node1.mycluster",
        "tpemu config -l root | ssh -F /dev/stdin node1.mycluster uptime"))
    s.add_argument("--port", type=int, default=3022, help="the nodes' SSH port to write (default 3022)")
    s.add_argument("-l", "--login", help="also write 'User LOGIN'")
    profile_args(s)
    s.set_defaults(func=cmd_config)


def _profile(args: argparse.Namespace) -> Any:
    from tpemu.client import profile as profile_mod

    folder = home(args)
    if getattr(args, "proxy", None):
        try:
            name = profile_mod.profile_name(Addr.parse(args.proxy, default_port=3080).host)
            return profile_mod.load(folder, name)
        except (OSError, ValueError, KeyError):
            raise CLIError(f"not logged in to {args.proxy} (no profile in {folder}): tpemu login --proxy "
                           f"{args.proxy} --user USER") from None
    prof = profile_mod.current(folder)
    if prof is None:
        raise CLIError(f"not logged in (no profile in {folder}): tpemu login --proxy HOST:PORT --user USER")
    return prof


def _run_ssh(coro_fn: Callable[[], Coroutine[Any, Any, int]]) -> int:
    return asyncio.run(coro_fn())


def cmd_ssh(args: argparse.Namespace) -> int:
    from tpemu.client import ssh as ssh_mod

    prof = _profile(args)

    async def run() -> int:
        target = ssh_mod.parse_target(args.target, prof.cluster, args.login, args.port)
        creds = ssh_mod.Credentials.load(prof)
        return await ssh_mod.ssh(creds, target, ssh_mod.join_command(args.command), args.tty)

    return _run_ssh(run)


def cmd_ls(args: argparse.Namespace) -> int:
    from tpemu.client import ssh as ssh_mod

    prof = _profile(args)
    items: list[dict[str, Any]] = []

    async def run() -> int:
        items.extend(await ssh_mod.list_nodes(prof))
        return 0

    _run_ssh(run)
    if args.format == "json":
        print(json.dumps(items, indent=2))
    else:
        print(ssh_mod.format_nodes(items, args.verbose))
    return 0


def cmd_proxy_ssh(args: argparse.Namespace) -> int:
    from tpemu.client import ssh as ssh_mod

    prof = _profile(args)
    if args.cluster and args.cluster != prof.cluster:
        raise CLIError(f"--cluster {args.cluster}: the profile {prof.name} is for cluster {prof.cluster}", 2)

    async def run() -> int:
        target = ssh_mod.parse_target(args.target, prof.cluster, args.login)
        return await ssh_mod.proxy_stdio(ssh_mod.Credentials.load(prof), target)

    return _run_ssh(run)


def cmd_config(args: argparse.Namespace) -> int:
    from tpemu.client.openssh_config import openssh_config

    prof = _profile(args)
    text = openssh_config(prof, port=args.port, login=args.login)
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader (ssh -F /dev/stdin …) stopped early: nothing to report
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
