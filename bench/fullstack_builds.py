"""Before/after for the full-stack figures, tpemu builds from git revisions in one run (glue).

``python -m bench.fullstack_builds REV [REV …] [--rounds 5] [--pg 400] [--ssh 8] [--json FILE]``

For each revision (exported as :mod:`bench.builds` does) and the working tree (``now``): a
``tpemu start`` all-in-one cluster (:func:`bench.fullstack.cluster`, run from that build's
``PYTHONPATH``) and a measuring client process running *that build's* client code
(``--worker``: the SSH client is tpemu's own, so a client-side change shows up as well). Rounds
interleave the builds, the order rotated every round; in each round every build measures

* ``pg``: ``select 1`` round trips through proxy + reverse tunnel on one open asyncpg connection
  (TLS, ALPN ``teleport-postgres``, the user's database certificate), µs, and the tpemu process's
  CPU per round trip (its ``/proc`` times; one process holds Auth, proxy, agent and the emulated
  backend);
* ``direct``: the same, straight to the build's emulated Postgres backend served in the client
  process: the baseline of the issue's "at most 2.5x direct" ratio;
* ``direct_process``: the same again, to the build's emulated backend served by a process of its
  own (as a database server is): a client and a server in two processes wait for each other twice
  per round trip, and on this 2-vCPU VM waking the other, idle CPU costs ~50-60 µs each way
  (measured: the same pair pinned to one CPU, ``taskset -c 0``, 141 µs a round trip; on two CPUs
  245-266 µs; in one process 97-100 µs). The path through proxy and tunnel pays those two
  wake-ups too (client ↔ tpemu), so its ratio to ``direct_process`` is its cost beyond them;
* ``ssh``: SSH session setup with a new proxy connection (TLS + SSH to the proxy, the
  ``proxy:node`` subsystem through the tunnel, the user's SSH session to the node, ``exec true``),
  ms, with the CPU per setup of the tpemu process (``ssh_cpu_ms``, its ``/proc`` times) and of the
  measuring client (``ssh_client_cpu_ms``, its process time): on a shared 2-vCPU machine the
  setup time follows the CPU the two spend one after the other; ``ssh_new_client``: the same
  with the process's kept ``/webapi/ping`` answer dropped before each session
  (``tpemu.client.pingcache``; what a new ``tsh`` command pays: one ping per command, as
  Teleport's ``TeleportClient.Ping`` keeps it for the client's life, not the process's start-up).
  In builds without the cache both are the same path.

Each figure is the median of its round medians; the spread (lowest to highest round median) is
printed beside it. For before/after figures on a shared machine, not absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` (``schedstat``: nanoseconds, not clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


class _Worker:
    """A measuring client process of one build, driven line by line over its stdin/stdout."""

    def __init__(self, home: Path, env: dict[str, str] | None) -> None:
        # The build's tree first, then this repository for ``bench`` (its ``tpemu`` comes later).
        wenv = dict(env if env is not None else os.environ)
        wenv["PYTHONPATH"] = os.pathsep.join(p for p in (wenv.get("PYTHONPATH"), str(REPO)) if p)
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.fullstack_builds", "--worker", str(home)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=wenv, text=True,
                                     cwd=home)  # not the repository (``-m`` puts the cwd first on sys.path)
        self.ask("ready")

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the measuring client ended (exit status {self.proc.wait(5)})")
        return json.loads(line)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run(revs: list[str], rounds: int, n_pg: int, n_ssh: int) -> dict[str, Any]:
    from bench import builds as builds_mod
    from bench.fullstack import cluster

    samples: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="tpemu-bench-fsbuilds-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        subjects: dict[str, tuple[subprocess.Popen[bytes], _Worker]] = {}
        for name in [*revs, "now"]:
            env = None
            if name != "now":
                tree = builds_mod.export(name, work / f"tree-{name}")
                env = {**os.environ, "PYTHONPATH": str(tree)}
            (work / name).mkdir()
            proc, home = stack.enter_context(cluster(work / name, env))
            worker = _Worker(home, env)
            print(f"{name}: tpemu from {Path(worker.ask('where')).parent}", file=sys.stderr)
            stack.callback(worker.stop)
            subjects[name] = (proc, worker)
            samples[name] = {"pg_us": [], "pg_cpu_us": [], "direct_us": [], "direct_process_us": [],
                             "ssh_ms": [], "ssh_cpu_ms": [], "ssh_client_cpu_ms": [], "ssh_new_client_ms": []}
        for _proc, worker in subjects.values():  # warm-up: first connections, caches
            worker.ask("pg 50")
            worker.ask("ssh 1")
        order = list(subjects)
        for rnd in range(rounds):
            k = rnd % len(order)
            for name in order[k:] + order[:k]:
                proc, worker = subjects[name]
                s = samples[name]
                cpu0 = _cpu_seconds(proc.pid)
                pg = worker.ask(f"pg {n_pg}")
                s["pg_cpu_us"].append((_cpu_seconds(proc.pid) - cpu0) / n_pg * 1e6)
                s["pg_us"].append(statistics.median(pg))
                s["direct_us"].append(statistics.median(worker.ask(f"direct {n_pg}")))
                s["direct_process_us"].append(statistics.median(worker.ask(f"directproc {n_pg}")))
                cpu0 = _cpu_seconds(proc.pid)
                ssh = worker.ask(f"ssh {n_ssh}")
                s["ssh_cpu_ms"].append((_cpu_seconds(proc.pid) - cpu0) / n_ssh * 1e3)
                s["ssh_ms"].append(statistics.median(ssh["ms"]))
                s["ssh_client_cpu_ms"].append(ssh["cpu_ms"])
                s["ssh_new_client_ms"].append(statistics.median(worker.ask(f"sshfresh {n_ssh}")["ms"]))
    out: dict[str, Any] = {"revisions": revs, "rounds": rounds, "pg_round_trips": n_pg, "ssh_sessions": n_ssh,
                           "loadavg_end": os.getloadavg(), "builds": {}}
    for name, s in samples.items():
        fig: dict[str, Any] = {k: round(statistics.median(v), 1) for k, v in s.items()}
        fig["spread"] = {k: [round(min(v), 1), round(max(v), 1)] for k, v in s.items()}
        fig["pg_ratio_to_direct"] = round(statistics.median(p / d for p, d in zip(s["pg_us"], s["direct_us"],
                                                                                strict=True)), 2)
        fig["pg_ratio_to_direct_process"] = round(statistics.median(
            p / d for p, d in zip(s["pg_us"], s["direct_process_us"], strict=True)), 2)
        fig["runs"] = s
        out["builds"][name] = fig
    return out


def table(result: dict[str, Any]) -> str:
    lines = [f"{'build':12s} {'pg µs':>14s} {'tpemu CPU µs/rtt':>20s} {'direct µs':>14s} {'ratio':>6s} "
             f"{'direct proc µs':>16s} {'ratio':>6s} {'SSH setup ms':>16s} {'tpemu CPU ms':>14s} "
             f"{'client CPU ms':>14s} {'new client ms':>16s}"]
    def cell(f: dict[str, Any], key: str, fmt: str = "{:.0f}") -> str:
        lo, hi = f["spread"][key]
        return f"{fmt.format(f[key])} ({fmt.format(lo)}–{fmt.format(hi)})"

    for name, f in result["builds"].items():
        lines.append(f"{name:12s} {cell(f, 'pg_us'):>14s} {cell(f, 'pg_cpu_us'):>20s} {cell(f, 'direct_us'):>14s} "
                     f"{f['pg_ratio_to_direct']:>6.2f} {cell(f, 'direct_process_us'):>16s} "
                     f"{f['pg_ratio_to_direct_process']:>6.2f} {cell(f, 'ssh_ms', '{:.1f}'):>16s} "
                     f"{f['ssh_cpu_ms']:>14.1f} {f['ssh_client_cpu_ms']:>14.1f} "
                     f"{cell(f, 'ssh_new_client_ms', '{:.1f}'):>16s}")
    return "\n".join(lines)


# -- the measuring client (runs with the build's tpemu on PYTHONPATH) --------------------------------

#: The build's emulated Postgres in a process of its own: prints its port, serves until stdin ends.
_SERVE_BACKEND = """
import asyncio, sys, uvloop
from tpemu.agent.backends.base import serve_tcp
from tpemu.agent.backends.postgres import PostgresBackend

