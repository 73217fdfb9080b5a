"""Teleport's ALPN protocol names and SNI conventions, in one table (pure data).

Source: gravitational/teleport ``lib/srv/alpnproxy/common/protocols.go`` (protocol names,
``SupportedProtocols``, ``WithPingProtocols``, ``DatabaseProtocols``, ``ProtocolsWithPingSupport``),
``lib/srv/alpnproxy/proxy.go`` (``getHandleDescBasedOnALPNVal``: the handler is chosen in the
*client's* order, ``MatchByALPNPrefix`` for ``teleport-auth@`` and ``teleport-mysql-``; then the
TLS handshake negotiates in the *server's* order, ``Proxy.Serve`` setting ``NextProtos`` to
``SupportedProtocols``), ``api/constants`` (``KubeTeleportProxyALPNPrefix``). The router
(``tpemu.proxy.route``) builds its table from :data:`ALPN_SERVICES`; nothing else spells these
strings.
"""

import binascii
from dataclasses import dataclass
from enum import Enum

from tpemu.errors import PeerFault

HTTP11 = "http/1.1"
HTTP2 = "h2"
PROXY_SSH = "teleport-proxy-ssh"
PROXY_SSH_GRPC = "teleport-proxy-ssh-grpc"
REVERSE_TUNNEL = "teleport-reversetunnel"
#: Sent in addition to :data:`REVERSE_TUNNEL` by peering-aware agents, so load balancers can route
#: on it; the proxy handles such a connection as a reverse tunnel.
REVERSE_TUNNEL_V2 = "teleport-reversetunnelv2"
AUTH = "teleport-auth@"
PROXY_GRPC = "teleport-proxy-grpc"
PROXY_GRPC_MTLS = "teleport-proxy-grpc-mtls"
TCP = "teleport-tcp"

POSTGRES = "teleport-postgres"
MYSQL = "teleport-mysql"
MONGODB = "teleport-mongodb"
ORACLE = "teleport-oracle"
REDIS = "teleport-redis"
SQLSERVER = "teleport-sqlserver"
SNOWFLAKE = "teleport-snowflake"
CASSANDRA = "teleport-cassandra"
ELASTICSEARCH = "teleport-elasticsearch"
OPENSEARCH = "teleport-opensearch"
DYNAMODB = "teleport-dynamodb"
CLICKHOUSE = "teleport-clickhouse"
SPANNER = "teleport-spanner"
#: Postgres' own ALPN, sent by libpq >= 17 with ``sslnegotiation=direct`` (not a Teleport name).
POSTGRESQL_NATIVE = "postgresql"

#: ``<db or tcp protocol>-ping``: the same protocol in ping framing.
PING_SUFFIX = "-ping"
#: ``teleport-mysql-<server version>``: tsh carries the MySQL server version this way.
MYSQL_VERSION_PREFIX = MYSQL + "-"

#: SNI prefix that routes to the Kubernetes proxy (``KubeTeleportProxyALPNPrefix``), and the
#: legacy ``kube.`` prefix Teleport still honours.
KUBE_SNI_PREFIX = "kube-teleport-proxy-alpn."
KUBE_SNI_PREFIX_LEGACY = "kube."
#: Internal traffic uses SNI names under this domain.
INTERNAL_DOMAIN = "teleport.cluster.local"


class Service(Enum):
    """Which proxy service an ALPN name leads to."""

    WEB = "web"
    SSH_PROXY = "ssh-proxy"
    SSH_PROXY_GRPC = "ssh-proxy-grpc"
    REVERSE_TUNNEL = "reverse-tunnel"
    AUTH = "auth"
    PROXY_GRPC = "proxy-grpc"
    PROXY_GRPC_MTLS = "proxy-grpc-mtls"
    APP_TCP = "app-tcp"
    DATABASE = "database"
    KUBE = "kube"


@dataclass(frozen=True, slots=True)
class AlpnService:
    """What an ALPN name means: the service, the database protocol (for databases), ping framing."""

    service: Service
    db_protocol: str | None = None
    ping: bool = False


#: Database ALPN names and the protocol name used in ``db_service.databases[].protocol``.
DATABASE_PROTOCOLS: dict[str, str] = {
    POSTGRES: "postgres",
    MYSQL: "mysql",
    MONGODB: "mongodb",
    ORACLE: "oracle",
    REDIS: "redis",
    SQLSERVER: "sqlserver",
    SNOWFLAKE: "snowflake",
    CASSANDRA: "cassandra",
    ELASTICSEARCH: "elasticsearch",
    OPENSEARCH: "opensearch",
    DYNAMODB: "dynamodb",
    CLICKHOUSE: "clickhouse",
    SPANNER: "spanner",
}

