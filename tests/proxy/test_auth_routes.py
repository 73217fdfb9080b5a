"""The proxy's client of the Auth API (:meth:`tpemu.proxy.auth_routes.AuthRoutes.client`): one TLS
context and one kept-alive connection for its inventory polls, heartbeats and forwarded calls, for
as long as its identity stays; a new identity gets a new client."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from tpemu import authclient
from tpemu.testkit import Cluster


async def test_the_proxy_keeps_one_auth_client_for_its_identity(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 13: each call (the 5 s inventory poll makes two) built a new TLS context — the proxy's
    # certificate, key and CA read and parsed again — and made a new mutual-TLS handshake.
    built: list[Any] = []
    new_context = authclient.new_context

    def counted(*args: Any, **kwargs: Any) -> Any:
        built.append(args)
        return new_context(*args, **kwargs)

    monkeypatch.setattr(authclient, "new_context", counted)
    async with Cluster(tmp_path, nodes=(), databases=()) as c:
        routes, api = c.proxy.auth_routes, c.auth.api
        peers: list[str] = []
        serve = api._serve

        async def serve_counted(sock: Any, peer: str) -> None:
            peers.append(peer)
            await serve(sock, peer)

        monkeypatch.setattr(api, "_serve", serve_counted)
        client = routes.client()
        before = len(built)
        for _ in range(5):
            await c.proxy.tunnels.node_inventory(fresh=True)  # GET /v1/nodes, GET /v1/db_servers
        assert routes.client() is client and len(built) == before
        # Ten calls, on the kept connection (and at most one more, if the background poll, every
        # 0.2 s in the testkit, ran at the same moment).
        assert len(peers) <= 2, peers
        # A new identity (a new join) is never served by the old client: it gets its own.
        routes.identity = dataclasses.replace(routes.identity)
        assert routes.client() is not client and len(built) == before + 1
