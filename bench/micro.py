"""Micro benchmarks of the hot routing path, no sockets: sniff, ClientHello parse, PROXY v2 parse,
route decision, and the whole decision (:func:`tpemu.proxy.decide.classify`).

Inputs are real: ClientHellos from OpenSSL via Python's ``ssl`` with SNI and ALPN (a fresh one
for each of 64 "connections", so randoms, session ids and key shares differ as on the wire), a
~1.8 KB post-quantum-sized hello split over two records, a PROXY v2 header with TLVs.

The machine is shared and noisy, so every figure is the best of several repeats and is also
reported as a ratio to a baseline measured in the same run: :func:`naive_parse`, the
straightforward pure-Python ClientHello parser one writes first (walk every extension, decode
SNI and ALPN), which this project measured at ~2.4 µs per 517-byte hello on this machine when it
was quiet. "cold" figures clear tpemu's parse cache before every call: what a client whose
hellos never repeat (a browser that permutes its extensions) costs.
"""

from __future__ import annotations

import gc
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from tpemu import testing
from tpemu.proxy.decide import ListenerKind, ListenerPolicy, classify
from tpemu.proxy.route import RouteTable
from tpemu.wire import proxy_protocol, sniff, tls
from tpemu.wire.sniff import Protocol

_HH = struct.Struct(">HH").unpack_from


def naive_parse(data: bytes) -> tuple[str | None, list[str]]:
    """Baseline: the plain ClientHello parse (single record), SNI and ALPN decoded."""
    body = data[9:9 + int.from_bytes(data[6:9], "big")]
    p = 34
    p += 1 + body[p]
    p += 2 + int.from_bytes(body[p:p + 2], "big")
    p += 1 + body[p]
    end = p + 2 + int.from_bytes(body[p:p + 2], "big")
    p += 2
    sni = None
    alpn: list[str] = []
    while p < end:
        etype, elen = _HH(body, p)
        data_ = body[p + 4:p + 4 + elen]
        if etype == 0:
            sni = data_[5:].decode("ascii").lower()
        elif etype == 16:
            q = 2
            while q < len(data_):
                n = data_[q]
                alpn.append(data_[q + 1:q + 1 + n].decode())
                q += 1 + n
        p += 4 + elen
    return sni, alpn


def _time_per_op(fn: Callable[[], Any], inputs: int, seconds: float, repeats: int) -> float:
    """Best nanoseconds per call over ``repeats`` runs of about ``seconds`` each."""
    n = 1
    while True:  # calibrate
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt > seconds / 10 or n > 1 << 24:
            break
        n *= 4
    loops = max(inputs, int(n * seconds / 10 / max(dt, 1e-9)))
    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(loops):
                fn()
            best = min(best, (time.perf_counter() - t0) / loops)
    finally:
        gc.enable()
    return best * 1e9


def _cycle(items: Sequence[bytes], call: Callable[[bytes], Any]) -> Callable[[], Any]:
    it = iter(())
    seq = list(items)

    def step() -> Any:
        nonlocal it
        try:
            return call(next(it))
        except StopIteration:
            it = iter(seq)
            return call(next(it))

    return step


def build_cases() -> list[tuple[str, Callable[[], Any], str]]:
    """``(name, zero-argument callable, what the input is)`` for every micro figure."""
    typical = [testing.client_hello("proxy.tpemu.test", ["teleport-proxy-ssh"]) for _ in range(64)]
    tls12 = [testing.client_hello("db.tpemu.test", ["teleport-postgres"],
                                  max_version=testing.ssl.TLSVersion.TLSv1_2) for _ in range(64)]
    large = [testing.large_client_hello("pq.tpemu.test", ["teleport-postgres"], target_size=1800, records=2)
             for _ in range(64)]
    v2 = proxy_protocol.encode_v2(("192.0.2.10", 51000), ("198.51.100.1", 443),
                                  ((proxy_protocol.PP2_TYPE_ALPN, b"h2"), (proxy_protocol.PP2_TYPE_AUTHORITY,
                                                                          b"proxy.tpemu.test")))
    table = RouteTable()
    policy = ListenerPolicy(ListenerKind.WEB, frozenset({Protocol.TLS, Protocol.SSH, Protocol.HTTP,
                                                         Protocol.POSTGRES}))
    hello = tls.parse_client_hello(typical[0])
    assert hello is not None

    def cold(data: bytes) -> Any:
        tls._layouts.clear()
        return tls.parse_client_hello(data)

    cases: list[tuple[str, Callable[[], Any], str]] = [
        ("naive_parse (baseline)", _cycle(typical, naive_parse), f"{len(typical[0])}-byte TLS 1.3 hello"),
        ("sniff tls", lambda: sniff.sniff(typical[0]), "first bytes of a TLS record"),
        ("sniff ssh", lambda: sniff.sniff(b"SSH-2.0-OpenSSH_9.2p1\r\n"), "SSH identification line"),
        ("parse hello tls13", _cycle(typical, tls.parse_client_hello), f"{len(typical[0])} B, 64 distinct hellos"),
        ("parse hello tls12", _cycle(tls12, tls.parse_client_hello), f"{len(tls12[0])} B"),
        ("parse hello large 2 records", _cycle(large, tls.parse_client_hello), f"{len(large[0])} B, 2 records"),
        ("parse hello tls13 cold", _cycle(typical, cold), "cache cleared before each call"),
        ("parse hello large cold", _cycle(large, cold), "cache cleared before each call"),
        ("parse proxy v2", lambda: proxy_protocol.parse_proxy_header(v2), f"{len(v2)} B with 2 TLVs"),
        ("route decision", lambda: table.for_tls(hello), "RouteTable.for_tls on a parsed hello"),
        ("classify tls13 (sniff+parse+route)", _cycle(typical, lambda d: classify(d, policy, table)),
         "the whole decision the front door makes"),
        ("classify large (sniff+parse+route)", _cycle(large, lambda d: classify(d, policy, table)),
         "the whole decision, ~1.8 KB hello in 2 records"),
    ]
    return cases


