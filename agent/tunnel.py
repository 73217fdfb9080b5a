"""The agent's end of a reverse tunnel: dial the proxy, hold the tunnel, serve dial requests (glue).

The other end, and the protocol, are described in ``tpemu.proxy.tunnels``. This side:

1. dials the proxy through :func:`tpemu.net.dial.dial` — so ``HTTPS_PROXY``/``HTTP_PROXY``/
   ``NO_PROXY`` apply exactly as to every other dial — either to the web port with TLS and ALPN
   ``teleport-reversetunnelv2``, ``teleport-reversetunnel`` (TLS routing; the proxy's certificate
   is checked against the cluster's host CA), or to ``tunnel_listen_addr`` in plain SSH;
2. logs in as ``<host_id>.<cluster>`` with SSH host-based authentication, presenting its host
   certificate, and checks the proxy's SSH host certificate against the host CA;
3. asks for the ``teleport-transport`` pseudo-listener, answers each channel's
   :class:`~tpemu.wire.tunnel.DialRequest` (finding the service; refusing with a reason) and hands
   the service a plain socket bridged to the channel;
4. sends a :class:`~tpemu.wire.tunnel.Heartbeat` (what it serves) every heartbeat interval on the
   ``teleport-heartbeat`` subsystem;
5. when the tunnel drops (proxy restart, network), reconnects with jittered exponential backoff
   (``min_backoff`` doubling up to ``max_backoff``, each wait drawn uniformly from the upper half),
   and starts again from 1 after a tunnel that stayed up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncssh

from tpemu import TELEPORT_VERSION
from tpemu.authclient import HostIdentity
from tpemu.config import Addr
from tpemu.identity import host_fqdn
from tpemu.net.channel_bridge import FramedChannel
from tpemu.net.dial import DialError, SSHTunnel
from tpemu.net.proxyenv import ProxySettings
from tpemu.wire import alpn
from tpemu.wire import tunnel as tw

log = logging.getLogger(__name__)



class Service(Protocol):
    """Serves one connection that arrived through the tunnel, on a connected socket."""

    async def serve(self, sock: socket.socket, request: tw.DialRequest) -> None: ...


@dataclass
class Offer:
    """A resource this agent announces, and the service that serves it."""

    resource: tw.Resource
    service: Service
    #: Other names a dial request may use for it (host id, ``<host_id>.<cluster>``, ``@local-node``).
    aliases: tuple[str, ...] = ()


@dataclass
class TunnelTarget:
    """Where to dial the proxy: the web port with TLS routing, or the plain SSH tunnel port."""

    addr: Addr
    tls_routing: bool
    server_name: str = ""


@dataclass
class TunnelState:
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    attempts: int = 0
    connects: int = 0
    last_error: str = ""


class TunnelAgent:
    """One reverse tunnel (Teleport runs one per service of an agent; so does tpemu)."""

    def __init__(self, identity: HostIdentity, target: TunnelTarget, offers: Sequence[Offer], *,
                 hostname: str, proxy: ProxySettings | None = None, heartbeat: float = 5.0, missed: int = 3,
                 min_backoff: float = 0.5, max_backoff: float = 10.0, resolve: Callable[[], TunnelTarget] | None = None,
                 name: str = "tunnel") -> None:
        self.identity = identity
        self.target = target
        self.offers = list(offers)
        self.hostname = hostname
        self.proxy = proxy
        self.heartbeat = heartbeat
        self.missed = missed
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.resolve = resolve
        self.name = name
        self.state = TunnelState()
        self.fqdn = host_fqdn(identity.host_id, identity.cluster_name)
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._key = asyncssh.import_private_key(identity.key_pem)
        self._cert = asyncssh.import_certificate(identity.ssh_cert)
        lines = [b"@cert-authority * " + k.strip() for k in identity.ssh_ca_keys]
        self._known = asyncssh.import_known_hosts(b"\n".join(lines).decode())
        self._served: set[asyncio.Task[None]] = set()

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            self._conn.close()
        for task in list(self._served):
            task.cancel()

    async def _run(self) -> None:
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self._connect_and_serve()
                reason = "closed by the proxy"
            except (asyncssh.Error, OSError, DialError, TimeoutError, ssl.SSLError) as exc:
                reason = exc.reason if isinstance(exc, asyncssh.Error) else (str(exc) or type(exc).__name__)
            self.state.connected.clear()
            self.state.last_error = reason
            if time.monotonic() - started > 2 * self.max_backoff:
                attempt = 0  # it was up for a while: start the backoff again from the bottom
            ceiling = min(self.max_backoff, self.min_backoff * (2 ** attempt))
            delay = random.uniform(ceiling / 2, ceiling)
            attempt += 1
            self.state.attempts += 1
            log.warning("%s to %s: %s; reconnecting in %.1fs (attempt %d)", self.name, self.target.addr, reason,
                        delay, attempt)
            await asyncio.sleep(delay)
            if self.resolve is not None:
                with contextlib.suppress(Exception):
                    self.target = self.resolve()

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cadata=self.identity.ca_pems.decode())
        ctx.set_alpn_protocols([alpn.REVERSE_TUNNEL_V2, alpn.REVERSE_TUNNEL])
        return ctx

    async def _connect_and_serve(self) -> None:
        t = self.target
        ctx = self._ssl_context() if t.tls_routing else None
        tunnel = SSHTunnel(t.addr.host, t.addr.port, ssl_context=ctx,
                           server_hostname=t.server_name or t.addr.host, proxy=self.proxy, timeout=15.0)
        async with asyncssh.connect(
                t.addr.host, t.addr.port, tunnel=tunnel, username=self.fqdn, client_username=self.fqdn,
                client_host=self.fqdn, client_host_keys=[(self._key, self._cert)], client_keys=None,
                preferred_auth="hostbased", known_hosts=self._known, agent_path=None, config=None,
                keepalive_interval=self.heartbeat, keepalive_count_max=self.missed, login_timeout=15.0,
                # AES-GCM first: asyncssh's ChaCha20 builds cipher state per packet (measured by the
                # SSH work: 100 MB through proxy and tunnel 5.7 s with ChaCha20, 3.3 s with AES-GCM).
                encryption_algs=["aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
                                 "chacha20-poly1305@openssh.com", "aes128-ctr"],
                connect_timeout=20.0, client_version="Teleport") as conn:
            self._conn = conn
            await conn.create_server(self._on_channel, tw.CHANNEL_TRANSPORT, 0, encoding=None)
            writer, _, _ = await conn.open_session(subsystem=tw.CHANNEL_HEARTBEAT, encoding=None)
            self.state.connects += 1
            self.state.connected.set()
            log.info("%s to %s up (%s, as %s): serving %s", self.name, t.addr,
                     "TLS routing" if t.tls_routing else "SSH tunnel port", self.fqdn,
                     ", ".join(f"{o.resource.kind} {o.resource.name}" for o in self.offers) or "nothing")
            hb = tw.Heartbeat(self.identity.host_id, self.hostname, TELEPORT_VERSION,
                              tuple(o.resource for o in self.offers))
            closed = asyncio.ensure_future(conn.wait_closed())
            try:
                while not closed.done():
                    writer.write(hb.encode())
                    await asyncio.wait({closed}, timeout=self.heartbeat)
            finally:
                closed.cancel()
                self._conn = None

    # -- dial requests -----------------------------------------------------------------------------

    def _on_channel(self, orig_host: str, orig_port: int) -> FramedChannel:
        return FramedChannel(on_frame=self._on_dial_request)

    def _on_dial_request(self, session: FramedChannel, obj: dict[str, Any], rest: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(session, obj, rest))
        self._served.add(task)
        task.add_done_callback(self._served.discard)

    async def _handle(self, session: FramedChannel, obj: dict[str, Any], rest: bytes) -> None:
        try:
            request = tw.DialRequest.from_json(obj)
        except tw.TunnelProtocolError as exc:
            log.warning("%s: bad dial request from the proxy: %s", self.name, exc)
            session.write(tw.DialResponse(False, f"bad dial request: {exc}").encode())
            session.close()
            return
        offer, why = self._find(request)
        if offer is None:
            log.warning("%s: dial request for %s refused: %s", self.name, _describe(request), why)
            session.write(tw.DialResponse(False, why).encode())
            session.close()
            return
        session.write(tw.DialResponse(True).encode())
        sock = await session.attach(rest)
        log.info("%s: %s from %s → %s %s", self.name, request.conn_type, request.client_src_addr or "?",
                 offer.resource.kind, offer.resource.name)
        try:
            await offer.service.serve(sock, request)
        except Exception:
            log.exception("%s: service %s %s failed", self.name, offer.resource.kind, offer.resource.name)
        finally:
            sock.close()

    def _find(self, request: tw.DialRequest) -> tuple[Offer | None, str]:
        if request.conn_type in (tw.DATABASE, "kube", "app"):
            name = request.name or request.address
            for offer in self.offers:
                if offer.resource.kind == request.conn_type and offer.resource.name == name:
                    return offer, ""
            what = {tw.DATABASE: "database", "kube": "kubernetes cluster", "app": "app"}[request.conn_type]
            return None, f"this agent ({self.hostname}) does not serve {what} {name!r}"
        wanted = {request.address.rsplit(":", 1)[0] if request.address else "", request.server_id}
        wanted.discard("")
        for offer in self.offers:
            if offer.resource.kind != request.conn_type:
                continue
            known = {offer.resource.name, *offer.aliases}
            if offer.resource.kind == tw.NODE:
                known |= {self.identity.host_id, self.fqdn, tw.LOCAL_NODE,
                          f"{offer.resource.name}.{self.identity.cluster_name}"}
            if not wanted or wanted & known:
                return offer, ""
        return None, (f"this agent ({self.hostname}) does not serve {request.conn_type} "
                      f"{request.address or request.server_id!r}")


def _describe(request: tw.DialRequest) -> str:
    return f"{request.conn_type} {request.name or request.address or request.server_id!r}"
