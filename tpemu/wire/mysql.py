"""MySQL client/server protocol packets (pure, no I/O).

Spec: MySQL Client/Server Protocol ("MySQL Packets", "ERR_Packet"): every packet is a 3-byte
little-endian payload length, a 1-byte sequence id, then the payload. The server speaks first;
instead of the HandshakeV10 greeting it may send an ERR packet, which clients print as
``ERROR <code> (<state>): <message>`` — how a router refuses a MySQL client before any
handshake. Before the handshake no capabilities are agreed, so that ERR carries no SQL state
marker.

Below that: what an emulated MySQL server needs (greeting, SSLRequest / HandshakeResponse41
parsing, auth switch and caching_sha2 messages, OK/ERR/EOF, text result sets, command framing,
and the two password scrambles). All pure.
"""

import hashlib
import hmac
import math
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from tpemu.wire.errors import LimitExceeded, WireError

MAX_PAYLOAD = 0xFFFFFF
ER_UNKNOWN_ERROR = 1105
ER_ACCESS_DENIED = 1045
ER_HOST_NOT_PRIVILEGED = 1130


class MySQLError(WireError):
    """A malformed MySQL packet."""


def encode_packet(seq: int, payload: bytes) -> bytes:
    """One packet; payloads of 16 MiB - 1 and more need splitting, which this refuses."""
    if len(payload) >= MAX_PAYLOAD:
        raise ValueError("payload needs multi-packet framing")
    return len(payload).to_bytes(3, "little") + bytes((seq & 0xFF,)) + payload


