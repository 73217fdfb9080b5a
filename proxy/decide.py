"""One pure step of the front door: from the bytes seen so far to a decision.

The accept loop (``tpemu.proxy.frontdoor``) peeks at a new connection and calls :func:`classify`
until it stops answering :class:`NeedMore`; ``tpemu inspect`` calls the same function on a
captured prefix, so what it explains is exactly what the router does. Outcomes:

* :class:`NeedMore` — wait for more bytes (bounded by the sniff deadline and size cap);
* :class:`ProxyHeaderSeen` — a PROXY v1/v2 header the listener accepts: consume exactly
  ``header.length`` bytes and classify the rest (at most one header per connection);
* :class:`Routed` — hand the untouched socket to the route's handler;
* :class:`Refused` — send ``answer`` (a TLS alert, an HTTP 400 …) if any, log ``reason``, close.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from tpemu.proxy.route import Route, RouteKind, RouteTable
from tpemu.wire import WireError, proxy_protocol, sniff, tls
from tpemu.wire.errors import LimitExceeded
from tpemu.wire.sniff import Protocol

#: What Go's net/http answers when plain HTTP reaches its TLS listener (``net/http`` ``conn.serve``:
#: ``tlsRecordHeaderLooksLikeHTTP``). Of Teleport's TLS-only listeners only the Kubernetes one is
#: a net/http server (lib/kube/proxy); the peer listener (gRPC, lib/proxy/peer) and the Mongo
#: listener (lib/srv/db/proxyserver.go serveGenericTLS) close without a byte.
HTTP_ON_TLS_ANSWER = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"


class ListenerKind(Enum):
    WEB = "web"
    SSH = "ssh"
    TUNNEL = "tunnel"
    PEER = "peer"
    POSTGRES = "postgres"
    MYSQL = "mysql"
    MONGO = "mongo"
    REDIS = "redis"
    KUBE = "kube"


@dataclass(frozen=True)
class ListenerPolicy:
    """What one listener accepts and how it routes.

    ``fixed`` maps a protocol to a route that ignores the route table (the Mongo listener sends
    every TLS connection to the Mongo database route); ``server_first`` routes at once without
    reading (MySQL: the server speaks first).

    ``proxy_protocol`` is Teleport's tri-state ``PROXYProtocolMode`` (``lib/multiplexer/multiplexer.go``):
    ``True`` (``on``) — one unsigned PROXY header is accepted and *required* (except on
    self-connections, checked by the front door); ``False`` (``off``) — a header is refused;
    ``None`` (unset, Teleport's default) — one header is accepted but not required, and the
    client's source port is set to 0 to mark the connection. A v2 ``LOCAL`` header is skipped in
    every mode (it counts as the one header). ``proxy_trusted`` is tpemu's extension
    (``tpemu.proxy_service.proxy_protocol_trusted_cidrs``): when set, only peers inside these networks
    (the load balancers) may send a header that names a client.
    """

    kind: ListenerKind
    accepts: frozenset[Protocol]
    fixed: dict[Protocol, Route] = field(default_factory=dict)
    server_first: Route | None = None
    proxy_protocol: bool | None = False
    proxy_trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    tls_ok: bool = field(init=False, default=False)
    tls_route: Route | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        # Derived once, read on every TLS connection.
        object.__setattr__(self, "tls_ok", Protocol.TLS in self.accepts)
        object.__setattr__(self, "tls_route", self.fixed.get(Protocol.TLS))

    @property
    def tls_only(self) -> bool:
        return self.accepts == frozenset({Protocol.TLS})


# NeedMore and Routed are NamedTuples: one is built per connection on the hot path, where a
# frozen dataclass's __init__ costs several times more.
class NeedMore(NamedTuple):
    seen: int


@dataclass(frozen=True, slots=True)
class ProxyHeaderSeen:
    header: proxy_protocol.ProxyHeader


class Routed(NamedTuple):
    protocol: Protocol
    route: Route
    hello: tls.ClientHello | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """``category`` names the counter (``unknown-protocol``, ``bad-client-hello`` …)."""

    category: str
    reason: str
    protocol: Protocol | None = None
    answer: bytes = b""
    hello: tls.ClientHello | None = None


Outcome = NeedMore | ProxyHeaderSeen | Routed | Refused

# Hot-path constants: module globals are cheaper to load than enum class attributes, and
# tuple.__new__ skips the Python-level __new__ a NamedTuple class generates.
_TLS = Protocol.TLS
_REJECT = RouteKind.REJECT
_new_routed = tuple.__new__

_PROXY = (Protocol.PROXY_V1, Protocol.PROXY_V2)


def _no_overlap(route: Route, hello: tls.ClientHello) -> Refused:
    # A handler matched by prefix (teleport-mysql-<version> alone) whose TLS server speaks none of
    # the offered names: Go's crypto/tls ends the handshake (handshake_server.go negotiateALPN).
    return Refused("unsupported-alpn", f"route {route.name}: tls: client requested unsupported application "
                   f"protocols ({list(hello.alpn)})", Protocol.TLS,
                   tls.encode_alert(tls.ALERT_NO_APPLICATION_PROTOCOL), hello)


def classify(prefix: bytes | bytearray | memoryview, policy: ListenerPolicy, table: RouteTable,
             max_hello: int = tls.DEFAULT_MAX_HELLO, proxy_seen: bool = False) -> Outcome:
    """Decide what to do with a connection whose stream starts with ``prefix``."""
    if prefix and prefix[0] == 0x16 and policy.tls_ok:
        # Hot path: a TLS record. The ClientHello parser checks the record header itself.
        try:
            hello = tls.parse_client_hello(prefix, max_hello)
        except LimitExceeded as exc:
            return Refused("bad-client-hello", f"ClientHello rejected: {exc}", Protocol.TLS,
                           tls.encode_alert(tls.ALERT_DECODE_ERROR))
        except tls.NotTLS as exc:
            return Refused("unknown-protocol", str(exc))
        except tls.TLSError as exc:
            return Refused("bad-client-hello", f"ClientHello rejected: {exc}", Protocol.TLS,
                           tls.encode_alert(exc.alert))
        if hello is None:
            return NeedMore(len(prefix))
        route = policy.tls_route or table.for_tls(hello)
        if route.kind is _REJECT:
            # Teleport reads the ClientHello through a connection that cannot write
            # (lib/srv/alpnproxy/conn.go readOnlyConn), then closes: no alert reaches the client.
            return Refused("unknown-alpn", route.why, Protocol.TLS, b"", hello)
        if route.server_alpn_set and hello.alpn and route.server_alpn_set.isdisjoint(hello.alpn):
            return _no_overlap(route, hello)
        return _new_routed(Routed, (_TLS, route, hello))
    try:
        proto = sniff.sniff(prefix)
    except WireError as exc:
        if policy.tls_only:
            return Refused("not-tls", f"{tls.NOT_TLS_MESSAGE}: {exc}")
        return Refused("unknown-protocol", str(exc))
    if proto is None:
        return NeedMore(len(prefix))
    if proto is Protocol.TLS:
        try:
            hello = tls.parse_client_hello(prefix, max_hello)
        except LimitExceeded as exc:
            return Refused("bad-client-hello", f"ClientHello rejected: {exc}", proto,
                           tls.encode_alert(tls.ALERT_DECODE_ERROR))
        except tls.TLSError as exc:
            return Refused("bad-client-hello", f"ClientHello rejected: {exc}", proto, tls.encode_alert(exc.alert))
        if hello is None:
            return NeedMore(len(prefix))
        if Protocol.TLS not in policy.accepts:
            if not policy.accepts:
                return Refused("wrong-protocol", f"the {policy.kind.value} listener expects a PROXY protocol "
                               "header first (proxy_protocol is on), got TLS", proto, b"", hello)
            return Refused("wrong-protocol", f"TLS is not served on the {policy.kind.value} listener", proto,
                           tls.encode_alert(tls.ALERT_HANDSHAKE_FAILURE), hello)
        route = policy.fixed.get(proto) or table.for_tls(hello)
        if route.kind is RouteKind.REJECT:
            return Refused("unknown-alpn", route.why, proto, b"", hello)
        if route.server_alpn_set and hello.alpn and route.server_alpn_set.isdisjoint(hello.alpn):
            return _no_overlap(route, hello)
        return Routed(proto, route, hello)
    if proto in _PROXY:
        if policy.proxy_protocol is False:
            if proto is Protocol.PROXY_V2:
                # Teleport skips a v2 LOCAL header (a load balancer's health check) in every mode,
                # "off" included (``Mux.detect``: ``ReadProxyLineV2`` returns nil → continue).
                try:
                    local = proxy_protocol.parse_proxy_header(prefix)
                except WireError as exc:
                    return Refused("bad-proxy-header", f"bad PROXY protocol header: {exc}", proto)
                if local is None:
                    return NeedMore(len(prefix))
                if local.command is proxy_protocol.Command.LOCAL:
                    if proxy_seen:
                        return Refused("proxy-protocol-twice", "a second PROXY protocol header on one connection",
                                       proto)
                    return ProxyHeaderSeen(local)
            return Refused("proxy-protocol-off",
                           f"PROXY protocol {'v1' if proto is Protocol.PROXY_V1 else 'v2'} header received but "
                           f"proxy_protocol is off for the {policy.kind.value} listener (turn it on only "
                           "behind a load balancer that sends one)", proto)
        if proxy_seen:
            return Refused("proxy-protocol-twice", "a second PROXY protocol header on one connection", proto)
        try:
            header = proxy_protocol.parse_proxy_header(prefix)
        except WireError as exc:
            return Refused("bad-proxy-header", f"bad PROXY protocol header: {exc}", proto)
        if header is None:
            return NeedMore(len(prefix))
        return ProxyHeaderSeen(header)
    if proto not in policy.accepts:
        if not policy.accepts:
            return Refused("wrong-protocol", f"the {policy.kind.value} listener expects a PROXY protocol header "
                           f"first (proxy_protocol is on), got {proto.value}", proto)
        if policy.tls_only:
            answer = HTTP_ON_TLS_ANSWER if proto is Protocol.HTTP and policy.kind is ListenerKind.KUBE else b""
            return Refused("not-tls", f"{tls.NOT_TLS_MESSAGE}: got {proto.value} on the TLS-only "
                           f"{policy.kind.value} listener", proto, answer)
        expected = ", ".join(sorted(p.value for p in policy.accepts))
        return Refused("wrong-protocol", f"{proto.value} is not served on the {policy.kind.value} listener "
                       f"(it expects {expected})", proto)
    return Routed(proto, policy.fixed.get(proto) or table.for_plain(proto))
