"""The client side of the ALPN connection upgrade, and when a client needs it (glue).

Follows gravitational/teleport ``api/client/alpn_conn_upgrade.go``:

* :func:`upgrade_required` is ``IsALPNConnUpgradeRequired``: a test TLS dial offering ALPN
  ``teleport-reversetunnel``; if the server negotiates no ALPN (a layer-7 load balancer
  answered, not the proxy) or refuses with ``no_application_protocol``, the upgrade is needed;
  any other failure means "dial as usual". ``TELEPORT_TLS_ROUTING_CONN_UPGRADE`` overrides the
  test (``OverwriteALPNConnUpgradeRequirementByEnv``: ``true``, or ``addr=yes,other=no``).
* :func:`open_upgraded` is ``alpnConnUpgradeDialer.DialContext`` + ``upgradeConnThroughWebAPI``:
  TLS to the load balancer, ``GET /webapi/connectionupgrade`` asking for WebSocket
  (``Sec-WebSocket-Protocol: alpn|alpn-ping``) and, after it, the legacy ``Upgrade``/
  ``X-Teleport-Upgrade`` types; a 101 with ``Upgrade: websocket`` is checked
  (``checkWebSocketUpgradeResponse``) and read as binary frames, any other 101 as the legacy
  stream. The connection then carries the caller's own TLS (real ALPN/SNI, the cluster's CA).

Theory of operation: the caller's TLS runs *inside* the load balancer's TLS, and for ``alpn-ping``
inside ping framing too. uvloop runs TLS only on its own socket transports (``start_tls`` and
``create_connection(ssl=…)`` refuse any other), so the upgraded stream (ping framing and WebSocket
frames are :mod:`tpemu.net.streams` layers) is joined by a :class:`~tpemu.net.pipe.Pipe` to
one end of a local socket pair and the caller gets the other end: an ordinary socket on which
``loop.create_connection(sock=…, ssl=…)`` (or asyncssh) does its own TLS. This client-side TLS-in-TLS
is the one place a socket pair remains; no task copies bytes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from tpemu.net.dial import DialError, open_stream
from tpemu.net.pipe import Parked, Pipe, park_streams
from tpemu.net.proxyenv import ProxySettings
from tpemu.net.streams import PingTransport, WebSocketTransport
from tpemu.net.tls import new_context, reused_context
from tpemu.wire import alpn, websocket

log = logging.getLogger(__name__)

#: ``defaults.TLSRoutingConnUpgradeEnvVar``.
ENV_VAR = "TELEPORT_TLS_ROUTING_CONN_UPGRADE"
UPGRADE_PATH = "/webapi/connectionupgrade"
MAX_RESPONSE_HEAD = 16 * 1024
P = TypeVar("P", bound=asyncio.BaseProtocol)

_TRUE = {"1", "t", "true", "y", "yes", "on"}
_FALSE = {"0", "f", "false", "n", "no", "off"}
_decided: dict[tuple[str, int], bool] = {}


class UpgradeError(DialError):
    """The upgrade call failed; the message is Teleport's."""


def _parse_bool(text: str) -> bool | None:
    low = text.strip().lower()
    return True if low in _TRUE else False if low in _FALSE else None


def required_by_env(addr: str, value: str) -> bool:
    """``isALPNConnUpgradeRequiredByEnv``: ``addr=<bool>`` for one address, ``<bool>`` for the rest."""
    default = False
    for token in (t.strip() for part in value.split(";") for t in part.split(",")):
        if not token:
            continue
        if "=" in token:
            key, _, flag = token.partition("=")
            if key.strip() == addr:
                return bool(_parse_bool(flag))
        else:
            parsed = _parse_bool(token)
            if parsed is not None:
                default = parsed
    return default


