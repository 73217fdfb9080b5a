"""An in-process cluster with a Kubernetes Service agent (and an Application Service) for the kube and
app tests: Auth + proxy + agent on port 0, users logged in with the real CLI (subprocesses).

``python -m tests.kube_env DIR`` runs one and prints how to use it (for trying kubectl by hand).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpemu import config
from tpemu.agent.process import AgentOptions, AgentProcess
from tpemu.agent.services import MAKERS
from tpemu.auth.service import AuthService
from tpemu.client.admin import admin_client
from tpemu.proxy.auth_routes import AuthLink
from tpemu.proxy.decide import ListenerKind
from tpemu.proxy.service import ProxyService

PASSWORD = "correct horse battery"
CLUSTER = "tpemu.local"
KUBE = "emu"
#: alice may do everything (system:masters), bob is only a Kubernetes user (Kubernetes' own
#: Forbidden), carol has no Kubernetes access at all (Teleport's refusal).
USERS = {"alice": {"kubernetes_groups": ["system:masters"]}, "bob": {"kubernetes_users": ["bob"]}, "carol": {}}


@dataclass
class KubeEnv:
    auth: AuthService
    proxy: ProxyService
    agent: AgentProcess
    data: Path
    tmp: Path
    homes: dict[str, Path] = field(default_factory=dict)

    @property
    def web(self) -> str:
        return str(self.proxy.info.bound[ListenerKind.WEB])

    def kubeconfig(self, user: str) -> Path:
        return self.tmp / f"kubeconfig-{user}"

    def env(self, user: str) -> dict[str, str]:
        return {**os.environ, "TPEMU_HOME": str(self.homes[user]), "KUBECONFIG": str(self.kubeconfig(user)),
                "NO_PROXY": "*", "HOME": str(self.tmp / f"home-{user}")}

    async def run(self, user: str, *argv: str, timeout: float = 60, stdin: bytes | None = None) -> tuple[int, str, str]:
        """Run a command (tpemu, kubectl, python …) as ``user``, in a subprocess."""
        exe = str(Path(sys.executable).with_name("tpemu")) if argv[0] == "tpemu" else argv[0]
        proc = await asyncio.create_subprocess_exec(exe, *argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                    stdin=subprocess.PIPE if stdin is not None else
                                                    subprocess.DEVNULL, env=self.env(user))
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def login(self, user: str) -> None:
        self.homes[user] = self.tmp / f"tsh-{user}"
        (self.tmp / f"home-{user}").mkdir(exist_ok=True)
        code, _, err = await self.run(user, "tpemu", "login", "--proxy", self.web, "--user", user,
                                      "--password-file", str(self.tmp / "pw"), "--ca",
                                      str(self.data / "pki" / "ca.crt"))
        assert code == 0, err


async def start(tmp: Path, separate: bool = False, apps: bool = False,
                users: dict[str, dict[str, Any]] | None = None,
                app_list: list[dict[str, Any]] | None = None, direct: bool = False,
                kubeconfig: Path | None = None, pod_ports: list[dict[str, Any]] | None = None) -> KubeEnv:
    """``direct``: the Kubernetes Service joins the Auth Service directly and listens on its own
    port (``kubernetes_service.listen_addr``) instead of holding a reverse tunnel. ``pod_ports``:
    ``tpemu.kubernetes_service.pod_ports`` of the agent (what pods serve to port-forward)."""
    data = tmp / "data"
    proxy_cfg: dict[str, Any] = {"web_listen_addr": "127.0.0.1:0"}
    auth_cfg: dict[str, Any] = {"listen_addr": "127.0.0.1:0", "cluster_name": CLUSTER, "keep_alive_interval": "1s"}
    if separate:
        auth_cfg["proxy_listener_mode"] = "separate"
        proxy_cfg.update(listen_addr="127.0.0.1:0", tunnel_listen_addr="127.0.0.1:0", kube_listen_addr="127.0.0.1:0")
    cfg = config.from_dict({"teleport": {"data_dir": str(data)}, "auth_service": auth_cfg,
                            "proxy_service": proxy_cfg})
    auth = AuthService(cfg)
    await auth.start()
    assert auth.addr is not None
    link = AuthLink(auth.addr, ca_pins=(auth.ca_pin,), mint=lambda: auth.mint_token(("Proxy",), 300.0))
    proxy = ProxyService(cfg, auth=link)
    await proxy.start()
    admin = admin_client(data)
    roles = ("kube", "app") if apps else ("kube",)
    agent_doc: dict[str, Any] = {"teleport": {"data_dir": str(tmp / "agent")},
                                 "auth_service": {"enabled": False, "keep_alive_interval": "1s"},
                                 "kubernetes_service": {"enabled": True, "kube_cluster_name": KUBE,
                                                        **({"listen_addr": "127.0.0.1:0"} if direct else {}),
                                                        **({"kubeconfig_file": str(kubeconfig)} if kubeconfig
                                                           else {})}}
    if pod_ports:
        agent_doc["tpemu"] = {"kubernetes_service": {"pod_ports": pod_ports}}
    if apps:
        agent_doc["app_service"] = {"enabled": True, "debug_app": True,
                                    "apps": app_list or [{"name": "echo", "uri": "emulated-echo"}]}
    agent_cfg = config.from_dict(agent_doc)
    token = await auth.mint_token(tuple(r.capitalize() for r in roles), 300.0, single_use=False)
    web = proxy.info.bound[ListenerKind.WEB]
    where: dict[str, Any] = {"auth_server": auth.addr} if direct else {"proxy_server": web}
    agent = AgentProcess(agent_cfg, AgentOptions(roles, token=token, ca_pins=(auth.ca_pin,), nodename="kubeagent",
                                                 **where), {r: MAKERS[r] for r in roles})
    await agent.start()
    await agent.wait_connected()
    async with asyncio.timeout(10):  # the tunnel heartbeat and the presence in Auth
        while (not direct and KUBE not in {r.name for _, r in proxy.tunnels.resources("kube")}) or KUBE not in {
                item["metadata"]["name"] for item in (await admin.call("GET", "/v1/kube_servers"))["items"]}:
            await asyncio.sleep(0.05)
        while apps and not (await admin.call("GET", "/v1/app_servers"))["items"]:
            await asyncio.sleep(0.05)
    env = KubeEnv(auth, proxy, agent, data, tmp)
    (tmp / "pw").write_text(PASSWORD)
    for name, given in (users if users is not None else USERS).items():
        traits = {k: v for k, v in given.items() if k != "roles"}  # "roles": the user's roles (default access)
        user = {"kind": "user", "version": "v2", "metadata": {"name": name},
                "spec": {"roles": given.get("roles", ["access"]), "traits": {"logins": [name], **traits}}}
        await admin.call("POST", "/v1/users", {"user": user, "password": PASSWORD})
        await env.login(name)
    return env


async def stop(env: KubeEnv) -> None:
    await env.agent.close()
    await env.proxy.close()
    await env.auth.close()


async def _main(folder: Path) -> None:
    # --pod-port 80=127.0.0.1:8080: what the pods serve to kubectl port-forward.
    ports = [{"port": int(a.partition("=")[0]), "target": a.partition("=")[2]}
             for flag, a in zip(sys.argv, sys.argv[1:], strict=False) if flag == "--pod-port"]
    env = await start(folder, separate="--separate" in sys.argv, apps="--apps" in sys.argv, pod_ports=ports)
    _, out, err = await env.run("alice", "tpemu", "kube", "login", KUBE)
    print(out, err)
    print(f"export TPEMU_HOME={env.homes['alice']} KUBECONFIG={env.kubeconfig('alice')} "
          f"HOME={env.tmp / 'home-alice'}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO if "-v" in sys.argv else logging.WARNING)
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    asyncio.run(_main(target))
