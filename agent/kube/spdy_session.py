"""The server side of a SPDY/3.1 connection, as ``moby/spdystream`` runs it for the kubelet (glue).

Theory of operation. The bytes come from a :class:`Channel`: the connection itself after
``101 Switching Protocols`` with ``Upgrade: SPDY/3.1`` (:class:`RawChannel`), or the binary
messages of a WebSocket that tunnels SPDY (``SPDY/3.1+portforward.k8s.io``, client-go's
``tools/portforward/tunneling_connection.go``: every write one binary message, no HTTP response
inside the tunnel; :class:`TunnelChannel`). One task (:meth:`Session.run`) reads frames with
:class:`tpemu.wire.spdy.Decoder` and acts as spdystream's ``Connection.Serve`` does:

* ``SYN_STREAM`` (the client's streams, odd ids, increasing): the ``accept`` callback decides;
  accepted streams get an empty ``SYN_REPLY`` (``apimachinery httpstream/spdy/connection.go``
  ``newSpdyStream``), refused ones ``RST_STREAM`` (CANCEL, as ``stream.Reset()``); a bad id gets
  ``RST_STREAM`` PROTOCOL_ERROR (``checkStreamFrame``);
* data goes to its stream (``FIN`` ends the peer's half), ``RST_STREAM`` ends a stream,
  ``PING`` with the peer's parity (odd) is echoed, ``GOAWAY`` ends the session;
  ``SETTINGS``/``WINDOW_UPDATE``/``HEADERS`` are ignored, as spdystream ignores them (it does no
  flow control).

Backpressure: a stream holds at most :data:`STREAM_BUFFER` bytes its reader has not taken; past
that the session stops reading the connection until it drains (spdystream blocks its frame
worker the same way). Writes go straight to the channel, one frame at a time (the encoder's zlib
context needs them in order, which one event loop gives), and callers await the channel's drain.
Every read of the connection has the idle deadline; a frame that breaks SPDY ends the session
with ``GOAWAY`` PROTOCOL_ERROR and a log line, never a traceback.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from tpemu.wire import spdy
from tpemu.wire import websocket as wsf
from tpemu.wire.errors import WireError

log = logging.getLogger(__name__)

#: Unread bytes one stream may hold before the session stops reading the connection.
STREAM_BUFFER = 256 * 1024
#: Streams open at once on one connection (a port-forwarded TCP connection is two).
MAX_STREAMS = 512
#: The largest data frame this side writes (Go's io.Copy moves 32 KiB at a time).
CHUNK = 32 * 1024


class Channel(Protocol):
    """The bytes of one SPDY connection, both directions."""

    async def read(self, timeout: float) -> bytes:
        """The next bytes (``b""`` at the end); raises ``TimeoutError`` and :class:`WireError`."""
        ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    async def close(self) -> None: ...


class RawChannel:
    """The upgraded connection itself (``Upgrade: SPDY/3.1``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, leftover: bytes = b"") -> None:
        self.reader, self.writer = reader, writer
        self._leftover = leftover

    async def read(self, timeout: float) -> bytes:
        if self._leftover:
            data, self._leftover = self._leftover, b""
            return data
        async with asyncio.timeout(timeout):
            return await self.reader.read(65536)

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)


