"""Behind a real layer-7 load balancer (nginx terminating TLS with its own certificate).

The seed's troubleshooting case "Authentication handshake failed": a plain ALPN dial through the
LB gets the LB's certificate, and the client says it in Go's words (``x509: certificate is valid
for …, not <hex>.teleport.cluster.local``). The ALPN connection upgrade (lib/web/conn_upgrade.go,
api/client/alpn_conn_upgrade.go) makes SSH and Postgres work through the same LB, detected as
tsh detects it (IsALPNConnUpgradeRequired); an agent that knows the proxy only by the LB's
address joins through it and holds its reverse tunnel inside the upgrade, as Teleport's agent
pool does (lib/reversetunnel/agentpool.go updateRemote).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests import realservers
from tests.e2e.test_db_access import CLUSTER as DB_CLUSTER
from tests.e2e.test_db_access import need, real_pg, start_env, stop_env, template
from tests.helpers import ssh_cluster
from tests.multiproxy.lb import nginx_l7
from tpemu import authclient, config
from tpemu.client import db as db_mod
from tpemu.client import login as login_mod
from tpemu.client import profile as profile_mod
from tpemu.client import ssh as ssh_mod
from tpemu.config import Addr
from tpemu.net import conn_upgrade
from tpemu.testkit.cluster import CLUSTER, PASSWORD
from tpemu.wire import alpn

pytestmark = pytest.mark.e2e
__all__ = ["real_pg", "template"]  # session fixtures shared with the database e2e tests


async def test_ssh_and_auth_through_nginx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with ssh_cluster(tmp_path) as c:
        with nginx_l7(str(c.web)) as lb:
            # The client trusts the LB's CA as a system root (tsh uses the system's roots).
            monkeypatch.setenv("SSL_CERT_FILE", str(lb.ca))
            conn_upgrade._decided.clear()  # a fresh process would not know the LB
            home = tmp_path / "lbhome"
            web = Addr("localhost", lb.port)
            await asyncio.to_thread(login_mod.login, home, web, "alice", PASSWORD, 3600.0, login_mod.Trust(lb.ca))
            prof = profile_mod.current(home)
            assert prof is not None and prof.web_proxy_addr == str(web)

            # 1. The plain ALPN dial (no upgrade) to the Auth API through the proxy: the LB's certificate.
            monkeypatch.setenv(conn_upgrade.ENV_VAR, "false")
            with pytest.raises(db_mod.DBError) as info:
                await db_mod.list_databases(prof)
            want = ("transport: authentication handshake failed: tls: failed to verify certificate: x509: "
                    f"certificate is valid for *.lb.tpemu.test, lb.tpemu.test, localhost, not "
                    f"{alpn.cluster_sni(CLUSTER)}")
            assert want in str(info.value)

            # 2. tsh's detection: the LB negotiates no Teleport ALPN → upgrade required.
            monkeypatch.delenv(conn_upgrade.ENV_VAR)
            outer = conn_upgrade.outer_context(str(prof.ca_path))
            assert await conn_upgrade.upgrade_required("localhost", lb.port, outer)
            assert not await conn_upgrade.upgrade_required(c.web.host, c.web.port, outer), "the proxy itself: no"

            # 3. With the upgrade, found automatically: the Auth API (teleport-auth@) and SSH.
            assert await db_mod.list_databases(prof) == []
            creds = ssh_mod.Credentials.load(prof)
            proxy = await ssh_mod.connect_proxy(creds)
            try:
                node = await ssh_mod.connect_node(proxy, creds, ssh_mod.parse_target("alice@node1", CLUSTER))
                async with node:
                    result = await node.run("echo through-nginx")
            finally:
                proxy.close()
            assert result.stdout == "through-nginx\n"
            stats = c.proxy.conn_upgrade.stats  # WebSocket through nginx (Upgrade + Sec-WebSocket-*)
            assert stats["websocket/alpn-ping"] >= 1 and stats["websocket/alpn"] >= 1, stats


async def test_psql_through_nginx_with_the_upgrade(tmp_path: Path, template: Path, real_pg: realservers.DBServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    need("psql")
    env = await start_env(tmp_path, template, [{"name": "realpg", "protocol": "postgres", "uri": real_pg.addr}])
    try:
        with nginx_l7(env.web) as lb:
            monkeypatch.setenv("SSL_CERT_FILE", str(lb.ca))  # the LB's CA as a system root
            proxy = f"localhost:{lb.port}"
            code, _, err = await env.cli("login", "--proxy", proxy, "--user", "alice", "--password-file",
                                         str(tmp_path / "pw"), "--ca", str(lb.ca))
            assert code == 0, err
            # Without the upgrade (forced off): Go's x509 text for the LB's certificate.
            monkeypatch.setenv(conn_upgrade.ENV_VAR, "false")
            code, _, err = await env.cli("db", "ls")
            assert code != 0 and "certificate is valid for *.lb.tpemu.test, lb.tpemu.test, localhost, not " \
                f"{alpn.cluster_sni(DB_CLUSTER)}" in err, err
            monkeypatch.delenv(conn_upgrade.ENV_VAR)
            # Detected like tsh: db ls, db login, then psql through the local tunnel (real psql, real Postgres).
            code, out, err = await env.cli("db", "ls")
            assert code == 0 and "realpg" in out, err
            assert (await env.cli("db", "login", "realpg"))[0] == 0
            code, out, err = await env.cli("db", "connect", "realpg", "--", "-tAc", "select 40 + 2")
            assert code == 0 and out.strip() == "42", err
            assert env.proxy.conn_upgrade.stats["websocket/alpn-ping"] >= 1
    finally:
        await stop_env(env)


async def test_agent_joins_and_tunnels_through_nginx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tpemu.agent.process import AgentOptions, AgentProcess
    from tpemu.agent.services import MAKERS

    async with ssh_cluster(tmp_path) as c:
        with nginx_l7(str(c.web)) as lb:
            monkeypatch.setenv("SSL_CERT_FILE", str(lb.ca))  # the LB's CA as a system root
            conn_upgrade._decided.clear()

            def agent(name: str, token: str) -> AgentProcess:
                cfg = config.from_dict({
                    "teleport": {"data_dir": str(tmp_path / name), "nodename": name},
                    "auth_service": {"enabled": False, "keep_alive_interval": "1s"},
                    "proxy_service": {"enabled": False}, "ssh_service": {"listen_addr": "127.0.0.1:0"}})
                return AgentProcess(cfg, AgentOptions(("node",), proxy_server=Addr("localhost", lb.port),
                                                      token=token, ca_pins=(c.auth.ca_pin,), nodename=name),
                                    MAKERS)

            # Forced off: the agent's first call to the Auth Service through the proxy (ALPN
            # teleport-auth@) meets the LB's certificate, in the seed's words.
            monkeypatch.setenv(conn_upgrade.ENV_VAR, "false")
            refused = agent("lbnode-off", await c.token("Node", single_use=True))
            try:
                with pytest.raises(authclient.ServerCertUntrusted) as info:
                    await refused.start()
                assert ("x509: certificate is valid for *.lb.tpemu.test, lb.tpemu.test, localhost, not "
                        f"{alpn.cluster_sni(CLUSTER)}") in str(info.value)
            finally:
                await refused.close()
            monkeypatch.delenv(conn_upgrade.ENV_VAR)

            before = dict(c.proxy.conn_upgrade.stats)
            node = agent("lbnode", await c.token("Node", single_use=True))
            await node.start()
            try:
                await node.wait_connected(timeout=20.0)
                assert all(t.state.upgraded for t in node.tunnels)
                after = c.proxy.conn_upgrade.stats
                assert after["websocket/alpn"] > before.get("websocket/alpn", 0), after
                # A user reaches the node whose only way in is the tunnel through the LB.
                creds = ssh_mod.Credentials.load(c.users["alice"].profile)
                proxy = await ssh_mod.connect_proxy(creds)
                try:
                    conn = await ssh_mod.connect_node(proxy, creds, ssh_mod.parse_target("alice@lbnode", CLUSTER))
                    async with conn:
                        result = await conn.run("echo via-the-lb-tunnel")
                finally:
                    proxy.close()
                assert result.stdout == "via-the-lb-tunnel\n"
            finally:
                await node.close()
