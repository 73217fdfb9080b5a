"""The ``tpemu`` command line (glue): start, configure, ping, inspect, tokens, users, login, status.

Configures logging (the only place that does), picks the event loop (uvloop unless
``--loop asyncio``) and turns every expected failure into one clear line on stderr and a non-zero
exit code; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import ssl
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from tpemu import TELEPORT_VERSION, __version__, logs
from tpemu import config as config_mod
from tpemu.config import Addr, Config, ConfigError

log = logging.getLogger("tpemu")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after "bench" belongs to the suite's own parser
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    # Arguments after "--" belong to the program a command runs (tpemu db connect NAME -- -c "…");
    # argparse does not hand them to a positional of a nested subcommand, so they are split here.
    # `tpemu ssh` keeps its own: everything after the node is the remote command.
    passthrough: list[str] = []
    if "--" in argv and argv[:1] != ["ssh"]:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.passthrough = passthrough
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"tpemu: config error: {exc}", file=sys.stderr)
        return 2
    except CLIError as exc:
        print(f"tpemu: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


class CLIError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tpemu", description="Teleport networking emulator")
    p.add_argument("--version", action="version", version=f"tpemu {__version__} (Teleport {TELEPORT_VERSION})")
    sub = p.add_subparsers(metavar="COMMAND")

    s = sub.add_parser("start", help="run a cluster (all-in-one without --config)")
    s.add_argument("-c", "--config", help="teleport.yaml-shaped config file")
    s.add_argument("-d", "--data-dir", help="override teleport.data_dir")
    s.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop (default uvloop)")
    s.add_argument("--debug", action="store_true", help="log at DEBUG")
    s.add_argument("--log-level", help="TRACE, DEBUG, INFO, WARN or ERROR (overrides the config)")
    s.add_argument("--roles", help="what to run, comma-separated: auth, proxy, node, db (Teleport's --roles; "
                   "default: the services the config enables; all of them without a config)")
    s.add_argument("--token", help="join token for agents and proxies (teleport.auth_token; a file path works too)")
    s.add_argument("--proxy", help="the proxy HOST:PORT agents join through and tunnel to (teleport.proxy_server)")
    s.add_argument("--auth-server", help="join the Auth Service directly at HOST:PORT (teleport.auth_server; "
                   "SSH agents only)")
    s.add_argument("--ca-pin", action="append", default=[], help="sha256:… pin of the cluster CA (teleport.ca_pin)")
    s.add_argument("--nodename", help="this host's name (teleport.nodename)")
    s.set_defaults(func=cmd_start)

    s = sub.add_parser("configure", help="print a commented default config")
    s.add_argument("-o", "--output", help="write to this file instead of stdout")
    s.set_defaults(func=cmd_configure)

    s = sub.add_parser("ping", help="print the proxy's /webapi/ping JSON")
    s.add_argument("--proxy", default="127.0.0.1:3080", help="proxy HOST:PORT (default 127.0.0.1:3080)")
    s.add_argument("--insecure", action="store_true", help="do not verify the proxy's certificate")
    s.add_argument("--ca", help="CA file to trust (default: the local cluster CA if present, and the system's)")
    s.add_argument("--find", action="store_true", help="ask /webapi/find instead")
    s.set_defaults(func=cmd_ping)

    s = sub.add_parser("inspect", help="explain how a captured first-bytes prefix would be routed")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("hex", nargs="?", help="the prefix as hex (spaces, colons and 0x allowed)")
    src.add_argument("--file", help="a file holding the raw bytes")
    s.add_argument("-c", "--config", help="route with this config (pass-through rules, listener mode)")
    s.add_argument("--listener", default="web", help="which listener received it (web, ssh, tunnel, postgres, …)")
    s.add_argument("--proxy-protocol", action="store_true", help="as if proxy_protocol were on")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("bench", help="run the benchmark suite (bench/ in the source checkout)", add_help=False)
    s.add_argument("bench_args", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_bench)
    _add_auth_commands(sub)
    _add_ssh_commands(sub)
    _add_db_commands(sub)
    from tpemu.client.kube_commands import register as add_kube_commands

    add_kube_commands(sub)
    return p


# -- start --------------------------------------------------------------------------------------


def load_config(path: str | None, data_dir: str | None) -> tuple[Config, list[str]]:
    """The config from ``path`` (or defaults), with ``--data-dir`` applied; plus ignored keys."""
    import dataclasses

    import yaml

    ignored: list[str] = []
    if path:
        cfg = config_mod.load(path)
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            raw = None
        ignored = config_mod.ignored_keys(raw)
    else:
        cfg = Config()
    if data_dir:
        cfg = dataclasses.replace(cfg, teleport=dataclasses.replace(cfg.teleport, data_dir=data_dir))
    return cfg, ignored


def run_loop(coro_fn: Callable[[], Coroutine[Any, Any, int]], loop_name: str = "uvloop") -> int:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coro_fn())
    return asyncio.run(coro_fn())


def cmd_start(args: argparse.Namespace) -> int:
    cfg, ignored = load_config(args.config, args.data_dir)
    level = args.log_level or ("DEBUG" if args.debug else cfg.teleport.log.severity)
    try:
        logs.setup(level, cfg.teleport.log.output)
    except (ValueError, OSError) as exc:
        raise CLIError(f"cannot set up logging: {exc}", 2) from None
    for key in ignored:
        log.warning("config key %s is accepted for compatibility but not emulated by tpemu", key)
    from tpemu.runner import StartError, apply_start_flags, run

    try:
        cfg, roles = apply_start_flags(cfg, args, all_in_one=args.config is None)
    except StartError as exc:
        raise CLIError(str(exc), 2) from None
    return run_loop(lambda: run(cfg, roles, all_in_one=args.config is None), args.loop)


# -- configure ------------------------------------------------------------------------------------


def cmd_configure(args: argparse.Namespace) -> int:
    from tpemu.config_example import EXAMPLE_CONFIG

    if args.output:
        path = Path(args.output)
        if path.exists():
            raise CLIError(f"{path} exists; not overwriting it")
        path.write_text(EXAMPLE_CONFIG, encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write(EXAMPLE_CONFIG)
    return 0


# -- ping -------------------------------------------------------------------------------------------


def _default_ca() -> Path | None:
    path = Config().data_dir() / "pki" / "ca.crt"
    return path if path.exists() else None


def cmd_ping(args: argparse.Namespace) -> int:
    import http.client

    try:
        addr = Addr.parse(args.proxy, default_port=3080)
    except ValueError as exc:
        raise CLIError(f"--proxy: {exc}", 2) from None
    ctx = ssl.create_default_context()
    if args.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ca = Path(args.ca) if args.ca else _default_ca()
        if ca is not None:
            try:
                ctx.load_verify_locations(cafile=str(ca))
            except (OSError, ssl.SSLError) as exc:
                raise CLIError(f"cannot load CA {ca}: {exc}", 2) from None
    ctx.set_alpn_protocols(["http/1.1"])
    path = "/webapi/find" if args.find else "/webapi/ping"
    conn = http.client.HTTPSConnection(addr.host, addr.port, context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
    except ssl.SSLCertVerificationError as exc:
        raise CLIError(f"cannot verify the proxy's certificate: {exc.verify_message} "
                       "(pass --ca <cluster CA> or --insecure)") from None
    except (OSError, http.client.HTTPException) as exc:
        raise CLIError(f"cannot reach the proxy at {addr}: {exc}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise CLIError(f"{path} answered {resp.status} {resp.reason}: {body[:200]!r}")
    try:
        data = json.loads(body)
    except ValueError:
        raise CLIError(f"{path} did not answer JSON: {body[:200]!r}") from None
    print(json.dumps(data, indent=2))
    return 0


# -- inspect ------------------------------------------------------------------------------------------


def parse_hex(text: str) -> bytes:
    """Hex from a capture: whitespace, ``:``, ``0x`` prefixes and ``\\x`` escapes are allowed."""
    cleaned = text.strip().replace("\\x", "").replace("0x", "").replace(":", "")
    cleaned = "".join(cleaned.split())
    try:
        return bytes.fromhex(cleaned)
    except ValueError as exc:
        raise CLIError(f"not hex: {exc}", 2) from None


def cmd_inspect(args: argparse.Namespace) -> int:
    from tpemu.proxy.explain import explain

    if args.file:
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            raise CLIError(f"cannot read {args.file}: {exc.strerror}", 2) from None
    else:
        data = parse_hex(args.hex)
    cfg, _ = load_config(args.config, None)
    text, code = explain(data, cfg, args.listener, force_proxy_protocol=args.proxy_protocol)
    print(text)
    return code


# -- bench -----------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    import tpemu

    # The suite lives in the checkout's bench/ folder, beside the package (editable install).
    for candidate in (Path(tpemu.__file__).resolve().parent.parent, Path.cwd()):
        if (candidate / "bench" / "run.py").exists():
            return subprocess.call([sys.executable, "-m", "bench.run", *args.bench_args], cwd=candidate)
    raise CLIError("the benchmark suite lives in the source checkout's bench/ folder; run tpemu bench from there")


# -- auth: tokens, users, login, status, logout -------------------------------------------------------


def _add_auth_commands(sub: Any) -> None:
    def admin_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("-c", "--config", help="config file (for data_dir)")
        s.add_argument("-d", "--data-dir", help="the Auth Service's data dir (where its admin identity is)")
        s.add_argument("--auth-server", help="Auth API HOST:PORT (default: the address the Auth Service bound)")

    tokens = sub.add_parser("tokens", help="manage join tokens (like tctl tokens)")
    tsub = tokens.add_subparsers(metavar="ACTION")
    s = tsub.add_parser("add", help="create a join token")
    s.add_argument("--type", required=True, help="roles the token allows: node, proxy, db, app, kube (comma list)")
    s.add_argument("--ttl", default="30m", help="lifetime (Go duration, default 30m)")
    s.add_argument("--single-use", action="store_true", help="refuse the token after its first successful join")
    s.add_argument("--value", help="use this token value instead of a random one")
    s.add_argument("--format", choices=("text", "json"), default="text")
    admin_args(s)
    s.set_defaults(func=cmd_tokens_add)
    s = tsub.add_parser("ls", help="list join tokens")
    s.add_argument("--format", choices=("text", "json"), default="text")
    admin_args(s)
    s.set_defaults(func=cmd_tokens_ls)
    s = tsub.add_parser("rm", help="delete a join token")
    s.add_argument("token")
    admin_args(s)
    s.set_defaults(func=cmd_tokens_rm)

    users = sub.add_parser("users", help="manage local users (like tctl users)")
    usub = users.add_subparsers(metavar="ACTION")
    s = usub.add_parser("add", help="create a user with a password")
    s.add_argument("name")
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
    s = usub.add_parser("ls", help="list users")
    s.add_argument("--format", choices=("text", "json"), default="text")
    admin_args(s)
    s.set_defaults(func=cmd_users_ls)
    s = usub.add_parser("rm", help="delete a user")
    s.add_argument("name")
    admin_args(s)
    s.set_defaults(func=cmd_users_rm)

    s = sub.add_parser("login", help="log in through the proxy and save a profile (like tsh login)")
    s.add_argument("--proxy", default="127.0.0.1:3080", help="proxy HOST:PORT (default 127.0.0.1:3080)")
    s.add_argument("--user", required=True, help="user name")
    s.add_argument("--password-file", help="read the password from this file (default: $TPEMU_PASSWORD or a prompt)")
    s.add_argument("--ttl", default="12h", help="certificate lifetime (Go duration, default 12h)")
    s.add_argument("--home", help="profile folder (default $TPEMU_HOME or ~/.tpemu)")
    s.add_argument("--ca", help="CA file to verify the proxy with")
    s.add_argument("--insecure", action="store_true", help="do not verify the proxy's certificate")
    s.set_defaults(func=cmd_login)

    s = sub.add_parser("status", help="show the logged-in identity and its expiry (like tsh status)")
    s.add_argument("--home", help="profile folder (default $TPEMU_HOME or ~/.tpemu)")
    s.add_argument("--format", choices=("text", "json"), default="text")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("logout", help="delete the current profile's keys and certificates")
    s.add_argument("--home", help="profile folder (default $TPEMU_HOME or ~/.tpemu)")
    s.set_defaults(func=cmd_logout)


def _duration(text: str, flag: str) -> float:
    try:
        value = config_mod.parse_duration(text)
    except ValueError as exc:
        raise CLIError(f"{flag}: {exc}", 2) from None
    if value <= 0:
        raise CLIError(f"{flag}: must be positive", 2)
    return value


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _read_password(path: str | None, confirm: bool) -> str:
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
    from tpemu import authapi
    from tpemu.client.admin import AdminError, admin_client

    cfg, _ = load_config(args.config, args.data_dir)
    try:
        client = admin_client(cfg.data_dir(), args.auth_server)
    except AdminError as exc:
        raise CLIError(str(exc)) from None
    try:
        return asyncio.run(fn(client))
    except authapi.AuthAPIError as exc:
        raise CLIError(exc.message) from None


def cmd_tokens_add(args: argparse.Namespace) -> int:
    from tpemu.client.admin import tokens_add

    ttl = _duration(args.ttl, "--ttl")
    token = _admin_call(args, lambda c: tokens_add(c, _csv(args.type), ttl, args.single_use, args.value or ""))
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

    password = _read_password(args.password_file, confirm=True)
    traits = {"logins": _csv(args.logins), "db_users": _csv(args.db_users), "db_names": _csv(args.db_names),
              "kubernetes_groups": _csv(args.kube_groups), "kubernetes_users": _csv(args.kube_users)}
    user = _admin_call(args, lambda c: users_add(c, args.name, _csv(args.roles) or ["access"], traits, password))
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


def _home(args: argparse.Namespace) -> Path:
    from tpemu.client.profile import default_home

    return Path(args.home).expanduser() if args.home else default_home()


def cmd_login(args: argparse.Namespace) -> int:
    from tpemu.client.login import LoginError, default_trust, login, status_lines

    try:
        addr = Addr.parse(args.proxy, default_port=3080)
    except ValueError as exc:
        raise CLIError(f"--proxy: {exc}", 2) from None
    ttl = _duration(args.ttl, "--ttl")
    home = _home(args)
    trust = default_trust(home, addr, args.ca, args.insecure, _default_ca())
    if trust.insecure:
        print("WARNING: You are using insecure connection to the proxy", addr, file=sys.stderr)
    password = _read_password(args.password_file, confirm=False)
    try:
        prof = login(home, addr, args.user, password, ttl, trust)
    except LoginError as exc:
        raise CLIError(f"login failed: {exc}") from None
    lines, _ = status_lines(prof)
    print("\n".join(lines))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tpemu.client import profile as profile_mod
    from tpemu.client.login import status_lines

    prof = profile_mod.current(_home(args))
    if prof is None:
        print("Not logged in.")
        return 1
    try:
        lines, valid = status_lines(prof)
        identity = prof.identity()
    except (OSError, ValueError) as exc:
        raise CLIError(f"profile {prof.name} is unreadable: {exc} (log in again)") from None
    if args.format == "json":
        from tpemu import authapi

        print(json.dumps({"profile_url": f"https://{prof.web_proxy_addr}", "username": identity.username,
                          "cluster": identity.teleport_cluster, "roles": list(identity.roles),
                          "logins": list(identity.logins), "db_users": list(identity.database_users),
                          "db_names": list(identity.database_names), "valid_until": authapi.rfc3339(prof.expires()),
                          "expired": not valid, "tls_cert": str(prof.tls_cert_path), "key": str(prof.key_path),
                          "ssh_cert": str(prof.ssh_cert_path), "ca": str(prof.ca_path)}, indent=2))
    else:
        print("\n".join(lines))
    return 0 if valid else 1


def cmd_logout(args: argparse.Namespace) -> int:
    from tpemu.client import profile as profile_mod

    prof = profile_mod.current(_home(args))
    if prof is None:
        print("Not logged in.")
        return 0
    profile_mod.remove(prof)
    print(f"Logged out {prof.username} from {prof.web_proxy_addr}.")
    return 0


def _proxy_kinds(sub: Any) -> Any:
    """The sub-commands of ``tpemu proxy`` (``ssh``, ``db``: like ``tsh proxy``), made on first use."""
    group = sub.choices.get("proxy")
    if group is None:
        group = sub.add_parser("proxy", help="local proxies through the Teleport proxy (like tsh proxy: ssh, db)")
        group.set_defaults(proxy_kinds=group.add_subparsers(metavar="KIND"))
    return group.get_default("proxy_kinds")


# -- ssh: ssh, ls, proxy ssh, config --------------------------------------------------------------------


def _add_ssh_commands(sub: Any) -> None:
    def profile_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("--home", help="profile folder (default $TPEMU_HOME or ~/.tpemu)")
        s.add_argument("--proxy", help="use the profile of this proxy (HOST[:PORT]; default: the current one)")

    s = sub.add_parser("ssh", help="run a command or a shell on a node through the proxy (like tsh ssh)")
    s.add_argument("-p", "--port", type=int, help="the node's SSH port (default 3022)")
    s.add_argument("-l", "--login", help="remote login (default: the one in LOGIN@NODE, else the local user)")
    tty = s.add_mutually_exclusive_group()
    tty.add_argument("-t", dest="tty", action="store_const", const=True, help="force a pseudo-terminal")
    tty.add_argument("-T", dest="tty", action="store_const", const=False, help="never a pseudo-terminal")
    profile_args(s)
    s.add_argument("target", metavar="[LOGIN@]NODE", help="node name, host ID or address (NODE.CLUSTER works too)")
    s.add_argument("command", nargs=argparse.REMAINDER, help="command to run (default: a shell)")
    s.set_defaults(func=cmd_ssh)

    s = sub.add_parser("ls", help="list the cluster's SSH nodes (like tsh ls)")
    s.add_argument("-v", "--verbose", action="store_true", help="show node IDs")
    s.add_argument("--format", choices=("text", "json"), default="text")
    profile_args(s)
    s.set_defaults(func=cmd_ls)

    s = _proxy_kinds(sub).add_parser("ssh", help="splice stdin/stdout to a node's SSH service (OpenSSH ProxyCommand)")
    s.add_argument("--cluster", help="the cluster (default: the profile's)")
    s.add_argument("-l", "--login", help="remote login (only logged; OpenSSH sends its own)")
    profile_args(s)
    s.add_argument("target", metavar="[LOGIN@]NODE[:PORT]", help="what ProxyCommand passes: %%r@%%h:%%p")
    s.set_defaults(func=cmd_proxy_ssh)

    s = sub.add_parser("config", help="print an OpenSSH config block for the cluster (like tsh config)")
    s.add_argument("--port", type=int, default=3022, help="the nodes' SSH port to write (default 3022)")
    s.add_argument("-l", "--login", help="also write 'User LOGIN'")
    profile_args(s)
    s.set_defaults(func=cmd_config)


def _profile(args: argparse.Namespace) -> Any:
    from tpemu.client import profile as profile_mod

    home = _home(args)
    if getattr(args, "proxy", None):
        try:
            name = profile_mod.profile_name(Addr.parse(args.proxy, default_port=3080).host)
            return profile_mod.load(home, name)
        except (OSError, ValueError, KeyError):
            raise CLIError(f"not logged in to {args.proxy} (no profile in {home}): tpemu login --proxy "
                           f"{args.proxy} --user USER") from None
    prof = profile_mod.current(home)
    if prof is None:
        raise CLIError(f"not logged in (no profile in {home}): tpemu login --proxy HOST:PORT --user USER")
    return prof


def _run_ssh(coro_fn: Callable[[], Coroutine[Any, Any, int]]) -> int:
    from tpemu.client.ssh import SSHError

    try:
        return asyncio.run(coro_fn())
    except SSHError as exc:
        raise CLIError(str(exc), exc.code) from None


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
    from tpemu.client import ssh as ssh_mod

    prof = _profile(args)
    try:
        text = ssh_mod.openssh_config(prof, port=args.port, login=args.login)
    except ssh_mod.SSHError as exc:
        raise CLIError(str(exc), exc.code) from None
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader (ssh -F /dev/stdin …) stopped early: nothing to report
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


# -- databases: db ls|login|logout|connect|env|config, proxy db --tunnel -------------------------------


def _add_db_commands(sub: Any) -> None:
    def home_arg(s: argparse.ArgumentParser) -> None:
        s.add_argument("--home", help="profile folder (default $TPEMU_HOME or ~/.tpemu)")

    def route_args(s: argparse.ArgumentParser) -> None:
        s.add_argument("--db-user", help="database user (default: your only allowed one)")
        s.add_argument("--db-name", help="database name (default: your only allowed one, for Postgres/MongoDB)")

    db = sub.add_parser("db", help="database access (like tsh db)")
    dsub = db.add_subparsers(metavar="ACTION")
    s = dsub.add_parser("ls", help="list the cluster's databases")
    s.add_argument("--format", choices=("text", "json"), default="text")
    home_arg(s)
    s.set_defaults(func=cmd_db_ls)
    s = dsub.add_parser("login", help="get a certificate routed to a database")
    s.add_argument("name")
    route_args(s)
    home_arg(s)
    s.set_defaults(func=cmd_db_login)
    s = dsub.add_parser("logout", help="remove database certificates (all, or one)")
    s.add_argument("name", nargs="?")
    home_arg(s)
    s.set_defaults(func=cmd_db_logout)
    s = dsub.add_parser("connect", help="run psql/mariadb/mongosh/redis-cli through a local tunnel")
    s.add_argument("name")
    route_args(s)
    home_arg(s)
    s.add_argument("client_args", nargs="*", help="arguments for the client, after -- (e.g. -- -c \"select 1\")")
    s.set_defaults(func=cmd_db_connect)
    s = dsub.add_parser("env", help="print libpq environment variables for a Postgres database")
    s.add_argument("name", nargs="?")
    home_arg(s)
    s.set_defaults(func=cmd_db_env)
    s = dsub.add_parser("config", help="print connection settings and client commands")
    s.add_argument("name", nargs="?")
    s.add_argument("--format", choices=("text", "json"), default="text")
    home_arg(s)
    s.set_defaults(func=cmd_db_config)

    s = _proxy_kinds(sub).add_parser(
        "db", help="a plain local port that tunnels to a database (TLS, ALPN, your certificate)")
    s.add_argument("name")
    s.add_argument("--tunnel", action="store_true", help="open a local tunnel (required: the only mode)")
    s.add_argument("--port", type=int, default=0, help="local port (default: a free one)")
    route_args(s)
    home_arg(s)
    s.set_defaults(func=cmd_proxy_db)


def _db_call(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    from tpemu.client.db import DBError

    try:
        return asyncio.run(fn())
    except DBError as exc:
        raise CLIError(str(exc)) from None


def _db_profile(args: argparse.Namespace) -> Any:
    from tpemu.client.db import DBError, current_profile

    try:
        return current_profile(_home(args))
    except DBError as exc:
        raise CLIError(str(exc)) from None


def _db_login_for(args: argparse.Namespace) -> Any:
    """The saved login for ``args.name``, logging in first when it is missing or differs."""
    from tpemu.client.db import DBError, db_login, logins

    prof = _db_profile(args)
    saved = logins(prof).get(args.name)
    if saved is not None and (args.db_user in (None, saved.db_user)) and (args.db_name in (None, saved.db_name)):
        return saved
    try:
        return _db_call(lambda: db_login(prof, args.name, args.db_user, args.db_name))
    except DBError as exc:
        raise CLIError(str(exc)) from None


def cmd_db_ls(args: argparse.Namespace) -> int:
    from tpemu.client.db import list_databases, logins

    prof = _db_profile(args)
    items = _db_call(lambda: list_databases(prof))
    active = logins(prof)
    if args.format == "json":
        print(json.dumps([{"name": d.name, "protocol": d.protocol, "uri": d.uri, "description": d.description,
                           "labels": d.labels, "hosts": list(d.hosts), "logged_in": d.name in active,
                           "last_heartbeat": d.last_heartbeat} for d in items], indent=2))
        return 0
    from tpemu.client.ssh import heartbeat_age

    print(f"{'Name':<24} {'Protocol':<10} {'Description':<24} {'Labels':<16} {'Last heartbeat':<15} Connect")
    for d in items:
        labels = ",".join(f"{k}={v}" for k, v in sorted(d.labels.items()))
        login = active.get(d.name)
        mark = f"> {d.name}" if login else d.name
        connect = f"tpemu db connect {d.name}" + (f" (as {login.db_user})" if login else "")
        print(f"{mark:<24} {d.protocol:<10} {d.description or '-':<24} {labels or '-':<16} "
              f"{heartbeat_age(d.last_heartbeat):<15} {connect}")
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
    from tpemu.client.db import DBError, find_login

    try:
        return find_login(_db_profile(args), args.name)
    except DBError as exc:
        raise CLIError(str(exc)) from None


def cmd_db_env(args: argparse.Namespace) -> int:
    from tpemu.client.db import DBError, env_lines

    try:
        print("\n".join(env_lines(_saved_login(args))))
    except DBError as exc:
        raise CLIError(str(exc)) from None
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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

