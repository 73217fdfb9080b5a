"""``tpemu fault``: faults on purpose — a toxiproxy-compatible API and the seed's troubleshooting cases."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import tempfile
from pathlib import Path

from tpemu import logs
from tpemu.cli.common import CLIError, Subparsers, command, run_loop

ORDER = 95
log = logging.getLogger("tpemu")


def register(sub: Subparsers) -> None:
    s = command(sub, "fault", "faults on purpose: toxiproxy's API, reset by peer, not TLS, an L7 load balancer", (
        "tpemu fault api                                   # toxiproxy's HTTP API on 127.0.0.1:8474",
        "tpemu fault api --proxy web=127.0.0.1:4080:127.0.0.1:3080   # with a proxy in front of the web port",
        "tpemu fault reset-peer --listen 127.0.0.1:4080 --upstream 127.0.0.1:3080 --after-ms 500",
        "tpemu fault not-tls --listen 127.0.0.1:4443       # plain HTTP where TLS is expected",
        "tpemu fault l7-lb --listen 127.0.0.1:8443 --upstream 127.0.0.1:3080   # the x509 case",
    ))
    s.add_argument("case", choices=("api", "reset-peer", "not-tls", "l7-lb"),
                   help="api (toxiproxy-compatible), reset-peer, not-tls or l7-lb")
    s.add_argument("--listen", default="127.0.0.1:0", help="where the fault listens (HOST:PORT)")
    s.add_argument("--upstream", help="where it forwards (the proxy's HOST:PORT)")
    s.add_argument("--after-ms", type=int, default=0, help="reset-peer: reset this long after connect")
    s.add_argument("--api-listen", default="127.0.0.1:8474", help="api: the HTTP API address (toxiproxy's 8474)")
    s.add_argument("--proxy", action="append", default=[], metavar="NAME=LISTEN:UPSTREAM",
                   help="api: create a proxy at start (NAME=host:port:host:port)")
    s.add_argument("--dir", help="l7-lb: where to write the LB's CA and certificate (default: a temp dir)")
    s.add_argument("--names", default="*.example.teleport.sh,example.teleport.sh",
                   help="l7-lb: the names in the LB's certificate (the seed's by default)")
    s.add_argument("--debug", action="store_true", help="log at DEBUG")
    s.set_defaults(func=cmd_fault)


def cmd_fault(args: argparse.Namespace) -> int:
    logs.setup("DEBUG" if args.debug else "INFO", "stderr")
    if args.case in ("reset-peer", "l7-lb") and not args.upstream:
        raise CLIError(f"tpemu fault {args.case} needs --upstream HOST:PORT (the proxy)", 2)
    return run_loop(lambda: _run(args))


async def _run(args: argparse.Namespace) -> int:
    from tpemu.faults import cases
    from tpemu.faults.api import FaultAPI

    closers = []
    try:
        if args.case == "api":
            api = FaultAPI()
            for spec in args.proxy:
                name, _, rest = spec.partition("=")
                parts = rest.split(":")
                if not name or len(parts) != 4:
                    raise CLIError(f"--proxy {spec!r}: expected NAME=host:port:host:port", 2)
                await api.add_proxy(name, f"{parts[0]}:{parts[1]}", f"{parts[2]}:{parts[3]}")
            host, _, port = args.api_listen.rpartition(":")
            addr = await api.serve(host, int(port))
            print(f"toxiproxy-compatible API on http://{addr} (toxiproxy-python: Toxiproxy(); "
                  f"APIConsumer.host, APIConsumer.port = {host!r}, {port})", flush=True)
            closers.append(api.close)
        elif args.case == "reset-peer":
            proxy = await cases.reset_peer(args.listen, args.upstream, args.after_ms)
            print(f"reset-peer: {proxy.listen} → {args.upstream}, TCP RST {args.after_ms} ms after connect "
                  "(clients read \"connection reset by peer\")", flush=True)
            closers.append(proxy.stop)
        elif args.case == "not-tls":
            server = cases.NotTLS(args.listen)
            await server.start()
            print(f"not-tls: plain HTTP on {server.listen} (TLS clients: \"tls: first record does not look like a "
                  "TLS handshake\")", flush=True)
            closers.append(server.close)
        else:
            folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="tpemu-l7lb-"))
            lb = cases.L7LoadBalancer(args.listen, args.upstream, folder,
                                      tuple(n.strip() for n in args.names.split(",") if n.strip()))
            await lb.start()
            print(f"l7-lb: TLS with its own certificate ({', '.join(lb.names)}; CA {lb.ca}) on {lb.listen} → "
                  f"{args.upstream}; clients need the ALPN connection upgrade", flush=True)
            closers.append(lb.close)
    except (OSError, ValueError) as exc:
        raise CLIError(f"tpemu fault {args.case}: {exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for close in closers:
        await close()
    return 0
