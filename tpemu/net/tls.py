"""TLS contexts and TLS-terminated streams on already-accepted sockets (glue over ``ssl``).

The router hands a socket whose ClientHello is still unread in the kernel to
``loop.connect_accepted_socket(..., ssl=ctx)``: the TLS stack reads the hello itself, so nothing
has to be replayed (reading it first through a StreamReader and then calling ``start_tls`` loses
the buffered bytes: cpython#142352).

Server contexts are cached per ALPN list: Python's ``ssl`` selects ALPN by *server* preference,
so a context offering exactly the routed protocol negotiates what the router decided.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from tpemu.net.sockets import handed_to


def new_context(protocol: ssl._SSLMethod) -> ssl.SSLContext:
    """``ssl.SSLContext(protocol)`` that honours ``SSLKEYLOGFILE`` (NSS key log format, which
    Wireshark reads to decrypt a capture), as ``ssl.create_default_context`` already does for
    the contexts it makes. Every TLS endpoint tpemu owns is made here or by that function."""
    ctx = ssl.SSLContext(protocol)
    path = os.environ.get("SSLKEYLOGFILE")
    if path:
        ctx.keylog_filename = path
    return ctx


def server_context(cert: Path, key: Path, alpn: Sequence[str] = (), client_ca: Path | None = None,
                   verify_client: bool = False) -> ssl.SSLContext:
    """A TLS 1.2+ server context; with ``client_ca``, client certificates are requested and
    verified (``verify_client`` makes them mandatory)."""
    ctx = new_context(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if verify_client else ssl.CERT_OPTIONAL
    # No session tickets, as Teleport's proxy: its TLS configs come from lib/utils/tls.go
    # SetupTLSConfig, which sets SessionTicketsDisabled = true (v17+: a client ticket cache does not
    # play well with dynamic credentials and CAs), so Go's crypto/tls sends no NewSessionTicket and
    # resumes nothing. OpenSSL sends two TLS 1.3 tickets by default (each a session serialised and
    # encrypted: CPU per handshake, issue 13); OP_NO_TICKET covers TLS 1.2's ticket extension.
    ctx.num_tickets = 0
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET
    return ctx


def client_context(ca: Path | None = None, cert: Path | None = None, key: Path | None = None,
                   alpn: Sequence[str] = (), insecure: bool = False) -> ssl.SSLContext:
    """A client context trusting ``ca`` (or the system store), with an optional client cert."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class ContextCache:
    """Server contexts for one certificate, one per ALPN offer (built on first use).

    Callers key it by names the router validated, never by raw client bytes; as a second line of
    defence it holds at most ``max_size`` contexts (least recently used dropped first), so no
    sequence of ClientHellos can grow it without bound (each context costs ~25 KB).
    """

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None, max_size: int = 64) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.max_size = max_size
        self._cache: OrderedDict[tuple[tuple[str, ...], bool], ssl.SSLContext] = OrderedDict()

    def get(self, alpn: Sequence[str] = (), verify_client: bool = False) -> ssl.SSLContext:
        k = (tuple(alpn), verify_client)
        cache = self._cache
        ctx = cache.get(k)
        if ctx is None:
            ctx = server_context(self.cert, self.key, alpn, self.client_ca, verify_client)
            cache[k] = ctx
            if len(cache) > self.max_size:
                cache.popitem(last=False)
        else:
            cache.move_to_end(k)
        return ctx

    def __len__(self) -> int:
        return len(self._cache)


async def accept_stream(sock: socket.socket, ctx: ssl.SSLContext | None, timeout: float,
                        limit: int = 64 * 1024) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Wrap an accepted socket in asyncio streams, doing the server TLS handshake if ``ctx``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    if ctx is None:
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, handed_to(loop, sock))
    else:
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, handed_to(loop, sock), ssl=ctx, ssl_handshake_timeout=timeout)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


