"""tpemu.wire.resp: command reader, inline splitting, reply encoder and value parser.

Provenance: commands are packed by redis-py in the test and captured from redis-cli (a raw
listener records what it sends); inline lines are typed-by-hand telnet input in the format of
the protocol spec's "Inline commands"; replies for the value parser are captured from a real
redis-server 7.0 (RESP2 and RESP3) in the test. The encoder is checked against the same real
replies: encoding what we parsed must give redis-server's exact bytes.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import realservers
from tpemu.wire import resp
from tpemu.wire.errors import LimitExceeded, WireError
from tpemu.wire.resp import BigNumber, Error, Map, Push, Set, SimpleString, Verbatim

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def read_all(data: bytes, reader: resp.CommandReader | None = None) -> list[resp.Command]:
    reader = reader or resp.CommandReader()
    reader.feed(data)
    out = []
    while (cmd := reader.next_command()) is not None:
        out.append(cmd)
    return out


def commands_three_ways(data: bytes) -> list[resp.Command]:
    """Read ``data`` whole, one byte at a time and followed by a partial command: all agree."""
    whole = read_all(data)
    reader = resp.CommandReader()
    bytewise: list[resp.Command] = []
    for i in range(len(data)):
        bytewise += read_all(data[i:i + 1], reader)
    assert bytewise == whole
    assert reader.buffered == 0
    trailing = resp.CommandReader()
    assert read_all(data + b"*2\r\n$3\r\nGET", trailing) == whole
    assert trailing.buffered == len(b"*2\r\n$3\r\nGET")
    return whole


def test_redis_py_packed_commands() -> None:
    conn = redis.Connection()
    packed = b"".join(conn.pack_commands([
        ("PING",), ("SET", "key", b"v\r\nwith crlf\x00", "EX", 10), ("HSET", "h", "f", 1.5), ("GET", ""),
    ]))
    cmds = commands_three_ways(packed)
    assert [c.args for c in cmds] == [
        (b"PING",), (b"SET", b"key", b"v\r\nwith crlf\x00", b"EX", b"10"), (b"HSET", b"h", b"f", b"1.5"),
        (b"GET", b""),
    ]
    assert not any(c.inline for c in cmds)
    assert cmds[1].name == "set"
    assert resp.encode_command("SET", "key", b"v\r\nwith crlf\x00", "EX", 10) == \
        b"".join(conn.pack_command("SET", "key", b"v\r\nwith crlf\x00", "EX", 10))


@pytest.mark.e2e
@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed")
def test_redis_cli_sends_what_we_read() -> None:
    captured = bytearray()

    async def main() -> None:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                captured.extend(data)
                writer.write(b"+OK\r\n")
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            str(REDIS_CLI), "-p", str(port), "SET", "greeting", "hello world", b"\x01\xff",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        assert out.strip() == b"OK"
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    cmds = commands_three_ways(bytes(captured))
    assert [c.args for c in cmds] == [(b"SET", b"greeting", b"hello world", b"\x01\xff")]


@pytest.mark.parametrize(("line", "args"), [
    (b"PING\r\n", [b"PING"]),
    (b"set  key   value\n", [b"set", b"key", b"value"]),
    (b'SET k "hello world"\r\n', [b"SET", b"k", b"hello world"]),
    (b'SET k "a\\x41\\n\\t\\"q"\r\n', [b"SET", b"k", b"aA\n\t\"q"]),
    (b"SET k 'it\\'s'\r\n", [b"SET", b"k", b"it's"]),
    (b"ECHO ''\r\n", [b"ECHO", b""]),
])
def test_inline_commands(line: bytes, args: list[bytes]) -> None:
    cmds = commands_three_ways(line)
    assert [c.args for c in cmds] == [tuple(args)]
    assert cmds[0].inline


def test_empty_lines_and_empty_arrays_are_skipped() -> None:
    cmds = commands_three_ways(b"\r\n\n*0\r\n*-1\r\n   \r\nPING\r\n")
    assert [c.args for c in cmds] == [(b"PING",)]
    assert resp.parse_command(b"\r\n*0\r\nPING\r\nECHO") == (resp.Command((b"PING",), inline=True), 12)
    assert resp.parse_command(b"\r\n") is None


@pytest.mark.parametrize(("data", "message"), [
    (b"*2\r\n+PING\r\n", "expected '$', got '+'"),
    (b"*x\r\n", "invalid multibulk length"),
    (b"*2\r\n$-3\r\n", "invalid bulk length"),
    (b"*1\r\n$abc\r\n", "invalid bulk length"),
    (b"*1\r\n$3\r\nGETxx", "not followed by CRLF"),
    (b'SET k "unterminated\r\n', "unbalanced quotes"),
    (b'SET k "a"b\r\n', "unbalanced quotes"),
    (b"*2000000\r\n", "invalid multibulk length"),
    (b"*" + b"1" * (resp.MAX_INLINE + 5), "too big mbulk count string"),
    (b"A" * (resp.MAX_INLINE + 5), "too big inline request"),
    (b"A" * (resp.MAX_INLINE + 5) + b"\n", "too big inline request"),
])
def test_protocol_errors(data: bytes, message: str) -> None:
    with pytest.raises(resp.RESPError, match=re.escape(message)):
        read_all(data)


def test_size_limits() -> None:
    reader = resp.CommandReader(max_bulk=10, max_command=30)
    with pytest.raises(LimitExceeded, match="bulk string"):
        read_all(b"*1\r\n$11\r\n", reader)
    reader = resp.CommandReader(max_bulk=10, max_command=30)
    with pytest.raises(LimitExceeded, match="command"):
        read_all(b"*4\r\n$10\r\n0123456789\r\n$10\r\n0123456789\r\n$10\r\n", reader)
    assert [c.args for c in read_all(resp.encode_command("SET", "k", b"x" * 10), resp.CommandReader(max_bulk=10))] \
        == [(b"SET", b"k", b"x" * 10)]


def test_a_large_bulk_split_in_chunks_is_read_once() -> None:
    payload = os.urandom(3 * 1024 * 1024)
    data = resp.encode_command("SET", "blob", payload)
    reader = resp.CommandReader()
    got: list[resp.Command] = []
    for i in range(0, len(data), 4096):
        got += read_all(data[i:i + 4096], reader)
    assert [c.args for c in got] == [(b"SET", b"blob", payload)]


# --------------------------------------------------------------------------- replies

def test_encoder_resp2_and_resp3() -> None:
    value = {"server": "redis", "proto": 3, "modules": [], "ok": True, "pi": 1.5, "none": None}
    assert resp.encode(value, 3) == (
        b"%6\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n$7\r\nmodules\r\n*0\r\n"
        b"$2\r\nok\r\n#t\r\n$2\r\npi\r\n,1.5\r\n$4\r\nnone\r\n_\r\n")
    assert resp.encode(value, 2) == (
        b"*12\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n$7\r\nmodules\r\n*0\r\n"
        b"$2\r\nok\r\n:1\r\n$2\r\npi\r\n$3\r\n1.5\r\n$4\r\nnone\r\n$-1\r\n")
    assert resp.encode(Verbatim("txt", "a\r\nb"), 3) == b"=8\r\ntxt:a\r\nb\r\n"
    assert resp.encode(Verbatim("txt", "a\r\nb"), 2) == b"$4\r\na\r\nb\r\n"
    assert resp.encode({SimpleString("x")}, 3) == b"~1\r\n+x\r\n"
    assert resp.encode(resp.NULL_ARRAY, 2) == b"*-1\r\n" and resp.encode(resp.NULL_ARRAY, 3) == b"_\r\n"
    assert resp.encode(Error("ERR bad\r\nline")) == b"-ERR bad  line\r\n"
    assert resp.encode(BigNumber(2**70), 3) == b"(1180591620717411303424\r\n"
    assert resp.encode(float("inf"), 3) == b",inf\r\n"
    with pytest.raises(TypeError):
        resp.encode(object())


def values_three_ways(raw: bytes) -> Any:
    value, used = resp.parse_value(raw) or (None, -1)
    assert used == len(raw)
    for i in range(len(raw)):
        assert resp.parse_value(raw[:i]) is None
    assert resp.parse_value(raw + b"+trailing\r\n") == (value, len(raw))
    return value


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real redis-server on a unix socket (no TCP port to race for)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    with realservers.redis_unix(tmp_path_factory.mktemp("redis")) as sock:
        yield sock


def raw_replies(sock_path: Path, commands: list[tuple[str | bytes, ...]]) -> list[bytes]:
    """Send each command to the real server and return each reply's exact bytes."""
    out = []
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock_path))
        buf = b""
        for cmd in commands:
            s.sendall(resp.encode_command(*cmd))
            while (parsed := resp.parse_value(buf)) is None:
                buf += s.recv(65536)
            out.append(buf[:parsed[1]])
            buf = buf[parsed[1]:]
    return out


