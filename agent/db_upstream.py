"""How the Database Service reaches the server behind a database, as its client (glue).

The other half of :mod:`tpemu.agent.db_service` (which checks RBAC and serves each tunnelled
connection): once a connection is allowed, this opens the server's side —

* the user's own server (``uri: host:port``): TCP, then TLS per the database's ``tls.mode``
  (``verify-full``, ``verify-ca``, ``insecure``; ``disabled``: plain) with a client certificate for
  the database user (``CN=<db user>``) issued by the cluster's db CA through the Auth Service
  (``POST /v1/db/certs``, Teleport's ``GenerateDatabaseCert``; one SSL context per user, reused
  for half its life), as Teleport's ``lib/srv/db/common`` ``GetTLSConfig`` does;
* an embedded engine (:mod:`tpemu.agent.engines`): started on the first connection, the
  database user and name the caller may use created in it, reached through its unix socket;

and speaks the start of each protocol as a client where the server needs one:

* **postgres**: ``SSLRequest`` → ``S`` → TLS (PostgreSQL protocol 3.0 "SSL Session Encryption");
* **mysql**: the connection phase (``Protocol::Handshake`` v10, ``SSLRequest`` and TLS,
  ``HandshakeResponse41`` with the client's user, database, capabilities and attributes, auth
  switches answered with an empty password: the certificate is the credential), ending with
  the server's ``OK`` or ``ERR`` (Teleport's proxy waits for it, ``waitForOK``);
* **redis** (embedded engines): ``AUTH`` as the ACL user the engine created.

Every step has a deadline (``connect_timeout``; ``engine_start_timeout`` for an engine to start);
each failure is a :class:`BackendUnavailable` whose message says what failed, answered to the
client in its protocol by the service. :class:`Upstream` is a mixin of
:class:`~tpemu.agent.db_service.DatabaseService`, which holds the settings.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tpemu import authapi, pki
from tpemu.agent.backends.base import EmulatedBackend
from tpemu.agent.engines import Endpoint, Engine, EngineUnavailable
from tpemu.agent.engines.redis import auth_command, read_simple_reply
from tpemu.config import Addr, Database
from tpemu.errors import PeerFault
from tpemu.errors import describe as describe_error
from tpemu.net.streams import Stream
from tpemu.net.tls import new_context
from tpemu.wire import WireError
from tpemu.wire import mysql as my
from tpemu.wire import postgres as pg

#: Client certificates for real servers live this long and are reused for half of it.
CLIENT_CERT_TTL = 3600.0

#: ``db_user`` → (certificate PEM, key PEM, CA PEMs that sign the database servers' certificates).
CertIssuer = Callable[[str], Awaitable[tuple[bytes, bytes, bytes]]]


class BackendUnavailable(PeerFault):
    """The database server cannot be reached or refused the connection; the message says why."""


def auth_cert_issuer(client: Any, ttl: float = CLIENT_CERT_TTL) -> CertIssuer:
    """A :data:`CertIssuer` calling ``POST /v1/db/certs`` with ``client`` (an
    :class:`~tpemu.authclient.AuthClient` holding the agent's Db identity)."""

    async def issue(db_user: str) -> tuple[bytes, bytes, bytes]:
        key = await asyncio.to_thread(pki.generate_key, "ecdsa")
        answer = await client.call("POST", "/v1/db/certs", {
            "public_key": authapi.b64(pki.public_key_pem(key)), "server_names": [db_user],
            "ttl": int(ttl * authapi.NS)})
        cert = authapi.unb64(answer.get("cert"), "cert")
        cas = b"".join(authapi.unb64(c, "cacerts") for c in answer.get("cacerts") or [])
        return cert, pki.key_pem(key), cas

    return issue



@dataclass
class _Served:
    db: Database
    backend: EmulatedBackend | None
    addr: Addr | None
    engine: Engine | None = None
    #: Why nothing can serve this database (an embedded-only engine that is not installed).
    unavailable: str = ""
    #: db user → (SSL context with that user's client certificate, when it stops being reused).
    contexts: dict[str, tuple[ssl.SSLContext, float]] = field(default_factory=dict)

    @property
    def tls_mode(self) -> str:
        return "disabled" if self.engine is not None else self.db.tls.mode or "verify-full"

    @property
    def target(self) -> str:
        """What serves this database, for logs."""
        if self.engine is not None:
            return f"the embedded {self.engine.label}"
        if self.addr is not None:
            return str(self.addr)
        return "nothing (no engine installed)" if self.unavailable else "the emulated backend"



class Upstream:
    """The Database Service as a client of the servers behind its databases (a mixin)."""

    cert_issuer: CertIssuer | None
    connect_timeout: float
    engine_start_timeout: float

    async def _connect_postgres(self, served: _Served, db_user: str, db_name: str) -> Stream:
        reader, writer = await self._open(served, access=(db_user, db_name))
        if served.tls_mode == "disabled":
            return Stream(reader, writer, "backend")
        ctx = await self._tls_context(served, db_user)
        try:
            async with asyncio.timeout(self.connect_timeout):
                writer.write(pg.SSL_REQUEST)
                await writer.drain()
                answer = await reader.readexactly(1)
                if answer != b"S":
                    raise BackendUnavailable(f"the server at {served.addr} does not offer TLS (answered "
                                             f"{answer!r} to SSLRequest; set tls.mode: disabled to connect without)")
                await writer.start_tls(ctx, server_hostname=self._server_hostname(served))
        except (TimeoutError, ssl.SSLError, OSError, asyncio.IncompleteReadError) as exc:
            writer.close()
            raise BackendUnavailable(f"TLS with the server at {served.addr} failed: {describe_error(exc)}") from None
        return Stream(reader, writer, "backend")

    async def _mysql_handshake(self, served: _Served, backend: Stream, client: my.HandshakeResponse,
                               ctx: ssl.SSLContext | None) -> my.Packet:
        """The MySQL connection phase with the backend, as a client; returns its final OK or ERR."""

        async def read_packet() -> my.Packet:
            head = await backend.reader.readexactly(4)
            my.parse_packet(head, my.MAX_CLIENT_PAYLOAD)
            packet = my.parse_packet(head + await backend.reader.readexactly(int.from_bytes(head[:3], "little")),
                                     my.MAX_CLIENT_PAYLOAD)
            assert packet is not None
            return packet

        try:
            async with asyncio.timeout(self.connect_timeout):
                first = await read_packet()
                if first.payload[:1] == b"\xff":
                    return first  # the server refuses before greeting (too many connections, host blocked …)
                greeting = my.parse_handshake_v10(first.payload)
                caps = client.capabilities & greeting.capabilities & ~(my.CLIENT_SSL | my.CLIENT_COMPRESS)
                caps |= my.CLIENT_PROTOCOL_41
                if not client.database:
                    caps &= ~my.CLIENT_CONNECT_WITH_DB
                seq = 1
                if ctx is not None:
                    if not greeting.capabilities & my.CLIENT_SSL:
                        raise BackendUnavailable(f"the server at {served.addr} does not offer TLS "
                                                 "(set tls.mode: disabled to connect without)")
                    caps |= my.CLIENT_SSL
                    ssl_request = (caps.to_bytes(4, "little") + client.max_packet.to_bytes(4, "little")
                                   + bytes((client.charset,)) + b"\x00" * 23)
                    backend.write(my.encode_packet(seq, ssl_request))
                    await backend.drain()
                    seq += 1
                    await backend.writer.start_tls(ctx, server_hostname=self._server_hostname(served))
                plugin = greeting.auth_plugin or my.NATIVE_PASSWORD
                response = my.HandshakeResponse(caps, client.max_packet, client.charset, client.username, b"",
                                                client.database, plugin, client.attributes)
                backend.write(my.encode_packet(seq, my.encode_handshake_response(response)))
                await backend.drain()
                for _ in range(6):
                    packet = await read_packet()
                    kind = packet.payload[:1]
                    if kind in (b"\x00", b"\xff"):
                        return packet
                    if kind == b"\xfe":  # AuthSwitchRequest: the certificate is the credential, no password
                        name = packet.payload[1:].split(b"\x00", 1)[0]
                        answer = b"\x00" if name == b"mysql_clear_password" else b""
                        backend.write(my.encode_packet(packet.seq + 1, answer))
                        await backend.drain()
                    elif kind == b"\x01":  # AuthMoreData (caching_sha2_password)
                        if packet.payload[1:2] == b"\x04":  # full authentication: an empty password
                            if ctx is None:
                                raise BackendUnavailable("the server wants a password over TLS (caching_sha2 full "
                                                         "authentication); configure TLS for this database")
                            backend.write(my.encode_packet(packet.seq + 1, b"\x00"))
                            await backend.drain()
                    else:
                        raise BackendUnavailable(f"unexpected packet 0x{packet.payload[:1].hex()} during the MySQL "
                                                 "handshake")
                raise BackendUnavailable("the MySQL handshake did not finish")
        except (TimeoutError, ssl.SSLError, OSError, asyncio.IncompleteReadError, WireError) as exc:
            backend.close()
            raise BackendUnavailable(f"MySQL handshake with {served.target} failed: "
                                     f"{describe_error(exc)}") from None

    async def _redis_login(self, served: _Served, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           db_user: str) -> None:
        """Authenticate an embedded Redis session as the ACL user ``db_user`` (created by the engine)."""
        if db_user == "default":
            return
        try:
            async with asyncio.timeout(self.connect_timeout):
                writer.write(auth_command(db_user))
                await writer.drain()
                answer = await read_simple_reply(reader)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                EngineUnavailable) as exc:
            writer.close()
            raise BackendUnavailable(f"AUTH with {served.target} failed: {describe_error(exc)}") from None
        if answer != b"+OK":
            writer.close()
            raise BackendUnavailable(f"{served.target} refused AUTH as {db_user!r}: "
                                     f"{answer.decode('utf-8', 'replace')}")

    def _server_hostname(self, served: _Served) -> str | None:
        if served.tls_mode != "verify-full":
            return None
        assert served.addr is not None
        return served.db.tls.server_name or served.addr.host

    async def _open(self, served: _Served, tls_user: str | None = None, access: tuple[str, str] = ("", "")
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the real server (TLS from the first byte if ``tls_user`` is given and the
        mode is not ``disabled``); for an embedded engine, started if needed, after the
        ``access`` (database user, name) pair exists in it. Raises :class:`BackendUnavailable`."""
        if served.engine is not None:
            return await self._open_engine(served, served.engine, access)
        addr = served.addr
        if addr is None:
            raise BackendUnavailable(served.unavailable or "nothing serves this database")
        ctx = None
        if tls_user is not None and served.tls_mode != "disabled":
            ctx = await self._tls_context(served, tls_user)
        try:
            async with asyncio.timeout(self.connect_timeout):
                return await asyncio.open_connection(addr.host, addr.port, ssl=ctx,
                                                     server_hostname=self._server_hostname(served) if ctx else None)
        except TimeoutError:
            raise BackendUnavailable(f"connecting to {addr} timed out after {self.connect_timeout:g}s") from None
        except ssl.SSLError as exc:
            raise BackendUnavailable(f"TLS with the server at {addr} failed: {describe_error(exc)}") from None
        except OSError as exc:
            raise BackendUnavailable(f"cannot connect to {addr}: {exc.strerror or exc}") from None

    async def _open_engine(self, served: _Served, engine: Engine, access: tuple[str, str]
                           ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        endpoint: Endpoint | None = None
        try:
            endpoint = await engine.ensure_access(*access, timeout=self.engine_start_timeout)
            async with asyncio.timeout(self.connect_timeout):
                return await endpoint.open()
        except EngineUnavailable as exc:
            raise BackendUnavailable(f"the embedded {engine.label} engine is not running: {exc}") from None
        except TimeoutError:
            raise BackendUnavailable(f"connecting to {served.target} at {endpoint} timed out") from None
        except OSError as exc:
            why = exc.strerror or exc
            raise BackendUnavailable(f"cannot connect to {served.target} at {endpoint}: {why}") from None

    async def _tls_context(self, served: _Served, db_user: str) -> ssl.SSLContext:
        cached = served.contexts.get(db_user)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        cert = key = cas = b""
        if self.cert_issuer is not None:
            try:
                cert, key, cas = await self.cert_issuer(db_user)
            except (authapi.AuthAPIError, OSError, ValueError) as exc:
                message = getattr(exc, "message", str(exc))
                raise BackendUnavailable(f"cannot get a client certificate for {db_user!r} from the Auth Service: "
                                         f"{message}") from None
        ctx = await asyncio.to_thread(_client_context, served, cert, key, cas)
        served.contexts[db_user] = (ctx, time.monotonic() + CLIENT_CERT_TTL / 2)
        return ctx


def _client_context(served: _Served, cert: bytes, key: bytes, cas: bytes) -> ssl.SSLContext:
    ctx = new_context(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    mode = served.tls_mode
    if mode == "insecure":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.check_hostname = mode == "verify-full"
        if served.db.tls.ca_cert_file:
            ctx.load_verify_locations(cafile=served.db.tls.ca_cert_file)
        elif cas:
            ctx.load_verify_locations(cadata=cas.decode())
        else:
            ctx.load_default_certs()
    if cert and key:
        # load_cert_chain reads files only: a private 0600 file, removed at once.
        fd, path = tempfile.mkstemp(prefix="tpemu-dbcert-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(cert + b"\n" + key)
            ctx.load_cert_chain(path)
        finally:
            os.unlink(path)
    return ctx
