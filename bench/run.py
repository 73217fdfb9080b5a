"""``make bench`` / ``tpemu bench``: run the benchmark suite, save JSON, print a table, draw a chart.

Profiles: ``quick`` (under 3 minutes) and ``full`` (under 15, with repeats and callgrind
instruction counts of the hot path). Parts: ``micro`` (the hot routing path without sockets,
:mod:`bench.micro`), ``e2e`` (connection rate, throughput and memory through tpemu on uvloop
and asyncio, HAProxy, nginx stream and sslh, each as a ratio to a direct connection,
:mod:`bench.e2e`), ``tls`` (TLS termination handshakes, ECDSA against RSA, against HAProxy,
:mod:`bench.tls`) and ``fullstack`` (SSH session setup and Postgres round trips through a reverse
tunnel, :mod:`bench.fullstack`). Results go to ``bench/results/<UTC time>-<profile>.json`` with the git sha,
Python, uvloop version and CPU count; the chart beside it as PNG (when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    import uvloop

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "unknown", False
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "git_sha": sha + ("-dirty" if dirty else ""),
        "python": platform.python_version(),
        "python_build": " ".join(platform.python_build()),
        "uvloop": uvloop.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "load_average_at_start": [round(x, 2) for x in load],
        "time_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tpemu bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=("quick", "full"), default="quick")
    ap.add_argument("--only", choices=("micro", "e2e", "tls", "fullstack"), help="run one part only")
    ap.add_argument("--out", help="write the JSON here instead of bench/results/")
    ap.add_argument("--no-chart", action="store_true")
    args = ap.parse_args(argv)

    started = time.monotonic()
    result: dict[str, Any] = {"profile": args.profile, "environment": environment()}
    print(f"tpemu bench, {args.profile} profile, {result['environment']['cpu_count']} CPUs, "
          f"load {result['environment']['load_average_at_start']}")
    if args.only in (None, "micro"):
        from bench.micro import run_micro

        print("micro (hot path, no sockets; best of repeats; ratio to a naive parser in the same run):")
        result["micro"] = run_micro(args.profile, instructions=args.profile == "full")
    if args.only in (None, "e2e"):
        try:
            from bench.e2e import run_e2e
        except ImportError as exc:
            print(f"e2e: not available ({exc})")
        else:
            print("end to end (loopback, C load generator; ratios to direct in the same run):")
            result["e2e"] = run_e2e(args.profile, log=print)
    if args.only in (None, "tls"):
        from bench.tls import run_tls

        print("TLS termination (full handshakes, ECDSA P-256 vs RSA 2048, tpemu vs HAProxy):")
        result["tls"] = run_tls(args.profile, log=print)
    if args.only in (None, "fullstack"):
        from bench.fullstack import run_fullstack

        print("full stack (SSH session setup, Postgres round trips through a reverse tunnel):")
        try:
            result["fullstack"] = run_fullstack(args.profile, log=print)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            result["fullstack"] = {"skipped": f"failed: {exc}"}
            print(f"full stack: skipped: {exc}")
    result["duration_s"] = round(time.monotonic() - started, 1)

    from bench.report import add_ratios, chart, table

    add_ratios(result)
    print(table(result))
    out = Path(args.out) if args.out else RESULTS / (
        dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{args.profile}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out}")
    if not args.no_chart:
        png = chart(result, out.with_suffix(".png"))
        print(f"chart:   {png}" if png else "chart:   skipped (matplotlib not installed: pip install tpemu[bench])")
    print(f"took {result['duration_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
