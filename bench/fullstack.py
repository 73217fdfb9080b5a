"""Full-stack routes: SSH session setup and database round trips through a reverse tunnel (glue).

One ``tpemu start`` all-in-one process (Auth, Proxy, an agent with an SSH node and emulated
databases holding reverse tunnels to the proxy, uvloop) on free loopback ports; the benchmark
process logs in as a user and measures, with the same client code ``tpemu`` uses:

* **SSH session setup**: a new SSH connection to the proxy (TLS, ALPN ``teleport-proxy-ssh``,
  user certificate), the ``proxy:node:3022`` subsystem through the agent's tunnel, the user's own
  SSH session to the node inside it, ``exec true``, exit status — milliseconds per session, and
  the same with the SSH connection to the proxy kept (only the node session new), and as a new
  client (the process's kept ``/webapi/ping`` answer dropped first: ``tpemu.client.pingcache``;
  a new connection in one process reuses it, as Teleport's ``TeleportClient.Ping`` does);
* **Postgres round trip**: asyncpg through ``tpemu``'s local database tunnel path (TLS with ALPN
  ``teleport-postgres`` and the user's database certificate → proxy → reverse tunnel → agent →
  emulated Postgres): milliseconds to connect, and microseconds per ``select 1`` on an open
  connection, against the same emulated backend served directly in the benchmark process (the
  baseline of the same run).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import peers

Log = Callable[[str], None]
PASSWORD = "full stack benchmark"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_log(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"tpemu start did not come up:\n{path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)


def run_fullstack(profile: str = "quick", log: Log = print) -> dict[str, Any]:
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return {"skipped": "asyncpg is not installed (a test dependency)"}
    n = 20 if profile == "quick" else 60
    with tempfile.TemporaryDirectory(prefix="tpemu-bench-full-") as tmp, cluster(Path(tmp)) as (_proc, home):
        import uvloop

        return uvloop.run(_measure(home, n, log))


@contextlib.contextmanager
def cluster(work: Path, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A ``tpemu start`` all-in-one cluster in ``work`` with user alice logged in; yields the
    process and the client home. ``env``: the environment of every tpemu command (a build's
    ``PYTHONPATH``, :mod:`bench.fullstack_builds`); by default this interpreter's ``tpemu``."""
    tpemu = [str(Path(sys.executable).with_name("tpemu"))] if env is None else [
        sys.executable, "-c", "import sys; from tpemu.cli import main; sys.exit(main())"]
    web, auth = _free_port(), _free_port()
    cfg = work / "cluster.yaml"
    cfg.write_text(f"""teleport: {{data_dir: {work / 'data'}, nodename: bench-node, log: {{severity: WARN}}}}
auth_service: {{listen_addr: "127.0.0.1:{auth}"}}
proxy_service: {{web_listen_addr: "127.0.0.1:{web}"}}
db_service:
  enabled: yes
  databases: [{{name: pg, protocol: postgres, uri: emulated}}]
""")
    logf = work / "tpemu.log"
    with logf.open("wb") as f:
        proc = subprocess.Popen([*tpemu, "start", "--config", str(cfg)], stdout=f, stderr=subprocess.STDOUT, env=env,
                                cwd=work)  # not the repository: ``-c`` puts the cwd first on sys.path
    try:
        _wait_log(logf, "agent:", proc)
        pw = work / "pw"
        pw.write_text(PASSWORD)
        subprocess.run([*tpemu, "users", "add", "alice", "--logins", "alice", "--db-users", "alice",
                        "--db-names", "postgres", "--password-file", str(pw), "--data-dir", str(work / "data")],
                       check=True, capture_output=True, timeout=60, env=env, cwd=work)
        home = work / "home"
        subprocess.run([*tpemu, "login", "--proxy", f"127.0.0.1:{web}", "--user", "alice", "--password-file",
                        str(pw), "--home", str(home), "--ca", str(work / "data" / "pki" / "ca.crt")],
                       check=True, capture_output=True, timeout=60, env=env, cwd=work)
        time.sleep(1.0)  # the agent's first heartbeats
        yield proc, home
    finally:
        peers.stop_processes([proc], 15)


