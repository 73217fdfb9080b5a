"""A small HTTP/1.1 server loop over h11 and asyncio streams (glue).

h11 does the protocol (RFC 9112 framing, keep-alive, ``Connection: close``); this module owns
the I/O: a read deadline per request, a cap on the request head (h11's
``max_incomplete_event_size``) and on the body, and one error boundary per connection. Handlers
are ``async def app(request) -> Response``; raising :class:`HTTPError` answers with Teleport's
JSON error shape ``{"error": {"message": …}}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

from tpemu.errors import PeerFault

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
READ_CHUNK = 64 * 1024
#: Seconds a request (or an idle keep-alive connection) may take to arrive.
READ_TIMEOUT = 30.0

_REASONS = {200: b"OK", 201: b"Created", 204: b"No Content", 301: b"Moved Permanently", 400: b"Bad Request",
            401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
            408: b"Request Timeout", 409: b"Conflict", 413: b"Content Too Large", 429: b"Too Many Requests",
            500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable"}


class HTTPError(PeerFault):
    """An error answered to the client with ``status`` and a JSON body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    peer: str
    tls: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def json(self) -> Any:
        """The body parsed as JSON; :class:`HTTPError` 400 if it is not."""
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise HTTPError(400, f"request body is not valid JSON: {exc}") from None


#: Takes over a connection after a ``101 Switching Protocols`` answer: the reader, the writer,
#: and the bytes the client sent after its request (already read off the socket).
Upgrader = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: For a 101 answer: who owns the connection next (Go's ``http.Hijacker``).
    upgrade: Upgrader | None = None
    #: A body written as it is produced (server-sent events): the head goes out without a
    #: Content-Length, ``stream`` writes until it returns, then the connection closes.
    stream: Callable[[asyncio.StreamWriter], Awaitable[None]] | None = None

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Response:
        # Compact, as Teleport's handlers answer: lib/httplib MakeHandler → roundtrip.ReplyJSON
        # (gravitational/roundtrip reply.go: json.Marshal, no indent, no newline). It is also the
        # C encoder: ``indent`` makes Python's json fall back to its pure-Python one (/webapi/ping
        # 26 µs → 7 µs to encode, issue 13).
        return cls(status, json.dumps(obj, separators=(",", ":")).encode(), [("Content-Type", "application/json")])

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        # Indented, as Teleport's errors are (trace.WriteError: json.MarshalIndent).
        body = json.dumps({"error": {"message": message}}, indent=2).encode() + b"\n"
        return cls(status, body, [("Content-Type", "application/json")])

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> Response:
        return cls(status, text.encode(), [("Content-Type", content_type)])


App = Callable[[Request], Awaitable[Response]]


async def serve_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, app: App, *,
                     peer: str, tls: dict[str, Any] | None = None, read_timeout: float = READ_TIMEOUT,
                     max_body: int = MAX_BODY, max_requests: int = 1000,
                     server_header: str = "tpemu") -> None:
    """Serve HTTP/1.1 requests on one connection until the client closes or must be closed."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    upgraded = False
    try:
        for _ in range(max_requests):
            try:
                request = await _read_request(conn, reader, read_timeout, max_body, peer, tls or {})
            except TimeoutError:
                if conn.their_state is not h11.IDLE and conn.our_state is h11.SEND_RESPONSE:
                    await _send(conn, writer, Response.error(408, "request not completed in time"),
                                server_header, close=True)
                return
            except HTTPError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _send(conn, writer, Response.error(exc.status, exc.message), server_header, close=True)
                return
            if request is None:
                return
            try:
                response = await app(request)
            except HTTPError as exc:
                response = Response.error(exc.status, exc.message)
            except Exception:
                log.exception("handler for %s %s failed", request.method, request.path)
                response = Response.error(500, "internal error in tpemu (see the proxy log)")
            if response.stream is not None:
                await _stream(writer, response, server_header)
                return
            if response.upgrade is not None:
                await _switch(conn, writer, response)
                upgraded = True  # the upgrade handler owns the connection now (it may outlive us)
                await response.upgrade(reader, writer, conn.trailing_data[0])
                return
            await _send(conn, writer, response, server_header)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        if not upgraded:
            writer.close()


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float,
                        max_body: int, peer: str, tls: dict[str, Any]) -> Request | None:
    head: h11.Request | None = None
    body = bytearray()
    async with asyncio.timeout(timeout):
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise HTTPError(exc.error_status_hint, f"bad HTTP request: {exc}") from None
            if event is h11.NEED_DATA:
                data = await reader.read(READ_CHUNK)
                if not data and head is None and conn.their_state is h11.IDLE:
                    return None  # keep-alive connection closed between requests
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_body:
                    raise HTTPError(413, f"request body exceeds {max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return Request(
                    head.method.decode("ascii"), head.target.decode("ascii", "replace"),
                    [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in head.headers],
                    bytes(body), peer, tls)
            elif isinstance(event, h11.ConnectionClosed):
                return None


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, response: Response, server: str,
                close: bool = False) -> None:
    headers = [("Server", server), ("Content-Length", str(len(response.body))), *response.headers]
    if close:
        headers.append(("Connection", "close"))
    reason = _REASONS.get(response.status, b"")
    data = conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
    if response.body:
        data = (data or b"") + (conn.send(h11.Data(data=response.body)) or b"")
    data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
    writer.write(data)
    await writer.drain()


async def _switch(conn: h11.Connection, writer: asyncio.StreamWriter, response: Response) -> None:
    # Written by hand, not through h11: h11 only switches when the request carried ``Upgrade``,
    # and a load balancer may have removed that header (Teleport sends ``X-Teleport-Upgrade``
    # as well for that reason: lib/web/conn_upgrade.go, writeUpgradeResponse).
    lines = [b"HTTP/1.1 101 Switching Protocols"]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in response.headers]
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
    await writer.drain()


async def _stream(writer: asyncio.StreamWriter, response: Response, server: str) -> None:
    # Written by hand: h11 would frame the body (chunked), which EventSource accepts too, but
    # a close-delimited body is the plainest form of a never-ending response.
    assert response.stream is not None
    lines = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, b'').decode()}".encode(),
             f"Server: {server}".encode(), b"Connection: close", b"Cache-Control: no-cache"]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in response.headers]
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
    await writer.drain()
    await response.stream(writer)
