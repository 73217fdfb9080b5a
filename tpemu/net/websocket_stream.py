"""A :class:`~tpemu.net.relay.Stream` over WebSocket binary frames (glue over :mod:`tpemu.wire.websocket`).

Teleport's WebSocket connection upgrade (``lib/web/conn_upgrade.go`` ``websocketALPNServerConn``,
``api/client`` ``websocketALPNClientConn``): reads return the payloads of binary frames; a ping
is answered with a pong; a close frame is the end of the stream. Writes are one binary frame each,
masked with a fresh key when this side is the client (RFC 6455 §5.3). For ``alpn-ping`` the
server pings every ``interval`` seconds with payload ``teleport``. A malformed frame ends the
stream (``ConnectionError`` to the relay, which closes both sides).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl

from tpemu.net.relay import CHUNK, Stream
from tpemu.wire import websocket as ws
from tpemu.wire.errors import WireError

PING_PAYLOAD = b"teleport"


class WebSocketStream(Stream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str = "", *,
                 client: bool, early: bytes = b"") -> None:
        super().__init__(reader, writer, name)
        self.client = client
        self.decoder = ws.FrameDecoder(require_mask=not client)
        self._early = early
        self._closed = False
        self._pinger: asyncio.Task[None] | None = None
        #: Pings received (client side) and sent (server side).
        self.pings = 0

    def _frame(self, opcode: int, payload: bytes = b"") -> bytes:
        return ws.encode_frame(opcode, payload, os.urandom(4) if self.client else None)

    async def read(self, n: int = CHUNK) -> bytes:
        while not self._closed:
            if self._early:
                data, self._early = self._early, b""
            else:
                data = await self.reader.read(n)
            if not data:
                return b""
            try:
                frames = self.decoder.feed(data)
            except WireError as exc:
                raise ConnectionError(f"bad WebSocket frame: {exc}") from None
            out = bytearray()
            for frame in frames:
                if frame.opcode in (ws.OP_BINARY, ws.OP_CONTINUATION, ws.OP_TEXT):
                    out += frame.payload
                elif frame.opcode == ws.OP_PING:
                    self.pings += 1
                    self.writer.write(self._frame(ws.OP_PONG, frame.payload))
                elif frame.opcode == ws.OP_CLOSE:
                    self._closed = True
                    break
            if out:
                return bytes(out)
        return b""

    def write(self, data: bytes) -> None:
        if data:
            self.writer.write(self._frame(ws.OP_BINARY, data))

    def write_eof(self) -> bool:
        return False  # WebSocket has no half-close: the relay ends both directions

    def start_pings(self, interval: float) -> None:
        if self._pinger is None:
            self._pinger = asyncio.get_running_loop().create_task(self._ping_loop(interval))

    async def _ping_loop(self, interval: float) -> None:
        with contextlib.suppress(OSError, RuntimeError, ConnectionError):
            while not self.writer.is_closing():
                await asyncio.sleep(interval)
                self.writer.write(self._frame(ws.OP_PING, PING_PAYLOAD))
                self.pings += 1
                await self.writer.drain()

    def close(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
        with contextlib.suppress(OSError, RuntimeError, ssl.SSLError):
            if not self.writer.is_closing():
                self.writer.write(self._frame(ws.OP_CLOSE, (1000).to_bytes(2, "big")))  # normal closure
        super().close()
