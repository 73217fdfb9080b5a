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
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any


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
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
    else:
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, sock, ssl=ctx, ssl_handshake_timeout=timeout)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


class FirstBytes(asyncio.Protocol):
    """A server TLS connection from its accepted socket to the client's first bytes, with no task.

    For servers whose client speaks first (HTTP/1.1, HTTP/2): between the handshake and the first
    bytes a connection costs this object and one timer, not the streams :func:`accept_stream`
    builds, nor a task (a client that only handshakes, or a pool's spare connection, needs none).

    :meth:`start` drives ``loop.connect_accepted_socket(ssl=ctx)`` by hand — what a Task's step
    does for a coroutine that only awaits futures (here the handshake's waiter): send into it and
    resume it from the done callback of the future it yields. This object is the application
    protocol (its own factory): ``connection_made`` is the end of the handshake and arms the idle
    timer (``transport.close()``: a ``close_notify``). The first ``data_received`` builds the
    stream reader, protocol and writer on the spot, hands the transport to them
    (``set_protocol``), feeds them the bytes — every later byte goes straight to the reader, whose
    limit pauses reading — and calls :meth:`served`, which owns the streams from then on.
    Otherwise :meth:`ended` is called once: with the exception when the handshake failed (or was
    cancelled by :meth:`close`; the loop has closed the transport), with ``None`` when the client
    closed, was lost or stayed silent for ``idle_timeout`` seconds.
    """

    __slots__ = ("coro", "idle_timeout", "limit", "loop", "timer", "transport", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout: float, limit: int = 64 * 1024) -> None:
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.limit = limit
        self.coro: Coroutine[Any, Any, object] | None = None
        self.waiting: asyncio.Future[Any] | None = None
        self.timer: asyncio.TimerHandle | None = None
        #: The TLS transport from the handshake until the first bytes (``None`` before and after).
        self.transport: asyncio.Transport | None = None

    # -- what a user overrides -------------------------------------------------------------------

    def served(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The first bytes are in ``reader``: the connection is the caller's now."""
        writer.close()

    def ended(self, exc: BaseException | None) -> None:
        """The connection ended before its first bytes (``exc``: the handshake failed)."""

    # -- driving the handshake -------------------------------------------------------------------

    def start(self, sock: socket.socket, ctx: ssl.SSLContext, handshake_timeout: float) -> None:
        loop = self.loop
        self.coro = loop.connect_accepted_socket(self, sock, ssl=ctx,
                                                 ssl_handshake_timeout=handshake_timeout)
        self._step()

    def _step(self, _: object = None) -> None:
        coro = self.coro
        assert coro is not None
        self.waiting = None
        try:
            fut = coro.send(None)
        except StopIteration:  # the handshake is done (connection_made has run)
            self.coro = None
            return
        except BaseException as exc:
            self.coro = None
            self._end(exc)
            if not isinstance(exc, Exception | asyncio.CancelledError):
                raise
            return
        fut._asyncio_future_blocking = False
        self.waiting = fut
        fut.add_done_callback(self._step)

    def close(self) -> None:
        """End the connection if it is still this object's (shutdown)."""
        if self.transport is not None:  # handshaken, no byte yet: close_notify, then connection_lost
            self.transport.close()
        elif self.waiting is not None:  # handshaking: the loop closes the transport, _step sees the cancel
            self.waiting.cancel()

    # -- the protocol ------------------------------------------------------------------------------

    def __call__(self) -> FirstBytes:
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = self.loop.call_later(self.idle_timeout, transport.close)

    def data_received(self, data: bytes) -> None:
        loop, transport = self.loop, self.transport
        assert transport is not None
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        reader = asyncio.StreamReader(limit=self.limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        reader.feed_data(data)
        self.served(reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    def eof_received(self) -> bool:
        return False  # over TLS the transport shuts down after the peer's close_notify

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._end(None)

    def _end(self, exc: BaseException | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.ended(exc)


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
