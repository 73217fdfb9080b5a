"""The emulated Redis server, driven by redis-cli, redis-py (RESP2/RESP3) and raw sockets, and
compared byte for byte with a real redis-server 7.0 where Redis's replies are deterministic."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError

from tests import realservers
from tpemu.agent.backends.base import Session, serve_tcp
from tpemu.agent.backends.redis import RedisBackend
from tpemu.agent.backends.redis_commands import _COMMANDS, Client, glob_regex, parse_int
from tpemu.wire import resp

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
needs_cli = pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed")


class Servers:
    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.closers: list[Any] = []

    async def start(self, backend: RedisBackend, ssl_context: ssl.SSLContext | None = None,
                    session: Session | None = None) -> int:
        server = await serve_tcp(backend, ssl_context=ssl_context, session=session)
        self.servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    def redis(self, port: int, **kwargs: Any) -> aioredis.Redis:
        # No retries: redis-py retries failed connections (AuthenticationError included) with backoff.
        client = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0), **kwargs)
        self.closers.append(client)
        return client

    async def close(self) -> None:
        for client in self.closers:
            await client.aclose()
        for server in self.servers:
            server.close()
            await server.wait_closed()
        await asyncio.sleep(0.05)


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    s = Servers()
    try:
        yield s
    finally:
        await s.close()


async def cli(*args: str | bytes, stdin: bytes | None = None) -> tuple[int, str, str]:
    assert REDIS_CLI is not None
    proc = await asyncio.create_subprocess_exec(REDIS_CLI, *args, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 10)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   commands: list[tuple[str | bytes, ...]]) -> list[bytes]:
    """Send commands one at a time; return each reply's exact bytes."""
    out = []
    buf = b""
    for cmd in commands:
        writer.write(resp.encode_command(*cmd))
        while (parsed := resp.parse_value(buf)) is None:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk, f"connection closed after {cmd!r}"
            buf += chunk
        out.append(buf[:parsed[1]])
        buf = buf[parsed[1]:]
    return out


# =========================================================================== differential vs redis-server


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real redis-server on a unix socket (no TCP port to race for)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    with realservers.redis_unix(tmp_path_factory.mktemp("redis")) as sock:
        yield sock


