"""The one data plane (:mod:`tpemu.net.pipe`): bytes, counters, half-close, backpressure, errors,
parked bytes, on both event loops; and the channel endpoint (:mod:`tpemu.net.channel`) over a
real asyncssh connection."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tpemu import pki
from tpemu.net.channel import ChannelTransport, OpeningFrame, open_streams
from tpemu.net.pipe import Parked, Pipe, park_streams
from tpemu.net.streams import PingTransport, WebSocketTransport
from tpemu.wire import ping
from tpemu.wire import tunnel as tw
from tpemu.wire import websocket as ws

pytestmark = pytest.mark.both_loops


class Ends:
    """Two socketpairs: the test holds ``left``/``right``; the pipe joins the inner ends."""

    def __init__(self) -> None:
        self.left, self._a = socket.socketpair()
        self.right, self._b = socket.socketpair()
        for s in (self.left, self.right, self._a, self._b):
            s.setblocking(False)
        self.closed: list[BaseException | None] = []
        self.done = asyncio.Event()

    async def transports(self) -> tuple[asyncio.Transport, asyncio.Transport]:
        loop = asyncio.get_running_loop()
        a, _ = await loop.connect_accepted_socket(Parked, self._a)
        b, _ = await loop.connect_accepted_socket(Parked, self._b)
        return a, b

    def on_close(self, pipe: Pipe, exc: BaseException | None) -> None:
        self.closed.append(exc)
        self.done.set()

    def close(self) -> None:
        for s in (self.left, self.right):
            s.close()


@pytest.fixture
async def ends() -> AsyncIterator[Ends]:
    e = Ends()
    yield e
    e.close()


async def recv_exactly(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    async with asyncio.timeout(timeout):
        while len(out) < n:
            chunk = await loop.sock_recv(sock, n - len(out))
            if not chunk:
                raise EOFError(f"EOF after {len(out)} of {n} bytes")
            out += chunk
    return bytes(out)


async def recv_eof(sock: socket.socket, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    async with asyncio.timeout(timeout):
        while chunk := await loop.sock_recv(sock, 65536):
            out += chunk
    return bytes(out)


async def test_bytes_both_ways_half_close_and_counters(ends: Ends) -> None:
    loop = asyncio.get_running_loop()
    a, b = await ends.transports()
    pipe = Pipe.join(a, b, on_close=ends.on_close)
    await loop.sock_sendall(ends.left, b"ping")
    assert await recv_exactly(ends.right, 4) == b"ping"
    await loop.sock_sendall(ends.right, b"pong!")
    assert await recv_exactly(ends.left, 5) == b"pong!"
    # Half-close: the left peer is done sending; the other direction keeps working.
    ends.left.shutdown(socket.SHUT_WR)
    assert await recv_eof(ends.right) == b""
    assert not pipe.closed
    await loop.sock_sendall(ends.right, b"still here")
    assert await recv_exactly(ends.left, 10) == b"still here"
    ends.right.shutdown(socket.SHUT_WR)
    assert await recv_eof(ends.left) == b""
    await asyncio.wait_for(ends.done.wait(), 5)
    assert pipe.closed and ends.closed == [None]  # once, cleanly
    assert (pipe.a_to_b, pipe.b_to_a) == (4, 15)


async def test_parked_bytes_and_eof_are_replayed_in_order(ends: Ends) -> None:
    """Bytes (and an EOF) that arrived before the join come out first, after ``first_to_b``."""
    loop = asyncio.get_running_loop()
    a, b = await ends.transports()
    await loop.sock_sendall(ends.left, b"early ")
    await loop.sock_sendall(ends.right, b"banner\r\n")  # a server that speaks first
    ends.left.shutdown(socket.SHUT_WR)
    parked = a.get_protocol()
    assert isinstance(parked, Parked)
    async with asyncio.timeout(5):
        while not parked.held:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    # Reading paused at the first bytes: the EOF waits in the kernel, not in our memory.
    assert not parked.eof and not a.is_reading()
    pipe = Pipe.join(a, b, first_to_b=b"PROXY-HEADER ", on_close=ends.on_close)
    assert await recv_eof(ends.right) == b"PROXY-HEADER early "
    assert await recv_exactly(ends.left, 8) == b"banner\r\n"
    ends.right.close()
    await asyncio.wait_for(ends.done.wait(), 5)
    assert pipe.a_to_b == 6 and pipe.b_to_a == 8


async def test_sides_made_as_they_connect_keep_what_comes_before_the_other(ends: Ends) -> None:
    """A pipe made first, its sides the protocols of transports still being made (pass-through:
    backend dialled into ``b``, then the client straight into ``a``): a server that speaks and
    half-closes before ``a`` exists loses nothing, and ``first_to_b`` rides with ``a``'s first
    bytes."""
    loop = asyncio.get_running_loop()
    pipe = Pipe(ends.on_close, first_to_b=b"PROXY-HEADER ")
    b, _ = await loop.connect_accepted_socket(pipe.b, ends._b)
    assert b.get_protocol() is pipe.b
    await loop.sock_sendall(ends.right, b"banner\r\n")  # a server that speaks first
    ends.right.shutdown(socket.SHUT_WR)
    async with asyncio.timeout(5):
        while not pipe.b.held:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    # Reading paused at the first bytes: the EOF waits in the kernel, not in our memory.
    assert pipe.b.held == [b"banner\r\n"] and not pipe.b.eof and not b.is_reading()
    await loop.sock_sendall(ends.left, b"hello")
    await loop.connect_accepted_socket(pipe.a, ends._a)
    assert await recv_eof(ends.left) == b"banner\r\n"  # the bytes, then the half-close
    assert await recv_exactly(ends.right, 18) == b"PROXY-HEADER hello"
    await loop.sock_sendall(ends.left, b" more")
    assert await recv_exactly(ends.right, 5) == b" more"
    ends.left.shutdown(socket.SHUT_WR)
    assert await recv_eof(ends.right) == b""
    await asyncio.wait_for(ends.done.wait(), 5)
    assert ends.closed == [None] and (pipe.a_to_b, pipe.b_to_a) == (10, 8)


async def test_side_lost_before_the_other_connects_ends_the_pipe_once(ends: Ends) -> None:
    """The backend resets before the client side exists: the client side is closed as soon as
    it is made, the pipe ends once with the error, and the header never goes out."""
    loop = asyncio.get_running_loop()
    pipe = Pipe(ends.on_close, first_to_b=b"HDR ")
    b, _ = await loop.connect_accepted_socket(pipe.b, ends._b)
    b.write(b"unread")  # (a peer closing with unread bytes queued resets the connection)
    await recv_exactly(ends.right, 1)
    ends.right.close()
    async with asyncio.timeout(5):
        while not pipe.b.lost:
            await asyncio.sleep(0.01)
    assert not pipe.closed
    await loop.connect_accepted_socket(pipe.a, ends._a)
    assert await recv_eof(ends.left) == b""
    await asyncio.wait_for(ends.done.wait(), 5)
    assert pipe.closed and len(ends.closed) == 1 and isinstance(ends.closed[0], ConnectionResetError)
    assert pipe.a_to_b == 0


async def test_an_eof_before_any_byte_still_sends_first_to_b(ends: Ends) -> None:
    loop = asyncio.get_running_loop()
    pipe = Pipe(ends.on_close, first_to_b=b"HDR")
    await loop.connect_accepted_socket(pipe.b, ends._b)
    ends.left.shutdown(socket.SHUT_WR)
    await loop.connect_accepted_socket(pipe.a, ends._a)
    assert await recv_eof(ends.right) == b"HDR"
    ends.right.shutdown(socket.SHUT_WR)
    assert await recv_eof(ends.left) == b""
    await asyncio.wait_for(ends.done.wait(), 5)
    assert ends.closed == [None]


async def test_backpressure_pauses_the_reader_and_bounds_memory(ends: Ends) -> None:
    """A receiver that does not read stops the sender: the pipe holds at most about the high
    water mark, the rest waits in the kernel; everything arrives, in order, once it reads."""
    loop = asyncio.get_running_loop()
    a, b = await ends.transports()
    high, low = 64 * 1024, 16 * 1024
    pipe = Pipe.join(a, b, on_close=ends.on_close, limits=(high, low))
    for s in (ends.right,):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    payload = bytes(range(256)) * 4096 * 8  # 8 MiB, far more than every buffer on the way
    sender = loop.create_task(loop.sock_sendall(ends.left, payload))
    async with asyncio.timeout(10):
        while a.is_reading():  # the pipe paused reading the fast side
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert not sender.done()  # the sender is blocked: the kernel buffers are full, not our memory
    assert b.get_write_buffer_size() <= high + 256 * 1024  # at most one read past the mark
    got = await recv_exactly(ends.right, len(payload), timeout=30)
    await asyncio.wait_for(sender, 5)
    assert got == payload
    assert a.is_reading()
    assert pipe.a_to_b == len(payload)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on loopback (a socketpair cannot be reset)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


async def test_reset_ends_the_pipe_once_with_the_error(ends: Ends) -> None:
    loop = asyncio.get_running_loop()
    peer, inner = tcp_pair()
    peer.setblocking(False)
    a, _ = await loop.connect_accepted_socket(Parked, inner)
    _, b = await ends.transports()
    pipe = Pipe.join(a, b, on_close=ends.on_close)
    await loop.sock_sendall(peer, b"x")
    assert await recv_exactly(ends.right, 1) == b"x"
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # RST: no half-close, the whole pipe ends
    assert await recv_eof(ends.right) == b""  # the other side is closed too
    await asyncio.wait_for(ends.done.wait(), 5)
    assert pipe.closed and len(ends.closed) == 1 and isinstance(ends.closed[0], ConnectionResetError)


class _BrokenTransport(asyncio.Transport):
    """A transport whose writes fail, to check the pipe's error boundary."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: Any = Parked()
        self.protocol.connection_made(self)
        self.closing = False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol  # type: ignore[no-any-return]

    def write(self, data: Any) -> None:
        raise BrokenPipeError("the peer went away mid-write")

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)


