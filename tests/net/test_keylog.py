"""SSLKEYLOGFILE: every TLS endpoint tpemu owns writes its secrets in the NSS key log format
(what Wireshark reads to decrypt a capture): the proxy's server side, the Auth Service, the
agents' tunnels, and the client commands. The test's own client context does not log, so the
lines for its connection come from tpemu's server side."""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path

import pytest

from tpemu.testkit import Cluster

LINE = re.compile(r"^(CLIENT_RANDOM|CLIENT_HANDSHAKE_TRAFFIC_SECRET|SERVER_HANDSHAKE_TRAFFIC_SECRET|"
                  r"CLIENT_TRAFFIC_SECRET_0|SERVER_TRAFFIC_SECRET_0|EXPORTER_SECRET) [0-9a-f]{64} [0-9a-f]+$")


def randoms(path: Path) -> set[str]:
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines and all(LINE.match(ln) for ln in lines), lines[:3]
    return {ln.split()[1] for ln in lines}


async def test_every_tls_endpoint_logs_its_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keylog = tmp_path / "keys.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(keylog))
    async with Cluster(tmp_path / "c", nodes=(), databases=[{"name": "pg", "protocol": "postgres"}]) as c:
        # Auth (the proxy and the agent joined it over mTLS) and the agent's reverse tunnel: logged.
        assert len(randoms(keylog)) >= 3
        before = randoms(keylog)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # a raw context: it does not log by itself
        ctx.load_verify_locations(str(c.ca))
        ctx.check_hostname = False
        ctx.set_alpn_protocols(["http/1.1"])
        reader, writer = await asyncio.open_connection(c.web.host, c.web.port, ssl=ctx, server_hostname="localhost")
        writer.write(b"GET /webapi/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
        writer.close()
        after = randoms(keylog)
        assert len(after - before) == 1  # the proxy's server side logged this connection
        # the client commands (tpemu's contexts from ssl.create_default_context) log too
        user = await c.user("alice")
        conn_before = randoms(keylog)
        import asyncpg

        port = await user.tunnel("pg")
        pg = await asyncpg.connect(host="127.0.0.1", port=port, user="alice", database="postgres", ssl=False,
                                   timeout=10)
        assert await pg.fetchval("select 1") == 1
        await pg.close()
        # the local tunnel (client side), the proxy (server side) and the agent's dial each log
        assert len(randoms(keylog) - conn_before) >= 1


#: Files that may call ``ssl.SSLContext(...)`` directly, and why.
RAW_CONTEXT_ALLOWED = {
    "tpemu/net/tls.py": "new_context itself",
    "tpemu/testing.py": "byte vectors for tests: a ClientHello written into memory, no endpoint",
    "proxy/webcert.py": "checks that a key pair loads; the context never serves",
}


def test_no_tls_endpoint_bypasses_new_context() -> None:
    # A source scan so that a TLS endpoint added later cannot skip SSLKEYLOGFILE silently.
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for folder in ("tpemu", "proxy", "agent", "auth"):
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if "ssl.SSLContext(" in path.read_text(encoding="utf-8") and rel not in RAW_CONTEXT_ALLOWED:
                offenders.append(rel)
    assert offenders == [], "use tpemu.net.tls.new_context (SSLKEYLOGFILE) in: " + ", ".join(offenders)
