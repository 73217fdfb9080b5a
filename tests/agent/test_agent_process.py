"""The agent process in-process: join through the proxy or directly, tunnels, presence in Auth."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.agent.test_tunnel import Echo, roundtrip, wait_for
from tpemu import config
from tpemu.agent.process import AgentContext, AgentError, AgentOptions, AgentProcess
from tpemu.agent.tunnel import Offer
from tpemu.proxy.tunnels import TunnelError
from tpemu.testkit import Cluster
from tpemu.wire import tunnel as tw


def agent_config(data: Path, **ssh: object) -> config.Config:
    return config.from_dict({"teleport": {"data_dir": str(data)},
                             "auth_service": {"enabled": False, "keep_alive_interval": "1s"},
                             "ssh_service": {"listen_addr": "127.0.0.1:0", "labels": {"env": "test"}, **ssh}})


def makers(echo_node: Echo, echo_db: Echo):  # type: ignore[no-untyped-def]
    async def node(ctx: AgentContext) -> list[Offer]:
        return [Offer(tw.Resource("node", ctx.nodename, ctx.labels), echo_node)]

    async def db(ctx: AgentContext) -> list[Offer]:
        return [Offer(tw.Resource("db", "pg", protocol="postgres"), echo_db)]

    return {"node": node, "db": db}


@pytest.mark.parametrize("separate", [False, True], ids=["tls-routing", "tunnel-port"])
async def test_join_through_proxy_and_reach_both_services(tmp_path: Path, separate: bool) -> None:
    mode = "separate" if separate else "multiplex"
    async with Cluster(tmp_path / "cluster", nodes=(), databases=(), mode=mode) as cluster:
        token = await cluster.token("Node", "Db")
        opts = AgentOptions(("node", "db"), proxy_server=cluster.web, token=token, ca_pins=(cluster.auth.ca_pin,),
                            nodename="agent1")
        agent = AgentProcess(agent_config(tmp_path / "agent"), opts, makers(Echo("ssh"), Echo("db")))
        await agent.start()
        try:
            await agent.wait_connected()
            assert [t.target.tls_routing for t in agent.tunnels] == [not separate] * 2
            reg = cluster.proxy.tunnels
            await wait_for(lambda: len(reg.resources()) == 2)
            assert await roundtrip(await reg.dial(tw.DialRequest(address="agent1", conn_type="node")), b"x\n") == \
                b"ssh:x\n"
            assert await roundtrip(await reg.dial(tw.DialRequest(name="pg", conn_type="db")), b"y\n") == b"db:y\n"
            # Presence in the Auth Service, as tpemu ls reads it (polled: the agent announces on its own).
            client = cluster.proxy.auth_routes.client()  # type: ignore[union-attr]
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                nodes = (await client.call("GET", "/v1/nodes"))["items"]
                dbs = (await client.call("GET", "/v1/db_servers"))["items"]
                if (any(n["spec"]["hostname"] == "agent1" and n["spec"]["use_tunnel"] for n in nodes)
                        and any(d["metadata"]["name"] == "pg" for d in dbs)):
                    break
                assert asyncio.get_running_loop().time() < deadline, (nodes, dbs)
                await asyncio.sleep(0.05)
        finally:
            await agent.close()
        # Restart: the saved identities are reused, no token needed.
        again = AgentProcess(agent_config(tmp_path / "agent"), AgentOptions(("node",), proxy_server=cluster.web,
                                                                            nodename="agent1"),
                             makers(Echo("ssh2"), Echo("db")))
        await again.start()
        try:
            await again.wait_connected()
            await wait_for(lambda: any(r.name == "agent1" and a.transport_ready
                                       for a, r in cluster.proxy.tunnels.resources("node")))
        finally:
            await again.close()


async def test_direct_join_node_listens_and_db_is_refused(tmp_path: Path) -> None:
    async with Cluster(tmp_path / "cluster", nodes=(), databases=()) as cluster:
        assert cluster.auth.addr is not None
        token = await cluster.token("Node", "Db")
        with pytest.raises(AgentError, match="Direct Auth Service joining is only supported for Teleport Agents "
                                             "running the Teleport SSH Service"):
            await AgentProcess(agent_config(tmp_path / "a1"), AgentOptions(("db",), auth_server=cluster.auth.addr,
                                                                           token=token), makers(Echo("s"), Echo("d"))
                               ).start()
        echo = Echo("direct")
        agent = AgentProcess(agent_config(tmp_path / "a2"), AgentOptions(("node",), auth_server=cluster.auth.addr,
                                                                         token=token, nodename="direct1",
                                                                         ca_pins=(cluster.auth.ca_pin,)),
                             makers(echo, Echo("d")))
        await agent.start()
        try:
            assert agent.direct_addr is not None and not agent.tunnels
            # The proxy learns the address from Auth and dials it directly.
            reg = cluster.proxy.tunnels
            await wait_for(lambda: any(n.hostname == "direct1" for n in reg.direct.values()), 12)
            sock = await reg.dial(tw.DialRequest(address="direct1", conn_type="node"))
            assert await roundtrip(sock, b"hi\n") == b"direct:hi\n"
        finally:
            await agent.close()


async def test_bad_tokens_are_refused_specifically(tmp_path: Path) -> None:
    async with Cluster(tmp_path / "cluster", nodes=(), databases=()) as cluster:
        opts = AgentOptions(("node",), proxy_server=cluster.web, token="not-a-token")
        with pytest.raises(AgentError, match="joining the cluster at .* failed: .*token"):
            await AgentProcess(agent_config(tmp_path / "a"), opts, makers(Echo("s"), Echo("d"))).start()
        short = await cluster.token("Node", ttl=0.2)
        await asyncio.sleep(0.5)
        with pytest.raises(AgentError, match="expired"):
            await AgentProcess(agent_config(tmp_path / "b"), AgentOptions(("node",), proxy_server=cluster.web,
                                                                          token=short),
                               makers(Echo("s"), Echo("d"))).start()
        db_only = await cluster.token("Db")
        with pytest.raises(AgentError, match="Node"):
            await AgentProcess(agent_config(tmp_path / "c"), AgentOptions(("node",), proxy_server=cluster.web,
                                                                          token=db_only),
                               makers(Echo("s"), Echo("d"))).start()
        with pytest.raises(AgentError, match="matches none of the CA pins"):
            await AgentProcess(agent_config(tmp_path / "d"), AgentOptions(("node",), proxy_server=cluster.web,
                                                                          token=db_only, ca_pins=("sha256:00",)),
                               makers(Echo("s"), Echo("d"))).start()
        with pytest.raises(TunnelError):
            await cluster.proxy.tunnels.dial(tw.DialRequest(address="x", conn_type="node"), timeout=1)

