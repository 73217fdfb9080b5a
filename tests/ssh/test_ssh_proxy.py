"""SSH through the proxy to agents (real reverse tunnels, real agent processes), with tpemu's client."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path

import asyncssh
import pytest

from tests.helpers import alice, ssh_cluster
from tpemu.auth import authority
from tpemu.auth.authority import CAType
from tpemu.client import ssh as ssh_mod
from tpemu.client.ssh import ProxyRoute, SSHError
from tpemu.proxy.decide import ListenerKind
from tpemu.testkit.cluster import CLUSTER, Cluster, wait_for


async def run_on(cluster: Cluster, target: str, command: str, route: ProxyRoute | None = None,
                 check_login: bool = True) -> asyncssh.SSHCompletedProcess:
    creds = ssh_mod.Credentials.load(alice(cluster).profile)
    t = ssh_mod.parse_target(target, CLUSTER)
    if check_login:
        creds.check_login(t.login, t.host)
    proxy = await ssh_mod.connect_proxy(creds, route)
    try:
        node = await ssh_mod.connect_node(proxy, creds, t)
        async with node:
            return await node.run(command)
    finally:
        proxy.close()


async def test_multiplex_tls_routing_and_plain_ssh_on_the_web_port(tmp_path: Path) -> None:
    async with ssh_cluster(tmp_path) as c:
        routed = c.proxy.door.stats.routed
        result = await run_on(c, "alice@node1", "echo $USER; exit 4")  # /webapi/ping: TLS routing
        assert (result.stdout, result.exit_status) == ("alice\n", 4)
        assert routed["ssh-proxy"] == 1 and routed["web"] >= 1
        plain = ProxyRoute(c.web.host, c.web.port, tls=False)  # SSH sniffed on the multiplexed port
        result = await run_on(c, f"alice@node1.{CLUSTER}", "echo plain", plain)
        assert result.stdout == "plain\n" and routed["ssh-proxy"] == 2
        by_id = await run_on(c, f"alice@{c.host_id('node1')}", "echo by-id")  # a node's host ID names it too
        assert by_id.stdout == "by-id\n"
        # The node saw the real client address (from the dial request), not the tunnel's.
        env = (await run_on(c, "alice@node1", "echo $SSH_CLIENT")).stdout
        assert str(env).split()[0] == "127.0.0.1"


async def test_separate_mode_listen_addr(tmp_path: Path) -> None:
    async with ssh_cluster(tmp_path, mode="separate") as c:
        assert c.proxy.info.bound.get(ListenerKind.SSH) is not None
        ping = await ssh_mod.web_get(alice(c).profile, "/webapi/ping")
        route = ssh_mod.route_from_ping(ping, c.web)
        ssh_listener = c.listener(ListenerKind.SSH)
        assert route == ProxyRoute(ssh_listener.host, ssh_listener.port, tls=False)
        result = await run_on(c, "alice@node1", "uname -s")
        assert result.stdout == "Linux\n" and result.exit_status == 0
        assert c.proxy.door.stats.routed["ssh-proxy"] == 1


async def test_errors_are_specific(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with ssh_cluster(tmp_path, nodes=("node1", "twin", "twin")) as c:
        with pytest.raises(SSHError, match=r"node 'nosuch' not found: direct dialing to nodes not found in "
                                           r"inventory is not supported"):
            await run_on(c, "alice@nosuch", "true")
        with pytest.raises(SSHError, match="ambiguous host could match multiple nodes: twin"):
            await run_on(c, "alice@twin", "true")
        with pytest.raises(SSHError, match=r"access denied to bob connecting to node1: 'bob' is not one of the "
                                           r"logins of alice \(allowed: root, alice\)"):
            await run_on(c, "bob@node1", "true")
        # Without the client's own check, the node refuses the login itself.
        with pytest.raises(SSHError, match="access denied to bob connecting to node1 .the node refused"):
            await run_on(c, "bob@node1", "true", check_login=False)
        # A subsystem for another cluster, or malformed: the reason comes back on stderr, status 1.
        creds = ssh_mod.Credentials.load(alice(c).profile)
        proxy = await ssh_mod.connect_proxy(creds)
        async with proxy:
            for name, reason in (("proxy:node1:3022@elsewhere", "unknown cluster 'elsewhere'"),
                                 ("proxy:", "invalid format for proxy request")):
                result = await proxy.run(subsystem=name)
                assert result.exit_status == 1 and reason in str(result.stderr), result.stderr
            with pytest.raises(asyncssh.ChannelOpenError):  # the proxy runs no commands of its own
                await proxy.run("id", check=False)
        # Not SSH after all (an absurd packet length): the proxy answers and closes at once.
        reader, writer = await asyncio.open_connection(c.web.host, c.web.port)
        writer.write(b"SSH-2.0-evil\r\n" + b"\xff" * 64)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"SSH-2.0-Teleport\r\n")
        # An agent that went away: the registry says so.
        await c.agents["node1"].close()
        await wait_for(lambda: not any(r.name == "node1" for _, r in c.proxy.tunnels.resources("node")),
                       what="node1's tunnel to go")
        with pytest.raises(SSHError, match="failed connecting to node node1"):
            await run_on(c, "alice@node1", "true")
    assert "handler failed" not in caplog.text and "Traceback" not in caplog.text


async def test_a_session_waits_for_the_node_inventory_only_without_a_live_tunnel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with ssh_cluster(tmp_path, nodes=("node1", "node2")) as c:
        reg = c.proxy.tunnels
        assert c.proxy.ssh_proxy is not None and c.proxy.ssh_proxy.directory is not None
        directory = c.proxy.ssh_proxy.directory
        for task in reg._tasks:  # no poll in the middle: the test sets the inventory's age itself
            if task.get_coro().__name__ == "_poll_direct":  # type: ignore[union-attr]
                task.cancel()
        fetches = 0
        fetch = reg._fetch_inventory

        async def counted() -> None:
            nonlocal fetches
            fetches += 1
            await fetch()

        monkeypatch.setattr(reg, "_fetch_inventory", counted)
        await directory.nodes(fresh=True)  # both nodes listed (the last poll may predate them)
        fetches = 0
        reg._inventory_at -= 3  # older than its second, younger than a poll
        assert (await run_on(c, "alice@node1", "echo kept")).stdout == "kept\n"
        assert directory.stats["kept"] == 1 and fetches == 0  # node1's tunnel vouched: no Auth call
        # node2's tunnel goes: its kept entry no longer answers, the inventory is asked first.
        await c.agents["node2"].close()
        await wait_for(lambda: not reg.tunnel_serves_node(c.host_id("node2")), what="node2's tunnel to go")
        reg._inventory_at -= 3
        with pytest.raises(SSHError, match="failed connecting to node node2"):
            await run_on(c, "alice@node2", "true")
        # Asked before the lookup, and once more by the dial (no tunnel: maybe it has just come back).
        assert directory.stats["kept"] == 1 and fetches == 2


async def test_direct_dial_node_and_proxy_jump(tmp_path: Path) -> None:
    async with ssh_cluster(tmp_path) as c:
        await c.add_node("direct1", direct=True, labels={"env": "lab"})
        result = await run_on(c, "alice@direct1", "echo direct")
        assert result.stdout == "direct\n"
        # The node also listens on its own port (3022 in production): reachable without the proxy.
        addr = c.agents["direct1"].direct_addr
        assert addr is not None
        creds = ssh_mod.Credentials.load(alice(c).profile)
        async with asyncssh.connect(addr.host, addr.port, username="alice", client_keys=creds.client_keys(),
                                    known_hosts=([], creds.host_cas, []), agent_path=None, config=None) as conn:
            assert (await conn.run("echo straight")).stdout == "straight\n"
        # OpenSSH's ProxyJump (-J): a direct-tcpip channel through the proxy to the node.
        proxy = await ssh_mod.connect_proxy(creds)
        async with proxy:
            async with asyncssh.connect("node1", 3022, tunnel=proxy, username="alice",
                                        client_keys=creds.client_keys(), known_hosts=([], creds.host_cas, []),
                                        agent_path=None, config=None) as node:
                assert (await node.run("echo jumped")).stdout == "jumped\n"
            with pytest.raises(asyncssh.ChannelOpenError, match="node 'ghost' not found"):
                await proxy.open_connection("ghost", 3022)


async def test_node_list_web_endpoint(tmp_path: Path) -> None:
    async with ssh_cluster(tmp_path) as c:
        await c.add_node("node2", labels={"env": "prod", "team": "db"})
        prof = alice(c).profile
        items = await ssh_mod.list_nodes(prof)
        by_name = {i["hostname"]: i for i in items}
        assert set(by_name) == {"node1", "node2"}
        node2 = by_name["node2"]
        assert node2["tunnel"] is True and node2["siteId"] == CLUSTER and node2["id"] == c.host_id("node2")
        assert node2["tags"] == [{"name": "env", "value": "prod"}, {"name": "team", "value": "db"}]
        assert node2["sshLogins"] == ["root", "alice"] and node2["kind"] == "node"
        table = ssh_mod.format_nodes(items)
        assert table.splitlines()[0].split() == ["Node", "Name", "Address", "Labels", "Last", "heartbeat"]
        assert "node2     ⟵ Tunnel env=prod,team=db" in table
        assert node2["lastHeartbeat"] and "s ago" in table.splitlines()[-1]  # stamped by the Auth Service
        # Without a user certificate: refused.
        ctx = ssl.create_default_context(cafile=str(prof.ca_path))
        reader, writer = await asyncio.open_connection(c.web.host, c.web.port, ssl=ctx)
        writer.write(f"GET /webapi/sites/{CLUSTER}/nodes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 403") and b"needs a user certificate" in answer
        # Issue 16: once node2's tunnel is gone the list says so at once (the Auth Service still
        # lists it until its announcement expires).
        assert node2["connected"] is True
        await c.agents["node2"].close()
        deadline = asyncio.get_running_loop().time() + 5
        while not [i for i in await ssh_mod.list_nodes(prof) if i["hostname"] == "node2" and i["connected"] is False]:
            assert asyncio.get_running_loop().time() < deadline, "node2 not marked disconnected"
            await asyncio.sleep(0.05)
        assert "disconnected" in ssh_mod.format_nodes(await ssh_mod.list_nodes(prof))


async def test_expired_certificate(tmp_path: Path) -> None:
    async with ssh_cluster(tmp_path) as c:
        prof = alice(c).profile
        assert c.auth.server is not None
        user_ca = c.auth.server.ca(CAType.USER)
        past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
        line = authority.issue_user_ssh(user_ca, prof.ssh_public_path.read_bytes(), "alice", ["root", "alice"],
                                        ["access"], {}, CLUSTER, past + dt.timedelta(hours=1), past)
        prof.ssh_cert_path.write_bytes(line)
        creds = ssh_mod.Credentials.load(prof)
        with pytest.raises(SSHError, match=r"your certificate for alice expired at .* log in again: tpemu login"):
            creds.check_valid()
        # Past the client's own check, the proxy refuses it.
        with pytest.raises(SSHError, match="refused the certificate of alice"):
            await ssh_mod.connect_proxy(creds)


async def test_a_hello_that_goes_away_frees_its_ssh_connection_at_once(tmp_path: Path) -> None:
    # Issue 16 (network fuzz): a ClientHello for teleport-proxy-ssh followed by a close left the SSH
    # connection object made for it alive until its 30 s login timer fired, so a flood of such
    # hellos held memory for each one.
    import gc

    from tpemu import testing
    from tpemu.wire import alpn as names

    def live() -> int:
        gc.collect()
        return sum(isinstance(o, asyncssh.SSHServerConnection) for o in gc.get_objects())

    async with Cluster(tmp_path, nodes=(), databases=()) as cluster:
        proxy = cluster.proxy.ssh_proxy
        assert proxy is not None
        before, refused = live(), proxy.stats["refused"]
        for alpn in ([names.PROXY_SSH], [names.REVERSE_TUNNEL_V2, names.REVERSE_TUNNEL]):  # SSH proxy, tunnel server
            hello = testing.client_hello("localhost", alpn)
            for _ in range(20):
                _r, w = await asyncio.open_connection("127.0.0.1", cluster.web.port)
                w.write(hello)
                await w.drain()
                w.close()
        await wait_for(lambda: proxy.stats["refused"] >= refused + 20, what="the 20 handshakes to fail")
        await wait_for(lambda: live() <= before, timeout=10, what="the SSH connection objects to be freed")
