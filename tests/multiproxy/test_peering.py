"""Several proxies, one cluster, behind a real HAProxy (mode tcp, PROXY v2): proxy peering.

Topology (Teleport's ``tunnel_strategy: proxy_peering``, one tunnel per agent; lib/proxy/peer/):

    client ─► HAProxy :clients ─► proxy A ──peer (mTLS, host certs)──► proxy B ◄── tunnel ── agent
                                                                       ▲
    agent  ─► HAProxy :agents  ─► proxy B (A as backup) ───────────────┘

The clients' frontend prefers A, the agents' frontend prefers B, so the first sessions must take
the peer hop A→B. Then B dies: HAProxy's health check moves the agent's reconnect to A, and
sessions through A work again within the agent's backoff; the time is measured and printed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests import realservers
from tests.auth.conftest import pg_server, pg_url
from tests.multiproxy.lb import L4Frontend, haproxy_l4
from tpemu import config
from tpemu.agent.process import AgentOptions, AgentProcess
from tpemu.agent.services import MAKERS
from tpemu.auth.service import AuthService
from tpemu.client import db as db_mod
from tpemu.client import login as login_mod
from tpemu.client import profile as profile_mod
from tpemu.client import ssh as ssh_mod
from tpemu.config import Addr
from tpemu.proxy.auth_routes import AuthLink
from tpemu.proxy.decide import ListenerKind
from tpemu.proxy.service import ProxyService
from tpemu.wire import tunnel as tw

pytestmark = pytest.mark.e2e
__all__ = ["pg_server", "pg_url"]  # the Auth backend's PostgreSQL (session server, a database per test)
CLUSTER = "tpemu.local"
PASSWORD = "correct horse battery"


def _proxy_cfg(tmp: Path, name: str, public: str) -> config.Config:
    return config.from_dict({
        "teleport": {"data_dir": str(tmp / name), "nodename": name},
        "auth_service": {"listen_addr": "127.0.0.1:0", "cluster_name": CLUSTER, "keep_alive_interval": "1s"},
        "proxy_service": {"web_listen_addr": "127.0.0.1:0", "peer_listen_addr": "127.0.0.1:0",
                          "public_addr": [public], "proxy_protocol": True}})


async def _until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def _ssh(prof: profile_mod.Profile, command: str) -> str:
    creds = ssh_mod.Credentials.load(prof)
    proxy = await ssh_mod.connect_proxy(creds)
    try:
        node = await ssh_mod.connect_node(proxy, creds, ssh_mod.parse_target("alice@node1", CLUSTER))
        async with node:
            result = await node.run(command)
    finally:
        proxy.close()
    return str(result.stdout)


def _ping_from(host: str, port: int, source: str, ca: Path) -> dict[str, Any]:
    """GET /webapi/ping from a chosen loopback source address (to see it in the proxy's log)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, port), timeout=10, source_address=(source, 0)) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET /webapi/ping HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


async def _peer_refusal(proxy: ProxyService, cert: tuple[Path, Path] | None) -> str:
    """What B's peer listener answers a client with ``cert`` (``None``: no certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(*cert)
    addr = proxy.info.bound[ListenerKind.PEER]
    try:
        reader, writer = await asyncio.open_connection(addr.host, addr.port, ssl=ctx)
        writer.write(tw.DialRequest(server_id="x").encode())
        head = await asyncio.wait_for(reader.readexactly(4), 10)
        frame = tw.decode_frame(head + await reader.readexactly(int.from_bytes(head, "big")))
        writer.close()
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return "handshake"  # TLS 1.3: the refused client certificate shows up on the first read
    assert frame is not None
    return str(tw.DialResponse.from_json(frame[0]).error)


async def test_peering_behind_haproxy_and_failover(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                   pg_url: str) -> None:
    caplog.set_level(logging.INFO, logger="tpemu.proxy")
    # The Auth Service keeps its state in a real PostgreSQL (teleport.storage), as for HA.
    storage = {"type": "postgresql", "conn_string": pg_url}
    auth_cfg = config.from_dict({"teleport": {"data_dir": str(tmp_path / "auth"), "storage": storage},
                                 "auth_service": {"listen_addr": "127.0.0.1:0", "cluster_name": CLUSTER,
                                                  "keep_alive_interval": "1s"},
                                 "proxy_service": {"enabled": False}})
    auth = AuthService(auth_cfg)
    await auth.start()
    assert auth.addr is not None and auth.server is not None
    clients_port, agents_port = realservers.free_port(), realservers.free_port()
    public = f"127.0.0.1:{clients_port}"
    proxies: dict[str, ProxyService] = {}
    agent: AgentProcess | None = None
    try:
        for name in ("proxy-a", "proxy-b"):
            link = AuthLink(auth.addr, ca_pins=(auth.ca_pin,), mint=lambda: auth.mint_token(("Proxy",), 300.0))
            proxies[name] = ProxyService(_proxy_cfg(tmp_path, name, public), auth=link)
            await proxies[name].start()
        a, b = proxies["proxy-a"], proxies["proxy-b"]
        web = {n: str(p.info.bound[ListenerKind.WEB]) for n, p in proxies.items()}
        fronts = [L4Frontend("clients", clients_port, web["proxy-a"], (web["proxy-b"],)),
                  L4Frontend("agents", agents_port, web["proxy-b"], (web["proxy-a"],))]
        with haproxy_l4(fronts):
            # The agent (SSH node + emulated Postgres) joins and tunnels through the LB: to B.
            token = await auth.mint_token(("Node", "Db"), ttl=300.0, single_use=False)
            agent_cfg = config.from_dict({
                "teleport": {"data_dir": str(tmp_path / "agent"), "nodename": "node1"},
                "auth_service": {"enabled": False, "keep_alive_interval": "1s"}, "proxy_service": {"enabled": False},
                "ssh_service": {"listen_addr": "127.0.0.1:0"},
                "db_service": {"enabled": True, "databases": [{"name": "pg", "protocol": "postgres"}]}})
            agent = AgentProcess(agent_cfg, AgentOptions(("node", "db"), proxy_server=Addr("127.0.0.1", agents_port),
                                                         token=token, ca_pins=(auth.ca_pin,), nodename="node1"),
                                 MAKERS)
            await agent.start()
            await agent.wait_connected()
            await _until(lambda: {r.kind for _, r in b.tunnels.resources()} >= {"node", "db"}, 10, "tunnels on B")
            assert not a.tunnels.resources(), "the agent holds one tunnel per service, all on B"

            # /webapi/ping through the LB advertises the LB; the proxy logs the client's real address.
            ping = await asyncio.to_thread(_ping_from, "127.0.0.1", clients_port, "127.0.0.9", tmp_path / "proxy-a"
                                           / "pki" / "ca.crt")
            assert ping["proxy"]["ssh"]["public_addr"] == public
            assert any("peer=127.0.0.9:" in r.getMessage() for r in caplog.records), "PROXY v2 source not logged"

            body = {"user": {"kind": "user", "version": "v2", "metadata": {"name": "alice"},
                             "spec": {"roles": ["access"], "traits": {"logins": ["alice"], "db_users": ["alice"],
                                                                      "db_names": ["app"]}}}, "password": PASSWORD}
            await auth.server.upsert_user(body, create_only=False)
            home = tmp_path / "home"
            await asyncio.to_thread(login_mod.login, home, Addr("127.0.0.1", clients_port), "alice", PASSWORD,
                                    3600.0, login_mod.Trust(tmp_path / "proxy-a" / "pki" / "ca.crt"))
            prof = profile_mod.current(home)
            assert prof is not None

            # The peer port takes only the Proxy role's host certificates (lib/proxy/peer checkProxyRole).
            assert await _peer_refusal(b, None) == "handshake"
            node_files = agent.contexts["node"].files
            assert await _peer_refusal(b, (node_files.cert, node_files.key)) == "proxy system role required"

            # tpemu ssh and psql: LB → A → peer → B → agent.
            assert await _ssh(prof, "echo via-peer") == "via-peer\n"
            assert a.peering is not None and b.peering is not None
            assert (a.peering.forwarded, b.peering.served) == (1, 1)
            psql = realservers.binary("psql")
            login = await db_mod.db_login(prof, "pg", "alice", "app")
            stop = asyncio.Event()
            ready: asyncio.Future[Addr] = asyncio.get_running_loop().create_future()
            tunnel = asyncio.create_task(db_mod.run_tunnel(login, Addr("127.0.0.1", 0), ready.set_result, stop))
            local = await asyncio.wait_for(ready, 10)
            try:
                r = await asyncio.to_thread(subprocess.run, [
                    psql, f"host=127.0.0.1 port={local.port} user=alice dbname=app sslmode=disable", "-tAc",
                    "select 6 * 7"], capture_output=True, text=True, timeout=60, check=False)
                assert r.returncode == 0 and r.stdout.strip() == "42", r.stderr
                assert b.peering.served == 2

                # B dies: the agent re-tunnels (through the LB) to A; sessions through A resume.
                killed = time.monotonic()
                await b.close()
                await _until(lambda: {r.kind for _, r in a.tunnels.resources()} >= {"node", "db"}, 30,
                             "the agent to re-tunnel to A")
                retunnel = time.monotonic() - killed
                assert await _ssh(prof, "echo after-failover") == "after-failover\n"
                resumed = time.monotonic() - killed
                r = await asyncio.to_thread(subprocess.run, [
                    psql, f"host=127.0.0.1 port={local.port} user=alice dbname=app sslmode=disable", "-tAc",
                    "select 1"], capture_output=True, text=True, timeout=60, check=False)
                assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
                print(f"\nre-tunnel after proxy B died: {retunnel:.2f}s; first SSH session through A: {resumed:.2f}s")
                # The agent's backoff bound (agent/tunnel.py: min 0.5 s doubling, 10 s cap) plus
                # HAProxy's 200 ms health check.
                assert retunnel < 12.0
            finally:
                stop.set()
                await tunnel
    finally:
        if agent is not None:
            for offers in agent.offers.values():
                for offer in offers:
                    close = getattr(offer.service, "close", None)
                    if close is not None:
                        await close()
            await agent.close()
        for p in proxies.values():
            await p.close()
        await auth.close()
