"""A network fuzzer against a real ``tpemu start`` process (loopback only, bounded).

Seeds are real first flights of every protocol the front door sniffs and every route it knows —
ClientHellos from OpenSSL with each ALPN (web, h2, SSH proxy, reverse tunnel, Auth, every
database and its ``-ping`` form, ``teleport-tcp``, the MySQL version form, unknown names, none) and
SNI (kube, internal names), SSH identification lines, HTTP request lines, Postgres
SSLRequest/GSSENCRequest/StartupMessage/CancelRequest, PROXY v1/v2 headers in front of each — then
mutated: bit flips, truncation, inserted and duplicated bytes, a corrupted length field, random
bytes. Each connection sends its bytes (whole or in two writes), then closes at once, half-closes
or reads the answer for a moment.

Measured on the server process: log lines with ``Traceback``, its open descriptors and socket
descriptors, and its RSS — before, right after, and once every deadline has passed
(``sniff_timeout`` + the handshake deadlines). ``--mixed`` runs unmutated real flights instead
(the 50,000 mixed connections of the issue): those complete handshakes and requests.

``python -m bench.reliability.netfuzz --connections 100000 [--proxy-protocol on]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tpemu import testing
from tpemu.wire import alpn as names
from tpemu.wire import postgres, proxy_protocol

TPEMU = str(Path(sys.executable).with_name("tpemu"))

ALPNS = [["http/1.1"], ["h2", "http/1.1"], [names.PROXY_SSH], [names.REVERSE_TUNNEL_V2, names.REVERSE_TUNNEL],
         [names.AUTH], ["teleport-postgres"], ["teleport-postgres-ping"], ["postgresql"], ["teleport-mysql"],
         ["teleport-mysql-OC4wLjEy", "teleport-mysql"], ["teleport-mongodb"], ["teleport-redis"],
         ["teleport-redis-ping"], [names.TCP], ["teleport-proxy-grpc"], ["nonsense", "x"], []]
SNIS = [None, "localhost", "kube-teleport-proxy-alpn.tpemu.local", "7470656d752e6c6f63616c.teleport.cluster.local",
        "pg.localhost"]


def real_flights() -> list[bytes]:
    """Unmutated first flights, one or more per protocol and route."""
    out = [testing.client_hello(sni, alpn) for alpn in ALPNS for sni in SNIS[:2]]
    out += [testing.client_hello(sni, ["http/1.1"]) for sni in SNIS[2:]]
    out += [b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", b"SSH-2.0-Go\r\n",
            b"GET /webapi/ping HTTP/1.1\r\nHost: x\r\n\r\n", b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
            postgres.SSL_REQUEST, b"\x00\x00\x00\x08\x04\xd2\x16\x30",  # GSSENCRequest
            postgres.encode_startup({"user": "alice", "database": "app"}),
            b"\x00\x00\x00\x10\x04\xd2\x16\x2e" + b"\x00" * 8]  # CancelRequest
    headers = [proxy_protocol.encode_v1(("192.0.2.1", 1234), ("127.0.0.1", 3080)),
               proxy_protocol.encode_v1(("2001:db8::1", 1234), ("2001:db8::2", 3080)),
               proxy_protocol.encode_v2(("192.0.2.1", 1234), ("127.0.0.1", 3080)),
               proxy_protocol.encode_v2(None, None, command=proxy_protocol.Command.LOCAL),
               b"PROXY UNKNOWN\r\n"]
    with_headers = [h + f for h in headers for f in out[::5]]
    return out + with_headers


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(7)
        if op == 0 and b:  # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # truncation
            del b[rng.randrange(len(b)):]
        elif op == 2:  # inserted random bytes
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randint(1, 64))
        elif op == 3 and b:  # duplicated slice
            i = rng.randrange(len(b))
            b[i:i] = b[i:i + rng.randint(1, 32)]
        elif op == 4 and len(b) > 4:  # a corrupted length field (record, handshake, packet)
            i = rng.randrange(min(12, len(b)))
            b[i] = rng.choice((0x00, 0xFF, 0x7F, 0x80, b[i] + 1 & 0xFF))
        elif op == 5:  # random garbage
            b = bytearray(rng.randbytes(rng.randint(1, 512)))
        elif op == 6 and b:  # byte replacement anywhere
            b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``tpemu start`` in its own process, with its log in a file."""

    def __init__(self, folder: Path, proxy_protocol_mode: str = "", sniff_timeout: str = "5s") -> None:
        self.folder = folder
        self.port = free_port()
        pp = f", proxy_protocol: {proxy_protocol_mode}" if proxy_protocol_mode else ""
        self.cfg = folder / "tpemu.yaml"
        self.cfg.write_text(f"""teleport: {{data_dir: {folder / 'data'}, log: {{severity: WARNING}}}}
auth_service: {{listen_addr: "127.0.0.1:0"}}
proxy_service: {{web_listen_addr: "127.0.0.1:{self.port}"{pp}}}
tpemu: {{proxy_service: {{sniff_timeout: {sniff_timeout}}}}}
db_service:
  enabled: yes
  databases: [{{name: pg, protocol: postgres, uri: emulated}}, {{name: cache, protocol: redis, uri: emulated}}]
""")
        self.log_path = folder / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as f:
            self.proc = subprocess.Popen([TPEMU, "start", "--config", str(self.cfg)], stdout=f,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tpemu start did not come up:\n{self.log()[-3000:]}") from None
                time.sleep(0.2)
        time.sleep(1.0)  # the agent joins and tunnels (not measured; the baseline is taken after)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stats(self) -> dict[str, int]:
        assert self.proc is not None
        pid = self.proc.pid
        fds = os.listdir(f"/proc/{pid}/fd")
        sockets = 0
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    sockets += 1
            except OSError:
                pass
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        return {"fds": len(fds), "sockets": sockets, "rss_kb": rss,
                "tracebacks": self.log().count("Traceback")}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def _one(port: int, data: bytes, rng: random.Random, counts: dict[str, int], mixed: bool) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, TimeoutError):
        counts["connect_failed"] += 1
        return
    try:
        if len(data) > 1 and rng.random() < 0.3:
            cut = rng.randrange(1, len(data))
            writer.write(data[:cut])
            await writer.drain()
            await asyncio.sleep(0)
            writer.write(data[cut:])
        else:
            writer.write(data)
        await writer.drain()
        end = rng.random()
        if mixed or end < 0.5:
            try:
                got = await asyncio.wait_for(reader.read(4096), 1.0 if not mixed else 3.0)
                counts["answered" if got else "closed_by_server"] += 1
            except TimeoutError:
                counts["no_answer_1s"] += 1
        elif end < 0.75:
            writer.write_eof()
            counts["half_closed"] += 1
        else:
            counts["closed_at_once"] += 1
    except (OSError, ConnectionError):
        counts["reset"] += 1
    finally:
        writer.close()


