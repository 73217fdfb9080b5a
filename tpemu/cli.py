"""The ``tpemu`` command line (glue): start, configure, ping, inspect, bench, version.

Configures logging (the only place that does), picks the event loop (uvloop unless
``--loop asyncio``) and turns every expected failure into one clear line on stderr and a non-zero
exit code; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from tpemu import TELEPORT_VERSION, __version__, logs
from tpemu import config as config_mod
from tpemu.config import Addr, Config, ConfigError

log = logging.getLogger("tpemu")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after "bench" belongs to the suite's own parser
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"tpemu: config error: {exc}", file=sys.stderr)
        return 2
    except CLIError as exc:
        print(f"tpemu: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


class CLIError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tpemu", description="Teleport networking emulator")
    p.add_argument("--version", action="version", version=f"tpemu {__version__} (Teleport {TELEPORT_VERSION})")
    sub = p.add_subparsers(metavar="COMMAND")

    s = sub.add_parser("start", help="run a cluster (all-in-one without --config)")
    s.add_argument("-c", "--config", help="teleport.yaml-shaped config file")
    s.add_argument("-d", "--data-dir", help="override teleport.data_dir")
    s.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop (default uvloop)")
    s.add_argument("--debug", action="store_true", help="log at DEBUG")
    s.add_argument("--log-level", help="TRACE, DEBUG, INFO, WARN or ERROR (overrides the config)")
    s.set_defaults(func=cmd_start)

    s = sub.add_parser("configure", help="print a commented default config")
    s.add_argument("-o", "--output", help="write to this file instead of stdout")
    s.set_defaults(func=cmd_configure)

    s = sub.add_parser("ping", help="print the proxy's /webapi/ping JSON")
    s.add_argument("--proxy", default="127.0.0.1:3080", help="proxy HOST:PORT (default 127.0.0.1:3080)")
    s.add_argument("--insecure", action="store_true", help="do not verify the proxy's certificate")
    s.add_argument("--ca", help="CA file to trust (default: the local cluster CA if present, and the system's)")
    s.add_argument("--find", action="store_true", help="ask /webapi/find instead")
    s.set_defaults(func=cmd_ping)

    s = sub.add_parser("inspect", help="explain how a captured first-bytes prefix would be routed")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("hex", nargs="?", help="the prefix as hex (spaces, colons and 0x allowed)")
    src.add_argument("--file", help="a file holding the raw bytes")
    s.add_argument("-c", "--config", help="route with this config (pass-through rules, listener mode)")
    s.add_argument("--listener", default="web", help="which listener received it (web, ssh, tunnel, postgres, …)")
    s.add_argument("--proxy-protocol", action="store_true", help="as if proxy_protocol were on")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("bench", help="run the benchmark suite (bench/ in the source checkout)", add_help=False)
    s.add_argument("bench_args", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_bench)
    return p


# -- start --------------------------------------------------------------------------------------


def load_config(path: str | None, data_dir: str | None) -> tuple[Config, list[str]]:
    """The config from ``path`` (or defaults), with ``--data-dir`` applied; plus ignored keys."""
    import dataclasses

    import yaml

    ignored: list[str] = []
    if path:
        cfg = config_mod.load(path)
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            raw = None
        ignored = config_mod.ignored_keys(raw)
    else:
        cfg = Config()
    if data_dir:
        cfg = dataclasses.replace(cfg, teleport=dataclasses.replace(cfg.teleport, data_dir=data_dir))
    return cfg, ignored


def run_loop(coro_fn: Callable[[], Coroutine[Any, Any, int]], loop_name: str = "uvloop") -> int:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coro_fn())
    return asyncio.run(coro_fn())


def cmd_start(args: argparse.Namespace) -> int:
    cfg, ignored = load_config(args.config, args.data_dir)
    level = args.log_level or ("DEBUG" if args.debug else cfg.teleport.log.severity)
    try:
        logs.setup(level, cfg.teleport.log.output)
    except (ValueError, OSError) as exc:
        raise CLIError(f"cannot set up logging: {exc}", 2) from None
    for key in ignored:
        log.warning("config key %s is accepted for compatibility but not emulated by tpemu", key)
    return run_loop(lambda: _start(cfg, all_in_one=args.config is None), args.loop)


async def _start(cfg: Config, all_in_one: bool) -> int:
    from tpemu.proxy.service import ProxyService

    proxy = ProxyService(cfg)
    try:
        await proxy.start()
    except OSError as exc:
        print(f"tpemu: cannot listen: {exc.strerror or exc} ({exc.filename or ''})".rstrip(" ()"), file=sys.stderr)
        return 1
    print(banner(cfg, proxy, all_in_one), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down; routed %s, refused %s", dict(proxy.door.stats.routed), dict(proxy.door.stats.refused))
    await proxy.close()
    return 0


def banner(cfg: Config, proxy: Any, all_in_one: bool) -> str:
    from tpemu.proxy.decide import ListenerKind
    from tpemu.proxy.route import RouteKind

    web = proxy.info.bound[ListenerKind.WEB]
    ca = proxy.tls_files.ca
    mode = "multiplex (TLS routing: every protocol on the web port)" if cfg.multiplex else "separate listeners"
    lines = [
        f"tpemu {__version__}: Teleport {TELEPORT_VERSION} network emulation, cluster {cfg.auth_service.cluster_name!r}"
        + (" (all-in-one)" if all_in_one else ""),
        f"  mode:      {mode}",
        f"  data dir:  {proxy.data_dir}",
        f"  cluster CA {ca}",
        "  listeners:",
    ]
    for listener in proxy.door.listeners:
        accepts = ", ".join(sorted(p.value for p in listener.policy.accepts)) or "server speaks first"
        lines.append(f"    {listener.kind.value:<9} {listener.addr!s:<22} {accepts}")
    served = sorted(k.value for k in proxy.handlers)
    missing = sorted(k.value for k in RouteKind if k not in proxy.handlers and k is not RouteKind.REJECT)
    lines.append(f"  serving:   {', '.join(served)}")
    lines.append(f"  answered 'not available in this cluster': {', '.join(missing)}")
    if cfg.proxy_service.passthrough:
        lines.append("  pass-through rules:")
        for rule in cfg.proxy_service.passthrough:
            lines.append(f"    {rule.name or '-'}: {rule.protocol} alpn={list(rule.alpn)} sni={list(rule.sni)} → "
                         f"{rule.target}")
    lines += [
        "  try:",
        f"    curl --cacert {ca} https://{web}/webapi/ping      (or: curl -sk https://{web}/webapi/ping)",
        f"    tpemu ping --proxy {web}",
        f"    openssl s_client -connect {web} -alpn teleport-proxy-ssh </dev/null",
        "    tpemu inspect 5353482d322e302d4f70656e5353480d0a    # how 'SSH-2.0-OpenSSH' would be routed",
    ]
    return "\n".join(lines)


# -- configure ------------------------------------------------------------------------------------


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


# -- ping -------------------------------------------------------------------------------------------


def _default_ca() -> Path | None:
    path = Config().data_dir() / "pki" / "ca.crt"
    return path if path.exists() else None


def cmd_ping(args: argparse.Namespace) -> int:
    import http.client

    try:
        addr = Addr.parse(args.proxy, default_port=3080)
    except ValueError as exc:
        raise CLIError(f"--proxy: {exc}", 2) from None
    ctx = ssl.create_default_context()
    if args.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ca = Path(args.ca) if args.ca else _default_ca()
        if ca is not None:
            try:
                ctx.load_verify_locations(cafile=str(ca))
            except (OSError, ssl.SSLError) as exc:
                raise CLIError(f"cannot load CA {ca}: {exc}", 2) from None
    ctx.set_alpn_protocols(["http/1.1"])
    path = "/webapi/find" if args.find else "/webapi/ping"
    conn = http.client.HTTPSConnection(addr.host, addr.port, context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
    except ssl.SSLCertVerificationError as exc:
        raise CLIError(f"cannot verify the proxy's certificate: {exc.verify_message} "
                       "(pass --ca <cluster CA> or --insecure)") from None
    except (OSError, http.client.HTTPException) as exc:
        raise CLIError(f"cannot reach the proxy at {addr}: {exc}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise CLIError(f"{path} answered {resp.status} {resp.reason}: {body[:200]!r}")
    try:
        data = json.loads(body)
    except ValueError:
        raise CLIError(f"{path} did not answer JSON: {body[:200]!r}") from None
    print(json.dumps(data, indent=2))
    return 0


# -- inspect ------------------------------------------------------------------------------------------


def parse_hex(text: str) -> bytes:
    """Hex from a capture: whitespace, ``:``, ``0x`` prefixes and ``\\x`` escapes are allowed."""
    cleaned = text.strip().replace("\\x", "").replace("0x", "").replace(":", "")
    cleaned = "".join(cleaned.split())
    try:
        return bytes.fromhex(cleaned)
    except ValueError as exc:
        raise CLIError(f"not hex: {exc}", 2) from None


def cmd_inspect(args: argparse.Namespace) -> int:
    from tpemu.proxy.explain import explain

    if args.file:
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            raise CLIError(f"cannot read {args.file}: {exc.strerror}", 2) from None
    else:
        data = parse_hex(args.hex)
    cfg, _ = load_config(args.config, None)
    text, code = explain(data, cfg, args.listener, force_proxy_protocol=args.proxy_protocol)
    print(text)
    return code


# -- bench -----------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    import tpemu

    # The suite lives in the checkout's bench/ folder, beside the package (editable install).
    for candidate in (Path(tpemu.__file__).resolve().parent.parent, Path.cwd()):
        if (candidate / "bench" / "run.py").exists():
            return subprocess.call([sys.executable, "-m", "bench.run", *args.bench_args], cwd=candidate)
    raise CLIError("the benchmark suite lives in the source checkout's bench/ folder; run tpemu bench from there")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