DIFFERENTIAL: list[tuple[str | bytes, ...]] = [
    # strings
    ("SET", "a", "1"), ("GET", "a"), ("INCR", "a"), ("INCRBY", "a", "10"), ("DECR", "a"), ("DECRBY", "a", "3"),
    ("INCRBY", "a", "x"), ("SET", "s", "abc"), ("INCR", "s"), ("APPEND", "s", "def"), ("STRLEN", "s"),
    ("STRLEN", "nokey"), ("GETDEL", "s"), ("GET", "s"), ("SET", "big", "9223372036854775807"), ("INCR", "big"),
    ("SET", "x", "1", "NX"), ("SET", "x", "2", "NX"), ("SET", "x", "3", "XX"), ("SET", "y", "1", "XX"),
    ("SET", "x", "4", "GET"), ("SET", "x", "5", "EX", "100"), ("TTL", "x"), ("PERSIST", "x"), ("TTL", "x"),
    ("PERSIST", "x"), ("TTL", "nokey"), ("PTTL", "nokey"), ("SET", "x", "6", "PX", "0"), ("SET", "x", "6", "EX", "a"),
    ("SET", "x", "6", "NX", "XX"), ("SET", "x", "6", "KEEPTTL", "EX", "5"), ("SET", "x", "7", "EX", "100"),
    ("SET", "x", "8", "KEEPTTL"), ("TTL", "x"), ("SET", "x"), ("GET", "x", "y"),
    ("SETEX", "e", "100", "v"), ("TTL", "e"), ("SETEX", "e", "0", "v"), ("PSETEX", "e", "-5", "v"), ("SETNX", "e", "w"),
    ("SETNX", "new", "w"), ("GETSET", "e", "z"), ("GET", "e"), ("MSET", "m1", "1", "m2", "2"),
    ("MGET", "m1", "m2", "nokey", "e"), ("MSET", "m1", "1", "m2"),
    # expiry
    ("EXPIRE", "m1", "100"), ("EXPIRE", "m1", "50", "GT"), ("EXPIRE", "m1", "200", "GT"), ("TTL", "m1"),
    ("EXPIRE", "m1", "10", "NX"), ("EXPIRE", "m1", "10", "XX"), ("TTL", "m1"), ("EXPIRE", "m2", "10", "LT"),
    ("TTL", "m2"), ("PEXPIRE", "nokey", "100"), ("EXPIRE", "m1", "1", "NX", "XX"), ("EXPIRE", "m1", "1", "GT", "LT"),
    ("EXPIRE", "m1", "1", "FOO"), ("EXPIRE", "m1", "abc"), ("EXPIRE", "m1", "-1"), ("EXISTS", "m1"),
    # keys
    ("DEL", "m2", "nokey"), ("EXISTS", "a", "a", "nokey"), ("TYPE", "a"), ("TYPE", "nokey"), ("RENAME", "a", "b"),
    ("RENAME", "nokey", "z"), ("GET", "b"), ("RENAME", "b", "b"), ("UNLINK", "b", "e"),
    # hashes
    ("HSET", "h", "f1", "v1", "f2", "v2"), ("HSET", "h", "f1", "x"), ("HGET", "h", "f1"), ("HGET", "h", "nof"),
    ("HGET", "nokey", "f"), ("HMGET", "h", "f1", "nof", "f2"), ("HLEN", "h"), ("HEXISTS", "h", "f2"),
    ("HEXISTS", "h", "zz"), ("HDEL", "h", "f2", "nof"), ("HKEYS", "h"), ("HVALS", "h"), ("HINCRBY", "h", "n", "5"),
    ("HINCRBY", "h", "n", "-7"), ("HINCRBY", "h", "f1", "1"), ("HINCRBY", "h", "n", "x"), ("HGETALL", "h"),
    ("HGETALL", "nokey"), ("HSET", "h", "odd"), ("HSETNX", "h", "f1", "y"), ("HSETNX", "h", "g", "y"),
    ("HMSET", "h", "a", "1", "b", "2"), ("HMSET", "h", "a"), ("HDEL", "h", "f1", "n", "g", "a", "b"), ("EXISTS", "h"),
    ("HSET", "h", "k", "v"), ("TYPE", "h"),
    # wrong types
    ("GET", "h"), ("LPUSH", "h", "x"), ("HGET", "new", "f"), ("INCR", "h"), ("APPEND", "h", "x"), ("SET", "h", "s"),
    ("TYPE", "h"),
    # lists
    ("LPUSH", "l", "a", "b", "c"), ("RPUSH", "l", "d", "e"), ("LRANGE", "l", "0", "-1"), ("LRANGE", "l", "-2", "-1"),
    ("LRANGE", "l", "5", "10"), ("LRANGE", "l", "1", "-10"), ("LRANGE", "l", "-100", "100"), ("LRANGE", "l", "a", "1"),
    ("LLEN", "l"), ("LLEN", "nokey"), ("LINDEX", "l", "0"), ("LINDEX", "l", "-1"), ("LINDEX", "l", "99"),
    ("LINDEX", "l", "x"), ("TYPE", "l"), ("LPOP", "l"), ("RPOP", "l"), ("LPOP", "l", "2"), ("RPOP", "l", "0"),
    ("RPOP", "l", "10"), ("LPOP", "l"), ("LPOP", "nokey", "2"), ("LPOP", "nokey"), ("LPOP", "l", "-1"),
    ("LPOP", "l", "1", "2"), ("EXISTS", "l"), ("HGET", "l", "x"),
    # transactions
    ("MULTI",), ("SET", "t", "1"), ("INCR", "t"), ("HGET", "t", "f"), ("GET", "t"), ("EXEC",), ("EXEC",),
    ("DISCARD",), ("MULTI",), ("MULTI",), ("SET", "t", "2"), ("DISCARD",), ("GET", "t"), ("MULTI",), ("SET", "t"),
    ("SET", "t", "3"), ("EXEC",), ("MULTI",), ("GET",), ("EXEC",), ("GET", "t"),
    # connection and server
    ("PING",), ("PING", "hi"), ("PING", "a", "b"), ("ECHO", "x"), ("ECHO",), ("SELECT", "0"), ("SELECT", "x"),
    ("DBSIZE",), ("CLIENT", "SETNAME", "bad name"), ("CLIENT", "SETNAME", "good"), ("CLIENT", "GETNAME"),
    ("CLIENT", "SETNAME"), ("CLIENT", "GETNAME", "x"), ("get",), ("Get", "a"), ("COMMAND", "INFO", "nosuchcommand"),
    ("COMMAND", "DOCS", "nosuchcommand"), ("FLUSHDB", "now"), ("FLUSHDB",), ("DBSIZE",), ("KEYS", "*"),
    ("SCAN", "0"), ("SCAN", "x"),
]