async def test_error_in_a_callback_aborts_both_and_reports_it(ends: Ends) -> None:
    loop = asyncio.get_running_loop()
    a, _ = await ends.transports()
    pipe = Pipe.join(a, _BrokenTransport(), on_close=ends.on_close)
    await loop.sock_sendall(ends.left, b"boom")
    await asyncio.wait_for(ends.done.wait(), 5)
    assert pipe.closed
    assert len(ends.closed) == 1 and isinstance(ends.closed[0], BrokenPipeError)
    assert await recv_eof(ends.left) == b""  # aborted, nothing escaped into the loop


async def test_streams_handed_to_a_pipe_keep_their_buffered_bytes(ends: Ends) -> None:
    """A handshake read through streams, then the rest piped: what the reader had buffered beyond
    the handshake goes first, and the abandoned StreamWriter does not close the transport."""
    loop = asyncio.get_running_loop()
    a, b = await ends.transports()
    reader, writer = await open_streams(a)
    await loop.sock_sendall(ends.left, b"HELLO\nand the rest")
    assert await asyncio.wait_for(reader.readline(), 5) == b"HELLO\n"
    await asyncio.sleep(0.05)  # "and the rest" is now in the reader's buffer
    pipe = Pipe.join(park_streams(reader, writer), b, on_close=ends.on_close)
    del reader, writer
    import gc

    gc.collect()
    assert await recv_exactly(ends.right, 12) == b"and the rest"
    await loop.sock_sendall(ends.left, b"!")
    assert await recv_exactly(ends.right, 1) == b"!"
    assert not pipe.closed


