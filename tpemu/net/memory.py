"""Two connected asyncio transports in memory: a socketpair with no sockets (glue).

For a hop whose both ends live in this process — the agent's Database Service speaking to an
*emulated* MySQL server as its client (the connection phase replayed with the user's identity),
then joining the channel to it with a :class:`~tpemu.net.pipe.Pipe` — where a ``socketpair``
used to carry every byte through the kernel twice.

Semantics, those of a stream socket pair: :meth:`MemoryTransport.write` delivers to the peer's
protocol at once (no buffer of our own, so ``get_write_buffer_size`` is 0); ``write_eof`` is the
peer's ``eof_received`` (half-close); ``close`` is an EOF to the peer, then ``connection_lost``
on this side; ``abort`` loses both sides at once (the peer with ``ConnectionResetError``).
Backpressure: when a side pauses reading, what arrives waits in that side's queue and the
*writer's* protocol gets ``pause_writing`` (a Pipe then pauses its source, a StreamWriter's
``drain`` waits); ``resume_reading`` delivers the queue and calls ``resume_writing``. Both ends
start :class:`~tpemu.net.pipe.Parked`, like any endpoint before it is joined.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tpemu.net.pipe import Parked

_EOF = object()


class MemoryTransport(asyncio.Transport):
    """One end of :func:`transport_pair`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        super().__init__({"peername": ("memory", 0), "sockname": (name, 0)})
        self._loop = loop
        self.peer: MemoryTransport = self
        self._protocol: Any = Parked()
        self._paused = False
        self._queue: list[object] = []  # bytes, or _EOF, for our protocol while reading is paused
        self._closing = False
        self._lost = False
        self._told_writer = False

    # -- what the peer's writes do to us ---------------------------------------------------------------

    def _receive(self, item: object) -> None:
        if self._lost:
            return
        if self._paused or self._queue:
            self._queue.append(item)
            return
        self._hand(item)

    def _hand(self, item: object) -> None:
        if item is _EOF:
            if not self._protocol.eof_received():
                self.close()
        else:
            self._protocol.data_received(item)

    def _lose(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._queue.clear()
        self._protocol.connection_lost(exc)

    # -- the transport our protocol sees -----------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        self.peer._receive(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        if not self._closing:
            self.peer._receive(_EOF)

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.peer._receive(_EOF)
        self._loop.call_soon(self._lose, None)

    def abort(self) -> None:
        self._closing = True
        self._loop.call_soon(self._lose, None)
        peer = self.peer
        peer._closing = True
        self._loop.call_soon(peer._lose, ConnectionResetError("the other end aborted"))

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            if not self.peer._lost and not self._told_writer:
                self._told_writer = True
                self.peer._protocol.pause_writing()

    def resume_reading(self) -> None:
        if not self._paused:
            return
        self._paused = False
        # Delivered from the loop, as a socket transport would: whoever resumed (hand_over) first
        # replays what it kept, and if its protocol pauses again meanwhile, nothing is delivered.
        self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        while self._queue and not self._paused and not self._lost:
            self._hand(self._queue.pop(0))
        if not self._paused and self._told_writer:
            self._told_writer = False
            if not self.peer._lost:
                self.peer._protocol.resume_writing()

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[no-any-return]

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # nothing is buffered here: the peer's queue and pause_writing bound it


def transport_pair(name: str = "memory") -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected transports, both parked (give each to a protocol with ``hand_over``, or
    streams with :func:`tpemu.net.channel.open_streams`)."""
    loop = asyncio.get_running_loop()
    a, b = MemoryTransport(loop, f"{name}-a"), MemoryTransport(loop, f"{name}-b")
    a.peer, b.peer = b, a
    for t in (a, b):
        t._protocol.connection_made(t)
    return a, b


__all__ = ["MemoryTransport", "transport_pair"]
