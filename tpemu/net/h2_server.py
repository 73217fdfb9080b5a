"""HTTP/2 for the proxy's TLS routes that negotiate ``h2``, over the ``h2`` library (glue).

Teleport serves HTTP/2 wherever Go's ``net/http`` or ``grpc-go`` sits behind a route: the web API
(``h2`` in ``SupportedProtocols``), the join service (``teleport-proxy-grpc``), the proxy gRPC
services (``teleport-proxy-grpc-mtls``, ``teleport-proxy-ssh-grpc``). tpemu does not run Teleport's
gRPC services, so a gRPC call gets a real gRPC status (RFC 9113 framing by ``h2``; gRPC's
"Trailers-Only" response: one HEADERS frame with ``:status 200``, ``content-type:
application/grpc``, ``grpc-status`` and ``grpc-message``, END_STREAM — see grpc's
``doc/PROTOCOL-HTTP2.md``). Plain HTTP/2 requests go to the same ``Request → Response`` handler
the HTTP/1.1 server uses.

Limits: a request body of :data:`MAX_BODY`, at most :data:`MAX_STREAMS` concurrent streams, an
idle deadline per connection; a protocol error ends the connection with GOAWAY (by ``h2``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from enum import IntEnum
from urllib.parse import quote

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from tpemu.net.http_server import HTTPError, Request, Response

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
MAX_STREAMS = 100
IDLE_TIMEOUT = 30.0
READ_CHUNK = 64 * 1024


class GrpcStatus(IntEnum):
    """gRPC status codes (``google.golang.org/grpc/codes``)."""

    OK = 0
    UNIMPLEMENTED = 12
    UNAVAILABLE = 14


#: Answers a gRPC call: ``(status, message)`` from the ``:path`` (``/pkg.Service/Method``).
GrpcAnswer = Callable[[str], tuple[GrpcStatus, str]]
HttpApp = Callable[[Request], Awaitable[Response]]


def grpc_trailers_only(status: GrpcStatus, message: str) -> list[tuple[str, str]]:
    """The header block of a gRPC Trailers-Only response (``grpc-message`` percent-encoded)."""
    return [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", str(int(status))),
            ("grpc-message", quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"))]


def is_grpc(headers: list[tuple[str, str]]) -> bool:
    ctype = next((v for k, v in headers if k == "content-type"), "")
    return ctype.startswith("application/grpc")


class _Stream:
    __slots__ = ("body", "headers", "too_big")

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers
        self.body = bytearray()
        self.too_big = False


async def serve_h2(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, peer: str,
                   grpc: GrpcAnswer, app: HttpApp | None = None, what: str = "h2",
                   idle_timeout: float = IDLE_TIMEOUT) -> None:
    """Serve one HTTP/2 connection until the client goes away (or idles past the deadline)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.local_settings = h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS})
    conn.initiate_connection()
    streams: dict[int, _Stream] = {}
    pending: set[asyncio.Task[None]] = set()

    def flush() -> None:
        data = conn.data_to_send()
        if data:
            writer.write(data)

    async def answer(stream_id: int, st: _Stream) -> None:
        headers = st.headers
        path = next((v for k, v in headers if k == ":path"), "/")
        if is_grpc(headers):
            status, message = grpc(path)
            log.info("%s %s: gRPC %s answered %s: %s", what, peer, path, status.name, message)
            conn.send_headers(stream_id, grpc_trailers_only(status, message), end_stream=True)
            flush()
            return
        if app is None:
            resp = Response(404, b"not found\n", [("content-type", "text/plain; charset=utf-8")])
        elif st.too_big:
            resp = Response.error(413, f"request body larger than {MAX_BODY} bytes")
        else:
            method = next((v for k, v in headers if k == ":method"), "GET")
            authority = next((v for k, v in headers if k == ":authority"), "")
            plain = [(k, v) for k, v in headers if not k.startswith(":")]
            if authority:
                plain.append(("host", authority))
            try:
                resp = await app(Request(method, path, plain, bytes(st.body), peer, {"alpn": "h2"}))
            except HTTPError as exc:
                resp = Response.error(exc.status, exc.message)
        out = [(":status", str(resp.status))]
        out += [(k.lower(), v) for k, v in resp.headers if k.lower() not in ("connection", "transfer-encoding",
                                                                            "content-length")]
        out.append(("content-length", str(len(resp.body))))
        try:
            conn.send_headers(stream_id, out, end_stream=not resp.body)
            if resp.body:
                # Small bodies only (the web API's JSON): the flow-control window (64 KiB) covers them.
                size = min(len(resp.body), conn.local_flow_control_window(stream_id))
                conn.send_data(stream_id, resp.body[:size], end_stream=size == len(resp.body))
                if size < len(resp.body):
                    conn.reset_stream(stream_id)
        except h2.exceptions.H2Error:
            return
        flush()

    flush()
    try:
        while True:
            try:
                data = await asyncio.wait_for(reader.read(READ_CHUNK), idle_timeout)
            except TimeoutError:
                conn.close_connection()
                flush()
                break
            if not data:
                break
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                log.info("%s %s: HTTP/2 protocol error, GOAWAY sent: %s", what, peer, exc)
                flush()
                break
            for event in events:
                if isinstance(event, h2.events.RequestReceived):
                    streams[event.stream_id] = _Stream([(str(k), str(v)) for k, v in event.headers])
                elif isinstance(event, h2.events.DataReceived):
                    st = streams.get(event.stream_id)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    if st is not None:
                        if len(st.body) + len(event.data) > MAX_BODY:
                            st.too_big = True
                        else:
                            st.body += event.data
                elif isinstance(event, h2.events.StreamEnded):
                    st = streams.pop(event.stream_id, None)
                    if st is not None:
                        task = asyncio.get_running_loop().create_task(answer(event.stream_id, st))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                elif isinstance(event, h2.events.StreamReset):
                    streams.pop(event.stream_id, None)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    flush()
                    return
            flush()
            await writer.drain()
    except (OSError, ConnectionError) as exc:
        log.debug("%s %s: connection lost: %s", what, peer, exc)
    finally:
        for task in list(pending):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(OSError, ConnectionError):
            flush()
            writer.close()