async def test_ping_framing_layer(ends: Ends) -> None:
    loop = asyncio.get_running_loop()
    a, b = await ends.transports()
    framed = PingTransport.wrap(a, interval=0.05)
    await loop.sock_sendall(ends.left, ping.PING + ping.encode_frame(b"payload") + ping.PING)
    Pipe.join(framed, b, on_close=ends.on_close)
    assert await recv_exactly(ends.right, 7) == b"payload"
    await loop.sock_sendall(ends.right, b"answer")
    decoder = ping.PingDecoder()
    got = b""
    async with asyncio.timeout(5):
        while got != b"answer" or decoder.pings < 1:  # framed, with pings from the timer between
            got += decoder.feed(await loop.sock_recv(ends.left, 4096))
    framed.close()
    await asyncio.wait_for(ends.done.wait(), 5)


async def test_an_ended_pipe_leaves_no_cyclic_garbage(ends: Ends) -> None:
    """Reference counting frees a closed connection: nothing of it waits for the cyclic GC, whose
    full collections were the 20 ms p99 tail of issue 13 (pipe ↔ sides ↔ transports cycles)."""
    loop = asyncio.get_running_loop()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        a, b = await ends.transports()
        Pipe.join(a, b, on_close=ends.on_close)
        await loop.sock_sendall(ends.left, b"x")
        assert await recv_exactly(ends.right, 1) == b"x"
        ends.left.close()
        ends.right.close()
        await asyncio.wait_for(ends.done.wait(), 5)
        await asyncio.sleep(0.05)  # the loop drops its handles to the closed transports
        del a, b
        gc.collect()
        ours = [o for o in gc.garbage if type(o).__module__ == "tpemu.net.pipe"]
        assert ours == []
        if type(loop).__module__.startswith("uvloop"):
            # (asyncio's own selector transports hold themselves in a cycle: a bound method in
            # ``_read_ready_cb``; uvloop's do not, so there the whole connection is freed.)
            assert [o for o in gc.garbage if "Transport" in type(o).__name__] == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def _client_frame(opcode: int, payload: bytes) -> bytes:
    return ws.encode_frame(opcode, payload, os.urandom(4))


