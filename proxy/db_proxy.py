"""The proxy's database handler: identity from the client certificate, then the agent's tunnel (glue).

Teleport's database proxy (``lib/srv/db/proxyserver.go`` and the per-protocol proxies): the
client's certificate, verified against the user CA during the TLS handshake, carries the route
(``RouteToDatabase``: service name, protocol, user, database); without a route, the SNI's first
label names the database (``pg1.proxy.example.com`` → ``pg1``). The user and database the client
names in its own protocol override the route's, as Teleport's ``Authorize`` does. The proxy then
opens a channel through the reverse tunnel of the agent serving that database
(``TunnelRegistry.dial``, conn_type ``db``, the identity as JSON) and relays; the agent's
Database Service checks RBAC again and answers refusals in the database's protocol.

How clients arrive (``RouteKind.DATABASE``):

* **Postgres, plain** (SSLRequest on the web port or ``postgres_listen_addr``): ``postgres_front``
  answers ``S``, ends TLS, reads the StartupMessage and calls :meth:`DatabaseProxy.on_postgres_startup`.
* **TLS with a database ALPN** (``teleport-postgres``, ``postgresql`` for libpq ≥ 17 direct TLS,
  ``teleport-mysql[-<version>]``, ``teleport-mongodb``, ``teleport-redis``, and the ``-ping``
  forms, whose inner stream is ping-framed) and the Mongo/Redis listeners: TLS ends here; inside,
  Postgres may still send SSLRequest/GSSENCRequest (answered ``N``: the stream is already
  encrypted), MySQL gets the proxy's greeting without ``CLIENT_SSL``, Mongo and Redis bytes go
  straight to the agent.
* **MySQL listener** (``mysql_listen_addr``, the server speaks first): the proxy greets with
  ``CLIENT_SSL``, reads the client's SSLRequest (exactly its bytes, so the ClientHello stays in
  the kernel for the TLS stack), ends TLS with the client certificate, reads HandshakeResponse41.

What the proxy sends first on the channel: Postgres — the StartupMessage; MySQL — the client's
HandshakeResponse41 (capabilities reduced to what the proxy's greeting offered), after which the
agent answers exactly one packet, the backend's OK or ERR, which goes to the client with the
sequence number it expects (Teleport's ``waitForOK``); Mongo/Redis — nothing but the client's bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import secrets
import ssl
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from tpemu import identity as ident
from tpemu.logs import RateLimiter
from tpemu.net.channel import open_streams
from tpemu.net.db_refusal import Refusal, refuse
from tpemu.net.pipe import Pipe, park_streams
from tpemu.net.sockets import close_with_answer, format_addr, read_exact
from tpemu.net.streams import PingTransport, Stream
from tpemu.net.tls import ContextCache
from tpemu.net.tls_alerting import accept_stream_with_alerts
from tpemu.proxy import postgres_front
from tpemu.proxy.frontdoor import Accepted
from tpemu.proxy.route import server_alpn as route_server_alpn
from tpemu.wire import WireError
from tpemu.wire import alpn as alpn_names
from tpemu.wire import mysql as my
from tpemu.wire import postgres as pg
from tpemu.wire.sniff import Protocol as Sniffed
from tpemu.wire.tunnel import DATABASE, DialRequest

log = logging.getLogger(__name__)

#: What the proxy's MySQL greeting offers: the emulated backend's set, which MariaDB and MySQL
#: servers also support, so capabilities agreed with the client hold for any backend.
MYSQL_CAPABILITIES = (
    my.CLIENT_LONG_PASSWORD | my.CLIENT_FOUND_ROWS | my.CLIENT_LONG_FLAG | my.CLIENT_CONNECT_WITH_DB
    | my.CLIENT_PROTOCOL_41 | my.CLIENT_INTERACTIVE | my.CLIENT_TRANSACTIONS | my.CLIENT_SECURE_CONNECTION
    | my.CLIENT_MULTI_STATEMENTS | my.CLIENT_MULTI_RESULTS | my.CLIENT_PS_MULTI_RESULTS | my.CLIENT_PLUGIN_AUTH
    | my.CLIENT_CONNECT_ATTRS | my.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | my.CLIENT_DEPRECATE_EOF
)
#: The version the proxy's greeting announces unless the ALPN carries one (``teleport-mysql-<v>``)
#: or ``proxy_service.mysql_server_version`` is set: Teleport's (lib/srv/db/mysql/proxy.go
#: ``serverVersion``; lib/srv/db/proxyserver.go ``MySQLProxy`` passes ``MySQLServerVersion``).
MYSQL_SERVER_VERSION = "8.0.0-Teleport"
#: What Teleport's MySQL proxy answers a client that did not upgrade to TLS (performHandshake).
MYSQL_PLAIN_REFUSAL = "expected TLS connection, got: *net.TCPConn"
_NONCE_ALPHABET = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class Dialer(Protocol):
    """What the proxy needs from the reverse-tunnel registry (``proxy/tunnels.py``)."""

    async def dial(self, request: DialRequest, timeout: float = 10.0) -> asyncio.Transport:
        """A parked transport (the tunnel channel) to the agent serving the database."""
        ...


@dataclass(frozen=True)
class _Client:
    """A client whose TLS is done: its stream, identity (or why it has none) and SNI."""

    stream: Stream
    identity: ident.Identity | None
    why_no_identity: str
    sni: str | None


class _Buffered:
    """Exact reads over a :class:`Stream` (maybe ping-framed); what is left over is relayed later."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def readexactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = await self.stream.read(65536)
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(self.buf), n)
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def leftover(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out


#: SNI names seen by contexts this proxy ends TLS with, per TLS object (the server side of an
#: ``SSLObject`` does not expose the SNI the client sent; the handshake's callback does).
_SNI: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _remember_sni(sslobj: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
    if server_name:
        with contextlib.suppress(TypeError):
            _SNI[sslobj] = server_name


def _sni_of(writer: asyncio.StreamWriter) -> str | None:
    sslobj = writer.get_extra_info("ssl_object")
    return _SNI.get(sslobj) if sslobj is not None else None


def database_from_sni(sni: str | None) -> str:
    """The database an SNI names: its first label, unless it is an address or an internal name."""
    if not sni or "." not in sni or sni.endswith("." + alpn_names.INTERNAL_DOMAIN):
        return ""
    try:
        ipaddress.ip_address(sni)
        return ""
    except ValueError:
        return sni.split(".", 1)[0]


class DatabaseProxy:
    """Serves ``RouteKind.DATABASE`` connections of one proxy."""

    def __init__(self, contexts: Callable[[], ContextCache | None], dialer: Callable[[], Dialer | None],
                 handshake_timeout: float = 10.0, dial_timeout: float = 10.0,
                 mysql_server_version: str = "") -> None:
        self._contexts = contexts
        self.mysql_server_version = mysql_server_version or MYSQL_SERVER_VERSION
        self._dialer = dialer
        self.handshake_timeout = handshake_timeout
        self.dial_timeout = dial_timeout
        #: Bytes relayed by (route, ``in`` client→database / ``out``), for /metrics.
        self.bytes: Counter[tuple[str, str]] = Counter()
        self.limiter = RateLimiter()
        self._mysql_ids = itertools.count(1)
        #: Connections relayed to an agent, and refused ones by reason.
        self.stats: dict[str, int] = {"relayed": 0, "denied": 0, "unavailable": 0, "protocol": 0}

    @property
    def contexts(self) -> ContextCache:
        cache = self._contexts()
        assert cache is not None, "the proxy has not started"
        return cache

    def context(self, alpn: tuple[str, ...]) -> ssl.SSLContext:
        """The server context for ``alpn``, recording the SNI of each handshake."""
        ctx = self.contexts.get(alpn)
        if ctx.sni_callback is None:
            ctx.sni_callback = _remember_sni
        return ctx

    # -- entry points -------------------------------------------------------------------------------

    async def handle(self, acc: Accepted) -> None:
        """The handler for ``RouteKind.DATABASE``."""
        protocol = acc.route.db_protocol or ""
        if acc.protocol is Sniffed.POSTGRES:
            self.context(postgres_front.POSTGRES_ALPN)
            await postgres_front.postgres_front(acc, self.contexts, self.on_postgres_startup,
                                                timeout=self.handshake_timeout)
            return
        if acc.protocol is None and protocol == "mysql":
            await self._mysql_listener(acc)
            return
        if acc.protocol is not Sniffed.TLS:
            log.warning("%s: database protocol %r is not supported by tpemu", acc.ctx, protocol or "-")
            close_with_answer(acc.sock)
            return
        client = await self._accept_tls(acc)
        if client is None:
            return
        if protocol not in ("postgres", "mysql", "mongodb", "redis"):
            # Teleport negotiates every database name (SupportedProtocols) and refuses afterwards.
            log.warning("%s: database protocol %r is not supported by tpemu", acc.ctx, protocol or "-")
            client.stream.close()
            return
        if protocol == "postgres":
            await self._postgres_in_tls(acc, client)
        elif protocol == "mysql":
            await self._mysql_greet(acc, client, tls_upgrade=False)
        else:
            await self._stream_protocol(acc, client, protocol)

    async def on_postgres_startup(self, acc: Accepted, startup: pg.StartupMessage, reader: asyncio.StreamReader,
                                  writer: asyncio.StreamWriter) -> None:
        """``ProxyService.on_postgres_startup``: a StartupMessage read inside TLS after SSLRequest."""
        identity, why = _identity_of(writer)
        await self._postgres(acc, _Client(Stream(reader, writer, "client"), identity, why, _sni_of(writer)),
                             startup, b"")

    # -- TLS ------------------------------------------------------------------------------------------

    async def _accept_tls(self, acc: Accepted) -> _Client | None:
        # Every name Teleport knows, in its order: offered [teleport-postgres, teleport-postgres-ping]
        # selects the -ping form (lib/srv/alpnproxy/proxy.go handleConn: ping framing follows the
        # *negotiated* protocol, IsPingProtocol). One context for every name, never keyed by the
        # client's bytes (a context per MySQL version string would grow the cache without bound).
        ctx = self.context(route_server_alpn(acc.route.kind) or alpn_names.DATABASE_SERVER_PROTOCOLS)
        try:
            # With the alert on failure, as Go's crypto/tls answers (issue 16: the client saw a reset).
            reader, writer = await accept_stream_with_alerts(acc.sock, ctx, self.handshake_timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.limiter.warning(log, "tls", "%s: TLS handshake failed: %s", acc.ctx, exc)
            close_with_answer(acc.sock)
            return None
        identity, why = _identity_of(writer)
        negotiated = writer.get_extra_info("ssl_object").selected_alpn_protocol() or ""
        if negotiated.endswith(alpn_names.PING_SUFFIX):  # Teleport's ping framing: a layer under the streams
            reader, writer = await open_streams(PingTransport.wrap(park_streams(reader, writer)))
        return _Client(Stream(reader, writer, "client"), identity, why,
                       acc.hello.sni if acc.hello is not None else None)

    # -- Postgres ---------------------------------------------------------------------------------

    async def _postgres_in_tls(self, acc: Accepted, client: _Client) -> None:
        src = _Buffered(client.stream)
        try:
            async with asyncio.timeout(self.handshake_timeout):
                for _ in range(3):
                    packet = await postgres_front.read_startup_packet(src.readexactly)
                    if isinstance(packet, pg.SSLRequest | pg.GSSENCRequest):
                        client.stream.write(b"N")  # already encrypted: go on in this TLS session
                        await client.stream.drain()
                        continue
                    if isinstance(packet, pg.CancelRequest):
                        log.info("%s: CancelRequest dropped (no session to cancel)", acc.ctx)
                        client.stream.close()
                        return
                    break
                else:
                    packet = None
        except (TimeoutError, WireError, asyncio.IncompleteReadError, OSError, ssl.SSLError) as exc:
            log.info("%s: Postgres startup not completed: %s", acc.ctx, exc)
            await self._refuse(acc, "postgres", client.stream, f"invalid startup: {exc}", Refusal.PROTOCOL)
            return
        if not isinstance(packet, pg.StartupMessage):
            await self._refuse(acc, "postgres", client.stream, "expected a StartupMessage", Refusal.PROTOCOL)
            return
        await self._postgres(acc, client, packet, src.leftover())

    async def _postgres(self, acc: Accepted, client: _Client, startup: pg.StartupMessage, leftover: bytes) -> None:
        user = startup.get("user") or ""
        database = startup.get("database") or user
        target = await self._target(acc, client, "postgres", user, database)
        if target is None:
            return
        name, identity = target
        agent = await self._dial(acc, client, "postgres", name, identity)
        if agent is None:
            return
        params = b"".join(k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in startup.params) + b"\x00"
        raw = (8 + len(params)).to_bytes(4, "big") + ((startup.major << 16) | startup.minor).to_bytes(4, "big") + params
        await self._relay(acc, client, agent, name, raw + leftover)

    # -- MySQL ------------------------------------------------------------------------------------

    async def _mysql_listener(self, acc: Accepted) -> None:
        """``mysql_listen_addr``: greet in plain text, take the SSLRequest, end TLS, go on."""
        loop = asyncio.get_running_loop()
        sock = acc.sock
        nonce = bytes(secrets.choice(_NONCE_ALPHABET) for _ in range(my.NONCE_LENGTH))
        greeting = my.encode_handshake_v10(self.mysql_server_version, next(self._mysql_ids), nonce,
                                           MYSQL_CAPABILITIES | my.CLIENT_SSL, my.NATIVE_PASSWORD)
        try:
            async with asyncio.timeout(self.handshake_timeout):
                await loop.sock_sendall(sock, my.encode_packet(0, greeting))
                head = await read_exact(sock, 4)
                my.parse_packet(head)
                payload = await read_exact(sock, int.from_bytes(head[:3], "little"))
                first = my.parse_handshake_response(payload)
        except (TimeoutError, WireError, asyncio.IncompleteReadError, OSError) as exc:
            log.info("%s: MySQL client left or misbehaved before TLS: %s", acc.ctx, exc)
            close_with_answer(sock)
            return
        if not isinstance(first, my.SSLRequest):
            # Teleport's MySQL proxy (lib/srv/db/mysql/proxy.go performHandshake) finds no TLS
            # connection after ReadHandshakeResponse and answers through go-mysql's WriteError:
            # ER_UNKNOWN_ERROR (1105, HY000) "expected TLS connection, got: *net.TCPConn". tpemu's
            # hint goes to the log only.
            self.stats["denied"] += 1
            self.limiter.warning(log, "mysql-plain", "%s: MySQL client %r without TLS refused (it needs TLS with "
                                 "the client certificate from 'tpemu db login': --ssl-cert/--ssl-key, or tpemu "
                                 "proxy db --tunnel)", acc.ctx, first.username)
            close_with_answer(sock, my.encode_packet(head[3] + 1, my.encode_err_payload(
                my.ER_UNKNOWN_ERROR, MYSQL_PLAIN_REFUSAL, "HY000")))
            return
        try:
            reader, writer = await accept_stream_with_alerts(sock, self.context(()), self.handshake_timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.limiter.warning(log, "tls", "%s: MySQL TLS handshake failed: %s", acc.ctx, exc)
            close_with_answer(sock)
            return
        identity, why = _identity_of(writer)
        client = _Client(Stream(reader, writer, "client"), identity, why, _sni_of(writer))
        await self._mysql_greet(acc, client, tls_upgrade=True, seq_base=head[3] + 1)

    async def _mysql_greet(self, acc: Accepted, client: _Client, tls_upgrade: bool, seq_base: int = 0) -> None:
        """Greet (unless the greeting went out before a TLS upgrade), read HandshakeResponse41, dial."""
        src = _Buffered(client.stream)
        try:
            async with asyncio.timeout(self.handshake_timeout):
                if not tls_upgrade:
                    version = alpn_names.mysql_server_version(acc.route.alpn or "")
                    nonce = bytes(secrets.choice(_NONCE_ALPHABET) for _ in range(my.NONCE_LENGTH))
                    client.stream.write(my.encode_packet(0, my.encode_handshake_v10(
                        version or self.mysql_server_version, next(self._mysql_ids), nonce, MYSQL_CAPABILITIES,
                        my.NATIVE_PASSWORD)))
                    await client.stream.drain()
                head = await src.readexactly(4)
                my.parse_packet(head)
                payload = await src.readexactly(int.from_bytes(head[:3], "little"))
                response = my.parse_handshake_response(payload)
        except (TimeoutError, WireError, asyncio.IncompleteReadError, OSError, ssl.SSLError) as exc:
            log.info("%s: MySQL handshake not completed: %s", acc.ctx, exc)
            await self._refuse(acc, "mysql", client.stream, f"Bad handshake: {exc}", Refusal.PROTOCOL, seq_base + 1)
            return
        seq = (head[3] + 1) & 0xFF
        if not isinstance(response, my.HandshakeResponse):
            await self._refuse(acc, "mysql", client.stream, "Bad handshake: TLS is already on", Refusal.PROTOCOL, seq)
            return
        target = await self._target(acc, client, "mysql", response.username, response.database, mysql_seq=seq)
        if target is None:
            return
        name, identity = target
        agent = await self._dial(acc, client, "mysql", name, identity, mysql_seq=seq)
        if agent is None:
            return
        agreed = replace(response, capabilities=response.capabilities & (MYSQL_CAPABILITIES | my.CLIENT_SSL))
        routed_db = identity.route_to_database.database
        if not response.database and routed_db:  # the database of the login (tpemu db login --db-name)
            agreed = replace(agreed, database=routed_db, capabilities=agreed.capabilities | my.CLIENT_CONNECT_WITH_DB)
        a_reader, a_writer = await open_streams(agent)
        a_writer.write(my.encode_packet(head[3], my.encode_handshake_response(agreed)))
        try:
            async with asyncio.timeout(self.dial_timeout + self.handshake_timeout):
                await a_writer.drain()
                ahead = await a_reader.readexactly(4)
                my.parse_packet(ahead)
                result = await a_reader.readexactly(int.from_bytes(ahead[:3], "little"))
        except (TimeoutError, WireError, asyncio.IncompleteReadError, OSError) as exc:
            agent.close()
            await self._refuse(acc, "mysql", client.stream, f"database {name!r} did not answer the handshake: "
                               f"{exc or type(exc).__name__}", Refusal.UNAVAILABLE, seq)
            return
        client.stream.write(my.encode_packet(seq, result))
        await client.stream.drain()
        if result[:1] != b"\x00":
            agent.close()
            self.stats["denied"] += 1
            log.info("%s: database %s refused MySQL user %r: %s", acc.ctx, name, response.username,
                     result[9:].decode("utf-8", "replace"))
            client.stream.close()
            await client.stream.wait_closed()
            return
        await self._relay(acc, client, park_streams(a_reader, a_writer), name, src.leftover())

    # -- Mongo, Redis -----------------------------------------------------------------------------

    async def _stream_protocol(self, acc: Accepted, client: _Client, protocol: str) -> None:
        target = await self._target(acc, client, protocol, "", "")
        if target is None:
            return
        name, identity = target
        agent = await self._dial(acc, client, protocol, name, identity)
        if agent is None:
            return
        await self._relay(acc, client, agent, name, b"")

    # -- shared steps -------------------------------------------------------------------------------

    async def _target(self, acc: Accepted, client: _Client, protocol: str, user: str, database: str | None,
                      mysql_seq: int = 0) -> tuple[str, ident.Identity] | None:
        """The database name and the identity to send to the agent; refuses the client if none."""
        identity = client.identity
        why = ""
        if identity is None:
            why = client.why_no_identity
        else:
            route = identity.route_to_database
            name = route.service_name or database_from_sni(client.sni)
            if not name:
                why = ("no database selected: the client certificate has no database route and the SNI names "
                       "none (run 'tpemu db login NAME', or connect with host=NAME.<proxy host>)")
            elif route.protocol and route.protocol != protocol:
                why = f"the certificate is for a {route.protocol} database, not {protocol}"
            else:
                routed = replace(identity, route_to_database=ident.RouteToDatabase(
                    name, protocol, user or route.username, database or route.database))
                return name, routed
        self.stats["denied"] += 1
        await self._refuse(acc, protocol, client.stream, why, Refusal.DENIED, mysql_seq)
        return None

    async def _dial(self, acc: Accepted, client: _Client, protocol: str, name: str, identity: ident.Identity,
                    mysql_seq: int = 0) -> asyncio.Transport | None:
        dialer = self._dialer()
        request = DialRequest(conn_type=DATABASE, name=name, identity=identity.to_json(),
                              client_src_addr=format_addr(acc.peer), client_dst_addr=format_addr(acc.local_addr()))
        try:
            if dialer is None:
                raise LookupError("no agent is connected to this proxy (no reverse tunnels)")
            return await dialer.dial(request, timeout=self.dial_timeout)
        except Exception as exc:  # the tunnel registry's errors (TunnelError, timeouts) end here
            message = f'database "{name}" is unavailable: {exc}'
            self.stats["unavailable"] += 1
            self.limiter.warning(log, "dial", "%s: %s", acc.ctx, message)
            await self._refuse(acc, protocol, client.stream, message, Refusal.UNAVAILABLE, mysql_seq, counted=True)
            return None

    async def _relay(self, acc: Accepted, client: _Client, agent: asyncio.Transport, name: str,
                     first: bytes) -> None:
        """Join the client to the agent's channel; returns at once (the pipe lives on alone)."""
        self.stats["relayed"] += 1
        log.info("%s: user %s → database %s through its agent", acc.ctx,
                 client.identity.username if client.identity else "?", name)

        def closed(pipe: Pipe, exc: BaseException | None) -> None:
            self.bytes[(acc.route.name, "in")] += pipe.a_to_b
            self.bytes[(acc.route.name, "out")] += pipe.b_to_a
            log.debug("%s: database %s closed; %d bytes up, %d down%s", acc.ctx, name, pipe.a_to_b, pipe.b_to_a,
                      f" ({exc})" if exc else "")

        Pipe.join(park_streams(client.stream.reader, client.stream.writer), agent, first_to_b=first, on_close=closed)

    async def _refuse(self, acc: Accepted, protocol: str, stream: Stream, message: str, why: Refusal,
                      mysql_seq: int = 0, counted: bool = False) -> None:
        if not counted and why is Refusal.PROTOCOL:
            self.stats["protocol"] += 1
        self.limiter.warning(log, f"refuse-{why.value}", "%s proto=%s refused: %s", acc.ctx, protocol, message)
        await refuse(protocol, stream, message, why, mysql_seq)


def _identity_of(writer: asyncio.StreamWriter) -> tuple[ident.Identity | None, str]:
    """The identity of the verified client certificate of a TLS stream, or why there is none."""
    sslobj = writer.get_extra_info("ssl_object")
    der: Any = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if not der:
        return None, ("a client certificate is required: run 'tpemu db login NAME' and connect with its "
                      "certificate, or use 'tpemu proxy db --tunnel NAME'")
    try:
        identity = ident.from_der(der)
    except ident.IdentityError as exc:
        return None, f"the client certificate holds no valid identity: {exc}"
    # A usage-restricted certificate is good for database access only if that is its usage
    # (lib/srv/db/proxyserver.go NewProxyServer: AcceptedUsage UsageDatabaseOnly).
    refused = ident.usage_refusal(identity.usage, (ident.USAGE_DATABASE_ONLY,), "database access")
    return (None, refused) if refused else (identity, "")
