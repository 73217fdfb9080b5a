"""The embedded PostgreSQL engine: start time, and ``select 1`` through proxy + tunnel vs direct (glue).

* **engine start**: :class:`~tpemu.agent.engines.postgres.PostgresEngine` on a fresh data
  directory (``initdb`` + ``postgres`` until ready: what the first connection to a new cluster
  waits for) and again on the existing one (a restart: what a crash or the next ``make run``
  costs); the medians of a few runs.
* **round trip**: one ``tpemu start`` all-in-one process with ``pg`` on ``uri: embedded``; asyncpg
  connects through the proxy (TLS, ALPN ``teleport-postgres``, the user's database certificate →
  proxy → reverse tunnel → agent → the engine's unix socket), and directly to the same engine's
  unix socket (the baseline of the same run), and times ``select 1`` on an open connection and
  a new connection. The ratio is the figure to watch; absolute numbers move with the machine.

Run: ``python -m bench.db_engine [quick|full]`` (prints JSON).
"""

from __future__ import annotations

import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import peers
from bench.fullstack import PASSWORD, _free_port, _wait_log


async def _engine_start(runs: int) -> dict[str, Any]:
    from tpemu.agent.engines import postgres

    where, source = postgres.bin_dir()
    if where is None:
        return {"skipped": postgres.INSTALL_HINT}
    fresh: list[float] = []
    again: list[float] = []
    for _ in range(runs):
        base = Path(tempfile.mkdtemp(prefix="tpemu-bench-pg-"))
        try:
            for samples in (fresh, again):
                engine = postgres.PostgresEngine("bench", base / "pg", where, source)
                t0 = time.perf_counter()
                await engine.endpoint()
                samples.append(time.perf_counter() - t0)
                await engine.close()
        finally:
            shutil.rmtree(base, ignore_errors=True)
    return {"engine": source, "fresh_data_dir_s": round(statistics.median(fresh), 3),
            "existing_data_dir_s": round(statistics.median(again), 3), "runs": runs}


def run(profile: str = "quick") -> dict[str, Any]:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return {"skipped": "asyncpg is not installed (a test dependency)"}
    import uvloop

    n = 300 if profile == "quick" else 2000
    result: dict[str, Any] = {"engine_start": uvloop.run(_engine_start(3 if profile == "quick" else 7))}
    if "skipped" in result["engine_start"]:
        return result
    tpemu = Path(sys.executable).with_name("tpemu")
    with tempfile.TemporaryDirectory(prefix="tpemu-bench-eng-") as tmp:
        work = Path(tmp)
        web, auth = _free_port(), _free_port()
        cfg = work / "cluster.yaml"
        cfg.write_text(f"""teleport: {{data_dir: {work / 'data'}, nodename: bench-node, log: {{severity: WARN}}}}
auth_service: {{listen_addr: "127.0.0.1:{auth}"}}
proxy_service: {{web_listen_addr: "127.0.0.1:{web}"}}
db_service:
  enabled: yes
  databases: [{{name: pg, protocol: postgres, uri: embedded}}]
""")
        logf = work / "tpemu.log"
        with logf.open("wb") as f:
            proc = subprocess.Popen([str(tpemu), "start", "--config", str(cfg)], stdout=f, stderr=subprocess.STDOUT)
        try:
            _wait_log(logf, "agent:", proc)
            pw = work / "pw"
            pw.write_text(PASSWORD)
            subprocess.run([str(tpemu), "users", "add", "alice", "--logins", "alice", "--db-users", "alice",
                            "--db-names", "postgres", "--password-file", str(pw), "--data-dir", str(work / "data")],
                           check=True, capture_output=True, timeout=60)
            home = work / "home"
            subprocess.run([str(tpemu), "login", "--proxy", f"127.0.0.1:{web}", "--user", "alice", "--password-file",
                            str(pw), "--home", str(home), "--ca", str(work / "data" / "pki" / "ca.crt")],
                           check=True, capture_output=True, timeout=60)
            result["round_trip"] = uvloop.run(_round_trips(home, work / "data" / "engines" / "pg", n))
        finally:
            peers.stop_processes([proc], 20)
    return result


async def _round_trips(home: Path, engine_dir: Path, n: int) -> dict[str, Any]:
    import asyncpg

    from tpemu.client import db as db_mod
    from tpemu.client import profile as profile_mod
    from tpemu.wire import alpn

    prof = profile_mod.current(home)
    assert prof is not None
    login = await db_mod.db_login(prof, "pg", "alice", "postgres")
    ctx = ssl.create_default_context(cafile=login.ca_path)
    ctx.load_cert_chain(login.cert_path, login.key_path)
    ctx.set_alpn_protocols([alpn.POSTGRES])
    ctx.check_hostname = False  # the proxy's name is checked by the CA; asyncpg dials by address
    proxy = login.proxy_addr

    async def via_proxy() -> Any:
        return await asyncpg.connect(host=proxy.host, port=proxy.port, user="alice", database="postgres", ssl=ctx,
                                     direct_tls=True, timeout=60)

    first_t0 = time.perf_counter()
    first = await via_proxy()  # starts the engine (initdb on this fresh data dir), creates the role
    first_connect = time.perf_counter() - first_t0
    await first.close()
    sockdir = engine_dir / "run"

    async def direct() -> Any:
        return await asyncpg.connect(host=str(sockdir), user="alice", database="postgres")

    out: dict[str, Any] = {"first_connection_incl_engine_start_s": round(first_connect, 3)}
    for name, connect in (("direct_to_engine", direct), ("through_proxy_and_tunnel", via_proxy)):
        conns: list[float] = []
        for _ in range(20):
            t0 = time.perf_counter()
            conn = await connect()
            conns.append(time.perf_counter() - t0)
            await conn.close()
        conn = await connect()
        rtts: list[float] = []
        for _ in range(n):
            t0 = time.perf_counter()
            await conn.fetchval("select 1")
            rtts.append(time.perf_counter() - t0)
        await conn.close()
        out[name] = {"connect_ms": round(statistics.median(conns) * 1e3, 2),
                     "select1_round_trip_us": round(statistics.median(rtts) * 1e6)}
    out["round_trip_ratio"] = round(out["through_proxy_and_tunnel"]["select1_round_trip_us"]
                                    / max(out["direct_to_engine"]["select1_round_trip_us"], 1), 2)
    out["connect_ratio"] = round(out["through_proxy_and_tunnel"]["connect_ms"]
                                 / max(out["direct_to_engine"]["connect_ms"], 0.01), 2)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=2))
