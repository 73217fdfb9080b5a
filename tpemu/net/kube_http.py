"""HTTP/1.1 for Kubernetes API requests: whole, streamed (watch, log follow) and upgraded (exec) answers.

Served by the emulated API, by the Kubernetes Service in front of it, and by the proxy when it
relays per request to a directly joined Kubernetes Service (so it lives in :mod:`tpemu.net`, which
every service may import).

h11 does RFC 9112 (keep-alive, chunked framing, ``Connection: Upgrade``); this module owns the I/O,
with the limits of the real API server: request heads up to 64 KiB, bodies up to 3 MiB
(``maxRequestBodyBytes`` of ``k8s.io/apiserver``: larger ones get ``413`` with a ``Status``), a
deadline for every read, and a handler that either returns a :class:`Reply`, a :class:`Streamed`
answer (chunked transfer encoding, flushed per chunk), or :class:`Upgraded` after taking the
connection over (the WebSocket of ``exec``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h11

from tpemu.errors import PeerFault

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
MAX_BODY = 3 * 1024 * 1024
IDLE_TIMEOUT = 120.0
BODY_TIMEOUT = 30.0


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    #: Headers that may repeat (``Impersonate-Group``), all values in order, lower-case names.
    multi: dict[str, list[str]]
    body: bytes = b""
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    #: Bytes read after the request head that belong to an upgraded protocol.
    leftover: bytes = b""
    path: str = field(init=False)
    query: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.target)
        self.path = parts.path
        self.query = parse_qs(parts.query, keep_blank_values=True)

    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return self.arg(name).lower() in ("1", "true", "yes")


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Streamed:
    status: int
    chunks: AsyncIterator[bytes]
    content_type: str = "application/json"


class Upgraded:
    """The handler took the connection over (a 101 was sent); the loop ends."""


class TooLarge(PeerFault):
    pass


Handler = Callable[[Request], Awaitable[Reply | Streamed | Upgraded]]
#: Builds the reply for a request the loop itself refuses (too large, malformed).
ErrorReply = Callable[[int, str], Reply]


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler,
                error_reply: ErrorReply, peer: str = "") -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        while True:
            try:
                request = await _read_request(conn, reader)
            except TooLarge:
                await _send(conn, writer, error_reply(413, f"Request entity too large: limit is {MAX_BODY}"),
                            close=True)
                await _discard(reader)
                return
            except h11.RemoteProtocolError as exc:
                log.info("kube api %s: malformed HTTP request: %s", peer, exc)
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _send(conn, writer, error_reply(400, f"malformed HTTP request: {exc}"), close=True)
                return
            except TimeoutError:
                return
            if request is None:
                return
            request.reader, request.writer = reader, writer
            upgrade = conn.their_state is h11.MIGHT_SWITCH_PROTOCOL  # type: ignore[attr-defined]
            if upgrade:
                request.leftover, _ = conn.trailing_data
            answer = await handler(request)
            if isinstance(answer, Upgraded):
                return
            if upgrade:
                # The handler declined the upgrade: answer, and end (h11 cannot go back).
                await _send(conn, writer, answer if isinstance(answer, Reply) else error_reply(
                    400, "upgrade declined"), close=True)
                return
            if isinstance(answer, Reply):
                await _send(conn, writer, answer)
            else:
                await _stream(conn, writer, answer)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        if not writer.is_closing():
            writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 2.0)
        except (OSError, TimeoutError, ConnectionError):
            pass


async def _discard(reader: asyncio.StreamReader, limit: int = 2 * MAX_BODY, timeout: float = 1.0) -> None:
    """Read (and drop) what the client is still sending, so that closing does not reset the
    connection before it has read the answer (a lingering close, bounded in bytes and time)."""
    seen = 0
    try:
        async with asyncio.timeout(timeout):
            while seen < limit and (chunk := await reader.read(65536)):
                seen += len(chunk)
    except (TimeoutError, OSError, ConnectionError):
        pass


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> Request | None:
    head: h11.Request | None = None
    body = bytearray()
    timeout = IDLE_TIMEOUT
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            async with asyncio.timeout(timeout):
                data = await reader.read(65536)
            conn.receive_data(data)
            if not data and head is None and conn.their_state is h11.IDLE:
                return None
            continue
        if isinstance(event, h11.Request):
            head = event
            timeout = BODY_TIMEOUT
            length = dict(event.headers).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > MAX_BODY:
                raise TooLarge()
            continue
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise TooLarge()
            continue
        if isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
            assert head is not None
            headers: dict[str, str] = {}
            multi: dict[str, list[str]] = {}
            for name, value in head.headers:
                n, v = name.decode("latin-1").lower(), value.decode("latin-1")
                headers[n] = f"{headers[n]}, {v}" if n in headers else v
                multi.setdefault(n, []).append(v)
            return Request(head.method.decode("ascii"), head.target.decode("latin-1"), headers, multi, bytes(body))
        if isinstance(event, h11.ConnectionClosed):
            return None


async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, reply: Reply, close: bool = False) -> None:
    headers = [("Content-Type", reply.content_type), ("Content-Length", str(len(reply.body))),
               ("Cache-Control", "no-cache, private"), *reply.headers]
    if close:
        headers.append(("Connection", "close"))
    data = conn.send(h11.Response(status_code=reply.status, headers=headers))
    assert data is not None
    writer.write(data)
    body = conn.send(h11.Data(data=reply.body))
    end = conn.send(h11.EndOfMessage())
    writer.write((body or b"") + (end or b""))
    await writer.drain()


async def _stream(conn: h11.Connection, writer: asyncio.StreamWriter, answer: Streamed) -> None:
    headers = [("Content-Type", answer.content_type), ("Transfer-Encoding", "chunked"),
               ("Cache-Control", "no-cache, private")]
    head = conn.send(h11.Response(status_code=answer.status, headers=headers))
    assert head is not None
    writer.write(head)
    await writer.drain()
    try:
        async for chunk in answer.chunks:
            if chunk:
                data = conn.send(h11.Data(data=chunk))
                writer.write(data or b"")
                await writer.drain()
    finally:
        aclose = getattr(answer.chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    end = conn.send(h11.EndOfMessage())
    writer.write(end or b"")
    await writer.drain()


async def switch_protocols(request: Request, headers: list[tuple[str, str]]) -> None:
    """Answer ``101 Switching Protocols`` on an upgrade request (the caller then owns the stream)."""
    assert request.writer is not None
    lines = ["HTTP/1.1 101 Switching Protocols", *(f"{k}: {v}" for k, v in headers), "", ""]
    request.writer.write("\r\n".join(lines).encode("latin-1"))
    await request.writer.drain()
