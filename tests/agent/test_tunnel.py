"""Reverse tunnels in process: join, tunnel over TLS routing and over the SSH tunnel port, dial,
refusals, heartbeats, reconnect."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from tpemu import authclient, config, pki
from tpemu.agent.tunnel import Offer, TunnelAgent, TunnelTarget
from tpemu.net.channel import open_streams
from tpemu.net.tls_alerting import _TLSTransport
from tpemu.proxy.auth_routes import AuthLink
from tpemu.proxy.decide import ListenerKind
from tpemu.proxy.service import ProxyService
from tpemu.proxy.tunnels import TunnelError
from tpemu.testkit import Cluster
from tpemu.wire import tunnel as tw


class Echo:
    """A service that answers ``<name>:`` + each line, so tests see which one they reached."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[tw.DialRequest] = []

    async def serve(self, transport: asyncio.Transport, request: tw.DialRequest) -> None:
        self.requests.append(request)
        reader, writer = await open_streams(transport)  # the channel itself: no socket in between
        while line := await reader.readline():
            writer.write(self.name.encode() + b":" + line)
            await writer.drain()
        writer.close()


async def join(cluster: Cluster, role: str = "Node", name: str = "node1") -> authclient.HostIdentity:
    token = await cluster.token(role)
    assert cluster.auth.addr is not None
    host_id = pki.new_host_uuid() if hasattr(pki, "new_host_uuid") else __import__("uuid").uuid4().__str__()
    return await authclient.join(cluster.auth.addr, token, role, host_id, name, cluster.cfg.auth_service.cluster_name,
                                 ca_pins=(cluster.auth.ca_pin,))


def agent_for(cluster: Cluster, identity: authclient.HostIdentity, service: Echo, name: str, *,
              tls: bool = True, kind: str = "node") -> TunnelAgent:
    target = (TunnelTarget(cluster.web, True) if tls else
              TunnelTarget(cluster.listener(ListenerKind.TUNNEL), False))
    offer = Offer(tw.Resource(kind, name), service, aliases=(identity.host_id,))
    return TunnelAgent(identity, target, [offer], hostname=name, heartbeat=1.0, missed=3,
                       min_backoff=0.2, max_backoff=1.0)


async def roundtrip(transport: asyncio.Transport, line: bytes) -> bytes:
    reader, writer = await open_streams(transport)
    writer.write(line)
    got = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return got