#: The cases whose instruction counts are measured under valgrind (stable on a noisy machine).
INSTRUCTION_CASES = ("naive_parse (baseline)", "parse hello tls13", "parse hello tls13 cold",
                     "classify tls13 (sniff+parse+route)", "classify large (sniff+parse+route)")


def instructions_per_op(name: str, calls: int = 2000) -> float | None:
    """Instructions per call of case ``name`` counted by callgrind (two runs, the difference)."""
    import shutil
    import subprocess
    import sys

    if shutil.which("valgrind") is None:
        return None
    counts = []
    for n in (0, calls):
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m", "bench.micro",
             "--run-case", name, "--calls", str(n)], capture_output=True, text=True, timeout=600)
        found = [line for line in proc.stderr.splitlines() if "Collected :" in line]
        if proc.returncode != 0 or not found:
            return None
        counts.append(int(found[-1].split(":")[-1]))
    return (counts[1] - counts[0]) / calls


def run_micro(profile: str = "quick", log: Callable[[str], None] = print,
              instructions: bool = False) -> dict[str, Any]:
    """Every micro figure as ``{name: {"ns_per_op", "ops_per_s", "ratio_to_naive_parse"}}``;
    with ``instructions``, also callgrind's instructions per op for :data:`INSTRUCTION_CASES`."""
    seconds, repeats = (0.3, 5) if profile == "quick" else (1.0, 9)
    cases = build_cases()
    results: dict[str, Any] = {}
    for name, fn, what in cases:
        ns = _time_per_op(fn, 64, seconds, repeats)
        results[name] = {"ns_per_op": round(ns, 1), "ops_per_s": round(1e9 / ns), "input": what}
    base = results["naive_parse (baseline)"]["ns_per_op"]
    for r in results.values():
        r["ratio_to_naive_parse"] = round(r["ns_per_op"] / base, 3)
    for name, r in results.items():
        log(f"  {name:<38} {r['ns_per_op']:>9.0f} ns/op {r['ops_per_s']:>11,} ops/s "
            f"{r['ratio_to_naive_parse']:>6.2f}× naive   ({r['input']})")
    if instructions:
        counts = {name: instructions_per_op(name) for name in INSTRUCTION_CASES}
        base_ir = counts.get("naive_parse (baseline)")
        for name, ir in counts.items():
            if ir is None:
                continue
            results[name]["instructions_per_op"] = round(ir)
            if base_ir:
                results[name]["instructions_ratio_to_naive_parse"] = round(ir / base_ir, 3)
            log(f"  {name:<38} {ir:>9.0f} instructions/op (callgrind)"
                + (f" {ir / base_ir:>6.2f}× naive" if base_ir else ""))
    return results


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", choices=("quick", "full"), default="quick")
    ap.add_argument("--instructions", action="store_true", help="also count instructions with callgrind")
    ap.add_argument("--run-case", help=argparse.SUPPRESS)
    ap.add_argument("--calls", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_case:  # the body of one callgrind run
        fn = {name: f for name, f, _ in build_cases()}[args.run_case]
        for _ in range(args.calls):
            fn()
    else:
        run_micro(args.profile, instructions=args.instructions)