@pytest.mark.e2e
async def test_replies_match_real_redis_byte_for_byte(servers: Servers, real_redis: Path) -> None:
    port = await servers.start(RedisBackend())
    for protocol in ("2", "3"):
        real = await asyncio.open_unix_connection(str(real_redis))
        ours = await asyncio.open_connection("127.0.0.1", port)
        try:
            commands: list[tuple[str | bytes, ...]] = [("HELLO", protocol), ("FLUSHALL",), *DIFFERENTIAL]
            expected = (await exchange(*real, commands))[1:]
            got = (await exchange(*ours, commands))[1:]
        finally:
            real[1].close()
            ours[1].close()
        mismatches = [(cmd, e, g) for cmd, e, g in zip(commands[1:], expected, got) if e != g]
        assert mismatches == [], f"RESP{protocol}: (command, redis-server, emulator)"


@pytest.mark.e2e
async def test_unknown_commands_match_real_redis_plus_the_note(servers: Servers, real_redis: Path) -> None:
    port = await servers.start(RedisBackend())
    commands: list[tuple[str | bytes, ...]] = [
        ("FROB",), ("FROB", "a", "b"), ("FROB", "x" * 200, "y"), ("frob", "\r\n", b"\xff"),
        ("CLIENT", "KILL", "x"), ("COMMAND", "GETKEYS", "GET", "a"),
    ]
    real = await asyncio.open_unix_connection(str(real_redis))
    ours = await asyncio.open_connection("127.0.0.1", port)
    try:
        expected = await exchange(*real, commands)
        got = await exchange(*ours, [*commands, ("XADD", "s", "*", "f", "v"), ("PING",)])
    finally:
        real[1].close()
        ours[1].close()
    assert got[-1] == b"+PONG\r\n"  # the connection stays usable
    # A real Redis command outside the emulated subset gets Redis's unknown-command error.
    assert got[-2] == b"-ERR unknown command 'XADD', with args beginning with: 's' '*' 'f' 'v' " \
                      b"(not supported by the tpemu emulator)\r\n"
    for cmd, e, g in zip(commands, expected, got):
        if cmd[0] in ("CLIENT", "COMMAND"):
            # Redis supports these subcommands; the emulator answers as Redis does for unknown ones.
            assert g.startswith(b"-ERR unknown subcommand '") and b"not supported by the tpemu emulator" in g
            continue
        assert g == e.rstrip(b"\r\n") + b"(not supported by the tpemu emulator)\r\n", cmd


async def test_unknown_command_inside_multi_aborts_exec(servers: Servers) -> None:
    port = await servers.start(RedisBackend())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        replies = await exchange(reader, writer, [("MULTI",), ("SET", "k", "v"), ("XADD", "s", "*"), ("EXEC",),
                                                  ("EXISTS", "k")])
    finally:
        writer.close()
    assert replies[1] == b"+QUEUED\r\n" and replies[2].startswith(b"-ERR unknown command 'XADD'")
    assert replies[3:] == [b"-EXECABORT Transaction discarded because of previous errors.\r\n", b":0\r\n"]


