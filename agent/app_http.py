"""Streaming HTTP/1.1 relay between an app connection (the tunnel channel) and an HTTP application.

Teleport's app agent forwards with Go's ``httputil.ReverseProxy`` (``lib/srv/app`` transport,
``lib/httplib/reverseproxy``): bodies stream both ways, never held whole. Here, per request on
the client's keep-alive connection: the request head is read (at most :data:`MAX_HEAD`, within a
deadline), its headers rewritten by the caller (``teleport-jwt-assertion``, ``X-Forwarded-*``),
a fresh connection to the application carries the request, the request body is passed on as it
arrives (``Content-Length`` kept, else chunked), then the response head and body flow back the
same way. Every read has a deadline; a failure before the response head becomes a 502 with a
text reason, after it the connection is closed (the client sees a truncated body, as with Go).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import h11

from tpemu.errors import PeerFault

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
CHUNK = 65536
IDLE_TIMEOUT = 120.0
BACKEND_TIMEOUT = 30.0
MAX_REQUESTS = 1000
_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                  "transfer-encoding", "upgrade", "content-length"})

#: The caller's header rewrite: (incoming headers without hop-by-hop ones) → headers to send.
Rewrite = Callable[[list[tuple[str, str]]], Awaitable[list[tuple[str, str]] | str]]
#: The caller's response-head rewrite: (status, headers) → headers (``rewrite.redirect``).
ResponseRewrite = Callable[[int, list[tuple[str, str]]], list[tuple[str, str]]]


class Closed(PeerFault):
    """The client or the application closed its side mid-message (a peer fault: nothing to retry here)."""


async def _event(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        async with asyncio.timeout(timeout):
            data = await reader.read(CHUNK)
        conn.receive_data(data)


def _text(conn: h11.Connection, status: int, message: str) -> bytes:
    body = message.encode()
    return (conn.send(h11.Response(status_code=status, headers=[
        ("content-type", "text/plain; charset=utf-8"), ("content-length", str(len(body))),
        ("connection", "close")])) or b"") + (conn.send(h11.Data(data=body)) or b"") + (
        conn.send(h11.EndOfMessage()) or b"")


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, uri: str, rewrite: Rewrite,
                insecure_skip_verify: bool = False, name: str = "app",
                response: ResponseRewrite | None = None) -> None:
    """Serve the client's requests on ``reader``/``writer`` by relaying each to ``uri``."""
    client = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        for _ in range(MAX_REQUESTS):
            try:
                event = await _event(client, reader, IDLE_TIMEOUT)
            except h11.RemoteProtocolError as exc:
                if client.our_state is h11.SEND_RESPONSE or client.our_state is h11.IDLE:
                    writer.write(_text(client, 400, f"malformed HTTP request: {exc}\n"))
                return
            if not isinstance(event, h11.Request):
                return
            if not await _one(client, event, reader, writer, uri, rewrite, insecure_skip_verify, name, response):
                return
            if client.our_state is not h11.DONE or client.their_state is not h11.DONE:
                return
            client.start_next_cycle()
    except (ConnectionError, OSError, TimeoutError, h11.ProtocolError, Closed) as exc:
        log.info("app %s: connection ended: %s", name, exc or type(exc).__name__)
    finally:
        writer.close()


async def _one(client: h11.Connection, req: h11.Request, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter, uri: str, rewrite: Rewrite, insecure: bool, name: str,
               response: ResponseRewrite | None = None) -> bool:
    incoming = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in req.headers]
    length = next((v for k, v in incoming if k == "content-length"), None)
    chunked = any(k == "transfer-encoding" for k, _ in incoming)
    headers = await rewrite([(k, v) for k, v in incoming if k not in _HOP])
    if isinstance(headers, str):  # refused by the caller: the reason
        writer.write(_text(client, 502, headers))
        return False
    target = urlsplit(uri)
    tls: ssl.SSLContext | None = None
    if target.scheme == "https":
        tls = ssl.create_default_context()
        if insecure:
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(BACKEND_TIMEOUT):
            b_reader, b_writer = await asyncio.open_connection(target.hostname, target.port or (443 if tls else 80),
                                                               ssl=tls)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        log.warning("app %s (%s) unreachable: %s", name, uri, exc)
        writer.write(_text(client, 502, f"application {name!r} is unreachable: {exc or 'timeout'}\n"))
        return False
    backend = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    try:
        framing = [("content-length", length)] if length is not None else (
            [("transfer-encoding", "chunked")] if chunked else [])
        # The caller's Host (the app's own, or a rewrite.headers "Host"), else the app's.
        host = next((v for k, v in headers if k == "host"), target.netloc)
        out = [("host", host), *[(k, v) for k, v in headers if k != "host"], *framing, ("connection", "close")]
        b_writer.write(backend.send(h11.Request(method=req.method, target=req.target, headers=out)) or b"")
        # The request body, as it arrives.
        while True:
            event = await _event(client, reader, BACKEND_TIMEOUT)
            if isinstance(event, h11.Data):
                b_writer.write(backend.send(h11.Data(data=event.data)) or b"")
                await b_writer.drain()
            elif isinstance(event, h11.EndOfMessage):
                b_writer.write(backend.send(h11.EndOfMessage()) or b"")
                await b_writer.drain()
                break
            else:
                raise Closed("the client went away mid-request")
        try:
            head = await _event(backend, b_reader, BACKEND_TIMEOUT)
            while isinstance(head, h11.InformationalResponse):
                head = await _event(backend, b_reader, BACKEND_TIMEOUT)
        except (OSError, TimeoutError, h11.ProtocolError) as exc:
            log.warning("app %s (%s) failed: %s", name, uri, exc)
            writer.write(_text(client, 502, f"application {name!r} did not answer: {exc or 'timeout'}\n"))
            return False
        if not isinstance(head, h11.Response):
            writer.write(_text(client, 502, f"application {name!r} closed the connection without answering\n"))
            return False
        resp_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers
                        if k.decode("latin-1").lower() not in _HOP or k.decode("latin-1").lower() == "content-length"]
        if response is not None:
            resp_headers = response(head.status_code, resp_headers)
        writer.write(client.send(h11.Response(status_code=head.status_code, headers=resp_headers,
                                              reason=head.reason)) or b"")
        # The response body, as it arrives.
        while True:
            event = await _event(backend, b_reader, IDLE_TIMEOUT)
            if isinstance(event, h11.Data):
                writer.write(client.send(h11.Data(data=event.data)) or b"")
                await writer.drain()
            elif isinstance(event, h11.EndOfMessage):
                writer.write(client.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                return True
            else:
                raise Closed("the application closed the connection mid-response")
    finally:
        b_writer.close()
        with contextlib.suppress(OSError, TimeoutError, ConnectionError, ssl.SSLError):
            await asyncio.wait_for(b_writer.wait_closed(), 2.0)
