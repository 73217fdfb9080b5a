"""Proxy peering: a client on proxy A reaches an agent whose tunnel is on proxy B, through A→B (glue).

Behaviour followed (gravitational/teleport ``lib/proxy/peer/``):

* every proxy with ``peer_listen_addr`` (3021) serves its peers there over mutual TLS with the
  proxies' *host* certificates, both signed by the cluster's host CA; each side checks that the
  other holds the ``Proxy`` system role (``checkProxyRole``: "proxy system role required"), and
  the dialing side that it reached the proxy it meant (``validatePeer``: "connected to
  unexpected proxy");
* the peer address is announced to the Auth Service in the proxy's heartbeat
  (``ProxySpecV2.peer_addr``), and a proxy learns its peers from ``/v1/proxies``;
* a dial (``proxyService.DialNode``) carries the dial parameters (server ID, connection type,
  source and destination addresses) in its first message; the peer dials *its own* tunnels only
  (never another peer: no loops), answers with the outcome (``ConnectionEstablished`` or the
  error), then the stream carries the client's bytes.

Teleport's ``tunnel_strategy`` emulated: ``proxy_peering`` with ``agent_connection_count: 1``:
an agent holds one tunnel (to whichever proxy the load balancer gave it) and the proxies reach
each other; with ``agent_mesh`` an agent would tunnel to every proxy and no peering is needed.

Where tpemu differs on the wire: Teleport runs gRPC (``proto.ProxyService/DialNode`` frames) over
that mutual TLS; tpemu sends one length-prefixed JSON dial request (the fields of
:class:`tpemu.wire.tunnel.DialRequest`, Teleport's ``DialReq``) and one response frame, then raw
bytes. Peer discovery differs too: Teleport picks the peer from the agent's ``proxy_ids``;
tpemu asks its peers in turn (each answers at once when it holds no tunnel for the target).

Hooked into :meth:`tpemu.proxy.tunnels.TunnelRegistry.dial` at one point: when no local tunnel
serves the target, the registry calls :meth:`PeerClient.dial`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tpemu import authapi
from tpemu import identity as ident
from tpemu.errors import PeerFault
from tpemu.logs import RateLimiter
from tpemu.net.pipe import Pipe, park_streams
from tpemu.net.tls import accept_stream, new_context
from tpemu.proxy.frontdoor import Accepted
from tpemu.wire import tunnel as tw

if TYPE_CHECKING:
    from tpemu.proxy.service import ProxyService

log = logging.getLogger(__name__)
_limiter = RateLimiter()

HANDSHAKE_TIMEOUT = 10.0
#: How long the list of peers from the Auth Service is reused.
PEER_CACHE_SECONDS = 2.0
ROLE_REQUIRED = "proxy system role required"
UNEXPECTED_PEER = "connected to unexpected proxy"


class PeerError(PeerFault):
    """A peer could not be used; the message says why."""


@dataclass(frozen=True)
class Peer:
    host_id: str
    addr: str
    hostname: str


def _identity_of(writer: asyncio.StreamWriter) -> ident.Identity | None:
    sslobj = writer.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    return ident.from_der(der) if der else None


class Peering:
    """Both halves of proxy peering for one proxy: the 3021 server and the client of its peers."""

    def __init__(self, proxy: ProxyService) -> None:
        self.proxy = proxy
        self._peers: list[Peer] = []
        self._peers_at = 0.0
        self._server_ctx: ssl.SSLContext | None = None
        self._client_ctx: ssl.SSLContext | None = None
        #: Dials served for peers and made through peers (for logs, tests and the bench).
        self.served = 0
        self.forwarded = 0

    @property
    def host_id(self) -> str:
        routes = self.proxy.auth_routes
        assert routes is not None and routes.identity is not None
        return routes.identity.host_id

    def install(self) -> None:
        """Serve ``peer_listen_addr`` and let the tunnel registry dial through peers."""
        files = self.proxy.tls_files
        host_ca = files.ca  # the host CA only: user certificates cannot peer
        server = new_context(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = ssl.TLSVersion.TLSv1_2
        server.load_cert_chain(files.cert, files.key)
        server.load_verify_locations(cafile=str(host_ca))
        server.verify_mode = ssl.CERT_REQUIRED
        client = new_context(ssl.PROTOCOL_TLS_CLIENT)
        client.minimum_version = ssl.TLSVersion.TLSv1_2
        client.load_cert_chain(files.cert, files.key)
        client.load_verify_locations(cafile=str(host_ca))
        client.check_hostname = False  # the peer is checked by its identity (validatePeer), below
        self._server_ctx, self._client_ctx = server, client
        self.proxy.tunnels.peer_dial = self.dial

    # -- server: a peer asks us to dial one of our tunnels ---------------------------------------

    async def serve(self, acc: Accepted) -> None:
        assert self._server_ctx is not None
        try:
            reader, writer = await accept_stream(acc.sock, self._server_ctx, timeout=HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            _limiter.warning(log, "peer-tls", "%s: peer TLS handshake failed: %s (peers present a host "
                             "certificate signed by this cluster's host CA)", acc.ctx, exc)
            acc.sock.close()
            return
        peer_id = _identity_of(writer)
        if peer_id is None or not peer_id.is_system(ident.ROLE_PROXY):
            _limiter.warning(log, "peer-role", "%s: peer refused: %s (%s)", acc.ctx, ROLE_REQUIRED,
                             peer_id.username if peer_id else "no certificate")
            writer.write(tw.DialResponse(False, ROLE_REQUIRED).encode())
            writer.close()
            return
        try:
            req = await self._read_request(reader)
        except (tw.TunnelProtocolError, asyncio.IncompleteReadError, TimeoutError, OSError, ValueError) as exc:
            log.warning("%s: bad dial request from peer %s: %s", acc.ctx, peer_id.username, exc)
            writer.close()
            return
        log.debug("%s: dial request from peer %s for %s", acc.ctx, peer_id.username, req.server_id or req.address
                  or req.name)
        from tpemu.proxy.tunnels import TunnelError

        try:
            target = await self.proxy.tunnels.dial(req, local_only=True)
        except TunnelError as exc:
            writer.write(tw.DialResponse(False, str(exc)).encode())
            writer.close()
            return
        writer.write(tw.DialResponse(True).encode())
        self.served += 1
        Pipe.join(park_streams(reader, writer), target)  # the peer's stream ↔ the tunnel channel

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> tw.DialRequest:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            head = await reader.readexactly(4)
            length = int.from_bytes(head, "big")
            if length > tw.MAX_FRAME:
                raise tw.TunnelProtocolError(f"dial request of {length} bytes exceeds {tw.MAX_FRAME}")
            body = await reader.readexactly(length)
        frame = tw.decode_frame(head + body)
        assert frame is not None
        return tw.DialRequest.from_json(frame[0])

    # -- client: reach a tunnel held by a peer --------------------------------------------------

    async def peers(self) -> list[Peer]:
        """The other proxies with a peer address, from the Auth Service (cached briefly)."""
        now = time.monotonic()
        if now - self._peers_at < PEER_CACHE_SECONDS:
            return self._peers
        routes = self.proxy.auth_routes
        assert routes is not None
        try:
            items = (await routes.client().call("GET", "/v1/proxies")).get("items") or []
        except (authapi.AuthAPIError, AttributeError) as exc:
            log.warning("cannot list peer proxies from the Auth Service: %s", getattr(exc, "message", exc))
            return self._peers
        found = []
        for item in items:
            meta, spec = item.get("metadata") or {}, item.get("spec") or {}
            name, addr = str(meta.get("name") or ""), str(spec.get("peer_addr") or "")
            if name and addr and name != self.host_id:
                found.append(Peer(name, addr, str(spec.get("hostname") or "")))
        self._peers, self._peers_at = found, now
        return found

    async def dial(self, req: tw.DialRequest, timeout: float) -> asyncio.Transport:
        """A parked transport to ``req``'s target: the stream to the first peer that holds its tunnel.

        Raises :class:`tpemu.proxy.tunnels.TunnelError` with every peer's answer.
        """
        from tpemu.proxy.tunnels import TunnelError

        errors = []
        for peer in await self.peers():
            try:
                transport = await self._dial_peer(peer, req, timeout)
            except PeerError as exc:
                errors.append(f"peer {peer.hostname or peer.host_id} ({peer.addr}): {exc}")
                continue
            self.forwarded += 1
            log.info("dial %s through peer proxy %s (%s)", req.server_id or req.address or req.name,
                     peer.hostname or peer.host_id, peer.addr)
            return transport
        if not errors:
            raise TunnelError("no peer proxy to ask (none announces a peer_addr)")
        raise TunnelError("; ".join(errors))

    async def _dial_peer(self, peer: Peer, req: tw.DialRequest, timeout: float) -> asyncio.Transport:
        assert self._client_ctx is not None
        host, _, port = peer.addr.rpartition(":")
        try:
            async with asyncio.timeout(min(timeout, HANDSHAKE_TIMEOUT)):
                reader, writer = await asyncio.open_connection(host.strip("[]"), int(port), ssl=self._client_ctx,
                                                               server_hostname=host.strip("[]"))
        except (OSError, TimeoutError, ValueError) as exc:
            raise PeerError(f"unreachable: {exc or 'timed out'}") from None
        ok = False
        try:
            them = _identity_of(writer)
            if them is None or not them.is_system(ident.ROLE_PROXY):
                raise PeerError(ROLE_REQUIRED)
            if them.username.split(".", 1)[0] != peer.host_id:
                log.error("Detected multiple Proxy Peers with the same public address %r when connecting to Proxy "
                          "%r which can lead to inconsistent state and problems establishing sessions.",
                          peer.addr, peer.host_id)
                raise PeerError(UNEXPECTED_PEER)
            writer.write(req.encode())
            try:
                async with asyncio.timeout(timeout):
                    head = await reader.readexactly(4)
                    length = int.from_bytes(head, "big")
                    if length > tw.MAX_FRAME:
                        raise PeerError(f"answer of {length} bytes exceeds {tw.MAX_FRAME}")
                    frame = tw.decode_frame(head + await reader.readexactly(length))
            except (asyncio.IncompleteReadError, OSError, TimeoutError) as exc:
                raise PeerError(f"no answer: {exc or 'timed out'}") from None
            assert frame is not None
            answer = tw.DialResponse.from_json(frame[0])
            if not answer.ok:
                raise PeerError(answer.error or "refused")
            ok = True
        except tw.TunnelProtocolError as exc:
            raise PeerError(f"answered garbage: {exc}") from None
        finally:
            if not ok:
                writer.close()
        # The TLS stream to the peer is itself the endpoint: whoever dialled joins it with a Pipe.
        return park_streams(reader, writer)

    def describe(self) -> dict[str, Any]:
        return {"served": self.served, "forwarded": self.forwarded,
                "peers": [{"host_id": p.host_id, "addr": p.addr, "hostname": p.hostname} for p in self._peers]}