@pytest.mark.e2e
async def test_glob_patterns_match_real_redis(servers: Servers, real_redis: Path) -> None:
    port = await servers.start(RedisBackend())
    keys = ["hello", "hallo", "hxllo", "hllo", "heeeello", "a*b", "a[b", "x?y", "h\\ello", "Hello", "h]llo", "h-llo",
            "", "\n", "ab"]
    patterns = ["h?llo", "h*llo", "h[ae]llo", "h[^e]llo", "h[a-e]llo", "h[e-a]llo", "a\\*b", "*", "x\\?y", "a[b",
                "[", "h[]]llo", "h[\\]]llo", "h[-]llo", "*l*", "?", "a[*]b", "a\\", "[^a]*", "h[!e]llo", "\\h*"]
    real = await asyncio.open_unix_connection(str(real_redis))
    ours = await asyncio.open_connection("127.0.0.1", port)
    try:
        setup: list[tuple[str | bytes, ...]] = [("FLUSHALL",), *[("SET", k, "1") for k in keys]]
        await exchange(*real, setup)
        await exchange(*ours, setup)
        for pattern in patterns:
            e = resp.parse_value((await exchange(*real, [("KEYS", pattern)]))[0])
            g = resp.parse_value((await exchange(*ours, [("KEYS", pattern)]))[0])
            assert e is not None and g is not None
            assert sorted(g[0]) == sorted(e[0]), pattern
        await exchange(*real, [("FLUSHALL",)])
    finally:
        real[1].close()
        ours[1].close()


# =========================================================================== redis-cli


@pytest.mark.e2e
@needs_cli
async def test_redis_cli_resp2_resp3_and_auth(servers: Servers) -> None:
    port = str(await servers.start(RedisBackend(users={"default": "pw", "bob": "bobpw"})))
    assert (await cli("-p", port, "-a", "pw", "--no-auth-warning", "SET", "k", "hello world"))[1] == "OK\n"
    assert (await cli("-p", port, "-a", "pw", "--no-auth-warning", "GET", "k"))[1] == "hello world\n"
    _, out, err = await cli("-p", port, "--user", "bob", "--pass", "bobpw", "--no-auth-warning", "HSET", "h", "f", "v")
    assert out == "1\n", err
    _, out, _ = await cli("-3", "-p", port, "--user", "bob", "--pass", "bobpw", "--no-auth-warning", "HGETALL", "h")
    assert out == "f v\n"  # redis-cli prints a RESP3 map entry per line
    _, out, _ = await cli("-3", "-p", port, "-a", "pw", "--no-auth-warning", "HELLO", "3")
    assert "proto 3\n" in out and "version 7.0.15\n" in out
    _, out, err = await cli("-p", port, "-a", "nope", "--no-auth-warning", "GET", "k")
    assert "WRONGPASS invalid username-password pair or user is disabled." in out + err
    _, out, _ = await cli("-p", port, "GET", "k")
    assert out.startswith("NOAUTH Authentication required.")
    _, out, _ = await cli("-p", port, "-a", "pw", "--no-auth-warning", "FROB", "x")
    # (redis-cli ends an error with two newlines, with a real redis-server as well)
    assert out == "ERR unknown command 'FROB', with args beginning with: 'x' (not supported by the tpemu emulator)\n\n"
    # Commands piped on stdin: one connection, answered in order.
    _, out, _ = await cli("-p", port, "-a", "pw", "--no-auth-warning",
                          stdin=b"SET n 41\nINCR n\nNOSUCH\nGET n\nINFO keyspace\n")
    lines = [line for line in out.splitlines() if line]
    assert lines[:2] == ["OK", "42"] and lines[2].startswith("ERR unknown command 'NOSUCH'")
    assert lines[3] == "42" and "db0:keys=3,expires=0,avg_ttl=0" in out


