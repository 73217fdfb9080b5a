"""The route table: which service gets a connection, decided from its first bytes (pure).

Order of decision for TLS, as in Teleport's ``lib/srv/alpnproxy/proxy.go`` with tpemu's
pass-through rules in front:

1. configured pass-through rules, in config order (ALPN and/or SNI match);
2. a Kubernetes SNI prefix (``kube-teleport-proxy-alpn.``) → the Kubernetes proxy;
3. the client's ALPN names in the client's order: the first one the table knows wins
   (``getHandleDescBasedOnALPNVal``; ``teleport-auth@…`` and ``teleport-mysql-…`` by prefix);
4. no ALPN at all → the web handler (as if ``http/1.1`` was offered);
5. ALPN names that are all unknown → closed without a TLS answer, as Teleport does (its ClientHello
   reader cannot write, ``readOnlyConn``), with Teleport's log text.

The *negotiated* protocol is then the server's choice (``Route.server_alpn``, in Teleport's
``SupportedProtocols`` order), so offering ``[teleport-postgres, teleport-postgres-ping]`` selects
the ``-ping`` form, as Teleport's proxy does.

Every :class:`Route` is built once, when the table is built, with the sentence that explains it,
so the hot path does dictionary look-ups and no string formatting.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from tpemu.config import Addr, PassthroughRule
from tpemu.wire import alpn as names
from tpemu.wire.sniff import Protocol
from tpemu.wire.tls import ClientHello


class RouteKind(Enum):
    """Where a connection goes. Values are the route names used in logs and counters."""

    WEB = "web"
    WEB_PLAIN_HTTP = "web-plain-http"
    SSH_PROXY = "ssh-proxy"
    SSH_PROXY_GRPC = "ssh-proxy-grpc"
    REVERSE_TUNNEL = "reverse-tunnel"
    AUTH = "auth"
    PROXY_GRPC = "proxy-grpc"
    PROXY_GRPC_MTLS = "proxy-grpc-mtls"
    APP_TCP = "app-tcp"
    DATABASE = "database"
    KUBE = "kube"
    PEER = "peer"
    PASSTHROUGH = "passthrough"
    REJECT = "reject"


_SERVICE_KIND = {
    names.Service.WEB: RouteKind.WEB,
    names.Service.SSH_PROXY: RouteKind.SSH_PROXY,
    names.Service.SSH_PROXY_GRPC: RouteKind.SSH_PROXY_GRPC,
    names.Service.REVERSE_TUNNEL: RouteKind.REVERSE_TUNNEL,
    names.Service.AUTH: RouteKind.AUTH,
    names.Service.PROXY_GRPC: RouteKind.PROXY_GRPC,
    names.Service.PROXY_GRPC_MTLS: RouteKind.PROXY_GRPC_MTLS,
    names.Service.APP_TCP: RouteKind.APP_TCP,
    names.Service.DATABASE: RouteKind.DATABASE,
    names.Service.KUBE: RouteKind.KUBE,
}


@dataclass(frozen=True, slots=True)
class Route:
    """A routing decision.

    ``name`` is the label for logs and counters (``database/postgres``, ``passthrough/ssh-box``);
    ``why`` the sentence that explains the choice; ``alpn`` the protocol a terminating route
    negotiates; ``target``/``send_proxy`` belong to pass-through routes.
    """

    kind: RouteKind
    name: str
    why: str
    alpn: str | None = None
    db_protocol: str | None = None
    ping: bool = False
    target: Addr | None = None
    send_proxy: str = ""
    #: The names the terminating TLS server offers, in preference order; ``None`` when the TLS
    #: session is not ours (pass-through, or Teleport's ``ForwardTLS`` handlers: Auth, kube,
    #: gRPC with mTLS), so no ALPN check is made before handing the bytes on.
    server_alpn: tuple[str, ...] | None = None
    server_alpn_set: frozenset[str] = frozenset()

    @property
    def passthrough(self) -> bool:
        return self.kind is RouteKind.PASSTHROUGH


@dataclass(frozen=True, slots=True)
class _Rule:
    route: Route
    alpn: frozenset[str]
    exact_sni: frozenset[str]
    suffixes: tuple[str, ...]  # "*.example.com" stored as ".example.com"

    def matches(self, hello: ClientHello) -> bool:
        # Set and str methods rather than ``any(<generator>)``: one generator per rule and
        # connection cost ~0.5 µs each on the pass-through path.
        if self.alpn and self.alpn.isdisjoint(hello.alpn):
            return False
        if self.exact_sni or self.suffixes:
            sni = hello.sni
            if sni is None:
                return False
            if sni not in self.exact_sni and not sni.endswith(self.suffixes):
                return False
        return True


#: The TLS server each route's handler runs (``lib/service/service.go`` ``setupALPNRouter``):
#: ``ForwardTLS`` handlers are absent.
_SERVER_ALPN: dict[RouteKind, tuple[str, ...]] = {
    RouteKind.WEB: names.SUPPORTED_PROTOCOLS,
    RouteKind.SSH_PROXY: names.SSH_PROXY_PROTOCOLS,
    RouteKind.REVERSE_TUNNEL: names.SUPPORTED_PROTOCOLS,
    RouteKind.PROXY_GRPC: names.SUPPORTED_PROTOCOLS,
    RouteKind.APP_TCP: names.SUPPORTED_PROTOCOLS,
    RouteKind.DATABASE: names.DATABASE_SERVER_PROTOCOLS,
}


def server_alpn(kind: RouteKind) -> tuple[str, ...] | None:
    """What the TLS server of a route offers (``None``: the TLS session is forwarded)."""
    return _SERVER_ALPN.get(kind)


def _alpn_route(alpn_name: str, info: names.AlpnService) -> Route:
    kind = _SERVICE_KIND[info.service]
    label = kind.value if info.db_protocol is None else f"{kind.value}/{info.db_protocol}"
    srv = _SERVER_ALPN.get(kind)
    return Route(kind, label, f"ALPN {alpn_name!r}", alpn=alpn_name,
                 db_protocol=info.db_protocol, ping=info.ping, server_alpn=srv,
                 server_alpn_set=frozenset(srv or ()))


def go_quote_list(items: tuple[str, ...] | list[str]) -> str:
    """Go's ``%q`` of a ``[]string``: ``["a" "b"]`` (how Teleport's log prints protocol lists)."""
    return "[" + " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in items) + "]"


#: Teleport's error when no handler matches (``lib/srv/alpnproxy/proxy.go``
#: ``getHandleDescBasedOnALPNVal``), logged as "Failed to handle client connection".
NO_HANDLER = "failed to find ALPN handler based on received client supported protocols "


def passthrough_route(rule: PassthroughRule, index: int) -> Route:
    """The route a pass-through rule sends its matches to."""
    label = rule.name or f"rule{index}"
    match = []
    if rule.alpn:
        match.append("ALPN " + "|".join(rule.alpn))
    if rule.sni:
        match.append("SNI " + "|".join(rule.sni))
    if rule.protocol != "tls":
        match.append(f"protocol {rule.protocol}")
    return Route(RouteKind.PASSTHROUGH, f"passthrough/{label}",
                 f"pass-through rule {label!r} ({', '.join(match)}) → {rule.target}",
                 target=rule.target, send_proxy=rule.send_proxy)


#: Routes for plain (non-TLS) protocols and fixed decisions, built once.
WEB_DEFAULT = Route(RouteKind.WEB, "web", "no ALPN offered: the web handler is the default",
                    alpn=names.HTTP11, server_alpn=names.SUPPORTED_PROTOCOLS,
                    server_alpn_set=frozenset(names.SUPPORTED_PROTOCOLS))
KUBE = Route(RouteKind.KUBE, "kube", f"SNI starts with {names.KUBE_SNI_PREFIX!r}")
PLAIN_SSH = Route(RouteKind.SSH_PROXY, "ssh-proxy", "plain SSH identification line")
PLAIN_HTTP = Route(RouteKind.WEB_PLAIN_HTTP, "web-plain-http", "plain HTTP request on a TLS port")
POSTGRES_STARTUP = Route(RouteKind.DATABASE, "database/postgres", "Postgres startup packet",
                         db_protocol="postgres")


_KUBE_PREFIXES = (names.KUBE_SNI_PREFIX, names.KUBE_SNI_PREFIX_LEGACY)
_PREFIXES = (names.AUTH, names.MYSQL_VERSION_PREFIX)


class RouteTable:
    """Routes by ALPN/SNI (TLS) or by protocol (plain SSH, HTTP, Postgres)."""

    def __init__(self, rules: tuple[PassthroughRule, ...] = ()) -> None:
        self._alpn: dict[str, Route] = {a: _alpn_route(a, info) for a, info in names.ALPN_SERVICES.items()}
        self._tls_rules: tuple[_Rule, ...] = tuple(
            _Rule(passthrough_route(r, i), frozenset(r.alpn),
                  frozenset(s for s in r.sni if not s.startswith("*.")),
                  tuple(s[1:] for s in r.sni if s.startswith("*.")))
            for i, r in enumerate(rules) if r.protocol == "tls")
        self._plain: dict[Protocol, Route] = {
            Protocol.SSH: PLAIN_SSH, Protocol.HTTP: PLAIN_HTTP, Protocol.POSTGRES: POSTGRES_STARTUP}
        for i, r in enumerate(rules):
            if r.protocol != "tls":
                proto = Protocol(r.protocol)
                # The first rule for a protocol wins, as for TLS rules.
                if self._plain[proto].kind is not RouteKind.PASSTHROUGH:
                    self._plain[proto] = passthrough_route(r, i)

    def for_tls(self, hello: ClientHello) -> Route:
        """The route for a TLS connection, from its ClientHello."""
        for rule in self._tls_rules:
            if rule.matches(hello):
                return rule.route
        sni = hello.sni
        if sni is not None and sni.startswith(_KUBE_PREFIXES):
            return KUBE
        offered = hello.alpn
        if not offered:
            return WEB_DEFAULT
        table = self._alpn
        for a in offered:
            route = table.get(a)
            if route is not None:
                return route
            if a.startswith(_PREFIXES):
                # teleport-auth@<route>, teleport-mysql-<version>: matched by prefix, in the client's order.
                info = names.lookup(a)
                if info is not None:
                    return _alpn_route(a, info)
        return Route(RouteKind.REJECT, "reject", NO_HANDLER + go_quote_list(offered))

    def for_plain(self, protocol: Protocol) -> Route:
        """The route for a plain-text protocol (SSH, HTTP, Postgres startup)."""
        return self._plain[protocol]

    def describe(self) -> list[tuple[str, str]]:
        """``(match, route)`` rows in decision order, for ``tpemu start`` and ``inspect``."""
        rows = [(r.route.why.split(" → ")[0], r.route.name) for r in self._tls_rules]
        rows.append((f"SNI {names.KUBE_SNI_PREFIX}*", KUBE.name))
        rows.extend((f"ALPN {a}", r.name) for a, r in self._alpn.items())
        rows.append((f"ALPN {names.AUTH}<hex(cluster)>.{names.INTERNAL_DOMAIN}", "auth"))
        rows.append((f"ALPN {names.MYSQL_VERSION_PREFIX}<version>", "database/mysql"))
        rows.append(("no ALPN", WEB_DEFAULT.name))
        rows.extend((f"plain {p.value}", r.name) for p, r in self._plain.items())
        return rows
