"""Relay bytes between two asyncio stream pairs, with half-close and ping framing (glue).

The database proxy and the Database Service read the first messages of a connection through
``asyncio`` streams (a StartupMessage, a MySQL handshake), then only copy bytes. :func:`relay`
does that copying for two :class:`Stream` s: one task per direction, ``drain`` after every write
(backpressure: a slow reader stops the copy from the other side), an EOF passed on as
``write_eof`` where the transport can (TCP), as a close where it cannot (TLS); when both
directions have ended, or either fails, both sides close. Whatever the StreamReaders already
buffered (bytes a client pipelined behind its first message) is relayed first, naturally.

:class:`PingStream` is the same over Teleport's ping framing (:mod:`tpemu.wire.ping`): reads drop
pings and unwrap packets, writes are framed, and a ping goes out every ``interval`` seconds.

Throughput is not the goal (database sessions, not bulk transfer: the front door's
Protocol-based splice serves pass-through routes); correctness with buffered bytes is.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

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


class PingStream(Stream):
    """A :class:`Stream` in ping framing; :meth:`start_pings` begins the periodic pings."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str = "",
                 interval: float = ping.PING_INTERVAL) -> None:
        super().__init__(reader, writer, name)
        self.decoder = ping.PingDecoder()
        self.interval = interval
        self._pinger: asyncio.Task[None] | None = None

    async def read(self, n: int = CHUNK) -> bytes:
        while True:
            data = await self.reader.read(n)
            if not data:
                return b""
            payload = self.decoder.feed(data)
            if payload:
                return payload

    def write(self, data: bytes) -> None:
        self.writer.write(ping.encode_frame(data))

    def start_pings(self) -> None:
        if self._pinger is None:
            self._pinger = asyncio.get_running_loop().create_task(self._ping_loop())

    async def _ping_loop(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, ConnectionError):
            while not self.writer.is_closing():
                await asyncio.sleep(self.interval)
                self.writer.write(ping.PING)
                await self.writer.drain()

    def close(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
        super().close()


async def _pump(src: Stream, dst: Stream, counter: list[int], index: int) -> None:
    while True:
        data = await src.read(CHUNK)
        if not data:
            break
        counter[index] += len(data)
        dst.write(data)
        await dst.drain()
    if not dst.write_eof():
        raise EOFError  # cannot half-close (TLS): end both directions


async def relay(a: Stream, b: Stream, first_for_b: bytes = b"") -> tuple[int, int]:
    """Copy a→b and b→a until both ends are done; close both. Returns (bytes a→b, bytes b→a).

    ``first_for_b`` is written to ``b`` before anything read from ``a``.
    """
    counter = [0, 0]
    if first_for_b:
        b.write(first_for_b)
    tasks = [asyncio.ensure_future(_pump(a, b, counter, 0)), asyncio.ensure_future(_pump(b, a, counter, 1))]
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(t.exception() is not None for t in done if not t.cancelled()):
                break
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        a.close()
        b.close()
        await asyncio.gather(a.wait_closed(), b.wait_closed())
    return counter[0], counter[1]
