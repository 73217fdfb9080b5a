"""An in-process cluster for tests: Auth Service + Proxy Service on loopback ports from 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpemu import config
from tpemu.auth.service import AuthService
from tpemu.proxy.auth_routes import AuthLink
from tpemu.proxy.decide import ListenerKind
from tpemu.proxy.service import ProxyService


@dataclass
class Cluster:
    auth: AuthService
    proxy: ProxyService
    data: Path
    cfg: config.Config

    @property
    def web(self) -> config.Addr:
        return self.proxy.info.bound[ListenerKind.WEB]

    def listener(self, kind: ListenerKind) -> config.Addr:
        return self.proxy.info.bound[kind]

    async def token(self, *roles: str, ttl: float = 300.0, single_use: bool = False) -> str:
        return await self.auth.mint_token(roles, ttl=ttl, single_use=single_use)


def cluster_config(data: Path, separate: bool = False, heartbeat: str = "1s", proxy_port: int = 0,
                   **proxy: Any) -> config.Config:
    auth: dict[str, Any] = {"listen_addr": "127.0.0.1:0", "keep_alive_interval": heartbeat,
                            "keep_alive_count_max": 3}
    ps: dict[str, Any] = {"web_listen_addr": f"127.0.0.1:{proxy_port}", **proxy}
    if separate:
        auth["proxy_listener_mode"] = "separate"
        ps.setdefault("listen_addr", "127.0.0.1:0")
        ps.setdefault("tunnel_listen_addr", "127.0.0.1:0")
    return config.from_dict({"teleport": {"data_dir": str(data)}, "auth_service": auth, "proxy_service": ps})


@asynccontextmanager
async def running_cluster(data: Path, separate: bool = False, **proxy: Any) -> AsyncIterator[Cluster]:
    cfg = cluster_config(data, separate, **proxy)
    auth = AuthService(cfg)
    await auth.start()
    assert auth.addr is not None
    link = AuthLink(auth.addr, ca_pins=(auth.ca_pin,),
                    mint=lambda: auth.mint_token(("Proxy",), ttl=300.0, single_use=True))
    proxy_svc = ProxyService(cfg, auth=link)
    try:
        await proxy_svc.start()
        yield Cluster(auth, proxy_svc, data, cfg)
    finally:
        await proxy_svc.close()
        await auth.close()
