"""An emulated Redis server: RESP2/RESP3, AUTH, an in-memory keyspace (glue + engine).

Behaves like Redis 7.0 (``redis_version`` 7.0.15, what Debian 12's redis-cli is) for the subset
below, with Redis's own error wording so clients map errors the same way; codec:
:mod:`tpemu.wire.resp`. Follows the Redis command reference (redis.io/commands) for arity,
options and replies, and ``networking.c``/``server.c`` for the connection rules (NOAUTH before
AUTH, protocol errors close the connection, pipelined commands answered in order).

* connection: HELLO [2|3 [AUTH user pass] [SETNAME name]], AUTH [user] pass, PING, ECHO,
  SELECT 0, QUIT, RESET; CLIENT SETNAME/GETNAME/ID/SETINFO/INFO/LIST;
* transactions: MULTI EXEC DISCARD (what redis-py pipelines send by default; no WATCH);
* server: INFO (server, clients, memory, persistence, stats, replication, keyspace), COMMAND
  (plain, COUNT, DOCS, INFO, LIST: redis-cli 7 asks for COMMAND DOCS when it starts), DBSIZE,
  FLUSHDB, FLUSHALL;
* strings: GET SET (EX PX EXAT PXAT NX XX KEEPTTL GET) SETNX SETEX PSETEX GETSET GETDEL MGET
  MSET INCR INCRBY DECR DECRBY APPEND STRLEN;
* expiry: EXPIRE PEXPIRE (NX XX GT LT) TTL PTTL PERSIST; expired keys are removed when touched
  and by a background sweep (Redis's active expiry: 20 random keys with a TTL every 100 ms,
  again at once while more than a quarter were expired);
* keys: DEL UNLINK EXISTS KEYS SCAN (MATCH COUNT TYPE) TYPE RENAME, glob patterns as Redis
  matches them;
* hashes: HSET HMSET HSETNX HGET HMGET HGETALL HDEL HEXISTS HKEYS HVALS HLEN HINCRBY;
* lists: LPUSH RPUSH LPOP RPOP (with count) LRANGE LLEN LINDEX.

Anything else: ``ERR unknown command …`` with Redis's wording plus ``(not supported by the
tpemu emulator)``; the connection stays usable. One database (0), shared by the backend's
connections. ``users`` maps ACL user names to passwords (``AUTH pass`` is user ``default``);
``users=None`` needs no AUTH, like a Redis without ``requirepass``. Behind the Database Service
(a :class:`~tpemu.agent.backends.base.Session`) no password is needed and AUTH/HELLO may name
only the session's database user.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import itertools
import logging
import os
import random
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tpemu.agent.backends.base import Session
from tpemu.errors import PeerFault
from tpemu.logs import RateLimiter
from tpemu.wire import resp
from tpemu.wire.errors import WireError
from tpemu.wire.resp import Error, SimpleString, Verbatim

logger = logging.getLogger(__name__)

EMULATOR_NOTE = "(not supported by the tpemu emulator)"
OK = SimpleString("OK")
WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
NOT_INTEGER = "ERR value is not an integer or out of range"
SYNTAX = "ERR syntax error"
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
#: Bytes of replies gathered from pipelined commands before they are flushed to the client.
FLUSH_AT = 1024 * 1024
#: Active SCAN cursors kept (least recently used are dropped).
MAX_SCANS = 256

Value = bytes | dict[bytes, bytes] | deque[bytes]


_rejections = RateLimiter()


class ReplyError(PeerFault):
    """A command failed; ``message`` starts with the error code (ERR, WRONGTYPE, …)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class _Spec:
    name: str
    handler: Callable[..., Any]
    arity: int
    group: str
    summary: str
    since: str
    arguments: tuple[str, ...]
    keys: tuple[int, int, int]
    flags: tuple[str, ...]
    subcommands: tuple[str, ...] = ()


_COMMANDS: dict[str, _Spec] = {}


def command(name: str, arity: int, group: str, summary: str, since: str = "1.0.0", arguments: str = "",
            keys: tuple[int, int, int] = (1, 1, 1), flags: str = "", subcommands: str = "") -> Callable[..., Any]:
    """Register a command handler with what COMMAND and COMMAND DOCS report about it.

    ``arity`` as Redis: positive is exact, negative a minimum (both count the name).
    ``arguments``: space-separated ``name:type`` with ``?`` (optional) and ``*`` (multiple)
    prefixes, enough for redis-cli's hints.
    """
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _COMMANDS[name] = _Spec(name, fn, arity, group, summary, since, tuple(arguments.split()), keys,
                                tuple(flags.split()), tuple(subcommands.split()))
        return fn
    return register


def parse_int(raw: bytes) -> int | None:
    """Redis's ``string2ll``: optional minus, digits, no leading zeros or spaces, fits int64."""
    if not raw or len(raw) > 20:
        return None
    body = raw[1:] if raw[:1] == b"-" else raw
    if not body.isdigit() or (len(body) > 1 and body[:1] == b"0") or (raw[:1] == b"-" and body == b"0"):
        return None
    value = int(raw)
    return value if -(2**63) <= value < 2**63 else None


def _int_arg(raw: bytes, message: str = NOT_INTEGER) -> int:
    value = parse_int(raw)
    if value is None:
        raise ReplyError(message)
    return value


@functools.lru_cache(maxsize=512)
def glob_regex(pattern: bytes) -> re.Pattern[bytes]:
    """A regex matching what Redis's ``stringmatchlen`` matches for ``pattern``.

    ``*`` any run, ``?`` one byte, ``[abc]``/``[^a]``/``[a-z]`` classes, ``\\x`` a literal x.
    """
    out = bytearray()
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i:i + 1]
        if c == b"*":
            out += b".*"
        elif c == b"?":
            out += b"."
        elif c == b"\\" and i + 1 < n:
            i += 1
            out += re.escape(pattern[i:i + 1])
        elif c == b"[":
            # Redis's class loop, quirks included: ']' right after '[' closes an empty class, an
            # unclosed class takes the rest of the pattern, "x-y" is a range whenever two more
            # pattern bytes follow (even a closing ']').
            i += 1
            negate = pattern[i:i + 1] == b"^"
            if negate:
                i += 1
            cls = bytearray()
            while True:
                if pattern[i:i + 1] == b"\\" and n - i >= 2:
                    i += 1
                    cls += re.escape(pattern[i:i + 1])
                elif pattern[i:i + 1] == b"]":
                    break
                elif i >= n:
                    i -= 1  # the loop's i += 1 below then ends the pattern
                    break
                elif n - i >= 3 and pattern[i + 1:i + 2] == b"-":
                    lo, hi = sorted((pattern[i], pattern[i + 2]))
                    cls += re.escape(bytes([lo])) + b"-" + re.escape(bytes([hi]))
                    i += 2
                else:
                    cls += re.escape(pattern[i:i + 1])
                i += 1
            if cls:
                out += (b"[^" if negate else b"[") + bytes(cls) + b"]"
            else:
                out += b"(?s:.)" if negate else b"(?!)"
        else:
            out += re.escape(c)
        i += 1
    return re.compile(bytes(out) + b"\\Z", re.DOTALL)