class TunnelChannel(RawChannel):
    """SPDY in the binary messages of a WebSocket (client frames masked, ours not)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, leftover: bytes = b"") -> None:
        super().__init__(reader, writer)
        self._decoder = wsf.FrameDecoder(require_mask=True, max_payload=spdy.MAX_DATA + 16)
        self._frames = collections.deque(self._decoder.feed(leftover))
        self._message: int | None = None  # the opcode of a message whose continuation frames follow
        self._closed = False

    async def read(self, timeout: float) -> bytes:
        while True:
            while self._frames:
                frame = self._frames.popleft()
                if frame.opcode == wsf.OP_PING:
                    self.write_frame(wsf.OP_PONG, frame.payload)
                    continue
                if frame.opcode == wsf.OP_PONG:
                    continue
                if frame.opcode == wsf.OP_CLOSE:
                    self.write_frame(wsf.OP_CLOSE, frame.payload[:2] or b"\x03\xe8")
                    self._closed = True
                    return b""
                opcode = self._message if frame.opcode == wsf.OP_CONTINUATION else frame.opcode
                if opcode is None:
                    raise wsf.WebSocketError("continuation frame outside a message")
                if frame.opcode != wsf.OP_CONTINUATION and self._message is not None:
                    raise wsf.WebSocketError("new message before the previous one ended")
                if opcode != wsf.OP_BINARY:
                    # tunneling_connection.go: "invalid message type received".
                    raise wsf.WebSocketError("invalid message type received (SPDY travels in binary messages)")
                self._message = None if frame.fin else opcode
                if frame.payload:
                    return frame.payload
            async with asyncio.timeout(timeout):
                data = await self.reader.read(65536)
            if not data:
                return b""
            self._frames.extend(self._decoder.feed(data))

    def write_frame(self, opcode: int, payload: bytes) -> None:
        if not self._closed and not self.writer.is_closing():
            self.writer.write(wsf.encode_frame(opcode, payload))

    def write(self, data: bytes) -> None:
        self.write_frame(wsf.OP_BINARY, data)

    async def close(self) -> None:
        # TunnelingConnection.Close: a normal-closure close frame, then the connection.
        self.write_frame(wsf.OP_CLOSE, b"\x03\xe8")
        self._closed = True
        await super().close()


class Stream:
    """One SPDY stream the client opened: read what it sends, write back, half-close, reset."""

    def __init__(self, session: Session, stream_id: int, headers: spdy.Headers) -> None:
        self.session = session
        self.id = stream_id
        self.headers = headers
        self._inbound: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._readable = asyncio.Event()
        self.remote_done = False  # the client sent FIN or RST, or the session ended
        self.local_done = False  # this side sent FIN or RST
        self.was_reset = False

    def header(self, name: str) -> str:
        return spdy.header(self.headers, name)

    # -- from the session --

    def _deliver(self, data: bytes) -> None:
        self._inbound.append(data)
        self._buffered += len(data)
        self._readable.set()
        if self._buffered > STREAM_BUFFER:
            self.session._hold(self.id)

    def _end_remote(self, reset: bool = False) -> None:
        self.remote_done = True
        if reset:
            self.was_reset = self.local_done = True
        self._readable.set()
        self.session._release(self.id)
        self.session._forget_if_done(self)

    # -- for the handler --

    async def read(self, timeout: float) -> bytes:
        """The next data the client sent, ``b""`` once it closed its half (raises ``TimeoutError``)."""
        while not self._inbound and not self.remote_done:
            self._readable.clear()
            async with asyncio.timeout(timeout):
                await self._readable.wait()
        if not self._inbound:
            return b""
        data = self._inbound.popleft()
        self._buffered -= len(data)
        if self._buffered <= STREAM_BUFFER // 2:
            self.session._release(self.id)
        return data

    async def write(self, data: bytes) -> None:
        """Send ``data`` (raises ``ConnectionError`` once this half or the session is closed)."""
        if self.local_done or self.session.closed:
            raise ConnectionResetError(f"SPDY stream {self.id} is closed")
        view = memoryview(data)
        for at in range(0, len(view), CHUNK):
            self.session.send(spdy.encode_data(self.id, view[at:at + CHUNK]))
        await self.session.drain()

    def close(self) -> None:
        """End this side's half (an empty data frame with FIN), once."""
        if not self.local_done and not self.session.closed:
            self.session.send(spdy.encode_data(self.id, b"", fin=True))
        self.local_done = True
        self.session._forget_if_done(self)

    def reset(self) -> None:
        """End both halves (``RST_STREAM`` CANCEL)."""
        if not self.was_reset and not self.session.closed:
            self.session.send(spdy.encode_rst_stream(self.id, spdy.CANCEL))
        self.was_reset = self.local_done = True
        self._end_remote()


#: Decides on a new stream: ``None`` accepts it, a message refuses it (the stream is reset).
Accept = Callable[[Stream], str | None]
#: Told of every accepted stream, after its SYN_REPLY went out.
Accepted = Callable[[Stream], None]


