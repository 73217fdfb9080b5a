"""``tpemu login``, ``status`` and ``logout`` (like ``tsh login/status/logout``): the saved profile."""

from __future__ import annotations

import argparse
import json
import sys

from tpemu.cli.admin import read_password
from tpemu.cli.common import CLIError, Subparsers, command, default_ca, duration, home
from tpemu.config import Addr

ORDER = 50
HOME_HELP = "profile folder (default $TPEMU_HOME or ~/.tpemu)"


def register(sub: Subparsers) -> None:
    s = command(sub, "login", "log in through the proxy and save a profile (like tsh login)", (
        "TPEMU_PASSWORD=pw tpemu login --proxy 127.0.0.1:3080 --user alice --insecure",
        "tpemu login --proxy proxy.example:443 --user alice --ca ca.crt --ttl 1h --password-file pw"))
    s.add_argument("--proxy", default="127.0.0.1:3080", help="proxy HOST:PORT (default 127.0.0.1:3080)")
    s.add_argument("--user", required=True, help="user name")
    s.add_argument("--password-file", help="read the password from this file (default: $TPEMU_PASSWORD or a prompt)")
    s.add_argument("--ttl", default="12h", help="certificate lifetime (Go duration, default 12h)")
    s.add_argument("--home", help=HOME_HELP)
    s.add_argument("--ca", help="CA file to verify the proxy with")
    s.add_argument("--insecure", action="store_true", help="do not verify the proxy's certificate")
    s.set_defaults(func=cmd_login)

    s = command(sub, "status", "show the logged-in identity and its expiry (like tsh status)", (
        "tpemu status", "tpemu status --format json   # exit code 1 when expired or not logged in"))
    s.add_argument("--home", help=HOME_HELP)
    s.add_argument("--format", choices=("text", "json"), default="text")
    s.set_defaults(func=cmd_status)

    s = command(sub, "logout", "delete the current profile's keys and certificates", ("tpemu logout",))
    s.add_argument("--home", help=HOME_HELP)
    s.set_defaults(func=cmd_logout)


def cmd_login(args: argparse.Namespace) -> int:
    from tpemu.client.login import LoginError, default_trust, login, status_lines

    try:
        addr = Addr.parse(args.proxy, default_port=3080)
    except ValueError as exc:
        raise CLIError(f"--proxy: {exc}", 2) from None
    ttl = duration(args.ttl, "--ttl")
    folder = home(args)
    trust = default_trust(folder, addr, args.ca, args.insecure, default_ca())
    if trust.insecure:
        print("WARNING: You are using insecure connection to the proxy", addr, file=sys.stderr)
    password = read_password(args.password_file, confirm=False)
    try:
        prof = login(folder, addr, args.user, password, ttl, trust)
    except LoginError as exc:
        raise CLIError(f"login failed: {exc}") from None
    lines, _ = status_lines(prof)
    print("\n".join(lines))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tpemu.client import profile as profile_mod
    from tpemu.client.login import status_lines

    prof = profile_mod.current(home(args))
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

    prof = profile_mod.current(home(args))
    if prof is None:
        print("Not logged in.")
        return 0
    profile_mod.remove(prof)
    print(f"Logged out {prof.username} from {prof.web_proxy_addr}.")
    return 0
