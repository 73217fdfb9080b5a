"""The order a proxy tries when it has no local tunnel for a target (``TunnelRegistry.dial``).

With proxy peering, a local miss asks the peers before refreshing the inventory from the Auth
Service: that refresh on every dial of a tunnel held by a peer was most of the peer hop's setup
cost (bench.peering). Without peers, or when no peer has it, the refresh still happens, so a node
that joined since the last poll is found (Teleport's proxy also asks its peers for a tunnel it
does not hold: lib/proxy/peer/client.go ``Client.DialNode``).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from tpemu.proxy.tunnels import TunnelError, TunnelRegistry
from tpemu.wire import tunnel as tw


class _Transport(asyncio.Transport):
    pass


def _registry() -> tuple[TunnelRegistry, list[str]]:
    proxy: Any = SimpleNamespace(cfg=SimpleNamespace(auth_service=SimpleNamespace(cluster_name="c")))
    reg = TunnelRegistry(proxy)
    reg._host_keys = [object()]  # type: ignore[list-item]  # "has an identity": dialling is allowed
    calls: list[str] = []

    async def refresh() -> None:
        calls.append("refresh")

    reg._refresh_direct = refresh  # type: ignore[method-assign]
    return reg, calls


REQ = tw.DialRequest(address="node-b:0", server_id="b.c")


async def test_peer_holding_the_tunnel_is_asked_without_an_auth_refresh() -> None:
    reg, calls = _registry()
    got = _Transport()

    async def peer(req: tw.DialRequest, timeout: float) -> asyncio.Transport:
        calls.append("peer")
        return got

    reg.peer_dial = peer
    assert await reg.dial(REQ) is got
    assert calls == ["peer"]


async def test_no_peer_has_it_then_the_inventory_is_refreshed_and_both_answers_reported() -> None:
    reg, calls = _registry()

    async def peer(req: tw.DialRequest, timeout: float) -> asyncio.Transport:
        calls.append("peer")
        raise TunnelError("peer proxy-b: not here")

    reg.peer_dial = peer
    with pytest.raises(TunnelError) as err:
        await reg.dial(REQ)
    assert calls == ["peer", "refresh"]
    text = str(err.value)
    assert "not found in cluster c" in text and text.endswith("through peer proxies: peer proxy-b: not here")


async def test_without_peers_or_when_a_peer_asks_the_refresh_comes_first() -> None:
    reg, calls = _registry()
    with pytest.raises(TunnelError, match="not found in cluster c"):
        await reg.dial(REQ)
    assert calls == ["refresh"]

    async def peer(req: tw.DialRequest, timeout: float) -> asyncio.Transport:
        raise AssertionError("a peer's own dial (local_only) must not ask peers")

    reg.peer_dial = peer
    calls.clear()
    with pytest.raises(TunnelError, match="not found in cluster c"):
        await reg.dial(REQ, local_only=True)
    assert calls == ["refresh"]
