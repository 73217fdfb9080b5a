"""The emulated Redis's hash commands: HSET, HMSET, HSETNX, HGET, HMGET, HGETALL, HDEL, HEXISTS,
HKEYS, HVALS, HLEN, HINCRBY (pure: the keyspace's state in, a reply out).

Redis's ``t_hash.c``, each command after its page of the Redis command reference (redis.io/commands)
for arity, replies and error wording. A hash is a ``dict`` of fields in the :class:`Keyspace`; the
last field deleted deletes the key.
"""

from __future__ import annotations

from typing import Any

from tpemu.agent.backends.redis_commands import OK, Client, ReplyError, _int_arg, command, parse_int
from tpemu.agent.backends.redis_keyspace import Keyspace


class HashCommands(Keyspace):
    """The hash commands, on the keyspace's data."""


    @command("hset", -4, "hash", "Creates or modifies the value of a field in a hash.", "2.0.0",
             "key:key *data:block", flags="write denyoom fast")
    def _hset(self, client: Client, args: list[bytes]) -> Any:
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
    def _hmset(self, client: Client, args: list[bytes]) -> Any:
        if len(args) % 2 == 0:
            raise ReplyError("ERR wrong number of arguments for 'hmset' command")
        self._hset(client, args)
        return OK

    @command("hsetnx", 4, "hash", "Sets the value of a field in a hash only when the field doesn't exist.",
             "2.0.0", "key:key field:string value:string", flags="write denyoom fast")
    def _hsetnx(self, client: Client, args: list[bytes]) -> Any:
        h = self._get_hash(args[0], create=True)
        assert h is not None
        if args[1] in h:
            return 0
        h[args[1]] = args[2]
        return 1

    @command("hget", 3, "hash", "Returns the value of a field in a hash.", "2.0.0", "key:key field:string",
             flags="readonly fast")
    def _hget(self, client: Client, args: list[bytes]) -> Any:
        h = self._get_hash(args[0])
        return None if h is None else h.get(args[1])

    @command("hmget", -3, "hash", "Returns the values of all fields in a hash.", "2.0.0", "key:key *field:string",
             flags="readonly fast")
    def _hmget(self, client: Client, args: list[bytes]) -> Any:
        h = self._get_hash(args[0]) or {}
        return [h.get(f) for f in args[1:]]

    @command("hgetall", 2, "hash", "Returns all fields and values in a hash.", "2.0.0", "key:key",
             flags="readonly")
    def _hgetall(self, client: Client, args: list[bytes]) -> Any:
        return dict(self._get_hash(args[0]) or {})

    @command("hdel", -3, "hash", "Deletes one or more fields and their values from a hash.", "2.0.0",
             "key:key *field:string", flags="write fast")
    def _hdel(self, client: Client, args: list[bytes]) -> Any:
        h = self._get_hash(args[0])
        if h is None:
            return 0
        removed = sum(1 for f in args[1:] if h.pop(f, None) is not None)
        if not h:
            self._delete(args[0])
        return removed

    @command("hexists", 3, "hash", "Determines whether a field exists in a hash.", "2.0.0", "key:key field:string",
             flags="readonly fast")
    def _hexists(self, client: Client, args: list[bytes]) -> Any:
        h = self._get_hash(args[0])
        return int(h is not None and args[1] in h)

    @command("hkeys", 2, "hash", "Returns all fields in a hash.", "2.0.0", "key:key", flags="readonly")
    def _hkeys(self, client: Client, args: list[bytes]) -> Any:
        return list(self._get_hash(args[0]) or {})

    @command("hvals", 2, "hash", "Returns all values in a hash.", "2.0.0", "key:key", flags="readonly")
    def _hvals(self, client: Client, args: list[bytes]) -> Any:
        return list((self._get_hash(args[0]) or {}).values())

    @command("hlen", 2, "hash", "Returns the number of fields in a hash.", "2.0.0", "key:key",
             flags="readonly fast")
    def _hlen(self, client: Client, args: list[bytes]) -> Any:
        return len(self._get_hash(args[0]) or {})

    @command("hincrby", 4, "hash", "Increments the integer value of a field in a hash by a number.", "2.0.0",
             "key:key field:string increment:integer", flags="write denyoom fast")
    def _hincrby(self, client: Client, args: list[bytes]) -> Any:
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


__all__ = ["HashCommands"]
