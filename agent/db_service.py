"""The Database Service of an agent: RBAC, then emulated backends or real database servers (glue).

Teleport's ``db_service`` (``lib/srv/db``): the proxy opens a channel through the agent's reverse
tunnel with a dial request naming the database and carrying the caller's identity, which the
proxy verified from the client certificate. This service checks it again (RBAC, as Teleport's
``checkAccess``: the database user must be in the identity's ``database_users`` and, for
Postgres, MySQL and MongoDB, the database name in ``database_names``; ``*`` allows any), and
only then lets a byte reach the backend. A refusal, or a backend that cannot be reached, is
answered in the database's own protocol (:mod:`tpemu.net.db_refusal`).

What arrives on the channel after the dial, per protocol (the proxy's side is
``tpemu.proxy.db_proxy``):

* **postgres** — the client's ``StartupMessage`` (``user``/``database`` as the proxy put in the
  identity's route), then the client's bytes. An emulated backend reads the StartupMessage
  itself; a real server gets ``SSLRequest`` → TLS with a client certificate for the database
  user (``CN=<db user>``, issued by the cluster's db CA: ``POST /v1/db/certs``) → the
  StartupMessage, and its answers (AuthenticationOk … ReadyForQuery) go straight to the client.
* **mysql** — the client's ``HandshakeResponse41`` packet (capabilities already agreed with the
  proxy, which greeted the client and ended TLS). This service does its own connection phase
  with the backend as a MySQL client — greeting, ``SSLRequest`` and TLS with the client
  certificate for a real server, HandshakeResponse41 with the client's user, database,
  capabilities and attributes, auth switches answered with an empty password (the certificate is
  the credential, as ``REQUIRE SUBJECT``/``REQUIRE X509`` accounts expect) — then sends back
  exactly one packet, the backend's ``OK`` or ``ERR``; after an OK the channel is in the command
  phase. This is Teleport's split: its proxy waits for that OK (``waitForOK``) before answering
  the client.
* **mongodb**, **redis** — the client's bytes from the first one (TLS already ended at the proxy).

What serves a database is its ``uri`` (:mod:`tpemu.agent.engines` says more):

* ``embedded`` (the default): a real engine (PostgreSQL, Redis, nx-27017, MariaDB) this service
  starts on the first connection and supervises, reached through its unix socket exactly as a
  user's server is (TLS ``disabled``), after the database user and name the caller's certificate
  allows were created in it. No engine installed: one WARNING line at start-up naming what to
  install, and the in-process emulator serves instead.
* ``emulated``: the in-process emulator (Postgres, MySQL, Redis), one instance per database, shared
  by its connections; it gets a :class:`~tpemu.agent.backends.base.Session` (no password asked; the
  backend refuses a user or database other than the session's). MongoDB has none: nx-27017 (a
  pure-Python dependency of tpemu, always installed) serves ``emulated`` MongoDB databases exactly
  as it serves ``embedded`` ones.
* ``host:port``: the user's own server, reached with TLS per ``tls.mode``: ``verify-full``
  (default), ``verify-ca``, ``insecure``, or ``disabled`` (tpemu's addition: plain TCP, for
  servers without TLS such as the nx-27017 Mongo server).

Reaching the server behind a database (real servers' TLS with the client certificate, embedded
engines, the MySQL connection phase as a client) is :mod:`tpemu.agent.db_upstream`.

Use: the agent process calls :func:`make_offers` for its ``db`` role (one
:class:`~tpemu.agent.tunnel.Offer` per database, all served by one :class:`DatabaseService` whose
client certificates come from the Auth Service with the agent's Db identity); by hand,
``svc = DatabaseService(cfg.db_service.databases, cert_issuer=auth_cert_issuer(client))`` and
``await svc.serve(transport, dial_request)`` per tunnelled connection (the tunnel channel, a
parked transport). The handshake is read through streams over it; after it, one
:class:`~tpemu.net.pipe.Pipe` joins the channel to the real server's connection and ``serve``
returns (no task stays behind for the copying).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpemu import TELEPORT_VERSION
from tpemu import identity as ident
from tpemu.agent.backends.base import EmulatedBackend, Session
from tpemu.agent.backends.mysql import MySQLBackend
from tpemu.agent.backends.postgres import PostgresBackend
from tpemu.agent.backends.redis import RedisBackend
from tpemu.agent.db_upstream import (
    BackendUnavailable,
    CertIssuer,
    Upstream,
    _Served,
    auth_cert_issuer,
)
from tpemu.agent.engines import Engine, engine_for
from tpemu.config import Addr, Database
from tpemu.net.channel import open_streams
from tpemu.net.db_refusal import Refusal, refuse
from tpemu.net.memory import transport_pair
from tpemu.net.pipe import Pipe, park_streams
from tpemu.net.streams import Stream
from tpemu.wire import WireError
from tpemu.wire import mysql as my
from tpemu.wire import postgres as pg
from tpemu.wire.tunnel import DialRequest, Resource

if TYPE_CHECKING:
    from tpemu.agent.process import AgentContext
    from tpemu.agent.tunnel import Offer

log = logging.getLogger(__name__)

PROTOCOLS = ("postgres", "mysql", "mongodb", "redis")
TLS_MODES = ("verify-full", "verify-ca", "insecure", "disabled")
#: Teleport's own words for an RBAC refusal (``lib/srv/db/common``), then tpemu's detail.
ACCESS_DENIED = "access to db denied. User does not have permissions. Confirm database user and name."
#: Database names are checked for these protocols (Redis has numbered databases, not names).
NAMED_DATABASES = frozenset({"postgres", "mysql", "mongodb"})
def check_access(identity: ident.Identity, db: Database, db_user: str, db_name: str | None) -> str | None:
    """Why ``identity`` may not use ``db`` as ``db_user`` on ``db_name``, or ``None`` if it may."""
    route = identity.route_to_database
    if route.service_name and route.service_name != db.name:
        return f"{ACCESS_DENIED} (the certificate is for database {route.service_name!r}, not {db.name!r})"
    if not db_user:
        return f"{ACCESS_DENIED} (no database user given: run 'tpemu db login {db.name} --db-user USER')"
    allowed_users = identity.database_users
    if "*" not in allowed_users and db_user not in allowed_users:
        return (f"{ACCESS_DENIED} (database user {db_user!r} is not allowed for {identity.username!r}; "
                f"allowed: {', '.join(allowed_users) or 'none'})")
    if db.protocol in NAMED_DATABASES and db_name:
        allowed_names = identity.database_names
        if "*" not in allowed_names and db_name not in allowed_names:
            return (f"{ACCESS_DENIED} (database name {db_name!r} is not allowed for {identity.username!r}; "
                    f"allowed: {', '.join(allowed_names) or 'none'})")
    return None


def _new_backend(protocol: str) -> EmulatedBackend:
    if protocol == "postgres":
        return PostgresBackend(users=None)
    if protocol == "mysql":
        return MySQLBackend(users=None)
    if protocol == "redis":
        return RedisBackend(users=None)
    raise ValueError(f"no in-process emulator for protocol {protocol!r}")


def _join(client: Stream, backend: Stream, first: bytes = b"") -> Pipe:
    """The copying phase: the channel's streams and the server's, given up for one Pipe."""
    return Pipe.join(park_streams(client.reader, client.writer), park_streams(backend.reader, backend.writer),
                     first_to_b=first)


class DatabaseService(Upstream):
    """Serves the configured databases to connections arriving through the reverse tunnel."""

    def __init__(self, databases: Sequence[Database], cert_issuer: CertIssuer | None = None, *,
                 connect_timeout: float = 10.0, startup_timeout: float = 10.0, data_dir: Path | None = None,
                 engine_start_timeout: float = 60.0) -> None:
        """``data_dir`` holds the embedded engines' data (``<data_dir>/<database name>/``); without
        it, a temporary folder removed at :meth:`close`."""
        self.cert_issuer = cert_issuer
        self.connect_timeout = connect_timeout
        self.startup_timeout = startup_timeout
        self.engine_start_timeout = engine_start_timeout
        self._served: dict[str, _Served] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._temp_data: Path | None = None
        if data_dir is None:  # created by the first engine that starts
            data_dir = self._temp_data = Path(tempfile.gettempdir()) / f"tpemu-engines-{secrets.token_hex(6)}"
        for i, db in enumerate(databases):
            where = f"db_service.databases[{i}]"
            if db.protocol not in PROTOCOLS:
                raise ValueError(f"{where}.protocol: must be one of {', '.join(PROTOCOLS)}, got {db.protocol!r}")
            if db.name in self._served:
                raise ValueError(f"{where}.name: database {db.name!r} is configured twice")
            if (db.tls.mode or "verify-full") not in TLS_MODES:
                raise ValueError(f"{where}.tls.mode: must be one of {', '.join(TLS_MODES)}, got {db.tls.mode!r}")
            if db.protocol == "mongodb" and db.uri in ("embedded", "emulated"):
                engine, why = engine_for(db.protocol, db.name, data_dir / db.name)
                if engine is None:  # only a broken install: nx-27017 is a dependency of tpemu
                    log.warning("db=%s: %s; tpemu has no in-process MongoDB emulator, so its connections are "
                                "refused", db.name, why)
                self._served[db.name] = _Served(db, None, None, engine, unavailable=why)
            elif db.uri == "embedded":
                engine, why = engine_for(db.protocol, db.name, data_dir / db.name)
                if engine is None:
                    log.warning("db=%s: %s; the in-process emulator serves it instead (uri: emulated)", db.name, why)
                    self._served[db.name] = _Served(db, _new_backend(db.protocol), None)
                else:
                    self._served[db.name] = _Served(db, None, None, engine)
            elif db.uri == "emulated":
                self._served[db.name] = _Served(db, _new_backend(db.protocol), None)
            else:
                addr = Addr.parse(db.uri.removeprefix(f"{db.protocol}://").split("/", 1)[0])
                self._served[db.name] = _Served(db, None, addr)
        #: Connections served so far, refused ones by reason category (for logs and tests).
        self.stats: dict[str, int] = {"served": 0, "denied": 0, "unavailable": 0}

    @property
    def databases(self) -> list[Database]:
        return [s.db for s in self._served.values()]

    def backend(self, name: str) -> EmulatedBackend | None:
        """The emulated backend of database ``name`` (``None`` for a real server)."""
        served = self._served.get(name)
        return served.backend if served is not None else None

    def engine(self, name: str) -> Engine | None:
        """The embedded engine of database ``name`` (``None`` when something else serves it)."""
        served = self._served.get(name)
        return served.engine if served is not None else None

    async def reset(self) -> None:
        """Empty every emulated backend (fresh ones) and every running embedded engine (its
        databases dropped, its keys flushed); real servers are left alone. For
        ``tpemu.Cluster.reset()`` between tests: connections already open keep their old backend."""
        for served in self._served.values():
            if served.backend is not None:
                served.backend = _new_backend(served.db.protocol)
        engines = [s.engine for s in self._served.values() if s.engine is not None]
        for result in await asyncio.gather(*(e.reset() for e in engines), return_exceptions=True):
            if isinstance(result, BaseException):
                log.warning("db: resetting an embedded engine failed: %s", result)

    def resources(self) -> tuple[Resource, ...]:
        """What this service announces in the tunnel heartbeat (``kind: db``)."""
        return tuple(Resource("db", s.db.name, dict(s.db.static_labels), s.db.protocol, s.db.description,
                              s.db.uri) for s in self._served.values())

    def db_server_resources(self, host_id: str, hostname: str) -> list[dict[str, Any]]:
        """Teleport ``DatabaseServerV3`` JSON, one per database, for ``POST /v1/db_servers``."""
        out = []
        for s in self._served.values():
            db = s.db
            spec = {"kind": "db", "version": "v3",
                    "metadata": {"name": db.name, "description": db.description, "labels": dict(db.static_labels)},
                    "spec": {"protocol": db.protocol, "uri": db.uri}}
            out.append({"kind": "db_server", "version": "v3",
                        "metadata": {"name": db.name, "labels": dict(db.static_labels)},
                        "spec": {"host_id": host_id, "hostname": hostname, "version": TELEPORT_VERSION,
                                 "database": spec}})
        return out

    async def close(self) -> None:
        """End the emulated sessions, stop the embedded engines."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        engines = [s.engine for s in self._served.values() if s.engine is not None]
        await asyncio.gather(*(e.close() for e in engines), return_exceptions=True)
        if self._temp_data is not None:
            shutil.rmtree(self._temp_data, ignore_errors=True)

    # -- one connection ---------------------------------------------------------------------------

    async def serve(self, transport: asyncio.BaseTransport, request: DialRequest) -> None:
        """Serve one tunnelled connection (``transport``: the channel, parked) until its handshake
        is done; the copying then goes on in a Pipe."""
        reader, writer = await open_streams(transport)
        client = Stream(reader, writer, "client")
        served = self._served.get(request.name)
        raw_identity = request.identity or {}
        route_protocol = ""
        if isinstance(raw_identity.get("route_to_database"), dict):
            route_protocol = str(raw_identity["route_to_database"].get("protocol", ""))
        if served is None:
            message = f'database "{request.name}" is not served by this agent'
            log.warning("db: %s (from %s)", message, request.client_src_addr or "?")
            await self._refuse_raw(client, route_protocol, message, Refusal.UNAVAILABLE)
            return
        protocol = served.db.protocol
        try:
            identity = ident.Identity.from_json(raw_identity)
        except ident.IdentityError as exc:
            log.warning("db=%s: dial request with an invalid identity: %s", served.db.name, exc)
            await self._refuse_raw(client, protocol, f"invalid identity in the dial request: {exc}", Refusal.PROTOCOL)
            return
        handler = {"postgres": self._postgres, "mysql": self._mysql}.get(protocol, self._stream_protocol)
        try:
            await handler(served, client, identity, request)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError) as exc:
            log.info("db=%s user=%s: connection ended: %s", served.db.name, identity.username, exc)
            client.close()
        except BaseException:
            client.close()
            raise

    async def _refuse_raw(self, client: Stream, protocol: str, message: str, why: Refusal,
                          mysql_seq: int = 0) -> None:
        if protocol not in PROTOCOLS:
            client.close()
            return
        await refuse(protocol, client, message, why, mysql_seq)

    def _denied(self, served: _Served, identity: ident.Identity, reason: str, db_user: str, db_name: str | None,
                request: DialRequest) -> None:
        self.stats["denied"] += 1
        log.warning("db=%s proto=%s teleport_user=%s db_user=%s db_name=%s client=%s refused: %s", served.db.name,
                    served.db.protocol, identity.username, db_user or "-", db_name or "-",
                    request.client_src_addr or "?", reason)

    def _unavailable(self, served: _Served, exc: BackendUnavailable) -> str:
        self.stats["unavailable"] += 1
        message = f"database {served.db.name!r} is unavailable: {exc}"
        log.warning("db=%s: %s", served.db.name, message)
        return message

    def _session(self, identity: ident.Identity, db_user: str, db_name: str | None, request: DialRequest) -> Session:
        return Session(identity.username, db_user, db_name or None, request.client_src_addr)

    # -- postgres -------------------------------------------------------------------------------

    async def _postgres(self, served: _Served, client: Stream, identity: ident.Identity,
                        request: DialRequest) -> None:
        try:
            async with asyncio.timeout(self.startup_timeout):
                head = await client.reader.readexactly(8)
                packet = pg.parse_startup(head)
                raw = head
                if packet is None:
                    raw = head + await client.reader.readexactly(int.from_bytes(head[:4], "big") - 8)
                    packet = pg.parse_startup(raw)
        except (TimeoutError, WireError, asyncio.IncompleteReadError) as exc:
            await self._refuse_raw(client, "postgres", f"expected a StartupMessage from the proxy: {exc}",
                                   Refusal.PROTOCOL)
            return
        if not isinstance(packet, pg.StartupMessage):
            await self._refuse_raw(client, "postgres", "expected a StartupMessage from the proxy", Refusal.PROTOCOL)
            return
        db_user = packet.get("user") or ""
        db_name = packet.get("database") or db_user
        reason = check_access(identity, served.db, db_user, db_name)
        if reason is not None:
            self._denied(served, identity, reason, db_user, db_name, request)
            await self._refuse_raw(client, "postgres", reason, Refusal.DENIED)
            return
        self.stats["served"] += 1
        log.info("db=%s proto=postgres teleport_user=%s db_user=%s db_name=%s client=%s: connecting to %s",
                 served.db.name, identity.username, db_user, db_name, request.client_src_addr or "?", served.target)
        if served.backend is not None:
            # The emulated server reads the StartupMessage itself: put it back in front.
            reader, writer = await open_streams(park_streams(client.reader, client.writer), prefeed=raw)
            await served.backend.handle(reader, writer, self._session(identity, db_user, db_name, request))
            return
        try:
            backend = await self._connect_postgres(served, db_user, db_name)
        except BackendUnavailable as exc:
            await self._refuse_raw(client, "postgres", self._unavailable(served, exc), Refusal.UNAVAILABLE)
            return
        _join(client, backend, first=raw)

    # -- mysql ------------------------------------------------------------------------------------

    async def _mysql(self, served: _Served, client: Stream, identity: ident.Identity,
                     request: DialRequest) -> None:
        try:
            async with asyncio.timeout(self.startup_timeout):
                head = await client.reader.readexactly(4)
                my.parse_packet(head)  # size check
                payload = await client.reader.readexactly(int.from_bytes(head[:3], "little"))
                response = my.parse_handshake_response(payload)
        except (TimeoutError, WireError, asyncio.IncompleteReadError) as exc:
            await self._refuse_raw(client, "mysql", f"expected a HandshakeResponse41 from the proxy: {exc}",
                                   Refusal.PROTOCOL, 2)
            return
        seq = (head[3] + 1) & 0xFF
        if not isinstance(response, my.HandshakeResponse):
            await self._refuse_raw(client, "mysql", "expected a HandshakeResponse41 from the proxy, got an SSLRequest",
                                   Refusal.PROTOCOL, seq)
            return
        reason = check_access(identity, served.db, response.username, response.database)
        if reason is not None:
            self._denied(served, identity, reason, response.username, response.database, request)
            await self._refuse_raw(client, "mysql", reason, Refusal.DENIED, seq)
            return
        self.stats["served"] += 1
        log.info("db=%s proto=mysql teleport_user=%s db_user=%s db_name=%s client=%s: connecting to %s",
                 served.db.name, identity.username, response.username, response.database or "-",
                 request.client_src_addr or "?", served.target)
        backend_task: asyncio.Task[None] | None = None
        try:
            if served.backend is not None:
                # The emulated server in this process: a transport pair in memory, no socketpair.
                mine, theirs = transport_pair("emulated-mysql")
                b_reader, b_writer = await open_streams(theirs)
                session = self._session(identity, response.username, response.database, request)
                backend_task = asyncio.ensure_future(served.backend.handle(b_reader, b_writer, session))
                self._tasks.add(backend_task)
                backend_task.add_done_callback(self._tasks.discard)
                r, w = await open_streams(mine)
                backend = Stream(r, w, "backend")
                ctx = None
            else:
                r, w = await self._open(served, access=(response.username, response.database or ""))
                backend = Stream(r, w, "backend")
                ctx = None if served.tls_mode == "disabled" else await self._tls_context(served, response.username)
            result = await self._mysql_handshake(served, backend, response, ctx)
        except BackendUnavailable as exc:
            await self._refuse_raw(client, "mysql", self._unavailable(served, exc), Refusal.UNAVAILABLE, seq)
            return
        client.write(my.encode_packet(seq, result.payload))
        await client.drain()
        if result.payload[:1] != b"\x00":
            log.warning("db=%s: the MySQL server refused user %r: %s", served.db.name, response.username,
                        result.payload[9:].decode("utf-8", "replace"))
            backend.close()
            client.close()
            return
        _join(client, backend)

    # -- mongodb, redis ---------------------------------------------------------------------------

    async def _stream_protocol(self, served: _Served, client: Stream, identity: ident.Identity,
                               request: DialRequest) -> None:
        protocol = served.db.protocol
        route = identity.route_to_database
        db_user = route.username
        db_name = route.database or None
        if not db_user and len(identity.database_users) == 1 and identity.database_users[0] != "*":
            db_user = identity.database_users[0]
        if protocol == "mongodb" and db_name is None and len(identity.database_names) == 1 \
                and identity.database_names[0] != "*":
            db_name = identity.database_names[0]
        reason = check_access(identity, served.db, db_user, db_name)
        if reason is None and protocol == "mongodb" and db_name is None and "*" not in identity.database_names:
            reason = f"{ACCESS_DENIED} (no database name: run 'tpemu db login {served.db.name} --db-name NAME')"
        if reason is not None:
            self._denied(served, identity, reason, db_user, db_name, request)
            await self._refuse_raw(client, protocol, reason, Refusal.DENIED)
            return
        self.stats["served"] += 1
        log.info("db=%s proto=%s teleport_user=%s db_user=%s db_name=%s client=%s: connecting to %s", served.db.name,
                 protocol, identity.username, db_user, db_name or "-", request.client_src_addr or "?", served.target)
        if served.backend is not None:
            await served.backend.handle(client.reader, client.writer,
                                        self._session(identity, db_user, db_name, request))
            return
        try:
            r, w = await self._open(served, tls_user=db_user, access=(db_user, db_name or ""))
            if served.engine is not None and protocol == "redis":
                await self._redis_login(served, r, w, db_user)
        except BackendUnavailable as exc:
            await self._refuse_raw(client, protocol, self._unavailable(served, exc), Refusal.UNAVAILABLE)
            return
        _join(client, Stream(r, w, "backend"))

async def make_offers(ctx: AgentContext) -> list[Offer]:
    """The agent's ``db`` role: one offer per configured database, one service for all of them."""
    from tpemu.agent.tunnel import Offer

    service = DatabaseService(ctx.cfg.db_service.databases, cert_issuer=auth_cert_issuer(ctx.auth),
                              data_dir=ctx.data_dir / "engines")
    for db in service.databases:
        engine = service.engine(db.name)
        if engine is not None:
            what = f"embedded {engine.label}, started on the first connection (data {engine.data_dir})"
        elif service.backend(db.name) is not None:
            what = "emulated backend"
        else:
            what = db.uri if db.uri not in ("emulated", "embedded") else "nothing (no engine installed)"
        log.info("database service: %s (%s) → %s", db.name, db.protocol, what)
    return [Offer(resource, service) for resource in service.resources()]
