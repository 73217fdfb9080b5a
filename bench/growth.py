"""Cost growth: how RSS, connection rate and p99 change as idle routed connections pile up (glue).

For each subject (``tpemu-uvloop`` and ``haproxy`` by default: the comparison of issue 13) and
each count (1,000 → 10,000 → 50,000 by default), on a *fresh* instance: a short warm-up, the RSS,
then ``count`` idle pass-through connections opened and held (``loadgen idle``), the RSS again
(KiB per held connection), then the connection rate and p50/p99 at 64 concurrent *while they are
held* (``loadgen connrate`` on the same route), and the CPU per new connection. The figure that
matters is the change from the smallest count: an event loop whose per-connection work grows with
the number of open connections (timers scanned, a list walked) shows it here.

Processes. The descriptor limit is per process, and two descriptors per proxied connection put
50,000 past this machine's hard ``RLIMIT_NOFILE`` (20,000, which only ``CAP_SYS_RESOURCE`` could
raise). So every party is split over processes that each stay under it (:mod:`bench.split`):
the proxy over ``W`` processes on one port with ``SO_REUSEPORT`` (``tpemu.proxy_service.workers:
W``; ``W`` HAProxy processes), ``W`` the fewest that hold the count with headroom for the
kernel's hash spread; the held connections in groups (each from its own loopback source
``127.0.0.<10+k>`` — one source reaches one target through ~28,000 ephemeral ports — by its own
``loadgen idle`` process to its own ``loadgen serve`` backend). RSS and CPU are summed over the
subject's processes; the connections each proxy process holds are counted from its sockets
(``spread``: the largest over the even share), and a process at or past its limit is reported.
Two series per subject: ``fit`` (each count at the fewest processes: 1, 2, 6 …) and ``same``
(every count at the largest count's split, so that its growth ratio compares like with like).
When the process has ``CAP_SYS_RESOURCE`` the hard limit is raised first and fewer processes
are needed.

Run on its own: ``python -m bench.growth [quick|full] [--counts 1000,10000,50000]
[--subjects tpemu-uvloop,haproxy] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import loadgen, peers, run, split

Log = Callable[[str], None]
RATE_SNI = "bench.tpemu.test"
ALPN = "teleport-postgres"
DEFAULT_COUNTS = (1_000, 10_000, 50_000)
SERIES = {"fit": "the fewest proxy processes that hold each count",
          "same": "every count at the largest count's split (like with like)"}


def _group_sni(k: int) -> str:
    return f"idle{k}.bench.tpemu.test"


def fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def run_growth(profile: str = "quick", log: Log = print, counts: tuple[int, ...] = DEFAULT_COUNTS,
               subjects: tuple[str, ...] = ("tpemu-uvloop", "haproxy")) -> dict[str, Any]:
    """Every subject at every point of every series; returns
    ``{"points": {subject: {series: {count: figures}}}, "skipped": {count: why}, ...}``."""
    repeats = 1 if profile == "quick" else 3
    duration = 1.0 if profile == "quick" else 2.0
    # Raised to what one process would need when the capability allows it (then fewer processes).
    peers.raise_nofile(split.proxy_fds(max(counts)))
    loadgen.build()
    limit = fd_limit()
    started = time.monotonic()
    series, skipped = split.plan(counts, limit)
    for what, why in skipped.items():
        log(f"growth idle{what}: {why}")
    result: dict[str, Any] = {"points": {}, "skipped": skipped, "fd_limit": limit, "series": SERIES,
                              "profile": {"name": profile, "repeats": repeats, "rate_seconds": duration,
                                          "imbalance_headroom": split.IMBALANCE, "spare_fds": split.SPARE_FDS}}
    if not series["fit"]:
        return result
    # Each distinct split measured once (the largest count is in both series).
    todo = list(dict.fromkeys(s for points in series.values() for s in points))
    max_groups = max(s.groups for s in todo)
    measured: dict[tuple[str, split.Split], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="tpemu-bench-growth-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        reply = stack.enter_context(loadgen.Backend("reply"))
        idle_backends = [stack.enter_context(loadgen.Backend("reply")) for _ in range(max_groups)]
        routes = peers.Routes(sni={_group_sni(k): b.port for k, b in enumerate(idle_backends)},
                              alpn={ALPN: reply.port})
        rate_hello = work / "hello-rate.bin"
        rate_hello.write_bytes(peers.make_client_hello(RATE_SNI, [ALPN]))
        group_hellos = []
        for k in range(max_groups):
            path = work / f"hello-idle{k}.bin"
            path.write_bytes(peers.make_client_hello(_group_sni(k), [ALPN]))
            group_hellos.append(path)
        for i, sp in enumerate(todo):
            # Subjects interleaved per point, their order rotated: drifts of a shared machine hit both.
            order = list(subjects[i % len(subjects):]) + list(subjects[:i % len(subjects)])
            for name in order:
                runs = [_point(name, routes, work / f"{name}-{sp.count}-w{sp.processes}-r{r}", rate_hello,
                               group_hellos, sp, limit, duration, log) for r in range(repeats)]
                good = [r for r in runs if "error" not in r]
                point = dict(sorted(good, key=lambda r: r["conn_per_s"])[(len(good) - 1) // 2]) if good else runs[-1]
                if len(runs) > 1:
                    point["runs_conn_per_s"] = [r.get("conn_per_s") for r in runs]
                measured[name, sp] = point
    for name in subjects:
        result["points"][name] = {key: {str(sp.count): dict(measured[name, sp]) for sp in points}
                                  for key, points in series.items()}
    _ratios(result)
    result["profile"]["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def _sockets(pids: list[int]) -> list[int]:
    return [len(peers.socket_inodes(pid)) for pid in pids]


def _point(name: str, routes: peers.Routes, work: Path, rate_hello: Path, group_hellos: list[Path], sp: split.Split,
           limit: int, duration: float, log: Log) -> dict[str, Any]:
    base = {"processes": sp.processes, "groups": sp.groups}
    try:
        peer, reason = peers.start_peer(name, routes, work, probe=rate_hello.read_bytes(), processes=sp.processes,
                                        ready_timeout=90.0)
    except peers.PeerError as exc:
        return {**base, "error": str(exc)}
    if peer is None:
        return {**base, "error": reason or "unavailable"}
    try:
        loadgen.connrate(peer.target, concurrency=16, duration=0.3, payload=rate_hello)  # warm-up
        workers = peer.accepting_pids()
        before = peer.rss_kib()
        sockets0 = _sockets(workers)
        with contextlib.ExitStack() as held:
            ready = errors = 0
            kinds: dict[str, int] = {}
            t0 = time.monotonic()
            for k, size in enumerate(sp.group_sizes()):
                idle = held.enter_context(loadgen.IdleConnections(
                    peer.target, count=size, payload=group_hellos[k], hold=300, bind=f"127.0.0.{10 + k}",
                    open_timeout=120))
                ready += int(idle.ready["ready"])
                errors += int(idle.ready["errors"])
                for kind, n in (idle.ready.get("error_kinds") or {}).items():
                    kinds[kind] = kinds.get(kind, 0) + int(n)
            open_s = time.monotonic() - t0
            time.sleep(0.3)
            after = peer.rss_kib()
            # Two sockets per held connection in the process the kernel chose for it.
            per_process = [max(0, (b - a) // 2) for a, b in zip(sockets0, _sockets(workers), strict=True)]
            fds = [peers.open_fds(pid) for pid in workers]
            problems = split.spread_problems(per_process, fds, limit)
            if ready < sp.count:
                why = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) or "no kinds reported"
                problems.insert(0, f"held {ready} of {sp.count}: {errors} failed attempts while opening ({why})")
            user0, sys0 = peer.cpu_user_system()
            rate = loadgen.connrate(peer.target, concurrency=64, duration=duration, payload=rate_hello, warmup=0.1)
            user1, sys1 = peer.cpu_user_system()
        run = {**base, "held": ready, "open_errors": errors, "open_s": round(open_s, 2),
               "held_per_process": per_process, "spread": split.spread(per_process), "fds_per_process": fds,
               "rss_before_kib": before, "rss_held_kib": after,
               "kib_per_held_conn": round((after - before) / ready, 2) if ready else None,
               "conn_per_s": rate["conn_per_s"], "p50_ms": round(rate["p50_us"] / 1e3, 2),
               "p99_ms": round(rate["p99_us"] / 1e3, 2), "rate_errors": rate["errors"],
               "cpu_us_per_conn": round((user1 + sys1 - user0 - sys0) * 1e6 / max(1, rate["all_connections"]), 1),
               # Kernel time (system) apart: on loopback most of a pass-through connection's CPU is TCP work.
               "cpu_user_us_per_conn": round((user1 - user0) * 1e6 / max(1, rate["all_connections"]), 1),
               "cpu_system_us_per_conn": round((sys1 - sys0) * 1e6 / max(1, rate["all_connections"]), 1)}
        if problems:
            run["problems"] = problems
        log(f"growth {name} idle{sp.count} ×{sp.processes}: held {ready} (+{run['kib_per_held_conn']} KiB each, "
            f"RSS {after} KiB, per process {per_process}); {run['conn_per_s']:.0f} conn/s, p99 {run['p99_ms']} ms, "
            f"{run['cpu_us_per_conn']} µs CPU/conn" + "".join(f"\n  {p}" for p in problems))
        return run
    except loadgen.LoadgenError as exc:
        return {**base, "error": str(exc)}
    finally:
        peer.stop()


def _ratios(result: dict[str, Any]) -> None:
    """Each point against its series' smallest count (growth) and against HAProxy's (same series and count,
    so the same number of processes)."""
    points = result["points"]
    for name, by_series in points.items():
        for key, by_count in by_series.items():
            good = {c: p for c, p in by_count.items() if "error" not in p}
            if not good:
                continue
            first = good[min(good, key=int)]
            ref = points.get("haproxy", {}).get(key, {})
            for c, p in good.items():
                p["conn_per_s_vs_first"] = _ratio(p["conn_per_s"], first["conn_per_s"])
                p["p99_vs_first"] = _ratio(p["p99_ms"], first["p99_ms"])
                h = ref.get(c)
                if name != "haproxy" and h and "error" not in h:
                    p["conn_per_s_vs_haproxy"] = _ratio(p["conn_per_s"], h["conn_per_s"])
                    p["p99_vs_haproxy"] = _ratio(p["p99_ms"], h["p99_ms"])
                    p["kib_vs_haproxy"] = _ratio(p.get("kib_per_held_conn"), h.get("kib_per_held_conn"))


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def table(result: dict[str, Any]) -> str:
    lines = ["cost growth: held idle connections → RSS per held connection, conn/s and p99 at 64 concurrent "
             "(g: vs the smallest count of the same series, h: vs haproxy at the same count and processes; "
             "×W: proxy processes, spread: largest process over the even share)"]
    for key, what in result.get("series", SERIES).items():
        if not any(key in s for s in result["points"].values()):
            continue
        lines.append(f" series {key}: {what}")
        for name, by_series in result["points"].items():
            for c, p in by_series.get(key, {}).items():
                if "error" in p:
                    lines.append(f"  {name:14s} {c:>6s} ×{p['processes']}: error: {p['error']}")
                    continue
                vs_h = f" ({p['conn_per_s_vs_haproxy']}h)" if "conn_per_s_vs_haproxy" in p else ""
                p99_h = f" ({p['p99_vs_haproxy']}h)" if "p99_vs_haproxy" in p else ""
                kib_h = f" ({p['kib_vs_haproxy']}h)" if p.get("kib_vs_haproxy") else ""
                lines.append(f"  {name:14s} {c:>6s} ×{p['processes']:<2d}: {p['kib_per_held_conn']:6.2f} KiB/conn"
                             f"{kib_h}"
                             f" | {p['conn_per_s']:7.0f} conn/s{vs_h} {p['conn_per_s_vs_first']}g"
                             f" | p99 {p['p99_ms']:6.2f} ms{p99_h} {p['p99_vs_first']}g"
                             f" | {p['cpu_us_per_conn']} µs CPU/conn ({p.get('cpu_system_us_per_conn')} system)"
                             f" | spread {p['spread']}")
                lines.extend(f"      {problem}" for problem in p.get("problems", ()))
    for what, why in result["skipped"].items():
        lines.append(f"  idle{what}: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__.split("\n", 1)[0])
    ap.add_argument("profile", nargs="?", choices=("quick", "full"), default="quick")
    ap.add_argument("--counts", default=",".join(map(str, DEFAULT_COUNTS)))
    ap.add_argument("--subjects", default="tpemu-uvloop,haproxy")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    counts = tuple(int(c) for c in args.counts.split(","))
    env = run.environment()
    result = run_growth(args.profile, counts=counts, subjects=tuple(args.subjects.split(",")))
    env["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["environment"] = env
    print(table(result))
    print(f"load average: {env['load_average_at_start']} at start, {env['load_average_at_end']} at the end")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["run_growth", "table"]
