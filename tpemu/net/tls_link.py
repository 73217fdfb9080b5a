"""TLS over any asyncio transport through memory BIOs, handshake included, either side (glue over ``ssl``).

Why: the reverse tunnel between an agent and the proxy (TLS routing: ALPN
``teleport-reversetunnel[v2]`` on the web port, SSH inside) carries every byte of every tunnelled
connection, and uvloop's ``SSLProtocol`` (``create_connection(ssl=…)``,
``connect_accepted_socket(ssl=…)``) costs ~8 µs of CPU per small record on this VM where the
same ``SSLObject`` driven by hand costs ~1.5 µs: measured with a 120-byte echo over loopback in
one process, 55 µs CPU per round trip with uvloop's TLS at both ends, 22 µs with this, 15.5 µs
without TLS. A Postgres ``select 1`` through proxy + tunnel crosses four such records (issue 13).

What goes on the wire is unchanged: the same ``SSLContext`` (protocol versions, ciphers, ALPN,
certificates, verification, SNI) and the same OpenSSL state machine; only the Python glue around
``SSLObject`` differs. A failed handshake sends the alert OpenSSL queued before the connection
closes (as Go's crypto/tls does; uvloop's closes without it).

Theory of operation. :class:`TLSLink` is the raw transport's protocol. Until the handshake is done
it feeds what arrives to ``do_handshake`` and writes what OpenSSL queues; then it calls the
application protocol's ``connection_made`` with :attr:`TLSLink.transport` (a
:class:`~tpemu.net.tls_alerting` ``_TLSTransport``: ``write`` encrypts into the raw transport) and
from then on decrypts into the application protocol, records that came with the peer's last
handshake flight first. Flow control is the raw transport's (pause/resume writing reach the
application protocol). :attr:`TLSLink.handshake` resolves when the handshake is done, or fails
with the ``ssl.SSLError`` (``SSLCertVerificationError`` for a refused certificate) or
``ConnectionResetError`` that ended it; the raw transport is then closed.

Use: ``create_connection(lambda: TLSLink(ctx, app, server_side=False, server_hostname=…))``
then :func:`established`, or :func:`open_tls` on a transport already open (after an HTTP
``CONNECT``): the client side, the agent's tunnel dial (:mod:`tpemu.net.dial`, ``lean_tls``);
:func:`accept_tls`: the server side on a socket the front door accepted, the proxy's tunnel
server (:mod:`tpemu.proxy.tunnels`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import cast

from tpemu.net.tls_alerting import _TLSProtocol
from tpemu.net.tls_bio import BIOConnection


class _BIOs:
    """The three objects :class:`_TLSProtocol` takes from a connection."""

    __slots__ = ("incoming", "outgoing", "sslobj")

    def __init__(self, sslobj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        self.sslobj, self.incoming, self.outgoing = sslobj, incoming, outgoing


class TLSLink(_TLSProtocol):
    """The raw transport's protocol: a TLS handshake, then records both ways for ``app``."""

    def __init__(self, ctx: ssl.SSLContext, app: asyncio.BaseProtocol, *, server_side: bool,
                 server_hostname: str | None = None) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        sslobj = ctx.wrap_bio(incoming, outgoing, server_side=server_side, server_hostname=server_hostname)
        super().__init__(cast(BIOConnection, _BIOs(sslobj, incoming, outgoing)),
                         cast(asyncio.StreamReaderProtocol, app))
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        self._step()  # a client speaks first

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        if self.handshake.done():
            self._decrypt()
        else:
            self._step()

    def eof_received(self) -> bool | None:
        if not self.handshake.done():
            self._fail(ConnectionResetError("the peer closed the connection during the TLS handshake"))
            return None
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self._fail(ConnectionResetError(f"connection lost during the TLS handshake: {exc or 'closed'}"))
            return
        super().connection_lost(exc)

    def _step(self) -> None:
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self.flush()
            return
        except ssl.SSLError as exc:
            self.flush()  # the alert
            self._fail(exc)
            return
        self.flush()  # the last flight (a client's Finished; a TLS 1.3 server's tickets)
        self.handshake.set_result(None)
        self.inner.connection_made(self.transport)
        self._decrypt()  # application data that came with the handshake's last flight

    def _fail(self, exc: BaseException) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc)
            self.handshake.exception()  # retrieved: the waiter may be gone (a timeout)
        if self.raw is not None and not self.raw.is_closing():
            self.raw.close()

    def abort(self) -> None:
        """End at once (a cancelled or timed-out handshake): the raw transport is aborted."""
        if not self.handshake.done():
            self.handshake.cancel()
        if self.raw is not None:
            self.raw.abort()


async def open_tls(raw: asyncio.Transport, app: asyncio.BaseProtocol, ctx: ssl.SSLContext,
                   server_hostname: str | None) -> asyncio.Transport:
    """The client handshake over ``raw`` (a fresh connection, nothing read yet); returns the
    transport ``app`` got in its ``connection_made``. Raises as the handshake failed (the raw
    transport is closed then, and on cancellation)."""
    link = TLSLink(ctx, app, server_side=False, server_hostname=server_hostname)
    raw.set_protocol(link)
    link.connection_made(raw)
    return await established(link)


async def accept_tls(sock: socket.socket, app: asyncio.BaseProtocol, ctx: ssl.SSLContext,
                     timeout: float) -> asyncio.Transport:
    """The server handshake on an accepted socket within ``timeout``; returns the transport
    ``app`` got in its ``connection_made``. Raises ``TimeoutError``, ``ssl.SSLError`` (the alert
    sent) or ``ConnectionResetError``; the socket is closed then."""
    link = TLSLink(ctx, app, server_side=True)
    try:
        await asyncio.get_running_loop().connect_accepted_socket(lambda: link, sock)
    except BaseException:
        sock.close()
        raise
    async with asyncio.timeout(timeout):
        return await established(link)


async def established(link: TLSLink) -> asyncio.Transport:
    """``link``'s application transport once its handshake is done; the raw transport is aborted
    when the handshake fails or the wait is cancelled (a deadline)."""
    try:
        await link.handshake
    except BaseException:
        link.abort()
        raise
    return link.transport


__all__ = ["TLSLink", "accept_tls", "established", "open_tls"]