@pytest.mark.e2e
@needs_cli
async def test_redis_cli_over_tls(servers: Servers, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    port = str(await servers.start(RedisBackend(), ssl_context=ctx))
    rc, out, err = await cli("--tls", "--cacert", str(ca_file), "-p", port, "PING")
    assert (rc, out) == (0, "PONG\n"), err
    rc, out, err = await cli("--tls", "--cacert", str(ca_file), "-3", "-p", port, "SET", "k", "v", "GET")
    assert (rc, out) == (0, "\n"), err  # RESP3 null: the key had no old value
    rc, out, err = await cli("--tls", "--cacert", str(ca_file), "-3", "-p", port, "SET", "k", "w", "GET")
    assert (rc, out) == (0, "v\n"), err
    rc, out, err = await cli("-p", port, "PING")  # plain text to a TLS port: no PONG
    assert "PONG" not in out


@pytest.mark.e2e
@needs_cli
async def test_interactive_redis_cli_uses_command_docs(servers: Servers) -> None:
    """redis-cli 7 in a terminal asks COMMAND DOCS at start for its hints and HELP."""
    port = str(await servers.start(RedisBackend()))

    def interact() -> str:
        assert REDIS_CLI is not None
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - the child execs redis-cli
            os.environ["TERM"] = "dumb"
            os.execv(REDIS_CLI, [REDIS_CLI, "-p", port])
        out = b""

        def read_until(marker: bytes, seconds: float = 5.0) -> None:
            nonlocal out
            end = time.monotonic() + seconds
            while marker not in out and time.monotonic() < end:
                ready, _, _ = select.select([fd], [], [], 0.05)
                if ready:
                    try:
                        out += os.read(fd, 65536)
                    except OSError:
                        return

        try:
            prompt = f"127.0.0.1:{port}> ".encode()
            read_until(prompt)
            for line, expect in ((b"set foo bar\r", b"OK"), (b"get foo\r", b'"bar"'), (b"help hset\r", b"group:")):
                os.write(fd, line)
                read_until(expect)
            os.write(fd, b"quit\r")
        finally:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            os.close(fd)
        return out.decode(errors="replace")

    text = await asyncio.to_thread(interact)
    assert '"bar"' in text
    assert "HSET key data [data ...]" in text.replace("\x1b[0m", "").replace("\x1b[1m", "").replace("\x1b[90m", "")
    assert "Creates or modifies the value of a field in a hash." in text


# =========================================================================== redis-py


@pytest.mark.parametrize("protocol", [2, 3])
async def test_redis_py(servers: Servers, protocol: int) -> None:
    port = await servers.start(RedisBackend(users={"default": "pw", "bob": "bobpw"}))
    r = servers.redis(port, password="pw", protocol=protocol, client_name="tester")
    assert await r.ping() is True
    assert await r.set("a", "1", ex=100) is True
    assert await r.incrby("a", 5) == 6 and await r.ttl("a") == 100
    assert await r.hset("h", mapping={"x": 1, "y": 2}) == 2
    assert await r.hgetall("h") == {b"x": b"1", b"y": b"2"}
    assert await r.rpush("l", "a", "b", "c") == 3 and await r.lrange("l", 0, -1) == [b"a", b"b", b"c"]
    assert await r.lpop("l", 2) == [b"a", b"b"]
    assert await r.lpop("nolist", 2) is None
    assert await r.client_getname() in ("tester", b"tester")
    info = await r.info("server")
    assert info["redis_version"] == "7.0.15" and info["tpemu_emulator"] == "yes"
    assert (await r.info("keyspace"))["db0"]["keys"] == 3
    assert sorted(await r.keys("*")) == [b"a", b"h", b"l"]
    assert await r.mget("a", "h", "none") == [b"6", None, None]
    async with r.pipeline(transaction=False) as pipe:
        pipe.set("p", "1").incr("p").get("p")
        assert await pipe.execute() == [True, 2, b"2"]
    async with r.pipeline() as pipe:  # MULTI ... EXEC
        pipe.incr("p").hset("p2", "f", "v").incr("p")
        assert await pipe.execute() == [3, 1, 4]
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await r.get("h")
    with pytest.raises(ResponseError, match="not supported by the tpemu emulator"):
        await r.execute_command("XADD", "s", "*", "f", "v")
    assert await r.get("a") == b"6"  # still usable

    bob = servers.redis(port, username="bob", password="bobpw", protocol=protocol)
    assert await bob.get("a") == b"6"
    with pytest.raises(AuthenticationError, match=r"WRONGPASS|invalid username-password"):
        await servers.redis(port, password="bad", protocol=protocol).ping()
    with pytest.raises(AuthenticationError):
        await servers.redis(port, protocol=protocol).ping()


async def test_scan_iterates_everything_once(servers: Servers) -> None:
    port = await servers.start(RedisBackend())
    r = servers.redis(port)
    for i in range(50):
        await r.set(f"k{i}", i)
    await r.hset("hash1", "f", "v")
    seen = [k async for k in r.scan_iter(count=3)]
    assert sorted(seen) == sorted([f"k{i}".encode() for i in range(50)] + [b"hash1"])
    assert [k async for k in r.scan_iter(match="k1*", count=7)] == sorted(
        [f"k{i}".encode() for i in range(50) if str(i).startswith("1")])
    assert [k async for k in r.scan_iter(_type="hash")] == [b"hash1"]
    cursor, first = await r.scan(0, count=10)
    assert cursor != 0 and len(first) == 10
    await r.delete(*[f"k{i}" for i in range(50)])
    cursor, rest = await r.scan(cursor, count=100)
    assert cursor == 0 and rest == []  # deleted meanwhile: not returned
    with pytest.raises(ResponseError, match="invalid cursor"):
        await r.scan(123456)


async def test_expiry_is_lazy_and_active(servers: Servers) -> None:
    backend = RedisBackend()
    port = await servers.start(backend)
    r = servers.redis(port)
    await r.set("lazy", "1", px=50)
    await r.set("active", "1", px=50)
    await r.set("kept", "1", ex=100)
    await asyncio.sleep(0.4)
    assert b"active" not in backend.data  # removed by the sweep without being touched
    assert await r.get("lazy") is None and await r.ttl("lazy") == -2
    assert await r.exists("kept") == 1 and 99 <= await r.ttl("kept") <= 100
    assert await r.dbsize() == 1
    assert backend.active_expire_cycle() == 0


async def test_session_from_the_database_service(servers: Servers) -> None:
    backend = RedisBackend(users={"default": "pw"})
    session = Session(teleport_user="alice@example.com", db_user="alice")
    port = await servers.start(backend, session=session)
    r = servers.redis(port)
    assert await r.set("k", "v") is True  # no AUTH needed
    assert await servers.redis(port, username="alice", password="anything").get("k") == b"v"
    assert await servers.redis(port, username="alice", password="x", protocol=3).get("k") == b"v"
    with pytest.raises(AuthenticationError):
        await servers.redis(port, username="mallory", password="pw").ping()
    with pytest.raises(AuthenticationError):
        await servers.redis(port, username="mallory", password="pw", protocol=3).ping()


# =========================================================================== raw protocol behaviour


@pytest.fixture
async def raw_port(servers: Servers) -> int:
    return await servers.start(RedisBackend(read_timeout=0.3, idle_timeout=0.6, max_bulk=1024))


async def test_inline_and_pipelined_commands(raw_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", raw_port)
    try:
        writer.write(b'PING\r\nSET k "hello world"\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n\r\nECHO \'x y\'\nQUIT\r\n')
        data = await asyncio.wait_for(reader.read(), 5)  # QUIT: the server closes after +OK
        assert data == b"+PONG\r\n+OK\r\n$11\r\nhello world\r\n$3\r\nx y\r\n+OK\r\n"
    finally:
        writer.close()


@pytest.mark.parametrize(("data", "reply"), [
    (b"*2\r\n+PING\r\n", b"-ERR Protocol error: expected '$', got '+'\r\n"),
    (b'ECHO "unbalanced\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
    (b"*1\r\n$5000\r\n", b"-ERR Protocol error: Redis bulk string exceeds the 1024-byte limit (got 5000)\r\n"),
    (b"*x\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
])
async def test_protocol_errors_close_the_connection(raw_port: int, data: bytes, reply: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", raw_port)
    try:
        writer.write(b"PING\r\n" + data)
        assert await asyncio.wait_for(reader.read(), 5) == b"+PONG\r\n" + reply
    finally:
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", raw_port)  # others are unaffected
    try:
        writer.write(b"PING\r\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"+PONG\r\n"
    finally:
        writer.close()


async def test_slow_and_idle_clients_are_bounded(raw_port: int) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", raw_port)
    started = loop.time()
    writer.write(b"*2\r\n$4\r\nECHO\r\n$10\r\nabc")  # never finished
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert loop.time() - started < 2
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", raw_port)
    started = loop.time()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert 0.5 < loop.time() - started < 3
    writer.close()


async def test_command_introspection(servers: Servers) -> None:
    port = await servers.start(RedisBackend())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        replies = [resp.parse_value(raw) for raw in await exchange(reader, writer, [
            ("HELLO", "3"), ("COMMAND", "COUNT"), ("COMMAND", "INFO", "get", "mset", "nosuch"),
            ("COMMAND", "DOCS", "set"), ("COMMAND",), ("COMMAND", "LIST")])]
    finally:
        writer.close()
    values = [r[0] for r in replies if r is not None]
    assert values[1] == len(_COMMANDS)
    S = resp.SimpleString
    assert values[2][0][:6] == [b"get", 2, [S("readonly"), S("fast")], 1, 1, 1]
    assert values[2][1][:6] == [b"mset", -3, [S("write"), S("denyoom")], 1, -1, 2]
    assert values[2][2] is None
    docs = dict(values[3].items)
    set_doc = dict(docs[b"set"].items)
    assert set_doc[b"group"] == b"string"
    assert dict(set_doc[b"arguments"][0].items) == {b"name": b"key", b"type": b"key"}
    assert len(values[4]) == len(_COMMANDS) and b"get" in values[5]
    r = servers.redis(port, protocol=3)
    assert await r.client_id() > 0
    with pytest.raises(ResponseError, match="Client names cannot contain spaces"):
        await r.client_setname("a b")
    assert await r.client_setname("named") is True
    assert b"name=named" in (await r.execute_command("CLIENT", "INFO"))
    assert b"resp=3" in (await r.execute_command("CLIENT", "LIST"))
    with pytest.raises(ResponseError, match="DB index is out of range"):
        await r.execute_command("SELECT", "1")


# =========================================================================== units and fuzz


def test_parse_int_is_redis_strict() -> None:
    assert [parse_int(x) for x in (b"0", b"-1", b"9223372036854775807", b"-9223372036854775808")] == \
        [0, -1, 2**63 - 1, -(2**63)]
    assert [parse_int(x) for x in (b"", b"01", b"+1", b" 1", b"1 ", b"-0", b"9223372036854775808", b"1.0")] == \
        [None] * 8


def test_glob_regex_units() -> None:
    assert glob_regex(b"h[a-c]llo").match(b"hbllo") and not glob_regex(b"h[a-c]llo").match(b"hdllo")
    assert glob_regex(b"*").match(b"a\nb")
    assert not glob_regex(b"a").match(b"ab")


ARGS = st.sampled_from([b"k", b"h", b"l", b"1", b"-1", b"0", b"abc", b"EX", b"PX", b"NX", b"XX", b"GET", b"KEEPTTL",
                        b"MATCH", b"COUNT", b"TYPE", b"*", b"100", b"9223372036854775807", b"", b"AUTH", b"SETNAME"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(sorted(_COMMANDS)), st.lists(ARGS, max_size=5)), max_size=8))
def test_any_command_sequence_gets_redis_replies(sequence: list[tuple[str, list[bytes]]]) -> None:
    """Random commands with plausible arguments: replies encode in both protocols, never an internal error."""
    backend = RedisBackend()
    client = Client(1, "127.0.0.1:1", "127.0.0.1:2", None)
    for name, args in sequence:
        reply, _ = backend._execute(client, resp.Command((name.encode(), *args)))
        for protocol in (2, 3):
            resp.encode(reply, protocol)
        assert not (isinstance(reply, resp.Error) and "internal error" in reply.message), (name, args, reply)
