"""One client connection of an emulated database, with an in-band TLS upgrade (glue over asyncio + ssl).

Theory of operation. Postgres (SSLRequest → ``S``) and MySQL (SSLRequest packet) both switch a
plain connection to TLS *in band*, after the server has already read from it through an
``asyncio.StreamReader``. ``StreamWriter.start_tls`` cannot be used safely for that:

* MySQL clients do not wait for an answer to their SSLRequest; the ClientHello follows at once
  and may already sit in the StreamReader's buffer, where ``start_tls`` never looks
  (cpython#142352: the bytes are lost and the handshake hangs);
* it decides the TLS side from how the stream was created, which is wrong for streams the
  Database Service builds itself.

So once upgraded, TLS runs in an ``ssl.SSLObject`` over a pair of ``MemoryBIO`` s fed from the
same StreamReader: whatever the reader had buffered is the start of the handshake, nothing is
lost, and plaintext a client injects after its SSLRequest (CVE-2021-23214) is just a broken
handshake. Before the upgrade every call goes straight to the reader/writer.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

#: Plaintext read per step once TLS is on (a TLS record carries at most 16 KiB).
_CHUNK = 65536


class RejectionLog:
    """WARNING lines for rejected clients, at most ``burst`` per ``interval`` seconds per backend.

    A flood of bad clients must not flood the log; what was dropped is counted in the next line.
    """

    def __init__(self, burst: int = 20, interval: float = 60.0) -> None:
        self.burst, self.interval = burst, interval
        self._window_start = 0.0
        self._count = 0
        self._dropped = 0

    def warning(self, logger: logging.Logger | logging.LoggerAdapter[logging.Logger], msg: str,
                *args: object) -> None:
        now = time.monotonic()
        if now - self._window_start >= self.interval:
            self._window_start, self._count = now, 0
        if self._count >= self.burst:
            self._dropped += 1
            return
        self._count += 1
        if self._dropped:
            msg += " (%d similar messages suppressed)"
            args = (*args, self._dropped)
            self._dropped = 0
        logger.warning(msg, *args)


class ClientStream:
    """Reads and writes one client connection, plain or (after :meth:`start_tls`) TLS."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._plain = bytearray()

    @property
    def tls(self) -> bool:
        """Whether the bytes on the wire are TLS (upgraded here, or terminated by the transport)."""
        return self._tls is not None or self.writer.get_extra_info("ssl_object") is not None

    @property
    def upgraded(self) -> bool:
        return self._tls is not None

    def cipher(self) -> tuple[str, str] | None:
        """(cipher name, TLS version) of this connection, if it is TLS."""
        obj = self._tls or self.writer.get_extra_info("ssl_object")
        if obj is None:
            return None
        c = obj.cipher()
        return (c[0], c[1]) if c else None

    def peer(self) -> str:
        peer = self.writer.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        return str(peer or "?")

    def peer_host(self) -> str:
        peer = self.writer.get_extra_info("peername")
        return str(peer[0]) if isinstance(peer, tuple) and peer else "localhost"

    def buffered(self, n: int) -> bool:
        """Whether ``n`` bytes are here already, so :meth:`readexactly` of them returns without
        waiting (and a deadline around it could never fire)."""
        if self._tls is None:
            return len(getattr(self.reader, "_buffer", b"")) >= n  # CPython's StreamReader keeps a bytearray
        return len(self._plain) >= n

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; raises ``asyncio.IncompleteReadError`` at EOF."""
        if self._tls is None:
            return await self.reader.readexactly(n)
        while len(self._plain) < n:
            try:
                chunk = self._tls.read(_CHUNK)
            except ssl.SSLWantReadError:
                self._pump_out()
                data = await self.reader.read(_CHUNK)
                if not data:
                    raise asyncio.IncompleteReadError(bytes(self._plain), n) from None
                self._incoming.write(data)
                continue
            except ssl.SSLZeroReturnError:
                chunk = b""
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(self._plain), n)
            self._plain += chunk
            self._pump_out()  # TLS 1.3 may answer a KeyUpdate
        out = bytes(self._plain[:n])
        del self._plain[:n]
        return out

    def write(self, data: bytes) -> None:
        if self._tls is None:
            self.writer.write(data)
            return
        self._tls.write(data)
        self._pump_out()

    async def drain(self) -> None:
        await self.writer.drain()

    def _pump_out(self) -> None:
        pending = self._outgoing.read()
        if pending:
            self.writer.write(pending)

    async def start_tls(self, context: ssl.SSLContext, timeout: float) -> None:
        """Run the server side of a TLS handshake over this connection, within ``timeout`` seconds.

        Raises ``ssl.SSLError`` for a failed handshake, ``TimeoutError``, or
        ``ConnectionResetError`` if the client goes away.
        """
        if self.tls:
            raise RuntimeError("connection is already TLS")
        tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        async with asyncio.timeout(timeout):
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pending = self._outgoing.read()
                    if pending:
                        self.writer.write(pending)
                        await self.writer.drain()
                    data = await self.reader.read(_CHUNK)
                    if not data:
                        raise ConnectionResetError("client closed the connection during the TLS handshake") from None
                    self._incoming.write(data)
        self._tls = tls
        self._pump_out()
        await self.writer.drain()

    async def close(self, timeout: float = 2.0) -> None:
        """Send a TLS close_notify if upgraded, then close; never raises."""
        try:
            if self._tls is not None:
                try:
                    self._tls.unwrap()
                except (ssl.SSLError, ValueError):
                    pass
                self._pump_out()
            self.writer.close()
            async with asyncio.timeout(timeout):
                await self.writer.wait_closed()
        except (OSError, TimeoutError, ssl.SSLError, RuntimeError):
            pass
