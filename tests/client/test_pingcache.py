"""The per-process ``/webapi/ping`` cache (Teleport: ``lib/client/api.go`` ``TeleportClient.Ping``
keeps its first successful answer) and how ``connect_proxy`` uses it."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import alice, ssh_cluster
from tpemu.client import pingcache
from tpemu.client import ssh as ssh_mod
from tpemu.client.pingcache import PingCache
from tpemu.client.ssh import ProxyRoute, SSHError
from tpemu.testkit.cluster import CLUSTER


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Fetcher:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        return {"proxy": {"n": self.calls}}


async def test_an_answer_is_kept_for_the_ttl_then_asked_again() -> None:
    clock, fetch = Clock(), Fetcher()
    cache = PingCache(ttl=30.0, clock=clock)
    assert await cache.get("k", fetch) == ({"proxy": {"n": 1}}, False)
    clock.now += 29.9
    assert await cache.get("k", fetch) == ({"proxy": {"n": 1}}, True)
    assert fetch.calls == 1 and (cache.fetched, cache.served) == (1, 1)
    clock.now += 0.1  # 30 s after it was fetched: too old
    assert await cache.get("k", fetch) == ({"proxy": {"n": 2}}, False)
    assert await cache.get("other", fetch) == ({"proxy": {"n": 3}}, False)  # keys apart
    assert fetch.calls == 3


async def test_a_failure_is_not_kept_and_forget_drops_an_answer() -> None:
    cache = PingCache(clock=Clock())

    async def broken() -> Any:
        raise SSHError("no proxy")

    with pytest.raises(SSHError):
        await cache.get("k", broken)
    fetch = Fetcher()
    assert (await cache.get("k", fetch))[1] is False  # nothing was kept from the failure
    assert cache.forget("k") and not cache.forget("k")
    assert (await cache.get("k", fetch))[1] is False and fetch.calls == 2


async def test_callers_get_their_own_copy_and_the_cache_is_bounded() -> None:
    cache = PingCache(clock=Clock())
    first, _ = await cache.get("k", Fetcher())
    first["proxy"]["n"] = "changed by a caller"
    assert (await cache.get("k", Fetcher()))[0] == {"proxy": {"n": 1}}
    for i in range(pingcache.MAX_ENTRIES + 1):
        await cache.get(i, Fetcher())
    assert len(cache._kept) <= pingcache.MAX_ENTRIES


def test_a_new_login_is_a_new_key(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(b"one")
    before = pingcache.file_stamp(ca)
    ca.write_bytes(b"another CA")  # a new login to another cluster (maybe on a reused port)
    os.utime(ca, ns=(before[1] + 1, before[1] + 1))
    assert pingcache.file_stamp(ca) != before
    assert pingcache.file_stamp(tmp_path / "missing")[1:] == (-1, -1)


async def test_sessions_in_one_process_ping_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As one TeleportClient: the first connection pings the proxy, the next ones use its answer.
    async with ssh_cluster(tmp_path) as c:
        creds = ssh_mod.Credentials.load(alice(c).profile)
        pings: list[str] = []
        real = ssh_mod.web_get

        async def counting(profile: Any, path: str, *args: Any, **kwargs: Any) -> Any:
            pings.append(path)
            return await real(profile, path, *args, **kwargs)

        monkeypatch.setattr(ssh_mod, "web_get", counting)
        for _ in range(3):
            proxy = await ssh_mod.connect_proxy(creds)
            node = await ssh_mod.connect_node(proxy, creds, ssh_mod.parse_target("alice@node1", CLUSTER))
            async with node:
                assert (await node.run("echo hi")).stdout == "hi\n"
            proxy.close()
        assert pings == ["/webapi/ping"]


async def test_a_kept_answer_that_no_longer_works_is_asked_again(tmp_path: Path) -> None:
    # The proxy was reconfigured within the TTL: the kept answer names a route that is gone (a
    # plain SSH listener on a closed port); the failure drops it and the fresh answer (TLS routing
    # on the web port) is tried.
    async with ssh_cluster(tmp_path) as c:
        profile = alice(c).profile
        creds = ssh_mod.Credentials.load(profile)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]

        async def stale() -> Any:
            return {"proxy": {"tls_routing_enabled": False, "ssh": {"listen_addr": f"127.0.0.1:{closed}"}}}

        key = ssh_mod._ping_key(profile)
        pingcache.PINGS.forget(key)
        await pingcache.PINGS.get(key, stale)
        assert (await ssh_mod.proxy_route(profile)) == (ProxyRoute("127.0.0.1", closed, False), True)
        proxy = await ssh_mod.connect_proxy(creds)
        proxy.close()
        assert (await ssh_mod.proxy_route(profile)) == (ProxyRoute(c.web.host, c.web.port, True), True)
        # A failure on a kept answer that the fresh answer confirms is the error (one ping more);
        # on a fresh answer nothing is asked again.
        untrusting = ssh_mod.Credentials(profile, creds.key, creds.cert, creds.info, [])
        for kept in (True, False):
            if not kept:
                pingcache.PINGS.forget(key)
            fetched = pingcache.PINGS.fetched
            with pytest.raises(SSHError, match="is not trusted"):
                await ssh_mod.connect_proxy(untrusting)
            assert pingcache.PINGS.fetched == fetched + 1