async def main():
    server = await serve_tcp(PostgresBackend(users=None, auth="trust"))
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()

uvloop.run(main())
"""

async def _worker(home: Path) -> None:
    import asyncpg

    from tpemu.agent.backends.base import serve_tcp
    from tpemu.agent.backends.postgres import PostgresBackend
    from tpemu.client import db as db_mod
    from tpemu.client import profile as profile_mod
    from tpemu.client import ssh as ssh_mod
    from tpemu.wire import alpn

    prof = profile_mod.current(home)
    assert prof is not None
    creds = ssh_mod.Credentials.load(prof)
    target = ssh_mod.parse_target("alice@bench-node", prof.cluster)
    login = await db_mod.db_login(prof, "pg", "alice", "postgres")
    ctx = ssl.create_default_context(cafile=login.ca_path)
    ctx.load_cert_chain(login.cert_path, login.key_path)
    ctx.set_alpn_protocols([alpn.POSTGRES])
    ctx.check_hostname = False  # the proxy's name is checked by the CA; asyncpg dials by address
    via_proxy = await asyncpg.connect(host=login.proxy_addr.host, port=login.proxy_addr.port, user="alice",
                                      database="postgres", ssl=ctx, direct_tls=True)
    server = await serve_tcp(PostgresBackend(users=None, auth="trust"))
    port = server.sockets[0].getsockname()[1]
    direct = await asyncpg.connect(host="127.0.0.1", port=port, user="alice", database="postgres", ssl=False)
    # The same backend in a process of its own (this build's, from its PYTHONPATH; cwd: not the
    # repository), serving until its stdin closes.
    backend_proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SERVE_BACKEND, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        cwd=home)
    assert backend_proc.stdout is not None
    proc_port = int(await asyncio.wait_for(backend_proc.stdout.readline(), 30))
    direct_proc = await asyncpg.connect(host="127.0.0.1", port=proc_port, user="alice", database="postgres",
                                        ssl=False)

    async def round_trips(conn: Any, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await conn.fetchval("select 1")
            out.append((time.perf_counter() - t0) * 1e6)
        return out

    def forget_pings() -> None:
        with contextlib.suppress(ImportError):  # a build from before the ping cache
            from tpemu.client import pingcache

            pingcache.PINGS.clear()

    async def ssh_sessions(n: int, new_client: bool = False) -> dict[str, Any]:
        out = []
        cpu0 = time.process_time()
        for _ in range(n):
            if new_client:
                forget_pings()
            t0 = time.perf_counter()
            proxy = await ssh_mod.connect_proxy(creds)
            node = await ssh_mod.connect_node(proxy, creds, target)
            done = await node.run("true", check=False)
            assert done.exit_status == 0, done
            node.close()
            await node.wait_closed()
            out.append((time.perf_counter() - t0) * 1e3)
            proxy.close()
        return {"ms": out, "cpu_ms": (time.process_time() - cpu0) / max(n, 1) * 1e3}

    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        what, _, count = line.strip().partition(" ")
        n = int(count or 0)
        if what == "ready":
            result: Any = "ready"
        elif what == "pg":
            result = await round_trips(via_proxy, n)
        elif what == "direct":
            result = await round_trips(direct, n)
        elif what == "directproc":
            result = await round_trips(direct_proc, n)
        elif what == "where":
            import tpemu

            result = tpemu.__file__
        elif what == "ssh":
            result = await ssh_sessions(n)
        elif what == "sshfresh":
            result = await ssh_sessions(n, new_client=True)
        else:
            result = {"error": f"unknown command {what!r}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    await via_proxy.close()
    await direct.close()
    await direct_proc.close()
    server.close()
    assert backend_proc.stdin is not None
    backend_proc.stdin.close()
    await backend_proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fullstack_builds", description=__doc__.split("\n", 1)[0])
    ap.add_argument("revs", nargs="*", help="git revisions to compare with the working tree")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pg", type=int, default=400, help="select 1 round trips per round")
    ap.add_argument("--ssh", type=int, default=8, help="SSH sessions per round")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        import uvloop

        uvloop.run(_worker(args.worker))
        return 0
    result = run(args.revs, args.rounds, args.pg, args.ssh)
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
