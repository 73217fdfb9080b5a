"""Bidirectional byte splicing between two asyncio transports (glue).

Theory of operation: each side is a small :class:`asyncio.Protocol` whose ``data_received``
writes straight into the other side's transport (no queues, no per-chunk copies beyond the
loop's own). Backpressure: when a transport's write buffer passes its high-water mark the loop
calls ``pause_writing`` on *its* protocol, which pauses *reading* on the other side; and resumes
it in ``resume_writing``. Half-close: an EOF from one side becomes ``write_eof`` on the other and
the connection stays open for the other direction; when both directions have ended, or either
side is lost, both transports close (``close`` flushes what is buffered first).

Bytes that arrive before the other side is attached (a server that speaks first, such as sshd)
are held and reading is paused until :meth:`Splice.attach` completes the pair.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class _Side(asyncio.Protocol):
    __slots__ = ("eof", "held", "name", "nbytes", "other", "splice", "transport")

    def __init__(self, splice: Splice, name: str) -> None:
        self.splice = splice
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self.held: list[bytes] = []
        self.eof = False
        self.nbytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.write(data)
        else:
            self.held.append(data)
            if self.transport is not None:
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        other = self.other
        if other is None or other.transport is None:
            return True  # delivered when the pair is attached
        if other.eof:
            self.splice.close()
            return False
        if other.transport.can_write_eof():
            other.transport.write_eof()
            return True
        self.splice.close()
        return False

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.splice.lost(self, exc)


class Splice:
    """A pair of spliced transports. Create with :meth:`side` twice, then :meth:`attach`."""

    __slots__ = ("_done", "a", "b", "on_close")

    def __init__(self, on_close: Callable[[Splice, Exception | None], None] | None = None) -> None:
        self.a = _Side(self, "a")
        self.b = _Side(self, "b")
        self.on_close = on_close
        self._done = False

    def protocol_a(self) -> asyncio.Protocol:
        return self.a

    def protocol_b(self) -> asyncio.Protocol:
        return self.b

    def attach(self, first_bytes_for_b: bytes = b"") -> None:
        """Link the two sides once both transports exist; flush anything held.

        ``first_bytes_for_b`` is written to side b before any relayed byte (a PROXY header).
        """
        a, b = self.a, self.b
        assert a.transport is not None and b.transport is not None
        a.other, b.other = b, a
        if first_bytes_for_b:
            b.transport.write(first_bytes_for_b)
        for side in (a, b):
            other = side.other
            assert other is not None and other.transport is not None
            if side.held:
                for chunk in side.held:
                    other.transport.write(chunk)
                side.held.clear()
                if side.transport is not None and not side.transport.is_closing():
                    side.transport.resume_reading()
        for side in (a, b):
            if side.eof:
                side.eof = False
                if not side.eof_received():
                    return

    @property
    def bytes_a_to_b(self) -> int:
        return self.a.nbytes

    @property
    def bytes_b_to_a(self) -> int:
        return self.b.nbytes

    def close(self) -> None:
        for side in (self.a, self.b):
            if side.transport is not None:
                side.transport.close()

    def abort(self) -> None:
        for side in (self.a, self.b):
            if side.transport is not None:
                side.transport.abort()

    def lost(self, side: _Side, exc: Exception | None) -> None:
        other = self.b if side is self.a else self.a
        if other.transport is not None and not other.transport.is_closing():
            other.transport.close()
        if not self._done and (other.transport is None or other.transport.is_closing()):
            self._done = True
            if self.on_close is not None:
                self.on_close(self, exc)
