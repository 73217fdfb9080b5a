"""ALPN connection upgrade: ``GET /webapi/connectionupgrade`` → ``101``, then the front door (glue).

Behind a layer-7 load balancer (one that terminates TLS with its own certificate and speaks
HTTP to the proxy) ALPN and SNI never reach the proxy, so TLS routing cannot work. Teleport's
answer, followed here (gravitational/teleport ``lib/web/conn_upgrade.go``:
``Handler.selectConnectionUpgrade``, ``Handler.connectionUpgrade``, ``writeUpgradeResponse``,
``Handler.upgradeALPNWithPing``; names in ``api/constants``: ``WebAPIConnUpgrade*``):

* the client sends ``GET /webapi/connectionupgrade`` with ``Upgrade: alpn`` or ``alpn-ping``, and
  the same value in ``X-Teleport-Upgrade`` (which survives load balancers that drop ``Upgrade``)
  plus ``Connection: Upgrade``;
* the proxy answers ``101 Switching Protocols`` with ``Upgrade``, ``X-Teleport-Upgrade`` and
  ``Connection: Upgrade``; an unknown type is ``404`` "unsupported upgrade types: [...]";
* the WebSocket form (which Teleport prefers when offered): ``Upgrade: websocket`` with
  ``Sec-WebSocket-Protocol: alpn|alpn-ping``, answered as gorilla's ``Upgrader`` does (101,
  ``Sec-WebSocket-Accept``, the chosen subprotocol); the bytes then travel in binary frames
  (:mod:`tpemu.wire.websocket`), ``alpn-ping`` adding WebSocket pings;
* from then on the connection carries what the client would have sent to the port directly
  (normally a TLS ClientHello with the real ALPN and SNI). For ``alpn-ping`` the bytes travel in
  Teleport's ping framing (``api/utils/pingconn``: uint32 length + payload, a zero length is a
  ping) and the proxy pings every ``ProxyPingInterval`` (30 s) so idle-timeout LBs keep it.

Theory of operation: the upgraded bytes must be routed exactly like a new connection, and the
front door works on sockets (it peeks with ``MSG_PEEK`` and hands the untouched socket on). So
the handler makes a Unix socket pair, gives one end to :meth:`FrontDoor.adopt` with the web
listener's policy (minus PROXY protocol: a PROXY header belongs to the outer connection), and
joins the upgraded stream (ping framing and WebSocket frames as :mod:`tpemu.net.streams` layers) to
the other end with a :class:`~tpemu.net.pipe.Pipe`, in :meth:`_splice`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import Iterable

from tpemu.net.http_server import Request, Response
from tpemu.net.pipe import Parked, Pipe, park_streams
from tpemu.net.streams import PingTransport, WebSocketTransport
from tpemu.proxy.decide import ListenerPolicy
from tpemu.proxy.frontdoor import FrontDoor
from tpemu.proxy.webapi import WebAPI
from tpemu.wire import ping, websocket

log = logging.getLogger(__name__)

#: ``constants.WebAPIConnUpgrade``.
UPGRADE_PATH = "/webapi/connectionupgrade"
#: ``constants.WebAPIConnUpgradeHeader`` / ``WebAPIConnUpgradeTeleportHeader`` /
#: ``WebAPIConnUpgradeConnectionHeader`` (+ ``WebAPIConnUpgradeConnectionType``).
UPGRADE_HEADER = "Upgrade"
TELEPORT_UPGRADE_HEADER = "X-Teleport-Upgrade"
CONNECTION_HEADER = "Connection"
CONNECTION_UPGRADE = "Upgrade"
#: ``constants.WebAPIConnUpgradeTypeALPN`` / ``…ALPNPing`` / ``…WebSocket``.
TYPE_ALPN = "alpn"
TYPE_ALPN_PING = "alpn-ping"
TYPE_WEBSOCKET = "websocket"


def requested_types(headers: Iterable[tuple[str, str]]) -> list[str]:
    """Every upgrade type the request names, ``X-Teleport-Upgrade`` first, as Teleport collects them."""
    teleport: list[str] = []
    plain: list[str] = []
    for name, value in headers:
        if name in ("x-teleport-upgrade", "upgrade"):
            # One value per header line in Teleport's client; a comma list is RFC 9110's form.
            values = [v.strip() for v in value.split(",") if v.strip()]
            (teleport if name == "x-teleport-upgrade" else plain).extend(values)
    return teleport + plain


def websocket_subprotocol(headers: Iterable[tuple[str, str]]) -> str | None:
    """The ``Sec-WebSocket-Protocol`` to accept: the client's first one this server knows
    (gorilla's ``Upgrader.selectSubprotocol`` with Teleport's ``[alpn, alpn-ping]``)."""
    for name, value in headers:
        if name == "sec-websocket-protocol":
            for proto in (v.strip() for v in value.split(",")):
                if proto in (TYPE_ALPN, TYPE_ALPN_PING):
                    return proto
    return None


def select_upgrade(types: list[str]) -> str | None:
    """The legacy type to serve (``selectConnectionUpgrade``), or ``None``: ``alpn-ping``, then
    ``alpn``. (WebSocket, which Teleport prefers over both, is chosen in :meth:`ConnectionUpgrade.handle`
    when the request is a valid WebSocket handshake.)"""
    if TYPE_ALPN_PING in types:
        return TYPE_ALPN_PING
    if TYPE_ALPN in types:
        return TYPE_ALPN
    return None


def go_list(values: list[str]) -> str:
    """A Go ``%v`` of a ``[]string``: ``[a b]``."""
    return "[" + " ".join(values) + "]"


def parse_peer(text: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` back to a tuple (the web API keeps the peer as text)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0


class ConnectionUpgrade:
    """Serves ``/webapi/connectionupgrade`` and feeds upgraded streams to the front door."""

    def __init__(self, door: FrontDoor, policy: ListenerPolicy, ping_interval: float = ping.PING_INTERVAL) -> None:
        self.door = door
        # The web listener's routing, without PROXY protocol (that belongs to the outer stream).
        self.policy = ListenerPolicy(policy.kind, policy.accepts, policy.fixed)
        self.ping_interval = ping_interval
        #: Upgrades served, by type.
        self.stats: Counter[str] = Counter()

    def install(self, web: WebAPI) -> None:
        web.add("GET", UPGRADE_PATH, self.handle)

    async def handle(self, request: Request) -> Response:
        types = requested_types(request.headers)
        key = request.header("sec-websocket-key")
        subprotocol = websocket_subprotocol(request.headers)
        if TYPE_WEBSOCKET in types and key and subprotocol and request.header("sec-websocket-version") == "13":
            return self._websocket(request, key, subprotocol)
        kind = select_upgrade(types)
        if kind is None:
            log.info("peer=%s connection upgrade refused: unsupported upgrade types: %s", request.peer,
                     go_list(types))
            return Response.error(404, f"unsupported upgrade types: {go_list(types)}")
        forwarded = request.header("x-forwarded-for")
        peer = parse_peer(request.peer)
        log.info("peer=%s%s connection upgrade %s: the stream enters the front door", request.peer,
                 f" (x-forwarded-for {forwarded})" if forwarded else "", kind)
        self.stats[kind] += 1

        async def take_over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, early: bytes) -> None:
            await self._splice(kind, peer, reader, writer, early)

        headers = [(UPGRADE_HEADER, kind), (TELEPORT_UPGRADE_HEADER, kind), (CONNECTION_HEADER, CONNECTION_UPGRADE)]
        return Response(101, b"", headers, upgrade=take_over)

    def _websocket(self, request: Request, key: str, subprotocol: str) -> Response:
        # upgradeALPNWebSocket: gorilla's 101, then binary frames; alpn-ping adds WebSocket pings.
        peer = parse_peer(request.peer)
        log.info("peer=%s connection upgrade websocket (%s): the stream enters the front door", request.peer,
                 subprotocol)
        self.stats[f"websocket/{subprotocol}"] += 1

        async def take_over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, early: bytes) -> None:
            interval = self.ping_interval if subprotocol == TYPE_ALPN_PING else None
            framed = WebSocketTransport.wrap(park_streams(reader, writer, first=early), client=False,
                                             interval=interval)
            await self._enter(framed, peer, f"websocket/{subprotocol}")

        headers = [(UPGRADE_HEADER, TYPE_WEBSOCKET), (CONNECTION_HEADER, CONNECTION_UPGRADE),
                   ("Sec-WebSocket-Accept", websocket.accept_key(key)), ("Sec-WebSocket-Protocol", subprotocol)]
        return Response(101, b"", headers, upgrade=take_over)

    async def _splice(self, kind: str, peer: tuple[str, int], reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, early: bytes) -> None:
        upgraded: asyncio.Transport = park_streams(reader, writer, first=early)
        if kind == TYPE_ALPN_PING:
            upgraded = PingTransport.wrap(upgraded, interval=self.ping_interval)
        await self._enter(upgraded, peer, kind)

    async def _enter(self, upgraded: asyncio.Transport, peer: tuple[str, int], kind: str) -> None:
        mine, theirs = socket.socketpair()
        try:
            self.door.adopt(theirs, peer, self.policy, f"connection-upgrade/{kind}")
        except Exception:
            mine.close()
            theirs.close()
            upgraded.close()
            raise
        mine.setblocking(False)
        local, _ = await asyncio.get_running_loop().connect_accepted_socket(Parked, mine)
        Pipe.join(upgraded, local)  # lives on in its two transports; this handler returns
