"""An emulated MySQL server that unmodified clients (mysql/mariadb CLI, PyMySQL …) can use (glue).

Spec: MySQL Client/Server Protocol — connection phase (HandshakeV10 greeting, SSLRequest and an
in-band TLS upgrade, HandshakeResponse41, AuthSwitchRequest when the client picked another
plugin, mysql_native_password, caching_sha2_password with fast auth and full auth — cleartext
over TLS, or the RSA public-key exchange without TLS), the generic OK/ERR/EOF packets (with or
without CLIENT_DEPRECATE_EOF), and the command phase: COM_QUERY with text result sets (several
statements when CLIENT_MULTI_STATEMENTS is on), COM_PING, COM_QUIT, COM_INIT_DB, COM_STATISTICS,
COM_RESET_CONNECTION, COM_SET_OPTION. Other commands (prepared statements, COM_FIELD_LIST,
replication …) get an ERR saying the emulator does not support them; the connection stays open.

SQL runs in :mod:`tpemu.agent.backends.sql` (SQLite behind a dialect shim, one store per backend
instance; what it cannot run as MySQL would is refused with error 1235). Every
read has a size cap (``max_packet``) and a deadline (``handshake_timeout`` for the connection
phase, ``idle_timeout`` between commands, ``message_timeout`` within a packet).

Use::

    backend = MySQLBackend(users={"alice": "secret"}, auth_plugin="caching_sha2_password",
                           ssl_context=server_ctx)
    server = await serve_tcp(backend)
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import secrets
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import ClassVar, Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tpemu.agent.backends.base import Session
from tpemu.agent.backends.client_stream import ClientStream, RejectionLog
from tpemu.agent.backends.sql import (
    Column,
    DatabaseStmt,
    Dialect,
    Result,
    SqlEngine,
    SqlError,
    SqlSession,
    SqlType,
    Value,
)
from tpemu.wire import LimitExceeded, WireError
from tpemu.wire import mysql as my

log = logging.getLogger(__name__)

AuthPlugin = Literal["mysql_native_password", "caching_sha2_password"]

#: What the emulated server offers; CLIENT_SSL is added when a TLS context is configured.
SERVER_CAPABILITIES = (
    my.CLIENT_LONG_PASSWORD | my.CLIENT_FOUND_ROWS | my.CLIENT_LONG_FLAG | my.CLIENT_CONNECT_WITH_DB
    | my.CLIENT_PROTOCOL_41 | my.CLIENT_INTERACTIVE | my.CLIENT_TRANSACTIONS | my.CLIENT_SECURE_CONNECTION
    | my.CLIENT_MULTI_STATEMENTS | my.CLIENT_MULTI_RESULTS | my.CLIENT_PS_MULTI_RESULTS | my.CLIENT_PLUGIN_AUTH
    | my.CLIENT_CONNECT_ATTRS | my.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | my.CLIENT_DEPRECATE_EOF
)
_FAST_AUTH_OK = b"\x03"
_PERFORM_FULL_AUTH = b"\x04"
_REQUEST_PUBLIC_KEY = b"\x02"

# (MYSQL_TYPE_*, display width, decimals) per engine type; numbers use the binary collation.
_COLUMN_TYPES: dict[SqlType, tuple[int, int, int]] = {
    SqlType.BOOL: (my.TYPE_TINY, 1, 0), SqlType.INT2: (my.TYPE_SHORT, 6, 0), SqlType.INT4: (my.TYPE_LONG, 11, 0),
    SqlType.INT8: (my.TYPE_LONGLONG, 20, 0), SqlType.FLOAT4: (my.TYPE_FLOAT, 12, 31),
    SqlType.FLOAT8: (my.TYPE_DOUBLE, 22, 31), SqlType.NUMERIC: (my.TYPE_NEWDECIMAL, 66, 30),
    SqlType.TEXT: (my.TYPE_VAR_STRING, 262140, 0), SqlType.VARCHAR: (my.TYPE_VAR_STRING, 262140, 0),
    SqlType.CHAR: (my.TYPE_STRING, 1020, 0), SqlType.NAME: (my.TYPE_VAR_STRING, 256, 0),
    SqlType.TIMESTAMP: (my.TYPE_DATETIME, 26, 6), SqlType.TIMESTAMPTZ: (my.TYPE_TIMESTAMP, 26, 6),
    SqlType.DATE: (my.TYPE_DATE, 10, 0),
}
_NUMERIC = (SqlType.BOOL, SqlType.INT2, SqlType.INT4, SqlType.INT8, SqlType.FLOAT4, SqlType.FLOAT8, SqlType.NUMERIC)
ER_CLIENT_INTERACTION_TIMEOUT = 4031
_NONCE_ALPHABET = bytes(c for c in range(0x21, 0x7F) if c != ord("$"))


class _Refuse(Exception):
    """Send an ERR packet and close the connection."""

    def __init__(self, code: int, state: str, message: str) -> None:
        super().__init__(message)
        self.code, self.state, self.message = code, state, message


class MySQLBackend:
    """An emulated MySQL 8 server (``EmulatedBackend``); one in-memory store per instance.

    ``users`` maps user names to passwords (``None`` accepts any user and response).
    ``auth_plugin`` is what the greeting asks for (clients that answer with another plugin get
    an AuthSwitchRequest). caching_sha2_password behaves like MySQL's: the first login of a user
    needs full authentication (cleartext over TLS, or RSA without TLS), later ones pass by the
    fast path. ``ssl_context`` (a server context) makes the greeting offer CLIENT_SSL.
    ``database`` is selected when a client names none (``None``: no database, as MySQL does).
    """

    protocol: ClassVar[str] = "mysql"

    def __init__(self, users: Mapping[str, str] | None = None, auth_plugin: AuthPlugin = "mysql_native_password",
                 *, ssl_context: ssl.SSLContext | None = None, database: str | None = None,
                 server_version: str = "8.0.36-tpemu", max_packet: int = my.MAX_CLIENT_PAYLOAD,
                 handshake_timeout: float = 10.0, idle_timeout: float = 3600.0, message_timeout: float = 30.0,
                 rsa_private_key: rsa.RSAPrivateKey | None = None) -> None:
        if auth_plugin not in (my.NATIVE_PASSWORD, my.CACHING_SHA2_PASSWORD):
            raise ValueError(f"auth_plugin must be {my.NATIVE_PASSWORD} or {my.CACHING_SHA2_PASSWORD}")
        self.users = dict(users) if users is not None else None
        self.auth_plugin: str = auth_plugin
        self.ssl_context = ssl_context
        self.database = database
        self.max_packet = max_packet
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.message_timeout = message_timeout
        self.engine = SqlEngine(Dialect.MYSQL, server_version,
                                variables={"max_allowed_packet": max_packet,
                                           "have_ssl": "YES" if ssl_context else "DISABLED"})
        if database is not None:
            self.engine.database(database)
        self._rsa_key = rsa_private_key
        self._sha2_cache: set[tuple[str, str]] = set()
        self._ids = itertools.count(1)
        self.rejections = RejectionLog()

    def rsa_public_key_pem(self) -> bytes:
        """The key caching_sha2_password clients encrypt with when there is no TLS (made on first use)."""
        if self._rsa_key is None:
            self._rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)

    def rsa_decrypt(self, data: bytes) -> bytes:
        """RSA-OAEP (SHA-1, as MySQL uses) decryption; ``ValueError`` if it fails."""
        self.rsa_public_key_pem()
        assert self._rsa_key is not None
        return self._rsa_key.decrypt(data, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(),
                                                        label=None))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     session: Session | None = None) -> None:
        """Serve one client connection until it ends; closes ``writer``."""
        stream = ClientStream(reader, writer)
        conn = _Connection(self, stream, session, next(self._ids))
        try:
            await conn.run()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as e:
            conn.log.info("connection ended: %s", e.__class__.__name__)
        except Exception:
            conn.log.exception("internal error in the emulated MySQL server")
        finally:
            if conn.sql is not None:  # an open transaction rolls back and its write lock goes
                conn.sql.close()
            await stream.close()


class _ConnLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: object, kwargs: object) -> tuple[str, object]:  # type: ignore[override]
        extra = self.extra or {}
        return f"conn={extra.get('conn')} peer={extra.get('peer')} proto=mysql {msg}", kwargs


class _Connection:
    def __init__(self, backend: MySQLBackend, stream: ClientStream, session: Session | None, conn_id: int) -> None:
        self.b = backend
        self.stream = stream
        self.session = session
        self.id = conn_id
        self.log = _ConnLog(log, {"conn": conn_id, "peer": stream.peer()})
        self.seq = 0
        self.caps = 0
        self.user = ""
        self.sql: SqlSession | None = None
        self.nonce = bytes(secrets.choice(_NONCE_ALPHABET) for _ in range(my.NONCE_LENGTH))

    def warn(self, msg: str, *args: object) -> None:
        """A rejected client or a misbehaving peer: WARNING, rate-limited per backend."""
        self.b.rejections.warning(self.log, msg, *args)

    # --- packets
    def send(self, payload: bytes) -> None:
        self.stream.write(my.encode_packet(self.seq, payload))
        self.seq = (self.seq + 1) & 0xFF

    async def read_packet(self, idle: bool = False) -> my.Packet | None:
        """The next packet (``None`` at a clean EOF between commands); sets the reply sequence."""
        try:
            if idle:
                async with asyncio.timeout(self.b.idle_timeout):
                    head = await self.stream.readexactly(4)
            else:
                head = await self.stream.readexactly(4)
        except asyncio.IncompleteReadError as e:
            if idle and not e.partial:
                return None
            raise
        my.parse_packet(head, self.b.max_packet)  # the size check comes before the payload is read
        try:
            async with asyncio.timeout(self.b.message_timeout):
                payload = await self.stream.readexactly(int.from_bytes(head[:3], "little"))
        except TimeoutError:
            raise _Refuse(my.ER_NET_READ_ERROR, "08S01", "Got timeout reading communication packets") from None
        packet = my.parse_packet(head + payload, self.b.max_packet)
        assert packet is not None
        self.seq = (packet.seq + 1) & 0xFF
        return packet

    def status(self, more: bool = False) -> int:
        s = self.sql
        flags = 0
        if s is None or s.autocommit:
            flags |= my.SERVER_STATUS_AUTOCOMMIT
        if s is not None and s.in_transaction:
            flags |= my.SERVER_STATUS_IN_TRANS
        if more:
            flags |= my.SERVER_MORE_RESULTS_EXISTS
        return flags

    def ok(self, affected: int = 0, last_insert_id: int = 0, more: bool = False, info: str = "") -> None:
        self.send(my.encode_ok(affected, last_insert_id, self.status(more), 0, info))

    def err(self, code: int, state: str, message: str) -> None:
        self.send(my.encode_err_payload(code, message, state))

    def eof_or_ok(self, more: bool = False) -> None:
        """The end of a result set: EOF, or OK with the 0xFE header under CLIENT_DEPRECATE_EOF."""
        if self.caps & my.CLIENT_DEPRECATE_EOF:
            self.send(my.encode_ok(0, 0, self.status(more), 0, header=0xFE))
        else:
            self.send(my.encode_eof(self.status(more)))

    # --- lifecycle
    async def run(self) -> None:
        try:
            async with asyncio.timeout(self.b.handshake_timeout):
                if not await self.handshake():
                    return
        except TimeoutError:
            self.warn("handshake did not finish within %.1fs", self.b.handshake_timeout)
            await self.refuse(my.ER_HANDSHAKE_ERROR, "08S01", "Bad handshake: timed out")
            return
        except LimitExceeded as e:
            self.warn("refused: %s", e)
            await self.refuse(my.ER_HANDSHAKE_ERROR, "08S01", f"Bad handshake: {e}")
            return
        except WireError as e:
            self.warn("refused: %s", e)
            await self.refuse(my.ER_HANDSHAKE_ERROR, "08S01", f"Bad handshake: {e}")
            return
        except _Refuse as e:
            await self.refuse(e.code, e.state, e.message)
            return
        try:
            await self.commands()
        except TimeoutError:
            self.log.info("closing idle connection after %.0fs", self.b.idle_timeout)
            self.seq = 0  # MySQL 8.0.24+ tells the client why before closing (unsolicited, sequence 0)
            await self.refuse(ER_CLIENT_INTERACTION_TIMEOUT, "HY000",
                              "The client was disconnected by the server because of inactivity.")
        except LimitExceeded as e:
            self.warn("packet too large: %s", e)
            await self.refuse(my.ER_NET_PACKET_TOO_LARGE, "08S01",
                              "Got a packet bigger than 'max_allowed_packet' bytes")
        except WireError as e:
            self.warn("protocol violation: %s", e)
            await self.refuse(my.ER_NET_READ_ERROR, "08S01", f"Got an error reading communication packets: {e}")
        except _Refuse as e:
            await self.refuse(e.code, e.state, e.message)

    async def refuse(self, code: int, state: str, message: str) -> None:
        self.err(code, state, message)
        try:
            await self.stream.drain()
        except (ConnectionError, ssl.SSLError):
            pass

    def denied(self, using_password: bool) -> _Refuse:
        host = self.stream.peer_host()
        return _Refuse(my.ER_ACCESS_DENIED, "28000", f"Access denied for user '{self.user}'@'{host}' "
                                                     f"(using password: {'YES' if using_password else 'NO'})")

    async def handshake(self) -> bool:
        b = self.b
        offer_tls = b.ssl_context is not None and not self.stream.tls
        server_caps = SERVER_CAPABILITIES | (my.CLIENT_SSL if offer_tls else 0)
        greeting_plugin = my.NATIVE_PASSWORD if self.session is not None else b.auth_plugin
        self.seq = 0
        self.send(my.encode_handshake_v10(b.engine.server_version, self.id, self.nonce, server_caps,
                                          greeting_plugin, status=my.SERVER_STATUS_AUTOCOMMIT))
        await self.stream.drain()
        packet = await self.read_packet()
        assert packet is not None
        resp = my.parse_handshake_response(packet.payload)
        if isinstance(resp, my.SSLRequest):
            if not offer_tls:
                raise _Refuse(my.ER_HANDSHAKE_ERROR, "08S01", "Bad handshake: TLS was not offered")
            assert b.ssl_context is not None
            # The client starts its TLS handshake right after the SSLRequest without waiting;
            # ClientStream feeds whatever the reader already holds into the TLS layer.
            await self.stream.start_tls(b.ssl_context, b.handshake_timeout)
            packet = await self.read_packet()
            assert packet is not None
            resp = my.parse_handshake_response(packet.payload)
            if isinstance(resp, my.SSLRequest):
                raise _Refuse(my.ER_HANDSHAKE_ERROR, "08S01", "Bad handshake: second SSLRequest")
        self.caps = resp.capabilities & server_caps
        self.user = resp.username
        database = resp.database
        s = self.session
        if s is not None:
            if resp.username != s.db_user:
                self.warn("refused: user %r is not the session's database user %r", resp.username, s.db_user)
                raise _Refuse(my.ER_ACCESS_DENIED, "28000", f"Access denied for user '{resp.username}'@"
                              f"'{self.stream.peer_host()}' (the connection was authorised for user '{s.db_user}')")
            if database is not None and s.db_name is not None and database != s.db_name:
                self.warn("refused: database %r is not the session's %r", database, s.db_name)
                raise _Refuse(my.ER_DBACCESS_DENIED, "42000",
                              f"Access denied for user '{resp.username}'@'%' to database '{database}'")
            database = database or s.db_name
        elif b.users is not None and not await self.authenticate(resp):
            self.warn("authentication failed for user %r", resp.username)
            raise self.denied(bool(resp.auth_response))
        self.sql = self.open_sql(resp.username, database or b.database)
        cipher = self.stream.cipher()
        self.ok()
        await self.stream.drain()
        self.log.info("user %r connected%s%s", resp.username, f" to database {database!r}" if database else "",
                      f" over {cipher[1]}" if cipher else "")
        return True

    def open_sql(self, user: str, database: str | None) -> SqlSession:
        try:
            sql = self.b.engine.open_session(user, database, self.stream.peer_host())
        except SqlError as e:
            raise _Refuse(e.kind.mysql_errno, e.kind.mysql_state, e.message) from None
        cipher = self.stream.cipher()
        if cipher is not None:  # what SHOW STATUS LIKE 'Ssl_%' reports
            sql.status.update({"Ssl_cipher": cipher[0], "Ssl_version": cipher[1]})
            sql.variables["ssl_cipher"] = cipher[0]
        return sql

    async def authenticate(self, resp: my.HandshakeResponse) -> bool:
        users = self.b.users
        assert users is not None
        password = users.get(resp.username)
        plugin = self.b.auth_plugin
        data = resp.auth_response
        if resp.auth_plugin not in (None, "", plugin) and self.caps & my.CLIENT_PLUGIN_AUTH:
            self.log.debug("auth switch from %s to %s", resp.auth_plugin, plugin)
            self.send(my.encode_auth_switch(plugin, self.nonce + b"\x00"))
            await self.stream.drain()
            packet = await self.read_packet()
            assert packet is not None
            data = packet.payload
        if plugin == my.NATIVE_PASSWORD:
            return password is not None and my.verify_native_password(data, self.nonce, password)
        # caching_sha2_password
        if password is None:
            return False
        if not data or data == b"\x00":
            return password == ""
        key = (resp.username, password)
        if key in self.b._sha2_cache and my.verify_caching_sha2(data, self.nonce, password):
            self.send(my.encode_auth_more_data(_FAST_AUTH_OK))
            return True
        self.send(my.encode_auth_more_data(_PERFORM_FULL_AUTH))
        await self.stream.drain()
        packet = await self.read_packet()
        assert packet is not None
        if self.stream.tls:
            given = packet.payload
        elif packet.payload == _REQUEST_PUBLIC_KEY:
            self.send(my.encode_auth_more_data(self.b.rsa_public_key_pem()))
            await self.stream.drain()
            packet = await self.read_packet()
            assert packet is not None
            try:
                given = my.unxor_password(self.b.rsa_decrypt(packet.payload), self.nonce)
            except ValueError:
                return False
        else:
            # libmariadb sends the password in cleartext here; MySQL only accepts that on a
            # secure transport, and so does the emulator.
            self.warn("caching_sha2 full authentication without TLS and without the RSA key exchange")
            raise _Refuse(my.ER_ACCESS_DENIED, "28000", "caching_sha2_password: refusing a cleartext password on an "
                          "unencrypted connection; connect with TLS or use the RSA public-key exchange")
        ok = hmac.compare_digest(given.rstrip(b"\x00"), password.encode("utf-8"))
        if ok:
            self.b._sha2_cache.add(key)
        return ok

    # --- command phase
    async def commands(self) -> None:
        while True:
            packet = await self.read_packet(idle=True)
            if packet is None:
                self.log.info("client closed the connection")
                return
            cmd = my.parse_command(packet.payload)
            if cmd.code == my.COM_QUIT:
                self.log.debug("COM_QUIT")
                return
            if cmd.code == my.COM_QUERY:
                self.query(cmd.arg)
            elif cmd.code == my.COM_PING:
                self.ok()
            elif cmd.code == my.COM_INIT_DB:
                self.init_db(cmd.arg)
            elif cmd.code == my.COM_RESET_CONNECTION:
                assert self.sql is not None
                old = self.sql
                old.close()  # COM_RESET_CONNECTION rolls back, as MySQL does
                self.sql = self.open_sql(old.user, old.database)
                self.ok()
            elif cmd.code == my.COM_SET_OPTION:
                self.eof_or_ok()
            elif cmd.code == my.COM_STATISTICS:
                uptime = int((datetime.now(UTC) - self.b.engine.started).total_seconds())
                self.send(f"Uptime: {uptime}  Threads: 1  Questions: 0  Slow queries: 0  Opens: 0  "
                          "Open tables: 0  Queries per second avg: 0.000".encode())
            elif cmd.code in my.COMMAND_NAMES:
                self.err(my.ER_NOT_SUPPORTED_YET, "42000", f"{cmd.name} is not supported by the tpemu emulator")
            else:
                self.err(my.ER_UNKNOWN_COM, "08S01", "Unknown command")
            await self.stream.drain()

    def init_db(self, arg: bytes) -> None:
        assert self.sql is not None
        name = arg.decode("utf-8", "replace")
        s = self.session
        if s is not None and s.db_name is not None and name != s.db_name:
            self.err(my.ER_DBACCESS_DENIED, "42000", f"Access denied for user '{self.user}'@'%' to database '{name}'")
            return
        if self.b.engine.database(name, create=False) is None:
            self.err(my.ER_BAD_DB, "42000", f"Unknown database '{name}'")
            return
        try:
            self.sql.database = name
        except SqlError as e:
            self.err(e.kind.mysql_errno, e.kind.mysql_state, e.message)
            return
        self.ok()

    def query(self, arg: bytes) -> None:
        s = self.sql
        assert s is not None
        try:
            text = arg.decode("utf-8")
        except UnicodeDecodeError:
            self.err(1366, "HY000", "Query is not valid UTF-8")
            return
        try:
            statements = s.parse_script(text)
        except SqlError as e:
            self.err(e.kind.mysql_errno, e.kind.mysql_state, _mysql_message(e))
            return
        if not statements:
            self.err(1065, "42000", "Query was empty")
            return
        if len(statements) > 1 and not self.caps & my.CLIENT_MULTI_STATEMENTS:
            self.err(1064, "42000", "You have an error in your SQL syntax: several statements in one query need "
                                    "CLIENT_MULTI_STATEMENTS")
            return
        for i, stmt in enumerate(statements):
            more = i + 1 < len(statements)
            node = stmt.node
            sess = self.session
            if (isinstance(node, DatabaseStmt) and node.action == "use" and sess is not None
                    and sess.db_name is not None and node.name != sess.db_name):
                self.err(my.ER_DBACCESS_DENIED, "42000",
                         f"Access denied for user '{self.user}'@'%' to database '{node.name}'")
                return
            try:
                result = s.execute(stmt)
            except SqlError as e:
                self.err(e.kind.mysql_errno, e.kind.mysql_state, _mysql_message(e))
                return
            self.send_result(result, more)

    def send_result(self, result: Result, more: bool) -> None:
        if result.columns is None:
            self.ok(result.rowcount, result.last_insert_id, more)
            return
        database = self.sql.database if self.sql else None
        self.send(my.encode_lenenc_int(len(result.columns)))
        for c in result.columns:
            self.send(my.encode_column_definition(_column_definition(c, database or "")))
        if not self.caps & my.CLIENT_DEPRECATE_EOF:
            self.send(my.encode_eof(self.status()))
        for row in result.rows:
            self.send(my.encode_text_row([_text(v) for v in row]))
        self.eof_or_ok(more)


def _mysql_message(e: SqlError) -> str:
    if e.kind.mysql_errno == 1064 and not e.message.startswith("You have an error"):
        return f"You have an error in your SQL syntax; {e.message}"
    return e.message


def _column_definition(c: Column, database: str) -> my.ColumnDefinition:
    mtype, length, decimals = _COLUMN_TYPES[c.type]
    numeric = c.type in _NUMERIC
    flags = (my.BINARY_FLAG | my.NUM_FLAG) if numeric else 0
    if c.type in (SqlType.TIMESTAMP, SqlType.TIMESTAMPTZ, SqlType.DATE):
        flags |= my.BINARY_FLAG
    if c.not_null:
        flags |= my.NOT_NULL_FLAG
    if c.primary_key:
        flags |= my.PRI_KEY_FLAG
    if c.auto_increment:
        flags |= my.AUTO_INCREMENT_FLAG
    if c.type_modifier is not None and c.type in (SqlType.VARCHAR, SqlType.CHAR):
        length = c.type_modifier * 4
    charset = my.CHARSET_BINARY if numeric or c.type in (SqlType.TIMESTAMP, SqlType.TIMESTAMPTZ, SqlType.DATE) \
        else my.CHARSET_UTF8MB4
    return my.ColumnDefinition(c.name, mtype, length, charset, flags, decimals, schema=database if c.table else "",
                               table=c.table, org_table=c.table, org_name=c.name if c.table else "")


def _text(v: Value) -> bytes | None:
    if v is None:
        return None
    if isinstance(v, datetime) and v.tzinfo is not None:
        v = v.astimezone(UTC).replace(tzinfo=None)
    return my.encode_text_value(v)


__all__ = ["SERVER_CAPABILITIES", "AuthPlugin", "MySQLBackend"]
