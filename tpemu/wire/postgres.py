"""Postgres startup-phase packets (pure, no I/O).

Spec: PostgreSQL protocol v3, "Message Formats" and "Message Flow / Start-up" (protocol 3.0/3.2):
the untyped startup packets ``int32 length`` (self-inclusive) + ``int32 code`` + body:
SSLRequest (80877103), GSSENCRequest (80877104), CancelRequest (80877102, then pid and secret
key; 3.2 allows a longer key), StartupMessage (protocol 3.x, then ``name\\0value\\0 … \\0``).
The server answers SSLRequest/GSSENCRequest with the single byte ``S`` or ``N``.
Also ErrorResponse ('E') so the router can refuse a client in its own protocol.
"""

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
