"""Agents behind a real HTTP CONNECT proxy (squid on 127.0.0.2): join and tunnel through it,
NO_PROXY host:port bypasses it; a second agent joins directly; both are reached."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import realservers
from tests.agent.test_agent_process import agent_config, makers
from tests.agent.test_tunnel import Echo, roundtrip, wait_for
from tpemu.agent.process import AgentOptions, AgentProcess
from tpemu.net.proxyenv import from_environment
from tpemu.testkit import Cluster
from tpemu.wire import tunnel as tw

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("separate", [False, True], ids=["tls-routing", "tunnel-port"])
async def test_two_agents_one_through_squid(tmp_path: Path, separate: bool) -> None:
    mode = "separate" if separate else "multiplex"
    async with Cluster(tmp_path / "cluster", nodes=(), databases=(), mode=mode) as cluster:
        with realservers.squid(tmp_path) as squid:
            token = await cluster.token("Node", "Db")
            env = from_environment({"HTTPS_PROXY": squid.url, "TPEMU_PROXY_LOOPBACK": "yes"})
            behind = AgentProcess(agent_config(tmp_path / "behind"),
                                  AgentOptions(("node", "db"), proxy_server=cluster.web, token=token,
                                               ca_pins=(cluster.auth.ca_pin,), nodename="behind-squid"),
                                  makers(Echo("behind"), Echo("behind-db")), proxy=env)
            direct = AgentProcess(agent_config(tmp_path / "direct"),
                                  AgentOptions(("node",), proxy_server=cluster.web, token=token,
                                               ca_pins=(cluster.auth.ca_pin,), nodename="no-proxy"),
                                  makers(Echo("direct"), Echo("x")))
            await behind.start()
            await direct.start()
            try:
                await behind.wait_connected()
                await direct.wait_connected()
                reg = cluster.proxy.tunnels
                await wait_for(lambda: {r.name for _, r in reg.resources()} >= {"behind-squid", "no-proxy", "pg"})
                for name, expect in (("behind-squid", b"behind:a\n"), ("no-proxy", b"direct:a\n")):
                    sock = await reg.dial(tw.DialRequest(address=name, conn_type="node"))
                    assert await roundtrip(sock, b"a\n") == expect
                sock = await reg.dial(tw.DialRequest(name="pg", conn_type="db"))
                assert await roundtrip(sock, b"q\n") == b"behind-db:q\n"
                tunnel_port = behind.tunnels[0].target.addr.port
            finally:
                await behind.close()
                await direct.close()
            # squid writes a CONNECT line to its access log when the tunnel ends.
            await wait_for(lambda: f"CONNECT 127.0.0.1:{tunnel_port}" in squid.log(), 10)
            log = squid.log()
            assert "TCP_TUNNEL/200" in log and f"CONNECT 127.0.0.1:{cluster.web.port}" in log  # the join
            before = len(log.splitlines())
            if not separate:
                return  # with TLS routing the tunnel and the web API share one port: nothing to exclude
            # NO_PROXY host:port: the tunnel port goes direct, the web port (join, Auth) through squid.
            excluded = from_environment({"HTTPS_PROXY": squid.url, "TPEMU_PROXY_LOOPBACK": "yes",
                                         "NO_PROXY": f"127.0.0.1:{tunnel_port}"})
            third = AgentProcess(agent_config(tmp_path / "third"),
                                 AgentOptions(("node",), proxy_server=cluster.web, token=token,
                                              ca_pins=(cluster.auth.ca_pin,), nodename="third"),
                                 makers(Echo("third"), Echo("x")), proxy=excluded)
            await third.start()
            try:
                await third.wait_connected()
                await wait_for(lambda: any(r.name == "third" for _, r in cluster.proxy.tunnels.resources()))
                # The tunnel port was excluded by NO_PROXY: it bypassed squid. Decided from the two ends
                # of the tunnel's TCP connection, not from squid's log: squid logs a CONNECT when a tunnel
                # *ends*, so a line from an earlier agent's tunnel could land after any cut-off (the
                # flake of issue 16).
                conn = third.tunnels[0]._conn
                assert conn is not None
                local = conn.get_extra_info("sockname")
                peers = {a.peer for a, r in cluster.proxy.tunnels.resources() if r.name == "third"}
                assert peers == {f"{local[0]}:{local[1]}"}, (peers, local)
            finally:
                await third.close()
            await wait_for(lambda: any(f"CONNECT 127.0.0.1:{cluster.web.port}" in line
                                       for line in squid.log().splitlines()[before:]), 10)  # joined through squid
