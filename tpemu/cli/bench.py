"""``tpemu bench``: run the benchmark suite from the source checkout's bench/ folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tpemu.cli.common import CLIError, Subparsers

ORDER = 30


def register(sub: Subparsers) -> None:
    # add_help=False: --help and every other argument belong to bench/run.py's own parser
    # (tpemu.cli.main hands everything after "bench" to it before argparse runs).
    s = sub.add_parser("bench", help="run the benchmark suite (bench/ in the source checkout; "
                       "tpemu bench --help for its options)", add_help=False)
    s.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for bench/run.py (e.g. --profile quick)")
    s.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    import tpemu

    # The suite lives in the checkout's bench/ folder, beside the package (editable install).
    for candidate in (Path(tpemu.__file__).resolve().parent.parent, Path.cwd()):
        if (candidate / "bench" / "run.py").exists():
            return subprocess.call([sys.executable, "-m", "bench.run", *args.bench_args], cwd=candidate)
    raise CLIError("the benchmark suite lives in the source checkout's bench/ folder; run tpemu bench from there")