def outer_context(cafile: str | None = None) -> ssl.SSLContext:
    """TLS toward a load balancer: the system's roots (``SSL_CERT_FILE`` applies) plus, when
    given, the cluster's CA (the proxy itself may answer). Built once per process and CA file."""

    def build() -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if cafile:
            ctx.load_verify_locations(cafile=cafile)
        ctx.set_alpn_protocols([alpn.HTTP11])
        return ctx

    return reused_context("upgrade-outer", build, cafile)


def outer_context_from(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """:func:`outer_context` trusting the CAs ``ctx`` trusts as well."""
    outer = ssl.create_default_context()
    for der in ctx.get_ca_certs(binary_form=True):
        outer.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(der))
    outer.set_alpn_protocols([alpn.HTTP11])
    return outer


async def upgrade_required(host: str, port: int, ctx: ssl.SSLContext, *, proxy: ProxySettings | None = None,
                           timeout: float = 5.0, use_cache: bool = True) -> bool:
    """Whether ``host:port`` needs the connection upgrade (tsh's test dial; cached per address)."""
    addr = f"{host}:{port}"
    env = os.environ.get(ENV_VAR, "")
    if env:
        result = required_by_env(addr, env)
        log.debug("ALPN connection upgrade required for %r: %s (%s=%s)", addr, result, ENV_VAR, env)
        return result
    if use_cache and (host, port) in _decided:
        return _decided[(host, port)]
    probe = _probe_context(ctx)
    try:
        _, writer = await open_stream(host, port, ssl_context=probe, server_hostname=host, proxy=proxy,
                                      timeout=timeout)
    except (DialError, OSError, ssl.SSLError) as exc:
        text = str(exc)
        if "NO_APPLICATION_PROTOCOL" in text.upper() or "no application protocol" in text:
            log.debug("ALPN connection upgrade required for %r: True. No ALPN protocol is negotiated by the "
                      "server.", addr)
            _decided[(host, port)] = True
            return True
        log.info("ALPN connection upgrade test failed for %r: %s.", addr, exc)
        return False
    negotiated = writer.get_extra_info("ssl_object").selected_alpn_protocol()
    writer.close()
    result = not negotiated
    log.debug("ALPN connection upgrade required for %r: %s.", addr, result)
    _decided[(host, port)] = result
    return result


def _probe_context(ctx: ssl.SSLContext) -> ssl.SSLContext:
    # The caller's trust, with ALPN teleport-reversetunnel: only a Teleport proxy negotiates it.
    probe = new_context(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = ctx.check_hostname
    probe.verify_mode = ctx.verify_mode
    if ctx.verify_mode != ssl.CERT_NONE:
        for ca in ctx.get_ca_certs(binary_form=True):
            probe.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(ca))
        probe.load_default_certs()
    probe.set_alpn_protocols([alpn.REVERSE_TUNNEL])
    return probe


