"""The seed's troubleshooting cases, each by one switch, with Teleport's (Go's) text on both ends."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tests.helpers import alice, ssh_cluster
from tpemu import authclient
from tpemu.client import ssh as ssh_mod
from tpemu.config import Addr
from tpemu.faults import cases
from tpemu.net import conn_upgrade, go_tls_errors
from tpemu.proxy.decide import ListenerKind
from tpemu.testkit.cluster import CLUSTER, wait_for
from tpemu.wire import alpn


def _addr(text: str) -> Addr:
    host, port = text.rsplit(":", 1)
    return Addr(host, int(port))


async def test_connection_reset_by_peer_both_ends(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with ssh_cluster(tmp_path) as c:
        fault = await cases.reset_peer("127.0.0.1:0", str(c.web), after_ms=0)
        try:
            where = _addr(fault.listen)
            creds = ssh_mod.Credentials.load(alice(c).profile)
            with pytest.raises(ssh_mod.SSHError) as info:
                await ssh_mod.connect_proxy(creds, ssh_mod.ProxyRoute(where.host, where.port, tls=True))
            assert "read: connection reset by peer" in str(info.value)
            # The proxy's end: the SSH proxy's TLS accept got the RST.
            await wait_for(lambda: any("connection reset by peer" in r.getMessage() and r.name.startswith("tpemu.proxy")
                                       for r in caplog.records), what="the proxy's log line")
        finally:
            await fault.stop()


async def test_first_record_does_not_look_like_a_tls_handshake_both_ends(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with ssh_cluster(tmp_path, proxy={"peer_listen_addr": "127.0.0.1:0"}) as c:
        plain = cases.NotTLS("127.0.0.1:0")
        await plain.start()
        try:
            # A client dialing TLS where plain HTTP answers (an LB port set up for HTTP).
            client = authclient.AuthClient.with_identity(_addr(plain.listen), CLUSTER, None, ca_pem=c.ca.read_bytes())
            with pytest.raises(authclient.authapi.Unavailable) as info:
                await client.call("GET", "/v1/ping")
            assert go_tls_errors.NOT_TLS in str(info.value)
            # A server expecting TLS that gets something else: plain HTTP to the proxy's TLS-only peer port.
            peer = c.proxy.info.bound[ListenerKind.PEER]
            reader, writer = await asyncio.open_connection(peer.host, peer.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.wait_for(reader.read(), 10)
            writer.close()
            await wait_for(lambda: any(go_tls_errors.NOT_TLS in r.getMessage() for r in caplog.records
                                       if r.name.startswith("tpemu.proxy")), what="the proxy's log line")
        finally:
            await plain.close()


async def test_l7_load_balancer_x509_then_upgrade(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with ssh_cluster(tmp_path) as c:
        lb = cases.L7LoadBalancer("127.0.0.1:0", str(c.web), tmp_path / "lb",
                                  names=(*cases.SEED_LB_NAMES, "localhost"))
        await lb.start()
        try:
            monkeypatch.setenv("SSL_CERT_FILE", str(lb.ca))  # the LB's CA as a system root
            conn_upgrade._decided.clear()
            port = _addr(lb.listen).port
            prof = alice(c).profile
            files = prof.tls_files()
            client = authclient.AuthClient.with_identity(Addr("localhost", port), CLUSTER, files, via_proxy=True)
            monkeypatch.setenv(conn_upgrade.ENV_VAR, "false")
            with pytest.raises(authclient.ServerCertUntrusted) as info:
                await client.call("GET", "/v1/db_servers")
            assert ("transport: authentication handshake failed: tls: failed to verify certificate: x509: "
                    "certificate is valid for *.example.teleport.sh, example.teleport.sh, localhost, not "
                    f"{alpn.cluster_sni(CLUSTER)}") in str(info.value)
            monkeypatch.delenv(conn_upgrade.ENV_VAR)
            assert (await client.call("GET", "/v1/db_servers"))["items"] == []  # upgraded, detected like tsh
            creds = ssh_mod.Credentials.load(prof)
            proxy = await ssh_mod.connect_proxy(creds, ssh_mod.ProxyRoute("localhost", port, tls=True))
            try:
                node = await ssh_mod.connect_node(proxy, creds, ssh_mod.parse_target("alice@node1", CLUSTER))
                async with node:
                    assert (await node.run("echo through-the-l7-fault")).stdout == "through-the-l7-fault\n"
            finally:
                proxy.close()
            stats = c.proxy.conn_upgrade.stats
            assert stats["websocket/alpn"] >= 1 and stats["websocket/alpn-ping"] >= 1, stats
        finally:
            await lb.close()