REAL_COMMANDS: list[tuple[str | bytes, ...]] = [
    ("PING",), ("SET", "k", "v"), ("GET", "k"), ("GET", "missing"), ("INCR", "n"), ("GET", "k", "extra"),
    ("HSET", "h", "f1", "1", "f2", "2"), ("HGETALL", "h"), ("LPOP", "nolist", "2"), ("SADD", "s", "a"),
    ("SMEMBERS", "s"), ("ZADD", "z", "1.5", "m"), ("ZSCORE", "z", "m"), ("EXISTS", "k", "h"),
    ("INFO", "keyspace"), ("COMMAND", "DOCS", "get"), ("COMMAND", "INFO", "get"), ("HELLO",), ("SUBSCRIBE", "ch"),
]


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", [2, 3])
def test_real_redis_replies_parse_and_reencode(real_redis: Path, protocol: int) -> None:
    replies = raw_replies(real_redis, [("HELLO", str(protocol)), ("FLUSHALL",), *REAL_COMMANDS])
    values = [values_three_ways(raw) for raw in replies]
    hello = values[0]
    if protocol == 3:
        assert isinstance(hello, Map) and dict(hello.items)[b"proto"] == 3
        assert isinstance(values[2 + REAL_COMMANDS.index(("HGETALL", "h"))], Map)
        assert isinstance(values[2 + REAL_COMMANDS.index(("SMEMBERS", "s"))], Set)
        assert values[2 + REAL_COMMANDS.index(("ZSCORE", "z", "m"))] == 1.5
        assert isinstance(values[2 + REAL_COMMANDS.index(("INFO", "keyspace"))], Verbatim)
        assert isinstance(values[-1], Push)
    else:
        assert isinstance(hello, list) and hello[hello.index(b"proto") + 1] == 2
        assert values[2 + REAL_COMMANDS.index(("LPOP", "nolist", "2"))] is resp.NULL_ARRAY
    assert values[2] == SimpleString("PONG")
    assert isinstance(values[2 + REAL_COMMANDS.index(("GET", "k", "extra"))], Error)
    for raw, value in zip(replies, values):
        assert resp.encode(value, protocol) == raw


