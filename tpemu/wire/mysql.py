"""MySQL client/server protocol packets (pure, no I/O).

Spec: MySQL Client/Server Protocol ("MySQL Packets", "ERR_Packet"): every packet is a 3-byte
little-endian payload length, a 1-byte sequence id, then the payload. The server speaks first;
instead of the HandshakeV10 greeting it may send an ERR packet, which clients print as
``ERROR <code> (<state>): <message>`` — how a router refuses a MySQL client before any
handshake. Before the handshake no capabilities are agreed, so that ERR carries no SQL state
marker.
"""

from tpemu.wire.errors import WireError

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
