"""The Kubernetes Service's identity forwarding (Teleport 17's proxy → kube service hop):
``Teleport-Impersonate-User`` is honoured only from a Proxy certificate of the same cluster
(``lib/authz/middleware.go`` ``Middleware.ServeHTTP``, ``extractIdentityFromImpersonationHeader``), and it is
removed from every request before the cluster sees it, whichever way the request came."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tpemu import identity as ident
from tpemu.agent.kube.service import KubeService, forwarded_identity
from tpemu.net.kube_forward import FORWARDED_IP, FORWARDED_USER
from tpemu.net.kube_http import Reply, Request
from tpemu.net.kube_status import StatusError

PROXY = ident.Identity(username="p1.tpemu.local", groups=(ident.ROLE_PROXY,), teleport_cluster="tpemu.local")
NODE = ident.Identity(username="n1.tpemu.local", groups=(ident.ROLE_NODE,), teleport_cluster="tpemu.local")
ALICE = ident.Identity(username="alice", groups=("access",), teleport_cluster="tpemu.local",
                       kubernetes_groups=("system:masters",))


def test_a_proxy_forwards_a_user() -> None:
    assert forwarded_identity(json.dumps(ALICE.to_json()), PROXY) == ALICE


@pytest.mark.parametrize(("raw", "caller", "code", "words"), [
    (json.dumps(ALICE.to_json()), NODE, 403, "Credentials forwarding is only permitted for Proxy"),
    ("", NODE, 403, "only a Proxy may forward users"),
    ("", None, 403, "only a Proxy may forward users"),
    ("", PROXY, 401, "forwarded no user"),
    ("{oops", PROXY, 400, "invalid Teleport-Impersonate-User"),
    ('{"username": 7}', PROXY, 400, "invalid Teleport-Impersonate-User"),
    # Teleport serves a trusted cluster's user as a RemoteUser; tpemu has no trusted clusters.
    (json.dumps({**ALICE.to_json(), "teleport_cluster": "leaf"}), PROXY, 403, "trusted clusters are not emulated"),
    (json.dumps(NODE.to_json()), PROXY, 403, "can not impersonate a system role"),
])
def test_forwarding_refusals(raw: str, caller: ident.Identity | None, code: int, words: str) -> None:
    with pytest.raises(StatusError) as info:
        forwarded_identity(raw, caller)
    assert info.value.code == code and words in info.value.message


class _Cluster:
    name = "emu"

    def __init__(self) -> None:
        self.seen: list[Request] = []

    def close(self) -> None:
        return None

    async def handle(self, request: Request) -> Reply:
        self.seen.append(request)
        return Reply(200, b"{}")


async def _exchange(service: KubeService, identity: ident.Identity | None, forwarder: ident.Identity | None,
                    headers: str) -> bytes:
    """One request through ``serve_http`` on a loopback socket pair."""
    server = await asyncio.start_server(
        lambda r, w: service.serve_http(r, w, identity, "", "test", forwarder=forwarder), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /api HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    server.close()
    await server.wait_closed()
    return data


async def test_forwarding_headers_never_reach_the_cluster() -> None:
    cluster: Any = _Cluster()
    service = KubeService([cluster])
    forged = json.dumps({**ALICE.to_json(), "username": "mallory", "kubernetes_groups": ["system:masters"]})
    bob = ident.Identity(username="bob", groups=("access",), kubernetes_users=("bob",))
    # Through the tunnel the identity is the dial request's: a client's header is dropped, not used.
    data = await _exchange(service, bob, None, f"Teleport-Impersonate-User: {forged}\r\n{FORWARDED_IP}: 1.2.3.4\r\n")
    assert data.startswith(b"HTTP/1.1 200")
    # Directly, from the proxy: the forwarded user, and the headers are gone before the cluster.
    data = await _exchange(service, None, PROXY, f"Teleport-Impersonate-User: {json.dumps(ALICE.to_json())}\r\n")
    assert data.startswith(b"HTTP/1.1 200")
    first, second = cluster.seen
    assert first.headers["impersonate-user"] == "bob" and second.headers["impersonate-user"] == "alice"
    assert second.multi["impersonate-group"] == ["system:masters", "system:authenticated"]
    for request in (first, second):
        assert FORWARDED_USER not in request.headers and FORWARDED_IP not in request.headers
        assert FORWARDED_USER not in request.multi and FORWARDED_IP not in request.multi
    # Directly, from a node's certificate: refused before the cluster.
    data = await _exchange(service, None, NODE, f"Teleport-Impersonate-User: {json.dumps(ALICE.to_json())}\r\n")
    assert data.startswith(b"HTTP/1.1 403") and b"only permitted for Proxy" in data and len(cluster.seen) == 2
