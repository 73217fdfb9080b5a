"""Dialing through HTTP CONNECT: a scripted proxy for the error cases, squid and tinyproxy for real."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests import realservers
from tpemu.net.dial import DialError, SSHTunnel, open_stream
from tpemu.net.proxyenv import from_environment

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler, host: str = "127.0.0.1") -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, host, 0)
    return server, int(server.sockets[0].getsockname()[1])


async def echo_banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"SSH-2.0-server-speaks-first\r\n")  # like sshd on 3024
    while data := await reader.read(1024):
        writer.write(data)
    writer.close()


def env_for(proxy: str, **extra: str) -> dict[str, str]:
    return {"HTTPS_PROXY": proxy, "TPEMU_PROXY_LOOPBACK": "yes", **extra}


async def test_scripted_connect_proxy_keeps_bytes_after_the_reply() -> None:
    target, tport = await serve(echo_banner)
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        up_r, up_w = await asyncio.open_connection("127.0.0.1", tport)
        banner = await up_r.readline()
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n" + banner)  # one segment: reply + banner

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(1024):
                w.write(data)
            w.close()

        await asyncio.gather(pump(reader, up_w), pump(up_r, writer))

    server, pport = await serve(proxy, "127.0.0.2")
    settings = from_environment(env_for(f"http://user:pw@127.0.0.2:{pport}"))
    reader, writer = await open_stream("127.0.0.1", tport, proxy=settings, timeout=5)
    assert await reader.readline() == b"SSH-2.0-server-speaks-first\r\n"
    writer.write(b"ping\n")
    assert await reader.readline() == b"ping\n"
    assert seen[0].startswith(f"CONNECT 127.0.0.1:{tport} HTTP/1.1\r\n".encode())
    assert b"Proxy-Authorization: Basic " + base64.b64encode(b"user:pw") in seen[0]
    writer.close()
    server.close()
    target.close()


@pytest.mark.parametrize("answer,message", [
    (b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", "refused: HTTP/1.1 407 Proxy Authentication Required"),
    (b"HTTP/1.1 403 Forbidden\r\n\r\n", "refused: HTTP/1.1 403 Forbidden"),
    (b"SSH-2.0-not-a-proxy\r\n\r\n", "not an HTTP answer"),
    (b"", "closed the connection before answering"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 20000, "exceed"),
])
async def test_proxy_errors_are_specific(answer: bytes, message: str) -> None:
    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        if not answer.endswith(b"y"):
            writer.close()

    server, pport = await serve(proxy, "127.0.0.2")
    with pytest.raises(DialError, match=message):
        await open_stream("127.0.0.1", 1, proxy=from_environment(env_for(f"127.0.0.2:{pport}")), timeout=5)
    server.close()


async def test_silent_proxy_times_out_and_direct_refusal() -> None:
    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    server, pport = await serve(proxy, "127.0.0.2")
    with pytest.raises(DialError, match=r"through proxy http://127.0.0.2:\d+: timed out after 0.3s"):
        await open_stream("127.0.0.1", 1, proxy=from_environment(env_for(f"127.0.0.2:{pport}")), timeout=0.3)
    server.close()
    with pytest.raises(DialError, match="cannot connect to 127.0.0.1:1"):
        await open_stream("127.0.0.1", 1, proxy=from_environment({}), timeout=5)


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["squid", "tinyproxy"])
async def test_real_connect_proxies(kind: str, tmp_path: Path) -> None:
    target, tport = await serve(echo_banner)
    ctx = realservers.squid(tmp_path) if kind == "squid" else realservers.tinyproxy(tmp_path)
    with ctx as proxy:
        settings = from_environment(env_for(proxy.url))
        reader, writer = await open_stream("127.0.0.1", tport, proxy=settings, timeout=10)
        assert await reader.readline() == b"SSH-2.0-server-speaks-first\r\n"
        writer.write(b"hello\n")
        assert await reader.readline() == b"hello\n"
        writer.close()
        await asyncio.sleep(0.3)
        # NO_PROXY host:port bypasses the proxy for that port only.
        direct = from_environment(env_for(proxy.url, NO_PROXY=f"127.0.0.1:{tport}"))
        reader, writer = await open_stream("127.0.0.1", tport, proxy=direct, timeout=10)
        assert await reader.readline() == b"SSH-2.0-server-speaks-first\r\n"
        writer.close()
        for _ in range(50):
            if f"127.0.0.1:{tport}" in proxy.log():
                break
            await asyncio.sleep(0.1)
        assert proxy.log().count(f"127.0.0.1:{tport}") >= 1
    target.close()


@pytest.mark.e2e
async def test_tinyproxy_basic_auth(tmp_path: Path) -> None:
    target, tport = await serve(echo_banner)
    with realservers.tinyproxy(tmp_path, basic_auth=("agent", "s3cret")) as proxy:
        with pytest.raises(DialError, match="407"):
            await open_stream("127.0.0.1", tport, proxy=from_environment(env_for(proxy.url)), timeout=10)
        good = from_environment(env_for(f"http://agent:s3cret@{proxy.host}:{proxy.port}"))
        reader, writer = await open_stream("127.0.0.1", tport, proxy=good, timeout=10)
        assert await reader.readline() == b"SSH-2.0-server-speaks-first\r\n"
        writer.close()
    target.close()


def test_ssh_tunnel_object_shape() -> None:
    t = SSHTunnel("127.0.0.1", 3080)
    assert hasattr(t, "create_connection")
