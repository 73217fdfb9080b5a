"""The web route (``RouteKind.WEB``): the proxy's HTTPS web API, HTTP/1.1 or HTTP/2 by ALPN (glue).

Theory of operation. A web connection runs without a task until its client sends: the front
door's handler starts the TLS handshake and returns ``None`` (see
:data:`tpemu.proxy.frontdoor.Handler`); :class:`tpemu.net.tls.FirstBytes` drives the handshake
and then holds the connection with one timer, the idle deadline (``READ_TIMEOUT``, serve_http's
deadline for a request). Most of what a web connection costs per handshake is then gone for
the connections that never send a byte (health checks and ``openssl s_time``-like clients, a
pool's spare connections; issue 13's CPU per handshake). When bytes arrive, the connection gets
its streams and a task of the front door's (:meth:`FrontDoor.run`: counted, cancelled at
shutdown, its failure logged) that serves HTTP/2 when ALPN chose ``h2`` and HTTP/1.1 otherwise;
from there it is what it always was. Handshaking or silent connections are ended by
:meth:`WebRoute.close`; each counts in ``stats.active`` as a handler task does.

HTTPS applications (``<app>.<proxy host>`` SNI) keep their own task-based path
(:meth:`tpemu.proxy.app_proxy.AppProxy.handle_http`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable

from tpemu.net.h2_server import GrpcStatus, serve_h2
from tpemu.net.http_server import READ_TIMEOUT, App, serve_http
from tpemu.net.sockets import format_addr
from tpemu.net.tls import FirstBytes, peer_certificate
from tpemu.proxy.frontdoor import Accepted, FrontDoor
from tpemu.wire import alpn

log = logging.getLogger(__name__)


def _grpc_unknown(path: str) -> tuple[GrpcStatus, str]:
    # Teleport's web handler serves HTTP/2 (Go net/http); gRPC calls on it get UNIMPLEMENTED.
    return GrpcStatus.UNIMPLEMENTED, f"unknown service {path.strip('/').split('/')[0]}"


class WebRoute:
    """Serves web connections with ``app`` (the web API) on the front door ``door``."""

    def __init__(self, door: FrontDoor, app: App, handshake_timeout: float) -> None:
        self.door = door
        self.app = app
        self.handshake_timeout = handshake_timeout
        #: Connections handshaking or waiting for their first bytes (no task yet).
        self.waiting: set[_WebConnection] = set()

    def start(self, acc: Accepted, ctx: ssl.SSLContext) -> None:
        """Start the handshake of ``acc`` with ``ctx``; returns at once (no task)."""
        loop = self.door.loop
        assert loop is not None
        conn = _WebConnection(self, acc, loop)
        self.waiting.add(conn)
        self.door.stats.active += 1
        conn.start(acc.sock, ctx, self.handshake_timeout)

    def close(self) -> None:
        """End every connection still without a task (shutdown)."""
        for conn in list(self.waiting):
            conn.close()

    def serve(self, acc: Accepted, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
        """The server of the connection once its first bytes are in ``reader``, by ALPN (the
        coroutine the front door's task runs: chosen here, one coroutine frame less)."""
        sslobj = writer.get_extra_info("ssl_object")
        negotiated = sslobj.selected_alpn_protocol() if sslobj is not None else None
        if negotiated == alpn.HTTP2:
            return serve_h2(reader, writer, peer=format_addr(acc.peer), app=self.app, what="web", grpc=_grpc_unknown)
        tls_info = {"sni": acc.hello.sni if acc.hello else None, "alpn": negotiated,
                    "peer_cert": peer_certificate(writer)}
        return serve_http(reader, writer, self.app, peer=format_addr(acc.peer), tls=tls_info, read_timeout=READ_TIMEOUT)


class _WebConnection(FirstBytes):
    __slots__ = ("acc", "route")

    def __init__(self, route: WebRoute, acc: Accepted, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, READ_TIMEOUT)
        self.route = route
        self.acc = acc

    def served(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        route = self.route
        route.waiting.discard(self)
        route.door.stats.active -= 1  # the task counts from here
        try:
            coro = route.serve(self.acc, reader, writer)
        except Exception:  # (inside the transport's data_received: never let it reach the loop)
            log.exception("%s: handler failed", self.acc.ctx)
            writer.close()
            return
        route.door.run(self.acc, coro)

    def ended(self, exc: BaseException | None) -> None:
        route = self.route
        route.waiting.discard(self)
        route.door.stats.active -= 1
        if exc is None:
            return
        acc = self.acc
        if isinstance(exc, OSError | TimeoutError):
            log.info("%s: TLS handshake failed: %s", acc.ctx, exc)
        elif not isinstance(exc, asyncio.CancelledError):
            log.error("%s: handler failed", acc.ctx, exc_info=exc)
        try:
            acc.sock.close()  # (detached already if the loop took the descriptor)
        except OSError:
            pass