#: Database protocols whose clients start in plain text (Postgres, MySQL): the proxy's database
#: handler runs its own TLS handling. The others are TLS-terminated at the ALPN router.
DB_OWN_TLS = frozenset({"postgres", "mysql"})


#: Teleport's ``DatabaseProtocols``, in its order.
DATABASE_ALPN: tuple[str, ...] = (POSTGRES, MYSQL, MONGODB, ORACLE, REDIS, SQLSERVER, SNOWFLAKE, CASSANDRA,
                                  ELASTICSEARCH, OPENSEARCH, DYNAMODB, CLICKHOUSE, SPANNER)
#: ``ProtocolsWithPingSupport``: the database protocols and ``teleport-tcp``.
PING_SUPPORT = frozenset((*DATABASE_ALPN, TCP))


def with_ping_protocols(protocols: tuple[str, ...]) -> tuple[str, ...]:
    """``WithPingProtocols``: the ``-ping`` form of each protocol that has one, first, then all."""
    pings = [p + PING_SUFFIX for p in protocols if p in PING_SUPPORT]
    return tuple(dict.fromkeys((*pings, *protocols)))


#: ``SupportedProtocols`` in Teleport's order: the ``NextProtos`` of the proxy's TLS server, so
#: the order in which it *prefers* names (http/1.1 before h2: Teleport's comment cites a Chrome
#: bug). 36 names; ``teleport-reversetunnelv2`` is not among them (only load balancers route on it).
SUPPORTED_PROTOCOLS: tuple[str, ...] = with_ping_protocols((
    HTTP11, HTTP2, PROXY_SSH, REVERSE_TUNNEL, AUTH, TCP, PROXY_SSH_GRPC, PROXY_GRPC, PROXY_GRPC_MTLS, *DATABASE_ALPN))
#: The SSH proxy's handler has its own TLS config (``proxySSHTLSConfig.NextProtos``) in
#: ``lib/service/service.go`` ``setupALPNRouter``.
SSH_PROXY_PROTOCOLS: tuple[str, ...] = (PROXY_SSH,)
#: The database route also accepts libpq's own ``postgresql`` (a tpemu extension, see above).
DATABASE_SERVER_PROTOCOLS: tuple[str, ...] = (*SUPPORTED_PROTOCOLS, POSTGRESQL_NATIVE)


class NoOverlap(PeerFault, ValueError):
    """No offered name is one the server speaks: Go's ``negotiateALPN`` error."""


def negotiate(server: tuple[str, ...], client: tuple[str, ...] | list[str]) -> str | None:
    """The protocol Go's ``crypto/tls`` server picks (``handshake_server.go`` ``negotiateALPN``).

    The first *server* name the client offered wins; a client offering nothing, or offering
    ``http/1.1`` to a server that lists ``h2``, gets no ALPN (``None``); otherwise
    :class:`NoOverlap` (the server sends ``no_application_protocol``). OpenSSL's
    ``SSL_select_next_proto``, under Python's ``set_alpn_protocols``, also picks in server order.
    """
    if not server or not client:
        return None
    offered = set(client)
    for name in server:
        if name in offered:
            return name
    if HTTP2 in server and HTTP11 in offered:
        return None
    raise NoOverlap(f"tls: client requested unsupported application protocols ({list(client)})")


def _build() -> dict[str, AlpnService]:
    table: dict[str, AlpnService] = {
        HTTP11: AlpnService(Service.WEB),
        HTTP2: AlpnService(Service.WEB),
        PROXY_SSH: AlpnService(Service.SSH_PROXY),
        PROXY_SSH_GRPC: AlpnService(Service.SSH_PROXY_GRPC),
        REVERSE_TUNNEL: AlpnService(Service.REVERSE_TUNNEL),
        AUTH: AlpnService(Service.AUTH),
        PROXY_GRPC: AlpnService(Service.PROXY_GRPC),
        PROXY_GRPC_MTLS: AlpnService(Service.PROXY_GRPC_MTLS),
        TCP: AlpnService(Service.APP_TCP),
        TCP + PING_SUFFIX: AlpnService(Service.APP_TCP, ping=True),
        POSTGRESQL_NATIVE: AlpnService(Service.DATABASE, "postgres"),
    }
    for name, proto in DATABASE_PROTOCOLS.items():
        table[name] = AlpnService(Service.DATABASE, proto)
        table[name + PING_SUFFIX] = AlpnService(Service.DATABASE, proto, ping=True)
    return table


