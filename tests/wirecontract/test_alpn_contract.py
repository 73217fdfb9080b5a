"""ALPN as Teleport's proxy negotiates it, checked with Python's ssl and with Go's crypto/tls.

Follows ``lib/srv/alpnproxy/common/protocols.go`` (``SupportedProtocols``: 36 names, ``-ping``
forms first), ``lib/srv/alpnproxy/proxy.go`` (``getHandleDescBasedOnALPNVal``: handler in the
client's order, unknown names closed without an answer; ``handleConn``: handshake with
``NextProtos = SupportedProtocols``, i.e. the *server's* preference) and
``lib/service/service.go`` ``setupALPNRouter`` (the SSH proxy's own ``NextProtos``; Auth by
``MatchByALPNPrefix``, TLS forwarded to Auth).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import unverified_client_context
from tpemu.testkit import Cluster
from tpemu.wire import alpn as names

# Offer → what Teleport's proxy negotiates. Each name alone negotiates itself; pairs show the
# server's order and the client-side-only names.
PAIRS = [
    (["teleport-postgres", "teleport-postgres-ping"], "teleport-postgres-ping"),
    (["teleport-mongodb", "teleport-mongodb-ping"], "teleport-mongodb-ping"),
    (["h2", "http/1.1"], "http/1.1"),
    (["teleport-reversetunnelv2", "teleport-reversetunnel"], "teleport-reversetunnel"),
    (["teleport-tcp", "teleport-tcp-ping"], "teleport-tcp-ping"),
]


def _expected() -> list[tuple[list[str], str]]:
    return [([n], n) for n in names.SUPPORTED_PROTOCOLS] + PAIRS


async def _negotiate(port: int, offered: list[str]) -> str | None:
    ctx = unverified_client_context(offered)
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="proxy.tpemu.test")
    chosen = writer.get_extra_info("ssl_object").selected_alpn_protocol()
    writer.close()
    return chosen


async def test_every_teleport_alpn_name_is_negotiated(tmp_path: Path) -> None:
    async with Cluster(tmp_path, nodes=(), databases=()) as cluster:
        for offered, chosen in _expected():
            assert await _negotiate(cluster.web.port, offered) == chosen, offered
        # teleport-auth@<hex(cluster)>.teleport.cluster.local is routed by prefix to Auth, which
        # negotiates the inner protocol (api/client ConfigureALPN appends it).
        route = names.auth_protocol(cluster.cfg.auth_service.cluster_name)
        assert await _negotiate(cluster.web.port, [route, "http/1.1"]) == "http/1.1"
        assert await _negotiate(cluster.web.port, [route, "h2"]) == "h2"


def _go_check(binary: Path, port: int, offers: list[list[str]]) -> list[dict[str, object]]:
    proc = subprocess.run([str(binary), f"127.0.0.1:{port}", *(",".join(o) for o in offers)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


async def test_go_crypto_tls_gets_teleports_choice(tmp_path: Path, go_peer: Callable[..., Path]) -> None:
    binary = go_peer("alpncheck")
    async with Cluster(tmp_path, nodes=(), databases=()) as cluster:
        route = names.auth_protocol(cluster.cfg.auth_service.cluster_name)
        cases = [*_expected(), ([route, "h2"], "h2")]
        results = await asyncio.to_thread(_go_check, binary, cluster.web.port, [o for o, _ in cases])
        for (offered, chosen), got in zip(cases, results, strict=True):
            assert got["offered"] == offered
            assert got.get("error") is None and got["negotiated"] == chosen, got
        # Unknown names: Teleport closes without a TLS answer, so Go reports EOF, not an alert.
        [unknown] = await asyncio.to_thread(_go_check, binary, cluster.web.port, [["nope", "teleport-nope"]])
        assert unknown["error"] == "EOF", unknown
        # A prefix match no server name overlaps: Go's own no_application_protocol alert.
        [mysql] = await asyncio.to_thread(_go_check, binary, cluster.web.port, [["teleport-mysql-8.0.36"]])
        assert "no application protocol" in str(mysql["error"]), mysql


@pytest.mark.parametrize("offered", [["teleport-proxy-grpc", "h2"], ["teleport-proxy-grpc-mtls", "h2"],
                                     ["teleport-proxy-ssh-grpc", "h2"]])
async def test_grpc_routes_answer_a_grpc_status_over_h2(tmp_path: Path, offered: list[str]) -> None:
    # The services exist in Teleport; tpemu does not emulate them: a real gRPC status comes back
    # over HTTP/2 (the h2 library on both sides here).
    import h2.connection
    import h2.events

    async with Cluster(tmp_path, nodes=(), databases=()) as cluster:
        ctx = unverified_client_context(offered)
        reader, writer = await asyncio.open_connection("127.0.0.1", cluster.web.port, ssl=ctx,
                                                       server_hostname="proxy.tpemu.test")
        # h2 precedes the gRPC names in SupportedProtocols: grpc-go clients get the h2 they need.
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "POST"), (":scheme", "https"), (":authority", "proxy"),
                              (":path", "/proto.JoinService/RegisterUsingIAMMethod"),
                              ("content-type", "application/grpc"), ("te", "trailers")], end_stream=True)
        writer.write(conn.data_to_send())
        headers: dict[str, str] = {}
        async with asyncio.timeout(10):
            while "grpc-status" not in headers:
                data = await reader.read(65536)
                assert data, "connection closed before a gRPC status"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        headers.update({k.decode(): v.decode() for k, v in event.headers})
                writer.write(conn.data_to_send())
        writer.close()
        assert headers[":status"] == "200" and headers["content-type"] == "application/grpc"
        assert headers["grpc-status"] == "12"  # UNIMPLEMENTED
        assert "does not emulate" in headers["grpc-message"].replace("%20", " ")
