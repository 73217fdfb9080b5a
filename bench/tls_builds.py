"""Before/after for TLS termination: tpemu builds from git revisions against HAProxy, in one run (glue).

``python -m bench.tls_builds REV [REV …] [--rounds 5] [--seconds 2] [--clients 1,4] [--www PATH] [--json FILE]``

Each revision is exported as :mod:`bench.builds` does and started as ``tpemu start`` with
``PYTHONPATH`` pointing at it (the working tree is the subject ``now``), with an ECDSA P-256 cluster
(``balanced-v1``) as :mod:`bench.tls` sets up; HAProxy terminates TLS with an ECDSA P-256
certificate twice: as configured by default (``haproxy``: two TLS 1.3 session tickets per handshake)
and sending no tickets (``haproxy-notickets``, as Teleport's proxy and tpemu since issue 13: the
same work per handshake). The client is ``openssl s_time -new`` (full TLS 1.3 handshakes, X25519) in
``clients`` parallel processes (with ``--www PATH`` each handshake is followed by ``GET PATH``, which
the HAProxys answer themselves). Subjects are interleaved point by point with the order rotated
every round; each figure is the median over the rounds of the server's CPU per handshake (its
process tree, from /proc) and of the handshake rate, with ratios to both HAProxys of the same run.
For a change's before/after figures (issue 13's <= 1.3x target), not for absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import peers, tls
from bench.builds import export

#: The HAProxy subjects, and whether each sends session tickets.
REFERENCES = {"haproxy": True, "haproxy-notickets": False}


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run(revs: list[str], clients: list[int], rounds: int, seconds: float, www: str | None = None) -> dict[str, Any]:
    res: dict[str, dict[str, dict[str, list[float]]]] = {}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tpemu-bench-tls-builds-") as tmp:
        work = Path(tmp)
        trees: dict[str, Path | None] = {rev: export(rev, work / f"tree-{rev}") for rev in revs}
        trees["now"] = None
        procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        saved = os.environ.get("PYTHONPATH")
        try:
            for ref, tickets in REFERENCES.items():
                started = tls._start_haproxy("ecdsa", work, tickets=tickets, answer=www is not None)
                if isinstance(started, str):
                    print(f"{ref}: skipped: {started}", file=sys.stderr)
                else:
                    procs[ref] = started
            for name, tree in trees.items():
                if tree is not None:
                    os.environ["PYTHONPATH"] = str(tree)
                else:
                    os.environ.pop("PYTHONPATH", None)
                run_dir = work / f"run-{name}"
                run_dir.mkdir()
                procs[name] = tls._start_tpemu("ecdsa", run_dir)
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
        try:
            for _, port in procs.values():
                tls._s_time(port, 1.0, 2, www)  # warm-up: contexts built, caches filled
            order = list(procs)
            for rnd in range(rounds):
                for c in clients:
                    k = rnd % len(order)
                    for name in order[k:] + order[:k]:
                        proc, port = procs[name]
                        pids = peers.process_tree([proc.pid])
                        cpu0 = peers.cpu_seconds(pids)
                        rate, count = tls._s_time(port, seconds, c, www)
                        cpu_us = (peers.cpu_seconds(pids) - cpu0) / max(count, 1) * 1e6
                        d = res.setdefault(f"c{c}", {}).setdefault(name, {"handshakes_per_s": [], "cpu_us": []})
                        d["handshakes_per_s"].append(rate)
                        d["cpu_us"].append(cpu_us)
        finally:
            peers.stop_processes((proc for proc, _ in procs.values()), 10)
    out: dict[str, Any] = {"revisions": revs, "rounds": rounds, "seconds": seconds, "www": www,
                           "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "points": {}}
    for point, by in res.items():
        for name, d in by.items():
            fig: dict[str, Any] = {k: round(_median(v), 1) for k, v in d.items() if v}
            fig["runs"] = {k: [round(x, 1) for x in v] for k, v in d.items()}
            for ref in REFERENCES:
                h = by.get(ref)
                if h is not None and name not in REFERENCES:
                    key = ref.replace("-", "_")
                    fig[f"cpu_vs_{key}"] = round(_median(d["cpu_us"]) / _median(h["cpu_us"]), 2)
                    fig[f"rate_vs_{key}"] = round(_median(d["handshakes_per_s"]) / _median(h["handshakes_per_s"]), 2)
            out["points"].setdefault(point, {})[name] = fig
    return out


def table(result: dict[str, Any]) -> str:
    lines = [f"load average {result['loadavg_start']} -> {result['loadavg_end']}"]
    if result.get("www"):
        lines.append(f"each handshake followed by GET {result['www']} HTTP/1.0 and its whole answer")
    for point, by in result["points"].items():
        lines.append(f"{point}:")
        for name, f in by.items():
            ratio = "".join(f" {f[k]}x {ref}" for ref in REFERENCES if (k := f"cpu_vs_{ref.replace('-', '_')}") in f)
            spread = f"{min(f['runs']['cpu_us']):.0f}-{max(f['runs']['cpu_us']):.0f}"
            lines.append(f"  {name:17s} {f['handshakes_per_s']:6.0f} handshakes/s  server CPU "
                         f"{f['cpu_us']:5.0f} µs/handshake (rounds {spread}){ratio}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.tls_builds", description=__doc__.split("\n", 1)[0])
    ap.add_argument("revs", nargs="*", help="git revisions to compare with the working tree")
    ap.add_argument("--clients", default="1,4")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--www", metavar="PATH", help="after each handshake, GET PATH and read the answer "
                    "(s_time -www; HAProxy answers it itself: mode http, http-request return)")
    args = ap.parse_args(argv)
    result = run(args.revs, [int(c) for c in args.clients.split(",")], args.rounds, args.seconds, args.www)
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
