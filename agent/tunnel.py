"""The agent's end of a reverse tunnel: dial the proxy, hold the tunnel, serve dial requests (glue).

The other end, and the protocol, are described in ``tpemu.proxy.tunnels`` (Teleport's
``lib/reversetunnel/agent.go`` and ``transport.go`` are followed here). This side:

1. dials the proxy through :func:`tpemu.net.dial.dial` — so ``HTTPS_PROXY``/``HTTP_PROXY``/
   ``NO_PROXY`` apply exactly as to every other dial — either to the web port with TLS and ALPN
   ``teleport-reversetunnelv2``, ``teleport-reversetunnel`` (TLS routing; the proxy's certificate
   is checked against the cluster's host CA), or to ``tunnel_listen_addr`` in plain SSH; with TLS
   routing behind a layer-7 load balancer (tsh's test dial says so), that TLS runs inside the ALPN
   connection upgrade (:mod:`tpemu.net.conn_upgrade`);
2. logs in as ``<host_id>.<cluster>`` with SSH publickey auth presenting its host certificate,
   and checks the proxy's SSH host certificate against the host CA;
3. opens a ``teleport-heartbeat`` channel and sends a ``ping`` request at once, then every
   heartbeat interval (payload: the time, RFC 3339), plus tpemu's ``resources@tpemu`` request
   saying what it serves; answers ``x-teleport-version``; accepts ``teleport-discovery``;
4. accepts ``teleport-transport`` channels: one space on stderr, then the
   ``teleport-transport-dial`` request (:func:`tpemu.wire.tunnel.parse_dial_payload`); it finds the
   service, refuses with "connection rejected: …" on stderr and a false reply, or replies true and
   hands the service the channel itself as a parked asyncio transport
   (:class:`~tpemu.net.channel.ChannelTransport`: no socket in between);
5. when the tunnel drops (proxy restart, network), reconnects with jittered exponential backoff
   (``min_backoff`` doubling up to ``max_backoff``, each wait drawn uniformly from the upper half),
   and starts again from 1 after a tunnel that stayed up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import asyncssh

from tpemu import TELEPORT_VERSION
from tpemu.authclient import HostIdentity
from tpemu.config import Addr
from tpemu.identity import host_fqdn
from tpemu.net import conn_upgrade
from tpemu.net import teleport_ssh as tssh
from tpemu.net.channel import ChannelTransport
from tpemu.net.dial import DialError, SSHTunnel
from tpemu.net.proxyenv import ProxySettings
from tpemu.net.tls import new_context
from tpemu.wire import alpn
from tpemu.wire import tunnel as tw
from tpemu.wire.errors import WireError

log = logging.getLogger(__name__)



class Service(Protocol):
    """Serves one connection that arrived through the tunnel, on its channel (a parked transport).

    The service owns the transport: it closes it (directly or through the Pipe it joins it to).
    """

    async def serve(self, transport: asyncio.Transport, request: tw.DialRequest) -> None: ...


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
    #: The last tunnel went through the ALPN connection upgrade (a layer-7 load balancer in front).
    upgraded: bool = False


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
        ctx = new_context(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cadata=self.identity.ca_pems.decode())
        ctx.set_alpn_protocols([alpn.REVERSE_TUNNEL_V2, alpn.REVERSE_TUNNEL])
        return ctx

    async def _connect_and_serve(self) -> None:
        t = self.target
        ctx = self._ssl_context() if t.tls_routing else None
        server_name = t.server_name or t.addr.host
        tunnel: SSHTunnel | conn_upgrade.UpgradedSSHTunnel = SSHTunnel(
            t.addr.host, t.addr.port, ssl_context=ctx, server_hostname=server_name, proxy=self.proxy, timeout=15.0,
            lean_tls=True)  # every tunnelled byte crosses this TLS: tpemu.net.tls_link's records cost less CPU
        self.state.upgraded = False
        if ctx is not None:
            # lib/reversetunnel/agentpool.go updateRemote: with TLS routing the agent runs
            # IsALPNConnUpgradeRequired against the proxy address (cached per address); behind a
            # layer-7 load balancer the tunnel's TLS (ALPN teleport-reversetunnel, the cluster's CA)
            # runs inside /webapi/connectionupgrade, as agent_dialer.go's ALPN dialer does.
            outer = conn_upgrade.outer_context_from(ctx)
            if await conn_upgrade.upgrade_required(t.addr.host, t.addr.port, outer, proxy=self.proxy):
                log.info("%s to %s: the address answers without Teleport's ALPN (a layer-7 load balancer): "
                         "using the ALPN connection upgrade", self.name, t.addr)
                tunnel = conn_upgrade.UpgradedSSHTunnel(t.addr.host, t.addr.port, outer=outer, inner=ctx,
                                                        server_hostname=server_name, proxy=self.proxy)
                self.state.upgraded = True
        loop = asyncio.get_running_loop()
        options = await tssh.client_options(
            host=t.addr.host, port=t.addr.port, username=self.fqdn, client_keys=[(self._key, self._cert)],
            preferred_auth="publickey", known_hosts=self._known, agent_path=None, config=None,
            keepalive_interval=self.heartbeat, keepalive_count_max=self.missed, login_timeout=15.0,
            # AES-GCM first: asyncssh's ChaCha20 builds cipher state per packet (measured by the
            # SSH work: 100 MB through proxy and tunnel 5.7 s with ChaCha20, 3.3 s with AES-GCM).
            encryption_algs=["aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
                             "chacha20-poly1305@openssh.com", "aes128-ctr"],
            connect_timeout=20.0, client_version="Teleport")
        conn = tssh.TunnelClientConnection(loop, options, self._on_open, TELEPORT_VERSION)
        await tssh.establish(conn, options, tunnel, 20.0)
        self._conn = conn
        try:
            hb = tssh.TeleportChannel(conn, tssh.CHAN_HEARTBEAT)
            await hb.open(ChannelTransport())
            await hb.request(tssh.REQ_PING, b"", want_reply=False)  # agent.go: the first ping right away
            resources = json.dumps({"resources": [dataclasses.asdict(o.resource) for o in self.offers]},
                                   separators=(",", ":")).encode()
            await hb.request(tw.REQ_RESOURCES, resources, want_reply=False)
            self.state.connects += 1
            self.state.connected.set()
            log.info("%s to %s up (%s, as %s): serving %s", self.name, t.addr,
                     "TLS routing" if t.tls_routing else "SSH tunnel port", self.fqdn,
                     ", ".join(f"{o.resource.kind} {o.resource.name}" for o in self.offers) or "nothing")
            closed = asyncio.ensure_future(conn.wait_closed())
            try:
                while True:
                    await asyncio.wait({closed}, timeout=self.heartbeat)
                    if closed.done():
                        break
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()
                    await hb.request(tssh.REQ_PING, stamp, want_reply=False)
            finally:
                closed.cancel()
        finally:
            self._conn = None
            conn.close()

    # -- channels the proxy opens ------------------------------------------------------------------

    def _on_open(self, chantype: str) -> tuple[tssh.TeleportChannel, asyncssh.SSHTCPSession[bytes]]:
        conn = self._conn
        if conn is None:
            raise asyncssh.ChannelOpenError(tssh.OPEN_CONNECT_FAILED, "agent connection is draining")
        if chantype == tssh.CHAN_TRANSPORT:
            stream = ChannelTransport()
            return tssh.TeleportChannel(conn, chantype, lambda ch, name, payload: self._on_request(
                ch, stream, name, payload)), stream
        if chantype == tssh.CHAN_DISCOVERY:
            return tssh.TeleportChannel(conn, chantype, self._on_discovery), ChannelTransport()
        # x/crypto/ssh's answer for a channel type nobody handles.
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_UNKNOWN_CHANNEL_TYPE, f"unknown channel type: {chantype}")

    def _on_discovery(self, chan: tssh.TeleportChannel, name: str, payload: bytes) -> bool:
        try:
            proxies = [p["metadata"]["name"] for p in json.loads(payload)["proxies"]]
            log.debug("%s: discovery request, proxies %s", self.name, proxies)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s: Received discovery request with bad payload: %s", self.name, exc)
        return False

    def _on_request(self, chan: tssh.TeleportChannel, stream: ChannelTransport, name: str,
                    payload: bytes) -> bool | None:
        if name != tssh.REQ_DIAL or chan.dialled:
            return False  # transport.go handleChannelRequests: anything else is refused
        chan.dialled = True
        chan.write_stderr(b" ")  # "so the caller can always safely read stderr" (transport.go)
        task = asyncio.get_running_loop().create_task(self._handle(chan, stream, payload))
        self._served.add(task)
        task.add_done_callback(self._served.discard)
        return None

    async def _handle(self, chan: tssh.TeleportChannel, stream: ChannelTransport, payload: bytes) -> None:
        try:
            request = tw.parse_dial_payload(payload)
        except (tw.TunnelProtocolError, WireError) as exc:
            log.warning("%s: teleport-transport-dial refused: %s", self.name, exc)
            self._refuse(chan, str(exc))
            return
        offer, why = self._find(request)
        if offer is None:
            log.warning("%s: dial request for %s refused: %s", self.name, _describe(request), why)
            self._refuse(chan, why)
            return
        chan.reply(True)
        stream.stderr.clear()
        log.info("%s: %s from %s → %s %s", self.name, request.conn_type, request.client_src_addr or "?",
                 offer.resource.kind, offer.resource.name)
        try:
            await offer.service.serve(stream, request)
        except Exception:
            log.exception("%s: service %s %s failed", self.name, offer.resource.kind, offer.resource.name)
            stream.close()

    @staticmethod
    def _refuse(chan: tssh.TeleportChannel, why: str) -> None:
        chan.write_stderr(f"connection rejected: {why}".encode())
        chan.reply(False)
        chan.close()

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
