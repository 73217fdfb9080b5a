"""``tpemu tokens`` and ``tpemu users`` (like ``tctl tokens`` / ``tctl users``): the Auth API as admin."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from tpemu.cli.common import CLIError, Subparsers, command, csv, duration, load_config

ORDER = 40


def register(sub: Subparsers) -> None:
    def admin_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("-c", "--config", help="config file (for data_dir)")
        s.add_argument("-d", "--data-dir", help="the Auth Service's data dir (where its admin identity is)")
        s.add_argument("--auth-server", help="Auth API HOST:PORT (default: the address the Auth Service bound)")

    tokens = command(sub, "tokens", "manage join tokens (like tctl tokens)", (
        "tpemu tokens add --type node --ttl 1h", "tpemu tokens ls --format json", "tpemu tokens rm TOKEN"))
    tsub = tokens.add_subparsers(metavar="ACTION", help="add, ls or rm")
    s = command(tsub, "add", "create a join token", (
        "tpemu tokens add --type node,db --ttl 30m --single-use", "tpemu tokens add --type proxy --value s3cr3t"))
    s.add_argument("--type", required=True, help="roles the token allows: node, proxy, db, app, kube (comma list)")
    s.add_argument("--ttl", default="30m", help="lifetime (Go duration, default 30m)")
    s.add_argument("--single-use", action="store_true", help="refuse the token after its first successful join")
    s.add_argument("--value", help="use this token value instead of a random one")
    s.add_argument("--format", choices=("text", "json"), default="text")
    admin_args(s)
    s.set_defaults(func=cmd_tokens_add)
    s = command(tsub, "ls", "list join tokens", ("tpemu tokens ls", "tpemu tokens ls --format json"))
    s.add_argument("--format", choices=("text", "json"), default="text")
    admin_args(s)
    s.set_defaults(func=cmd_tokens_ls)
    s = command(tsub, "rm", "delete a join token", ("tpemu tokens rm 3f1c…",))
    s.add_argument("token", help="the token's value (its name in tpemu tokens ls)")
    admin_args(s)
    s.set_defaults(func=cmd_tokens_rm)

    users = command(sub, "users", "manage local users (like tctl users)", (
        "TPEMU_PASSWORD=pw tpemu users add alice --logins root,alice --db-users alice",
        "tpemu users ls", "tpemu users rm alice"))
    usub = users.add_subparsers(metavar="ACTION", help="add, ls or rm")
    s = command(usub, "add", "create a user with a password", (
        "tpemu users add alice --logins root --db-users alice,postgres --db-names app",
        "tpemu users add bob --roles access,editor --password-file bob.pw"))
    s.add_argument("name", help="the user name")
    s.add_argument("--roles", default="access", help="Teleport roles (comma list, default access)")
    s.add_argument("--logins", default="", help="allowed SSH logins (comma list)")
    s.add_argument("--db-users", default="", help="allowed database users (comma list)")
    s.add_argument("--db-names", default="", help="allowed database names (comma list)")
    s.add_argument("--kubernetes-groups", "--kube-groups", dest="kube_groups", default="",
                   help="Kubernetes groups to impersonate (comma list, e.g. system:masters)")
    s.add_argument("--kubernetes-users", "--kube-users", dest="kube_users", default="",
                   help="Kubernetes users to impersonate (comma list)")
    s.add_argument("--password-file", help="read the password from this file (default: $TPEMU_PASSWORD or a prompt)")
    admin_args(s)
    s.set_defaults(func=cmd_users_add)
    s = command(usub, "ls", "list users", ("tpemu users ls", "tpemu users ls --format json"))
    s.add_argument("--format", choices=("text", "json"), default="text")
    admin_args(s)
    s.set_defaults(func=cmd_users_ls)
    s = command(usub, "rm", "delete a user", ("tpemu users rm alice",))
    s.add_argument("name", help="the user name")
    admin_args(s)
    s.set_defaults(func=cmd_users_rm)


def read_password(path: str | None, confirm: bool) -> str:
    """From ``--password-file``, else ``$TPEMU_PASSWORD``, else a prompt on the terminal."""
    import getpass
    import os

    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CLIError(f"cannot read --password-file {path}: {exc.strerror}", 2) from None
        return text.rstrip("\r\n")
    env = os.environ.get("TPEMU_PASSWORD")
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise CLIError("no password: use --password-file, $TPEMU_PASSWORD, or run on a terminal", 2)
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Confirm password: ") != password:
        raise CLIError("passwords do not match", 2)
    return password


def _admin_call(args: argparse.Namespace, fn: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    from tpemu.client.admin import admin_client

    cfg, _ = load_config(args.config, args.data_dir)
    client = admin_client(cfg.data_dir(), args.auth_server)
    return asyncio.run(fn(client))


def cmd_tokens_add(args: argparse.Namespace) -> int:
    from tpemu.client.admin import tokens_add

    ttl = duration(args.ttl, "--ttl")
    token = _admin_call(args, lambda c: tokens_add(c, csv(args.type), ttl, args.single_use, args.value or ""))
    if args.format == "json":
        print(json.dumps(token, indent=2))
        return 0
    name = token["metadata"]["name"]
    roles = ",".join(r.lower() for r in token["spec"]["roles"])
    expiry = f"{round(ttl / 60)} minutes" if ttl >= 120 else f"{round(ttl)} seconds"
    print(f"The invite token: {name}\nThis token will expire in {expiry}"
          + (" and can be used once." if args.single_use else "."))
    print(f"\nUse it to join a host as {roles}: set teleport.auth_token: {name} (and teleport.proxy_server or "
          "teleport.auth_server) in its config.")
    return 0


def cmd_tokens_ls(args: argparse.Namespace) -> int:
    data = _admin_call(args, lambda c: c.call("GET", "/v1/tokens"))
    items = data.get("items", [])
    if args.format == "json":
        print(json.dumps(items, indent=2))
        return 0
    print(f"{'Token':<34} {'Type':<16} {'Expiry Time (UTC)':<22} Notes")
    for t in items:
        notes = []
        if t["status"].get("static"):
            notes.append("static")
        if t["spec"].get("single_use"):
            notes.append("single-use" + (f", used at {t['status']['used_at']}" if t["status"].get("used_at") else ""))
        print(f"{t['metadata']['name']:<34} {','.join(r for r in t['spec']['roles']):<16} "
              f"{t['metadata'].get('expires', 'never'):<22} {'; '.join(notes)}")
    return 0


def cmd_tokens_rm(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    _admin_call(args, lambda c: c.call("DELETE", f"/v1/tokens/{quote(args.token, safe='')}"))
    print(f"Token {args.token} has been deleted.")
    return 0


def cmd_users_add(args: argparse.Namespace) -> int:
    from tpemu.client.admin import users_add

    password = read_password(args.password_file, confirm=True)
    traits = {"logins": csv(args.logins), "db_users": csv(args.db_users), "db_names": csv(args.db_names),
              "kubernetes_groups": csv(args.kube_groups), "kubernetes_users": csv(args.kube_users)}
    user = _admin_call(args, lambda c: users_add(c, args.name, csv(args.roles) or ["access"], traits, password))
    print(f"User {user['metadata']['name']!r} has been created (roles: {', '.join(user['spec']['roles'])}).")
    return 0


def cmd_users_ls(args: argparse.Namespace) -> int:
    data = _admin_call(args, lambda c: c.call("GET", "/v1/users"))
    items = data.get("items", [])
    if args.format == "json":
        print(json.dumps(items, indent=2))
        return 0
    print(f"{'User':<24} {'Roles':<20} {'Logins':<24} {'DB users':<20} DB names")
    for u in items:
        tr = u["spec"].get("traits", {})
        print(f"{u['metadata']['name']:<24} {','.join(u['spec']['roles']):<20} {','.join(tr.get('logins', [])):<24} "
              f"{','.join(tr.get('db_users', [])):<20} {','.join(tr.get('db_names', []))}")
    return 0


def cmd_users_rm(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    _admin_call(args, lambda c: c.call("DELETE", f"/v1/users/{quote(args.name, safe='')}"))
    print(f"User {args.name!r} has been deleted.")
    return 0
