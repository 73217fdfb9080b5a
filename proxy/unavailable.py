"""Answers for routes whose service does not run in this cluster (glue).

Each refusal speaks the client's protocol where it can, so the client prints a reason rather
than a bare reset: a TLS ``no_application_protocol`` alert (what Go's crypto/tls sends when no
ALPN handler matches), an SSH identification line plus ``SSH_MSG_DISCONNECT``
("service not available"), a MySQL ERR packet in place of the greeting, an HTTP 503. The log
line names the protocol and says "not available in this cluster".
"""

from __future__ import annotations

import logging

from tpemu.logs import RateLimiter
from tpemu.net.sockets import close_with_answer
from tpemu.proxy.frontdoor import Accepted
from tpemu.proxy.route import RouteKind
from tpemu.wire import mysql, ssh, tls
from tpemu.wire.sniff import Protocol

log = logging.getLogger(__name__)
_limiter = RateLimiter()

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


def describe(acc: Accepted) -> str:
    what = _WHAT.get(acc.route.kind, acc.route.kind.value)
    if acc.route.db_protocol:
        what += f" ({acc.route.db_protocol})"
    return f"{what} is not available in this cluster"


async def refuse_unavailable(acc: Accepted) -> None:
    """Refuse in the client's protocol, log once (rate-limited), close."""
    message = describe(acc)
    answer = b""
    if acc.protocol is Protocol.TLS:
        answer = tls.encode_alert(tls.ALERT_NO_APPLICATION_PROTOCOL)
    elif acc.protocol is Protocol.SSH:
        answer = ssh.encode_ssh_ident("tpemu") + ssh.encode_disconnect(ssh.DISCONNECT_SERVICE_NOT_AVAILABLE, message)
    elif acc.protocol is None and acc.route.db_protocol == "mysql":
        answer = mysql.encode_err(mysql.ER_UNKNOWN_ERROR, message, sql_state=None)
    _limiter.warning(log, acc.route.name, "%s proto=%s: %s", acc.ctx,
                     acc.protocol.value if acc.protocol else "-", message)
    close_with_answer(acc.sock, answer)