#: Every ALPN name the router knows, exact match.
ALPN_SERVICES: dict[str, AlpnService] = _build()


#: Teleport reads at most this much of a ``teleport-mysql-<version>`` name
#: (``lib/srv/alpnproxy/proxy.go`` ``ExtractMySQLEngineVersion``: "never longer than 255 characters").
MAX_MYSQL_VERSION_ALPN = 255


def _printable_ascii(text: str) -> bool:
    # ALPN names arrive as latin-1 text (one character per byte, nothing lost); only visible ASCII
    # is a valid name here, so a byte such as 0x96 never reaches code that encodes to ASCII.
    return all("!" <= c <= "~" for c in text)


_AUTH_SERVICE = AlpnService(Service.AUTH)


def lookup(name: str) -> AlpnService | None:
    """The service for an offered ALPN name, including the prefix forms Teleport matches with
    ``MatchByALPNPrefix``: ``teleport-auth@<hex(cluster)>.teleport.cluster.local`` (what
    ``api/client`` ``ConfigureALPN`` sends) and ``teleport-mysql-<version>``.

    The version form is checked as bytes first (visible ASCII, at most
    :data:`MAX_MYSQL_VERSION_ALPN` long): anything else is an unknown name, closed as Teleport
    closes names no handler matches.
    """
    found = ALPN_SERVICES.get(name)
    if found is None:
        if name.startswith(AUTH):
            return _AUTH_SERVICE
        if (name.startswith(MYSQL_VERSION_PREFIX) and len(name) > len(MYSQL_VERSION_PREFIX)
                and len(name) <= MAX_MYSQL_VERSION_ALPN and _printable_ascii(name)):
            ping = name.endswith(PING_SUFFIX)
            found = AlpnService(Service.DATABASE, "mysql", ping=ping)
    return found


def auth_protocol(cluster_name: str) -> str:
    """``teleport-auth@<hex(cluster)>.teleport.cluster.local``: ``api/client`` ``ConfigureALPN``."""
    return AUTH + cluster_sni(cluster_name)


def negotiated_name(name: str) -> str:
    """The ALPN a server context offers for a routed name: the name itself, except that every
    ``teleport-mysql-<version>`` maps to ``teleport-mysql`` (or its ``-ping`` form), as Teleport's
    router offers only its fixed list (``common.SupportedProtocols``). A server context per
    version would let a client grow the proxy's memory one version string at a time."""
    if name in ALPN_SERVICES or not name.startswith(MYSQL_VERSION_PREFIX):
        return name
    return MYSQL + PING_SUFFIX if name.endswith(PING_SUFFIX) else MYSQL


def mysql_server_version(name: str) -> str:
    """The MySQL server version a ``teleport-mysql-<version>`` name carries, or ``""``.

    tsh sends the version base64-encoded (``mySQLVersionToProto``); Teleport decodes it and
    ignores a name that does not decode (``ExtractMySQLEngineVersion``). tpemu also accepts a
    plain version (``teleport-mysql-8.0.36``), as its own client sends. Only visible ASCII
    survives either way.
    """
    if not name.startswith(MYSQL_VERSION_PREFIX) or not _printable_ascii(name):
        return ""
    raw = name[len(MYSQL_VERSION_PREFIX):MAX_MYSQL_VERSION_ALPN].removesuffix(PING_SUFFIX)
    if not raw:
        return ""
    if raw[0].isdigit() and all(c.isalnum() or c in ".-_+~" for c in raw):
        return raw
    try:
        decoded = binascii.a2b_base64(raw.encode("ascii"), strict_mode=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return ""
    return decoded if decoded and _printable_ascii(decoded.replace(" ", "!")) else ""


def is_kube_sni(sni: str | None) -> bool:
    """Whether an SNI routes to the Kubernetes proxy (checked before ALPN, as Teleport does)."""
    return sni is not None and (sni.startswith(KUBE_SNI_PREFIX) or sni.startswith(KUBE_SNI_PREFIX_LEGACY))


def cluster_sni(cluster_name: str) -> str:
    """``<hex(cluster_name)>.teleport.cluster.local``: the SNI and SAN Teleport uses internally."""
    return cluster_name.encode("utf-8").hex() + "." + INTERNAL_DOMAIN
