"""WebSocket framing (RFC 6455) and Kubernetes' channel protocols over it (pure codec + a small stream).

kubectl 1.32 runs ``exec``/``attach`` over a WebSocket (``client-go/tools/remotecommand``,
``websocket.go``: ``NewWebSocketExecutor``, falling back to SPDY only when the upgrade fails),
offering the sub-protocols ``v5.channel.k8s.io``, ``v4.channel.k8s.io`` … . Each binary message
starts with one byte, the channel: 0 stdin, 1 stdout, 2 stderr, 3 error (a ``Status`` JSON when
the command ends), 4 resize (``{"Width": …, "Height": …}``); v5 adds 255, *close*, whose payload
is the channel the peer will send no more on (client-go's ``remoteCommandProtocolV5`` half-closes
stdin this way). The server answers pings with pongs (client-go's heartbeat ends the session when
pongs stop).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from dataclasses import dataclass

from tpemu.wire.errors import LimitExceeded, WireError

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
#: What this server speaks, in its order of preference.
PROTOCOLS = (V5, V4)

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: Largest message accepted from a client (stdin chunks and resizes are small).
MAX_MESSAGE = 1024 * 1024


class WebSocketError(WireError):
    pass


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


def choose_protocol(offered: str) -> str | None:
    names = [p.strip() for p in offered.split(",") if p.strip()]
    return next((p for p in PROTOCOLS if p in names), None)


def encode_frame(opcode: int, payload: bytes, mask: bool = False) -> bytes:
    """One final frame (servers send unmasked frames; ``mask`` is for tests acting as the client)."""
    head = bytearray([0x80 | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head.append(mbit | n)
    elif n < 1 << 16:
        head.append(mbit | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(mbit | 127)
        head += n.to_bytes(8, "big")
    if mask:
        key = os.urandom(4)
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes(head) + payload


@dataclass(frozen=True)
class Frame:
    fin: bool
    opcode: int
    payload: bytes


def decode_frame(data: bytes | bytearray, require_mask: bool = True,
                 limit: int = MAX_MESSAGE) -> tuple[Frame, int] | None:
    """The frame at the start of ``data`` and its length, or ``None`` when more bytes are needed."""
    if len(data) < 2:
        return None
    b0, b1 = data[0], data[1]
    if b0 & 0x70:
        raise WebSocketError("reserved bits set (no extension was negotiated)")
    opcode = b0 & 0x0F
    if opcode not in (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
        raise WebSocketError(f"unknown opcode {opcode:#x}")
    masked = bool(b1 & 0x80)
    if require_mask and not masked:
        raise WebSocketError("client frames must be masked (RFC 6455 §5.1)")
    n = b1 & 0x7F
    pos = 2
    if n == 126:
        if len(data) < 4:
            return None
        n = int.from_bytes(data[2:4], "big")
        pos = 4
    elif n == 127:
        if len(data) < 10:
            return None
        n = int.from_bytes(data[2:10], "big")
        pos = 10
    if opcode >= 0x8 and (n > 125 or not b0 & 0x80):
        raise WebSocketError("control frames must be final and at most 125 bytes")
    if n > limit:
        raise LimitExceeded("websocket frame", limit, n)
    key = b""
    if masked:
        if len(data) < pos + 4:
            return None
        key = bytes(data[pos:pos + 4])
        pos += 4
    if len(data) < pos + n:
        return None
    payload = bytes(data[pos:pos + n])
    if masked:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 64 else _unmask(payload, key)
    return Frame(bool(b0 & 0x80), opcode, payload), pos + n


def _unmask(payload: bytes, key: bytes) -> bytes:
    # Whole-integer XOR: a pure-Python byte loop is slow for large stdin chunks.
    n = len(payload)
    k = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(n, "big")


class ChannelStream:
    """The server side of one ``exec`` WebSocket: read channel messages, write channel messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, leftover: bytes = b"") -> None:
        self.reader, self.writer = reader, writer
        self.buf = bytearray(leftover)
        self.closed = False

    async def read_message(self, timeout: float) -> tuple[int, bytes] | None:
        """The next data message as ``(channel, payload)``; ``None`` when the client closed."""
        parts: list[bytes] = []
        while True:
            found = decode_frame(self.buf)
            if found is None:
                async with asyncio.timeout(timeout):
                    chunk = await self.reader.read(65536)
                if not chunk:
                    return None
                self.buf += chunk
                if len(self.buf) > MAX_MESSAGE + 16:
                    raise LimitExceeded("websocket message", MAX_MESSAGE, len(self.buf))
                continue
            frame, used = found
            del self.buf[:used]
            if frame.opcode == OP_PING:
                await self.send(OP_PONG, frame.payload)
                continue
            if frame.opcode == OP_PONG:
                continue
            if frame.opcode == OP_CLOSE:
                await self.close(frame.payload[:2] or b"\x03\xe8")
                return None
            parts.append(frame.payload)
            if sum(len(p) for p in parts) > MAX_MESSAGE:
                raise LimitExceeded("websocket message", MAX_MESSAGE, sum(len(p) for p in parts))
            if frame.fin:
                message = b"".join(parts)
                if not message:
                    continue
                return message[0], message[1:]

    async def send(self, opcode: int, payload: bytes) -> None:
        if self.closed:
            return
        self.writer.write(encode_frame(opcode, payload))
        await self.writer.drain()

    async def write(self, channel: int, data: bytes) -> None:
        await self.send(OP_BINARY, bytes([channel]) + data)

    async def close(self, code: bytes = b"\x03\xe8") -> None:
        if not self.closed:
            try:
                await self.send(OP_CLOSE, code)
            except (ConnectionError, OSError):
                pass
            self.closed = True
