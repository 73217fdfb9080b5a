"""``tpemu ping`` (the proxy's /webapi/ping) and ``tpemu inspect`` (how a first-bytes prefix routes)."""

from __future__ import annotations

import argparse
import json
import ssl
from pathlib import Path

from tpemu.cli.common import CLIError, Subparsers, command, default_ca, load_config
from tpemu.config import Addr

ORDER = 20


def register(sub: Subparsers) -> None:
    s = command(sub, "ping", "print the proxy's /webapi/ping JSON", (
        "tpemu ping --proxy 127.0.0.1:3080 --insecure", "tpemu ping --proxy proxy.example:443 --ca ca.crt --find"))
    s.add_argument("--proxy", default="127.0.0.1:3080", help="proxy HOST:PORT (default 127.0.0.1:3080)")
    s.add_argument("--insecure", action="store_true", help="do not verify the proxy's certificate")
    s.add_argument("--ca", help="CA file to trust (default: the local cluster CA if present, and the system's)")
    s.add_argument("--find", action="store_true", help="ask /webapi/find instead")
    s.set_defaults(func=cmd_ping)

    s = command(sub, "inspect", "explain how a captured first-bytes prefix would be routed", (
        "tpemu inspect 5353482d322e302d4f70656e5353485f392e320d0a   # 'SSH-2.0-OpenSSH_9.2\\r\\n'",
        "tpemu inspect 16:03:01:00:c8:01:00:00:c4   # hex from Wireshark's 'copy as hex'",
        "tpemu inspect --file first-bytes.bin --listener web -c teleport.yaml",
        "tpemu inspect --proxy-protocol 0d0a0d0a000d0a515549540a...",
        "tcpdump -i lo -w cap.pcap port 3080 & …; tpemu inspect --pcap cap.pcap",
    ))
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("hex", nargs="?", help="the prefix as hex (spaces, colons and 0x allowed)")
    src.add_argument("--file", help="a file holding the raw bytes")
    src.add_argument("--pcap", metavar="FILE", help="a capture (pcap/pcapng): explain every TCP stream in it "
                     "(needs dpkt: pip install 'tpemu[pcap]')")
    s.add_argument("-c", "--config", help="route with this config (pass-through rules, listener mode)")
    s.add_argument("--listener", default="web", help="which listener received it (web, ssh, tunnel, postgres, …)")
    s.add_argument("--proxy-protocol", action="store_true", help="as if proxy_protocol were on")
    s.set_defaults(func=cmd_inspect)


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
        ca = Path(args.ca) if args.ca else default_ca()
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

    if args.pcap:
        from tpemu.diag.pcap import explain_capture

        cfg, _ = load_config(args.config, None)
        text, pcode = explain_capture(Path(args.pcap), cfg, args.listener, args.proxy_protocol)
        print(text)
        return pcode
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
