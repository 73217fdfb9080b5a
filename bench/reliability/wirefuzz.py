"""Coverage-guided fuzzing of every ``tpemu.wire`` parser (atheris, i.e. libFuzzer, in process).

One target takes the fuzzer's bytes, uses the first byte to pick a parser and feeds it the rest.
The contract every parser states (STYLE.md rule 4): it returns a value, returns ``None`` (needs
more bytes) or raises :class:`~tpemu.wire.errors.WireError` — any other exception is a bug and
stops the run with the input saved by libFuzzer. Seeds are real captures (a ClientHello from
OpenSSL, PROXY headers, a Postgres startup, MySQL, Mongo, RESP, BSON, SSH, HTTP) so mutation starts
from the shapes clients really send.

``python -m bench.reliability.wirefuzz --runs 1000000`` (atheris required: ``pip install
'.[fuzz]'``); without atheris, ``--hypothesis`` runs the same target under hypothesis (random, not
coverage-guided — said in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tpemu import testing
from tpemu.wire import (
    bson,
    hello_detail,
    http,
    mongo,
    mysql,
    ping,
    postgres,
    proxy_protocol,
    resp,
    scram,
    sniff,
    ssh,
    tls,
    tunnel,
    websocket,
)
from tpemu.wire.errors import WireError


def _mysql_all(b: bytes) -> object:
    mysql.parse_packet(b)
    for fn in (mysql.parse_handshake_v10, mysql.parse_handshake_response, mysql.parse_command):
        try:
            fn(b)
        except WireError:
            pass
    return None


def _pg_all(b: bytes) -> object:
    postgres.parse_startup(b)
    msg = postgres.parse_message(b)
    if msg is not None:
        postgres.decode_frontend(msg)
    return None


def _mongo(b: bytes) -> object:
    return mongo.parse_message(b)


def _ping(b: bytes) -> object:
    return ping.PingDecoder().feed(b)


def _scram(b: bytes) -> object:
    try:
        scram.parse_client_first(b)
    except WireError:
        pass
    return scram.parse_client_final(b)


def _split(b: bytes) -> tuple[bytes, bytes]:
    # The streaming decoders get the input in two writes, cut where its first byte says: a
    # frame split across reads is the case they exist for.
    cut = b[0] % (len(b) + 1) if b else 0
    return b[:cut], b[cut:]


def _websocket(b: bytes) -> object:
    decoder = websocket.FrameDecoder(require_mask=True)
    head, tail = _split(b)
    return decoder.feed(head) + decoder.feed(tail)


def _resp_stream(b: bytes) -> object:
    reader = resp.CommandReader()
    commands = []
    for part in _split(b):
        reader.feed(part)
        while (command := reader.next_command()) is not None:
            commands.append(command)
    return commands


#: Every parser, by the selector byte's value modulo their number.
PARSERS: list[tuple[str, Callable[[bytes], Any]]] = [
    ("tls.parse_client_hello", tls.parse_client_hello),
    ("proxy_protocol.parse_proxy_header", proxy_protocol.parse_proxy_header),
    ("sniff.sniff", sniff.sniff),
    ("http.parse_request_line", http.parse_request_line),
    ("ssh.parse_ssh_ident", ssh.parse_ssh_ident),
    ("postgres.*", _pg_all),
    ("mysql.*", _mysql_all),
    ("mongo.parse_message", _mongo),
    ("bson.decode_all", bson.decode_all),
    ("resp.parse_command", resp.parse_command),
    ("resp.parse_value", resp.parse_value),
    ("tunnel.decode_frame", tunnel.decode_frame),
    ("ping.PingDecoder.feed", _ping),
    ("scram.parse_client_*", _scram),
    ("websocket.FrameDecoder.feed", _websocket),
    ("tunnel.parse_dial_payload", tunnel.parse_dial_payload),
    ("resp.CommandReader", _resp_stream),
    ("hello_detail.describe", hello_detail.describe),
]

COUNTS = [0] * len(PARSERS)
CALLS = [0]
LAST_RUN = 0  # the atheris run's -runs: print the per-parser counts on that input


def per_parser() -> dict[str, int]:
    return {n: c for (n, _), c in zip(PARSERS, COUNTS, strict=True)}


def one_input(data: bytes) -> None:
    """The fuzz target: anything but a value, ``None`` or ``WireError`` propagates (a finding)."""
    CALLS[0] += 1
    if CALLS[0] == LAST_RUN:
        print("stat::per_parser: " + json.dumps(per_parser()), flush=True)
    if not data:
        return
    i = data[0] % len(PARSERS)
    COUNTS[i] += 1
    try:
        PARSERS[i][1](data[1:])
    except WireError:
        pass


def seeds() -> list[bytes]:
    """Real captures, one per parser (selector byte first)."""
    hello = testing.client_hello("db.example", ["teleport-postgres", "teleport-mysql-OC4wLjEy"])
    pp1 = proxy_protocol.encode_v1(("192.0.2.1", 1234), ("127.0.0.1", 3080))
    pp2 = proxy_protocol.encode_v2(("2001:db8::1", 1234), ("2001:db8::2", 3080), ((0x01, b"h2"),))
    startup = postgres.encode_startup({"user": "alice", "database": "app"})
    return [bytes([0]) + hello, bytes([1]) + pp1, bytes([1]) + pp2, bytes([2]) + hello,
            bytes([3]) + b"GET /webapi/ping HTTP/1.1\r\n", bytes([4]) + b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n",
            bytes([5]) + startup, bytes([5]) + b"Q\x00\x00\x00\x0dselect 1\x00",
            bytes([6]) + mysql.encode_packet(1, b"\x85\xa6\xff\x01\x00\x00\x00\x01\x21" + b"\x00" * 23 + b"root\x00"),
            bytes([7]) + mongo.encode_op_msg(1, 0, {"ping": 1, "$db": "admin"}),
            bytes([8]) + bson.encode({"a": 1, "b": [1, "x", {"c": None}]}),
            bytes([9]) + b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", bytes([10]) + b"$5\r\nhello\r\n",
            bytes([11]) + b'\x00\x00\x00\x0b{"type":"x"}', bytes([12]) + ping.encode_frame(b"abc"),
            bytes([13]) + b"n,,n=alice,r=abcdefgh",
            bytes([14]) + b"\x07\x81\x85\x01\x02\x03\x04ignor",  # a masked text frame "hello"
            bytes([15]) + b'{"address":"node:3022","server_id":"n1.c","conn_type":"node"}',
            bytes([16]) + b"\x05*1\r\n$4\r\nPING\r\nPING\r\n", bytes([17]) + hello]


def run_atheris(runs: int, corpus: Path, max_len: int = 4096) -> dict[str, Any]:
    import atheris

    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds()):
        (corpus / f"seed{i}").write_bytes(seed)
    argv = [sys.argv[0], f"-runs={runs}", f"-max_len={max_len}", "-print_final_stats=1", str(corpus)]
    start = time.monotonic()
    # Coverage feedback from every tpemu.wire function and method (already imported: instrument
    # their code; the decoders' methods too, e.g. PingDecoder.feed).
    instrumented = 0
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("tpemu.wire"):
            for attr in list(vars(mod).values()):
                if getattr(attr, "__module__", "") != mod.__name__:
                    continue
                members = [attr] if isinstance(attr, types.FunctionType) else []
                if isinstance(attr, type):
                    members += [m for m in vars(attr).values() if isinstance(m, types.FunctionType)]
                for fn in members:
                    atheris.instrument_func(fn)  # patches fn.__code__ in place
                    instrumented += 1
    # libFuzzer ends the process itself (C exit, no Python atexit) after -runs: the per-parser
    # counts are printed by the target on its last input, in libFuzzer's stat:: form for run.py.
    global LAST_RUN
    LAST_RUN = runs
    print(f"stat::instrumented_functions: {instrumented}", flush=True)
    atheris.Setup(argv, one_input)
    try:
        atheris.Fuzz()
    except SystemExit:
        pass
    return {"engine": "atheris (libFuzzer, coverage-guided)", "runs": runs,
            "seconds": round(time.monotonic() - start, 1),
            "per_parser": per_parser()}


def run_hypothesis(runs: int) -> dict[str, Any]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    start = time.monotonic()

    @settings(max_examples=runs, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.binary(max_size=2048), st.sampled_from(seeds()).flatmap(
        lambda s: st.binary(max_size=64).map(lambda tail: s[: len(s) // 2] + tail))))
    def target(data: bytes) -> None:
        one_input(data)

    target()
    return {"engine": "hypothesis (random with seeds; not coverage-guided)", "runs": runs,
            "seconds": round(time.monotonic() - start, 1),
            "per_parser": per_parser()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--hypothesis", action="store_true", help="use hypothesis instead of atheris")
    ap.add_argument("--corpus", default="")
    args = ap.parse_args(argv)
    if args.hypothesis:
        result = run_hypothesis(args.runs)
    else:
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed (pip install '.[fuzz]'): falling back to hypothesis", file=sys.stderr)
            result = run_hypothesis(args.runs)
        else:
            corpus = Path(args.corpus or tempfile.mkdtemp(prefix="tpemu-wirefuzz-"))
            sys.argv = sys.argv[:1]
            result = run_atheris(args.runs, corpus)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
