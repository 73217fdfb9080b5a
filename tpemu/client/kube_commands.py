"""``tpemu kube …`` (and, with the Application Service, ``tpemu apps …``): argument parsing and
output for the client side of Kubernetes access (:mod:`tpemu.client.kube`). Registered by the CLI
with one call, :func:`register`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any


def _home(args: argparse.Namespace) -> Path:
    from tpemu.client import profile as profile_mod

    return Path(args.home).expanduser() if args.home else profile_mod.default_home()


def _run(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    from tpemu.client.kube import KubeError

    try:
        return asyncio.run(fn())
    except KubeError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_kube_ls(args: argparse.Namespace) -> int:
    from tpemu.client import kube

    def run() -> Coroutine[Any, Any, Any]:
        return kube.list_clusters(kube.current_profile(_home(args)))

    clusters = _run(run)
    if args.format == "json":
        print(json.dumps([{"name": c.name, "labels": c.labels, "hosts": list(c.hosts),
                           "last_heartbeat": c.last_heartbeat} for c in clusters], indent=2))
        return 0
    rows = [("Kube Cluster Name", "Labels", "Last heartbeat")]
    rows += [(c.name, ",".join(f"{k}={v}" for k, v in sorted(c.labels.items())), c.last_heartbeat) for c in clusters]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for i, row in enumerate(rows):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def cmd_kube_login(args: argparse.Namespace) -> int:
    from tpemu.client import kube

    path = kube.kubeconfig_path(args.kubeconfig)

    def run() -> Coroutine[Any, Any, Any]:
        return kube.kube_login(kube.current_profile(_home(args)), args.name, path)

    context, _ = _run(run)
    print(f"Logged into Kubernetes cluster {args.name!r}. Try 'kubectl version' to test the connection.")
    print(f"(kubeconfig {path}, context {context})")
    return 0


def register(sub: Any) -> None:
    """Add ``kube`` to the top-level sub-command parsers ``sub``."""
    def home_arg(s: argparse.ArgumentParser) -> None:
        s.add_argument("--home", help="profile folder (default $TPEMU_HOME or ~/.tpemu)")

    kube = sub.add_parser("kube", help="Kubernetes access (like tsh kube)")
    ksub = kube.add_subparsers(metavar="ACTION")
    s = ksub.add_parser("ls", help="list the cluster's Kubernetes clusters")
    s.add_argument("--format", choices=("text", "json"), default="text")
    home_arg(s)
    s.set_defaults(func=cmd_kube_ls)
    s = ksub.add_parser("login", help="get a certificate for a Kubernetes cluster and write a kubeconfig entry")
    s.add_argument("name")
    s.add_argument("--kubeconfig", help="kubeconfig to update (default: $KUBECONFIG, else ~/.kube/config)")
    home_arg(s)
    s.set_defaults(func=cmd_kube_login)