async def _measure(home: Path, n: int, log: Log) -> dict[str, Any]:
    from tpemu.client import profile as profile_mod
    from tpemu.client import ssh as ssh_mod

    prof = profile_mod.current(home)
    assert prof is not None
    creds = ssh_mod.Credentials.load(prof)
    target = ssh_mod.parse_target("alice@bench-node", prof.cluster)
    result: dict[str, Any] = {}

    async def one_session(proxy: Any) -> None:
        node = await ssh_mod.connect_node(proxy, creds, target)
        done = await node.run("true", check=False)
        assert done.exit_status == 0, done
        node.close()
        await node.wait_closed()

    cold: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        proxy = await ssh_mod.connect_proxy(creds)
        await one_session(proxy)
        cold.append(time.perf_counter() - t0)
        proxy.close()
    from tpemu.client import pingcache

    fresh: list[float] = []
    for _ in range(n):  # as a new tsh command: the kept /webapi/ping answer dropped first
        pingcache.PINGS.clear()
        t0 = time.perf_counter()
        proxy = await ssh_mod.connect_proxy(creds)
        await one_session(proxy)
        fresh.append(time.perf_counter() - t0)
        proxy.close()
    proxy = await ssh_mod.connect_proxy(creds)
    warm: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        await one_session(proxy)
        warm.append(time.perf_counter() - t0)
    proxy.close()
    result["ssh_session_setup"] = {"new_proxy_connection_ms": round(statistics.median(cold) * 1e3, 1),
                                   "kept_proxy_connection_ms": round(statistics.median(warm) * 1e3, 1),
                                   "new_client_ms": round(statistics.median(fresh) * 1e3, 1),
                                   "sessions": n}
    log(f"full stack: SSH session setup (exec true) {result['ssh_session_setup']['new_proxy_connection_ms']} ms "
        f"with a new proxy connection, {result['ssh_session_setup']['kept_proxy_connection_ms']} ms on a kept one, "
        f"{result['ssh_session_setup']['new_client_ms']} ms as a new client (its own /webapi/ping)")
    result["postgres"] = await _postgres(prof, n, log)
    return result


async def _postgres(prof: Any, n: int, log: Log) -> dict[str, Any]:
    import asyncpg

    from tpemu.agent.backends.base import serve_tcp
    from tpemu.agent.backends.postgres import PostgresBackend
    from tpemu.client import db as db_mod
    from tpemu.wire import alpn

    login = await db_mod.db_login(prof, "pg", "alice", "postgres")
    ctx = ssl.create_default_context(cafile=login.ca_path)
    ctx.load_cert_chain(login.cert_path, login.key_path)
    ctx.set_alpn_protocols([alpn.POSTGRES])
    ctx.check_hostname = False  # the proxy's name is checked by the CA; asyncpg dials by address
    proxy = login.proxy_addr

    async def via_proxy() -> Any:
        return await asyncpg.connect(host=proxy.host, port=proxy.port, user="alice", database="postgres", ssl=ctx,
                                     direct_tls=True)

    server = await serve_tcp(PostgresBackend(users=None, auth="trust"))
    port = server.sockets[0].getsockname()[1]

    async def direct() -> Any:
        return await asyncpg.connect(host="127.0.0.1", port=port, user="alice", database="postgres", ssl=False)

    out: dict[str, Any] = {}
    for name, connect in (("direct", direct), ("through_proxy_and_tunnel", via_proxy)):
        conns: list[float] = []
        for _ in range(max(5, n // 2)):
            t0 = time.perf_counter()
            conn = await connect()
            conns.append(time.perf_counter() - t0)
            await conn.close()
        conn = await connect()
        rtts: list[float] = []
        for _ in range(n * 10):
            t0 = time.perf_counter()
            await conn.fetchval("select 1")
            rtts.append(time.perf_counter() - t0)
        await conn.close()
        out[name] = {"connect_ms": round(statistics.median(conns) * 1e3, 2),
                     "round_trip_us": round(statistics.median(rtts) * 1e6)}
    server.close()
    out["through_proxy_and_tunnel"]["round_trip_ratio_to_direct"] = round(
        out["through_proxy_and_tunnel"]["round_trip_us"] / max(out["direct"]["round_trip_us"], 1), 2)
    log(f"full stack: Postgres select 1 {out['through_proxy_and_tunnel']['round_trip_us']} µs through proxy and "
        f"tunnel vs {out['direct']['round_trip_us']} µs direct to the same emulated backend; connect "
        f"{out['through_proxy_and_tunnel']['connect_ms']} ms vs {out['direct']['connect_ms']} ms")
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run_fullstack(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=2))
