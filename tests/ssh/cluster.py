"""An SSH test cluster in one process: Auth, a proxy, emulated nodes, a logged-in user.

Everything talks over real loopback sockets on port 0. Nodes join the Auth Service with a token
(their own key, host TLS and SSH certificates), fetch the user CA and heartbeat to ``/v1/nodes``,
as an agent does. The proxy reaches nodes through :class:`StandInRegistry`, which has the
interface of the reverse-tunnel registry (``dial(DialRequest) -> socket``): for a tunnelled
node it hands one end of a socket pair to ``SSHService.serve`` — exactly what the agent's tunnel
client will do with a dialed channel — and for a directly joined node it connects by TCP to the
node's ``listen_addr``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpemu import authclient, config
from tpemu import identity as ident
from tpemu.agent.ssh_service import SSHService
from tpemu.auth.service import AuthService
from tpemu.client import login as login_mod
from tpemu.client import profile as profile_mod
from tpemu.config import Addr
from tpemu.proxy.auth_routes import AuthLink
from tpemu.proxy.decide import ListenerKind
from tpemu.proxy.service import ProxyService
from tpemu.wire.tunnel import DialRequest

PASSWORD = "correct horse battery"
CLUSTER = "tpemu.local"


class StandInRegistry:
    """The reverse-tunnel registry's interface, connecting straight to in-process SSH services."""

    def __init__(self) -> None:
        self.services: dict[str, SSHService] = {}
        self.requests: list[DialRequest] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.offline: set[str] = set()

    def add(self, svc: SSHService) -> None:
        self.services[svc.server_id] = svc

    async def dial(self, request: DialRequest, timeout: float = 10.0) -> socket.socket:
        self.requests.append(request)
        svc = self.services.get(request.server_id)
        if svc is None or request.server_id in self.offline:
            raise ConnectionError(f"agent {request.server_id} is offline (no reverse tunnel)")
        if not svc.use_tunnel:
            assert svc.bound is not None
            loop = asyncio.get_running_loop()
            sock = socket.socket()
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (svc.bound.host, svc.bound.port)), timeout)
            return sock
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        task = asyncio.get_running_loop().create_task(svc.serve(theirs, request))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return ours

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


@dataclass
class SSHCluster:
    auth: AuthService
    proxy: ProxyService
    tmp: Path
    registry: StandInRegistry
    nodes: dict[str, SSHService] = field(default_factory=dict)
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

    async def add_node(self, name: str, *, direct: bool = False, labels: dict[str, str] | None = None,
                       port_forwarding: bool = False, announce: bool = True, host_id: str = "") -> SSHService:
        """Join a node (role Node) and start its SSH Service; ``direct``: listen on a port instead of
        being reached through a (stand-in) tunnel."""
        token = await self.auth.mint_token((ident.ROLE_NODE,), ttl=300.0, single_use=True)
        host_id = host_id or f"{name}-{len(self.nodes)}-uuid"
        identity = await authclient.join(self.auth_addr, token, ident.ROLE_NODE, host_id, name, CLUSTER,
                                         ca_pins=(self.auth.ca_pin,))
        files = await asyncio.to_thread(identity.save, self.tmp / "nodes" / host_id)
        client = authclient.AuthClient.with_identity(self.auth_addr, CLUSTER, files)
        keys = await authclient.fetch_user_ca_ssh_keys(client)
        svc = SSHService(identity, keys, nodename=name, labels=labels, port_forwarding=port_forwarding,
                         use_tunnel=not direct)
        if direct:
            await svc.listen(Addr("127.0.0.1", 0))
        self.registry.add(svc)
        if announce:
            await svc.announce(client)
        self.nodes[name] = svc
        return svc

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
        for svc in self.nodes.values():
            await svc.close()
        await self.registry.close()
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
                                             "proxy_listener_mode": mode},
                            "proxy_service": proxy_cfg})
    auth = AuthService(cfg)
    await auth.start()
    assert auth.addr is not None
    link = AuthLink(auth.addr, ca_pins=(auth.ca_pin,), mint=lambda: auth.mint_token(("Proxy",), 300.0))
    svc = ProxyService(cfg, auth=link)
    await svc.start()
    assert svc.ssh_proxy is not None, "the SSH proxy did not start"
    registry = StandInRegistry()
    svc.ssh_proxy.dialer = registry
    cluster = SSHCluster(auth, svc, tmp, registry)
    try:
        for name in nodes:
            await cluster.add_node(name)
        if user:
            await cluster.add_user()
            await cluster.login()
        yield cluster
    finally:
        await cluster.close()
