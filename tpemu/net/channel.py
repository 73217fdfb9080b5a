"""An asyncssh channel presented as an asyncio transport: the Pipe's channel endpoint (glue).

:class:`ChannelTransport` is two things at once: the *session* asyncssh calls back
(``connection_made(chan)``, ``data_received``, ``eof_received``, ``pause_writing`` …) and an
:class:`asyncio.Transport` (``write``, ``pause_reading``, ``set_protocol`` …) for whichever
protocol owns the channel now. So a tunnel channel can be joined by a
:class:`~tpemu.net.pipe.Pipe`, read through ``asyncio`` streams for a handshake
(:func:`open_streams`), or carry another SSH connection (:class:`OverTransport` as asyncssh's
``tunnel=``) with no socketpair and no copy in between. The mapping is one to one: the channel's
window is the transport's flow control (``pause_reading`` stops window adjusts), the channel's
send buffer limits are the write-buffer limits, ``write_eof`` is ``CHANNEL_EOF`` and ``close``
flushes then sends ``CHANNEL_CLOSE``.

Teleport's channels carry a refusal reason on stderr (``teleport-transport``: "connection
rejected: …"): stderr is kept apart (bounded by ``MAX_STDERR``), never mixed into the byte stream,
and :meth:`ChannelTransport.stderr_text` reads it to the channel's end.

Until a protocol takes it the channel is parked (:class:`~tpemu.net.pipe.Parked`): bytes and EOF
are kept and reading paused. :class:`OpeningFrame` is the parked state of a reverse-tunnel
channel, which starts with one :mod:`tpemu.wire.tunnel` frame (the dial request on the agent,
the dial response on the proxy): it decodes that frame, keeps what followed it, and calls back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncssh
from asyncssh.constants import EXTENDED_DATA_STDERR

from tpemu.net.pipe import Parked, hand_over
from tpemu.wire import tunnel as tw

#: What one channel's stderr may hold (Teleport reads it to the end for the refusal text).
MAX_STDERR = 16 * 1024


class ChannelTransport(asyncio.Transport, asyncssh.SSHTCPSession[bytes]):
    """An asyncssh channel's session that is also an asyncio transport for its current protocol."""

    def __init__(self, protocol: asyncio.BaseProtocol | None = None,
                 on_open: Callable[[ChannelTransport], object] | None = None) -> None:
        super().__init__()
        self.chan: Any = None
        self._protocol: Any = protocol if protocol is not None else Parked()
        self._on_open = on_open
        self._closing = False
        self._reading = True
        #: What the peer wrote on stderr (extended data), at most ``MAX_STDERR`` bytes.
        self.stderr = bytearray()
        self._lost: asyncio.Future[None] | None = None

    # -- the asyncssh session side -------------------------------------------------------------------

    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        self._protocol.connection_made(self)
        if self._on_open is not None:
            on_open, self._on_open = self._on_open, None
            on_open(self)

    def session_started(self) -> None:
        pass

    def data_received(self, data: bytes, datatype: Any = None) -> None:
        if datatype is None:
            self._protocol.data_received(data)
        elif datatype == EXTENDED_DATA_STDERR and len(self.stderr) < MAX_STDERR:
            # stderr is not part of the byte stream: kept for the refusal text
            self.stderr += data[:MAX_STDERR - len(self.stderr)]

    def eof_received(self) -> bool:
        return bool(self._protocol.eof_received())

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._protocol.connection_lost(exc)

    async def stderr_text(self, timeout: float) -> str:
        """What the peer wrote to stderr, read to the channel's end (bounded by ``timeout``), trimmed."""
        if self.chan is not None and not self._closing:
            self._lost = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._lost
        return self.stderr.decode("utf-8", "replace").strip()

    # -- the asyncio transport side --------------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "channel":
            return self.chan
        if name == "socket":
            return default  # the socket under the SSH connection is not this channel's
        return self.chan.get_extra_info(name, default) if self.chan is not None else default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[no-any-return]

    def is_closing(self) -> bool:
        return self._closing or self.chan is None or self.chan.is_closing()

    def close(self) -> None:
        self._closing = True
        if self.chan is not None:
            self.chan.close()

    def abort(self) -> None:
        self._closing = True
        if self.chan is not None:
            self.chan.abort()

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        self._reading = False
        self.chan.pause_reading()

    def resume_reading(self) -> None:
        # asyncssh delivers its receive buffer synchronously on resume; a socket transport does so
        # from the loop. Do as the socket: hand_over resumes, *then* replays what the Parked state
        # kept, and those bytes come first (a synchronous resume put later bytes before them).
        if not self._reading:
            self._reading = True
            asyncio.get_running_loop().call_soon(self._resume)

    def _resume(self) -> None:
        if self._reading and self.chan is not None and not self._closing:
            self.chan.resume_reading()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.chan.write(data)

    def write_stderr(self, data: bytes) -> None:
        self.chan.write(data, EXTENDED_DATA_STDERR)

    def writelines(self, list_of_data: Any) -> None:
        self.chan.writelines(list_of_data)

    def write_eof(self) -> None:
        self.chan.write_eof()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return int(self.chan.get_write_buffer_size())

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.chan.set_write_buffer_limits(high, low)


