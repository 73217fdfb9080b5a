"""Database access fixtures: a proxy on port 0, a DatabaseService, and a stand-in tunnel registry.

:class:`LocalDialer` plays the reverse-tunnel registry's part (``TunnelRegistry.dial``): it hands
one end of a socketpair, as a parked transport, to ``DatabaseService.serve`` with the dial
request, exactly the interface the agent's tunnel client uses (a transport), and returns the other
end to the proxy the same way. User certificates are
issued by the proxy's bootstrap CA (which the proxy checks client certificates against when it
runs without an Auth Service), with Teleport identities in their subjects.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import parked
from tpemu import config, pki
from tpemu import identity as ident
from tpemu.agent.db_service import DatabaseService
from tpemu.proxy.decide import ListenerKind
from tpemu.proxy.service import ProxyService
from tpemu.wire.tunnel import DialRequest

EMULATED = [{"name": "pg", "protocol": "postgres"}, {"name": "my", "protocol": "mysql"},
            {"name": "mongo", "protocol": "mongodb"}, {"name": "cache", "protocol": "redis"}]


class LocalDialer:
    """A stand-in for ``TunnelRegistry``: dials ``DatabaseService.serve`` over a socketpair."""

    def __init__(self, service: DatabaseService) -> None:
        self.service = service
        self.requests: list[DialRequest] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.offline: set[str] = set()

    async def dial(self, request: DialRequest, timeout: float = 10.0) -> asyncio.Transport:
        self.requests.append(request)
        names = {d.name for d in self.service.databases}
        if request.name not in names:
            raise LookupError(f'no agent serves database "{request.name}"')
        if request.name in self.offline:
            raise ConnectionError(f'the agent serving database "{request.name}" is offline')
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        task = asyncio.ensure_future(self.service.serve(await parked(theirs), request))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return await parked(ours)  # type: ignore[no-any-return]


@dataclass
class DBCluster:
    proxy: ProxyService
    service: DatabaseService
    dialer: LocalDialer
    tmp: Path
    ca_key: Any
    ca_cert: Any
    certs: dict[str, tuple[Path, Path]] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.proxy.info.bound[ListenerKind.WEB].port

    def listener(self, kind: ListenerKind) -> int:
        return self.proxy.info.bound[kind].port

    @property
    def ca_path(self) -> Path:
        return self.proxy.tls_files.ca

    def user_cert(self, name: str, username: str = "alice", db_users: Iterable[str] = ("alice",),
                  db_names: Iterable[str] = ("app",), route: ident.RouteToDatabase | None = None) -> tuple[Path, Path]:
        """A user certificate (cert path, key path) with a Teleport identity, from the proxy's CA."""
        key = pki.generate_key()
        identity = ident.Identity(username, groups=("access",), database_users=tuple(db_users),
                                  database_names=tuple(db_names), teleport_cluster="tpemu.local",
                                  route_to_database=route or ident.RouteToDatabase())
        cert = pki.issue_cert(self.ca_cert, self.ca_key, key.public_key(), identity.subject(), server=False,
                              ttl=dt.timedelta(hours=1))
        cert_path, key_path = self.tmp / f"{name}.crt", self.tmp / f"{name}.key"
        cert_path.write_bytes(pki.cert_pem(cert))
        pki.write_private(key_path, pki.key_pem(key))
        self.certs[name] = (cert_path, key_path)
        return cert_path, key_path

    def route_cert(self, name: str, db: str, protocol: str, db_user: str = "alice", db_name: str = "",
                   **kw: Any) -> tuple[Path, Path]:
        return self.user_cert(name, route=ident.RouteToDatabase(db, protocol, db_user, db_name), **kw)

    def client_ctx(self, cert: tuple[Path, Path] | None, alpn: Iterable[str] = ()) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        if cert is not None:
            ctx.load_cert_chain(cert[0], cert[1])
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        return ctx


async def start_db_cluster(tmp: Path, databases: list[dict[str, Any]] | None = None,
                           **proxy: Any) -> DBCluster:
    data = tmp / "data"
    cfg = config.from_dict({"teleport": {"data_dir": str(data)},
                            "proxy_service": {"web_listen_addr": "127.0.0.1:0", **proxy},
                            "db_service": {"enabled": True, "databases": databases or EMULATED}})
    svc = ProxyService(cfg)
    await svc.start()
    service = DatabaseService(cfg.db_service.databases, connect_timeout=3.0)
    dialer = LocalDialer(service)
    svc.db_dialer = dialer
    from cryptography import x509

    ca_key = pki.load_key((data / "pki" / "ca.key").read_bytes())
    ca_cert = x509.load_pem_x509_certificate((data / "pki" / "ca.crt").read_bytes())
    return DBCluster(svc, service, dialer, tmp, ca_key, ca_cert)


@pytest.fixture
async def dbc(tmp_path: Path) -> AsyncIterator[DBCluster]:
    c = await start_db_cluster(tmp_path)
    try:
        yield c
    finally:
        await c.proxy.close()
        await c.service.close()
        for t in list(c.dialer.tasks):
            t.cancel()
        await asyncio.gather(*c.dialer.tasks, return_exceptions=True)
