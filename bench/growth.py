"""Cost growth: how RSS, connection rate and p99 change as idle routed connections pile up (glue).

For each subject (``tpemu-uvloop`` and ``haproxy`` by default: the comparison of issue 13) and
each count (1,000 → 10,000 → 50,000 by default), on a *fresh* instance: a short warm-up, the RSS,
then ``count`` idle pass-through connections opened and held (``loadgen idle``), the RSS again
(KiB per held connection), then the connection rate and p50/p99 at 64 concurrent *while they are
held* (``loadgen connrate`` on the same route), and the CPU per new connection. The figure that
matters is the change from the smallest count: an event loop whose per-connection work grows with
the number of open connections (timers scanned, a list walked) shows it here.

Port exhaustion: one source address reaches one target through ~28,000 ephemeral ports
(``ip_local_port_range``), so the held connections are split in groups of at most
``GROUP`` — each group from its own loopback source address (``127.0.0.<10+k>``, ``--bind``) to
its own backend (a ``loadgen serve`` per group, its own SNI route), so neither hop runs out of
ports. The hard ``RLIMIT_NOFILE`` is raised to what the largest count needs (two descriptors per
proxied connection) when the process has ``CAP_SYS_RESOURCE`` (up to ``/proc/sys/fs/nr_open``;
the peers and load generators inherit it). A count the limits still cannot hold (no capability:
an unprivileged user, or a container that dropped it even for root) is reported with that reason
and measured at the largest count that fits instead.

Run on its own: ``python -m bench.growth [quick|full] [--counts 1000,10000,50000]
[--subjects tpemu-uvloop,haproxy] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import loadgen, peers

Log = Callable[[str], None]
RATE_SNI = "bench.tpemu.test"
ALPN = "teleport-postgres"
#: Held connections per source address and backend (well under one source's ~28,000 ports and
#: under a loadgen process's descriptor limit).
GROUP = 15_000
DEFAULT_COUNTS = (1_000, 10_000, 50_000)
#: Descriptors a proxy needs besides the held connections: the 64 concurrent new ones of the rate
#: measurement (two each), listeners, logs, the loop. Too few and the rate measures EMFILE pauses.
SPARE_FDS = 600


def _group_sni(k: int) -> str:
    return f"idle{k}.bench.tpemu.test"


def _groups(count: int) -> list[int]:
    sizes = []
    while count > 0:
        sizes.append(min(GROUP, count))
        count -= sizes[-1]
    return sizes


def fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def run_growth(profile: str = "quick", log: Log = print, counts: tuple[int, ...] = DEFAULT_COUNTS,
               subjects: tuple[str, ...] = ("tpemu-uvloop", "haproxy")) -> dict[str, Any]:
    """Every subject at every count; returns ``{"points": {subject: {count: figures}}, ...}``."""
    repeats = 1 if profile == "quick" else 3
    duration = 1.0 if profile == "quick" else 2.0
    # Two descriptors per held connection in the proxy; the processes started inherit the limit.
    peers.raise_nofile(2 * max(counts) + 2 * SPARE_FDS)
    loadgen.build()
    limit = fd_limit()
    started = time.monotonic()
    result: dict[str, Any] = {"points": {}, "skipped": {}, "fd_limit": limit,
                              "profile": {"name": profile, "repeats": repeats, "rate_seconds": duration,
                                          "group": GROUP}}
    max_groups = len(_groups(max(counts)))
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
        fits = (limit - SPARE_FDS) // 2
        plan: list[int] = []  # the counts measured
        for asked in counts:
            measured = asked
            if asked > fits:
                cannot = ("this process lacks CAP_SYS_RESOURCE (an unprivileged user, or a container that drops "
                          "it even for root)"
                          if not peers.has_sys_resource() else f"/proc/sys/fs/nr_open is {peers.nr_open()}")
                why = (f"needs ~{2 * asked + SPARE_FDS} descriptors in the proxy (two per connection); RLIMIT_NOFILE's "
                       f"hard limit here is {limit} and {cannot}, so it cannot be raised: measured at {fits}")
                result["skipped"][str(asked)] = why
                log(f"growth idle{asked}: {why}")
                measured = fits
            if measured not in plan:
                plan.append(measured)
        for name in subjects:
            result["points"][name] = {}
        for i, count in enumerate(plan):
            # Subjects interleaved per count, their order rotated: drifts of a shared machine hit both.
            order = list(subjects[i % len(subjects):]) + list(subjects[:i % len(subjects)])
            for name in order:
                runs = [_point(name, routes, work, rate_hello, group_hellos, count, duration, log)
                        for _ in range(repeats)]
                good = [r for r in runs if "error" not in r]
                point = dict(sorted(good, key=lambda r: r["conn_per_s"])[(len(good) - 1) // 2]) if good else runs[-1]
                if len(runs) > 1:
                    point["runs_conn_per_s"] = [r.get("conn_per_s") for r in runs]
                result["points"][name][str(count)] = point
    _ratios(result)
    result["profile"]["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def _point(name: str, routes: peers.Routes, work: Path, rate_hello: Path, group_hellos: list[Path], count: int,
           duration: float, log: Log) -> dict[str, Any]:
    peer, reason = peers.start_peer(name, routes, work / f"{name}-{count}", probe=rate_hello.read_bytes())
    if peer is None:
        return {"error": reason or "unavailable"}
    try:
        loadgen.connrate(peer.target, concurrency=16, duration=0.3, payload=rate_hello)  # warm-up
        before = peer.rss_kib()
        with contextlib.ExitStack() as held:
            ready = errors = 0
            t0 = time.monotonic()
            for k, size in enumerate(_groups(count)):
                idle = held.enter_context(loadgen.IdleConnections(
                    peer.target, count=size, payload=group_hellos[k], hold=300, bind=f"127.0.0.{10 + k}",
                    open_timeout=120))
                ready += int(idle.ready["ready"])
                errors += int(idle.ready["errors"])
            open_s = time.monotonic() - t0
            time.sleep(0.3)
            after = peer.rss_kib()
            cpu0 = peer.cpu_seconds()
            rate = loadgen.connrate(peer.target, concurrency=64, duration=duration, payload=rate_hello, warmup=0.1)
            cpu1 = peer.cpu_seconds()
        run = {"held": ready, "open_errors": errors, "open_s": round(open_s, 2),
               "rss_before_kib": before, "rss_held_kib": after,
               "kib_per_held_conn": round((after - before) / ready, 2) if ready else None,
               "conn_per_s": rate["conn_per_s"], "p50_ms": round(rate["p50_us"] / 1e3, 2),
               "p99_ms": round(rate["p99_us"] / 1e3, 2), "rate_errors": rate["errors"],
               "cpu_us_per_conn": round((cpu1 - cpu0) * 1e6 / max(1, rate["all_connections"]), 1)}
        log(f"growth {name} idle{count}: held {ready} (+{run['kib_per_held_conn']} KiB each, RSS {after} KiB); "
            f"{run['conn_per_s']:.0f} conn/s, p99 {run['p99_ms']} ms, {run['cpu_us_per_conn']} µs CPU/conn")
        return run
    except loadgen.LoadgenError as exc:
        return {"error": str(exc)}
    finally:
        peer.stop()


def _ratios(result: dict[str, Any]) -> None:
    """Each point against the subject's smallest count (growth) and against HAProxy's (same count)."""
    points = result["points"]
    ref = points.get("haproxy", {})
    for name, by_count in points.items():
        good = {c: p for c, p in by_count.items() if "error" not in p}
        if not good:
            continue
        first = good[min(good, key=int)]
        for c, p in good.items():
            p["conn_per_s_vs_first"] = round(p["conn_per_s"] / first["conn_per_s"], 2) if first["conn_per_s"] else None
            p["p99_vs_first"] = round(p["p99_ms"] / first["p99_ms"], 2) if first["p99_ms"] else None
            h = ref.get(c)
            if name != "haproxy" and h and "error" not in h:
                p["conn_per_s_vs_haproxy"] = round(p["conn_per_s"] / h["conn_per_s"], 2) if h["conn_per_s"] else None
                p["p99_vs_haproxy"] = round(p["p99_ms"] / h["p99_ms"], 2) if h["p99_ms"] else None
                if p.get("kib_per_held_conn") and h.get("kib_per_held_conn"):
                    p["kib_vs_haproxy"] = round(p["kib_per_held_conn"] / h["kib_per_held_conn"], 2)


def table(result: dict[str, Any]) -> str:
    lines = ["cost growth: held idle connections → RSS per held connection, conn/s and p99 at 64 concurrent "
             "(g: vs the subject's smallest count, h: vs haproxy at the same count)"]
    for name, by_count in result["points"].items():
        for c, p in by_count.items():
            if "error" in p:
                lines.append(f"  {name:14s} {c:>6s}: error: {p['error']}")
                continue
            vs_h = (f" ({p['conn_per_s_vs_haproxy']}h)" if "conn_per_s_vs_haproxy" in p else "")
            p99_h = (f" ({p['p99_vs_haproxy']}h)" if "p99_vs_haproxy" in p else "")
            lines.append(f"  {name:14s} {c:>6s}: {p['kib_per_held_conn']:6.2f} KiB/conn, RSS {p['rss_held_kib']:7d} KiB"
                         f" | {p['conn_per_s']:7.0f} conn/s{vs_h} {p['conn_per_s_vs_first']}g"
                         f" | p99 {p['p99_ms']:6.2f} ms{p99_h} {p['p99_vs_first']}g"
                         f" | {p['cpu_us_per_conn']} µs CPU/conn")
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
    result = run_growth(args.profile, counts=counts, subjects=tuple(args.subjects.split(",")))
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["run_growth", "table"]
