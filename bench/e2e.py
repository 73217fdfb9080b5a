"""The end-to-end benchmark: connection rate, throughput and idle memory of tpemu and its peers (glue).

Subjects, side by side in one run on loopback: ``direct`` (the load generator straight to the
backend: the loopback limit), ``tpemu-uvloop``, ``tpemu-asyncio``, ``haproxy``, ``nginx`` and
``sslh`` (:mod:`bench.peers`; a peer whose binary is missing is skipped with the reason). Each
peer gets one process/worker and routes without terminating TLS: SNI
``stream.bench.tpemu.test`` to a ``source`` backend, then ALPN ``teleport-postgres`` to a
``reply`` backend (both ``loadgen serve``, :mod:`bench.loadgen`).

Measurements (each subject's figure is also given as ``vs_direct``, a ratio to ``direct``):

* **connection rate** at concurrency 1, 16 and 64: new connections per second that send a real
  TLS 1.3 ClientHello (SNI ``bench.tpemu.test``, ALPN ``teleport-postgres``; the same bytes for
  every subject) and get the backend's first byte back, with p50/p99 latency, plus the
  subject's CPU time per connection (µs; summed over its processes);
* **throughput**: MB/s (10^6 bytes) from the source backend through 1 and 8 long-lived streams;
* **memory**: RSS per idle routed connection at 1,000 and 5,000 connections, each on a fresh
  instance of the subject (warmed with a short connection-rate burst), RSS summed over the
  subject's processes; ``direct`` has no process in between, so no figure.

The machine is small and shared, so the subjects are interleaved: each point runs every subject
once per repeat, in an order rotated between repeats, and the full profile reports the median
of its repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import loadgen, peers

SUBJECTS = ("direct", *peers.PEERS)
RATE_SNI = "bench.tpemu.test"
STREAM_SNI = "stream.bench.tpemu.test"
ALPN = "teleport-postgres"
#: Concurrency and sweep of the warm-up burst before a memory measurement.
WARM_CONCURRENCY = 16
WARM_SECONDS = 0.3

Log = Callable[[str], None]


@dataclass(frozen=True)
class Profile:
    name: str
    rate_duration: float
    stream_duration: float
    warmup: float
    repeats: int
    idle_counts: tuple[int, ...]
    idle_repeats: int = 1
    concurrency: tuple[int, ...] = (1, 16, 64)
    streams: tuple[int, ...] = (1, 8)


PROFILES = {
    # For tests: a few seconds, every code path, numbers too short to mean much.
    "smoke": Profile("smoke", rate_duration=0.2, stream_duration=0.2, warmup=0.05, repeats=2, idle_counts=(50,),
                     concurrency=(1, 4), streams=(2,)),
    # About 85 s on the 2-core benchmark machine: three short interleaved rounds per point (the
    # median resists the bursts of a shared machine better than one longer run).
    "quick": Profile("quick", rate_duration=0.6, stream_duration=0.5, warmup=0.1, repeats=3,
                     idle_counts=(1000, 5000)),
    # About 6 minutes: five longer rounds per point (median), memory twice (median).
    "full": Profile("full", rate_duration=2.0, stream_duration=1.5, warmup=0.3, repeats=5, idle_counts=(1000, 5000),
                    idle_repeats=2),
}


@dataclass
class _Subject:
    name: str
    rate_target: str
    stream_target: str
    peer: peers.Peer | None  # None for direct


def run_e2e(profile: str, log: Log = print, subjects: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Run every end-to-end measurement of ``profile`` (``quick`` or ``full``) for every subject.

    ``subjects`` restricts the run (``direct`` is always measured: the ratios need it). Returns a
    JSON-able dict: ``connection_rate`` (``c1``/``c16``/``c64`` → subject → figures),
    ``throughput`` (``streams1``/``streams8``), ``memory`` (``idle1000``/``idle5000``),
    ``subjects`` (version, skipped reason or None, notes) and ``profile`` (settings, elapsed time).
    Raises ``ValueError`` for an unknown profile or subject, ``loadgen.LoadgenError`` when the
    load generator cannot be built or the backends cannot start.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    prof = PROFILES[profile]
    wanted = ("direct", *[s for s in (subjects or SUBJECTS) if s != "direct"])
    for name in wanted:
        if name not in SUBJECTS:
            raise ValueError(f"unknown subject {name!r}; expected some of {', '.join(SUBJECTS)}")
    started = time.monotonic()
    loadavg = os.getloadavg()
    peers.raise_nofile()
    loadgen.build()
    result: dict[str, Any] = {"connection_rate": {}, "throughput": {}, "memory": {}, "subjects": {}}
    with tempfile.TemporaryDirectory(prefix="tpemu-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        rate_hello = work / "hello-rate.bin"
        stream_hello = work / "hello-stream.bin"
        rate_hello.write_bytes(peers.make_client_hello(RATE_SNI, [ALPN]))
        stream_hello.write_bytes(peers.make_client_hello(STREAM_SNI, [ALPN]))
        reply = stack.enter_context(loadgen.Backend("reply"))
        source = stack.enter_context(loadgen.Backend("source"))
        routes = peers.Routes(sni={STREAM_SNI: source.port}, alpn={ALPN: reply.port})
        info = result["subjects"]
        info["direct"] = {"version": "-", "skipped": None,
                          "notes": "client straight to the backend: the loopback limit"}
        live = [_Subject("direct", reply.target, source.target, None)]
        for name in wanted[1:]:
            peer, reason = _start(name, routes, work, rate_hello.read_bytes(), log)
            if peer is None:
                info[name] = {"version": "-", "skipped": reason, "notes": ""}
                log(f"{name}: skipped: {reason}")
                continue
            stack.callback(peer.stop)
            info[name] = {"version": peer.version, "skipped": None, "notes": peer.notes}
            live.append(_Subject(name, peer.target, peer.target, peer))
            log(f"{name}: {peer.version}; listening on {peer.target}")

        for conc in prof.concurrency:
            result["connection_rate"][f"c{conc}"] = _point(
                live, prof.repeats, log, f"connrate c{conc}", functools.partial(_rate, conc=conc, prof=prof,
                                                                                payload=rate_hello))
        for n in prof.streams:
            result["throughput"][f"streams{n}"] = _point(
                live, prof.repeats, log, f"throughput {n} stream(s)", functools.partial(_stream, streams=n, prof=prof,
                                                                                        payload=stream_hello))
        for subject in live:
            if subject.peer is not None:
                subject.peer.stop()

        for count in prof.idle_counts:
            point: dict[str, Any] = {"direct": {"kib_per_conn": None, "rss_before_kib": None, "rss_after_kib": None,
                                                "note": "no process between the client and the backend"}}
            for subject in live[1:]:
                runs = [_memory(subject.name, routes, work, rate_hello, count, log)
                        for _ in range(prof.idle_repeats)]
                point[subject.name] = _median_run(runs, "kib_per_conn")
            result["memory"][f"idle{count}"] = point
    result["profile"] = {**asdict(prof), "elapsed_s": round(time.monotonic() - started, 1), "cpus": os.cpu_count(),
                         "loadavg_start": [round(x, 2) for x in loadavg],
                         "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                         "fairness": "one process/worker per peer; subjects interleaved per point, order rotated "
                                     "between repeats; figures are medians over repeats"}
    return result


def _start(name: str, routes: peers.Routes, work: Path, probe: bytes, log: Log) -> tuple[peers.Peer | None, str]:
    try:
        peer, reason = peers.start_peer(name, routes, work, probe=probe)
    except peers.PeerError as exc:
        return None, f"failed to start: {exc}"
    if peer is None:
        return None, reason or "unavailable"
    return peer, ""


def _rotated(items: list[_Subject], k: int) -> list[_Subject]:
    k %= max(1, len(items))
    return items[k:] + items[:k]


def _point(live: list[_Subject], repeats: int, log: Log, label: str,
           measure: Callable[[_Subject], dict[str, Any]]) -> dict[str, Any]:
    """Every subject ``repeats`` times, interleaved; the run with the median figure per subject."""
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in live}
    for rep in range(repeats):
        for subject in _rotated(live, rep):
            if subject.peer is not None and not subject.peer.alive():
                runs[subject.name].append({"error": f"exited: {subject.peer.log_tail(3)}"})
                continue
            try:
                run = measure(subject)
            except loadgen.LoadgenError as exc:
                run = {"error": str(exc)}
            runs[subject.name].append(run)
            log(f"{label} {subject.name}: {_summary(run)}")
    key = "conn_per_s" if label.startswith("connrate") else "mb_per_s"
    point = {name: _median_run(r, key) for name, r in runs.items()}
    base = point.get("direct", {}).get(key)
    for entry in point.values():
        if base and entry.get(key) is not None:
            entry["vs_direct"] = round(entry[key] / base, 3)
    return point


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median (the lower one for an even count), with all values."""
    good = [r for r in runs if r.get(key) is not None]
    if not good:
        return runs[-1] if runs else {"error": "not measured"}
    good.sort(key=lambda r: r[key])
    chosen = dict(good[(len(good) - 1) // 2])
    if len(runs) > 1:
        chosen["runs"] = [r.get(key) for r in runs]
        chosen["median_of"] = len(good)
    return chosen


def _cpu(subject: _Subject) -> float | None:
    return subject.peer.cpu_seconds() if subject.peer is not None else None


def _rate(subject: _Subject, conc: int, prof: Profile, payload: Path) -> dict[str, Any]:
    cpu0 = _cpu(subject)
    out = loadgen.connrate(subject.rate_target, concurrency=conc, duration=prof.rate_duration, payload=payload,
                           warmup=prof.warmup)
    cpu1 = _cpu(subject)
    run = {k: out[k] for k in ("conn_per_s", "p50_us", "p99_us", "mean_us", "connections", "errors")}
    if out["error_kinds"]:
        run["error_kinds"] = out["error_kinds"]
    if cpu0 is not None and cpu1 is not None and out["all_connections"]:
        run["cpu_us_per_conn"] = round((cpu1 - cpu0) * 1e6 / out["all_connections"], 1)
    return run


def _stream(subject: _Subject, streams: int, prof: Profile, payload: Path) -> dict[str, Any]:
    cpu0 = _cpu(subject)
    out = loadgen.throughput(subject.stream_target, streams=streams, duration=prof.stream_duration, payload=payload,
                             warmup=prof.warmup)
    cpu1 = _cpu(subject)
    run = {k: out[k] for k in ("mb_per_s", "errors")}
    if cpu0 is not None and cpu1 is not None and out["all_bytes"]:
        run["cpu_s_per_gb"] = round((cpu1 - cpu0) * 1e9 / out["all_bytes"], 3)
    return run


def _stable_rss(peer: peers.Peer, timeout: float = 1.5) -> int:
    """RSS once two samples 0.1 s apart agree within 1% (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    last = peer.rss_kib()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = peer.rss_kib()
        if abs(now - last) <= max(16, last // 100):
            return now
        last = now
    return last


def _memory(name: str, routes: peers.Routes, work: Path, payload: Path, count: int, log: Log) -> dict[str, Any]:
    """RSS per idle routed connection on a fresh, warmed instance of peer ``name``."""
    peer, reason = _start(name, routes, work, payload.read_bytes(), log)
    if peer is None:
        return {"error": reason}
    wanted = count
    if peer.max_connections is not None and count > peer.max_connections:
        count = peer.max_connections
    try:
        loadgen.connrate(peer.target, concurrency=WARM_CONCURRENCY, duration=WARM_SECONDS, payload=payload)
        before = _stable_rss(peer)
        with loadgen.IdleConnections(peer.target, count=count, payload=payload, hold=120) as idle:
            ready = int(idle.ready["ready"])
            after = _stable_rss(peer)
        run: dict[str, Any] = {
            "kib_per_conn": round((after - before) / ready, 2) if ready else None,
            "rss_before_kib": before, "rss_after_kib": after, "connections": ready,
            "errors": idle.ready["errors"], "open_s": idle.ready["open_s"],
        }
        if idle.ready["error_kinds"]:
            run["error_kinds"] = idle.ready["error_kinds"]
        if idle.final.get("dropped"):
            run["dropped_while_held"] = idle.final["dropped"]
        if count < wanted:
            run["note"] = f"measured at {count} connections: {peer.limit_reason}"
        if ready < count:
            run["note"] = f"only {ready} of {count} connections were routed"
    except loadgen.LoadgenError as exc:
        run = {"error": str(exc)}
    finally:
        peer.stop()
    log(f"memory idle{wanted} {name}: {_summary(run)}")
    return run


def _summary(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"error: {run['error']}"
    if "conn_per_s" in run:
        text = f"{run['conn_per_s']:.0f} conn/s, p50 {run['p50_us'] / 1000:.2f} ms, p99 {run['p99_us'] / 1000:.2f} ms"
        if "cpu_us_per_conn" in run:
            text += f", {run['cpu_us_per_conn']:.0f} µs CPU/conn"
    elif "mb_per_s" in run:
        text = f"{run['mb_per_s']:.0f} MB/s"
        if "cpu_s_per_gb" in run:
            text += f", {run['cpu_s_per_gb']:.2f} s CPU/GB"
    else:
        kib = run.get("kib_per_conn")
        text = (f"{kib:.2f} KiB/conn (RSS {run['rss_before_kib']} → {run['rss_after_kib']} KiB, "
                f"{run['connections']} connections)" if kib is not None else "no figure")
    if run.get("errors"):
        text += f" [{run['errors']} errors: {run.get('error_kinds', {})}]"
    return text


# -- the readable table ----------------------------------------------------------------------------------


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}" if value is not None and base else "-"


def format_table(result: dict[str, Any]) -> str:
    """The result as text tables, one row per subject: each figure, its ratio to direct and to HAProxy."""
    names = [n for n, i in result["subjects"].items() if not i["skipped"]]
    lines: list[str] = []
    width = 30

    def table(title: str, section: dict[str, Any], key: str, fmt: Callable[[dict[str, Any]], str],
              vs_direct: bool = True) -> None:
        points = list(section)
        lines.append(f"\n{title}")
        lines.append(f"  {'':<15}" + "".join(f"{p:>{width}}" for p in points))
        for n in names:
            cells = []
            for point in points:
                entries = section[point]
                e = entries.get(n, {})
                if e.get(key) is None:
                    cells.append(f"{'error' if 'error' in e else '-':>{width}}")
                    continue
                rel = []
                if vs_direct and n != "direct":
                    rel.append(f"{_ratio(e[key], entries.get('direct', {}).get(key))}d")
                if n not in ("direct", "haproxy"):
                    rel.append(f"{_ratio(e[key], entries.get('haproxy', {}).get(key))}h")
                cell = fmt(e) + (f" ({' '.join(rel)})" if rel else "")
                cells.append(f"{cell:>{width}}")
            lines.append(f"  {n:<15}" + "".join(cells))

    table("connection rate: conn/s p50/p99 ms (d: ratio to direct, h: to haproxy)", result["connection_rate"],
          "conn_per_s", lambda e: f"{e['conn_per_s']:.0f} {e['p50_us'] / 1000:.1f}/{e['p99_us'] / 1000:.1f}")
    table("CPU per connection: µs, summed over the subject's processes (h: ratio to haproxy)",
          result["connection_rate"], "cpu_us_per_conn", lambda e: f"{e['cpu_us_per_conn']:.0f}", vs_direct=False)
    table("throughput: MB/s (d: ratio to direct, h: to haproxy)", result["throughput"], "mb_per_s",
          lambda e: f"{e['mb_per_s']:.0f}")
    table("memory: KiB RSS per idle routed connection (h: ratio to haproxy)", result["memory"], "kib_per_conn",
          lambda e: f"{e['kib_per_conn']:.2f}" + ("*" if e.get("note") else ""), vs_direct=False)
    notes = [f"  * {n} {p}: {e['note']}" for p, entries in result["memory"].items() for n, e in entries.items()
             if e.get("note") and n != "direct"]
    errors = [f"  {n} {p}: {e['errors']} errors {e.get('error_kinds', '')}"
              for section in ("connection_rate", "throughput", "memory")
              for p, entries in result[section].items() for n, e in entries.items() if e.get("errors")]
    lines += notes
    if errors:
        lines.append("\nerrors:")
        lines += errors
    lines.append("\nsubjects:")
    for n, i in result["subjects"].items():
        lines.append(f"  {n:<14} " + (f"skipped: {i['skipped']}" if i["skipped"] else f"{i['version']}; {i['notes']}"))
    p = result["profile"]
    lines.append(f"\nprofile {p['name']}: {p['elapsed_s']} s, {p['repeats']} repeat(s), load average "
                 f"{p['loadavg_start'][0]} → {p['loadavg_end'][0]} on {p['cpus']} CPUs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--subjects", help=f"comma-separated subset of {','.join(SUBJECTS)}")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    subjects = tuple(args.subjects.split(",")) if args.subjects else None
    try:
        result = run_e2e(args.profile, lambda line: print(line, file=sys.stderr, flush=True), subjects)
    except (ValueError, loadgen.LoadgenError) as exc:
        print(f"bench.e2e: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