@dataclass
class _Client:
    id: int
    addr: str
    laddr: str
    session: Session | None
    protocol: int = 2
    user: str | None = None
    name: bytes = b""
    lib_name: bytes = b""
    lib_ver: bytes = b""
    multi: list[tuple[_Spec, list[bytes]]] | None = None  # commands queued since MULTI
    multi_failed: bool = False  # a command was refused while queueing: EXEC aborts
    created: float = field(default_factory=time.monotonic)
    last_command: str = "NULL"
    last_active: float = field(default_factory=time.monotonic)


@dataclass
class _Scan:
    keys: list[bytes]
    pos: int = 0


class RedisBackend:
    """An in-memory Redis 7.0 lookalike for redis-cli, redis-py and friends.

    ``users``: ACL user name → password (``default`` is the user of ``AUTH <password>``), or
    ``None`` for no authentication. Timeouts in seconds: ``idle_timeout`` between commands,
    ``read_timeout`` to finish a command once started, ``write_timeout`` for the client to
    take its replies.
    """

    protocol: ClassVar[str] = "redis"

    def __init__(self, users: Mapping[str, str] | None = None, *, version: str = "7.0.15",
                 idle_timeout: float = 3600.0, read_timeout: float = 30.0, write_timeout: float = 30.0,
                 max_bulk: int = resp.MAX_BULK) -> None:
        self.users = dict(users) if users is not None else None
        self.version = version
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.max_bulk = max_bulk
        self.data: dict[bytes, Value] = {}
        self.expires: dict[bytes, int] = {}  # key -> deadline, monotonic milliseconds
        self._clients: dict[int, _Client] = {}
        self._client_ids = itertools.count(1)
        self._scans: OrderedDict[int, _Scan] = OrderedDict()
        self._scan_ids = itertools.count(1)
        self._run_id = os.urandom(20).hex()
        self._started = time.monotonic()
        self._total_connections = 0
        self._total_commands = 0
        self._expired_keys = 0
        self._sweeper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ connection loop

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     session: Session | None = None) -> None:
        """Serve one client until QUIT, EOF, a protocol error or a timeout; closes ``writer``."""
        client = _Client(next(self._client_ids), _addr(writer.get_extra_info("peername")),
                         _addr(writer.get_extra_info("sockname")), session)
        self._clients[client.id] = client
        self._total_connections += 1
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep(), name="redis-active-expiry")
        logger.debug("redis client=%d addr=%s connected (session=%s)", client.id, client.addr, session)
        try:
            await self._serve(client, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            logger.debug("redis client=%d: went away", client.id)
        except TimeoutError:
            logger.info("redis client=%d addr=%s: closed after a read or write timeout", client.id, client.addr)
        finally:
            del self._clients[client.id]
            if not self._clients and self._sweeper is not None:
                self._sweeper.cancel()
                self._sweeper = None
            writer.close()
            try:
                async with asyncio.timeout(5):
                    await writer.wait_closed()
            except (OSError, TimeoutError):
                pass

    async def _serve(self, client: _Client, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = resp.CommandReader(max_bulk=self.max_bulk, max_command=self.max_bulk + 1024 * 1024)
        while True:
            # Between commands a client may idle; once a command has started it must finish.
            timeout = self.read_timeout if parser.buffered else self.idle_timeout
            try:
                async with asyncio.timeout(timeout):
                    data = await reader.read(65536)
            except TimeoutError:
                if parser.buffered:
                    raise
                logger.info("redis client=%d addr=%s: idle for %.0f s, closing", client.id, client.addr, timeout)
                return
            if not data:
                return
            parser.feed(data)
            out = bytearray()
            while True:
                try:
                    cmd = parser.next_command()
                except WireError as exc:
                    allowed, suppressed = _rejections.allow(client.addr.rsplit(":", 1)[0])
                    if allowed:
                        logger.warning("redis client=%d addr=%s: protocol error, closing: %s%s", client.id,
                                       client.addr, exc, f" ({suppressed} similar warnings suppressed)"
                                       if suppressed else "")
                    text = str(exc) if str(exc).startswith("Protocol error") else f"Protocol error: {exc}"
                    out += resp.encode(Error(f"ERR {text}"))
                    await self._flush(writer, out)
                    return
                if cmd is None:
                    break
                reply, close = self._execute(client, cmd)
                out += resp.encode(reply, client.protocol)
                if close:
                    await self._flush(writer, out)
                    return
                if len(out) >= FLUSH_AT:
                    await self._flush(writer, out)
                    out = bytearray()
            if out:
                await self._flush(writer, out)

    async def _flush(self, writer: asyncio.StreamWriter, out: bytes | bytearray) -> None:
        writer.write(bytes(out))
        async with asyncio.timeout(self.write_timeout):
            await writer.drain()

    async def _sweep(self) -> None:
        """Redis's active expiry cycle, while any client is connected."""
        while True:
            await asyncio.sleep(0.1)
            self.active_expire_cycle()

    def active_expire_cycle(self) -> int:
        """Sample keys with a TTL and drop the expired ones; returns how many were dropped."""
        dropped = 0
        if not self.expires:
            return 0
        # One snapshot per cycle (O(keys with a TTL)), then at most 16 rounds of 20 random keys.
        snapshot = list(self.expires)
        candidates = random.sample(snapshot, min(len(snapshot), 16 * 20))
        now = _now_ms()
        for start in range(0, len(candidates), 20):
            keys = [k for k in candidates[start:start + 20] if k in self.expires]
            expired = [k for k in keys if self.expires[k] <= now]
            for key in expired:
                self._delete(key)
                self._expired_keys += 1
            dropped += len(expired)
            if len(expired) * 4 <= len(keys):
                break
        return dropped

    # ------------------------------------------------------------------ dispatch

    def _execute(self, client: _Client, cmd: resp.Command) -> tuple[Any, bool]:
        """Run one command: (reply, close the connection after it)."""
        self._total_commands += 1
        client.last_active = time.monotonic()
        name = cmd.name
        spec = _COMMANDS.get(name)
        args = list(cmd.args[1:])
        if spec is None:
            # Redis's wording, byte for byte (networking.c: at most 128 bytes of the name and of
            # the quoted arguments), then the emulator's note.
            shown = b""
            for arg in args:
                if len(shown) >= 128:
                    break
                shown += b"'" + arg[:128 - len(shown)] + b"' "
            message = b"ERR unknown command '" + cmd.args[0][:128] + b"', with args beginning with: " + shown
            client.multi_failed = client.multi is not None
            return Error(message.decode("utf-8", "surrogateescape") + EMULATOR_NOTE), False
        client.last_command = name if not spec.subcommands or len(args) < 1 else \
            f"{name}|{args[0].decode('utf-8', 'replace').lower()}"
        if (spec.arity > 0 and len(cmd.args) != spec.arity) or (spec.arity < 0 and len(cmd.args) < -spec.arity):
            client.multi_failed = client.multi is not None
            return Error(f"ERR wrong number of arguments for '{name}' command"), False
        if self.users is not None and client.session is None and client.user is None \
                and name not in ("auth", "hello", "quit", "reset"):
            return Error("NOAUTH Authentication required."), False
        if client.multi is not None and name not in ("exec", "discard", "multi", "quit", "reset"):
            client.multi.append((spec, args))  # inside MULTI: run at EXEC
            return SimpleString("QUEUED"), False
        return self._call(client, spec, args), name == "quit"

    def _call(self, client: _Client, spec: _Spec, args: list[bytes]) -> Any:
        try:
            return spec.handler(self, client, args)
        except ReplyError as exc:
            return Error(exc.message)
        except Exception as exc:  # a local fault: the client gets an error, the log the traceback
            logger.exception("redis client=%d: internal error in %s", client.id, spec.name)
            return Error(f"ERR internal error in the tpemu emulator: {exc!r}")

    # ------------------------------------------------------------------ keyspace helpers

    def _alive(self, key: bytes) -> Value | None:
        """The value at ``key``, dropping it first if it has expired (lazy expiry)."""
        deadline = self.expires.get(key)
        if deadline is not None and deadline <= _now_ms():
            self._delete(key)
            self._expired_keys += 1
            return None
        return self.data.get(key)

    def _delete(self, key: bytes) -> bool:
        self.expires.pop(key, None)
        return self.data.pop(key, None) is not None

    def _get_string(self, key: bytes) -> bytes | None:
        value = self._alive(key)
        if value is not None and not isinstance(value, bytes):
            raise ReplyError(WRONGTYPE)
        return value

    def _get_hash(self, key: bytes, create: bool = False) -> dict[bytes, bytes] | None:
        value = self._alive(key)
        if value is None:
            if not create:
                return None
            value = self.data[key] = {}
        if not isinstance(value, dict):
            raise ReplyError(WRONGTYPE)
        return value

    def _get_list(self, key: bytes, create: bool = False) -> deque[bytes] | None:
        value = self._alive(key)
        if value is None:
            if not create:
                return None
            value = self.data[key] = deque()
        if not isinstance(value, deque):
            raise ReplyError(WRONGTYPE)
        return value

    def _keys(self) -> list[bytes]:
        return [k for k in list(self.data) if self._alive(k) is not None]

    # ------------------------------------------------------------------ connection commands

    def _check_session_user(self, client: _Client, user: str) -> None:
        assert client.session is not None
        if user not in (client.session.db_user, "default"):
            raise ReplyError(f"WRONGPASS this connection was authenticated by the Database Service as "
                             f"'{client.session.db_user}', not '{user}'")

    def _authenticate(self, client: _Client, user: str | None, password: bytes) -> None:
        if client.session is not None:
            self._check_session_user(client, user or "default")
            client.user = client.session.db_user
            return
        if self.users is None:
            if user is None:
                raise ReplyError("ERR AUTH <password> called without any password configured for the default user. "
                                 "Are you sure your configuration is correct?")
            if user != "default":
                raise ReplyError(WRONGPASS)
            client.user = user
            return
        name = user or "default"
        expected = self.users.get(name)
        if expected is None or not hmac.compare_digest(expected.encode("utf-8"), password):
            logger.info("redis client=%d addr=%s: failed AUTH for user %r", client.id, client.addr, name)
            raise ReplyError(WRONGPASS)
        client.user = name

    @command("auth", -2, "connection", "Authenticates the connection.", "1.0.0", "?username:string password:string",
             keys=(0, 0, 0), flags="noscript loading stale fast no-auth allow-busy")
    def _auth(self, client: _Client, args: list[bytes]) -> Any:
        if len(args) > 2:
            raise ReplyError(SYNTAX)
        user = args[0].decode("utf-8", "replace") if len(args) == 2 else None
        self._authenticate(client, user, args[-1])
        return OK

    @command("hello", -1, "connection", "Handshakes with the Redis server.", "6.0.0",
             "?protover:integer ?AUTH:block ?SETNAME:string", keys=(0, 0, 0),
             flags="noscript loading stale fast no-auth allow-busy")
    def _hello(self, client: _Client, args: list[bytes]) -> Any:
        protocol = client.protocol
        if args:
            version = parse_int(args[0])
            if version is None:
                raise ReplyError("ERR Protocol version is not an integer or out of range")
            if version not in (2, 3):
                raise ReplyError("NOPROTO unsupported protocol version")
            protocol = version
        i = 1
        name = None
        authed = False
        while i < len(args):
            option = args[i].lower()
            if option == b"auth" and i + 2 < len(args):
                self._authenticate(client, args[i + 1].decode("utf-8", "replace"), args[i + 2])
                authed = True
                i += 3
            elif option == b"setname" and i + 1 < len(args):
                name = args[i + 1]
                i += 2
            else:
                raise ReplyError(f"ERR Syntax error in HELLO option '{args[i].decode('utf-8', 'replace')}'")
        if not authed and self.users is not None and client.session is None and client.user is None:
            raise ReplyError("NOAUTH HELLO must be called with the client already authenticated, otherwise the "
                             "HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and "
                             "select the RESP protocol version at the same time")
        if name is not None:
            _check_client_name(name)
            client.name = name
        client.protocol = protocol
        return {"server": "redis", "version": self.version, "proto": protocol, "id": client.id,
                "mode": "standalone", "role": "master", "modules": []}

    @command("ping", -1, "connection", "Returns the server's liveliness response.", "1.0.0", "?message:string",
             keys=(0, 0, 0), flags="fast")
    def _ping(self, client: _Client, args: list[bytes]) -> Any:
        if len(args) > 1:
            raise ReplyError("ERR wrong number of arguments for 'ping' command")
        return args[0] if args else SimpleString("PONG")

    @command("echo", 2, "connection", "Returns the given string.", "1.0.0", "message:string", keys=(0, 0, 0),
             flags="fast")
    def _echo(self, client: _Client, args: list[bytes]) -> Any:
        return args[0]

    @command("select", 2, "connection", "Changes the selected database.", "1.0.0", "index:integer",
             keys=(0, 0, 0), flags="loading stale fast")
    def _select(self, client: _Client, args: list[bytes]) -> Any:
        index = _int_arg(args[0])
        if index != 0:
            raise ReplyError(f"ERR DB index is out of range {EMULATOR_NOTE[:-1]}: it has only database 0)")
        return OK

    @command("quit", -1, "connection", "Closes the connection.", "1.0.0", keys=(0, 0, 0),
             flags="noscript loading stale fast no-auth allow-busy")
    def _quit(self, client: _Client, args: list[bytes]) -> Any:
        return OK

    @command("reset", 1, "connection", "Resets the connection.", "6.2.0", keys=(0, 0, 0),
             flags="noscript loading stale fast no-auth allow-busy")
    def _reset(self, client: _Client, args: list[bytes]) -> Any:
        client.multi, client.multi_failed = None, False
        client.protocol = 2
        client.name = b""
        if client.session is None:
            client.user = None if self.users is not None else client.user
        return SimpleString("RESET")

    @command("client", -2, "connection", "A container for client connection commands.", "2.4.0",
             keys=(0, 0, 0), flags="", subcommands="setname getname id setinfo info list")
    def _client(self, client: _Client, args: list[bytes]) -> Any:
        sub = args[0].lower()
        rest = args[1:]
        arity = {b"setname": 1, b"getname": 0, b"id": 0, b"setinfo": 2, b"info": 0}
        if sub in arity and len(rest) != arity[sub]:
            raise ReplyError(f"ERR wrong number of arguments for 'client|{sub.decode()}' command")
        if sub == b"setname":
            _check_client_name(rest[0])
            client.name = rest[0]
            return OK
        if sub == b"getname":
            return client.name or None
        if sub == b"id":
            return client.id
        if sub == b"setinfo":
            attr = rest[0].lower()
            if attr not in (b"lib-name", b"lib-ver"):
                raise ReplyError(f"ERR Unrecognized option '{rest[0].decode('utf-8', 'replace')}'")
            if attr == b"lib-name":
                _check_client_name(rest[1], "lib-name")
                client.lib_name = rest[1]
            else:
                _check_client_name(rest[1], "lib-ver")
                client.lib_ver = rest[1]
            return OK
        if sub == b"info":
            return Verbatim("txt", self._client_line(client) + "\n")
        if sub == b"list":
            return Verbatim("txt", "".join(self._client_line(c) + "\n" for c in self._clients.values()))
        raise ReplyError(f"ERR unknown subcommand '{args[0].decode('utf-8', 'replace')[:128]}'. Try CLIENT HELP. "
                         f"{EMULATOR_NOTE}")

    def _client_line(self, c: _Client) -> str:
        now = time.monotonic()
        return (f"id={c.id} addr={c.addr} laddr={c.laddr} fd=-1 name={c.name.decode('utf-8', 'replace')} "
                f"age={int(now - c.created)} idle={int(now - c.last_active)} flags=N db=0 sub=0 psub=0 ssub=0 "
                f"multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 "
                f"events=r cmd={c.last_command} user={c.user or 'default'} redir=-1 resp={c.protocol} "
                f"lib-name={c.lib_name.decode('utf-8', 'replace')} lib-ver={c.lib_ver.decode('utf-8', 'replace')}")

    # ------------------------------------------------------------------ transactions (no WATCH)

    @command("multi", 1, "transactions", "Starts a transaction.", "1.2.0", keys=(0, 0, 0),
             flags="noscript loading stale fast allow-busy")
    def _multi(self, client: _Client, args: list[bytes]) -> Any:
        if client.multi is not None:
            raise ReplyError("ERR MULTI calls can not be nested")
        client.multi, client.multi_failed = [], False
        return OK

    @command("exec", 1, "transactions", "Executes all commands in a transaction.", "1.2.0", keys=(0, 0, 0),
             flags="noscript loading stale skip-slowlog")
    def _exec(self, client: _Client, args: list[bytes]) -> Any:
        if client.multi is None:
            raise ReplyError("ERR EXEC without MULTI")
        queued, failed = client.multi, client.multi_failed
        client.multi, client.multi_failed = None, False
        if failed:
            raise ReplyError("EXECABORT Transaction discarded because of previous errors.")
        # One event-loop step runs them all: nothing else interleaves, as in Redis.
        return [self._call(client, spec, queued_args) for spec, queued_args in queued]

    @command("discard", 1, "transactions", "Discards a transaction.", "2.0.0", keys=(0, 0, 0),
             flags="noscript loading stale fast allow-busy")
    def _discard(self, client: _Client, args: list[bytes]) -> Any:
        if client.multi is None:
            raise ReplyError("ERR DISCARD without MULTI")
        client.multi, client.multi_failed = None, False
        return OK

    # ------------------------------------------------------------------ server commands

    @command("info", -1, "server", "Returns information and statistics about the server.", "1.0.0",
             "*?section:string", keys=(0, 0, 0), flags="loading stale")
    def _info(self, client: _Client, args: list[bytes]) -> Any:
        sections = self._info_sections(client)
        wanted = {a.decode("utf-8", "replace").lower() for a in args} or {"default"}
        if wanted & {"all", "everything", "default"}:
            chosen = list(sections)
        else:
            chosen = [s for s in sections if s in wanted]
        text = "\r\n".join(f"# {name.capitalize()}\r\n" + "".join(f"{k}:{v}\r\n" for k, v in sections[name])
                           for name in chosen)
        return Verbatim("txt", text)

    def _info_sections(self, client: _Client) -> dict[str, list[tuple[str, Any]]]:
        up = int(time.monotonic() - self._started)
        keys = self._keys()
        expiring = sum(1 for k in keys if k in self.expires)
        port = client.laddr.rsplit(":", 1)[-1]
        keyspace = [("db0", f"keys={len(keys)},expires={expiring},avg_ttl=0")] if keys else []
        return {
            "server": [
                ("redis_version", self.version), ("redis_git_sha1", "00000000"), ("redis_git_dirty", 0),
                ("redis_build_id", "0"), ("redis_mode", "standalone"), ("os", "tpemu emulator"),
                ("arch_bits", 64), ("multiplexing_api", "asyncio"), ("process_id", os.getpid()),
                ("run_id", self._run_id), ("tcp_port", port), ("server_time_usec", int(time.time() * 1e6)),
                ("uptime_in_seconds", up), ("uptime_in_days", up // 86400), ("executable", "tpemu"),
                ("config_file", ""), ("tpemu_emulator", "yes"),
            ],
            "clients": [
                ("connected_clients", len(self._clients)), ("maxclients", 10000), ("blocked_clients", 0),
                ("tracking_clients", 0),
            ],
            "memory": [("used_memory", 0), ("used_memory_human", "0B"), ("maxmemory", 0),
                       ("maxmemory_policy", "noeviction")],
            "persistence": [("loading", 0), ("rdb_changes_since_last_save", 0), ("aof_enabled", 0)],
            "stats": [
                ("total_connections_received", self._total_connections),
                ("total_commands_processed", self._total_commands), ("expired_keys", self._expired_keys),
            ],
            "replication": [("role", "master"), ("connected_slaves", 0)],
            "keyspace": keyspace,
        }

    @command("command", -1, "server", "Returns detailed information about all commands.", "2.8.13",
             keys=(0, 0, 0), flags="loading stale", subcommands="count docs info list")
    def _command(self, client: _Client, args: list[bytes]) -> Any:
        if not args:
            return [_command_info(spec) for spec in _COMMANDS.values()]
        sub = args[0].lower()
        names = [a.decode("utf-8", "replace").lower() for a in args[1:]]
        if sub == b"count":
            return len(_COMMANDS)
        if sub == b"list":
            return [spec.name for spec in _COMMANDS.values()]
        if sub == b"info":
            return [_command_info(_COMMANDS[n]) if n in _COMMANDS else None for n in names or list(_COMMANDS)]
        if sub == b"docs":
            chosen = [n for n in names if n in _COMMANDS] if names else list(_COMMANDS)
            return {n: _command_docs(_COMMANDS[n]) for n in chosen}
        raise ReplyError(f"ERR unknown subcommand '{args[0].decode('utf-8', 'replace')[:128]}'. Try COMMAND HELP. "
                         f"{EMULATOR_NOTE}")

    @command("dbsize", 1, "server", "Returns the number of keys in the database.", "1.0.0", keys=(0, 0, 0),
             flags="readonly fast")
    def _dbsize(self, client: _Client, args: list[bytes]) -> Any:
        return len(self._keys())

    @command("flushdb", -1, "server", "Removes all keys from the current database.", "1.0.0", "?flush-type:string",
             keys=(0, 0, 0), flags="write")
    def _flushdb(self, client: _Client, args: list[bytes]) -> Any:
        if len(args) > 1 or (args and args[0].lower() not in (b"async", b"sync")):
            raise ReplyError(SYNTAX)
        self.data.clear()
        self.expires.clear()
        self._scans.clear()
        return OK

    @command("flushall", -1, "server", "Removes all keys from all databases.", "1.0.0", "?flush-type:string",
             keys=(0, 0, 0), flags="write")
    def _flushall(self, client: _Client, args: list[bytes]) -> Any:
        return self._flushdb(client, args)

    # ------------------------------------------------------------------ strings

    @command("get", 2, "string", "Returns the string value of a key.", "1.0.0", "key:key", flags="readonly fast")
    def _get(self, client: _Client, args: list[bytes]) -> Any:
        return self._get_string(args[0])

    @command("set", -3, "string", "Sets the string value of a key, ignoring its type.", "1.0.0",
             "key:key value:string ?condition:oneof ?GET:pure-token ?expiration:oneof", flags="write denyoom")
    def _set(self, client: _Client, args: list[bytes]) -> Any:
        key, value = args[0], args[1]
        condition = None
        get = keep_ttl = False
        expire_ms: int | None = None
        i = 2
        while i < len(args):
            option = args[i].upper()
            if option in (b"NX", b"XX") and condition is None:
                condition = option
            elif option == b"GET" and not get:
                get = True
            elif option == b"KEEPTTL" and expire_ms is None and not keep_ttl:
                keep_ttl = True
            elif option in (b"EX", b"PX", b"EXAT", b"PXAT") and expire_ms is None and not keep_ttl \
                    and i + 1 < len(args):
                i += 1
                amount = _int_arg(args[i])
                expire_ms = self._expire_deadline(amount, option, "set")
            else:
                raise ReplyError(SYNTAX)
            i += 1
        old = self._get_string(key) if get else None
        exists = self._alive(key) is not None
        if (condition == b"NX" and exists) or (condition == b"XX" and not exists):
            return old if get else None
        self._set_string(key, value, keep_ttl)
        if expire_ms is not None:
            self.expires[key] = expire_ms
        return old if get else OK

    def _expire_deadline(self, amount: int, unit: bytes, command_name: str) -> int:
        """The monotonic-ms deadline for an expiry option of SET/SETEX/PSETEX."""
        if amount <= 0 or (unit in (b"EX", b"EXAT") and amount > (2**63 - 1) // 1000):
            raise ReplyError(f"ERR invalid expire time in '{command_name}' command")
        now = _now_ms()
        match unit:
            case b"EX":
                return now + amount * 1000
            case b"PX":
                return now + amount
            case b"EXAT":
                return now + amount * 1000 - int(time.time() * 1000)
        return now + amount - int(time.time() * 1000)

    def _set_string(self, key: bytes, value: bytes, keep_ttl: bool = False) -> None:
        self._alive(key)
        self.data[key] = value
        if not keep_ttl:
            self.expires.pop(key, None)

    @command("setnx", 3, "string", "Set the string value of a key only when the key doesn't exist.", "1.0.0",
             "key:key value:string", flags="write denyoom fast")
    def _setnx(self, client: _Client, args: list[bytes]) -> Any:
        if self._alive(args[0]) is not None:
            return 0
        self._set_string(args[0], args[1])
        return 1

    @command("setex", 4, "string", "Sets the string value and expiration time of a key.", "2.0.0",
             "key:key seconds:integer value:string", flags="write denyoom")
    def _setex(self, client: _Client, args: list[bytes]) -> Any:
        deadline = self._expire_deadline(_int_arg(args[1]), b"EX", "setex")
        self._set_string(args[0], args[2])
        self.expires[args[0]] = deadline
        return OK

    @command("psetex", 4, "string", "Sets both string value and expiration time in milliseconds of a key.",
             "2.6.0", "key:key milliseconds:integer value:string", flags="write denyoom")
    def _psetex(self, client: _Client, args: list[bytes]) -> Any:
        deadline = self._expire_deadline(_int_arg(args[1]), b"PX", "psetex")
        self._set_string(args[0], args[2])
        self.expires[args[0]] = deadline
        return OK

    @command("getset", 3, "string", "Returns the previous string value of a key after setting it to a new value.",
             "1.0.0", "key:key value:string", flags="write denyoom fast")
    def _getset(self, client: _Client, args: list[bytes]) -> Any:
        old = self._get_string(args[0])
        self._set_string(args[0], args[1])
        return old

    @command("getdel", 2, "string", "Returns the string value of a key after deleting the key.", "6.2.0",
             "key:key", flags="write fast")
    def _getdel(self, client: _Client, args: list[bytes]) -> Any:
        old = self._get_string(args[0])
        if old is not None:
            self._delete(args[0])
        return old

    @command("mget", -2, "string", "Atomically returns the string values of one or more keys.", "1.0.0",
             "*key:key", keys=(1, -1, 1), flags="readonly fast")
    def _mget(self, client: _Client, args: list[bytes]) -> Any:
        out = []
        for key in args:
            value = self._alive(key)
            out.append(value if isinstance(value, bytes) else None)
        return out

    @command("mset", -3, "string", "Atomically creates or modifies the string values of one or more keys.",
             "1.0.1", "*data:block", keys=(1, -1, 2), flags="write denyoom")
    def _mset(self, client: _Client, args: list[bytes]) -> Any:
        if len(args) % 2:
            raise ReplyError("ERR wrong number of arguments for 'mset' command")
        for i in range(0, len(args), 2):
            self._set_string(args[i], args[i + 1])
        return OK

    def _incr(self, key: bytes, by: int) -> int:
        old = self._get_string(key)
        current = 0 if old is None else parse_int(old)
        if current is None:
            raise ReplyError(NOT_INTEGER)
        total = current + by
        if not -(2**63) <= total < 2**63:
            raise ReplyError("ERR increment or decrement would overflow")
        self._set_string(key, str(total).encode(), keep_ttl=True)
        return total

    @command("incr", 2, "string", "Increments the integer value of a key by one.", "1.0.0", "key:key",
             flags="write denyoom fast")
    def _incr1(self, client: _Client, args: list[bytes]) -> Any:
        return self._incr(args[0], 1)

    @command("decr", 2, "string", "Decrements the integer value of a key by one.", "1.0.0", "key:key",
             flags="write denyoom fast")
    def _decr1(self, client: _Client, args: list[bytes]) -> Any:
        return self._incr(args[0], -1)

    @command("incrby", 3, "string", "Increments the integer value of a key by a number.", "1.0.0",
             "key:key increment:integer", flags="write denyoom fast")
    def _incrby(self, client: _Client, args: list[bytes]) -> Any:
        return self._incr(args[0], _int_arg(args[1]))

    @command("decrby", 3, "string", "Decrements a number from the integer value of a key.", "1.0.0",
             "key:key decrement:integer", flags="write denyoom fast")
    def _decrby(self, client: _Client, args: list[bytes]) -> Any:
        by = _int_arg(args[1])
        if by == -(2**63):
            raise ReplyError("ERR decrement would overflow")
        return self._incr(args[0], -by)

    @command("append", 3, "string", "Appends a string to the value of a key.", "2.0.0", "key:key value:string",
             flags="write denyoom fast")
    def _append(self, client: _Client, args: list[bytes]) -> Any:
        old = self._get_string(args[0]) or b""
        if len(old) + len(args[1]) > self.max_bulk:
            raise ReplyError(f"ERR string exceeds maximum allowed size ({self.max_bulk} bytes in the tpemu emulator)")
        self._set_string(args[0], old + args[1], keep_ttl=True)
        return len(old) + len(args[1])

    @command("strlen", 2, "string", "Returns the length of a string value.", "2.2.0", "key:key",
             flags="readonly fast")
    def _strlen(self, client: _Client, args: list[bytes]) -> Any:
        return len(self._get_string(args[0]) or b"")

    # ------------------------------------------------------------------ expiry

    def _expire(self, args: list[bytes], unit_ms: int, name: str) -> int:
        amount = _int_arg(args[1])
        flags = set()
        for arg in args[2:]:
            flag = arg.upper()
            if flag not in (b"NX", b"XX", b"GT", b"LT"):
                raise ReplyError(f"ERR Unsupported option {arg.decode('utf-8', 'replace')}")
            flags.add(flag)
        if b"NX" in flags and len(flags) > 1:
            raise ReplyError("ERR NX and XX, GT or LT options at the same time are not compatible")
        if b"GT" in flags and b"LT" in flags:
            raise ReplyError("ERR GT and LT options at the same time are not compatible")
        if abs(amount) > (2**63 - 1) // unit_ms:
            raise ReplyError(f"ERR invalid expire time in '{name}' command")
        key = args[0]
        if self._alive(key) is None:
            return 0
        current = self.expires.get(key)
        deadline = _now_ms() + amount * unit_ms
        if (b"NX" in flags and current is not None) or (b"XX" in flags and current is None):
            return 0
        # A key without a TTL counts as an infinite TTL for GT and LT.
        if b"GT" in flags and (current is None or deadline <= current):
            return 0
        if b"LT" in flags and current is not None and deadline >= current:
            return 0
        if amount <= 0:
            self._delete(key)
        else:
            self.expires[key] = deadline
        return 1

    @command("expire", -3, "generic", "Sets the expiration time of a key in seconds.", "1.0.0",
             "key:key seconds:integer ?condition:oneof", flags="write fast")
    def _expire_s(self, client: _Client, args: list[bytes]) -> Any:
        return self._expire(args, 1000, "expire")

    @command("pexpire", -3, "generic", "Sets the expiration time of a key in milliseconds.", "2.6.0",
             "key:key milliseconds:integer ?condition:oneof", flags="write fast")
    def _expire_ms(self, client: _Client, args: list[bytes]) -> Any:
        return self._expire(args, 1, "pexpire")

    def _ttl_ms(self, key: bytes) -> int:
        if self._alive(key) is None:
            return -2
        deadline = self.expires.get(key)
        return -1 if deadline is None else max(0, deadline - _now_ms())

    @command("ttl", 2, "generic", "Returns the expiration time in seconds of a key.", "1.0.0", "key:key",
             flags="readonly fast")
    def _ttl(self, client: _Client, args: list[bytes]) -> Any:
        ms = self._ttl_ms(args[0])
        return ms if ms < 0 else (ms + 500) // 1000

    @command("pttl", 2, "generic", "Returns the expiration time in milliseconds of a key.", "2.6.0", "key:key",
             flags="readonly fast")
    def _pttl(self, client: _Client, args: list[bytes]) -> Any:
        return self._ttl_ms(args[0])

    @command("persist", 2, "generic", "Removes the expiration time of a key.", "2.2.0", "key:key",
             flags="write fast")
    def _persist(self, client: _Client, args: list[bytes]) -> Any:
        if self._alive(args[0]) is None:
            return 0
        return 1 if self.expires.pop(args[0], None) is not None else 0

    # ------------------------------------------------------------------ keys

    @command("del", -2, "generic", "Deletes one or more keys.", "1.0.0", "*key:key", keys=(1, -1, 1),
             flags="write")
    def _del(self, client: _Client, args: list[bytes]) -> Any:
        return sum(1 for key in args if self._alive(key) is not None and self._delete(key))

    @command("unlink", -2, "generic", "Asynchronously deletes one or more keys.", "4.0.0", "*key:key",
             keys=(1, -1, 1), flags="write fast")
    def _unlink(self, client: _Client, args: list[bytes]) -> Any:
        return self._del(client, args)

    @command("exists", -2, "generic", "Determines whether one or more keys exist.", "1.0.0", "*key:key",
             keys=(1, -1, 1), flags="readonly fast")
    def _exists(self, client: _Client, args: list[bytes]) -> Any:
        return sum(1 for key in args if self._alive(key) is not None)

    @command("type", 2, "generic", "Determines the type of value stored at a key.", "1.0.0", "key:key",
             flags="readonly fast")
    def _type(self, client: _Client, args: list[bytes]) -> Any:
        return SimpleString(_type_name(self._alive(args[0])))

    @command("keys", 2, "generic", "Returns all key names that match a pattern.", "1.0.0", "pattern:pattern",
             keys=(0, 0, 0), flags="readonly")
    def _keys_cmd(self, client: _Client, args: list[bytes]) -> Any:
        rx = glob_regex(args[0])
        return [k for k in self._keys() if rx.match(k)]

    @command("scan", -2, "generic", "Iterates over the key names in the database.", "2.8.0",
             "cursor:integer ?MATCH:pattern ?COUNT:integer ?TYPE:string", keys=(0, 0, 0), flags="readonly")
    def _scan(self, client: _Client, args: list[bytes]) -> Any:
        cursor_id = parse_int(args[0])
        if cursor_id is None or cursor_id < 0:
            raise ReplyError("ERR invalid cursor")
        pattern = type_filter = None
        count = 10
        i = 1
        while i < len(args):
            option = args[i].upper()
            if i + 1 >= len(args):
                raise ReplyError(SYNTAX)
            if option == b"MATCH":
                pattern = glob_regex(args[i + 1])
            elif option == b"COUNT":
                count = _int_arg(args[i + 1])
                if count < 1:
                    raise ReplyError(SYNTAX)
            elif option == b"TYPE":
                type_filter = args[i + 1].decode("utf-8", "replace").lower()
            else:
                raise ReplyError(SYNTAX)
            i += 2
        if cursor_id == 0:
            # A snapshot of the key names: every key present for the whole iteration is returned
            # once, as Redis guarantees; keys added meanwhile may or may not be.
            scan = _Scan(sorted(self.data))
            cursor_id = next(self._scan_ids)
            self._scans[cursor_id] = scan
            while len(self._scans) > MAX_SCANS:
                self._scans.popitem(last=False)
        else:
            found = self._scans.get(cursor_id)
            if found is None:
                raise ReplyError(f"ERR invalid cursor (unknown or expired SCAN cursor {EMULATOR_NOTE[1:-1]})")
            scan = found
            self._scans.move_to_end(cursor_id)
        batch = scan.keys[scan.pos:scan.pos + count]
        scan.pos += len(batch)
        out = []
        for key in batch:
            value = self._alive(key)
            if value is None:
                continue
            if pattern is not None and not pattern.match(key):
                continue
            if type_filter is not None and _type_name(value) != type_filter:
                continue
            out.append(key)
        if scan.pos >= len(scan.keys):
            del self._scans[cursor_id]
            cursor_id = 0
        return [str(cursor_id).encode(), out]

    @command("rename", 3, "generic", "Renames a key and overwrites the destination.", "1.0.0",
             "key:key newkey:key", keys=(1, 2, 1), flags="write")
    def _rename(self, client: _Client, args: list[bytes]) -> Any:
        src, dst = args
        value = self._alive(src)
        if value is None:
            raise ReplyError("ERR no such key")
        if src == dst:
            return OK
        deadline = self.expires.get(src)
        self._delete(src)
        self._delete(dst)
        self.data[dst] = value
        if deadline is not None:
            self.expires[dst] = deadline
        return OK

    # ------------------------------------------------------------------ hashes

    @command("hset", -4, "hash", "Creates or modifies the value of a field in a hash.", "2.0.0",
             "key:key *data:block", flags="write denyoom fast")
    def _hset(self, client: _Client, args: list[bytes]) -> Any:
        if len(args) % 2 == 0:
            raise ReplyError("ERR wrong number of arguments for 'hset' command")
        h = self._get_hash(args[0], create=True)
        assert h is not None
        added = 0
        for i in range(1, len(args), 2):
            added += args[i] not in h
            h[args[i]] = args[i + 1]
        return added

    @command("hmset", -4, "hash", "Sets the values of multiple fields.", "2.0.0", "key:key *data:block",
             flags="write denyoom fast")
    def _hmset(self, client: _Client, args: list[bytes]) -> Any:
        if len(args) % 2 == 0:
            raise ReplyError("ERR wrong number of arguments for 'hmset' command")
        self._hset(client, args)
        return OK

    @command("hsetnx", 4, "hash", "Sets the value of a field in a hash only when the field doesn't exist.",
             "2.0.0", "key:key field:string value:string", flags="write denyoom fast")
    def _hsetnx(self, client: _Client, args: list[bytes]) -> Any:
        h = self._get_hash(args[0], create=True)
        assert h is not None
        if args[1] in h:
            return 0
        h[args[1]] = args[2]
        return 1

    @command("hget", 3, "hash", "Returns the value of a field in a hash.", "2.0.0", "key:key field:string",
             flags="readonly fast")
    def _hget(self, client: _Client, args: list[bytes]) -> Any:
        h = self._get_hash(args[0])
        return None if h is None else h.get(args[1])

    @command("hmget", -3, "hash", "Returns the values of all fields in a hash.", "2.0.0", "key:key *field:string",
             flags="readonly fast")
    def _hmget(self, client: _Client, args: list[bytes]) -> Any:
        h = self._get_hash(args[0]) or {}
        return [h.get(f) for f in args[1:]]

    @command("hgetall", 2, "hash", "Returns all fields and values in a hash.", "2.0.0", "key:key",
             flags="readonly")
    def _hgetall(self, client: _Client, args: list[bytes]) -> Any:
        return dict(self._get_hash(args[0]) or {})

    @command("hdel", -3, "hash", "Deletes one or more fields and their values from a hash.", "2.0.0",
             "key:key *field:string", flags="write fast")
    def _hdel(self, client: _Client, args: list[bytes]) -> Any:
        h = self._get_hash(args[0])
        if h is None:
            return 0
        removed = sum(1 for f in args[1:] if h.pop(f, None) is not None)
        if not h:
            self._delete(args[0])
        return removed

    @command("hexists", 3, "hash", "Determines whether a field exists in a hash.", "2.0.0", "key:key field:string",
             flags="readonly fast")
    def _hexists(self, client: _Client, args: list[bytes]) -> Any:
        h = self._get_hash(args[0])
        return int(h is not None and args[1] in h)

    @command("hkeys", 2, "hash", "Returns all fields in a hash.", "2.0.0", "key:key", flags="readonly")
    def _hkeys(self, client: _Client, args: list[bytes]) -> Any:
        return list(self._get_hash(args[0]) or {})

    @command("hvals", 2, "hash", "Returns all values in a hash.", "2.0.0", "key:key", flags="readonly")
    def _hvals(self, client: _Client, args: list[bytes]) -> Any:
        return list((self._get_hash(args[0]) or {}).values())

    @command("hlen", 2, "hash", "Returns the number of fields in a hash.", "2.0.0", "key:key",
             flags="readonly fast")
    def _hlen(self, client: _Client, args: list[bytes]) -> Any:
        return len(self._get_hash(args[0]) or {})

    @command("hincrby", 4, "hash", "Increments the integer value of a field in a hash by a number.", "2.0.0",
             "key:key field:string increment:integer", flags="write denyoom fast")
    def _hincrby(self, client: _Client, args: list[bytes]) -> Any:
        by = _int_arg(args[2])
        h = self._get_hash(args[0], create=True)
        assert h is not None
        old = h.get(args[1])
        current = 0 if old is None else parse_int(old)
        if current is None:
            raise ReplyError("ERR hash value is not an integer")
        total = current + by
        if not -(2**63) <= total < 2**63:
            raise ReplyError("ERR increment or decrement would overflow")
        h[args[1]] = str(total).encode()
        return total

    # ------------------------------------------------------------------ lists

    def _push(self, args: list[bytes], left: bool) -> int:
        lst = self._get_list(args[0], create=True)
        assert lst is not None
        if left:
            lst.extendleft(args[1:])
        else:
            lst.extend(args[1:])
        return len(lst)

    @command("lpush", -3, "list", "Prepends one or more elements to a list.", "1.0.0", "key:key *element:string",
             flags="write denyoom fast")
    def _lpush(self, client: _Client, args: list[bytes]) -> Any:
        return self._push(args, left=True)

    @command("rpush", -3, "list", "Appends one or more elements to a list.", "1.0.0", "key:key *element:string",
             flags="write denyoom fast")
    def _rpush(self, client: _Client, args: list[bytes]) -> Any:
        return self._push(args, left=False)

    def _pop(self, client: _Client, args: list[bytes], left: bool) -> Any:
        if len(args) > 2:
            raise ReplyError(f"ERR wrong number of arguments for '{'lpop' if left else 'rpop'}' command")
        count = None
        if len(args) == 2:
            count = parse_int(args[1])
            if count is None or count < 0:
                raise ReplyError("ERR value is out of range, must be positive")
        lst = self._get_list(args[0])
        if lst is None:
            return None if count is None else resp.NULL_ARRAY
        if count is None:
            item = lst.popleft() if left else lst.pop()
            out: Any = item
        else:
            out = [lst.popleft() if left else lst.pop() for _ in range(min(count, len(lst)))]
        if not lst:
            self._delete(args[0])
        return out

    @command("lpop", -2, "list", "Returns the first elements in a list after removing it.", "1.0.0",
             "key:key ?count:integer", flags="write fast")
    def _lpop(self, client: _Client, args: list[bytes]) -> Any:
        return self._pop(client, args, left=True)

    @command("rpop", -2, "list", "Returns and removes the last elements of a list.", "1.0.0",
             "key:key ?count:integer", flags="write fast")
    def _rpop(self, client: _Client, args: list[bytes]) -> Any:
        return self._pop(client, args, left=False)

    @command("lrange", 4, "list", "Returns a range of elements from a list.", "1.0.0",
             "key:key start:integer stop:integer", flags="readonly")
    def _lrange(self, client: _Client, args: list[bytes]) -> Any:
        start, stop = _int_arg(args[1]), _int_arg(args[2])
        lst = self._get_list(args[0])
        if lst is None:
            return []
        n = len(lst)
        start = max(0, start + n if start < 0 else start)
        stop = stop + n if stop < 0 else min(stop, n - 1)
        if start > stop or start >= n:
            return []
        return list(itertools.islice(lst, start, stop + 1))

    @command("llen", 2, "list", "Returns the length of a list.", "1.0.0", "key:key", flags="readonly fast")
    def _llen(self, client: _Client, args: list[bytes]) -> Any:
        return len(self._get_list(args[0]) or ())

    @command("lindex", 3, "list", "Returns an element from a list by its index.", "1.0.0", "key:key index:integer",
             flags="readonly")
    def _lindex(self, client: _Client, args: list[bytes]) -> Any:
        index = _int_arg(args[1])
        lst = self._get_list(args[0])
        if lst is None:
            return None
        if index < 0:
            index += len(lst)
        return lst[index] if 0 <= index < len(lst) else None


# =========================================================================== helpers


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


def _addr(info: Any) -> str:
    if isinstance(info, tuple) and len(info) >= 2:
        host = str(info[0])
        return f"[{host}]:{info[1]}" if ":" in host else f"{host}:{info[1]}"
    return str(info or "?")


def _type_name(value: Value | None) -> str:
    if value is None:
        return "none"
    if isinstance(value, bytes):
        return "string"
    if isinstance(value, dict):
        return "hash"
    return "list"


def _check_client_name(name: bytes, what: str = "Client names") -> None:
    # Redis: printable ASCII without spaces (33..126).
    if any(b < 33 or b > 126 for b in name):
        if what == "Client names":
            raise ReplyError("ERR Client names cannot contain spaces, newlines or special characters.")
        raise ReplyError(f"ERR {what} cannot contain spaces, newlines or special characters.")


_ACL_CATEGORIES = {"string": "@string", "hash": "@hash", "list": "@list", "generic": "@keyspace",
                   "connection": "@connection", "server": "@admin", "transactions": "@transaction"}


def _command_info(spec: _Spec) -> list[Any]:
    """One COMMAND / COMMAND INFO entry (Redis 7 layout)."""
    flags = [SimpleString(f) for f in spec.flags]
    cats = [SimpleString(_ACL_CATEGORIES[spec.group])]
    if "readonly" in spec.flags:
        cats.append(SimpleString("@read"))
    if "write" in spec.flags:
        cats.append(SimpleString("@write"))
    if "fast" in spec.flags:
        cats.append(SimpleString("@fast"))
    subs = [[f"{spec.name}|{s}", -2, [], 0, 0, 0, [], [], [], []] for s in spec.subcommands]
    return [spec.name, spec.arity, flags, *spec.keys, cats, [], [], subs]


def _argument_docs(arguments: tuple[str, ...]) -> list[dict[str, Any]]:
    docs = []
    for text in arguments:
        flags = []
        for prefix in itertools.takewhile(lambda ch: ch in "?*", text):
            flags.append(SimpleString("optional" if prefix == "?" else "multiple"))
        name, _, kind = text.lstrip("?*").partition(":")
        entry: dict[str, Any] = {"name": name.lower(), "type": kind}
        if kind in ("block", "oneof"):
            entry = {"name": name.lower(), "type": "string"}  # details not modelled: shown as one value
        if kind == "pure-token" or name.isupper():
            entry["token"] = name
        if flags:
            entry["flags"] = set(flags)
        docs.append(entry)
    return docs


def _command_docs(spec: _Spec) -> dict[str, Any]:
    """One COMMAND DOCS entry: what redis-cli reads for its hints and HELP."""
    doc: dict[str, Any] = {"summary": spec.summary, "since": spec.since, "group": spec.group,
                           "complexity": "O(1)"}
    if spec.arguments:
        doc["arguments"] = _argument_docs(spec.arguments)
    if spec.subcommands:
        doc["subcommands"] = {f"{spec.name}|{s}": {"summary": f"{spec.name.upper()} {s.upper()}",
                                                   "since": spec.since, "group": spec.group}
                              for s in spec.subcommands}
    return doc
