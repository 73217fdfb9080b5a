"""Server-side TLS streams that send the TLS alert when a handshake fails (glue over ``ssl``).

Why: ``loop.connect_accepted_socket(..., ssl=ctx)`` (asyncio's SSL protocol and uvloop's) closes the
connection without sending the alert OpenSSL produced when it refuses a client certificate, so a
database client saw a bare reset where Teleport's database proxy (Go's crypto/tls) answers
``bad certificate`` / ``unknown certificate authority`` / ``certificate expired`` (issue 16).

Theory of operation. The handshake runs over a ``MemoryBIO`` pair (:class:`~tpemu.net.tls_bio.BIOConnection`:
whatever OpenSSL queued for the peer, the alert included, is written before the error is raised).
After a successful handshake the same ``SSLObject`` carries the data: the socket becomes a plain
asyncio transport whose protocol (:class:`_TLSProtocol`) decrypts into an
``asyncio.StreamReaderProtocol``, and a thin transport (:class:`_TLSTransport`) encrypts what the
``StreamWriter`` writes. Backpressure is the raw transport's (pause/resume writing reach the stream
protocol, so ``drain`` waits); records that arrived with the client's Finished stay in the incoming
BIO and are read first.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any

from tpemu.net.tls_bio import BIOConnection

READ_CHUNK = 64 * 1024


class _TLSTransport(asyncio.Transport):
    """What the ``StreamWriter`` writes to: encrypts into the raw transport."""

    def __init__(self, proto: _TLSProtocol) -> None:
        super().__init__()
        self._p = proto

    def write(self, data: bytes | bytearray | memoryview) -> None:
        p = self._p
        if p.raw is None or p.raw.is_closing():
            return
        view = memoryview(data)
        while view:
            try:
                n = p.sslobj.write(view)
            except ssl.SSLError:
                p.raw.abort()
                return
            view = view[n:]
        p.flush()

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close: close_notify ends both directions

    def write_eof(self) -> None:
        raise NotImplementedError("TLS streams cannot half-close")

    def close(self) -> None:
        p = self._p
        if p.raw is None or p.raw.is_closing():
            return
        with contextlib.suppress(ssl.SSLError, ValueError):
            p.sslobj.unwrap()  # queues close_notify (the peer's may never come: not waited for)
        p.flush()
        p.raw.close()

    def abort(self) -> None:
        if self._p.raw is not None:
            self._p.raw.abort()

    def is_closing(self) -> bool:
        return self._p.raw is None or self._p.raw.is_closing()

    # A Pipe (tpemu.net.pipe) takes the stream over after the handshake: decrypted bytes then go
    # to its protocol instead of the StreamReaderProtocol.
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._p.inner = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._p.inner

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._p.sslobj
        if name == "sslcontext":
            # Read by StreamReaderProtocol to decide EOF handling; the raw socket's EOF is what
            # ends this stream, so it is treated as a plain one.
            return default
        return self._p.raw.get_extra_info(name, default) if self._p.raw is not None else default

    def pause_reading(self) -> None:
        if self._p.raw is not None:
            self._p.raw.pause_reading()

    def resume_reading(self) -> None:
        if self._p.raw is not None:
            self._p.raw.resume_reading()

    def is_reading(self) -> bool:
        return self._p.raw is not None and self._p.raw.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._p.raw.get_write_buffer_size() if self._p.raw is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._p.raw is not None:
            self._p.raw.set_write_buffer_limits(high, low)


class _TLSProtocol(asyncio.Protocol):
    """The raw socket's protocol: decrypts into ``inner`` (a ``StreamReaderProtocol``, or the
    protocol that took the stream over: :meth:`_TLSTransport.set_protocol`)."""

    def __init__(self, conn: BIOConnection, inner: asyncio.StreamReaderProtocol) -> None:
        self.sslobj = conn.sslobj
        self.incoming = conn.incoming
        self.outgoing = conn.outgoing
        self.inner: asyncio.Protocol = inner
        self.raw: asyncio.Transport | None = None
        self.transport = _TLSTransport(self)
        self._eof = False

    def flush(self) -> None:
        data = self.outgoing.read()
        if data and self.raw is not None and not self.raw.is_closing():
            self.raw.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        self.inner.connection_made(self.transport)
        self._decrypt()  # application data that came with the client's Finished

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        self._decrypt()

    def _decrypt(self) -> None:
        while not self._eof:
            try:
                chunk = self.sslobj.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                chunk = b""
            except ssl.SSLError:
                if self.raw is not None:
                    self.raw.abort()
                return
            if not chunk:  # close_notify
                self._eof = True
                self.inner.eof_received()
                break
            self.inner.data_received(chunk)
            if not self.incoming.pending and not self.sslobj.pending():
                break  # all taken: a read now would only raise SSLWantReadError (costly, once per record)
        self.flush()  # post-handshake messages (TLS 1.3 tickets, key updates)

    def eof_received(self) -> bool | None:
        self.incoming.write_eof()
        self._decrypt()
        if not self._eof:
            self._eof = True
            return self.inner.eof_received()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


async def accept_stream_with_alerts(sock: socket.socket, ctx: ssl.SSLContext, timeout: float,
                                    limit: int = 64 * 1024) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The server TLS handshake on an accepted socket, then asyncio streams over it.

    On a failed handshake the alert has been sent when the error (``ssl.SSLError``,
    ``SSLCertVerificationError`` for a refused client certificate, ``OSError``, ``TimeoutError``)
    is raised; the caller closes the socket.
    """
    conn = BIOConnection(sock, ctx)
    await conn.handshake(timeout)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    inner = asyncio.StreamReaderProtocol(reader, loop=loop)
    proto = _TLSProtocol(conn, inner)
    await loop.connect_accepted_socket(lambda: proto, sock)
    return reader, asyncio.StreamWriter(proto.transport, inner, reader, loop)
