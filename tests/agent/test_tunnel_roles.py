"""Issue 16: a reverse tunnel serves only what its host certificate's role may serve.

Before the fix a host joined with a Node-only token announced database ``pg`` on its tunnel and
received 10 of 10 of a user's Postgres sessions. Teleport: ``lib/reversetunnel/srv.go``
``handleNewChan`` turns the certificate's ``x-teleport-role`` into one tunnel type (Node →
NodeTunnel, Db → DatabaseTunnel, anything else refused), and ``localsite.go`` dials a resource only
over a tunnel of its type (``getRemoteConn``, keyed by ``{hostID, connType}``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.agent.test_tunnel import Echo, agent_for, join, roundtrip, wait_for
from tpemu.agent.tunnel import Offer, TunnelAgent, TunnelTarget
from tpemu.proxy.decide import ListenerKind
from tpemu.proxy.tunnels import TunnelError
from tpemu.testkit import Cluster
from tpemu.wire import tunnel as tw


@pytest.mark.parametrize("separate", [False, True], ids=["tls-routing", "tunnel-port"])
async def test_node_role_agent_cannot_serve_databases(tmp_path: Path, separate: bool) -> None:
    async with Cluster(tmp_path, nodes=(), databases=(), mode="separate" if separate else "multiplex") as cluster:
        node = await join(cluster, "Node", "node1")
        target = (TunnelTarget(cluster.web, True) if not separate else
                  TunnelTarget(cluster.listener(ListenerKind.TUNNEL), False))
        fake_db = Echo("stolen")
        rogue = TunnelAgent(node, target, [Offer(tw.Resource("node", "node1"), Echo("node1")),
                                           Offer(tw.Resource("db", "pg", protocol="postgres"), fake_db)],
                            hostname="node1", heartbeat=1.0, missed=3, min_backoff=0.2, max_backoff=1.0)
        db = await join(cluster, "Db", "db1")
        real_db = Echo("real")
        honest = agent_for(cluster, db, real_db, "pg", tls=not separate, kind="db")
        rogue.start()
        honest.start()
        try:
            reg = cluster.proxy.tunnels
            await wait_for(lambda: any(r.name == "pg" for _, r in reg.resources("db")))
            for _ in range(10):
                sock = await reg.dial(tw.DialRequest(name="pg", conn_type="db"))
                assert await roundtrip(sock, b"q\n") == b"real:q\n"
            assert fake_db.requests == []
            assert all(a.role == "Db" for a, _ in reg.resources("db"))
        finally:
            await honest.close()
        # With the real database gone, the rogue's announcement still leads nowhere.
        await wait_for(lambda: not reg.resources("db"))
        with pytest.raises(TunnelError, match="not found"):
            await reg.dial(tw.DialRequest(name="pg", conn_type="db"))
        assert fake_db.requests == []
        await rogue.close()


async def test_node_tunnel_announcing_a_database_is_closed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with Cluster(tmp_path, nodes=(), databases=()) as cluster:
        node = await join(cluster, "Node", "node1")
        rogue = agent_for(cluster, node, Echo("x"), "pg", kind="db")
        rogue.start()
        try:
            await wait_for(lambda: "with role Node announced db 'pg'" in caplog.text)
            assert not cluster.proxy.tunnels.resources("db")
        finally:
            await rogue.close()


async def test_database_list_says_disconnected_as_soon_as_the_tunnel_is_gone(tmp_path: Path) -> None:
    # Issue 16: after an agent was killed, db ls listed it as alive until its announcement
    # expired (14 s); the proxy knows at once.
    from tpemu.proxy.ssh_proxy import SSHProxy

    async with Cluster(tmp_path, nodes=(), databases=()) as cluster:
        db = await join(cluster, "Db", "db1")
        agent = agent_for(cluster, db, Echo("db"), "pg", kind="db")
        agent.start()
        assert cluster.auth.server is not None
        await cluster.auth.server.upsert_server("db_servers", {
            "kind": "db_server", "metadata": {"name": "pg"},
            "spec": {"host_id": db.host_id, "hostname": "db1",
                     "database": {"metadata": {"name": "pg"}, "spec": {"protocol": "postgres"}}}}, 600.0)
        ssh = cluster.proxy.ssh_proxy
        assert isinstance(ssh, SSHProxy)
        reg = cluster.proxy.tunnels
        await wait_for(lambda: bool(reg.resources("db")))

        async def connected() -> list[object]:
            answer = await ssh._web_databases()
            return [i["status"]["connected"] for i in json.loads(answer.body)["items"]]

        assert await connected() == [True]
        await agent.close()
        await wait_for(lambda: not reg.resources("db"))
        assert await connected() == [False]  # the Auth Service still lists it (TTL 600 s)
