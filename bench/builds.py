"""Before/after: tpemu builds from git revisions against HAProxy and direct, in one run (glue).

``python -m bench.builds REV [REV …] [--conc 16,64] [--rounds 3] [--seconds 1] [--json FILE]``

Each revision is exported (``git archive``) into a temporary tree laid out as the installed
package (``tpemu/``, with ``proxy/``, ``agent/``, ``auth/`` inside, as ``[tool.setuptools.package-dir]``
maps them) and run with ``PYTHONPATH`` pointing at it, with that revision's own bench config
template; the working tree is the subject ``now``. Subjects are interleaved point by point, the
order rotated every round, and each figure is the median of the rounds: connection rate, p50/p99
latency and the subject's CPU per connection at each concurrency, with ratios to HAProxy of the
same run. For the figures before and after a change (issue 13), not for absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import loadgen, peers

REPO = Path(__file__).resolve().parent.parent
#: Source folders → where the installed package has them.
LAYOUT = {"tpemu": "tpemu", "proxy": "tpemu/proxy", "agent": "tpemu/agent", "auth": "tpemu/auth"}


def export(rev: str, into: Path) -> Path:
    """``rev`` as an importable tree under ``into``; returns the directory for ``PYTHONPATH``."""
    src = into / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    py = into / "py"
    for folder, target in LAYOUT.items():
        shutil.copytree(src / folder, py / target)
    return py


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run(revs: list[str], conc: list[int], rounds: int, seconds: float) -> dict[str, Any]:
    peers.raise_nofile()
    loadgen.build()
    own_templates = peers.CONFIG_DIR
    res: dict[str, dict[str, dict[str, list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="tpemu-bench-builds-") as tmp:
        work = Path(tmp)
        builds: dict[str, Path | None] = {rev: export(rev, work / f"tree-{rev}") for rev in revs}
        builds["now"] = None
        hello = work / "hello.bin"
        hello.write_bytes(peers.make_client_hello("bench.tpemu.test", ["teleport-postgres"]))
        with loadgen.Backend("reply") as reply, loadgen.Backend("source") as source:
            routes = peers.Routes(sni={"stream.bench.tpemu.test": source.port}, alpn={"teleport-postgres": reply.port})
            subjects: dict[str, peers.Peer | None] = {"direct": None}
            started: list[peers.Peer] = []
            saved = os.environ.get("PYTHONPATH")
            try:
                for name in ["haproxy", *builds]:
                    tree = builds.get(name)
                    if tree is not None:
                        os.environ["PYTHONPATH"] = str(tree)
                        peers.CONFIG_DIR = tree.parent / "src" / "bench" / "peers"
                    else:
                        os.environ.pop("PYTHONPATH", None)
                        peers.CONFIG_DIR = own_templates
                    kind = "haproxy" if name == "haproxy" else "tpemu-uvloop"
                    peer, why = peers.start_peer(kind, routes, work / f"run-{name}", probe=hello.read_bytes())
                    if peer is None:
                        print(f"{name}: skipped: {why}", file=sys.stderr)
                        continue
                    started.append(peer)
                    subjects[name] = peer
            finally:
                peers.CONFIG_DIR = own_templates
                if saved is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = saved
            try:
                for peer in started:
                    loadgen.connrate(peer.target, concurrency=16, duration=0.5, payload=hello)  # warm-up
                order = list(subjects)
                for rnd in range(rounds):
                    for c in conc:
                        k = rnd % len(order)
                        for name in order[k:] + order[:k]:
                            peer = subjects[name]
                            cpu0 = peer.cpu_seconds() if peer else 0.0
                            r = loadgen.connrate(reply.target if peer is None else peer.target, concurrency=c,
                                                 duration=seconds, payload=hello, warmup=0.1)
                            cpu1 = peer.cpu_seconds() if peer else 0.0
                            d = res.setdefault(f"c{c}", {}).setdefault(
                                name, {"conn_per_s": [], "p50_ms": [], "p99_ms": [], "cpu_us": []})
                            d["conn_per_s"].append(r["conn_per_s"])
                            d["p50_ms"].append(r["p50_us"] / 1e3)
                            d["p99_ms"].append(r["p99_us"] / 1e3)
                            if peer is not None:
                                d["cpu_us"].append((cpu1 - cpu0) / max(1, r["all_connections"]) * 1e6)
            finally:
                for peer in started:
                    peer.stop()
    out: dict[str, Any] = {"revisions": revs, "rounds": rounds, "seconds": seconds, "loadavg_end": os.getloadavg(),
                           "points": {}}
    for point, by in res.items():
        h = by.get("haproxy")
        for name, d in by.items():
            fig: dict[str, Any] = {k: round(_median(v), 2) for k, v in d.items() if v}
            fig["runs"] = d
            if h is not None and name != "haproxy":
                fig["conn_per_s_vs_haproxy"] = round(_median(d["conn_per_s"]) / _median(h["conn_per_s"]), 2)
                fig["p99_vs_haproxy"] = round(_median(d["p99_ms"]) / _median(h["p99_ms"]), 2)
                if d["cpu_us"]:
                    fig["cpu_vs_haproxy"] = round(_median(d["cpu_us"]) / _median(h["cpu_us"]), 2)
            out["points"].setdefault(point, {})[name] = fig
    return out


def table(result: dict[str, Any]) -> str:
    lines = []
    for point, by in result["points"].items():
        lines.append(f"{point}:")
        for name, f in by.items():
            ratios = (f" ({f['conn_per_s_vs_haproxy']}h)" if "conn_per_s_vs_haproxy" in f else "")
            p99 = (f" ({f['p99_vs_haproxy']}h)" if "p99_vs_haproxy" in f else "")
            cpu = (f" {f['cpu_us']:.0f} µs CPU/conn" + (f" ({f['cpu_vs_haproxy']}h)" if "cpu_vs_haproxy" in f else "")
                   if "cpu_us" in f else "")
            lines.append(f"  {name:12s} {f['conn_per_s']:8.0f} conn/s{ratios}  p50 {f['p50_ms']:6.2f} ms  "
                         f"p99 {f['p99_ms']:6.2f} ms{p99} {cpu}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.builds", description=__doc__.split("\n", 1)[0])
    ap.add_argument("revs", nargs="+", help="git revisions to compare with the working tree")
    ap.add_argument("--conc", default="16,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    result = run(args.revs, [int(c) for c in args.conc.split(",")], args.rounds, args.seconds)
    print(table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