async def _tls_client(port: int, alpn: list[str], counts: dict[str, int]) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                                        server_hostname="localhost"), 5)
        writer.write(b"GET /webapi/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = await asyncio.wait_for(reader.read(65536), 5)
        counts["tls_ok" if got else "tls_empty"] += 1
        writer.close()
    except (OSError, ssl.SSLError, TimeoutError):
        counts["tls_refused"] += 1


async def fuzz(port: int, n: int, concurrency: int, seed: int, mixed: bool) -> dict[str, int]:
    rng = random.Random(seed)
    flights = real_flights()
    counts: dict[str, int] = {k: 0 for k in ("connect_failed", "answered", "closed_by_server", "no_answer_1s",
                                             "half_closed", "closed_at_once", "reset", "tls_ok", "tls_empty",
                                             "tls_refused")}
    sem = asyncio.Semaphore(concurrency)

    async def job(i: int) -> None:
        async with sem:
            if mixed and i % 4 == 0:
                await _tls_client(port, [["http/1.1"], [], ["h2", "http/1.1"]][i % 3], counts)
                return
            flight = rng.choice(flights)
            await _one(port, flight if mixed else mutate(flight, rng), rng, counts, mixed)

    batch = 2000
    for start in range(0, n, batch):
        await asyncio.gather(*(job(i) for i in range(start, min(n, start + batch))))
    return counts


def run(connections: int, proxy_protocol_mode: str = "", concurrency: int = 100, seed: int = 16,
        mixed: bool = False, settle: float = 16.0, folder: Path | None = None) -> dict[str, Any]:
    """Fuzz a fresh server; returns the figures (see the module docstring)."""
    work = folder or Path(tempfile.mkdtemp(prefix="tpemu-netfuzz-"))
    server = Server(work, proxy_protocol_mode)
    server.start()
    try:
        # Warm: every route (real flights) and a first round of mutations, so lazy imports,
        # bounded caches and the allocator's arenas are in the baseline.
        asyncio.run(fuzz(server.port, 1000, 50, seed + 1, True))
        asyncio.run(fuzz(server.port, 3000, 50, seed + 2, mixed))
        time.sleep(2)
        warm = server.stats()
        t0 = time.monotonic()
        counts = asyncio.run(fuzz(server.port, connections, concurrency, seed, mixed))
        elapsed = time.monotonic() - t0
        right_after = server.stats()
        time.sleep(settle)  # every deadline passes: sniff_timeout, TLS/SSH/Postgres handshakes
        settled = server.stats()
        return {"connections": connections, "mixed": mixed, "proxy_protocol": proxy_protocol_mode or "unset",
                "seconds": round(elapsed, 1), "rate_per_s": round(connections / elapsed),
                "client_outcomes": counts, "warm": warm, "right_after": right_after, "settled": settled,
                "fd_growth": settled["fds"] - warm["fds"], "socket_growth": settled["sockets"] - warm["sockets"],
                "rss_ratio_to_warm": round(settled["rss_kb"] / max(1, warm["rss_kb"]), 3),
                "tracebacks": settled["tracebacks"], "log": str(server.log_path)}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--proxy-protocol", default="", choices=["", "on", "off"])
    ap.add_argument("--mixed", action="store_true", help="unmutated real flights (the 50,000 mixed connections)")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--settle", type=float, default=16.0)
    args = ap.parse_args(argv)
    result = run(args.connections, args.proxy_protocol, args.concurrency, args.seed, args.mixed, args.settle)
    print(json.dumps(result, indent=2))
    return 0 if result["tracebacks"] == 0 and result["socket_growth"] <= 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
