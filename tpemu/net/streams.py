"""Handshake-phase streams, and Teleport's ping framing as a transport (glue).

The database proxy and the Database Service read the first messages of a connection through
``asyncio`` streams (a StartupMessage, a MySQL handshake, a refusal's first command): a
:class:`Stream` is such a reader/writer pair seen as one. After the handshake the streams are
given up (:func:`tpemu.net.pipe.park_streams`, which keeps what their reader had buffered) and a
:class:`~tpemu.net.pipe.Pipe` copies the rest: no task per direction.

:class:`PingTransport` is Teleport's ping framing (:mod:`tpemu.wire.ping`, the ``-ping`` ALPN
forms) as a layer between a transport and its protocol: bytes read are unwrapped (pings
dropped), bytes written are framed, and a ping goes out every ``interval`` seconds from a loop
timer (no task). Streams or a Pipe sit on top of it like on any transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

from tpemu.net.pipe import Parked, hand_over
from tpemu.wire import ping

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


class PingTransport(asyncio.Transport):
    """Ping framing over ``inner``: the protocol above sees payload bytes only.

    Make one with :meth:`wrap`; its protocol starts :class:`~tpemu.net.pipe.Parked`.
    """

    def __init__(self, inner: asyncio.Transport, interval: float = ping.PING_INTERVAL) -> None:
        super().__init__()
        self.inner = inner
        self.interval = interval
        self.decoder = ping.PingDecoder()
        self._protocol: Any = Parked()
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    @classmethod
    def wrap(cls, inner: asyncio.Transport, interval: float = ping.PING_INTERVAL) -> PingTransport:
        """Put ping framing over a (maybe parked) transport and start the pings."""
        self = cls(inner, interval)
        self._protocol.connection_made(self)
        hand_over(inner, _Below(self))
        if not inner.is_closing():
            self._timer = self._loop.call_later(interval, self._ping)
        return self

    def _ping(self) -> None:
        if self.inner.is_closing():
            return
        self.inner.write(ping.PING)
        self._timer = self._loop.call_later(self.interval, self._ping)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # the transport the protocol above sees
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
        self.inner.write(ping.encode_frame(bytes(data)))

    def write_eof(self) -> None:
        self.inner.write_eof()

    def can_write_eof(self) -> bool:
        return self.inner.can_write_eof()

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.inner.set_write_buffer_limits(high, low)


class _Below(asyncio.Protocol):
    """The protocol of the framed transport: unwraps, then hands payload up."""

    __slots__ = ("keep", "up")

    def __init__(self, up: PingTransport) -> None:
        self.up = up
        self.keep: object = None

    def data_received(self, data: bytes) -> None:
        payload = self.up.decoder.feed(data)
        if payload:
            self.up._protocol.data_received(payload)

    def eof_received(self) -> bool:
        return bool(self.up._protocol.eof_received())

    def pause_writing(self) -> None:
        self.up._protocol.pause_writing()

    def resume_writing(self) -> None:
        self.up._protocol.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.up._stop()
        self.up._protocol.connection_lost(exc)
