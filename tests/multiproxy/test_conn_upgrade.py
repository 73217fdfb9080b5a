"""ALPN connection upgrade on loopback: /webapi/connectionupgrade → 101 → the front door.

Behaviour checked against gravitational/teleport lib/web/conn_upgrade.go
(selectConnectionUpgrade, writeUpgradeResponse) and api/client/alpn_conn_upgrade.go
(upgradeConnThroughWebAPI, isALPNConnUpgradeRequiredByEnv).
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from tests.helpers import alice, ssh_cluster
from tpemu.client import ssh as ssh_mod
from tpemu.net import conn_upgrade
from tpemu.net.channel import open_streams
from tpemu.net.pipe import park_streams
from tpemu.net.streams import PingTransport, Stream
from tpemu.proxy.conn_upgrade import requested_types, select_upgrade
from tpemu.testkit.cluster import CLUSTER
from tpemu.wire import alpn, websocket


def test_select_prefers_ping_and_reads_both_headers() -> None:
    assert select_upgrade(requested_types([("upgrade", "alpn"), ("x-teleport-upgrade", "alpn-ping")])) == "alpn-ping"
    assert select_upgrade(requested_types([("x-teleport-upgrade", "alpn")])) == "alpn"
    assert select_upgrade(requested_types([("upgrade", "websocket, alpn")])) == "alpn"
    assert select_upgrade(requested_types([("upgrade", "websocket")])) is None
    assert select_upgrade([]) is None


@pytest.mark.parametrize(("value", "addr", "want"), [
    ("true", "a:443", True), ("0", "a:443", False), ("a:443=yes,b:443=no", "a:443", True),
    ("a:443=yes;b:443=no", "b:443", False), ("1,b:443=0", "c:443", True), ("b:443=1", "c:443", False),
    ("garbage", "a:443", False),
])
def test_env_override(value: str, addr: str, want: bool) -> None:
    assert conn_upgrade.required_by_env(addr, value) is want


async def _raw_upgrade(host: str, port: int, ca: Path, headers: str) -> tuple[bytes, asyncio.StreamReader,
                                                                             asyncio.StreamWriter]:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols([alpn.HTTP11])
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
    writer.write(f"GET /webapi/connectionupgrade HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return head, reader, writer


async def test_101_then_ssh_inside_and_404_for_unknown_types(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with ssh_cluster(tmp_path) as c:
        head, _, writer = await _raw_upgrade(c.web.host, c.web.port, c.ca, "Upgrade: websocket\r\n")
        assert head.startswith(b"HTTP/1.1 404 ")
        body_start = head  # the JSON error follows; the message is Teleport's
        writer.close()
        assert body_start
        # X-Teleport-Upgrade alone is enough (a load balancer may drop Upgrade).
        head, reader, writer = await _raw_upgrade(c.web.host, c.web.port, c.ca, "X-Teleport-Upgrade: alpn\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 101 Switching Protocols"
        assert {"Upgrade: alpn", "X-Teleport-Upgrade: alpn", "Connection: Upgrade"} <= set(lines)
        # The upgraded stream is routed like a new connection: plain SSH gets the proxy's banner.
        writer.write(b"SSH-2.0-probe\r\n")
        banner = await asyncio.wait_for(reader.readline(), 10)
        assert banner.startswith(b"SSH-2.0-")
        writer.close()
        assert c.proxy.conn_upgrade.stats["alpn"] == 1
        # alpn-ping: frames both ways, and the proxy's pings are dropped by the client's decoder.
        c.proxy.conn_upgrade.ping_interval = 0.05
        head, reader, writer = await _raw_upgrade(c.web.host, c.web.port, c.ca,
                                                  "Upgrade: alpn-ping\r\nX-Teleport-Upgrade: alpn-ping\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        framed = PingTransport.wrap(park_streams(reader, writer))
        stream = Stream(*await open_streams(framed))
        stream.write(b"SSH-2.0-probe\r\n")
        await stream.drain()
        got = await asyncio.wait_for(stream.read(), 10)
        assert got.startswith(b"SSH-2.0-")
        async with asyncio.timeout(10):  # the proxy pings an idle alpn-ping stream
            while framed.decoder.pings == 0:
                await asyncio.sleep(0.05)
        framed.close()

        # The client: forced by Teleport's environment variable, tpemu ssh goes through the upgrade.
        monkeypatch.setenv(conn_upgrade.ENV_VAR, "true")
        creds = ssh_mod.Credentials.load(alice(c).profile)
        before = c.proxy.conn_upgrade.stats["websocket/alpn-ping"]
        proxy = await ssh_mod.connect_proxy(creds)
        try:
            node = await ssh_mod.connect_node(proxy, creds, ssh_mod.parse_target("alice@node1", CLUSTER))
            async with node:
                result = await node.run("echo upgraded")
        finally:
            proxy.close()
        assert result.stdout == "upgraded\n"
        assert c.proxy.conn_upgrade.stats["websocket/alpn-ping"] == before + 1  # WebSocket preferred, as tsh
        assert c.proxy.door.stats.routed["ssh-proxy"] >= 1


async def test_websocket_upgrade_as_gorilla_answers(tmp_path: Path) -> None:
    """The WebSocket form (upgradeALPNWebSocket): 101 with Sec-WebSocket-Accept and the chosen
    subprotocol, then binary frames both ways; alpn-ping adds WebSocket pings (payload teleport)."""
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    async with ssh_cluster(tmp_path) as c:
        c.proxy.conn_upgrade.ping_interval = 0.05
        head, reader, writer = await _raw_upgrade(
            c.web.host, c.web.port, c.ca, "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: something, alpn-ping\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 101 Switching Protocols"
        assert {"Upgrade: websocket", "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                "Sec-WebSocket-Protocol: alpn-ping"} <= set(lines)
        writer.write(websocket.encode_frame(websocket.OP_BINARY, b"SSH-2.0-probe\r\n", b"\x11\x22\x33\x44"))
        dec = websocket.FrameDecoder(require_mask=False)
        frames: list[websocket.Frame] = []
        async with asyncio.timeout(10):
            while not ({f.opcode for f in frames} >= {websocket.OP_BINARY, websocket.OP_PING}):
                frames += dec.feed(await reader.read(4096))
        data = b"".join(f.payload for f in frames if f.opcode == websocket.OP_BINARY)
        assert data.startswith(b"SSH-2.0-")
        assert next(f.payload for f in frames if f.opcode == websocket.OP_PING) == b"teleport"
        writer.close()
        assert c.proxy.conn_upgrade.stats["websocket/alpn-ping"] == 1
        # Without a subprotocol it knows, the server falls back to the legacy types offered.
        head, _, writer = await _raw_upgrade(
            c.web.host, c.web.port, c.ca, "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: other\r\nX-Teleport-Upgrade: alpn\r\n")
        assert head.startswith(b"HTTP/1.1 101 ") and b"X-Teleport-Upgrade: alpn" in head
        writer.close()
