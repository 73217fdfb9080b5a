"""The emulated Redis's list commands: LPUSH, RPUSH, LPOP, RPOP, LRANGE, LLEN, LINDEX.

Redis's ``t_list.c``, each command after its page of the Redis command reference (redis.io/commands)
for arity, options, replies and error wording. A list is a ``deque`` in the :class:`Keyspace`; the
last element popped deletes the key.
"""

from __future__ import annotations

import itertools
from typing import Any

from tpemu.agent.backends.redis_commands import Client, ReplyError, _int_arg, command, parse_int
from tpemu.agent.backends.redis_keyspace import Keyspace
from tpemu.wire import resp


class ListCommands(Keyspace):
    """The list commands, on the keyspace's data."""


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
    def _lpush(self, client: Client, args: list[bytes]) -> Any:
        return self._push(args, left=True)

    @command("rpush", -3, "list", "Appends one or more elements to a list.", "1.0.0", "key:key *element:string",
             flags="write denyoom fast")
    def _rpush(self, client: Client, args: list[bytes]) -> Any:
        return self._push(args, left=False)

    def _pop(self, client: Client, args: list[bytes], left: bool) -> Any:
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
    def _lpop(self, client: Client, args: list[bytes]) -> Any:
        return self._pop(client, args, left=True)

    @command("rpop", -2, "list", "Returns and removes the last elements of a list.", "1.0.0",
             "key:key ?count:integer", flags="write fast")
    def _rpop(self, client: Client, args: list[bytes]) -> Any:
        return self._pop(client, args, left=False)

    @command("lrange", 4, "list", "Returns a range of elements from a list.", "1.0.0",
             "key:key start:integer stop:integer", flags="readonly")
    def _lrange(self, client: Client, args: list[bytes]) -> Any:
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
    def _llen(self, client: Client, args: list[bytes]) -> Any:
        return len(self._get_list(args[0]) or ())

    @command("lindex", 3, "list", "Returns an element from a list by its index.", "1.0.0", "key:key index:integer",
             flags="readonly")
    def _lindex(self, client: Client, args: list[bytes]) -> Any:
        index = _int_arg(args[1])
        lst = self._get_list(args[0])
        if lst is None:
            return None
        if index < 0:
            index += len(lst)
        return lst[index] if 0 <= index < len(lst) else None


__all__ = ["ListCommands"]
