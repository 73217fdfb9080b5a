"""WebSocket framing (RFC 6455 §5) and the handshake's accept key (§4.2.2) — pure, no I/O.

Used by the WebSocket flavour of Teleport's ALPN connection upgrade (``lib/web/conn_upgrade.go``
``upgradeALPNWebSocket``; ``api/client`` ``websocketALPNClientConn``): the upgraded bytes travel
in binary frames, client frames masked, server frames not; ``alpn-ping`` adds WebSocket pings
(payload ``teleport``) from the server, answered with pongs; a close frame ends the stream.

:class:`FrameDecoder` is streaming: it returns complete frames (payload unmasked) and keeps a
partial one; a frame larger than ``max_payload`` raises :class:`~tpemu.wire.errors.LimitExceeded`,
a malformed one :class:`WebSocketError`.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from tpemu.wire.errors import LimitExceeded, WireError

#: RFC 6455 §1.3: appended to the client's key before hashing.
ACCEPT_MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_CONTROL = (OP_CLOSE, OP_PING, OP_PONG)
_KNOWN = (OP_CONTINUATION, OP_TEXT, OP_BINARY, *_CONTROL)
DEFAULT_MAX_PAYLOAD = 4 * 1024 * 1024


class WebSocketError(WireError):
    """A frame that breaks RFC 6455."""


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + ACCEPT_MAGIC).digest()).decode("ascii")


def _mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return b""
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes = b"", mask: bytes | None = None, fin: bool = True) -> bytes:
    """One frame; ``mask`` (4 bytes) for a client's frame, ``None`` for a server's."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        head.append(bit | n)
    elif n < 1 << 16:
        head.append(bit | 126)
        head += struct.pack(">H", n)
    else:
        head.append(bit | 127)
        head += struct.pack(">Q", n)
    if mask is None:
        return bytes(head) + payload
    if len(mask) != 4:
        raise ValueError("a WebSocket mask is 4 bytes")
    return bytes(head) + mask + _mask(payload, mask)


@dataclass(frozen=True, slots=True)
class Frame:
    fin: bool
    opcode: int
    payload: bytes


class FrameDecoder:
    """Frames from a byte stream; ``require_mask``: frames from a client must be masked."""

    __slots__ = ("_buf", "max_payload", "require_mask")

    def __init__(self, require_mask: bool, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self.require_mask = require_mask
        self.max_payload = max_payload

    @property
    def pending(self) -> int:
        """Bytes of a partial frame held."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        self._buf += data
        frames = []
        while (frame := self._next()) is not None:
            frames.append(frame)
        return frames

    def _next(self) -> Frame | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        if b0 & 0x70:
            raise WebSocketError("reserved bits set without a negotiated extension")
        fin, opcode, masked, n = bool(b0 & 0x80), b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F
        if opcode not in _KNOWN:
            raise WebSocketError(f"unknown opcode 0x{opcode:x}")
        if masked != self.require_mask:
            raise WebSocketError("client frames must be masked" if self.require_mask else
                                 "server frames must not be masked")
        at = 2
        if n == 126:
            if len(buf) < 4:
                return None
            (n,) = struct.unpack_from(">H", buf, 2)
            at = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            (n,) = struct.unpack_from(">Q", buf, 2)
            if n >> 63:
                raise WebSocketError("payload length has its most significant bit set")
            at = 10
        if opcode in _CONTROL and (n > 125 or not fin):
            raise WebSocketError("control frames are at most 125 bytes and not fragmented")
        if n > self.max_payload:
            raise LimitExceeded("WebSocket frame", self.max_payload, n)
        key = b""
        if masked:
            if len(buf) < at + 4:
                return None
            key = bytes(buf[at:at + 4])
            at += 4
        if len(buf) < at + n:
            return None
        payload = bytes(buf[at:at + n])
        del buf[:at + n]
        return Frame(fin, opcode, _mask(payload, key) if masked else payload)
