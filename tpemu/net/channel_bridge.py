"""Bridge an SSH channel to a plain socket, by callbacks (glue over asyncssh sessions).

Both ends of a reverse tunnel hand their callers an ordinary connected socket — one end of a
``socketpair`` — so that services and proxies use the public APIs they would use on any TCP
connection (``asyncssh.run_server(sock=…)``, ``asyncio.open_connection(sock=…)``,
``loop.connect_accepted_socket``).

Theory of operation: :class:`FramedChannel` is the channel's asyncssh session. Until it is
attached, it collects the channel's bytes and parses the one tunnel frame that opens it (the dial
request on the agent, the dial response on the proxy; :mod:`tpemu.wire.tunnel`). :meth:`attach`
then wraps our end of the socketpair in an asyncio transport with :class:`_SocketSide` as its
protocol, and from there every chunk goes straight from one callback to the other transport —
no tasks, no stream buffers. Backpressure: the channel's ``pause_writing`` (the peer's SSH window
is full) pauses reading the socket, and the socket's ``pause_writing`` pauses reading the channel.
Half-close crosses over both ways (socket EOF → channel EOF and back).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import asyncssh

from tpemu.wire import tunnel as tw


class _SocketSide(asyncio.Protocol):
    __slots__ = ("bridge", "transport")

    def __init__(self, bridge: FramedChannel) -> None:
        self.bridge = bridge
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        chan = self.bridge.chan
        if chan is not None:
            chan.write(data)

    def eof_received(self) -> bool:
        chan = self.bridge.chan
        if chan is not None:
            chan.write_eof()
        return True

    def pause_writing(self) -> None:
        if self.bridge.chan is not None:
            self.bridge.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.bridge.chan is not None:
            self.bridge.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.bridge.chan is not None:
            self.bridge.chan.close()


class FramedChannel(asyncssh.SSHTCPSession[bytes]):
    """An SSH TCP channel that starts with one tunnel frame, then is spliced to a socket.

    ``on_frame`` (agent side) is called with the opening frame and whatever followed it; without
    it (proxy side) await :meth:`frame`.
    """

    def __init__(self, on_frame: Callable[[FramedChannel, dict[str, Any], bytes], None] | None = None) -> None:
        self.chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self.buf = bytearray()
        self.side: _SocketSide | None = None
        self.on_frame = on_frame
        self._frame: asyncio.Future[tuple[dict[str, Any], bytes]] = asyncio.get_running_loop().create_future()
        self._eof = False

    # -- asyncssh session callbacks ---------------------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHTCPChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        side = self.side
        if side is not None and side.transport is not None:
            side.transport.write(data)
            return
        self.buf += data
        if self._frame.done():
            return  # waiting to be attached: keep buffering
        try:
            frame = tw.decode_frame(self.buf)
        except tw.TunnelProtocolError as exc:
            self._fail(exc)
            return
        except ValueError as exc:
            self._fail(tw.TunnelProtocolError(str(exc)))
            return
        if frame is None:
            if len(self.buf) > tw.MAX_FRAME + 4:
                self._fail(tw.TunnelProtocolError("opening tunnel frame too large"))
            return
        obj, used = frame
        rest = bytes(self.buf[used:])
        self.buf.clear()
        self._frame.set_result((obj, rest))
        if self.on_frame is not None:
            self.on_frame(self, obj, rest)

    def eof_received(self) -> bool:
        side = self.side
        if side is not None and side.transport is not None:
            if side.transport.can_write_eof():
                side.transport.write_eof()
        else:
            self._eof = True
            if not self._frame.done():
                self._frame.set_exception(ConnectionError("the channel closed before its opening frame"))
        return True

    def pause_writing(self) -> None:
        if self.side is not None and self.side.transport is not None:
            self.side.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.side is not None and self.side.transport is not None:
            self.side.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._frame.done():
            self._frame.set_exception(exc or ConnectionError("the channel closed"))
        if self.side is not None and self.side.transport is not None:
            self.side.transport.close()

    def _fail(self, exc: Exception) -> None:
        if not self._frame.done():
            self._frame.set_exception(exc)
        if self.chan is not None:
            self.chan.close()

    # -- for the owner ------------------------------------------------------------------------------

    async def frame(self, timeout: float) -> tuple[dict[str, Any], bytes]:
        """The opening frame and the bytes after it."""
        async with asyncio.timeout(timeout):
            return await asyncio.shield(self._frame)

    def write(self, data: bytes) -> None:
        assert self.chan is not None
        self.chan.write(data)

    def close(self) -> None:
        if self.chan is not None:
            self.chan.close()

    async def attach(self, first: bytes = b"") -> socket.socket:
        """Splice the channel to a new socketpair; returns the caller's end (non-blocking)."""
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        side = _SocketSide(self)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: side, ours)
        assert side.transport is not None
        pending = first + bytes(self.buf)
        self.buf.clear()
        self.side = side
        if pending:
            side.transport.write(pending)
        if self._eof and side.transport.can_write_eof():
            side.transport.write_eof()
        return theirs