class OpeningFrame(Parked):
    """The parked state of a tunnel channel: decode its first frame, keep what follows.

    ``on_frame(transport, frame)`` is called once with the decoded JSON object; :attr:`frame`
    (a future) resolves to it as well, or fails when the channel ends first or the frame is bad.
    """

    __slots__ = ("buf", "frame", "on_frame")

    def __init__(self, on_frame: Callable[[asyncio.BaseTransport, dict[str, Any]], None] | None = None) -> None:
        super().__init__()
        self.buf = bytearray()
        self.on_frame = on_frame
        self.frame: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self.frame.done():
            super().data_received(data)
            return
        self.buf += data
        try:
            decoded = tw.decode_frame(self.buf)
        except (tw.TunnelProtocolError, ValueError) as exc:
            self._fail(exc if isinstance(exc, tw.TunnelProtocolError) else tw.TunnelProtocolError(str(exc)))
            return
        if decoded is None:
            if len(self.buf) > tw.MAX_FRAME + 4:
                self._fail(tw.TunnelProtocolError("opening tunnel frame too large"))
            return
        obj, used = decoded
        rest = bytes(self.buf[used:])
        self.buf.clear()
        if rest:
            super().data_received(rest)
        self.frame.set_result(obj)
        if self.on_frame is not None and self.transport is not None:
            self.on_frame(self.transport, obj)

    def eof_received(self) -> bool:
        if not self.frame.done():
            self.frame.set_exception(ConnectionError("the channel closed before its opening frame"))
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.frame.done():
            self.frame.set_exception(exc or ConnectionError("the channel closed"))
        super().connection_lost(exc)

    def _fail(self, exc: Exception) -> None:
        if not self.frame.done():
            self.frame.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


async def open_streams(transport: asyncio.BaseTransport, limit: int = 64 * 1024,
                       prefeed: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio`` streams over a (maybe parked) transport: ``prefeed``, then its kept bytes, first
    in the reader."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    if prefeed:
        reader.feed_data(prefeed)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    hand_over(transport, protocol)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)  # type: ignore[arg-type]


class OverTransport:
    """asyncssh's ``tunnel=``: run an SSH connection over an existing (maybe parked) transport."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    async def create_connection(self, session_factory: Callable[[], Any], host: str,
                                port: int) -> tuple[asyncio.BaseTransport, Any]:
        protocol = session_factory()
        hand_over(self.transport, protocol)
        return self.transport, protocol

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.transport.close()


__all__ = ["ChannelTransport", "OpeningFrame", "OverTransport", "open_streams"]
