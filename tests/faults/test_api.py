"""The toxiproxy-compatible fault API, driven by the real ``toxiproxy-python`` client package.

Shapes and toxic behaviour from Shopify/toxiproxy (api.go, toxics/*.go). Every measurement has a
bound; nothing sleeps waiting for another process.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from tpemu.faults.api import FaultAPI

toxiproxy = pytest.importorskip("toxiproxy", reason="toxiproxy-python is a test dependency (pip install -e .[test])")


async def _echo() -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.fixture
async def api() -> AsyncIterator[tuple[FaultAPI, str]]:
    echo = await _echo()
    up = echo.sockets[0].getsockname()
    fault = FaultAPI()
    addr = await fault.serve("127.0.0.1", 0)
    from toxiproxy.api import APIConsumer

    APIConsumer.host, APIConsumer.port = addr.split(":")[0], int(addr.split(":")[1])
    try:
        yield fault, f"{up[0]}:{up[1]}"
    finally:
        await fault.close()
        echo.close()


def _roundtrip(addr: str, payload: bytes = b"ping", timeout: float = 5.0) -> tuple[bytes, float]:
    host, port = addr.rsplit(":", 1)
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    return got, time.monotonic() - t0


async def test_toxiproxy_python_drives_latency_limit_reset_and_enable(api: tuple[FaultAPI, str]) -> None:
    _, upstream = api
    server = toxiproxy.Toxiproxy()

    def scenario() -> None:
        assert server.running() and server.version() == b"2.9.0"
        proxy = server.create(upstream=upstream, name="pg")
        with pytest.raises(toxiproxy.exceptions.ProxyExists):
            server.create(upstream=upstream, name="pg")
        listen = server.get_proxy("pg").listen
        assert _roundtrip(listen)[0] == b"ping"
        proxy.add_toxic(type="latency", attributes={"latency": 300})
        got, took = _roundtrip(listen)
        assert got == b"ping" and took >= 0.3, took
        assert set(proxy.toxics()) == {"latency_downstream"}
        proxy.destroy_toxic("latency_downstream")
        proxy.add_toxic(type="limit_data", stream="downstream", attributes={"bytes": 3})
        assert _roundtrip(listen, b"abcdef")[0] == b"abc"
        proxy.destroy_toxic("limit_data_downstream")
        proxy.add_toxic(type="reset_peer", attributes={"timeout": 0})
        with pytest.raises(ConnectionResetError):
            for _ in range(3):
                _roundtrip(listen)
        server.reset()
        assert _roundtrip(listen)[0] == b"ping" and proxy.toxics() == {}
        with proxy.down(), pytest.raises(OSError):
            _roundtrip(listen, timeout=1)
        assert _roundtrip(listen)[0] == b"ping"
        proxy.destroy()
        assert server.proxies() == {}

    await asyncio.to_thread(scenario)


async def test_bandwidth_slicer_timeout(api: tuple[FaultAPI, str]) -> None:
    fault, upstream = api
    proxy = await fault.add_proxy("x", "127.0.0.1:0", upstream)
    from tpemu.faults.toxics import parse_toxic

    proxy.toxics["bw"] = parse_toxic({"name": "bw", "type": "bandwidth", "attributes": {"rate": 100}})  # 100 KB/s
    got, took = await asyncio.to_thread(_roundtrip, proxy.listen, b"x" * 50_000)
    assert len(got) == 50_000 and took >= 0.45, took
    proxy.toxics.clear()
    proxy.toxics["sl"] = parse_toxic({"name": "sl", "type": "slicer",
                                      "attributes": {"average_size": 10, "size_variation": 0, "delay": 20_000}})
    got, took = await asyncio.to_thread(_roundtrip, proxy.listen, b"y" * 100)
    assert got == b"y" * 100 and took >= 0.18, took  # 10 slices, 20 ms apart
    proxy.toxics.clear()
    proxy.toxics["to"] = parse_toxic({"name": "to", "type": "timeout", "attributes": {"timeout": 200}})
    await proxy.notify()
    t0 = time.monotonic()
    got, _ = await asyncio.to_thread(_roundtrip, proxy.listen, b"z")
    assert got == b"" and 0.15 <= time.monotonic() - t0 < 3  # no data; closed after the timeout
