"""Handshake-phase streams, and Teleport's ping framing as a transport (glue).

The database proxy and the Database Service read the first messages of a connection through
``asyncio`` streams (a StartupMessage, a MySQL handshake, a refusal's first command): a
:class:`Stream` is such a reader/writer pair seen as one. After the handshake the streams are
given up (:func:`tpemu.net.pipe.park_streams`, which keeps what their reader had buffered) and a
:class:`~tpemu.net.pipe.Pipe` copies the rest: no task per direction.

:class:`FramedTransport` is a framing layer between a transport and its protocol: bytes read are
unwrapped, bytes written are framed, and a keep-alive goes out every ``interval`` seconds from a
loop timer (no task). Streams or a Pipe sit on top of it like on any transport. Two framings:

* :class:`PingTransport` — Teleport's ping framing (:mod:`tpemu.wire.ping`, the ``-ping`` ALPN
  forms and ``alpn-ping`` upgrades): pings are dropped on read;
* :class:`WebSocketTransport` — binary WebSocket frames (:mod:`tpemu.wire.websocket`; Teleport's
  ``lib/web/conn_upgrade.go`` ``websocketALPNServerConn`` and ``api/client``
  ``websocketALPNClientConn``): a ping is answered with a pong, a close frame ends the stream,
  client frames are masked with a fresh key (RFC 6455 §5.3); for ``alpn-ping`` the server pings
  with payload ``teleport``. WebSocket has no half-close: ``can_write_eof`` is false, so a Pipe
  ends both directions at the first EOF.

A framing error (a malformed frame) aborts the transport: the protocol above sees
``connection_lost`` with the error, the log says why, the peer is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from typing import Any

from tpemu.net.pipe import Parked, hand_over
from tpemu.wire import ping
from tpemu.wire import websocket as ws
from tpemu.wire.errors import WireError

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


class Stream:
    """A reader and a writer seen as one byte stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str = "") -> None:
        self.reader = reader
        self.writer = writer
        self.name = name

    async def read(self, n: int = CHUNK) -> bytes:
        return await self.reader.read(n)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    def write_eof(self) -> bool:
        """Half-close if the transport can; returns whether it did."""
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
                return True
        except (OSError, RuntimeError, NotImplementedError, AttributeError):
            pass
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.writer.close()

    async def wait_closed(self, timeout: float = 2.0) -> None:
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError, RuntimeError, ConnectionError):
            async with asyncio.timeout(timeout):
                await self.writer.wait_closed()