async def wait_for(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("separate", [False, True], ids=["tls-routing", "tunnel-port"])
async def test_agent_tunnel_dial_and_refusals(tmp_path: Path, separate: bool) -> None:
    async with Cluster(tmp_path, nodes=(), databases=(), mode="separate" if separate else "multiplex") as cluster:
        identity = await join(cluster, "Node", "node1")
        echo = Echo("node1")
        agent = agent_for(cluster, identity, echo, "node1", tls=not separate)
        agent.start()
        await asyncio.wait_for(agent.state.connected.wait(), 10)
        reg = cluster.proxy.tunnels
        await wait_for(lambda: reg.resources("node"))
        if not separate:
            # TLS routing: both ends run the tunnel's TLS in tpemu.net.tls_link, not the loop's SSL protocol.
            assert agent._conn is not None
            assert isinstance(agent._conn._transport, _TLSTransport)
            assert [type(a.conn._transport) for a in reg.agents.values()] == [_TLSTransport]
        sock = await reg.dial(tw.DialRequest(address="node1:3022", conn_type="node", client_src_addr="192.0.2.9:1234"))
        assert await roundtrip(sock, b"hello\n") == b"node1:hello\n"
        assert echo.requests[-1].client_src_addr == "192.0.2.9:1234"
        sock = await reg.dial(tw.DialRequest(server_id=f"{identity.host_id}.tpemu.local", conn_type="node"))
        assert await roundtrip(sock, b"by id\n") == b"node1:by id\n"
        with pytest.raises(TunnelError, match="node 'nope' not found in cluster tpemu.local.*known: node1"):
            await reg.dial(tw.DialRequest(address="nope", conn_type="node"))
        # lib/srv/db/proxyserver.go: "database %q not found among registered databases in cluster %q".
        with pytest.raises(TunnelError, match='database "pg" not found among registered databases in cluster '
                                              '"tpemu.local"'):
            await reg.dial(tw.DialRequest(name="pg", conn_type="db"))
        await agent.close()


async def test_forged_host_cert_and_garbage_are_refused_while_others_work(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    async with Cluster(tmp_path / "a", nodes=(), databases=(), mode="separate") as cluster, \
            Cluster(tmp_path / "b", nodes=(), databases=()) as other:
        good = agent_for(cluster, await join(cluster), Echo("good"), "good", tls=False)
        good.start()
        await asyncio.wait_for(good.state.connected.wait(), 10)
        # A host certificate from another cluster's CA (a forgery as far as this proxy knows), held
        # by an agent that does trust this proxy: the proxy must be the one refusing.
        theirs = await join(other, "Node", "forged")
        ours = await join(cluster, "Node", "real")
        mixed = dataclasses.replace(theirs, ca_pems=ours.ca_pems, ssh_ca_keys=ours.ssh_ca_keys)
        forged = agent_for(cluster, mixed, Echo("forged"), "forged", tls=False)
        forged.start()
        # A tunnel client speaking garbage.
        port = cluster.listener(ListenerKind.TUNNEL).port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"SSH-2.0-agent\r\n" + b"\x00\x00\x00\x10garbage-garbage!" * 4)
        await asyncio.wait_for(reader.read(), 10)
        await asyncio.sleep(1.5)
        assert not forged.state.connected.is_set() and forged.state.attempts >= 1
        assert "Permission denied" in forged.state.last_error, forged.state.last_error
        # lib/reversetunnel/srv.go keyAuth → checkClientCert: "cluster %v has no matching CA keys",
        # logged as "Failed to authenticate client".
        assert "Failed to authenticate client" in caplog.text
        assert "cluster tpemu.local has no matching CA keys" in caplog.text
        assert "reverse tunnel failed before the agent was authenticated" in caplog.text  # the garbage client
        sock = await cluster.proxy.tunnels.dial(tw.DialRequest(address="good", conn_type="node"))
        assert await roundtrip(sock, b"still\n") == b"good:still\n"
        await forged.close()
        await good.close()


class Relay:
    """A TCP relay between an agent and the proxy that a test can freeze (packets stop, TCP stays up)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.frozen = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._on_conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.target)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(65536):
                if self.frozen.is_set():
                    await asyncio.sleep(3600)
                w.write(data)
        for coro in (pump(reader, up_w), pump(up_r, writer)):
            task = asyncio.ensure_future(coro)
            self.tasks.add(task)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_frozen_agent_is_dropped_after_missed_heartbeats(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    async with Cluster(tmp_path, nodes=(), databases=(), mode="separate") as cluster:
        relay = Relay(("127.0.0.1", cluster.listener(ListenerKind.TUNNEL).port))
        port = await relay.start()
        identity = await join(cluster)
        offer = Offer(tw.Resource("node", "frozen"), Echo("frozen"))
        agent = TunnelAgent(identity, TunnelTarget(config.Addr("127.0.0.1", port), False), [offer], hostname="frozen",
                            heartbeat=1.0, missed=3, min_backoff=0.2, max_backoff=1.0)
        agent.start()
        await asyncio.wait_for(agent.state.connected.wait(), 10)
        reg = cluster.proxy.tunnels
        await wait_for(lambda: reg.resources("node"))
        relay.frozen.set()
        t0 = asyncio.get_running_loop().time()
        await wait_for(lambda: not reg.resources("node"), 10)
        dropped_after = asyncio.get_running_loop().time() - t0
        assert 2.0 <= dropped_after <= 6.0, dropped_after  # 3 missed 1 s heartbeats, checked every second
        assert "missed 3 heartbeats" in caplog.text or "no heartbeat" in caplog.text or "closed" in caplog.text
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(TunnelError, match="not found"):
            await reg.dial(tw.DialRequest(address="frozen", conn_type="node"), timeout=5)
        assert asyncio.get_running_loop().time() - t0 < 1.0  # a clear error at once, not a hang
        await agent.close()
        await relay.close()


async def test_proxy_restart_agent_reconnects_within_backoff(tmp_path: Path) -> None:
    async with Cluster(tmp_path, nodes=(), databases=()) as cluster:
        identity = await join(cluster)
        web = cluster.web
        agent = TunnelAgent(identity, TunnelTarget(web, True), [Offer(tw.Resource("node", "n1"), Echo("n1"))],
                            hostname="n1", heartbeat=1.0, missed=3, min_backoff=0.2, max_backoff=1.0)
        agent.start()
        await asyncio.wait_for(agent.state.connected.wait(), 10)
        await cluster.proxy.close()
        await wait_for(lambda: not agent.state.connected.is_set(), 5)
        await asyncio.sleep(1.5)  # the agent retries against a closed port meanwhile
        cfg = config.from_dict({"teleport": {"data_dir": str(cluster.data_dir)},
                                "proxy_service": {"web_listen_addr": f"127.0.0.1:{web.port}"}})
        proxy = ProxyService(cfg, auth=AuthLink(cluster.auth.addr, ca_pins=(cluster.auth.ca_pin,)))  # type: ignore[arg-type]
        await proxy.start()
        try:
            t0 = asyncio.get_running_loop().time()
            await asyncio.wait_for(agent.state.connected.wait(), 5)
            assert asyncio.get_running_loop().time() - t0 <= 1.5  # max backoff 1 s + dial time
            await wait_for(lambda: proxy.tunnels.resources("node"))
            sock = await proxy.tunnels.dial(tw.DialRequest(address="n1", conn_type="node"))
            assert await roundtrip(sock, b"back\n") == b"n1:back\n"
            assert agent.state.connects == 2
        finally:
            await agent.close()
            await proxy.close()
