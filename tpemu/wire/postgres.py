"""Postgres startup-phase packets (pure, no I/O).

Spec: PostgreSQL protocol v3, "Message Formats" and "Message Flow / Start-up" (protocol 3.0/3.2):
the untyped startup packets ``int32 length`` (self-inclusive) + ``int32 code`` + body:
SSLRequest (80877103), GSSENCRequest (80877104), CancelRequest (80877102, then pid and secret
key; 3.2 allows a longer key), StartupMessage (protocol 3.x, then ``name\\0value\\0 … \\0``).
The server answers SSLRequest/GSSENCRequest with the single byte ``S`` or ``N``.
Also ErrorResponse ('E') so the router can refuse a client in its own protocol.

After start-up: framing of the typed frontend messages (``parse_message``, with a size cap) and
decoders for the query phase (simple and extended protocol: Query, Parse, Bind, Describe,
Execute, Close, Sync, Flush, Terminate) and the auth replies (PasswordMessage, SASL), encoders
for the backend messages an emulated server sends. The text/binary value formats of the types
the emulator uses are in :mod:`tpemu.wire.postgres_values`.
"""

import hashlib
from dataclasses import dataclass

from tpemu.wire.errors import LimitExceeded, WireError

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_3_0 = 196608  # 3 << 16
#: PostgreSQL's own MAX_STARTUP_PACKET_LENGTH.
MAX_STARTUP_PACKET = 10000

SSL_REQUEST = (8).to_bytes(4, "big") + SSL_REQUEST_CODE.to_bytes(4, "big")
GSSENC_REQUEST = (8).to_bytes(4, "big") + GSSENC_REQUEST_CODE.to_bytes(4, "big")


class PostgresError(WireError):
    """A malformed startup packet."""


