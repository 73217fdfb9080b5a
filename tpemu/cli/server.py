"""``tpemu start`` (run a cluster) and ``tpemu configure`` (print the commented default config)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tpemu import logs
from tpemu.cli.common import CLIError, Subparsers, command, load_config, run_loop

ORDER = 10
log = logging.getLogger("tpemu")


def register(sub: Subparsers) -> None:
    s = command(sub, "start", "run a cluster (all-in-one without --config)", (
        "tpemu start                                  # auth + proxy + node + db on 127.0.0.1:3080",
        "tpemu start -c teleport.yaml --roles proxy",
        "tpemu start --diag-addr 127.0.0.1:3000 --trace decisions.jsonl   # then open http://127.0.0.1:3000/routing",
        "tpemu start --roles node --proxy proxy.example:3080 --token /var/lib/tpemu/token --nodename n1",
    ))
    s.add_argument("-c", "--config", help="teleport.yaml-shaped config file")
    s.add_argument("-d", "--data-dir", help="override teleport.data_dir")
    s.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop (default uvloop)")
    s.add_argument("--debug", action="store_true", help="log at DEBUG")
    s.add_argument("--log-level", help="TRACE, DEBUG, INFO, WARN or ERROR (overrides the config)")
    s.add_argument("--roles", help="what to run, comma-separated: auth, proxy, node, db (Teleport's --roles; "
                   "default: the services the config enables; all of them without a config)")
    s.add_argument("--token", help="join token for agents and proxies (teleport.auth_token; a file path works too)")
    s.add_argument("--proxy", help="the proxy HOST:PORT agents join through and tunnel to (teleport.proxy_server)")
    s.add_argument("--auth-server", help="join the Auth Service directly at HOST:PORT (teleport.auth_server; "
                   "SSH agents only)")
    s.add_argument("--ca-pin", action="append", default=[], help="sha256:… pin of the cluster CA (teleport.ca_pin)")
    s.add_argument("--nodename", help="this host's name (teleport.nodename)")
    s.add_argument("--diag-addr", help="serve /metrics, /healthz, /readyz and the live /routing page on "
                   "HOST:PORT (teleport.diag_addr)")
    s.add_argument("--trace", metavar="FILE", help="append every routing decision to FILE as JSON lines")
    s.set_defaults(func=cmd_start)

    s = command(sub, "configure", "print a commented default config", (
        "tpemu configure > teleport.yaml", "tpemu configure -o /etc/tpemu.yaml"))
    s.add_argument("-o", "--output", help="write to this file instead of stdout")
    s.set_defaults(func=cmd_configure)


def cmd_start(args: argparse.Namespace) -> int:
    cfg, ignored = load_config(args.config, args.data_dir)
    level = args.log_level or ("DEBUG" if args.debug else cfg.teleport.log.severity)
    try:
        logs.setup(level, cfg.teleport.log.output, cfg.teleport.log.format.output,
                   tuple(cfg.teleport.log.format.extra_fields))
    except (ValueError, OSError) as exc:
        raise CLIError(f"cannot set up logging: {exc}", 2) from None
    for warning in ignored:
        log.warning("%s", warning)
    from tpemu.runner import apply_start_flags, run

    cfg, roles = apply_start_flags(cfg, args, all_in_one=args.config is None)
    if args.diag_addr:
        import dataclasses

        from tpemu.config import Addr

        try:
            diag = Addr.parse(args.diag_addr, default_port=3000)
        except ValueError as exc:
            raise CLIError(f"--diag-addr: {exc}", 2) from None
        cfg = dataclasses.replace(cfg, teleport=dataclasses.replace(cfg.teleport, diag_addr=diag))
    return run_loop(lambda: run(cfg, roles, all_in_one=args.config is None, trace=args.trace), args.loop)


def cmd_configure(args: argparse.Namespace) -> int:
    from tpemu.config_example import EXAMPLE_CONFIG

    if args.output:
        path = Path(args.output)
        if path.exists():
            raise CLIError(f"{path} exists; not overwriting it")
        path.write_text(EXAMPLE_CONFIG, encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write(EXAMPLE_CONFIG)
    return 0
