"""Forwarding one Kubernetes API request to an upstream API server over HTTP/1.1 (shared).

Two hops use it: the Kubernetes Service toward a real cluster (``kubernetes_service.kubeconfig_file``,
:mod:`tpemu.agent.kube.remote`, Teleport's ``lib/kube/proxy/forwarder.go`` with the ``kubeCreds``
of ``lib/kube/proxy/kube_creds.go``), and the proxy toward a Kubernetes Service joined directly to
the Auth Service (``tpemu.proxy.kube_proxy``, Teleport 17's ``lib/kube/proxy/transport.go``
``newLocalClusterTransport``). :class:`RemoteAPI` sends the request (its headers as the caller left
them, hop-by-hop ones and ``Authorization`` replaced), answers with the upstream's status and
body — whole when short, streamed when the upstream streams (``watch``, ``logs -f``) — and splices
both directions after a ``101 Switching Protocols`` (``kubectl exec``'s websocket / SPDY). One
connection per request: no pooling (a kubectl command makes a handful of requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import h11

from tpemu.net import kube_http as khttp
from tpemu.net.kube_status import StatusError

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
#: Bodies with a known length up to this are answered whole; longer or unknown ones stream.
MAX_WHOLE = 3 << 20
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0
#: Between two chunks of a streamed answer (a quiet ``watch``): the API server's own
#: ``--min-request-timeout`` (1800 s) bounds a watch, so a quiet one must live that long here.
STREAM_TIMEOUT = 1800.0
#: The proxy → Kubernetes Service identity forwarding headers (``lib/kube/internal/http.go``
#: ``teleportImpersonateUserHeader``/``teleportImpersonateIPHeader``), lower-case as h11 gives them.
FORWARDED_USER = "teleport-impersonate-user"
FORWARDED_IP = "teleport-impersonate-ip"
_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                  "upgrade", "host", "content-length", "authorization"})


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int
    server_name: str
    tls: ssl.SSLContext | None
    token: str = ""


class RemoteAPI:
    """One real cluster: the same ``handle`` as :class:`~tpemu.agent.kube.api.EmulatedAPI`."""

    def __init__(self, name: str, upstream: Upstream) -> None:
        self.name = name
        self.upstream = upstream

    def start(self) -> None:
        return None

    def close(self) -> None:
        return None

    async def handle(self, request: khttp.Request) -> khttp.Reply | khttp.Streamed | khttp.Upgraded:
        up = self.upstream
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(
                    up.host, up.port, ssl=up.tls, server_hostname=up.server_name if up.tls else None,
                    limit=MAX_HEAD)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning("kube service: cluster %s at %s:%d unreachable: %s", self.name, up.host, up.port, exc)
            raise StatusError(503, f"kubernetes cluster {self.name!r} is unreachable: {exc or 'timeout'}",
                              "ServiceUnavailable") from None
        try:
            return await self._exchange(request, reader, writer)
        except BaseException:
            writer.close()
            raise

    async def _exchange(self, request: khttp.Request, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> khttp.Reply | khttp.Streamed | khttp.Upgraded:
        upgrade = request.headers.get("upgrade", "")
        headers: list[tuple[str, str]] = [("host", f"{self.upstream.server_name}:{self.upstream.port}")]
        headers += [(k, v) for k, v in request.headers.items() if k not in _HOP and k != "impersonate-group"]
        headers += [("impersonate-group", g) for g in request.multi.get("impersonate-group", [])]
        if self.upstream.token:
            headers.append(("authorization", f"Bearer {self.upstream.token}"))
        if upgrade:
            headers += [("connection", "Upgrade"), ("upgrade", upgrade)]
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        writer.write(conn.send(h11.Request(method=request.method, target=request.target,
                                           headers=[*headers, ("content-length", str(len(request.body)))])))
        writer.write(conn.send(h11.Data(data=request.body)) if request.body else b"")
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        event = await _next(conn, reader)
        if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            return await self._splice(request, event, conn, reader, writer)
        while isinstance(event, h11.InformationalResponse):
            event = await _next(conn, reader)
        if not isinstance(event, h11.Response):
            raise StatusError(502, f"kubernetes cluster {self.name!r} sent no response", "BadGateway")
        head = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        ctype = head.get("content-type", "application/json")
        length = head.get("content-length", "")
        if length.isdigit() and int(length) <= MAX_WHOLE:
            body = bytearray()
            while not isinstance(ev := await _next(conn, reader), h11.EndOfMessage):
                if isinstance(ev, h11.Data):
                    body += ev.data
            writer.close()
            extra = [(k, v) for k, v in head.items() if k in ("audit-id", "warning", "cache-control")]
            return khttp.Reply(event.status_code, bytes(body), ctype, extra)
        return khttp.Streamed(event.status_code, _chunks(conn, reader, writer), ctype)

    async def _splice(self, request: khttp.Request, event: h11.InformationalResponse, conn: h11.Connection,
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> khttp.Upgraded:
        assert request.reader is not None and request.writer is not None
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
        await khttp.switch_protocols(request, headers)
        extra, _ = conn.trailing_data
        if extra:
            request.writer.write(extra)
        if request.leftover:
            writer.write(request.leftover)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError, RuntimeError):
                if dst.can_write_eof():
                    dst.write_eof()

        try:
            await asyncio.gather(pump(request.reader, writer), pump(reader, request.writer))
        finally:
            writer.close()
        return khttp.Upgraded()


async def _next(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float = READ_TIMEOUT) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            async with asyncio.timeout(timeout):
                data = await reader.read(65536)
            conn.receive_data(data)
            continue
        if event is h11.PAUSED:
            return event
        if isinstance(event, h11.ConnectionClosed):
            raise StatusError(502, "the kubernetes cluster closed the connection mid-response", "BadGateway")
        return event


async def _chunks(conn: h11.Connection, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> AsyncIterator[bytes]:
    try:
        while True:
            try:
                event = await _next(conn, reader, STREAM_TIMEOUT)
            except (StatusError, TimeoutError, OSError, h11.ProtocolError):
                return
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
    finally:
        writer.close()