def test_null_array_round_trip_in_resp2() -> None:
    assert resp.parse_value(b"*-1\r\n") == (resp.NULL_ARRAY, 5)
    assert resp.parse_value(b"$-1\r\n") == (None, 5)


@pytest.mark.parametrize(("data", "message"), [
    (b"?x\r\n", "unknown RESP type"),
    (b":12a\r\n", "invalid RESP integer"),
    (b"$-2\r\n", "length -2"),
    (b"$3\r\nabcd\r\n", "not followed by CRLF"),
    (b"#x\r\n", "boolean"),
    (b",abc\r\n", "double"),
    (b"_x\r\n", "null has a payload"),
    (b"=3\r\nabc\r\n", "format prefix"),
    (b"%-1\r\n", "map length -1"),
    (b"*-5\r\n", "length -5"),
    (b"~-1\r\n", "length -1"),
])
def test_malformed_replies(data: bytes, message: str) -> None:
    with pytest.raises(resp.RESPError, match=message):
        resp.parse_value(data)


def test_non_utf8_status_and_error_lines_round_trip() -> None:
    raw = b"-ERR unknown command 'x', with args beginning with: '\xff' \r\n"
    value = values_three_ways(raw)
    assert isinstance(value, Error) and resp.encode(value) == raw


def test_reply_limits() -> None:
    with pytest.raises(LimitExceeded, match="nesting"):
        resp.parse_value(b"*1\r\n" * (resp.MAX_DEPTH + 2) + b":1\r\n")
    with pytest.raises(LimitExceeded):
        resp.parse_value(b"$100\r\n", max_bulk=10)
    with pytest.raises(LimitExceeded):
        resp.parse_value(b"*100\r\n", max_elements=10)


# --------------------------------------------------------------------------- hypothesis

@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_command_reader_fuzz(data: bytes) -> None:
    reader = resp.CommandReader(max_bulk=1000, max_command=2000, max_args=100, max_inline=100)
    reader.feed(data)
    try:
        while (cmd := reader.next_command()) is not None:
            assert all(isinstance(a, bytes) for a in cmd.args)
    except WireError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_value_parser_fuzz(data: bytes) -> None:
    try:
        result = resp.parse_value(data, max_bulk=1000, max_elements=100)
    except WireError:
        return
    if result is not None:
        assert 0 < result[1] <= len(data)


arg_lists = st.lists(st.binary(max_size=30), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(arg_lists, min_size=1, max_size=5), st.integers(1, 7))
def test_commands_survive_any_chunking(commands: list[list[bytes]], chunk: int) -> None:
    data = b"".join(resp.encode_command(*args) for args in commands)
    reader = resp.CommandReader()
    got: list[resp.Command] = []
    for i in range(0, len(data), chunk):
        got += read_all(data[i:i + chunk], reader)
    assert [list(c.args) for c in got] == commands


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.binary(max_size=20),
                              st.builds(SimpleString, st.text(alphabet="abc XYZ", max_size=10))),
                    lambda inner: st.lists(inner, max_size=4), max_leaves=12),
       st.sampled_from([2, 3]))
def test_encode_then_parse(value: Any, protocol: int) -> None:
    raw = resp.encode(value, protocol)
    assert resp.parse_value(raw) == (value, len(raw))