@dataclass(frozen=True, slots=True)
class SSLRequest:
    length: int = 8


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    length: int = 8


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    secret: bytes
    length: int


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """``params`` keeps the client's order (``user`` is required, ``database`` defaults to it)."""

    major: int
    minor: int
    params: tuple[tuple[str, str], ...]
    length: int

    def get(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.params:
            if k == name:
                return v
        return default


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def looks_like_startup(prefix: bytes | bytearray | memoryview) -> bool | None:
    """Whether ``prefix`` starts like a Postgres startup packet; ``None`` if too short to tell.

    Only the 8-byte head is checked: a plausible length and one of the known codes.
    """
    n = len(prefix)
    if n == 0:
        return None
    if prefix[0] != 0:
        return False  # lengths are < 10000, so the top byte is always zero
    if n < 8:
        if n >= 2 and prefix[1] != 0:
            return False
        return None
    length = int.from_bytes(prefix[0:4], "big")
    code = int.from_bytes(prefix[4:8], "big")
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        return length == 8
    if code == CANCEL_REQUEST_CODE:
        return 16 <= length <= 264
    if code >> 16 == 3:
        return 8 < length <= MAX_STARTUP_PACKET
    return False


def parse_startup(data: bytes | bytearray | memoryview) -> StartupPacket | None:
    """Parse one startup packet at the start of ``data``; ``None`` if more bytes are needed."""
    n = len(data)
    if n < 8:
        if n >= 4 and not 8 <= int.from_bytes(data[0:4], "big") <= MAX_STARTUP_PACKET:
            raise PostgresError(f"startup packet length {int.from_bytes(data[0:4], 'big')} out of range")
        return None
    length = int.from_bytes(data[0:4], "big")
    code = int.from_bytes(data[4:8], "big")
    if length > MAX_STARTUP_PACKET:
        raise LimitExceeded("Postgres startup packet", MAX_STARTUP_PACKET, length)
    if length < 8:
        raise PostgresError(f"startup packet length {length} is shorter than its header")
    if code == SSL_REQUEST_CODE:
        if length != 8:
            raise PostgresError(f"SSLRequest with length {length} (must be 8)")
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        if length != 8:
            raise PostgresError(f"GSSENCRequest with length {length} (must be 8)")
        return GSSENCRequest()
    if n < length:
        return None
    if code == CANCEL_REQUEST_CODE:
        # 3.0 keys are 4 bytes; protocol 3.2 allows up to 256.
        if not 16 <= length <= 264:
            raise PostgresError(f"CancelRequest with length {length}")
        return CancelRequest(int.from_bytes(data[8:12], "big"), bytes(data[12:length]), length)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise PostgresError(f"unsupported frontend protocol {major}.{minor} (server supports 3.0 to 3.2)")
    body = bytes(data[8:length])
    params: list[tuple[str, str]] = []
    p = 0
    while True:
        if p >= len(body):
            raise PostgresError("StartupMessage parameters are not NUL-terminated")
        if body[p] == 0:
            if p != len(body) - 1:
                raise PostgresError("bytes after the StartupMessage terminator")
            break
        end = body.find(b"\x00", p)
        if end < 0:
            raise PostgresError("StartupMessage parameters are not NUL-terminated")
        name = body[p:end]
        p = end + 1
        end = body.find(b"\x00", p)
        if end < 0:
            raise PostgresError(f"StartupMessage parameter {name[:40]!r} has no value")
        try:
            params.append((name.decode("utf-8"), body[p:end].decode("utf-8")))
        except UnicodeDecodeError:
            raise PostgresError("StartupMessage parameter is not valid UTF-8") from None
        p = end + 1
    return StartupMessage(major, minor, tuple(params), length)


def encode_startup(params: dict[str, str], major: int = 3, minor: int = 0) -> bytes:
    """A StartupMessage carrying ``params`` (as a client sends it)."""
    body = b"".join(k.encode() + b"\x00" + v.encode() + b"\x00" for k, v in params.items()) + b"\x00"
    return (8 + len(body)).to_bytes(4, "big") + ((major << 16) | minor).to_bytes(4, "big") + body


def encode_error_response(message: str, code: str = "08004", severity: str = "FATAL",
                          detail: str | None = None, hint: str | None = None) -> bytes:
    """An ErrorResponse ('E') message: severity (S and V), SQLSTATE (C), message (M)."""
    fields = [b"S" + severity.encode(), b"V" + severity.encode(), b"C" + code.encode(), b"M" + message.encode()]
    if detail:
        fields.append(b"D" + detail.encode())
    if hint:
        fields.append(b"H" + hint.encode())
    body = b"\x00".join(fields) + b"\x00\x00"
    return b"E" + (4 + len(body)).to_bytes(4, "big") + body


# ---------------------------------------------------------------------------------------------
# Regular (post-startup) messages. Spec: "Message Formats": every message after the startup
# packet is ``Byte1 type`` + ``int32 length`` (self-inclusive, excludes the type byte) + body.
# ---------------------------------------------------------------------------------------------

#: Default cap on one frontend message (type byte excluded). Postgres itself allows up to 1 GB
#: for Query/Bind; an emulator needs far less, and a cap keeps a hostile client bounded.
MAX_MESSAGE = 1 << 20
#: Password/SASL messages are small; Postgres caps them at 1000 (``PG_MAX_AUTH_TOKEN_LENGTH``
#: is 65535 for SASL). Auth is read before the client is trusted, so the cap is tighter.
MAX_AUTH_MESSAGE = 65535


@dataclass(frozen=True, slots=True)
class Message:
    """One framed message: ``tag`` is the type byte (``b"Q"``), ``body`` follows the length."""

    tag: bytes
    body: bytes
    size: int  # bytes consumed from the input (1 + length)


def parse_message(data: bytes | bytearray | memoryview, limit: int = MAX_MESSAGE) -> Message | None:
    """Frame one typed message at the start of ``data``; ``None`` if more bytes are needed.

    Raises :class:`LimitExceeded` when the announced length is above ``limit`` (checked as soon
    as the 5-byte header is there, before the body is buffered) and :class:`PostgresError` for a
    length below 4.
    """
    if len(data) < 5:
        return None
    length = int.from_bytes(data[1:5], "big")
    if length < 4:
        raise PostgresError(f"message {bytes(data[0:1])!r} has invalid length {length}")
    if length > limit:
        raise LimitExceeded(f"Postgres {bytes(data[0:1])!r} message", limit, length)
    if len(data) < 1 + length:
        return None
    return Message(bytes(data[0:1]), bytes(data[5 : 1 + length]), 1 + length)


class _Body:
    """A cursor over one message body; running off the end is the peer's fault."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise PostgresError(f"{self.what} message is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int16(self) -> int:
        return int.from_bytes(self._take(2), "big", signed=True)

    def int32(self) -> int:
        return int.from_bytes(self._take(4), "big", signed=True)

    def byte(self) -> bytes:
        return self._take(1)

    def raw(self, n: int) -> bytes:
        return self._take(n)

    def cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise PostgresError(f"{self.what} message has an unterminated string")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PostgresError(f"{self.what} message has a string that is not valid UTF-8") from None

    def end(self) -> None:
        if self.pos != len(self.data):
            raise PostgresError(f"{self.what} message has {len(self.data) - self.pos} trailing bytes")


@dataclass(frozen=True, slots=True)
class Query:
    """'Q': a simple-protocol query string (may hold several statements)."""

    sql: str


@dataclass(frozen=True, slots=True)
class Parse:
    """'P': prepare ``query`` as statement ``name`` ("" = unnamed); 0 in ``param_types`` = unspecified."""

    name: str
    query: str
    param_types: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Bind:
    """'B': bind ``params`` (``None`` = SQL NULL) to statement ``statement`` as portal ``portal``.

    Format codes: 0 text, 1 binary; an empty tuple means all text, one code applies to all.
    """

    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Describe:
    """'D': describe statement (``kind`` "S") or portal ("P") ``name``."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Execute:
    """'E': run portal ``portal``, returning at most ``max_rows`` rows (0 = all)."""

    portal: str
    max_rows: int


@dataclass(frozen=True, slots=True)
class Close:
    """'C': close statement (``kind`` "S") or portal ("P") ``name``."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Sync:
    """'S': end of an extended-protocol batch; the server answers ReadyForQuery."""


@dataclass(frozen=True, slots=True)
class Flush:
    """'H': send whatever is pending without ending the batch."""


@dataclass(frozen=True, slots=True)
class Terminate:
    """'X': the client is closing the connection."""


@dataclass(frozen=True, slots=True)
class OtherMessage:
    """A well-framed message this codec does not decode (COPY data, FunctionCall, 'p' …)."""

    tag: bytes
    body: bytes


FrontendMessage = Query | Parse | Bind | Describe | Execute | Close | Sync | Flush | Terminate | OtherMessage


def decode_frontend(msg: Message) -> FrontendMessage:
    """Decode a framed frontend message of the query phase.

    'p' (password/SASL) depends on the auth exchange and stays an :class:`OtherMessage`: use
    :func:`decode_password`, :func:`decode_sasl_initial` or :func:`decode_sasl_response`.
    Raises :class:`PostgresError` for a malformed body.
    """
    tag = msg.tag
    b = _Body(msg.body, _MESSAGE_NAMES.get(tag, repr(tag)))
    out: FrontendMessage
    if tag == b"Q":
        out = Query(b.cstring())
    elif tag == b"P":
        name, query = b.cstring(), b.cstring()
        n = b.int16()
        if n < 0:
            raise PostgresError("Parse message has a negative parameter count")
        out = Parse(name, query, tuple(b.int32() & 0xFFFFFFFF for _ in range(n)))
    elif tag == b"B":
        portal, statement = b.cstring(), b.cstring()
        nf = b.int16()
        formats = tuple(b.int16() for _ in range(max(nf, 0)))
        np = b.int16()
        if nf < 0 or np < 0:
            raise PostgresError("Bind message has a negative count")
        params: list[bytes | None] = []
        for _ in range(np):
            n = b.int32()
            if n < -1:
                raise PostgresError(f"Bind message has parameter length {n}")
            params.append(None if n == -1 else b.raw(n))
        nr = b.int16()
        if nr < 0:
            raise PostgresError("Bind message has a negative result-format count")
        results = tuple(b.int16() for _ in range(nr))
        for f in formats + results:
            if f not in (0, 1):
                raise PostgresError(f"Bind message has unknown format code {f}")
        if nf not in (0, 1, np):
            raise PostgresError(f"Bind message has {nf} parameter formats for {np} parameters")
        out = Bind(portal, statement, formats, tuple(params), results)
    elif tag in (b"D", b"C"):
        kind = b.byte()
        if kind not in (b"S", b"P"):
            raise PostgresError(f"{b.what} message has invalid target type {kind!r}")
        name = b.cstring()
        out = Describe(kind.decode(), name) if tag == b"D" else Close(kind.decode(), name)
    elif tag == b"E":
        portal = b.cstring()
        max_rows = b.int32()
        out = Execute(portal, max(max_rows, 0))
    elif tag == b"S":
        out = Sync()
    elif tag == b"H":
        out = Flush()
    elif tag == b"X":
        out = Terminate()
    else:
        return OtherMessage(tag, msg.body)
    b.end()
    return out


_MESSAGE_NAMES = {b"Q": "Query", b"P": "Parse", b"B": "Bind", b"D": "Describe", b"C": "Close",
                  b"E": "Execute", b"S": "Sync", b"H": "Flush", b"X": "Terminate", b"p": "Password"}


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    """The first SASL message: chosen mechanism and the client-first-message (``None`` if absent)."""

    mechanism: str
    data: bytes | None


def decode_password(body: bytes) -> str:
    """A PasswordMessage body (cleartext or ``md5…`` hash): one NUL-terminated string."""
    b = _Body(body, "PasswordMessage")
    out = b.cstring()
    b.end()
    return out


def decode_sasl_initial(body: bytes) -> SASLInitialResponse:
    """A SASLInitialResponse body: mechanism name, int32 length (-1 = none), data."""
    b = _Body(body, "SASLInitialResponse")
    mech = b.cstring()
    n = b.int32()
    if n < -1:
        raise PostgresError(f"SASLInitialResponse has data length {n}")
    data = None if n == -1 else b.raw(n)
    b.end()
    return SASLInitialResponse(mech, data)


def decode_sasl_response(body: bytes) -> bytes:
    """A SASLResponse body is the mechanism's data as is."""
    return body


# --- Backend (server → client) messages -------------------------------------------------------


def encode_message(tag: bytes, body: bytes = b"") -> bytes:
    """A typed message: tag, self-inclusive int32 length, body."""
    return tag + (4 + len(body)).to_bytes(4, "big") + body


def _cstr(s: str) -> bytes:
    raw = s.encode("utf-8")
    if b"\x00" in raw:
        raise ValueError("Postgres strings cannot contain NUL")
    return raw + b"\x00"


def encode_auth_ok() -> bytes:
    return encode_message(b"R", (0).to_bytes(4, "big"))


def encode_auth_cleartext() -> bytes:
    return encode_message(b"R", (3).to_bytes(4, "big"))


def encode_auth_md5(salt: bytes) -> bytes:
    if len(salt) != 4:
        raise ValueError("MD5 salt is 4 bytes")
    return encode_message(b"R", (5).to_bytes(4, "big") + salt)


def encode_auth_sasl(mechanisms: tuple[str, ...]) -> bytes:
    return encode_message(b"R", (10).to_bytes(4, "big") + b"".join(_cstr(m) for m in mechanisms) + b"\x00")


def encode_auth_sasl_continue(data: bytes) -> bytes:
    return encode_message(b"R", (11).to_bytes(4, "big") + data)


def encode_auth_sasl_final(data: bytes) -> bytes:
    return encode_message(b"R", (12).to_bytes(4, "big") + data)


def encode_parameter_status(name: str, value: str) -> bytes:
    return encode_message(b"S", _cstr(name) + _cstr(value))


def encode_backend_key_data(pid: int, secret: bytes) -> bytes:
    return encode_message(b"K", pid.to_bytes(4, "big") + secret)


def encode_ready_for_query(status: str) -> bytes:
    """``status``: "I" idle, "T" in a transaction block, "E" in a failed transaction block."""
    if status not in ("I", "T", "E"):
        raise ValueError(f"bad transaction status {status!r}")
    return encode_message(b"Z", status.encode())


def encode_negotiate_protocol_version(minor: int, unrecognized: tuple[str, ...]) -> bytes:
    """'v': the newest minor version the server supports and the ``_pq_.`` options it ignored."""
    body = minor.to_bytes(4, "big") + len(unrecognized).to_bytes(4, "big")
    return encode_message(b"v", body + b"".join(_cstr(o) for o in unrecognized))


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One RowDescription field; ``type_size`` -1 = variable, ``type_modifier`` -1 = none."""

    name: str
    type_oid: int
    type_size: int
    type_modifier: int = -1
    format: int = 0
    table_oid: int = 0
    column: int = 0


def encode_row_description(fields: tuple[FieldDescription, ...] | list[FieldDescription]) -> bytes:
    body = [len(fields).to_bytes(2, "big")]
    for f in fields:
        body.append(_cstr(f.name) + f.table_oid.to_bytes(4, "big") + f.column.to_bytes(2, "big", signed=True)
                    + f.type_oid.to_bytes(4, "big") + f.type_size.to_bytes(2, "big", signed=True)
                    + f.type_modifier.to_bytes(4, "big", signed=True) + f.format.to_bytes(2, "big"))
    return encode_message(b"T", b"".join(body))


def encode_data_row(values: tuple[bytes | None, ...] | list[bytes | None]) -> bytes:
    body = [len(values).to_bytes(2, "big")]
    for v in values:
        if v is None:
            body.append(b"\xff\xff\xff\xff")
        else:
            body.append(len(v).to_bytes(4, "big") + v)
    return encode_message(b"D", b"".join(body))


def encode_parameter_description(oids: tuple[int, ...] | list[int]) -> bytes:
    return encode_message(b"t", len(oids).to_bytes(2, "big") + b"".join(o.to_bytes(4, "big") for o in oids))


def encode_command_complete(tag: str) -> bytes:
    return encode_message(b"C", _cstr(tag))


def encode_empty_query_response() -> bytes:
    return encode_message(b"I")


def encode_parse_complete() -> bytes:
    return encode_message(b"1")


def encode_bind_complete() -> bytes:
    return encode_message(b"2")


def encode_close_complete() -> bytes:
    return encode_message(b"3")


def encode_no_data() -> bytes:
    return encode_message(b"n")


def encode_portal_suspended() -> bytes:
    return encode_message(b"s")


def encode_notice_response(message: str, code: str = "00000", severity: str = "NOTICE") -> bytes:
    """A NoticeResponse ('N'): same fields as an ErrorResponse, informational."""
    fields = [b"S" + severity.encode(), b"V" + severity.encode(), b"C" + code.encode(), b"M" + message.encode()]
    return encode_message(b"N", b"\x00".join(fields) + b"\x00\x00")


def md5_password(user: str, password: str, salt: bytes) -> str:
    """What a client sends for AuthenticationMD5Password: ``"md5" + md5(md5(password + user) + salt)``."""
    inner = hashlib.md5((password + user).encode("utf-8")).hexdigest()
    return "md5" + hashlib.md5(inner.encode("ascii") + salt).hexdigest()
