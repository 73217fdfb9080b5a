"""Non-blocking file descriptor pumps driven by event-loop readiness (glue).

What the SSH Service's sessions (:mod:`tpemu.agent.ssh_session`) move a child's stdio with: a pty
master or pipe ends, read on ``add_reader`` and written on ``add_writer`` — the same code on uvloop
and plain asyncio, with backpressure (the reader pauses, the writer reports its high-water mark).
A pty master answers ``EIO`` once every slave descriptor is closed (pty(7)): its end of file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

READ_CHUNK = 64 * 1024
#: Above this much buffered input, :meth:`FdWriter.write` reports high water (the session then
#: stops reading the channel).
STDIN_HIGH_WATER = 256 * 1024


class FdReader:
    """Reads a non-blocking fd on loop readiness into ``on_data``; ``on_eof`` once at the end.

    A pty master answers EIO once every slave descriptor is closed: that is its end of file.
    """

    def __init__(self, fd: int, on_data: Callable[[bytes], None], on_eof: Callable[[], None]) -> None:
        self.fd = fd
        self.on_data = on_data
        self.on_eof = on_eof
        self.loop = asyncio.get_running_loop()
        self.active = False
        self.done = False

    def start(self) -> None:
        if not self.done and not self.active:
            self.loop.add_reader(self.fd, self._readable)
            self.active = True

    def pause(self) -> None:
        if self.active:
            self.loop.remove_reader(self.fd)
            self.active = False

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # EIO from a pty master
        if data:
            self.on_data(data)
        else:
            self.finish()

    def drain(self) -> None:
        """Read what is queued now, without waiting (a pty after its process exited)."""
        while not self.done:
            try:
                data = os.read(self.fd, READ_CHUNK)
            except OSError:
                data = b""
            if not data:
                self.finish()
                return
            self.on_data(data)

    def finish(self) -> None:
        if not self.done:
            self.pause()
            self.done = True
            self.on_eof()


class FdWriter:
    """Writes to a non-blocking fd, buffering what it cannot take yet."""

    def __init__(self, fd: int, on_low: Callable[[], None]) -> None:
        self.fd = fd
        self.on_low = on_low
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.waiting = False
        self.broken = False
        self.close_when_flushed = False
        self.closed = False

    def write(self, data: bytes) -> bool:
        """Queue ``data``; returns whether the buffer is above the high-water mark."""
        if self.broken or self.closed:
            return False
        if not self.buf:
            try:
                n = os.write(self.fd, data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self.broken = True  # the child closed its stdin: drop input, as sshd does
                return False
            data = data[n:]
        if data:
            self.buf += data
            if not self.waiting:
                self.loop.add_writer(self.fd, self._writable)
                self.waiting = True
        return len(self.buf) > STDIN_HIGH_WATER

    def _writable(self) -> None:
        try:
            n = os.write(self.fd, self.buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = len(self.buf)
            self.broken = True
        was_high = len(self.buf) > STDIN_HIGH_WATER
        del self.buf[:n]
        if not self.buf:
            self.loop.remove_writer(self.fd)
            self.waiting = False
            if self.close_when_flushed:
                self.close()
        if was_high and len(self.buf) <= STDIN_HIGH_WATER:
            self.on_low()

    def eof(self) -> None:
        """Close after the buffered bytes are written (the client sent EOF)."""
        if self.buf:
            self.close_when_flushed = True
        else:
            self.close()

    def close(self) -> None:
        if self.waiting:
            self.loop.remove_writer(self.fd)
            self.waiting = False
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                os.close(self.fd)


__all__ = ["READ_CHUNK", "STDIN_HIGH_WATER", "FdReader", "FdWriter"]
