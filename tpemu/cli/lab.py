"""``tpemu lab up|down|status``: the seed's networks in Linux network namespaces (:mod:`tpemu.lab`)."""

from __future__ import annotations

import argparse

from tpemu.cli.common import CLIError, Subparsers, command

ORDER = 90


def register(sub: Subparsers) -> None:
    s = command(sub, "lab", "the seed's networks on this machine (root; network namespaces)", (
        "sudo tpemu lab up        # build it and print the map and commands to try",
        "sudo tpemu lab status",
        "sudo tpemu lab down      # remove every namespace, link and rule it made",
        "tpemu lab plan           # the commands 'up' runs, without running them"))
    s.add_argument("action", nargs="?", choices=("up", "down", "status", "plan", "map"), default="map",
                   help="up, down, status, plan (print the commands), map (default: print the map)")
    s.set_defaults(func=cmd_lab)


def cmd_lab(args: argparse.Namespace) -> int:
    from tpemu import lab

    try:
        if args.action == "up":
            with lab.exclusive(timeout=30):
                lab.up()
            print(lab.describe())
        elif args.action == "down":
            with lab.exclusive(timeout=30):
                removed = lab.down()
            print(f"removed {len(removed)} namespaces" + (f": {', '.join(removed)}" if removed else ""))
        elif args.action == "status":
            print(lab.status_text())
        elif args.action == "plan":
            for cmd in lab.plan():
                print(" ".join(cmd))
            print(lab.ruleset())
        else:
            print(lab.describe())
    except lab.LabError as exc:
        raise CLIError(str(exc)) from None
    return 0
