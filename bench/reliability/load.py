"""Load and integrity against a real ``tpemu start`` process (loopback only, bounded).

Three measurements, each on a fresh server with a pass-through route (plain SSH → an echo backend
in its own process, spliced from byte 0), so what is measured is the proxy, not a service:

* **slowloris beyond max_pending** — N slow clients (a partial ClientHello, one more byte every
  second) against ``max_pending`` < N, while good clients connect, send a line and time the echo:
  their success rate and p50/p99, and how many slow clients the proxy shed early;
* **idle** — N routed connections held open: server RSS per connection, then one round of traffic
  on every connection with a SHA-256 check of what came back;
* **integrity** — K streams of M MiB, both ways at once (client → backend → client), SHA-256 on
  each, bytes lost.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.reliability.netfuzz import TPEMU, free_port

BANNER = b"SSH-2.0-reliability\r\n"

ECHO = r"""
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def echo(r, w):
    try:
        while data := await r.read(262144):
            w.write(data)
            await w.drain()
    except ConnectionError:
        pass
    finally:
        w.close()
async def main():
    srv = await asyncio.start_server(echo, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    print("ready", flush=True)
    await srv.serve_forever()
asyncio.run(main())
"""


class Rig:
    """An echo backend and ``tpemu start`` with a pass-through route to it."""

    def __init__(self, folder: Path, max_pending: int = 4096, sniff_timeout: str = "5s") -> None:
        self.folder = folder
        self.port, self.echo_port = free_port(), free_port()
        self.cfg = folder / "tpemu.yaml"
        self.cfg.write_text(f"""teleport: {{data_dir: {folder / 'data'}, log: {{severity: WARNING}}}}
auth_service: {{enabled: no}}
ssh_service: {{enabled: no}}
proxy_service:
  web_listen_addr: "127.0.0.1:{self.port}"
tpemu:
  proxy_service:
    max_pending: {max_pending}
    sniff_timeout: {sniff_timeout}
    passthrough: [{{name: echo, protocol: ssh, target: "127.0.0.1:{self.echo_port}"}}]
""")
        self.log_path = folder / "server.log"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        echo = subprocess.Popen([sys.executable, "-c", ECHO, str(self.echo_port)], stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        self.procs.append(echo)
        assert echo.stdout is not None
        echo.stdout.readline()
        with self.log_path.open("ab") as f:
            self.proxy = subprocess.Popen([TPEMU, "start", "--config", str(self.cfg)], stdout=f,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(self.proxy)
        deadline = time.monotonic() + 30
        while True:
            try:
                asyncio.run(self._probe())
                return
            except OSError:
                if self.proxy.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(self.log_path.read_text()[-2000:]) from None
                time.sleep(0.2)

    async def _probe(self) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        w.write(BANNER)
        await asyncio.wait_for(r.readexactly(len(BANNER)), 5)
        w.close()

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proxy.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proxy.pid}/fd"))

    def tracebacks(self) -> int:
        return self.log_path.read_text(errors="replace").count("Traceback")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


def _raise_nofile() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _good_client(port: int) -> float | None:
    t0 = time.perf_counter()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        w.write(BANNER + b"ping\n")
        await asyncio.wait_for(r.readexactly(len(BANNER) + 5), 5)
        w.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return None
    return time.perf_counter() - t0


async def _slowloris(port: int, hold: float, shed: list[int]) -> None:
    partial = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        shed.append(1)
        return
    end = time.monotonic() + hold
    try:
        for b in partial:
            w.write(bytes([b]))
            try:
                got = await asyncio.wait_for(r.read(1), 1.0)
                if got == b"":
                    break  # closed by the proxy (shed or deadline)
            except TimeoutError:
                pass
            if time.monotonic() > end:
                break
        if time.monotonic() < end - 0.5:
            shed.append(1)
    except (OSError, ConnectionError):
        shed.append(1)
    finally:
        w.close()


def slowloris(slow: int = 3000, max_pending: int = 1000, good: int = 400, hold: float = 6.0) -> dict[str, Any]:
    _raise_nofile()
    rig = Rig(Path(tempfile.mkdtemp(prefix="tpemu-slowloris-")), max_pending=max_pending)
    rig.start()
    try:
        async def main() -> dict[str, Any]:
            base = [x for x in await asyncio.gather(*(_good_client(rig.port) for _ in range(50))) if x is not None]
            shed: list[int] = []
            slow_tasks = []
            for _ in range(slow):
                slow_tasks.append(asyncio.ensure_future(_slowloris(rig.port, hold, shed)))
                await asyncio.sleep(0)
            await asyncio.sleep(1.0)
            lat: list[float | None] = []
            t_end = time.monotonic() + hold - 1.5
            while time.monotonic() < t_end and len(lat) < good:
                lat.extend(await asyncio.gather(*(_good_client(rig.port) for _ in range(20))))
            await asyncio.gather(*slow_tasks)
            ok = sorted(x for x in lat if x is not None)
            return {"slow_clients": slow, "max_pending": max_pending, "good_clients": len(lat),
                    "good_ok": len(ok), "good_success": round(len(ok) / max(1, len(lat)), 4),
                    "good_p50_ms": round(statistics.median(ok) * 1e3, 2) if ok else None,
                    "good_p99_ms": round(ok[int(len(ok) * 0.99) - 1] * 1e3, 2) if ok else None,
                    "baseline_p50_ms": round(statistics.median(base) * 1e3, 2) if base else None,
                    "slow_closed_early": len(shed)}

        out = asyncio.run(main())
        out["tracebacks"] = rig.tracebacks()
        return out
    finally:
        rig.stop()


def idle(n: int = 10_000, payload: int = 1024) -> dict[str, Any]:
    _raise_nofile()
    rig = Rig(Path(tempfile.mkdtemp(prefix="tpemu-idle-")))
    rig.start()
    try:
        async def main() -> dict[str, Any]:
            rss0, fds0 = rig.rss_kb(), rig.fds()
            conns = []
            sem = asyncio.Semaphore(200)

            async def open_one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
                async with sem:
                    r, w = await asyncio.open_connection("127.0.0.1", rig.port)
                    w.write(BANNER)
                    await asyncio.wait_for(r.readexactly(len(BANNER)), 30)
                    return r, w

            t0 = time.monotonic()
            conns = await asyncio.gather(*(open_one() for _ in range(n)))
            opened = time.monotonic() - t0
            await asyncio.sleep(2)
            rss1, fds1 = rig.rss_kb(), rig.fds()
            bad = 0

            async def traffic(rw: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
                nonlocal bad
                async with sem:
                    data = random.randbytes(payload)
                    rw[1].write(data)
                    back = await asyncio.wait_for(rw[0].readexactly(payload), 30)
                    if hashlib.sha256(back).digest() != hashlib.sha256(data).digest():
                        bad += 1

            await asyncio.gather(*(traffic(c) for c in conns))
            for _, w in conns:
                w.close()
            # Polled, not slept: closing 2 x n descriptors takes the proxy a moment under load.
            t_close = time.monotonic()
            while rig.fds() > fds0 and time.monotonic() - t_close < 60:
                await asyncio.sleep(0.25)
            closed_in = time.monotonic() - t_close
            return {"connections": n, "open_seconds": round(opened, 1), "rss_before_kb": rss0,
                    "rss_held_kb": rss1, "kb_per_connection": round((rss1 - rss0) / n, 2),
                    "fds_before": fds0, "fds_held": fds1, "fds_after_close": rig.fds(),
                    "seconds_to_release_fds": round(closed_in, 1), "checksum_mismatches": bad,
                    "rss_after_close_kb": rig.rss_kb()}

        out = asyncio.run(main())
        out["tracebacks"] = rig.tracebacks()
        return out
    finally:
        rig.stop()


def integrity(streams: int = 50, mib: int = 20, parallel: int = 10) -> dict[str, Any]:
    rig = Rig(Path(tempfile.mkdtemp(prefix="tpemu-integrity-")))
    rig.start()
    size = mib << 20
    try:
        async def one(seed: int) -> tuple[bool, int]:
            r, w = await asyncio.open_connection("127.0.0.1", rig.port, limit=1 << 20)
            w.write(BANNER)
            await r.readexactly(len(BANNER))
            rng = random.Random(seed)
            sent = hashlib.sha256()
            got = hashlib.sha256()

            async def writer() -> None:
                left = size
                while left:
                    chunk = rng.randbytes(min(left, 1 << 18))
                    sent.update(chunk)
                    w.write(chunk)
                    await w.drain()
                    left -= len(chunk)
                w.write_eof()

            async def reader() -> int:
                n = 0
                while chunk := await r.read(1 << 18):
                    got.update(chunk)
                    n += len(chunk)
                return n

            _, received = await asyncio.gather(writer(), reader())
            w.close()
            return sent.digest() == got.digest(), received

        async def main() -> dict[str, Any]:
            sem = asyncio.Semaphore(parallel)

            async def guarded(i: int) -> tuple[bool, int]:
                async with sem:
                    return await asyncio.wait_for(one(i), 300)

            t0 = time.monotonic()
            results = await asyncio.gather(*(guarded(i) for i in range(streams)))
            elapsed = time.monotonic() - t0
            ok = sum(1 for good, _ in results if good)
            received = sum(n for _, n in results)
            return {"streams": streams, "mib_each": mib, "parallel": parallel, "ok": ok,
                    "bytes_lost": streams * size - received, "seconds": round(elapsed, 1),
                    "throughput_mib_s_each_way": round(streams * mib / elapsed, 1)}

        out = asyncio.run(main())
        out["tracebacks"] = rig.tracebacks()
        return out
    finally:
        rig.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["slowloris", "idle", "integrity"])
    ap.add_argument("-n", type=int, default=0, help="slow clients / idle connections / streams")
    args = ap.parse_args(argv)
    if args.what == "slowloris":
        out = slowloris(args.n or 3000)
    elif args.what == "idle":
        out = idle(args.n or 10_000)
    else:
        out = integrity(args.n or 50)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
