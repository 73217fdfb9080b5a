"""Server-side TLS over an accepted socket with ``ssl.MemoryBIO``, alerts included (glue).

Why not ``loop.connect_accepted_socket(..., ssl=ctx)``: when the handshake fails — typically a
client certificate from an unknown CA, or an expired one — asyncio's SSL protocol (and uvloop's)
closes the transport without sending the alert OpenSSL produced, so the client sees a bare
connection close instead of ``tls: unknown certificate authority`` or ``certificate expired``.
Teleport's clients and ``openssl s_client`` print those alerts, and the Auth API's refusals must be
specific. Here the handshake is driven by hand over a ``MemoryBIO`` pair, and whatever OpenSSL
queued for the peer — the alert too — is sent before the socket closes.

After the handshake, :func:`streams` exposes the connection as a reader with ``read`` and a writer
with ``write``/``drain``/``close``/``get_extra_info`` (what :func:`tpemu.net.http_server.serve_http`
needs). Throughput is not a goal (control-plane traffic).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from typing import Any, cast

READ_CHUNK = 64 * 1024


class BIOConnection:
    """One TLS connection driven through memory BIOs over a non-blocking socket."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # As Go's net package does for every TCP connection (and asyncio for its transports):
            # no Nagle. With it, an answer written while the TLS 1.3 session tickets sent after the
            # handshake wait for the client's delayed ACK stalled ~40 ms on a kept-alive connection.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self._loop = asyncio.get_running_loop()
        self._closed = False

    async def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            await self._loop.sock_sendall(self.sock, data)

    async def _fill(self) -> bool:
        data = await self._loop.sock_recv(self.sock, READ_CHUNK)
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True

    async def handshake(self, timeout: float) -> None:
        """Complete the server handshake; on failure the alert is sent, then the error raised
        (``ssl.SSLCertVerificationError`` for a refused client certificate)."""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    self.sslobj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await self._flush()
                    if not await self._fill():
                        raise ConnectionResetError("peer closed during the TLS handshake") from None
                except ssl.SSLError:
                    with contextlib.suppress(OSError):
                        await self._flush()  # the alert
                    raise
            await self._flush()

    async def recv(self) -> bytes:
        """Decrypted bytes; ``b""`` at the end of the stream."""
        while True:
            try:
                return self.sslobj.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    with contextlib.suppress(ssl.SSLError):
                        return self.sslobj.read(READ_CHUNK)
                    return b""
            except ssl.SSLZeroReturnError:
                return b""

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self.sslobj.write(view)
            view = view[n:]
            await self._flush()

    def abort(self) -> None:
        """Close at once with a TCP RST (``SO_LINGER`` 0): the peer reads "connection reset by peer"."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ssl.SSLError, OSError):
            self.sslobj.unwrap()
        with contextlib.suppress(OSError):
            await self._flush()
        self.sock.close()


class _Writer:
    """The subset of ``asyncio.StreamWriter`` that the HTTP server loop uses."""

    def __init__(self, conn: BIOConnection) -> None:
        self._conn = conn
        self._pending = bytearray()

    def write(self, data: bytes) -> None:
        self._pending += data

    async def drain(self) -> None:
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            await self._conn.send(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._conn.sslobj
        if name == "peername":
            with contextlib.suppress(OSError):
                return self._conn.sock.getpeername()
        return default

    def is_closing(self) -> bool:
        return self._conn._closed

    def close(self) -> None:
        # The owner of the connection awaits BIOConnection.close() (the close_notify needs I/O).
        pass

    async def wait_closed(self) -> None:
        await self._conn.close()


class _Reader:
    """The subset of ``asyncio.StreamReader`` that the HTTP server loop uses: ``read``, pulled from
    the socket only when asked (natural backpressure, nothing buffered ahead)."""

    def __init__(self, conn: BIOConnection) -> None:
        self._conn = conn

    async def read(self, n: int = -1) -> bytes:
        try:
            return await self._conn.recv()
        except ssl.SSLError as exc:
            raise ConnectionResetError(f"TLS error: {exc}") from None


def streams(conn: BIOConnection) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A reader and a writer over a handshaken connection, typed as asyncio's streams (duck-typed:
    only ``read``, ``write``, ``drain``, ``close`` and ``get_extra_info`` exist)."""
    return cast(asyncio.StreamReader, _Reader(conn)), cast(asyncio.StreamWriter, _Writer(conn))