class Session:
    """One SPDY connection from a client (see the module docstring)."""

    def __init__(self, channel: Channel, accept: Accept, accepted: Accepted, idle_timeout: float,
                 name: str = "") -> None:
        self.channel = channel
        self.accept, self.accepted = accept, accepted
        self.idle_timeout = idle_timeout
        self.name = name
        self.streams: dict[int, Stream] = {}
        self.closed = False
        self._decoder = spdy.Decoder()
        self._encoder = spdy.Encoder()
        self._last_id = 0
        self._held: set[int] = set()
        self._room = asyncio.Event()
        self._room.set()

    def send(self, frame: bytes) -> None:
        if not self.closed:
            self.channel.write(frame)

    async def drain(self) -> None:
        await self.channel.drain()

    def _hold(self, stream_id: int) -> None:
        self._held.add(stream_id)
        self._room.clear()

    def _release(self, stream_id: int) -> None:
        self._held.discard(stream_id)
        if not self._held:
            self._room.set()

    def _forget_if_done(self, stream: Stream) -> None:
        if stream.local_done and stream.remote_done:
            self.streams.pop(stream.id, None)

    async def run(self) -> str:
        """Serve until the client goes away; returns why the session ended (for the log)."""
        why = "the client closed the connection"
        try:
            while True:
                await self._room.wait()
                data = await self.channel.read(self.idle_timeout)
                if not data:
                    break
                self._decoder.push(data)
                while (frame := self._decoder.next()) is not None:
                    if isinstance(frame, spdy.GoAway):
                        return "the client sent GOAWAY"
                    self._handle(frame)
        except TimeoutError:
            why = f"idle for {self.idle_timeout:.0f} s"
        except WireError as exc:
            log.warning("spdy %s: bad frame from the client, closing: %s", self.name, exc)
            self.send(spdy.encode_goaway(self._last_id, spdy.GOAWAY_PROTOCOL_ERROR))
            why = f"protocol error: {exc}"
        except (ConnectionError, OSError) as exc:
            why = f"connection lost: {exc}"
        finally:
            await self.shutdown()
        return why

    async def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in list(self.streams.values()):
            stream.local_done = True
            stream._end_remote()
        self.streams.clear()
        self._room.set()
        with contextlib.suppress(OSError, ConnectionError):
            await self.channel.close()

    def _handle(self, frame: spdy.Frame) -> None:
        match frame:
            case spdy.Data():
                stream = self.streams.get(frame.stream_id)
                if stream is None or stream.remote_done:
                    return  # spdystream: "Data frame gone away"
                if frame.data:
                    stream._deliver(frame.data)
                if frame.fin:
                    stream._end_remote()
            case spdy.SynStream():
                self._new_stream(frame)
            case spdy.RstStream():
                stream = self.streams.get(frame.stream_id)
                if stream is not None:
                    stream._end_remote(reset=True)
            case spdy.Ping():
                if frame.ping_id & 1:  # the client's (odd): echo it; ours would be even
                    self.send(spdy.encode_ping(frame.ping_id))
            case spdy.SynReply() | spdy.HeadersFrame() | spdy.Settings() | spdy.WindowUpdate() | spdy.GoAway():
                return

    def _new_stream(self, frame: spdy.SynStream) -> None:
        sid = frame.stream_id
        if not sid & 1 or sid <= self._last_id:
            log.info("spdy %s: stream id %d out of order (last %d): reset", self.name, sid, self._last_id)
            self.send(spdy.encode_rst_stream(sid, spdy.PROTOCOL_ERROR))
            return
        self._last_id = sid
        if len(self.streams) >= MAX_STREAMS:
            log.warning("spdy %s: %d streams open, refusing stream %d", self.name, len(self.streams), sid)
            self.send(spdy.encode_rst_stream(sid, spdy.REFUSED_STREAM))
            return
        stream = Stream(self, sid, frame.headers)
        refusal = self.accept(stream)
        if refusal is not None:
            log.info("spdy %s: stream %d rejected: %s", self.name, sid, refusal)  # connection.go "Stream rejected"
            self.send(spdy.encode_rst_stream(sid, spdy.CANCEL))
            return
        self.streams[sid] = stream
        self.send(self._encoder.syn_reply(sid))
        if frame.flags & spdy.FLAG_FIN:
            stream._end_remote()
        self.accepted(stream)
