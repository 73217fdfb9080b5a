"""``tpemu start`` without a config (``make run``): the all-in-one cluster runs the Kubernetes Service
(cluster ``emu``) and the Application Service (the emulated ``echo`` app) besides SSH and databases."""

from __future__ import annotations

import argparse

from tpemu import config
from tpemu.agent.kube.service import DEFAULT_CLUSTER
from tpemu.runner import apply_start_flags


def test_all_in_one_runs_kube_and_apps() -> None:
    cfg, roles = apply_start_flags(config.Config(), argparse.Namespace(), all_in_one=True)
    assert {"kube", "app"} <= set(roles)
    assert [(a.name, a.uri) for a in cfg.app_service.apps] == [("echo", "emulated-echo")]
    assert DEFAULT_CLUSTER == "emu" and not cfg.kubernetes_service.kube_cluster_name


def test_config_enables_them_by_section() -> None:
    cfg = config.from_dict({"kubernetes_service": {"enabled": True, "kube_cluster_name": "dev"},
                            "app_service": {"enabled": True, "debug_app": True},
                            "teleport": {"proxy_server": "127.0.0.1:3080"}, "ssh_service": {"enabled": False},
                            "auth_service": {"enabled": False}, "proxy_service": {"enabled": False}})
    cfg2, roles = apply_start_flags(cfg, argparse.Namespace(), all_in_one=False)
    assert roles == ("kube", "app") and cfg2.kubernetes_service.kube_cluster_name == "dev"
    assert cfg2.app_service.debug_app and not cfg2.app_service.apps
