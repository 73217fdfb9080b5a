"""The web route over real TLS on loopback: what its HTTP server does from the handshake on.

Since issue 13 a web connection is a protocol object and a timer until the client's first bytes
arrive (``tpemu.net.tls.accept_first_bytes``); these tests pin what must not change with that:
keep-alive, pipelining, the idle and request deadlines, size limits, h2 by ALPN, the client going
away at any moment, and no descriptor or handler left behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
from typing import Any

import pytest

from tests.conftest import ProxyFactory, eventually, wait_closed, web_port
from tests.helpers import unverified_client_context
from tpemu.proxy.service import ProxyService

pytestmark = pytest.mark.both_loops

PING = b"GET /webapi/ping HTTP/1.1\r\nHost: localhost\r\n\r\n"


client_ctx = unverified_client_context


async def connect(svc: ProxyService, alpn: list[str] | None = None) -> tuple[asyncio.StreamReader,
                                                                            asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", web_port(svc), ssl=client_ctx(alpn),
                                         server_hostname="localhost")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length (bounded by a deadline)."""
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settled(svc: ProxyService) -> None:
    """Every web handler has ended (the door's count of running handlers is back to zero)."""
    await eventually(lambda: svc.door.stats.active == 0, 10, "web handlers ended")


async def test_keep_alive_and_pipelined_requests(proxy_factory: ProxyFactory) -> None:
    svc = await proxy_factory()
    reader, writer = await connect(svc)
    await asyncio.sleep(0.05)  # the request comes after the handshake, not with the client's Finished
    for _ in range(3):  # keep-alive: one connection, one request after another
        writer.write(PING)
        status, headers, body = await read_response(reader)
        assert status == 200 and json.loads(body)["cluster_name"] == "tpemu.local"
        assert headers.get("connection") != "close"
    # Pipelined: three requests in one write, three answers in order, then Connection: close.
    writer.write(PING + b"GET /webapi/nope HTTP/1.1\r\nHost: x\r\n\r\n"
                 + b"GET /webapi/find HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answers = [await read_response(reader) for _ in range(3)]
    assert [a[0] for a in answers] == [200, 404, 200]
    assert json.loads(answers[2][2])["auth"]["type"] == "" and answers[2][1]["connection"] == "close"
    assert await wait_closed(reader) == b""
    writer.close()


async def test_request_sent_with_the_handshake_and_in_dribbles(proxy_factory: ProxyFactory) -> None:
    svc = await proxy_factory()
    # At once (often in the same read as the client's Finished), and one byte at a time: the
    # first bytes build the streams, every later byte must reach the same request.
    reader, writer = await connect(svc)
    writer.write(PING)
    assert (await read_response(reader))[0] == 200
    for byte in PING:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.001)
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_idle_and_incomplete_requests_meet_their_deadlines(proxy_factory: ProxyFactory,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tpemu.proxy import web_route

    monkeypatch.setattr(web_route, "READ_TIMEOUT", 0.5)
    svc = await proxy_factory()
    loop = asyncio.get_running_loop()
    # Nothing after the handshake: closed after the idle deadline, with close_notify (a clean EOF).
    reader, writer = await connect(svc)
    t0 = loop.time()
    assert await wait_closed(reader, timeout=10) == b""
    assert 0.4 < loop.time() - t0 < 8
    writer.close()
    # Half a request head: closed without an answer once the request deadline passes.
    reader, writer = await connect(svc)
    writer.write(b"GET /webapi/ping HTTP/1.1\r\nHost: loc")
    t0 = loop.time()
    assert await wait_closed(reader, timeout=10) == b""
    assert 0.4 < loop.time() - t0 < 8
    writer.close()
    # A whole head and half its body: 408.
    reader, writer = await connect(svc)
    writer.write(b"POST /webapi/ping HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    status, _, body = await read_response(reader)
    assert status == 408 and "not completed in time" in json.loads(body)["error"]["message"]
    writer.close()
    # A keep-alive connection idle after its answer: closed too.
    reader, writer = await connect(svc)
    writer.write(PING)
    assert (await read_response(reader))[0] == 200
    assert await wait_closed(reader, timeout=10) == b""
    writer.close()
    await settled(svc)


async def test_oversized_head_and_garbage_get_errors_not_tracebacks(proxy_factory: ProxyFactory,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    svc = await proxy_factory()
    caplog.set_level(logging.DEBUG)
    reader, writer = await connect(svc)
    writer.write(b"GET /webapi/ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status == 431 and headers["connection"] == "close"
    assert "bad HTTP request" in json.loads(body)["error"]["message"]
    writer.close()
    reader, writer = await connect(svc)
    writer.write(b"\x00\x01garbage that is not HTTP\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status == 400 and "bad HTTP request" in json.loads(body)["error"]["message"]
    writer.close()
    await settled(svc)
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"


async def test_h2_is_still_chosen_by_alpn(proxy_factory: ProxyFactory) -> None:
    import h2.connection
    import h2.events

    svc = await proxy_factory()
    reader, writer = await connect(svc, ["h2"])
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"),
                          (":path", "/webapi/ping")], end_stream=True)
    writer.write(conn.data_to_send())
    status, body, ended = "", bytearray(), False
    async with asyncio.timeout(10):
        while not ended:
            data = await reader.read(65536)
            assert data, "closed before the answer"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"].decode()
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            writer.write(conn.data_to_send())
    assert status == "200" and json.loads(body)["cluster_name"] == "tpemu.local"
    writer.close()


def _half_close_after_request(port: int) -> bytes:
    """A TLS client (memory BIOs over a blocking socket) that sends a request, then a TCP FIN
    without close_notify, and returns whatever it can still decrypt before the server closes."""
    ctx = client_ctx()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(out.read())
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the handshake") from None
                inc.write(data)
        sock.sendall(out.read())
        tls.write(PING)
        sock.sendall(out.read())
        sock.shutdown(socket.SHUT_WR)
        got = bytearray()
        while data := sock.recv(65536):
            inc.write(data)
            try:
                while chunk := tls.read(65536):
                    got += chunk
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
        return bytes(got)


async def test_client_gone_at_every_moment_leaves_nothing(proxy_factory: ProxyFactory,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    svc = await proxy_factory()
    port = web_port(svc)
    caplog.set_level(logging.DEBUG)
    # Warm up (contexts, lazy imports, the loop's own descriptors), then count.
    reader, writer = await connect(svc)
    writer.write(PING)
    await read_response(reader)
    writer.close()
    await settled(svc)
    before = open_fds()

    def reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    for _ in range(5):
        # Handshake only, then a clean close (what openssl s_time -new does).
        reader, writer = await connect(svc)
        writer.close()
        # Handshake, then a reset before any byte.
        reader, writer = await connect(svc)
        reset(writer)
        # A request, then a reset before the answer is read (client gone mid-response).
        reader, writer = await connect(svc)
        writer.write(PING * 50)
        await writer.drain()
        reset(writer)
        # A TCP connection that goes away during the handshake.
        raw = socket.create_connection(("127.0.0.1", port))
        raw.sendall(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00")  # a truncated ClientHello
        raw.close()
    # A request and then a TCP half-close without close_notify: the TLS stack takes the FIN as the
    # end of the connection (uvloop's SSLProtocol, as on main before issue 13); it must end, cleanly.
    got = await asyncio.to_thread(_half_close_after_request, port)
    assert got == b"" or got.startswith(b"HTTP/1.1 200 ")
    await settled(svc)
    await eventually(lambda: open_fds() <= before, 10, f"descriptors back to {before}")
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"
    # And the proxy still serves.
    reader, writer = await connect(svc)
    writer.write(PING)
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_close_ends_idle_web_connections(proxy_factory: ProxyFactory) -> None:
    svc = await proxy_factory()
    idle = [await connect(svc) for _ in range(3)]  # handshaken, nothing sent
    served = await connect(svc)
    served[1].write(PING)
    await read_response(served[0])  # and one idle between requests
    # And one in the middle of its handshake (a ClientHello whose handshake the client never finishes).
    hello_only = socket.create_connection(("127.0.0.1", web_port(svc)))
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    with pytest.raises(ssl.SSLWantReadError):
        client_ctx().wrap_bio(inc, out, server_hostname="localhost").do_handshake()
    hello_only.sendall(out.read())
    await eventually(lambda: svc.door.stats.active == 5, 10, "five web connections")
    await svc.close()
    await eventually(lambda: svc.door.stats.active == 0, 10, "every web connection ended")
    hello_only.settimeout(10)
    while await asyncio.to_thread(hello_only.recv, 65536):  # the server's flight, then its close
        pass
    hello_only.close()
    for reader, writer in [*idle, served]:
        assert await wait_closed(reader, timeout=10) == b""
        writer.close()


async def test_a_hundred_concurrent_connections(proxy_factory: ProxyFactory) -> None:
    svc = await proxy_factory()

    async def one(i: int) -> Any:
        reader, writer = await connect(svc)
        if i % 2:
            writer.write(PING)
            status = (await read_response(reader))[0]
        else:
            status = 0
        writer.close()
        return status

    statuses = await asyncio.gather(*(one(i) for i in range(100)))
    assert statuses.count(200) == 50 and statuses.count(0) == 50
    await settled(svc)
