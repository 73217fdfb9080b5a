"""An emulated PostgreSQL server that unmodified clients (psql, libpq, asyncpg, psycopg) can use (glue).

Spec: PostgreSQL frontend/backend protocol 3.0 ("Message Flow", "Message Formats"): start-up
with SSLRequest (answered ``S`` + TLS when configured, else ``N``), GSSENCRequest (``N``),
CancelRequest (closed quietly), StartupMessage, NegotiateProtocolVersion for 3.x > 3.0 and
``_pq_.`` options; authentication trust / cleartext / MD5 / SCRAM-SHA-256 (RFC 5802/7677);
ParameterStatus, BackendKeyData, ReadyForQuery with the transaction status; the simple query
protocol (several statements per string, EmptyQueryResponse) and the extended one (Parse, Bind,
Describe, Execute with row limits and PortalSuspended, Close, Sync, Flush; text and binary
formats); ErrorResponse with SQLSTATE, then skip-to-Sync in the extended protocol; Terminate.

The query phase (simple and extended protocol) is :mod:`tpemu.agent.backends.postgres_query`;
SQL itself runs in :mod:`tpemu.agent.backends.sql` (SQLite behind a dialect shim, one store per
backend instance; what it cannot run as PostgreSQL would is refused with SQLSTATE 0A000).
Every read has a size cap (``max_message``) and a deadline (``startup_timeout`` for the
start-up and authentication, ``idle_timeout`` between messages, ``message_timeout`` within one).

Use::

    backend = PostgresBackend(users={"alice": "secret"}, auth="scram-sha-256")
    server = await serve_tcp(backend)                    # standalone, 127.0.0.1:<port>
    await backend.handle(reader, writer, Session(…))     # behind the Database Service: no password
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import secrets
import ssl
from collections.abc import Mapping
from typing import ClassVar, Literal

from tpemu.agent.backends.base import Session
from tpemu.agent.backends.client_stream import ClientStream, RejectionLog
from tpemu.agent.backends.postgres_query import MAX_STATEMENTS, QueryPhase, _Fatal, _Portal, _Prepared
from tpemu.agent.backends.sql import (
    Dialect,
    SqlEngine,
    SqlError,
    SqlSession,
)
from tpemu.wire import LimitExceeded, WireError
from tpemu.wire import postgres as pg
from tpemu.wire.scram import MECHANISM, ScramError, ScramSecret, ScramServer, ScramVerificationFailed, make_secret

log = logging.getLogger(__name__)

AuthMethod = Literal["trust", "password", "md5", "scram-sha-256"]
AUTH_METHODS: tuple[str, ...] = ("trust", "password", "md5", "scram-sha-256")

#: Parameters the server reports at start-up (and that clients such as asyncpg parse).
_REPORTED = ("application_name", "client_encoding", "DateStyle", "default_transaction_read_only",
             "in_hot_standby", "integer_datetimes", "IntervalStyle", "is_superuser", "server_encoding",
             "server_version", "session_authorization", "standard_conforming_strings", "TimeZone")
_ENCODINGS = {"UTF8": "UTF8", "UTF-8": "UTF8", "UNICODE": "UTF8", "SQL_ASCII": "SQL_ASCII"}


class PostgresBackend:
    """An emulated Postgres server (``EmulatedBackend``); one in-memory store per instance.

    ``users`` maps user names to passwords; ``None`` trusts every user. ``auth`` is the method
    asked of clients when ``users`` is given (``trust`` then only checks the user exists).
    ``ssl_context`` (a server context) makes SSLRequest answer ``S``; without it, ``N``.
    ``database`` exists from the start; other database names are created on first connect.
    """

    protocol: ClassVar[str] = "postgres"

    def __init__(self, users: Mapping[str, str] | None = None, auth: AuthMethod = "scram-sha-256", *,
                 ssl_context: ssl.SSLContext | None = None, database: str = "postgres",
                 server_version: str = "16.0 (tpemu)", max_message: int = pg.MAX_MESSAGE,
                 startup_timeout: float = 10.0, idle_timeout: float = 3600.0, message_timeout: float = 30.0,
                 scram_iterations: int = 4096) -> None:
        if auth not in AUTH_METHODS:
            raise ValueError(f"auth must be one of {', '.join(AUTH_METHODS)}")
        self.users = dict(users) if users is not None else None
        self.auth: str = auth
        self.ssl_context = ssl_context
        self.database = database
        self.max_message = max_message
        self.startup_timeout = startup_timeout
        self.idle_timeout = idle_timeout
        self.message_timeout = message_timeout
        self.scram_iterations = scram_iterations
        major = server_version.split(maxsplit=1)[0]
        self.engine = SqlEngine(Dialect.POSTGRES, server_version,
                                f"PostgreSQL {major} (tpemu emulator) on x86_64-pc-linux-gnu, compiled by tpemu")
        self.engine.database(database)
        self._scram_secrets: dict[str, ScramSecret] = {}
        self._pids = itertools.count(10_000)
        self.rejections = RejectionLog()

    def scram_secret(self, user: str) -> ScramSecret:
        """The stored SCRAM secret of ``user`` (derived once; a random one for unknown users)."""
        secret = self._scram_secrets.get(user)
        if secret is None:
            password = (self.users or {}).get(user)
            if password is None:
                # Unknown users get a mock exchange that fails at the proof, as Postgres does, so
                # the answer does not reveal which user names exist.
                return make_secret(secrets.token_hex(16), iterations=self.scram_iterations)
            secret = self._scram_secrets[user] = make_secret(password, iterations=self.scram_iterations)
        return secret

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     session: Session | None = None) -> None:
        """Serve one client connection until it ends; closes ``writer``."""
        stream = ClientStream(reader, writer)
        conn = _Connection(self, stream, session, next(self._pids))
        try:
            await conn.run()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as e:
            conn.log.info("connection ended: %s", e.__class__.__name__)
        except Exception:
            conn.log.exception("internal error in the emulated Postgres server")
        finally:
            if conn.sql is not None:  # an open transaction rolls back and its write lock goes
                conn.sql.close()
            await stream.close()


class _ConnLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: object, kwargs: object) -> tuple[str, object]:  # type: ignore[override]
        extra = self.extra or {}
        return f"conn={extra.get('conn')} peer={extra.get('peer')} proto=postgres {msg}", kwargs


class _Connection(QueryPhase):
    """One client, from start-up to Terminate."""

    def __init__(self, backend: PostgresBackend, stream: ClientStream, session: Session | None, pid: int) -> None:
        self.b = backend
        self.stream = stream
        self.session = session
        self.pid = pid
        self.secret = secrets.token_bytes(4)
        self.log = _ConnLog(log, {"conn": pid, "peer": stream.peer()})
        self.out: list[bytes] = []
        self.out_size = 0
        self.sql: SqlSession | None = None
        self.statements: dict[str, _Prepared] = {}
        self.portals: dict[str, _Portal] = {}
        self.skip_to_sync = False

    def warn(self, msg: str, *args: object) -> None:
        """A rejected client or a misbehaving peer: WARNING, rate-limited per backend."""
        self.b.rejections.warning(self.log, msg, *args)

    # --- output
    def send(self, data: bytes) -> None:
        self.out.append(data)
        self.out_size += len(data)

    async def flush(self) -> None:
        if self.out:
            self.stream.write(b"".join(self.out))
            self.out.clear()
            self.out_size = 0
        await self.stream.drain()

    async def fatal(self, code: str, message: str) -> None:
        self.send(pg.encode_error_response(message, code, "FATAL"))
        try:
            await self.flush()
        except (ConnectionError, ssl.SSLError):
            pass

    # --- input
    async def read_startup_packet(self) -> bytes:
        head = await self.stream.readexactly(4)
        pg.parse_startup(head)  # raises on an impossible length before anything more is read
        length = int.from_bytes(head, "big")
        return head + await self.stream.readexactly(length - 4)

    async def read_message(self, idle: bool, limit: int | None = None) -> pg.Message | None:
        """The next typed message, or ``None`` at a clean EOF between messages.

        A read that has to wait has a deadline (``idle_timeout`` for the next message,
        ``message_timeout`` for the rest of one); bytes already buffered are taken without one
        (nothing to wait for): a client's pipelined Bind/Execute/Sync costs one timer, not six."""
        stream = self.stream
        try:
            if idle and not stream.buffered(5):
                async with asyncio.timeout(self.b.idle_timeout):
                    head = await stream.readexactly(5)
            else:
                head = await stream.readexactly(5)
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                return None
            raise
        pg.parse_message(head, limit or self.b.max_message)  # size check before reading the body
        length = int.from_bytes(head[1:5], "big")
        try:
            if stream.buffered(length - 4):
                body = await stream.readexactly(length - 4)
            else:
                async with asyncio.timeout(self.b.message_timeout):
                    body = await stream.readexactly(length - 4)
        except TimeoutError:
            raise _Fatal("08006", f"the rest of a {length}-byte message did not arrive within "
                                  f"{self.b.message_timeout:.0f}s") from None
        msg = pg.parse_message(head + body, limit or self.b.max_message)
        assert msg is not None
        return msg

    # --- lifecycle
    async def run(self) -> None:
        try:
            async with asyncio.timeout(self.b.startup_timeout):
                startup = await self.negotiate()
                if startup is None:
                    return
                if not await self.authenticate(startup):
                    return
        except TimeoutError:
            self.warn("start-up or authentication did not finish within %.1fs", self.b.startup_timeout)
            await self.fatal("08006", "canceling authentication due to timeout")
            return
        except LimitExceeded as e:
            self.warn("refused: %s", e)
            await self.fatal("08P01", f"invalid start-up packet: {e}")
            return
        except (WireError, UnicodeDecodeError) as e:
            self.warn("refused: %s", e)
            await self.fatal("08P01", f"invalid start-up packet: {e}")
            return
        except _Fatal as e:
            await self.fatal(e.code, e.message)
            return
        try:
            await self.serve()
        except TimeoutError:
            self.log.info("closing idle connection after %.0fs", self.b.idle_timeout)
            await self.fatal("57P05", "terminating connection due to idle-session timeout")
        except LimitExceeded as e:
            self.warn("message too large: %s", e)
            await self.fatal("54000", f"{e}; the tpemu emulator caps client messages")
        except WireError as e:
            self.warn("protocol violation: %s", e)
            await self.fatal("08P01", f"protocol violation: {e}")
        except _Fatal as e:
            await self.fatal(e.code, e.message)

    async def negotiate(self) -> pg.StartupMessage | None:
        """SSLRequest/GSSENCRequest/CancelRequest handling up to the StartupMessage."""
        ssl_done = gss_done = False
        while True:
            packet = pg.parse_startup(await self.read_startup_packet())
            if isinstance(packet, pg.SSLRequest):
                if ssl_done:
                    raise _Fatal("08P01", "duplicate SSLRequest")
                ssl_done = True
                if self.b.ssl_context is not None and not self.stream.tls:
                    self.stream.write(b"S")
                    await self.stream.drain()
                    await self.stream.start_tls(self.b.ssl_context, self.b.startup_timeout)
                    cipher = self.stream.cipher()
                    self.log.debug("TLS established: %s", cipher)
                else:
                    self.stream.write(b"N")
            elif isinstance(packet, pg.GSSENCRequest):
                if gss_done:
                    raise _Fatal("08P01", "duplicate GSSENCRequest")
                gss_done = True
                self.stream.write(b"N")
            elif isinstance(packet, pg.CancelRequest):
                self.log.debug("CancelRequest for pid %d ignored (queries never block)", packet.pid)
                return None
            else:
                assert packet is not None
                return packet

    async def authenticate(self, startup: pg.StartupMessage) -> bool:
        user = startup.get("user")
        if not user:
            raise _Fatal("28000", "no PostgreSQL user name specified in startup packet")
        if startup.get("replication") not in (None, "false", "0", "off", "no"):
            raise _Fatal("0A000", "replication connections are not supported by the tpemu emulator")
        database = startup.get("database") or user
        settings: dict[str, str] = {}
        unrecognized = []
        for k, v in startup.params:
            if k.startswith("_pq_."):
                unrecognized.append(k)
            elif k == "options":
                settings.update(_parse_options(v))
            elif k not in ("user", "database", "replication"):
                settings[k.lower()] = v
        encoding = settings.get("client_encoding", "UTF8").strip().strip("'\"").upper()  # asyncpg quotes it
        if encoding not in _ENCODINGS:
            raise _Fatal("22023", f'client_encoding "{encoding}" is not supported by the tpemu emulator (use UTF8)')
        settings["client_encoding"] = _ENCODINGS[encoding]
        if startup.minor > 0 or unrecognized:
            self.send(pg.encode_negotiate_protocol_version(0, tuple(unrecognized)))

        s = self.session
        if s is not None:
            if user != s.db_user:
                self.warn("refused: startup user %r is not the session's database user %r", user, s.db_user)
                raise _Fatal("28000", f'database user "{user}" does not match the user "{s.db_user}" '
                                      "this connection was authorised for")
            if s.db_name is not None and database != s.db_name:
                self.warn("refused: database %r is not the session's %r", database, s.db_name)
                raise _Fatal("28000", f'database "{database}" does not match the database "{s.db_name}" '
                                      "this connection was authorised for")
        elif self.b.users is not None:
            ok = await self.check_password(user)
            if not ok:
                self.warn("authentication failed for user %r (%s)", user, self.b.auth)
                raise _Fatal("28P01", f'password authentication failed for user "{user}"')

        try:
            self.sql = self.b.engine.open_session(user, database, self.stream.peer_host(), settings)
        except SqlError as e:
            raise _Fatal(e.kind.pg_code, e.message) from None
        self.send(pg.encode_auth_ok())
        reported = {
            "application_name": settings.get("application_name", ""), "client_encoding": settings["client_encoding"],
            "DateStyle": "ISO, MDY", "default_transaction_read_only": "off", "in_hot_standby": "off",
            "integer_datetimes": "on", "IntervalStyle": "postgres", "is_superuser": "on",
            "server_encoding": "UTF8", "server_version": self.b.engine.server_version,
            "session_authorization": user, "standard_conforming_strings": "on", "TimeZone": "UTC",
        }
        for name in _REPORTED:
            self.send(pg.encode_parameter_status(name, reported[name]))
        self.send(pg.encode_backend_key_data(self.pid, self.secret))
        self.send(pg.encode_ready_for_query("I"))
        await self.flush()
        self.log.info("user %r connected to database %r%s", user, database, " over TLS" if self.stream.tls else "")
        return True

    async def read_password_message(self) -> bytes | None:
        msg = await self.read_message(idle=False, limit=pg.MAX_AUTH_MESSAGE)
        if msg is None:
            return None  # libpq closes when it has no password to give; nothing to answer
        if msg.tag != b"p":
            raise _Fatal("08P01", f"expected a password response, got message type {msg.tag!r}")
        return msg.body

    async def check_password(self, user: str) -> bool:
        users = self.b.users
        assert users is not None
        method = self.b.auth
        password = users.get(user)
        if method == "trust":
            if password is None:
                raise _Fatal("28000", f'role "{user}" does not exist')
            return True
        if method == "password":
            self.send(pg.encode_auth_cleartext())
            await self.flush()
            body = await self.read_password_message()
            if body is None:
                return False
            given = pg.decode_password(body)
            return password is not None and hmac.compare_digest(given.encode(), password.encode())
        if method == "md5":
            salt = secrets.token_bytes(4)
            self.send(pg.encode_auth_md5(salt))
            await self.flush()
            body = await self.read_password_message()
            if body is None:
                return False
            given = pg.decode_password(body)
            return password is not None and hmac.compare_digest(given.encode(),
                                                                pg.md5_password(user, password, salt).encode())
        # SCRAM-SHA-256
        self.send(pg.encode_auth_sasl((MECHANISM,)))
        await self.flush()
        body = await self.read_password_message()
        if body is None:
            return False
        initial = pg.decode_sasl_initial(body)
        if initial.mechanism != MECHANISM:
            raise _Fatal("28000", f"SASL mechanism {initial.mechanism!r} is not supported by the tpemu emulator "
                                  f"(offered {MECHANISM})")
        if initial.data is None:
            raise _Fatal("08P01", "SASLInitialResponse without the client-first-message")
        exchange = ScramServer(self.b.scram_secret(user))
        try:
            self.send(pg.encode_auth_sasl_continue(exchange.first(initial.data)))
            await self.flush()
            body = await self.read_password_message()
            if body is None:
                return False
            final = exchange.final(pg.decode_sasl_response(body))
        except ScramVerificationFailed:
            return False
        except ScramError as e:
            raise _Fatal("08P01", f"malformed SCRAM message: {e}") from None
        if password is None:
            return False
        self.send(pg.encode_auth_sasl_final(final))
        return True

def _parse_options(options: str) -> dict[str, str]:
    """The ``-c name=value`` / ``--name=value`` pairs of the startup ``options`` parameter."""
    out: dict[str, str] = {}
    words = options.replace("\\ ", "\x00").split()
    i = 0
    while i < len(words):
        w = words[i].replace("\x00", " ")
        if w == "-c" and i + 1 < len(words):
            w, i = "--" + words[i + 1].replace("\x00", " "), i + 1
        if w.startswith("--") and "=" in w:
            k, v = w[2:].split("=", 1)
            out[k.lower().replace("-", "_")] = v
        i += 1
    return out


__all__ = ["AUTH_METHODS", "MAX_STATEMENTS", "AuthMethod", "PostgresBackend"]
