"""``tpemu kube ls|login`` (like ``tsh kube``): the client side of Kubernetes access."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from tpemu.cli.common import Subparsers, command, home

ORDER = 75


def register(sub: Subparsers) -> None:
    def home_arg(s: argparse.ArgumentParser) -> None:
        s.add_argument("--home", help="profile folder (default $TPEMU_HOME or ~/.tpemu)")

    kube = command(sub, "kube", "Kubernetes access (like tsh kube)", (
        "tpemu kube ls", "tpemu kube login emu && kubectl get ns"))
    ksub = kube.add_subparsers(metavar="ACTION", help="ls or login")
    s = command(ksub, "ls", "list the cluster's Kubernetes clusters", ("tpemu kube ls", "tpemu kube ls --format json"))
    s.add_argument("--format", choices=("text", "json"), default="text")
    home_arg(s)
    s.set_defaults(func=cmd_kube_ls)
    s = command(ksub, "login", "get a certificate for a Kubernetes cluster and write its kubeconfig entry", (
        "tpemu kube login emu", "tpemu kube login emu --kubeconfig ./kubeconfig"))
    s.add_argument("name", help="the Kubernetes cluster's name (as tpemu kube ls shows it)")
    s.add_argument("--kubeconfig", help="kubeconfig to update (default: $KUBECONFIG, else ~/.kube/config)")
    home_arg(s)
    s.set_defaults(func=cmd_kube_login)


def _call(fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(fn())


def cmd_kube_ls(args: argparse.Namespace) -> int:
    from tpemu.client import kube
    from tpemu.client.ssh import heartbeat_age

    prof = _call(_profile(args))
    clusters = _call(lambda: kube.list_clusters(prof))
    if args.format == "json":
        print(json.dumps([{"name": c.name, "labels": c.labels, "hosts": list(c.hosts),
                           "last_heartbeat": c.last_heartbeat} for c in clusters], indent=2))
        return 0
    print(f"{'Kube Cluster Name':<24} {'Labels':<24} {'Last heartbeat':<15}")
    for c in clusters:
        labels = ",".join(f"{k}={v}" for k, v in sorted(c.labels.items()))
        print(f"{c.name:<24} {labels or '-':<24} {heartbeat_age(c.last_heartbeat):<15}")
    return 0


def _profile(args: argparse.Namespace) -> Callable[[], Coroutine[Any, Any, Any]]:
    from tpemu.client import kube

    async def get() -> Any:
        return kube.current_profile(home(args))

    return get


def cmd_kube_login(args: argparse.Namespace) -> int:
    from tpemu.client import kube

    path = kube.kubeconfig_path(args.kubeconfig)
    prof = _call(_profile(args))
    context, _ = _call(lambda: kube.kube_login(prof, args.name, path))
    print(f"Logged into Kubernetes cluster {args.name!r}. Try 'kubectl version' to test the connection.")
    print(f"(kubeconfig {path}, context {context})")
    return 0
