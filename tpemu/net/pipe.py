"""One data plane: :class:`Pipe` moves bytes between two endpoints, for every hop (glue).

Theory of operation.

*Endpoints.* An endpoint is an :class:`asyncio.Transport`: one of the loop's own (TCP, TLS, a
Unix socket) or a :class:`tpemu.net.channel.ChannelTransport`, which presents an asyncssh
channel (a reverse-tunnel channel, a client's SSH channel on the proxy) through the same
interface. The Pipe never knows which it has; it uses ``write``, ``write_eof``/``can_write_eof``,
``pause_reading``/``resume_reading``, ``close`` and the protocol callbacks, nothing else. Every
hop joins two endpoints this way: pass-through routes, terminating routes after their
handshake, the proxy's end of a tunnel channel, the agent's end toward its backend, the local
database tunnel and the SSH proxy.

*Parking.* An endpoint often exists before the other one (a tunnel channel opened before the
dial answer is read; a stream pair that carried a handshake). Until it is joined its protocol
is :class:`Parked`, which keeps what arrives (bytes, EOF, loss) and pauses reading at once, so
further bytes wait in the kernel or in the peer's SSH window rather than in memory.
:func:`hand_over` gives a parked transport to its next protocol and replays what was kept;
:func:`park_streams` turns an ``asyncio`` stream pair (after a handshake read through it) back
into a parked transport, with whatever its reader had buffered kept in order.

*Joining.* :meth:`Pipe.join` gives each transport one :class:`_Side` protocol. Each chunk goes
from one side's ``data_received`` straight into the other transport's ``write``: no task, no
queue, no copy beyond the loop's own. After the join nothing of the connection runs until a
byte arrives.

*Joining as they connect.* A pipe can also be made first and its sides given to the loop as the
protocols of transports still being made: a side is its own protocol factory
(``loop.create_connection(pipe.b, host, port)``, ``loop.connect_accepted_socket(pipe.a, sock)``).
What a side reads before the other side has its transport (a server's greeting, an EOF, its
loss) is kept, reading paused, and delivered by the other side's ``connection_made``: no byte
is lost and none is parked twice. Pass-through routes do this: the backend is dialled into
``b``, then the client's socket becomes a transport straight into ``a``.

*Backpressure, both ways.* Every transport has high/low water marks on its write buffer (the
loop's defaults, 64/16 KiB, or the Pipe's ``limits``). When the buffer of side B's transport
passes the high mark the loop calls ``pause_writing`` on B's protocol, which pauses *reading*
on A; when it drains below the low mark, ``resume_writing`` resumes A. For an SSH channel the
same holds with the peer's window: a paused channel sends no window adjust, so the remote
sender stops too.

*Half-close.* An EOF read on A becomes ``write_eof`` on B when both can half-close (TCP, SSH
channels) and the other direction goes on; once both directions have ended, both close. When
either cannot (TLS), the EOF ends the whole pipe: both transports close, which flushes what is
buffered first.

*Counters.* ``a_to_b``/``b_to_a`` count the bytes relayed in each direction (counted as they
are read: bytes held for a side still connecting count once read, even if the pipe then fails).

*One error boundary.* Every callback's body is guarded: an exception (a write to a channel
that just closed, a bug) aborts both transports instead of escaping into the loop. The first
loss or error is the pipe's outcome; ``on_close(pipe, exc)`` runs exactly once, when both
transports are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

OnClose = Callable[["Pipe", BaseException | None], None]


class Parked(asyncio.Protocol):
    """A transport's protocol while it waits to be joined: keeps what arrives, reading paused."""

    __slots__ = ("eof", "exc", "held", "keep", "lost", "paused", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        #: What must live as long as the transport (the StreamWriter of :func:`park_streams`).
        self.keep: object = None
        self.held: list[bytes] = []
        self.eof = False
        self.lost = False
        self.paused = False
        self.exc: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.held.append(data)
        if not self.paused and self.transport is not None:
            self.paused = True
            with contextlib.suppress(Exception):
                self.transport.pause_reading()  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        self.eof = True
        # Keep the transport open: the next protocol decides (TLS transports ignore this).
        return self.transport is not None and not _over_tls(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.exc = exc

    def pending(self) -> int:
        return sum(map(len, self.held))


def _over_tls(transport: asyncio.BaseTransport) -> bool:
    return transport.get_extra_info("sslcontext") is not None


def park(transport: asyncio.BaseTransport) -> Parked:
    """Make ``transport``'s protocol a :class:`Parked` (if it is not one already); returns it."""
    current = transport.get_protocol()
    if isinstance(current, Parked):
        return current
    parked = Parked()
    transport.set_protocol(parked)
    parked.connection_made(transport)
    return parked


def park_streams(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 first: bytes = b"") -> asyncio.Transport:
    """The transport under a stream pair, parked, with ``first`` then the reader's buffered bytes
    kept (``first``: what a parser above the reader had taken but not used, such as h11's
    trailing data after an upgrade).

    Used when a handshake was read through ``asyncio`` streams and the rest is only copying. The
    writer is kept alive by the :class:`Parked` (a collected ``StreamWriter`` closes its
    transport) until the transport is joined.
    """
    transport: asyncio.Transport = writer.transport  # type: ignore[assignment]
    parked = Parked()
    # StreamReader has no public "take what is buffered" call; its buffer is a bytearray.
    buffered: bytearray = reader._buffer  # type: ignore[attr-defined]
    if first:
        parked.held.append(bytes(first))
    if buffered:
        parked.held.append(bytes(buffered))
        buffered.clear()
    parked.eof = reader.at_eof() or bool(getattr(reader, "_eof", False))
    parked.paused = bool(getattr(reader, "_paused", False))
    if getattr(reader, "_exception", None) is not None:
        parked.lost, parked.exc = True, reader.exception()
    parked.keep = writer
    transport.set_protocol(parked)
    parked.connection_made(transport)
    return transport


#: What must outlive a handed-over transport, by its new protocol (when that has no ``keep``).
_KEEP: weakref.WeakKeyDictionary[Any, object] = weakref.WeakKeyDictionary()


def hand_over(transport: asyncio.BaseTransport, protocol: asyncio.BaseProtocol) -> None:
    """Give a (maybe parked) ``transport`` to ``protocol``: ``connection_made``, then what was kept.

    Reading is resumed before the replay, so a protocol that pauses while taking the kept bytes
    (backpressure) stays paused.
    """
    parked = transport.get_protocol()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if not isinstance(parked, Parked):
        return
    if parked.keep is not None:
        # A collected StreamWriter closes its transport: the next protocol holds it on.
        try:
            protocol.keep = parked.keep  # type: ignore[attr-defined]
        except AttributeError:
            _KEEP[protocol] = parked.keep  # TypeError here: give the protocol a ``keep`` slot
        parked.keep = None
    if parked.paused and not parked.lost and not transport.is_closing():
        parked.paused = False
        with contextlib.suppress(Exception):
            transport.resume_reading()  # type: ignore[attr-defined]
    held, parked.held = parked.held, []
    for data in held:
        protocol.data_received(data)  # type: ignore[attr-defined]
    if parked.lost:
        protocol.connection_lost(parked.exc if isinstance(parked.exc, Exception) else None)
    elif parked.eof and not protocol.eof_received():  # type: ignore[attr-defined]
        transport.close()


class _Side(asyncio.Protocol):
    """One end of a :class:`Pipe`: what it reads goes to the other end's transport.

    Until the other end has a transport (a pipe whose sides are given to the loop as they
    connect), what arrives is kept in ``held`` with reading paused; an EOF or a loss in that
    time is delivered after the kept bytes (:meth:`_deliver_pending`).
    """

    __slots__ = ("eof", "first", "held", "keep", "lost", "nbytes", "other", "pipe", "transport")

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.transport: Any = None
        self.other: _Side = self
        self.nbytes = 0
        self.eof = False
        self.lost = False
        self.keep: object = None
        #: Bytes read before the other end had a transport (``None``: nothing is waiting).
        self.held: list[bytes] | None = None
        #: What goes to the other end in front of the first chunk from this one (a PROXY header):
        #: one write, one segment.
        self.first = b""

    def __call__(self) -> _Side:
        """A side is its own protocol factory (``loop.create_connection(pipe.b, host, port)``)."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        other = self.other
        if other.held is not None or other.lost or self.pipe._error is not None:
            other._deliver_pending(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.nbytes += len(data)
            if self.first:
                data, self.first = self.first + data, b""
            self.other.transport.write(data)
        except Exception as exc:
            if self.other.transport is None:  # the other end is still connecting
                self._hold(data)
            else:
                self.pipe._fail(exc)

    def eof_received(self) -> bool:
        try:
            self.eof = True
            if self.other.transport is None:  # still connecting: it takes the EOF when it can
                if self.held is None:
                    self.held = []
                return True
            return self._pass_eof()
        except Exception as exc:
            self.pipe._fail(exc)
        return False

    def _pass_eof(self) -> bool:
        other = self.other
        if other.eof:
            self.pipe.close()
            return False
        if self.first:
            other.transport.write(self.first)
            self.first = b""
        if self.transport.can_write_eof() and other.transport.can_write_eof():
            other.transport.write_eof()
            return True
        self.pipe.close()  # one side cannot half-close (TLS): the EOF ends both directions
        return False

    def _hold(self, data: bytes) -> None:
        if self.held is None:
            self.held = []
            try:
                self.transport.pause_reading()
            except Exception:
                pass
        self.held.append(data)

    def _deliver_pending(self, to: _Side) -> None:
        """``to`` has just got its transport: give it what this side kept, then its EOF or loss."""
        held, self.held = self.held, None
        try:
            if self.pipe._error is not None:
                to.transport.abort()
                return
            if not (self.lost or self.eof):
                self.transport.resume_reading()  # before the replay: a pause it causes stays
            for data in held or ():
                to.transport.write(data)
            if self.lost:
                to.transport.close()
            elif self.eof:
                self._pass_eof()
        except Exception as exc:
            self.pipe._fail(exc)

    def pause_writing(self) -> None:
        try:
            self.other.transport.pause_reading()
        except Exception as exc:
            if self.other.transport is not None:  # (nothing reads into this side yet otherwise)
                self.pipe._fail(exc)

    def resume_writing(self) -> None:
        try:
            self.other.transport.resume_reading()
        except Exception as exc:
            if self.other.transport is not None:
                self.pipe._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.keep = None
        self.pipe._lost(self, exc)


class Pipe:
    """Two endpoints joined both ways. Make one with :meth:`join`."""

    __slots__ = ("_done", "_error", "a", "b", "name", "on_close")

    def __init__(self, on_close: OnClose | None = None, name: str = "", *, first_to_b: bytes = b"") -> None:
        """A pipe whose sides are given to the loop as they connect (see *Joining as they
        connect*); ``first_to_b`` goes to ``b`` in front of the first chunk from ``a``."""
        self.a = _Side(self)
        self.b = _Side(self)
        self.a.first = first_to_b
        self.a.other, self.b.other = self.b, self.a
        self.on_close = on_close
        self.name = name
        self._done = False
        self._error: BaseException | None = None

    @classmethod
    def join(cls, a: asyncio.BaseTransport, b: asyncio.BaseTransport, *, first_to_b: bytes = b"",
             first_to_a: bytes = b"", on_close: OnClose | None = None, name: str = "",
             limits: tuple[int, int] | None = None) -> Pipe:
        """Join transports ``a`` and ``b`` (parked or not); returns the running pipe.

        ``first_to_b``/``first_to_a`` are written before any relayed byte (a PROXY header, a
        StartupMessage read by the proxy). ``limits`` = (high, low) write-buffer marks for both.
        """
        pipe = cls(on_close, name)
        if limits is not None:
            for t in (a, b):
                with contextlib.suppress(Exception):
                    t.set_write_buffer_limits(*limits)  # type: ignore[attr-defined]
        # Both sides know their transport before either replays kept bytes into the other.
        pipe.a.transport, pipe.b.transport = a, b
        if first_to_b:
            b.write(first_to_b)  # type: ignore[attr-defined]
        if first_to_a:
            a.write(first_to_a)  # type: ignore[attr-defined]
        hand_over(a, pipe.a)
        if not pipe._done:
            hand_over(b, pipe.b)
        return pipe

    @property
    def a_to_b(self) -> int:
        """Bytes read on ``a`` and written to ``b``."""
        return self.a.nbytes

    @property
    def b_to_a(self) -> int:
        return self.b.nbytes

    @property
    def closed(self) -> bool:
        return self._done

    # (try/except rather than contextlib.suppress on these per-connection paths: ~0.3 µs each.)
    def close(self) -> None:
        """Close both transports (each flushes what it has buffered first)."""
        for side in (self.a, self.b):
            t = side.transport
            if t is not None and not side.lost:
                try:
                    t.close()
                except Exception:
                    pass

    def abort(self) -> None:
        for side in (self.a, self.b):
            t = side.transport
            if t is not None and not side.lost:
                try:
                    t.abort()
                except Exception:
                    pass

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            log.debug("pipe %s: %s: %s; aborting both ends", self.name, type(exc).__name__, exc)
        self.abort()

    def _lost(self, side: _Side, exc: Exception | None) -> None:
        if exc is not None and self._error is None:
            self._error = exc
        other = side.other
        if not other.lost:
            t = other.transport
            if t is not None:
                try:
                    t.close()
                except Exception:
                    pass
            if not other.lost:
                return
        if not self._done:
            self._done = True
            on_close, self.on_close = self.on_close, None
            if on_close is not None:
                try:
                    on_close(self, self._error)
                except Exception:
                    log.exception("pipe %s: close callback failed", self.name)
            # Break the reference cycles (pipe ↔ sides ↔ transports, the callback's closure) so
            # reference counting frees the connection now: left to the cyclic GC, every
            # connection's objects reached the old generations and its full collections stalled
            # the loop for tens of milliseconds at 64 concurrent (the p99 tail of issue 13).
            for s in (self.a, self.b):
                s.transport = None
                s.keep = None
                s.other = _ENDED.a
                s.pipe = _ENDED  # no callback comes after connection_lost; a stray one finds nothing


#: What the sides of an ended pipe point to instead of it (so nothing holds the pipe in a cycle).
_ENDED = Pipe(name="ended")
_ENDED._done = True