class FramedTransport(asyncio.Transport):
    """A framing layer over ``inner``: the protocol above sees payload bytes only.

    Made by a subclass's ``wrap``; its protocol starts :class:`~tpemu.net.pipe.Parked`.
    Subclasses give :meth:`unwrap`, :meth:`frame` and :meth:`keepalive`.
    """

    def __init__(self, inner: asyncio.Transport, interval: float | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.interval = interval
        self._protocol: Any = Parked()
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        #: Set by :meth:`unwrap` when the framing itself ends the stream (a WebSocket close frame).
        self._ended = False
        self._eof_up = False
        self._lost_with: Exception | None = None

    def _start(self) -> None:
        self._protocol.connection_made(self)
        hand_over(self.inner, _Below(self))
        if self.interval is not None and not self.inner.is_closing():
            self._timer = self._loop.call_later(self.interval, self._tick)

    # -- what a framing says ---------------------------------------------------------------------------

    def unwrap(self, data: bytes) -> bytes:
        """The payload in ``data`` (raises :class:`WireError` on a malformed frame)."""
        raise NotImplementedError

    def frame(self, payload: bytes) -> bytes:
        raise NotImplementedError

    def keepalive(self) -> bytes:
        raise NotImplementedError

    # -- plumbing ------------------------------------------------------------------------------------

    def _tick(self) -> None:
        if self.inner.is_closing() or self.interval is None:
            return
        self.inner.write(self.keepalive())
        self._timer = self._loop.call_later(self.interval, self._tick)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _received(self, data: bytes) -> None:
        if self._eof_up:
            return  # nothing counts after the framing's end
        try:
            payload = self.unwrap(data)
        except WireError as exc:
            log.warning("%s: %s; closing the connection", type(self).__name__, exc)
            self._lost_with = ConnectionError(f"bad frame: {exc}")
            self.abort()
            return
        if payload:
            self._protocol.data_received(payload)
        if self._ended:
            self._eof_up = True
            if not self._protocol.eof_received():
                self.close()

    # -- the transport the protocol above sees -----------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[no-any-return]

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def close(self) -> None:
        self._stop()
        self.inner.close()

    def abort(self) -> None:
        self._stop()
        self.inner.abort()

    def is_reading(self) -> bool:
        return self.inner.is_reading()

    def pause_reading(self) -> None:
        self.inner.pause_reading()

    def resume_reading(self) -> None:
        self.inner.resume_reading()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self.inner.write(self.frame(bytes(data)))

    def write_eof(self) -> None:
        self.inner.write_eof()

    def can_write_eof(self) -> bool:
        return self.inner.can_write_eof()

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.inner.set_write_buffer_limits(high, low)


class PingTransport(FramedTransport):
    """Teleport's ping framing over ``inner`` (``-ping`` ALPN forms, ``alpn-ping`` upgrades)."""

    def __init__(self, inner: asyncio.Transport, interval: float = ping.PING_INTERVAL) -> None:
        super().__init__(inner, interval)
        self.decoder = ping.PingDecoder()

    @classmethod
    def wrap(cls, inner: asyncio.Transport, interval: float = ping.PING_INTERVAL) -> PingTransport:
        """Put ping framing over a (maybe parked) transport and start the pings."""
        self = cls(inner, interval)
        self._start()
        return self

    def unwrap(self, data: bytes) -> bytes:
        return self.decoder.feed(data)

    def frame(self, payload: bytes) -> bytes:
        return ping.encode_frame(payload)

    def keepalive(self) -> bytes:
        return ping.PING


#: ``websocketALPNServerConn``'s ping payload.
WEBSOCKET_PING = b"teleport"


class WebSocketTransport(FramedTransport):
    """Binary WebSocket frames over ``inner``; ``client``: this side masks its frames."""

    def __init__(self, inner: asyncio.Transport, *, client: bool, interval: float | None = None) -> None:
        super().__init__(inner, interval)
        self.client = client
        self.decoder = ws.FrameDecoder(require_mask=not client)
        self._close_sent = False
        #: Pings received (answered with pongs) and sent.
        self.pings = 0

    @classmethod
    def wrap(cls, inner: asyncio.Transport, *, client: bool, interval: float | None = None) -> WebSocketTransport:
        """Put WebSocket framing over a (maybe parked) transport; ``interval``: ping that often."""
        self = cls(inner, client=client, interval=interval)
        self._start()
        return self

    def _frame(self, opcode: int, payload: bytes = b"") -> bytes:
        return ws.encode_frame(opcode, payload, os.urandom(4) if self.client else None)

    def unwrap(self, data: bytes) -> bytes:
        out = bytearray()
        for frame in self.decoder.feed(data):
            if frame.opcode in (ws.OP_BINARY, ws.OP_CONTINUATION, ws.OP_TEXT):
                out += frame.payload
            elif frame.opcode == ws.OP_PING:
                self.pings += 1
                self.inner.write(self._frame(ws.OP_PONG, frame.payload))
            elif frame.opcode == ws.OP_CLOSE:
                self._ended = True
                break  # nothing counts after a close frame
        return bytes(out)

    def frame(self, payload: bytes) -> bytes:
        return self._frame(ws.OP_BINARY, payload)

    def keepalive(self) -> bytes:
        self.pings += 1
        return self._frame(ws.OP_PING, WEBSOCKET_PING)

    def can_write_eof(self) -> bool:
        return False  # WebSocket has no half-close: a Pipe ends both directions

    def write_eof(self) -> None:
        raise NotImplementedError("WebSocket has no half-close")

    def close(self) -> None:
        if not self._close_sent and not self.inner.is_closing():
            self._close_sent = True
            with contextlib.suppress(OSError, RuntimeError, ssl.SSLError):
                self.inner.write(self._frame(ws.OP_CLOSE, (1000).to_bytes(2, "big")))  # normal closure
        super().close()


class _Below(asyncio.Protocol):
    """The protocol of the framed transport: unwraps, then hands payload up."""

    __slots__ = ("keep", "up")

    def __init__(self, up: FramedTransport) -> None:
        self.up = up
        self.keep: object = None

    def data_received(self, data: bytes) -> None:
        self.up._received(data)

    def eof_received(self) -> bool:
        return bool(self.up._protocol.eof_received())

    def pause_writing(self) -> None:
        self.up._protocol.pause_writing()

    def resume_writing(self) -> None:
        self.up._protocol.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.up._stop()
        self.up._protocol.connection_lost(exc if exc is not None else self.up._lost_with)