class _UntilFirstBytes(asyncio.Protocol):
    """The application protocol of a TLS connection from its handshake to the client's first bytes.

    Holds nothing but the transport; the first ``data_received`` builds the stream reader,
    protocol and writer on the spot, hands the transport to them (``set_protocol``) and feeds them
    the bytes, so every later byte goes straight to the reader, whose limit pauses reading. EOF,
    loss of the connection or the idle timer wake the waiter without streams. Its own factory.
    """

    __slots__ = ("limit", "loop", "streams", "transport", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.loop = loop
        self.limit = limit
        self.waiter: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def __call__(self) -> _UntilFirstBytes:
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        loop, transport = self.loop, self.transport
        assert transport is not None
        reader = asyncio.StreamReader(limit=self.limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        reader.feed_data(data)
        self.streams = reader, asyncio.StreamWriter(transport, protocol, reader, loop)
        self.wake()

    def eof_received(self) -> bool:
        self.wake()
        return False  # over TLS the transport shuts down after the peer's close_notify

    def connection_lost(self, exc: Exception | None) -> None:
        self.wake()

    def wake(self) -> None:
        if not self.waiter.done():
            self.waiter.set_result(None)


async def accept_first_bytes(sock: socket.socket, ctx: ssl.SSLContext, timeout: float, idle_timeout: float,
                             limit: int = 64 * 1024) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """The server TLS handshake on an accepted socket, then streams once the client sends.

    For servers whose client speaks first (HTTP/1.1, HTTP/2): between the handshake and the first
    bytes a connection costs one protocol object and one timer, not the streams
    :func:`accept_stream` builds (a client that only handshakes, or a pool's spare connection,
    never needs them). ``None`` — the connection closed (gracefully, with ``close_notify``) —
    when the client closes, is lost, or sends nothing within ``idle_timeout`` seconds of the
    handshake. Raises as :func:`accept_stream` does when the handshake fails.
    """
    loop = asyncio.get_running_loop()
    protocol = _UntilFirstBytes(loop, limit)
    transport, _ = await loop.connect_accepted_socket(protocol, handed_to(loop, sock), ssl=ctx,
                                                      ssl_handshake_timeout=timeout)
    waiter = protocol.waiter
    if not waiter.done():  # (the first bytes often come with the client's Finished: already here)
        timer = loop.call_later(idle_timeout, protocol.wake)
        try:
            await waiter
        except BaseException:  # cancelled (the proxy closes)
            streams = protocol.streams
            (streams[1].transport if streams is not None else transport).close()
            raise
        finally:
            timer.cancel()
    if protocol.streams is None:
        transport.close()
    return protocol.streams


#: Client contexts already built in this process, by what they were built from.
_REUSED: dict[tuple[object, ...], ssl.SSLContext] = {}


def _stamp(path: str | Path | None) -> tuple[str, float]:
    if path is None:
        return ("", 0.0)
    try:
        return (str(path), os.stat(path).st_mtime)
    except OSError:
        return (str(path), -1.0)


def reused_context(tag: str, build: Callable[[], ssl.SSLContext], *files: str | Path | None) -> ssl.SSLContext:
    """The client context ``build()`` makes, built once per process for the same ``tag``, files
    (their paths and modification times: a new login is seen), ``SSL_CERT_FILE``/``SSL_CERT_DIR`` and
    ``SSLKEYLOGFILE``.

    Why: loading the system's roots (``load_default_certs``) parses ~140 certificates, 30-120 ms of
    CPU here, and a client that made a fresh context per connection paid it two or three times for
    each new SSH session through the proxy (issue 13). The caller must not change the context it
    gets (every setting goes in ``build``).
    """
    # SSLKEYLOGFILE too: a context built before it was set would not log (the contexts read it when made).
    key = (tag, *(_stamp(f) for f in files), os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"),
           os.environ.get("SSLKEYLOGFILE"))
    ctx = _REUSED.get(key)
    if ctx is None:
        if len(_REUSED) >= 64:
            _REUSED.clear()  # bounded: old logins' contexts go
        ctx = _REUSED[key] = build()
    return ctx


def peer_certificate(writer: asyncio.StreamWriter) -> bytes | None:
    """The DER of the verified client certificate of a TLS stream, if any."""
    sslobj = writer.get_extra_info("ssl_object")
    if sslobj is None:
        return None
    der = sslobj.getpeercert(binary_form=True)
    return der if der else None
