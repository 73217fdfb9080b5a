"""The emulated Redis's keyspace and its commands on keys, expiry and strings.

One database (0) of ``bytes`` / ``dict`` / ``deque`` values with deadlines in monotonic
milliseconds; expired keys go when touched (lazy expiry) and by Redis's active expiry cycle
(``expire.c``: 20 random keys with a TTL per round, again while more than a quarter were
expired). Each command follows its page of the Redis command reference (redis.io/commands) for
arity, options, replies and error wording. :class:`Keyspace` holds the data; the hash and list
commands (:mod:`~tpemu.agent.backends.redis_hashes`, :mod:`~tpemu.agent.backends.redis_lists`) work on
it, and the server (:class:`tpemu.agent.backends.redis.RedisBackend`) adds connections, dispatch and
the connection/server commands on top.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from tpemu.agent.backends.redis_commands import (
    EMULATOR_NOTE,
    MAX_SCANS,
    NOT_INTEGER,
    OK,
    SYNTAX,
    WRONGTYPE,
    Client,
    ReplyError,
    Value,
    _int_arg,
    _now_ms,
    _type_name,
    command,
    glob_regex,
    parse_int,
)
from tpemu.wire import resp
from tpemu.wire.resp import SimpleString


@dataclass
class _Scan:
    keys: list[bytes]
    pos: int = 0

class Keyspace:
    """The data of one emulated Redis database and the commands that read and change it."""

    def __init__(self, max_bulk: int = resp.MAX_BULK) -> None:
        #: The largest string value (Redis's proto-max-bulk-len).
        self.max_bulk = max_bulk
        self.data: dict[bytes, Value] = {}
        self.expires: dict[bytes, int] = {}  # key -> deadline, monotonic milliseconds
        self._scans: OrderedDict[int, _Scan] = OrderedDict()
        self._scan_ids = itertools.count(1)
        self._expired_keys = 0

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

    # ------------------------------------------------------------------ strings

    @command("get", 2, "string", "Returns the string value of a key.", "1.0.0", "key:key", flags="readonly fast")
    def _get(self, client: Client, args: list[bytes]) -> Any:
        return self._get_string(args[0])

    @command("set", -3, "string", "Sets the string value of a key, ignoring its type.", "1.0.0",
             "key:key value:string ?condition:oneof ?GET:pure-token ?expiration:oneof", flags="write denyoom")
    def _set(self, client: Client, args: list[bytes]) -> Any:
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
    def _setnx(self, client: Client, args: list[bytes]) -> Any:
        if self._alive(args[0]) is not None:
            return 0
        self._set_string(args[0], args[1])
        return 1

    @command("setex", 4, "string", "Sets the string value and expiration time of a key.", "2.0.0",
             "key:key seconds:integer value:string", flags="write denyoom")
    def _setex(self, client: Client, args: list[bytes]) -> Any:
        deadline = self._expire_deadline(_int_arg(args[1]), b"EX", "setex")
        self._set_string(args[0], args[2])
        self.expires[args[0]] = deadline
        return OK

    @command("psetex", 4, "string", "Sets both string value and expiration time in milliseconds of a key.",
             "2.6.0", "key:key milliseconds:integer value:string", flags="write denyoom")
    def _psetex(self, client: Client, args: list[bytes]) -> Any:
        deadline = self._expire_deadline(_int_arg(args[1]), b"PX", "psetex")
        self._set_string(args[0], args[2])
        self.expires[args[0]] = deadline
        return OK

    @command("getset", 3, "string", "Returns the previous string value of a key after setting it to a new value.",
             "1.0.0", "key:key value:string", flags="write denyoom fast")
    def _getset(self, client: Client, args: list[bytes]) -> Any:
        old = self._get_string(args[0])
        self._set_string(args[0], args[1])
        return old

    @command("getdel", 2, "string", "Returns the string value of a key after deleting the key.", "6.2.0",
             "key:key", flags="write fast")
    def _getdel(self, client: Client, args: list[bytes]) -> Any:
        old = self._get_string(args[0])
        if old is not None:
            self._delete(args[0])
        return old

    @command("mget", -2, "string", "Atomically returns the string values of one or more keys.", "1.0.0",
             "*key:key", keys=(1, -1, 1), flags="readonly fast")
    def _mget(self, client: Client, args: list[bytes]) -> Any:
        out = []
        for key in args:
            value = self._alive(key)
            out.append(value if isinstance(value, bytes) else None)
        return out

    @command("mset", -3, "string", "Atomically creates or modifies the string values of one or more keys.",
             "1.0.1", "*data:block", keys=(1, -1, 2), flags="write denyoom")
    def _mset(self, client: Client, args: list[bytes]) -> Any:
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
    def _incr1(self, client: Client, args: list[bytes]) -> Any:
        return self._incr(args[0], 1)

    @command("decr", 2, "string", "Decrements the integer value of a key by one.", "1.0.0", "key:key",
             flags="write denyoom fast")
    def _decr1(self, client: Client, args: list[bytes]) -> Any:
        return self._incr(args[0], -1)

    @command("incrby", 3, "string", "Increments the integer value of a key by a number.", "1.0.0",
             "key:key increment:integer", flags="write denyoom fast")
    def _incrby(self, client: Client, args: list[bytes]) -> Any:
        return self._incr(args[0], _int_arg(args[1]))

    @command("decrby", 3, "string", "Decrements a number from the integer value of a key.", "1.0.0",
             "key:key decrement:integer", flags="write denyoom fast")
    def _decrby(self, client: Client, args: list[bytes]) -> Any:
        by = _int_arg(args[1])
        if by == -(2**63):
            raise ReplyError("ERR decrement would overflow")
        return self._incr(args[0], -by)

    @command("append", 3, "string", "Appends a string to the value of a key.", "2.0.0", "key:key value:string",
             flags="write denyoom fast")
    def _append(self, client: Client, args: list[bytes]) -> Any:
        old = self._get_string(args[0]) or b""
        if len(old) + len(args[1]) > self.max_bulk:
            raise ReplyError(f"ERR string exceeds maximum allowed size ({self.max_bulk} bytes in the tpemu emulator)")
        self._set_string(args[0], old + args[1], keep_ttl=True)
        return len(old) + len(args[1])

    @command("strlen", 2, "string", "Returns the length of a string value.", "2.2.0", "key:key",
             flags="readonly fast")
    def _strlen(self, client: Client, args: list[bytes]) -> Any:
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
    def _expire_s(self, client: Client, args: list[bytes]) -> Any:
        return self._expire(args, 1000, "expire")

    @command("pexpire", -3, "generic", "Sets the expiration time of a key in milliseconds.", "2.6.0",
             "key:key milliseconds:integer ?condition:oneof", flags="write fast")
    def _expire_ms(self, client: Client, args: list[bytes]) -> Any:
        return self._expire(args, 1, "pexpire")

    def _ttl_ms(self, key: bytes) -> int:
        if self._alive(key) is None:
            return -2
        deadline = self.expires.get(key)
        return -1 if deadline is None else max(0, deadline - _now_ms())

    @command("ttl", 2, "generic", "Returns the expiration time in seconds of a key.", "1.0.0", "key:key",
             flags="readonly fast")
    def _ttl(self, client: Client, args: list[bytes]) -> Any:
        ms = self._ttl_ms(args[0])
        return ms if ms < 0 else (ms + 500) // 1000

    @command("pttl", 2, "generic", "Returns the expiration time in milliseconds of a key.", "2.6.0", "key:key",
             flags="readonly fast")
    def _pttl(self, client: Client, args: list[bytes]) -> Any:
        return self._ttl_ms(args[0])

    @command("persist", 2, "generic", "Removes the expiration time of a key.", "2.2.0", "key:key",
             flags="write fast")
    def _persist(self, client: Client, args: list[bytes]) -> Any:
        if self._alive(args[0]) is None:
            return 0
        return 1 if self.expires.pop(args[0], None) is not None else 0

    # ------------------------------------------------------------------ keys

    @command("del", -2, "generic", "Deletes one or more keys.", "1.0.0", "*key:key", keys=(1, -1, 1),
             flags="write")
    def _del(self, client: Client, args: list[bytes]) -> Any:
        return sum(1 for key in args if self._alive(key) is not None and self._delete(key))

    @command("unlink", -2, "generic", "Asynchronously deletes one or more keys.", "4.0.0", "*key:key",
             keys=(1, -1, 1), flags="write fast")
    def _unlink(self, client: Client, args: list[bytes]) -> Any:
        return self._del(client, args)

    @command("exists", -2, "generic", "Determines whether one or more keys exist.", "1.0.0", "*key:key",
             keys=(1, -1, 1), flags="readonly fast")
    def _exists(self, client: Client, args: list[bytes]) -> Any:
        return sum(1 for key in args if self._alive(key) is not None)

    @command("type", 2, "generic", "Determines the type of value stored at a key.", "1.0.0", "key:key",
             flags="readonly fast")
    def _type(self, client: Client, args: list[bytes]) -> Any:
        return SimpleString(_type_name(self._alive(args[0])))

    @command("keys", 2, "generic", "Returns all key names that match a pattern.", "1.0.0", "pattern:pattern",
             keys=(0, 0, 0), flags="readonly")
    def _keys_cmd(self, client: Client, args: list[bytes]) -> Any:
        rx = glob_regex(args[0])
        return [k for k in self._keys() if rx.match(k)]

    @command("scan", -2, "generic", "Iterates over the key names in the database.", "2.8.0",
             "cursor:integer ?MATCH:pattern ?COUNT:integer ?TYPE:string", keys=(0, 0, 0), flags="readonly")
    def _scan(self, client: Client, args: list[bytes]) -> Any:
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
    def _rename(self, client: Client, args: list[bytes]) -> Any:
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


__all__ = ["Keyspace"]