async def open_upgraded(host: str, port: int, *, ctx: ssl.SSLContext, ping: bool = True,
                        proxy: ProxySettings | None = None, timeout: float = 15.0) -> socket.socket:
    """A local socket carrying the upgraded stream to the proxy behind ``host:port``.

    Raises :class:`UpgradeError` (the proxy refused the upgrade) or :class:`DialError`.
    """
    kind = "alpn-ping" if ping else "alpn"
    reader, writer = await open_stream(host, port, ssl_context=ctx, server_hostname=host, proxy=proxy,
                                       timeout=timeout)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    challenge = base64.b64encode(os.urandom(16)).decode("ascii")
    # upgradeConnThroughWebAPI: WebSocket preferred (applyWebSocketUpgradeHeaders), the legacy
    # types after it for servers that do not serve WebSocket.
    request = (f"GET {UPGRADE_PATH} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: tpemu\r\n"
               f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: {kind}\r\n"
               f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {challenge}\r\n"
               f"Upgrade: {kind}\r\nX-Teleport-Upgrade: {kind}\r\n\r\n")
    writer.write(request.encode())
    try:
        async with asyncio.timeout(timeout):
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError) as exc:
        writer.close()
        raise UpgradeError(f"connection upgrade call to {UPGRADE_PATH!r} at {target} got no answer: "
                           f"{exc or type(exc).__name__}") from None
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    if status != 101:
        writer.close()
        if status == 404:
            # trace.NotImplemented in upgradeConnThroughWebAPI.
            raise UpgradeError(f'connection upgrade call to "{UPGRADE_PATH}" with upgrade type {kind} failed '
                               f"with status code {status}. Please upgrade the server and try again.")
        raise UpgradeError(f"failed to switch Protocols {status}")
    headers = _headers(head)
    upgraded: asyncio.Transport = park_streams(reader, writer)
    if headers.get("upgrade", "").lower() == "websocket":
        # checkWebSocketUpgradeResponse
        if headers.get("sec-websocket-protocol") != kind:
            writer.close()
            raise UpgradeError("WebSocket handshake failed: Sec-WebSocket-Protocol does not match")
        if headers.get("sec-websocket-accept") != websocket.accept_key(challenge):
            writer.close()
            raise UpgradeError("WebSocket handshake failed: invalid Sec-WebSocket-Accept")
        log.debug("Performing ALPN WebSocket connection upgrade for %s.", target)
        upgraded = WebSocketTransport.wrap(upgraded, client=True)
    else:
        log.debug("Performing ALPN legacy connection upgrade for %s.", target)
        if ping:
            upgraded = PingTransport.wrap(upgraded)
    mine, theirs = socket.socketpair()
    mine.setblocking(False)
    theirs.setblocking(False)
    local, _ = await asyncio.get_running_loop().connect_accepted_socket(Parked, mine)
    Pipe.join(upgraded, local)
    return theirs


def _headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            out.setdefault(name.strip().lower(), value.strip())
    return out


async def dial_upgraded(protocol_factory: Callable[[], P], host: str, port: int, *, outer: ssl.SSLContext,
                        inner: ssl.SSLContext | None, server_hostname: str, ping: bool = True,
                        proxy: ProxySettings | None = None,
                        timeout: float = 15.0) -> tuple[asyncio.Transport, P]:
    """:func:`tpemu.net.dial.dial`'s counterpart through the upgrade: ``inner`` TLS (the caller's
    ALPN, SNI and CA) runs over the upgraded stream."""
    sock = await open_upgraded(host, port, ctx=outer, ping=ping, proxy=proxy, timeout=timeout)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await loop.create_connection(
                protocol_factory, sock=sock, ssl=inner, server_hostname=server_hostname if inner else None)
    except BaseException:
        sock.close()
        raise
    return transport, protocol


async def open_stream_upgraded(host: str, port: int, *, outer: ssl.SSLContext, inner: ssl.SSLContext,
                               server_hostname: str, ping: bool = True, proxy: ProxySettings | None = None,
                               timeout: float = 15.0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """:func:`dial_upgraded` returning asyncio streams."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024, loop=loop)
    transport, protocol = await dial_upgraded(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), host, port,
                                              outer=outer, inner=inner, server_hostname=server_hostname, ping=ping,
                                              proxy=proxy, timeout=timeout)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class UpgradedSSHTunnel:
    """An asyncssh ``tunnel=`` object: SSH over TLS (ALPN ``teleport-proxy-ssh``) over the upgrade."""

    def __init__(self, host: str, port: int, *, outer: ssl.SSLContext, inner: ssl.SSLContext,
                 server_hostname: str, proxy: ProxySettings | None = None, timeout: float = 15.0) -> None:
        self.host, self.port, self.outer, self.inner = host, port, outer, inner
        self.server_hostname, self.proxy, self.timeout = server_hostname, proxy, timeout

    async def create_connection(self, session_factory: Callable[[], Any], host: str,
                                port: int) -> tuple[asyncio.Transport, Any]:
        return await dial_upgraded(session_factory, self.host, self.port, outer=self.outer, inner=self.inner,
                                   server_hostname=self.server_hostname, proxy=self.proxy, timeout=self.timeout)