async def test_websocket_layer_frames_pongs_and_ends_at_a_close_frame(ends: Ends) -> None:
    """Server side: client frames are unmasked, a ping is answered with a pong carrying its
    payload, writes go out as unmasked binary frames, pings on the timer, and a close frame ends
    the pipe (WebSocket has no half-close) after the bytes before it."""
    loop = asyncio.get_running_loop()
    a, b = await ends.transports()
    framed = WebSocketTransport.wrap(a, client=False, interval=0.05)
    await loop.sock_sendall(ends.left, _client_frame(ws.OP_BINARY, b"hel") + _client_frame(ws.OP_PING, b"p1"))
    Pipe.join(framed, b, on_close=ends.on_close)
    await loop.sock_sendall(ends.left, _client_frame(ws.OP_BINARY, b"lo"))
    assert await recv_exactly(ends.right, 5) == b"hello"
    await loop.sock_sendall(ends.right, b"answer")
    decoder = ws.FrameDecoder(require_mask=False)
    frames: list[ws.Frame] = []
    async with asyncio.timeout(5):
        while not (any(f.opcode == ws.OP_BINARY for f in frames) and any(f.opcode == ws.OP_PING for f in frames)):
            frames += decoder.feed(await loop.sock_recv(ends.left, 4096))
    assert frames[0] == ws.Frame(True, ws.OP_PONG, b"p1")
    assert [f.payload for f in frames if f.opcode == ws.OP_BINARY] == [b"answer"]
    assert all(f.payload == b"teleport" for f in frames if f.opcode == ws.OP_PING)
    await loop.sock_sendall(ends.left, _client_frame(ws.OP_BINARY, b"last") + _client_frame(ws.OP_CLOSE, b"")
                            + _client_frame(ws.OP_BINARY, b"ignored"))
    assert await recv_eof(ends.right) == b"last"
    await asyncio.wait_for(ends.done.wait(), 5)
    assert ends.closed == [None]


async def test_websocket_layer_cuts_a_malformed_frame(ends: Ends) -> None:
    """An unmasked frame from a client breaks RFC 6455 §5.1: the connection is cut with the
    reason as the pipe's outcome, nothing of the frame is delivered."""
    loop = asyncio.get_running_loop()
    a, b = await ends.transports()
    framed = WebSocketTransport.wrap(a, client=False)
    Pipe.join(framed, b, on_close=ends.on_close)
    await loop.sock_sendall(ends.left, ws.encode_frame(ws.OP_BINARY, b"unmasked"))
    assert await recv_eof(ends.right) == b""
    await asyncio.wait_for(ends.done.wait(), 5)
    assert len(ends.closed) == 1 and "masked" in str(ends.closed[0])


