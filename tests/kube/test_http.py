"""The emulated API's HTTP/1.1 loop (``tpemu.net.kube_http``) on a loopback socket: keep-alive,
chunked streams, the 3 MiB body limit (413 Status), malformed requests (400), idle clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from tpemu.agent.kube.api import status_reply
from tpemu.net import kube_http as khttp
from tpemu.net.kube_status import StatusError


async def handler(request: khttp.Request) -> khttp.Reply | khttp.Streamed:
    if request.path == "/stream":
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"{i}\n".encode()
        return khttp.Streamed(200, chunks())
    return khttp.Reply(200, json.dumps({"path": request.path, "len": len(request.body),
                                        "groups": request.multi.get("x-g", [])}).encode())


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, int]]:
    srv = await asyncio.start_server(lambda r, w: khttp.serve(r, w, handler, lambda c, m: status_reply(
        StatusError(c, m))), "127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[:2]
    srv.close()
    await srv.wait_closed()


async def exchange(addr: tuple[str, int], data: bytes, eof: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(data)
    await writer.drain()
    if eof:
        writer.write_eof()
    out = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return out


async def test_keep_alive_and_repeated_headers(server: tuple[str, int]) -> None:
    out = await exchange(server, b"GET /a HTTP/1.1\r\nHost: x\r\nX-G: one\r\nX-G: two\r\n\r\n"
                         b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
    assert out.count(b"HTTP/1.1 200") == 2
    assert b'"groups": ["one", "two"]' in out and b'"path": "/b", "len": 3' in out


async def test_chunked_stream(server: tuple[str, int]) -> None:
    out = await exchange(server, b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in out and out.endswith(b"2\r\n0\n\r\n2\r\n1\n\r\n2\r\n2\n\r\n0\r\n\r\n")


async def test_oversized_body_is_413_status(server: tuple[str, int]) -> None:
    out = await exchange(server, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4000000\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413")
    body = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert body["reason"] == "RequestEntityTooLarge" and body["message"] == "Request entity too large: limit is 3145728"


async def test_chunked_body_over_limit(server: tuple[str, int]) -> None:
    chunk = b"100000\r\n" + b"a" * 0x100000 + b"\r\n"
    out = await exchange(server, b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 4)
    assert out.startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize("data", [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                                  b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n"])
async def test_malformed_is_400_and_closed(server: tuple[str, int], data: bytes) -> None:
    out = await exchange(server, data)
    assert out.startswith(b"HTTP/1.1 400") and b'"kind": "Status"' in out


async def test_client_closing_early_is_quiet(server: tuple[str, int]) -> None:
    out = await exchange(server, b"GET / HTTP/1.1\r\nHost", eof=True)
    assert out == b"" or out.startswith(b"HTTP/1.1 400")
