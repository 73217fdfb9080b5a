"""An SSH test cluster in one process: Auth, a proxy, agents running the SSH service, a logged-in user.

Everything talks over real loopback sockets on port 0. Nodes are real agent processes
(:class:`tpemu.agent.process.AgentProcess` with the ``node`` role of ``tpemu.agent.services``):
they join with a token — through the proxy, holding a reverse tunnel, or directly at the Auth
Service, listening on their own port — and heartbeat to ``/v1/nodes``. The proxy reaches them
through its real :class:`~tpemu.proxy.tunnels.TunnelRegistry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpemu import config
from tpemu.agent.process import AgentOptions, AgentProcess
from tpemu.agent.services import MAKERS
from tpemu.agent.ssh_service import SSHService
from tpemu.auth.service import AuthService
from tpemu.client import login as login_mod
from tpemu.client import profile as profile_mod
from tpemu.config import Addr
from tpemu.proxy import tunnels
from tpemu.proxy.auth_routes import AuthLink
from tpemu.proxy.decide import ListenerKind
from tpemu.proxy.service import ProxyService

PASSWORD = "correct horse battery"
CLUSTER = "tpemu.local"


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class SSHCluster:
    auth: AuthService
    proxy: ProxyService
    tmp: Path
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    home: Path | None = None

    @property
    def web(self) -> Addr:
        return self.proxy.info.bound[ListenerKind.WEB]

    @property
    def ssh_listener(self) -> Addr | None:
        return self.proxy.info.bound.get(ListenerKind.SSH)

    @property
    def ca(self) -> Path:
        return self.tmp / "data" / "pki" / "ca.crt"

    @property
    def auth_addr(self) -> Addr:
        assert self.auth.addr is not None
        return self.auth.addr

    def profile(self) -> profile_mod.Profile:
        assert self.home is not None
        prof = profile_mod.current(self.home)
        assert prof is not None
        return prof

    def service(self, name: str) -> SSHService:
        service = self.agents[name].offers["node"][0].service
        assert isinstance(service, SSHService)
        return service

    def host_id(self, name: str) -> str:
        return self.agents[name].contexts["node"].identity.host_id

    async def add_node(self, name: str, *, direct: bool = False, labels: dict[str, str] | None = None,
                       port_forwarding: bool = False) -> AgentProcess:
        """Start an agent with the ``node`` role: through the proxy (reverse tunnel), or ``direct``
        (joined at the Auth Service, listening on a port of its own)."""
        token = await self.auth.mint_token(("Node",), ttl=300.0, single_use=True)
        cfg = config.from_dict({
            "teleport": {"data_dir": str(self.tmp / "agents" / f"{name}-{len(self.agents)}"), "nodename": name},
            "auth_service": {"enabled": False, "keep_alive_interval": "1s"},
            "proxy_service": {"enabled": False},
            "ssh_service": {"listen_addr": "127.0.0.1:0", "labels": labels or {}, "port_forwarding": port_forwarding}})
        opts = AgentOptions(("node",), proxy_server=None if direct else self.web,
                            auth_server=self.auth_addr if direct else None, token=token,
                            ca_pins=(self.auth.ca_pin,), nodename=name)
        agent = AgentProcess(cfg, opts, MAKERS)
        await agent.start()
        self.agents[name if name not in self.agents else f"{name}-{len(self.agents)}"] = agent
        await agent.wait_connected()
        host_id = agent.contexts["node"].identity.host_id
        reg = self.proxy.tunnels
        if direct:
            await wait_for(lambda: host_id in reg.direct, what=f"the proxy to see direct node {name}")
        else:
            await wait_for(lambda: any(a.host_id == host_id and a.transport_ready and r.name == name
                                       for a, r in reg.resources("node")), what=f"the tunnel of {name}")
        return agent

    async def add_user(self, name: str = "alice", logins: tuple[str, ...] = ("root", "alice")) -> None:
        assert self.auth.server is not None
        body = {"user": {"kind": "user", "version": "v2", "metadata": {"name": name},
                         "spec": {"roles": ["access"], "traits": {"logins": list(logins)}}}, "password": PASSWORD}
        await self.auth.server.upsert_user(body, create_only=False)

    async def login(self, name: str = "alice", home: Path | None = None) -> profile_mod.Profile:
        home = home or self.tmp / "home"
        trust = login_mod.Trust(self.ca)
        prof = await asyncio.to_thread(login_mod.login, home, self.web, name, PASSWORD, 3600.0, trust)
        self.home = home
        return prof

    async def close(self) -> None:
        for agent in self.agents.values():
            for offer in agent.offers.get("node", []):
                if isinstance(offer.service, SSHService):
                    await offer.service.close()
            await agent.close()
        await self.proxy.close()
        await self.auth.close()


@contextlib.asynccontextmanager
async def ssh_cluster(tmp: Path, mode: str = "multiplex", nodes: tuple[str, ...] = ("node1",),
                      user: bool = True, **proxy: Any) -> AsyncIterator[SSHCluster]:
    """Auth + proxy (``mode``: multiplex or separate) + tunnelled nodes + alice logged in."""
    proxy_cfg: dict[str, Any] = {"web_listen_addr": "127.0.0.1:0", **proxy}
    if mode == "separate":
        proxy_cfg.setdefault("listen_addr", "127.0.0.1:0")
        proxy_cfg.setdefault("tunnel_listen_addr", "127.0.0.1:0")
    cfg = config.from_dict({"teleport": {"data_dir": str(tmp / "data"), "nodename": "proxyhost"},
                            "auth_service": {"listen_addr": "127.0.0.1:0", "cluster_name": CLUSTER,
                                             "proxy_listener_mode": mode, "keep_alive_interval": "1s"},
                            "proxy_service": proxy_cfg})
    auth = AuthService(cfg)
    await auth.start()
    assert auth.addr is not None
    link = AuthLink(auth.addr, ca_pins=(auth.ca_pin,), mint=lambda: auth.mint_token(("Proxy",), 300.0))
    saved_poll = tunnels.DIRECT_POLL
    tunnels.DIRECT_POLL = 0.2  # directly joined nodes are seen within a test's patience
    svc = ProxyService(cfg, auth=link)
    cluster = SSHCluster(auth, svc, tmp)
    try:
        await svc.start()
        assert svc.ssh_proxy is not None, "the SSH proxy did not start"
        for name in nodes:
            await cluster.add_node(name)
        if user:
            await cluster.add_user()
            await cluster.login()
        yield cluster
    finally:
        tunnels.DIRECT_POLL = saved_poll
        await cluster.close()
