"""Proxy peering cost: one proxy vs the peer hop, in the same run (a benchmark, not a test).

One process (uvloop): an Auth Service, proxies A and B (both with ``peer_listen_addr``), and an
agent serving an emulated Postgres whose reverse tunnel is on A. The benchmark logs in as a user
and measures, with the client code ``tpemu`` uses (TLS with ALPN ``teleport-postgres`` and the
user's database certificate, asyncpg with ``direct_tls``):

* **through one proxy**: client → A → tunnel → agent;
* **through the peer hop**: client → B → peer mTLS (3021) → A → tunnel → agent;

connection setup (ms, median) and ``select 1`` round trips on an open connection (µs, median),
rounds of both interleaved so that machine noise hits both alike; the ratio is the result.

    python -m bench.peering [quick|full]
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CLUSTER = "bench.local"
PASSWORD = "peering benchmark"


async def _setup(work: Path) -> tuple[Any, list[Any], Any]:
    from tpemu import config
    from tpemu.agent.process import AgentOptions, AgentProcess
    from tpemu.agent.services import MAKERS
    from tpemu.auth.service import AuthService
    from tpemu.proxy.auth_routes import AuthLink
    from tpemu.proxy.decide import ListenerKind
    from tpemu.proxy.service import ProxyService

    auth = AuthService(config.from_dict({"teleport": {"data_dir": str(work / "auth")},
                                         "auth_service": {"listen_addr": "127.0.0.1:0", "cluster_name": CLUSTER},
                                         "proxy_service": {"enabled": False}}))
    await auth.start()
    assert auth.addr is not None
    proxies = []
    for name in ("a", "b"):
        cfg = config.from_dict({"teleport": {"data_dir": str(work / name), "nodename": f"proxy-{name}"},
                                "auth_service": {"cluster_name": CLUSTER},
                                "proxy_service": {"web_listen_addr": "127.0.0.1:0", "peer_listen_addr": "127.0.0.1:0"}})
        link = AuthLink(auth.addr, ca_pins=(auth.ca_pin,), mint=lambda: auth.mint_token(("Proxy",), 300.0))
        proxy = ProxyService(cfg, auth=link)
        await proxy.start()
        proxies.append(proxy)
    token = await auth.mint_token(("Db",), 300.0)
    databases = [{"name": "pg", "protocol": "postgres"}]
    agent_cfg = config.from_dict({"teleport": {"data_dir": str(work / "agent")}, "auth_service": {"enabled": False},
                                  "proxy_service": {"enabled": False},
                                  "db_service": {"enabled": True, "databases": databases}})
    agent = AgentProcess(agent_cfg, AgentOptions(("db",), proxy_server=proxies[0].info.bound[ListenerKind.WEB],
                                                 token=token, ca_pins=(auth.ca_pin,), nodename="bench-agent"),
                         {"db": MAKERS["db"]})
    await agent.start()
    await agent.wait_connected()
    deadline = time.monotonic() + 15
    while not proxies[0].tunnels.resources("db"):
        if time.monotonic() > deadline:
            raise RuntimeError("the agent's database did not appear on proxy A")
        await asyncio.sleep(0.05)
    return auth, proxies, agent


async def _measure(n: int) -> dict[str, Any]:
    import asyncpg

    from tpemu.client import db as db_mod
    from tpemu.client import login as login_mod
    from tpemu.client import profile as profile_mod
    from tpemu.proxy.decide import ListenerKind
    from tpemu.wire import alpn

    with tempfile.TemporaryDirectory(prefix="tpemu-bench-peer-") as tmp:
        work = Path(tmp)
        auth, proxies, agent = await _setup(work)
        try:
            traits = {"db_users": ["alice"], "db_names": ["postgres"]}
            body = {"user": {"kind": "user", "version": "v2", "metadata": {"name": "alice"},
                             "spec": {"roles": ["access"], "traits": traits}}, "password": PASSWORD}
            await auth.server.upsert_user(body, create_only=False)
            a_web = proxies[0].info.bound[ListenerKind.WEB]
            home = work / "home"
            await asyncio.to_thread(login_mod.login, home, a_web, "alice", PASSWORD, 3600.0,
                                    login_mod.Trust(work / "a" / "pki" / "ca.crt"))
            prof = profile_mod.current(home)
            assert prof is not None
            login = await db_mod.db_login(prof, "pg", "alice", "postgres")
            ctx = ssl.create_default_context(cafile=login.ca_path)
            ctx.load_cert_chain(login.cert_path, login.key_path)
            ctx.set_alpn_protocols([alpn.POSTGRES])
            ctx.check_hostname = False
            targets = {"one_proxy": proxies[0].info.bound[ListenerKind.WEB],
                       "peer_hop": proxies[1].info.bound[ListenerKind.WEB]}

            async def connect(name: str) -> Any:
                addr = targets[name]
                return await asyncpg.connect(host=addr.host, port=addr.port, user="alice", database="postgres",
                                             ssl=ctx, direct_tls=True)

            conns: dict[str, list[float]] = {k: [] for k in targets}
            rtts: dict[str, list[float]] = {k: [] for k in targets}
            for _ in range(n):  # interleaved rounds
                for name in targets:
                    t0 = time.perf_counter()
                    conn = await connect(name)
                    conns[name].append(time.perf_counter() - t0)
                    for _ in range(20):
                        t1 = time.perf_counter()
                        await conn.fetchval("select 1")
                        rtts[name].append(time.perf_counter() - t1)
                    await conn.close()
            peering_b = proxies[1].peering
            out: dict[str, Any] = {name: {"connect_ms": round(statistics.median(conns[name]) * 1e3, 2),
                                          "round_trip_us": round(statistics.median(rtts[name]) * 1e6)}
                                   for name in targets}
            out["peer_hop"]["connect_ratio"] = round(out["peer_hop"]["connect_ms"] / out["one_proxy"]["connect_ms"], 2)
            out["peer_hop"]["round_trip_ratio"] = round(
                out["peer_hop"]["round_trip_us"] / max(out["one_proxy"]["round_trip_us"], 1), 2)
            out["dials_through_peer"] = peering_b.forwarded if peering_b is not None else 0
            out["rounds"] = n
            return out
        finally:
            await agent.close()
            for offers in agent.offers.values():
                for offer in offers:
                    close = getattr(offer.service, "close", None)
                    if close is not None:
                        await close()
            for proxy in proxies:
                await proxy.close()
            await auth.close()


def run_peering(profile: str = "quick") -> dict[str, Any]:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return {"skipped": "asyncpg is not installed (a test dependency)"}
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    logging.basicConfig(level=logging.WARNING)
    return runner(_measure(20 if profile == "quick" else 100))


if __name__ == "__main__":
    print(json.dumps(run_peering(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=2))