async def test_tls_side_cannot_half_close_so_eof_ends_both(tmp_path: Path) -> None:
    """TLS has no half-close: an EOF from the plain side ends the pipe, after what was buffered
    reached the TLS peer."""
    loop = asyncio.get_running_loop()
    files = pki.ensure_bootstrap_pki(tmp_path, "pipe.test")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.cert, files.key)
    client_ctx = ssl.create_default_context(cafile=str(files.ca))
    client_ctx.check_hostname = False
    made: list[asyncio.Transport] = []

    class Recording(Parked):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            made.append(transport)  # type: ignore[arg-type]

    server = await loop.create_server(Recording, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    plain_peer, plain = socket.socketpair()
    plain_peer.setblocking(False)
    done = asyncio.Event()
    try:
        tls_reader, tls_writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        async with asyncio.timeout(5):
            while not made:
                await asyncio.sleep(0.01)
        b, _ = await loop.connect_accepted_socket(Parked, plain)
        pipe = Pipe.join(made[0], b, on_close=lambda p, exc: done.set())
        tls_writer.write(b"over tls")
        assert await recv_exactly(plain_peer, 8) == b"over tls"
        await loop.sock_sendall(plain_peer, b"last words")
        plain_peer.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(tls_reader.read(), 5) == b"last words"  # then EOF: closed
        await asyncio.wait_for(done.wait(), 5)
        assert pipe.closed and pipe.b_to_a == 10
        tls_writer.close()
    finally:
        server.close()
        plain_peer.close()


# -- the channel endpoint over a real SSH connection ---------------------------------------------


class _Server(asyncssh.SSHServer):
    def __init__(self, sink: list[ChannelTransport]) -> None:
        self.sink = sink

    def begin_auth(self, username: str) -> bool:
        return False

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> ChannelTransport:
        chan = ChannelTransport(OpeningFrame())
        self.sink.append(chan)
        return chan


async def test_channel_endpoint_pipe_with_opening_frame_and_backpressure(ends: Ends) -> None:
    """An SSH channel as one end of a Pipe: its opening frame is read, the bytes after it are
    kept, data flows both ways, a slow TCP receiver pauses the channel (the SSH window), half-close
    crosses, and the counters add up."""
    loop = asyncio.get_running_loop()
    key = asyncssh.generate_private_key("ssh-ed25519")
    sink: list[ChannelTransport] = []
    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[key], server_factory=lambda: _Server(sink))
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="x", agent_path=None,
                                    config=None) as conn:
            r, w = await conn.open_connection("dest", 1, encoding=None)
            w.write(tw.DialRequest(address="node1", conn_type="node").encode() + b"after the frame ")
            async with asyncio.timeout(5):
                while not sink:
                    await asyncio.sleep(0.01)
            chan = sink[0]
            opening = chan.get_protocol()
            assert isinstance(opening, OpeningFrame)
            frame = await asyncio.wait_for(opening.frame, 5)
            assert tw.DialRequest.from_json(frame).address == "node1"
            _, b = await ends.transports()
            pipe = Pipe.join(chan, b, on_close=ends.on_close)
            assert await recv_exactly(ends.right, 16) == b"after the frame "
            await loop.sock_sendall(ends.right, b"from tcp")
            assert await asyncio.wait_for(r.readexactly(8), 5) == b"from tcp"
            # Backpressure through the channel: the TCP receiver does not read.
            ends.right.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            blob = b"z" * (4 * 1024 * 1024)
            w.write(blob)
            async with asyncio.timeout(10):
                while chan.is_reading():
                    await asyncio.sleep(0.01)
            assert b.get_write_buffer_size() <= 512 * 1024
            assert await recv_exactly(ends.right, len(blob), timeout=30) == blob
            w.write_eof()  # half-close crosses to TCP; the other way still works
            assert await recv_eof(ends.right) == b""
            await loop.sock_sendall(ends.right, b"bye")
            assert await asyncio.wait_for(r.readexactly(3), 5) == b"bye"
            ends.right.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(r.read(), 5) == b""
            await asyncio.wait_for(ends.done.wait(), 5)
            assert pipe.a_to_b == 16 + len(blob) and pipe.b_to_a == 11
    finally:
        server.close()
        await server.wait_closed()