def encode_err(code: int, message: str, sql_state: str | None = "HY000", seq: int = 0) -> bytes:
    """An ERR_Packet; ``sql_state=None`` for the pre-handshake form."""
    body = b"\xff" + code.to_bytes(2, "little")
    if sql_state is not None:
        if len(sql_state) != 5:
            raise ValueError("SQL state must be 5 characters")
        body += b"#" + sql_state.encode("ascii")
    return encode_packet(seq, body + message.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# The rest of the protocol an emulated server needs. Spec: MySQL Client/Server Protocol
# (dev.mysql.com/doc/dev/mysql-server/latest/PAGE_PROTOCOL.html): "Connection Phase"
# (Protocol::HandshakeV10, Protocol::SSLRequest, Protocol::HandshakeResponse41,
# Protocol::AuthSwitchRequest, Protocol::AuthMoreData), "Generic Response Packets" (OK, ERR, EOF),
# "Text Protocol" (COM_QUERY response: column count, ColumnDefinition41, text rows), and the
# authentication methods mysql_native_password and caching_sha2_password.
# ---------------------------------------------------------------------------------------------

# Capability flags (CLIENT_*).
CLIENT_LONG_PASSWORD = 1 << 0
CLIENT_FOUND_ROWS = 1 << 1
CLIENT_LONG_FLAG = 1 << 2
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_NO_SCHEMA = 1 << 4
CLIENT_COMPRESS = 1 << 5
CLIENT_LOCAL_FILES = 1 << 7
CLIENT_IGNORE_SPACE = 1 << 8
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_INTERACTIVE = 1 << 10
CLIENT_SSL = 1 << 11
CLIENT_TRANSACTIONS = 1 << 13
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_MULTI_STATEMENTS = 1 << 16
CLIENT_MULTI_RESULTS = 1 << 17
CLIENT_PS_MULTI_RESULTS = 1 << 18
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
CLIENT_SESSION_TRACK = 1 << 23
CLIENT_DEPRECATE_EOF = 1 << 24

# Server status flags (SERVER_STATUS_*).
SERVER_STATUS_IN_TRANS = 0x0001
SERVER_STATUS_AUTOCOMMIT = 0x0002
SERVER_MORE_RESULTS_EXISTS = 0x0008

# Commands (COM_*), the first payload byte of every packet after the connection phase.
COM_SLEEP = 0x00
COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_STATISTICS = 0x09
COM_PING = 0x0E
COM_CHANGE_USER = 0x11
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_CLOSE = 0x19
COM_SET_OPTION = 0x1B
COM_RESET_CONNECTION = 0x1F
COMMAND_NAMES = {
    0x00: "COM_SLEEP", 0x01: "COM_QUIT", 0x02: "COM_INIT_DB", 0x03: "COM_QUERY", 0x04: "COM_FIELD_LIST",
    0x05: "COM_CREATE_DB", 0x06: "COM_DROP_DB", 0x07: "COM_REFRESH", 0x08: "COM_SHUTDOWN",
    0x09: "COM_STATISTICS", 0x0A: "COM_PROCESS_INFO", 0x0B: "COM_CONNECT", 0x0C: "COM_PROCESS_KILL",
    0x0D: "COM_DEBUG", 0x0E: "COM_PING", 0x0F: "COM_TIME", 0x10: "COM_DELAYED_INSERT",
    0x11: "COM_CHANGE_USER", 0x12: "COM_BINLOG_DUMP", 0x13: "COM_TABLE_DUMP", 0x14: "COM_CONNECT_OUT",
    0x15: "COM_REGISTER_SLAVE", 0x16: "COM_STMT_PREPARE", 0x17: "COM_STMT_EXECUTE",
    0x18: "COM_STMT_SEND_LONG_DATA", 0x19: "COM_STMT_CLOSE", 0x1A: "COM_STMT_RESET", 0x1B: "COM_SET_OPTION",
    0x1C: "COM_STMT_FETCH", 0x1D: "COM_DAEMON", 0x1E: "COM_BINLOG_DUMP_GTID", 0x1F: "COM_RESET_CONNECTION",
}

# Column types (MYSQL_TYPE_*) and column flags.
TYPE_DECIMAL = 0
TYPE_TINY = 1
TYPE_SHORT = 2
TYPE_LONG = 3
TYPE_FLOAT = 4
TYPE_DOUBLE = 5
TYPE_NULL = 6
TYPE_TIMESTAMP = 7
TYPE_LONGLONG = 8
TYPE_DATE = 10
TYPE_DATETIME = 12
TYPE_NEWDECIMAL = 246
TYPE_BLOB = 252
TYPE_VAR_STRING = 253
TYPE_STRING = 254
NOT_NULL_FLAG = 1
PRI_KEY_FLAG = 2
UNIQUE_KEY_FLAG = 4
BINARY_FLAG = 128
AUTO_INCREMENT_FLAG = 512
NUM_FLAG = 32768

# Collations: utf8mb4_general_ci (known to every MySQL 5.5+ and MariaDB client) and binary.
CHARSET_UTF8MB4 = 45
CHARSET_BINARY = 63

# Error codes (ER_*) used by the emulator, with their SQL states.
ER_DBACCESS_DENIED = 1044
ER_NO_DB = 1046
ER_UNKNOWN_COM = 1047
ER_BAD_DB = 1049
ER_NET_PACKET_TOO_LARGE = 1153
ER_NET_READ_ERROR = 1158
ER_NOT_SUPPORTED_AUTH_MODE = 1251
ER_NOT_SUPPORTED_YET = 1235
ER_HANDSHAKE_ERROR = 1043

NATIVE_PASSWORD = "mysql_native_password"
CACHING_SHA2_PASSWORD = "caching_sha2_password"
#: Length of the auth-plugin-data (nonce) both methods use.
NONCE_LENGTH = 20
#: Default cap on one client packet's payload (MySQL's own max_allowed_packet default is 64 MiB).
MAX_CLIENT_PAYLOAD = 1 << 20


@dataclass(frozen=True, slots=True)
class Packet:
    seq: int
    payload: bytes
    size: int  # bytes consumed (4 + len(payload))


def parse_packet(data: bytes | bytearray | memoryview, limit: int = MAX_CLIENT_PAYLOAD) -> Packet | None:
    """Frame one packet at the start of ``data``; ``None`` if more bytes are needed.

    A payload of 16 MiB - 1 announces a continuation packet (multi-packet framing); any payload
    above ``limit`` raises :class:`LimitExceeded` as soon as the 4-byte header is there.
    """
    if len(data) < 4:
        return None
    length = int.from_bytes(data[0:3], "little")
    if length > limit:
        raise LimitExceeded("MySQL packet", limit, length)
    if length == MAX_PAYLOAD:
        raise LimitExceeded("MySQL packet (multi-packet payload)", limit, length)
    if len(data) < 4 + length:
        return None
    return Packet(data[3], bytes(data[4 : 4 + length]), 4 + length)


def encode_lenenc_int(n: int) -> bytes:
    """Protocol::LengthEncodedInteger."""
    if n < 0:
        raise ValueError("length-encoded integers are unsigned")
    if n < 251:
        return bytes((n,))
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little")
    if n < 1 << 24:
        return b"\xfd" + n.to_bytes(3, "little")
    return b"\xfe" + n.to_bytes(8, "little")


def encode_lenenc_str(s: bytes) -> bytes:
    return encode_lenenc_int(len(s)) + s


class _Cursor:
    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MySQLError(f"{self.what} is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def lenenc_int(self) -> int:
        first = self.uint(1)
        if first < 251:
            return first
        if first == 0xFC:
            return self.uint(2)
        if first == 0xFD:
            return self.uint(3)
        if first == 0xFE:
            return self.uint(8)
        raise MySQLError(f"{self.what} has an invalid length-encoded integer (0x{first:02x})")

    def lenenc_bytes(self) -> bytes:
        return self.take(self.lenenc_int())

    def cstring(self, allow_eof: bool = False) -> bytes:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            if not allow_eof:
                raise MySQLError(f"{self.what} has an unterminated string")
            end = len(self.data)
        out = self.data[self.pos : end]
        self.pos = min(end + 1, len(self.data))
        return out


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MySQLError(f"{what} is not valid UTF-8") from None


def encode_handshake_v10(server_version: str, connection_id: int, nonce: bytes, capabilities: int,
                         auth_plugin: str, charset: int = CHARSET_UTF8MB4,
                         status: int = SERVER_STATUS_AUTOCOMMIT) -> bytes:
    """The Protocol::HandshakeV10 payload (the server's greeting); ``nonce`` is 20 bytes."""
    if len(nonce) != NONCE_LENGTH:
        raise ValueError("nonce must be 20 bytes")
    return b"".join((
        b"\x0a", server_version.encode() + b"\x00", connection_id.to_bytes(4, "little"),
        nonce[:8], b"\x00", (capabilities & 0xFFFF).to_bytes(2, "little"), bytes((charset,)),
        status.to_bytes(2, "little"), (capabilities >> 16).to_bytes(2, "little"),
        bytes((len(nonce) + 1,)), b"\x00" * 10, nonce[8:] + b"\x00", auth_plugin.encode() + b"\x00",
    ))


@dataclass(frozen=True, slots=True)
class Greeting:
    """A parsed HandshakeV10 (used to check what the emulator sends, and by tools)."""

    protocol: int
    server_version: str
    connection_id: int
    nonce: bytes
    capabilities: int
    charset: int
    status: int
    auth_plugin: str


def parse_handshake_v10(payload: bytes) -> Greeting:
    c = _Cursor(payload, "HandshakeV10")
    proto = c.uint(1)
    if proto != 10:
        raise MySQLError(f"handshake protocol {proto} is not 10")
    version = _text(c.cstring(), "server version")
    conn_id = c.uint(4)
    nonce = c.take(8)
    c.take(1)
    caps = c.uint(2)
    charset, status, caps_hi, data_len = c.uint(1), c.uint(2), c.uint(2), c.uint(1)
    caps |= caps_hi << 16
    c.take(10)
    nonce += c.take(max(13, data_len - 8))
    plugin = _text(c.cstring(allow_eof=True), "auth plugin name") if caps & CLIENT_PLUGIN_AUTH else ""
    return Greeting(proto, version, conn_id, nonce.rstrip(b"\x00"), caps, charset, status, plugin)


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """Protocol::SSLRequest: the first 32 bytes of a HandshakeResponse41, then TLS starts."""

    capabilities: int
    max_packet: int
    charset: int


@dataclass(frozen=True, slots=True)
class HandshakeResponse:
    """Protocol::HandshakeResponse41."""

    capabilities: int
    max_packet: int
    charset: int
    username: str
    auth_response: bytes
    database: str | None
    auth_plugin: str | None
    attributes: tuple[tuple[str, str], ...]


#: SSLRequest is exactly the fixed head of a HandshakeResponse41.
SSL_REQUEST_LENGTH = 32


def parse_handshake_response(payload: bytes) -> SSLRequest | HandshakeResponse:
    """Parse the client's reply to the greeting (an SSLRequest if it is 32 bytes with CLIENT_SSL).

    Raises :class:`MySQLError` when malformed or when the client only speaks the pre-4.1
    protocol (HandshakeResponse320), which this emulator does not support.
    """
    c = _Cursor(payload, "HandshakeResponse41")
    caps = c.uint(4) if len(payload) >= 4 else c.uint(2)
    if not caps & CLIENT_PROTOCOL_41:
        raise MySQLError("the pre-4.1 client protocol (HandshakeResponse320) is not supported by the tpemu emulator")
    max_packet, charset = c.uint(4), c.uint(1)
    c.take(23)
    if c.remaining() == 0:
        if not caps & CLIENT_SSL:
            raise MySQLError("HandshakeResponse41 has no username")
        return SSLRequest(caps, max_packet, charset)
    user = _text(c.cstring(), "user name")
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth = c.lenenc_bytes()
    elif caps & CLIENT_SECURE_CONNECTION:
        auth = c.take(c.uint(1))
    else:
        auth = c.cstring()
    database = None
    if caps & CLIENT_CONNECT_WITH_DB and c.remaining():
        database = _text(c.cstring(allow_eof=True), "database name") or None
    plugin = None
    if caps & CLIENT_PLUGIN_AUTH and c.remaining():
        plugin = _text(c.cstring(allow_eof=True), "auth plugin name")
    attrs: list[tuple[str, str]] = []
    if caps & CLIENT_CONNECT_ATTRS and c.remaining():
        block = _Cursor(c.lenenc_bytes(), "connection attributes")
        while block.remaining():
            k = _text(block.lenenc_bytes(), "connection attribute")
            attrs.append((k, _text(block.lenenc_bytes(), "connection attribute")))
    # Anything after (a zstd compression level) is ignored: compression is not offered.
    return HandshakeResponse(caps, max_packet, charset, user, auth, database, plugin, tuple(attrs))


def encode_handshake_response(resp: HandshakeResponse) -> bytes:
    """A HandshakeResponse41 payload as a client sends it (for tests and tools)."""
    caps = resp.capabilities | CLIENT_PROTOCOL_41
    out = [caps.to_bytes(4, "little"), resp.max_packet.to_bytes(4, "little"), bytes((resp.charset,)),
           b"\x00" * 23, resp.username.encode() + b"\x00"]
    if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
        out.append(encode_lenenc_str(resp.auth_response))
    else:
        out.append(bytes((len(resp.auth_response),)) + resp.auth_response)
    if caps & CLIENT_CONNECT_WITH_DB:
        out.append((resp.database or "").encode() + b"\x00")
    if caps & CLIENT_PLUGIN_AUTH:
        out.append((resp.auth_plugin or "").encode() + b"\x00")
    if caps & CLIENT_CONNECT_ATTRS:
        attrs = b"".join(encode_lenenc_str(k.encode()) + encode_lenenc_str(v.encode()) for k, v in resp.attributes)
        out.append(encode_lenenc_str(attrs))
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class Command:
    """A command-phase packet: ``code`` is COM_*, ``arg`` the rest of the payload."""

    code: int
    arg: bytes

    @property
    def name(self) -> str:
        return COMMAND_NAMES.get(self.code, f"command 0x{self.code:02x}")


def parse_command(payload: bytes) -> Command:
    if not payload:
        raise MySQLError("empty command packet")
    return Command(payload[0], payload[1:])


def encode_ok(affected_rows: int = 0, last_insert_id: int = 0, status: int = SERVER_STATUS_AUTOCOMMIT,
              warnings: int = 0, info: str = "", header: int = 0x00) -> bytes:
    """An OK_Packet payload (``header`` 0xFE for the OK that ends a result set under CLIENT_DEPRECATE_EOF)."""
    return (bytes((header,)) + encode_lenenc_int(affected_rows) + encode_lenenc_int(last_insert_id)
            + status.to_bytes(2, "little") + warnings.to_bytes(2, "little") + info.encode())


def encode_eof(status: int = SERVER_STATUS_AUTOCOMMIT, warnings: int = 0) -> bytes:
    """An EOF_Packet payload (protocol 4.1)."""
    return b"\xfe" + warnings.to_bytes(2, "little") + status.to_bytes(2, "little")


def encode_err_payload(code: int, message: str, sql_state: str = "HY000") -> bytes:
    """An ERR_Packet payload with the 4.1 SQL state marker."""
    if len(sql_state) != 5:
        raise ValueError("SQL state must be 5 characters")
    return b"\xff" + code.to_bytes(2, "little") + b"#" + sql_state.encode("ascii") + message.encode("utf-8")


def encode_auth_switch(plugin: str, data: bytes) -> bytes:
    """Protocol::AuthSwitchRequest payload: 0xFE, plugin name, plugin data (nonce + NUL)."""
    return b"\xfe" + plugin.encode() + b"\x00" + data


def encode_auth_more_data(data: bytes) -> bytes:
    """Protocol::AuthMoreData payload: 0x01 then plugin data (caching_sha2: 0x03 fast OK, 0x04 full auth)."""
    return b"\x01" + data


@dataclass(frozen=True, slots=True)
class ColumnDefinition:
    """Protocol::ColumnDefinition41 (``column_length`` is the display width)."""

    name: str
    type: int
    column_length: int
    charset: int = CHARSET_UTF8MB4
    flags: int = 0
    decimals: int = 0
    schema: str = ""
    table: str = ""
    org_table: str = ""
    org_name: str = ""
    catalog: str = "def"


def encode_column_definition(col: ColumnDefinition) -> bytes:
    return b"".join((
        encode_lenenc_str(col.catalog.encode()), encode_lenenc_str(col.schema.encode()),
        encode_lenenc_str(col.table.encode()), encode_lenenc_str(col.org_table.encode()),
        encode_lenenc_str(col.name.encode()), encode_lenenc_str(col.org_name.encode()),
        b"\x0c", col.charset.to_bytes(2, "little"), min(col.column_length, 0xFFFFFFFF).to_bytes(4, "little"),
        bytes((col.type,)), col.flags.to_bytes(2, "little"), bytes((col.decimals,)), b"\x00\x00",
    ))


def encode_text_row(values: tuple[bytes | None, ...] | list[bytes | None]) -> bytes:
    """A ProtocolText::ResultsetRow: each value a length-encoded string, NULL as 0xFB."""
    return b"".join(b"\xfb" if v is None else encode_lenenc_str(v) for v in values)


MyValue = bool | int | float | Decimal | str | datetime | date | None


def encode_text_value(value: MyValue) -> bytes:
    """The text-protocol form of a value (booleans are TINYINT 1/0, DATETIME without 'T')."""
    if value is None:
        raise ValueError("NULL is sent as 0xFB, not as text")
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return b"NULL"  # MySQL has no NaN/inf; it cannot store them either
        s = repr(value)
        return (s[:-2] if s.endswith(".0") else s).encode()
    if isinstance(value, datetime):
        s = value.strftime("%Y-%m-%d %H:%M:%S")
        if value.microsecond:
            s += f".{value.microsecond:06d}"
        return s.encode()
    if isinstance(value, date):
        return value.isoformat().encode()
    if isinstance(value, Decimal):
        return format(value, "f").encode()  # never exponent notation (str(Decimal("1E+3")) is "1E+3")
    return str(value).encode("utf-8")


# --- Authentication methods -------------------------------------------------------------------


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def native_password_scramble(password: str, nonce: bytes) -> bytes:
    """mysql_native_password: SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password))); b"" if no password."""
    if not password:
        return b""
    stage1 = hashlib.sha1(password.encode("utf-8")).digest()
    return _xor(stage1, hashlib.sha1(nonce[:NONCE_LENGTH] + hashlib.sha1(stage1).digest()).digest())


def verify_native_password(response: bytes, nonce: bytes, password: str) -> bool:
    """Whether ``response`` is the mysql_native_password scramble of ``password`` for ``nonce``."""
    if not password:
        return response == b""
    if len(response) != 20:
        return False
    stage2 = hashlib.sha1(hashlib.sha1(password.encode("utf-8")).digest()).digest()
    candidate = _xor(response, hashlib.sha1(nonce[:NONCE_LENGTH] + stage2).digest())
    return hmac.compare_digest(hashlib.sha1(candidate).digest(), stage2)


def caching_sha2_scramble(password: str, nonce: bytes) -> bytes:
    """caching_sha2_password fast path: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce)."""
    if not password:
        return b""
    p1 = hashlib.sha256(password.encode("utf-8")).digest()
    p2 = hashlib.sha256(p1).digest()
    return _xor(p1, hashlib.sha256(p2 + nonce[:NONCE_LENGTH]).digest())


def verify_caching_sha2(response: bytes, nonce: bytes, password: str) -> bool:
    """Whether ``response`` is the caching_sha2_password fast-path scramble of ``password``."""
    if not password:
        return response == b""
    if len(response) != 32:
        return False
    p2 = hashlib.sha256(hashlib.sha256(password.encode("utf-8")).digest()).digest()
    candidate = _xor(response, hashlib.sha256(p2 + nonce[:NONCE_LENGTH]).digest())
    return hmac.compare_digest(hashlib.sha256(candidate).digest(), p2)


def unxor_password(data: bytes, nonce: bytes) -> bytes:
    """Undo the nonce XOR applied to ``password + NUL`` before RSA encryption (sha2 full auth)."""
    key = nonce[:NONCE_LENGTH]
    if not key:
        raise ValueError("empty nonce")
    return bytes(b ^ key[i % len(key)] for i, b in enumerate(data))
