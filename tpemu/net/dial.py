"""Dialing out, directly or through an HTTP CONNECT proxy, optionally with TLS on top (glue).

Agents dialing the proxy (their reverse tunnels, their join requests) and clients (``tpemu
login``, ``ssh``, database tunnels) all go through :func:`dial`, which honours the proxy
environment (:mod:`tpemu.net.proxyenv`) as Teleport does: ``CONNECT host:port HTTP/1.1`` (RFC 9110
§9.3.6) with ``Proxy-Authorization: Basic`` when the proxy URL has credentials, over TLS to the
proxy for an ``https://`` proxy, then TLS to the target (with ALPN and SNI) when asked.

Theory of operation: the connection to the proxy starts with a small protocol that collects the
proxy's response (capped at 16 KiB, under the dial deadline). On ``200`` the transport is handed
to the caller's protocol with ``set_protocol``; bytes that followed the response in the same read
(a server that speaks first, like sshd on 3024, may send its banner at once) are delivered to it
right after ``connection_made``, so none is lost. With TLS to the target, ``loop.start_tls``
wraps the tunnelled transport first.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from tpemu.errors import PeerFault
from tpemu.errors import describe as describe_error
from tpemu.net import tls_link
from tpemu.net.proxyenv import ProxySettings, ProxyURL, from_environment

log = logging.getLogger(__name__)

MAX_CONNECT_RESPONSE = 16 * 1024
P = TypeVar("P", bound=asyncio.BaseProtocol)


class DialError(PeerFault, OSError):
    """A dial failed; the message says where (direct, or which proxy) and why."""


class _ConnectReply(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" in self.buf:
            if not self.done.done():
                self.done.set_result(None)
        elif len(self.buf) > MAX_CONNECT_RESPONSE and not self.done.done():
            self.done.set_exception(DialError(f"proxy response headers exceed {MAX_CONNECT_RESPONSE} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(DialError("proxy closed the connection before answering CONNECT"))


class _Placeholder(asyncio.Protocol):
    """Holds a transport between CONNECT and the caller's protocol (during start_tls)."""


def settings_from(env: Mapping[str, str] | None = None) -> ProxySettings:
    return from_environment(os.environ if env is None else env)


async def dial(protocol_factory: Callable[[], P], host: str, port: int, *,
               ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
               proxy: ProxySettings | None = None, timeout: float = 15.0,
               lean_tls: bool = False) -> tuple[asyncio.Transport, P]:
    """Connect to ``host:port`` (through the environment's proxy unless excluded), optionally TLS.

    Raises :class:`DialError` with a specific message; ``proxy`` defaults to the process
    environment. ``lean_tls``: the TLS runs in :mod:`tpemu.net.tls_link` instead of the loop's
    SSL protocol (same bytes on the wire, a fraction of the CPU per record; the transport has no
    half-close), for connections that carry many small records (the reverse tunnel).
    """
    settings = proxy if proxy is not None else settings_from()
    via = settings.proxy_for(host, port)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            if via is None and lean_tls and ssl_context is not None:
                app = protocol_factory()
                _, link = await loop.create_connection(
                    lambda: tls_link.TLSLink(ssl_context, app, server_side=False,
                                             server_hostname=server_hostname or host), host, port)
                return await tls_link.established(link), app
            if via is None:
                transport, protocol = await loop.create_connection(
                    protocol_factory, host, port, ssl=ssl_context,
                    server_hostname=(server_hostname or host) if ssl_context else None)
                return transport, protocol
            return await _dial_via(loop, via, protocol_factory, host, port, ssl_context, server_hostname, lean_tls)
    except TimeoutError:
        where = f" through proxy {via}" if via else ""
        raise DialError(f"dial {host}:{port}{where}: timed out after {timeout:g}s") from None
    except DialError:
        raise
    except ssl.SSLCertVerificationError as exc:
        raise DialError(f"dial {host}:{port}: TLS certificate verification failed: {exc.verify_message}") from None
    except OSError as exc:
        where = f"proxy {via}" if via else f"{host}:{port}"
        why = describe_error(exc)  # Teleport's words where it has some
        raise DialError(f"dial {host}:{port}: cannot connect to {where}: {why}") from None


async def _dial_via(loop: asyncio.AbstractEventLoop, via: ProxyURL, protocol_factory: Callable[[], P], host: str,
                    port: int, ssl_context: ssl.SSLContext | None,
                    server_hostname: str | None, lean_tls: bool = False) -> tuple[asyncio.Transport, P]:
    proxy_tls = ssl.create_default_context() if via.scheme == "https" else None
    transport, reply = await loop.create_connection(
        _ConnectReply, via.host, via.port, ssl=proxy_tls, server_hostname=via.host if proxy_tls else None)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", "User-Agent: tpemu"]
    if via.username is not None:
        token = base64.b64encode(f"{via.username}:{via.password or ''}".encode()).decode()
        lines.append(f"Proxy-Authorization: Basic {token}")
    transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        await reply.done
    except DialError as exc:
        transport.close()
        raise DialError(f"CONNECT {target} through proxy {via}: {exc}") from None
    head, _, rest = bytes(reply.buf).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        transport.close()
        raise DialError(f"CONNECT {target} through proxy {via}: not an HTTP answer: {status_line[:80]!r}")
    if parts[1] != "200":
        transport.close()
        hint = " (proxy authentication required: put user:password in the proxy URL)" if parts[1] == "407" else ""
        raise DialError(f"CONNECT {target} through proxy {via} refused: {status_line}{hint}")
    log.debug("tunnel to %s through proxy %s established", target, via)
    if ssl_context is not None:
        if rest:
            transport.close()
            raise DialError(f"CONNECT {target}: {len(rest)} unexpected bytes before the TLS handshake")
        if lean_tls:
            app = protocol_factory()
            return await tls_link.open_tls(transport, app, ssl_context, server_hostname or host), app
        placeholder = _Placeholder()
        transport.set_protocol(placeholder)
        new = await loop.start_tls(transport, placeholder, ssl_context, server_hostname=server_hostname or host)
        if new is None:
            raise DialError(f"CONNECT {target}: TLS to the target failed")
        transport = new
    protocol = protocol_factory()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if rest:
        protocol.data_received(rest)  # type: ignore[attr-defined]
    return transport, protocol


async def open_stream(host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                      server_hostname: str | None = None, proxy: ProxySettings | None = None,
                      timeout: float = 15.0,
                      limit: int = 64 * 1024) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """:func:`dial` returning asyncio streams."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    transport, protocol = await dial(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), host, port,
                                     ssl_context=ssl_context, server_hostname=server_hostname, proxy=proxy,
                                     timeout=timeout)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class SSHTunnel:
    """An asyncssh ``tunnel=`` object: SSH over :func:`dial` (proxy environment, TLS with ALPN)."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, proxy: ProxySettings | None = None,
                 timeout: float = 15.0, lean_tls: bool = False) -> None:
        self.host, self.port = host, port
        self.ssl_context, self.server_hostname = ssl_context, server_hostname
        self.proxy, self.timeout, self.lean_tls = proxy, timeout, lean_tls

    async def create_connection(self, session_factory: Callable[[], Any], host: str,
                                port: int) -> tuple[asyncio.Transport, Any]:
        # asyncssh passes the SSH host/port it was asked for; the dial goes where this tunnel says.
        return await dial(session_factory, self.host, self.port, ssl_context=self.ssl_context,
                          server_hostname=self.server_hostname, proxy=self.proxy, timeout=self.timeout,
                          lean_tls=self.lean_tls)
