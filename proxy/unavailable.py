"""Answers for routes whose service does not run in this cluster (glue).

Teleport's proxy negotiates every ALPN name it knows (``lib/srv/alpnproxy/common/protocols.go``
``SupportedProtocols``) and a handler that cannot serve answers *after* the handshake, in the
client's protocol. tpemu does the same: the TLS handshake completes with the protocol
Teleport's server would choose, then

* a database route → the database's own error (Postgres ``ErrorResponse``, MySQL ``ERR``,
  Redis ``-ERR``, Mongo ``{ok: 0}``; other engines: closed), as ``tpemu.net.db_refusal``;
* gRPC routes (``teleport-proxy-grpc``, ``teleport-proxy-grpc-mtls``, ``teleport-proxy-ssh-grpc``,
  ``teleport-auth@`` without an Auth Service) → HTTP/2 with gRPC status ``UNIMPLEMENTED``
  (a service tpemu does not emulate) or ``UNAVAILABLE`` (one this cluster does not run);
* SSH routes (``teleport-proxy-ssh``, ``teleport-reversetunnel``) → an SSH identification line
  and ``SSH_MSG_DISCONNECT`` ("service not available") inside TLS;
* the rest (``teleport-tcp`` app access) → closed after the handshake, logged.

Plain-text arrivals keep their old answers (an SSH disconnect on plain SSH, a MySQL ``ERR`` in
place of the greeting). Kubernetes (SNI ``kube-teleport-proxy-alpn.``) is refused before the
handshake, as Teleport does ("received kube request but k8 service is disabled"). Each log line
names the protocol and says "not available in this cluster".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from tpemu.logs import RateLimiter
from tpemu.net import db_refusal
from tpemu.net.h2_server import GrpcStatus, serve_h2
from tpemu.net.sockets import close_with_answer, format_addr
from tpemu.net.streams import Stream
from tpemu.net.tls import ContextCache, accept_stream
from tpemu.proxy.frontdoor import Accepted
from tpemu.proxy.route import RouteKind, server_alpn
from tpemu.wire import alpn as names
from tpemu.wire import mysql, ssh
from tpemu.wire.sniff import Protocol

log = logging.getLogger(__name__)
_limiter = RateLimiter()

HANDSHAKE_TIMEOUT = 10.0

_WHAT = {
    RouteKind.SSH_PROXY: "SSH proxy",
    RouteKind.SSH_PROXY_GRPC: "SSH proxy gRPC",
    RouteKind.REVERSE_TUNNEL: "reverse tunnel server",
    RouteKind.AUTH: "Auth Service API",
    RouteKind.PROXY_GRPC: "proxy gRPC (joining)",
    RouteKind.PROXY_GRPC_MTLS: "proxy gRPC (mTLS)",
    RouteKind.APP_TCP: "TCP application access",
    RouteKind.DATABASE: "database access",
    RouteKind.KUBE: "Kubernetes access",
    RouteKind.PEER: "proxy peering",
}

#: gRPC routes and the status their calls get: services tpemu never emulates are UNIMPLEMENTED.
_GRPC = {
    RouteKind.PROXY_GRPC: GrpcStatus.UNIMPLEMENTED,
    RouteKind.PROXY_GRPC_MTLS: GrpcStatus.UNIMPLEMENTED,
    RouteKind.SSH_PROXY_GRPC: GrpcStatus.UNIMPLEMENTED,
    RouteKind.AUTH: GrpcStatus.UNAVAILABLE,
}
_SSH = frozenset({RouteKind.SSH_PROXY, RouteKind.REVERSE_TUNNEL})


def describe(acc: Accepted) -> str:
    what = _WHAT.get(acc.route.kind, acc.route.kind.value)
    if acc.route.db_protocol:
        what += f" ({acc.route.db_protocol})"
    return f"{what} is not available in this cluster"


async def refuse_unavailable(acc: Accepted, contexts: Callable[[], ContextCache | None] | None = None) -> None:
    """Refuse in the client's protocol (after a TLS handshake when TLS arrived), log once, close."""
    message = describe(acc)
    _limiter.warning(log, acc.route.name, "%s proto=%s: %s", acc.ctx,
                     acc.protocol.value if acc.protocol else "-", message)
    cache = contexts() if contexts is not None else None
    if acc.protocol is Protocol.TLS and acc.route.kind is not RouteKind.KUBE and cache is not None:
        await _after_handshake(acc, cache, message)
        return
    answer = b""
    if acc.protocol is Protocol.SSH:
        answer = ssh.encode_ssh_ident("tpemu") + ssh.encode_disconnect(ssh.DISCONNECT_SERVICE_NOT_AVAILABLE, message)
    elif acc.protocol is None and acc.route.db_protocol == "mysql":
        answer = mysql.encode_err(mysql.ER_UNKNOWN_ERROR, message, sql_state=None)
    close_with_answer(acc.sock, answer)


async def _after_handshake(acc: Accepted, cache: ContextCache, message: str) -> None:
    offered = server_alpn(acc.route.kind) or names.SUPPORTED_PROTOCOLS
    try:
        reader, writer = await accept_stream(acc.sock, cache.get(offered), HANDSHAKE_TIMEOUT)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        log.info("%s: TLS handshake failed: %s", acc.ctx, exc)
        acc.sock.close()
        return
    sslobj = writer.get_extra_info("ssl_object")
    negotiated = (sslobj.selected_alpn_protocol() if sslobj is not None else None) or ""
    stream = Stream(reader, writer, "client")
    kind = acc.route.kind
    if kind is RouteKind.DATABASE:
        await db_refusal.refuse(acc.route.db_protocol or "", stream, message, db_refusal.Refusal.UNAVAILABLE)
        return
    if kind in _GRPC or negotiated == names.HTTP2:
        status = _GRPC.get(kind, GrpcStatus.UNAVAILABLE)
        text = (f"tpemu does not emulate Teleport's {_WHAT.get(kind, kind.value)} gRPC services"
                if status is GrpcStatus.UNIMPLEMENTED else message)
        await serve_h2(reader, writer, peer=format_addr(acc.peer), what=acc.route.name,
                       grpc=lambda path: (status, text), idle_timeout=HANDSHAKE_TIMEOUT)
        return
    if kind in _SSH:
        writer.write(ssh.encode_ssh_ident("tpemu") + ssh.encode_disconnect(ssh.DISCONNECT_SERVICE_NOT_AVAILABLE,
                                                                           message))
    with contextlib.suppress(OSError, ConnectionError, ssl.SSLError, TimeoutError):
        async with asyncio.timeout(2.0):
            await writer.drain()
    stream.close()
