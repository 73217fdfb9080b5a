"""An emulated Redis server: RESP2/RESP3, AUTH, connections, dispatch, the server commands.

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

The command table and shared rules are in :mod:`~tpemu.agent.backends.redis_commands`, the
keyspace with its key, expiry and string commands in :mod:`~tpemu.agent.backends.redis_keyspace`,
the hash and list commands in :mod:`~tpemu.agent.backends.redis_hashes` and
:mod:`~tpemu.agent.backends.redis_lists`.

Anything else: ``ERR unknown command …`` with Redis's wording plus ``(not supported by the
tpemu emulator)``; the connection stays usable. One database (0), shared by the backend's
connections. ``users`` maps ACL user names to passwords (``AUTH pass`` is user ``default``);
``users=None`` needs no AUTH, like a Redis without ``requirepass``. Behind the Database Service
(a :class:`~tpemu.agent.backends.base.Session`) no password is needed and AUTH/HELLO may name
only the session's database user.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from tpemu.agent.backends.base import Session
from tpemu.agent.backends.redis_commands import (
    _COMMANDS,
    EMULATOR_NOTE,
    FLUSH_AT,
    OK,
    SYNTAX,
    WRONGPASS,
    Client,
    ReplyError,
    Spec,
    _addr,
    _check_client_name,
    _command_docs,
    _command_info,
    _int_arg,
    command,
    parse_int,
)
from tpemu.agent.backends.redis_hashes import HashCommands
from tpemu.agent.backends.redis_lists import ListCommands
from tpemu.logs import RateLimiter
from tpemu.wire import resp
from tpemu.wire.errors import WireError
from tpemu.wire.resp import Error, SimpleString, Verbatim

logger = logging.getLogger(__name__)

__all__ = ["RedisBackend"]

_rejections = RateLimiter()

class RedisBackend(HashCommands, ListCommands):
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
        super().__init__(max_bulk)
        self.users = dict(users) if users is not None else None
        self.version = version
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self._clients: dict[int, Client] = {}
        self._client_ids = itertools.count(1)
        self._run_id = os.urandom(20).hex()
        self._started = time.monotonic()
        self._total_connections = 0
        self._total_commands = 0
        self._sweeper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ connection loop

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     session: Session | None = None) -> None:
        """Serve one client until QUIT, EOF, a protocol error or a timeout; closes ``writer``."""
        client = Client(next(self._client_ids), _addr(writer.get_extra_info("peername")),
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

    async def _serve(self, client: Client, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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

    # ------------------------------------------------------------------ dispatch

    def _execute(self, client: Client, cmd: resp.Command) -> tuple[Any, bool]:
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

    def _call(self, client: Client, spec: Spec, args: list[bytes]) -> Any:
        try:
            return spec.handler(self, client, args)
        except ReplyError as exc:
            return Error(exc.message)
        except Exception as exc:  # a local fault: the client gets an error, the log the traceback
            logger.exception("redis client=%d: internal error in %s", client.id, spec.name)
            return Error(f"ERR internal error in the tpemu emulator: {exc!r}")

    # ------------------------------------------------------------------ connection commands

    def _check_session_user(self, client: Client, user: str) -> None:
        assert client.session is not None
        if user not in (client.session.db_user, "default"):
            raise ReplyError(f"WRONGPASS this connection was authenticated by the Database Service as "
                             f"'{client.session.db_user}', not '{user}'")

    def _authenticate(self, client: Client, user: str | None, password: bytes) -> None:
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
    def _auth(self, client: Client, args: list[bytes]) -> Any:
        if len(args) > 2:
            raise ReplyError(SYNTAX)
        user = args[0].decode("utf-8", "replace") if len(args) == 2 else None
        self._authenticate(client, user, args[-1])
        return OK

    @command("hello", -1, "connection", "Handshakes with the Redis server.", "6.0.0",
             "?protover:integer ?AUTH:block ?SETNAME:string", keys=(0, 0, 0),
             flags="noscript loading stale fast no-auth allow-busy")
    def _hello(self, client: Client, args: list[bytes]) -> Any:
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
    def _ping(self, client: Client, args: list[bytes]) -> Any:
        if len(args) > 1:
            raise ReplyError("ERR wrong number of arguments for 'ping' command")
        return args[0] if args else SimpleString("PONG")

    @command("echo", 2, "connection", "Returns the given string.", "1.0.0", "message:string", keys=(0, 0, 0),
             flags="fast")
    def _echo(self, client: Client, args: list[bytes]) -> Any:
        return args[0]

    @command("select", 2, "connection", "Changes the selected database.", "1.0.0", "index:integer",
             keys=(0, 0, 0), flags="loading stale fast")
    def _select(self, client: Client, args: list[bytes]) -> Any:
        index = _int_arg(args[0])
        if index != 0:
            raise ReplyError(f"ERR DB index is out of range {EMULATOR_NOTE[:-1]}: it has only database 0)")
        return OK

    @command("quit", -1, "connection", "Closes the connection.", "1.0.0", keys=(0, 0, 0),
             flags="noscript loading stale fast no-auth allow-busy")
    def _quit(self, client: Client, args: list[bytes]) -> Any:
        return OK

    @command("reset", 1, "connection", "Resets the connection.", "6.2.0", keys=(0, 0, 0),
             flags="noscript loading stale fast no-auth allow-busy")
    def _reset(self, client: Client, args: list[bytes]) -> Any:
        client.multi, client.multi_failed = None, False
        client.protocol = 2
        client.name = b""
        if client.session is None:
            client.user = None if self.users is not None else client.user
        return SimpleString("RESET")

    @command("client", -2, "connection", "A container for client connection commands.", "2.4.0",
             keys=(0, 0, 0), flags="", subcommands="setname getname id setinfo info list")
    def _client(self, client: Client, args: list[bytes]) -> Any:
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

    def _client_line(self, c: Client) -> str:
        now = time.monotonic()
        return (f"id={c.id} addr={c.addr} laddr={c.laddr} fd=-1 name={c.name.decode('utf-8', 'replace')} "
                f"age={int(now - c.created)} idle={int(now - c.last_active)} flags=N db=0 sub=0 psub=0 ssub=0 "
                f"multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 "
                f"events=r cmd={c.last_command} user={c.user or 'default'} redir=-1 resp={c.protocol} "
                f"lib-name={c.lib_name.decode('utf-8', 'replace')} lib-ver={c.lib_ver.decode('utf-8', 'replace')}")

    # ------------------------------------------------------------------ transactions (no WATCH)

    @command("multi", 1, "transactions", "Starts a transaction.", "1.2.0", keys=(0, 0, 0),
             flags="noscript loading stale fast allow-busy")
    def _multi(self, client: Client, args: list[bytes]) -> Any:
        if client.multi is not None:
            raise ReplyError("ERR MULTI calls can not be nested")
        client.multi, client.multi_failed = [], False
        return OK

    @command("exec", 1, "transactions", "Executes all commands in a transaction.", "1.2.0", keys=(0, 0, 0),
             flags="noscript loading stale skip-slowlog")
    def _exec(self, client: Client, args: list[bytes]) -> Any:
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
    def _discard(self, client: Client, args: list[bytes]) -> Any:
        if client.multi is None:
            raise ReplyError("ERR DISCARD without MULTI")
        client.multi, client.multi_failed = None, False
        return OK

    # ------------------------------------------------------------------ server commands

    @command("info", -1, "server", "Returns information and statistics about the server.", "1.0.0",
             "*?section:string", keys=(0, 0, 0), flags="loading stale")
    def _info(self, client: Client, args: list[bytes]) -> Any:
        sections = self._info_sections(client)
        wanted = {a.decode("utf-8", "replace").lower() for a in args} or {"default"}
        if wanted & {"all", "everything", "default"}:
            chosen = list(sections)
        else:
            chosen = [s for s in sections if s in wanted]
        text = "\r\n".join(f"# {name.capitalize()}\r\n" + "".join(f"{k}:{v}\r\n" for k, v in sections[name])
                           for name in chosen)
        return Verbatim("txt", text)

    def _info_sections(self, client: Client) -> dict[str, list[tuple[str, Any]]]:
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
    def _command(self, client: Client, args: list[bytes]) -> Any:
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
    def _dbsize(self, client: Client, args: list[bytes]) -> Any:
        return len(self._keys())

    @command("flushdb", -1, "server", "Removes all keys from the current database.", "1.0.0", "?flush-type:string",
             keys=(0, 0, 0), flags="write")
    def _flushdb(self, client: Client, args: list[bytes]) -> Any:
        if len(args) > 1 or (args and args[0].lower() not in (b"async", b"sync")):
            raise ReplyError(SYNTAX)
        self.data.clear()
        self.expires.clear()
        self._scans.clear()
        return OK

    @command("flushall", -1, "server", "Removes all keys from all databases.", "1.0.0", "?flush-type:string",
             keys=(0, 0, 0), flags="write")
    def _flushall(self, client: Client, args: list[bytes]) -> Any:
        return self._flushdb(client, args)
