"""An emulated MongoDB server: wire protocol, in-memory collections, SCRAM (glue + engine).

Speaks what MongoDB 7.0 speaks to drivers (wire version 21): OP_MSG for everything, the legacy
OP_QUERY ``isMaster`` handshake, answers in OP_MSG/OP_REPLY (codec: :mod:`tpemu.wire.mongo`).
Follows the server side of the MongoDB specifications: "Handshake" (hello/isMaster fields),
"Find, getMore and killCursors Commands", "Driver CRUD" (the insert/update/delete/aggregate
command shapes drivers send), "Authentication" (SCRAM-SHA-1/-256 over saslStart/saslContinue,
speculative authentication in the handshake, RFC 5802 and RFC 7677).

The emulated subset:

* server: hello/isMaster/ismaster, ping, buildInfo, getParameter (featureCompatibilityVersion),
  getCmdLineOpts, serverStatus (minimal), connectionStatus, whatsmyuri, getLog,
  endSessions/refreshSessions/killSessions (accepted, sessions are not tracked), logout;
* data: listDatabases, listCollections, listIndexes (the ``_id_`` index only), create, drop,
  dropDatabase, insert, find, getMore, killCursors, update, delete, count, distinct,
  findAndModify, aggregate with ``$match $sort $skip $limit $project $count`` and a ``$group``
  on a constant ``_id`` with ``$sum`` (what ``count_documents`` sends);
* queries: equality, ``$eq $ne $gt $gte $lt $lte $in $nin $exists $not $regex``,
  ``$and $or $nor``, dotted paths through documents and arrays, BSON comparison order;
  projections (inclusion or exclusion), sort, skip, limit, batchSize;
* updates: ``$set $unset $inc $push`` (with ``$each``), ``$setOnInsert``, replacements,
  ``upsert``, ``multi``.

Everything else gets the error a real server gives, worded to say the emulator does not
support it (unknown commands: code 59 CommandNotFound); the connection stays usable.

Storage is per backend instance and shared by its connections (like one mongod), in memory.
Cursors are global too (drivers may send getMore on another pooled connection), owned by the
user who opened them, capped at ``max_cursors`` (least recently used are closed first) and
closed after ``cursor_timeout`` seconds idle, as mongod does after 10 minutes.

Authentication: ``users`` maps user names to passwords for every database (mongod keeps users
per database; the emulator accepts them on any ``authSource``). ``users=None`` trusts everyone.
Behind the Database Service (a :class:`~tpemu.agent.backends.base.Session`), the client is
already authenticated: no password is asked, the user is the session's, and a session limited to
one database may not run data commands on another one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import itertools
import logging
import math
import os
import re
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tpemu.agent.backends.base import Session
from tpemu.errors import PeerFault
from tpemu.logs import TRACE, RateLimiter, hexdump
from tpemu.wire import bson, mongo
from tpemu.wire.bson import Binary, Int64, ObjectId, Regex
from tpemu.wire.errors import LimitExceeded, WireError
from tpemu.wire.scram import (
    DIGESTS,
    ScramError,
    ScramSecret,
    ScramServer,
    make_secret,
    mongodb_sha1_password,
    parse_client_first,
)

logger = logging.getLogger(__name__)

WIRE_VERSION = 21  # MongoDB 7.0; pymongo 4.x needs at least 9 (MongoDB 4.4)
MAX_WRITE_BATCH = 100_000
DEFAULT_BATCH = 101  # mongod's default first batch
#: A reply batch stops growing past this many bytes of documents (mongod: 16 MiB per reply).
MAX_BATCH_BYTES = bson.MAX_DOCUMENT_SIZE - 64 * 1024
SESSION_TIMEOUT_MINUTES = 30
EMULATOR_NOTE = "not supported by the tpemu emulator"

# Commands that need no authentication, and that a database-limited session may run anywhere.
_OPEN_COMMANDS = frozenset({
    "hello", "isMaster", "ismaster", "ping", "buildInfo", "buildinfo", "saslStart", "saslContinue",
    "logout", "endSessions", "connectionStatus", "whatsmyuri",
})
_SERVER_COMMANDS = _OPEN_COMMANDS | {
    "getParameter", "getCmdLineOpts", "serverStatus", "getLog", "listDatabases", "refreshSessions",
    "killSessions", "killCursors", "getMore",
}


_rejections = RateLimiter()


def _warn_rejected(peer: str, message: str, *args: Any, data: bytes = b"") -> None:
    """A WARNING about a client sent away, rate-limited per client host; a hexdump at TRACE."""
    allowed, suppressed = _rejections.allow(peer.rsplit(":", 1)[0])
    if allowed:
        if suppressed:
            message += " (%d similar warnings suppressed)"
            args = (*args, suppressed)
        logger.warning(message, *args)
    if data and logger.isEnabledFor(TRACE):
        logger.log(TRACE, "mongodb peer=%s: first bytes of the rejected message:\n%s", peer, hexdump(data))


class CommandError(PeerFault):
    """A command failed: becomes ``{ok: 0, errmsg, code, codeName}``."""

    def __init__(self, code: int, code_name: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.code_name = code_name
        self.message = message

    def reply(self) -> dict[str, Any]:
        return {"ok": 0.0, "errmsg": self.message, "code": self.code, "codeName": self.code_name}


def _bad_value(message: str) -> CommandError:
    return CommandError(2, "BadValue", message)


def _unsupported(what: str) -> CommandError:
    return CommandError(2, "BadValue", f"{what} is {EMULATOR_NOTE}")


# =========================================================================== BSON order and values

_MISSING: Any = object()


def _type_rank(v: Any) -> int:
    """MongoDB's canonical type order (``BSONType`` comparison order)."""
    if v is bson.MIN_KEY:
        return 1
    if v is None or v is _MISSING:
        return 5
    if isinstance(v, bool):
        return 40
    if isinstance(v, int | float | bson.Decimal128):
        return 10
    if isinstance(v, str):
        return 15
    if isinstance(v, dict):
        return 20
    if isinstance(v, list):
        return 25
    if isinstance(v, bytes | Binary):
        return 30
    if isinstance(v, ObjectId):
        return 35
    if isinstance(v, dt.datetime | bson.DatetimeMS):
        return 45
    if isinstance(v, bson.Timestamp):
        return 47
    if isinstance(v, Regex):
        return 50
    if v is bson.MAX_KEY:
        return 127
    return 100


def _cmp_scalar(a: Any, b: Any) -> int:
    return int(a > b) - int(a < b)


def compare(a: Any, b: Any) -> int:
    """Compare two BSON values the way MongoDB sorts them (-1, 0, 1)."""
    ra, rb = _type_rank(a), _type_rank(b)
    if ra != rb:
        return _cmp_scalar(ra, rb)
    if ra == 10:
        if isinstance(a, bson.Decimal128) or isinstance(b, bson.Decimal128):
            # decimal128 is kept raw; only identical values compare equal.
            return 0 if a == b else _cmp_scalar(repr(a), repr(b))
        a_nan, b_nan = _is_nan(a), _is_nan(b)  # NaN sorts below every number and equals itself
        if a_nan or b_nan:
            return _cmp_scalar(not a_nan, not b_nan)
        return _cmp_scalar(a, b)
    if ra in (15, 35, 40):
        return _cmp_scalar(a.raw if ra == 35 else a, b.raw if ra == 35 else b)
    if ra == 20:
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            c = _cmp_scalar(_type_rank(va), _type_rank(vb)) or _cmp_scalar(ka, kb) or compare(va, vb)
            if c:
                return c
        return _cmp_scalar(len(a), len(b))
    if ra == 25:
        for va, vb in zip(a, b):
            c = compare(va, vb)
            if c:
                return c
        return _cmp_scalar(len(a), len(b))
    if ra == 30:
        ta = (len(_bin_data(a)), _bin_subtype(a), _bin_data(a))
        tb = (len(_bin_data(b)), _bin_subtype(b), _bin_data(b))
        return _cmp_scalar(ta, tb)
    if ra == 45:
        return _cmp_scalar(_millis(a), _millis(b))
    if ra == 47:
        return _cmp_scalar((a.time, a.inc), (b.time, b.inc))
    if ra == 50:
        return _cmp_scalar((a.pattern, a.flags), (b.pattern, b.flags))
    return 0


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _bin_data(v: bytes | Binary) -> bytes:
    return v if isinstance(v, bytes) else v.data


def _bin_subtype(v: bytes | Binary) -> int:
    return 0 if isinstance(v, bytes) else v.subtype


def _millis(v: dt.datetime | bson.DatetimeMS) -> int:
    return v.millis if isinstance(v, bson.DatetimeMS) else bson.datetime_to_millis(v)


def _equal(a: Any, b: Any) -> bool:
    return compare(a, b) == 0


def _id_key(v: Any) -> Any:
    """A hashable key equal for values MongoDB treats as the same ``_id`` (1 and 1.0 are)."""
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, int | float):
        return ("num", int(v) if isinstance(v, float) and v.is_integer() else v)
    if isinstance(v, dict):
        return ("doc", tuple((k, _id_key(x)) for k, x in v.items()))
    if isinstance(v, list):
        return ("arr", tuple(_id_key(x) for x in v))
    if isinstance(v, bytes):
        return ("bin", 0, v)
    if isinstance(v, Binary):
        return ("bin", v.subtype, v.data)
    if isinstance(v, dt.datetime):
        return ("date", bson.datetime_to_millis(v))
    if isinstance(v, bson.DatetimeMS):
        return ("date", v.millis)
    return (type(v).__name__, v)


def _show(v: Any) -> str:
    """A value in mongod's shell-like notation, for error messages."""
    if isinstance(v, str):
        return '"' + v.replace('"', '\\"') + '"'
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{k}: {_show(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[ " + ", ".join(_show(x) for x in v) + " ]" if v else "[]"
    if isinstance(v, ObjectId):
        return f"ObjectId('{v.raw.hex()}')"
    if isinstance(v, dt.datetime):
        return f"new Date({bson.datetime_to_millis(v)})"
    return repr(v)


def _type_name(v: Any) -> str:
    names = {1: "minKey", 5: "null", 15: "string", 20: "object", 25: "array", 30: "binData",
             35: "objectId", 40: "bool", 45: "date", 47: "timestamp", 50: "regex", 127: "maxKey"}
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, Int64) or (isinstance(v, int) and not -(2**31) <= v < 2**31):
        return "long"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "double"
    if isinstance(v, bson.Decimal128):
        return "decimal"
    return names.get(_type_rank(v), "unknown")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _copy(v: Any) -> Any:
    """A deep copy of a BSON value (only containers are mutable)."""
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


# =========================================================================== queries

_QUERY_OPERATORS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$not",
                              "$regex", "$options"})
_KNOWN_UNSUPPORTED_OPERATORS = frozenset({
    "$all", "$elemMatch", "$size", "$type", "$mod", "$text", "$where", "$expr", "$jsonSchema", "$geoWithin",
    "$geoIntersects", "$near", "$nearSphere", "$bitsAllSet", "$bitsAnySet", "$bitsAllClear", "$bitsAnyClear",
})


def _lookup(value: Any, parts: list[str]) -> list[Any]:
    """Every value at a dotted path, descending into arrays of documents (``_MISSING`` if none)."""
    if not parts:
        return [value]
    head, rest = parts[0], parts[1:]
    if isinstance(value, dict):
        return _lookup(value[head], rest) if head in value else [_MISSING]
    if isinstance(value, list):
        out: list[Any] = []
        if head.isdigit() and int(head) < len(value):
            out += _lookup(value[int(head)], rest)
        for el in value:
            if isinstance(el, dict | list):
                out += [v for v in _lookup(el, parts) if v is not _MISSING]
        return out or [_MISSING]
    return [_MISSING]


def _candidates(values: list[Any]) -> Iterable[Any]:
    """The values a condition is tried against: each value, and each element of an array value."""
    for v in values:
        yield v
        if isinstance(v, list):
            yield from v


def _regex(spec: Regex | str, options: str = "") -> re.Pattern[str]:
    pattern, flags = (spec.pattern, spec.flags) if isinstance(spec, Regex) else (spec, "")
    re_flags = 0
    for ch in flags + options:
        if ch == "i":
            re_flags |= re.IGNORECASE
        elif ch == "m":
            re_flags |= re.MULTILINE
        elif ch == "s":
            re_flags |= re.DOTALL
        elif ch == "x":
            re_flags |= re.VERBOSE
        elif ch != "u":
            raise _bad_value(f"invalid flag in regex options: {ch}")
    try:
        return _compile_regex(pattern, re_flags)
    except re.error as exc:
        raise _bad_value(f"Regular expression is invalid: {exc}") from None


@functools.lru_cache(maxsize=256)
def _compile_regex(pattern: str, flags: int) -> re.Pattern[str]:
    return re.compile(pattern, flags)


def _eq_match(values: list[Any], target: Any) -> bool:
    if isinstance(target, Regex):
        rx = _regex(target)
        return any(isinstance(v, str) and rx.search(v) is not None for v in _candidates(values))
    if target is None:
        return any(v is None or v is _MISSING for v in _candidates(values))
    return any(v is not _MISSING and _equal(v, target) for v in _candidates(values))


def _cmp_match(values: list[Any], target: Any, ok: Callable[[int], bool]) -> bool:
    rank = _type_rank(target)
    for v in _candidates(values):
        if v is _MISSING:
            continue
        if _type_rank(v) == rank and ok(compare(v, target)):
            return True
    return False


class Matcher:
    """A compiled query filter (validated once; ``matches`` is then side-effect free)."""

    def __init__(self, spec: Any) -> None:
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise CommandError(14, "TypeMismatch", "filter must be an object")
        self.spec = spec
        self._check(spec)

    def _check(self, spec: dict[str, Any]) -> None:
        for key, cond in spec.items():
            if key.startswith("$"):
                if key in ("$and", "$or", "$nor"):
                    if not isinstance(cond, list) or not cond:
                        raise _bad_value(f"{key} must be a nonempty array")
                    for sub in cond:
                        if not isinstance(sub, dict):
                            raise _bad_value(f"{key} argument's entries must be objects")
                        self._check(sub)
                elif key == "$comment":
                    continue
                elif key in _KNOWN_UNSUPPORTED_OPERATORS:
                    raise _unsupported(f"the query operator {key}")
                else:
                    raise _bad_value(f"unknown top level operator: {key}")
            elif isinstance(cond, dict) and cond and next(iter(cond)).startswith("$"):
                self._check_operators(key, cond)

    def _check_operators(self, path: str, ops: dict[str, Any]) -> None:
        for op, arg in ops.items():
            if op in _KNOWN_UNSUPPORTED_OPERATORS:
                raise _unsupported(f"the query operator {op}")
            if op not in _QUERY_OPERATORS:
                raise _bad_value(f"unknown operator: {op}")
            if op in ("$in", "$nin") and not isinstance(arg, list):
                raise _bad_value(f"{op} needs an array")
            if op == "$not":
                if isinstance(arg, Regex):
                    continue
                if not isinstance(arg, dict) or not arg:
                    raise _bad_value("$not needs a regex or a document")
                self._check_operators(path, arg)
            if op == "$regex":
                if not isinstance(arg, str | Regex):
                    raise _bad_value("$regex has to be a string")
                _regex(arg, ops.get("$options", ""))
            if op == "$options" and "$regex" not in ops:
                raise _bad_value("$options needs a $regex")

    def matches(self, doc: dict[str, Any]) -> bool:
        return _match_doc(doc, self.spec)


def _match_doc(doc: dict[str, Any], spec: dict[str, Any]) -> bool:
    for key, cond in spec.items():
        if key == "$and":
            if not all(_match_doc(doc, sub) for sub in cond):
                return False
        elif key == "$or":
            if not any(_match_doc(doc, sub) for sub in cond):
                return False
        elif key == "$nor":
            if any(_match_doc(doc, sub) for sub in cond):
                return False
        elif key == "$comment":
            continue
        else:
            values = _lookup(doc, key.split("."))
            if isinstance(cond, dict) and cond and next(iter(cond)).startswith("$"):
                if not _match_operators(values, cond):
                    return False
            elif not _eq_match(values, cond):
                return False
    return True


def _match_operators(values: list[Any], ops: dict[str, Any]) -> bool:
    for op, arg in ops.items():
        match op:
            case "$eq":
                ok = _eq_match(values, arg)
            case "$ne":
                ok = not _eq_match(values, arg)
            case "$gt":
                ok = _cmp_match(values, arg, lambda c: c > 0)
            case "$gte":
                ok = _cmp_match(values, arg, lambda c: c >= 0)
            case "$lt":
                ok = _cmp_match(values, arg, lambda c: c < 0)
            case "$lte":
                ok = _cmp_match(values, arg, lambda c: c <= 0)
            case "$in":
                ok = any(_eq_match(values, t) for t in arg)
            case "$nin":
                ok = not any(_eq_match(values, t) for t in arg)
            case "$exists":
                found = any(v is not _MISSING for v in values)
                ok = found == bool(arg)
            case "$not":
                ok = not (_eq_match(values, arg) if isinstance(arg, Regex) else _match_operators(values, arg))
            case "$regex":
                rx = _regex(arg, ops.get("$options", ""))
                ok = any(isinstance(v, str) and rx.search(v) is not None for v in _candidates(values))
            case "$options":
                ok = True
            case _:  # pragma: no cover - rejected by Matcher._check
                raise _bad_value(f"unknown operator: {op}")
        if not ok:
            return False
    return True


# =========================================================================== projection and sort


class Projection:
    """An inclusion or exclusion projection (``_id`` may be excluded from an inclusion)."""

    def __init__(self, spec: Any) -> None:
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise CommandError(14, "TypeMismatch", "projection must be an object")
        self.include_id = True
        self.include: list[list[str]] = []
        self.exclude: list[list[str]] = []
        for key, value in spec.items():
            if isinstance(value, dict) or key.startswith("$") or key.endswith(".$"):
                raise _unsupported(f"the projection operator in {key!r}")
            if not isinstance(value, bool | int | float):
                raise _unsupported(f"a computed projection field ({key!r})")
            on = bool(value)
            if key == "_id":
                self.include_id = on
            elif on:
                if self.exclude:
                    raise CommandError(31253, "Location31253",
                                       f"Cannot do inclusion on field {key} in exclusion projection")
                self.include.append(key.split("."))
            else:
                if self.include:
                    raise CommandError(31254, "Location31254",
                                       f"Cannot do exclusion on field {key} in inclusion projection")
                self.exclude.append(key.split("."))
        self.empty = not self.include and not self.exclude and self.include_id

    def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        if self.empty:
            return doc
        out: dict[str, Any]
        if self.include:
            out = _include(doc, self.include)
            if self.include_id and "_id" in doc:
                out = {"_id": doc["_id"], **out}
            return out
        out = _copy(doc)
        for path in self.exclude:
            _exclude(out, path)
        if not self.include_id:
            out.pop("_id", None)
        return out


def _include(value: Any, paths: list[list[str]]) -> Any:
    if isinstance(value, list):
        return [_include(el, paths) for el in value if isinstance(el, dict | list)]
    out: dict[str, Any] = {}
    for key, v in value.items():
        sub = [p[1:] for p in paths if p[0] == key]
        if not sub:
            continue
        if any(not p for p in sub):
            out[key] = v
        elif isinstance(v, dict | list):
            out[key] = _include(v, sub)
    return out


def _exclude(value: Any, path: list[str]) -> None:
    if isinstance(value, list):
        for el in value:
            _exclude(el, path)
    elif isinstance(value, dict) and path[0] in value:
        if len(path) == 1:
            del value[path[0]]
        else:
            _exclude(value[path[0]], path[1:])


def _sort_docs(docs: list[dict[str, Any]], spec: Any) -> list[dict[str, Any]]:
    if not spec:
        return docs
    if not isinstance(spec, dict):
        raise _bad_value("sort must be an object")
    keys: list[tuple[list[str], int]] = []
    for name, direction in spec.items():
        if direction not in (1, -1) or isinstance(direction, bool):
            if isinstance(direction, dict):
                raise _unsupported(f"sorting by {_show(direction)}")
            raise _bad_value(f"$sort key ordering must be 1 (for ascending) or -1 (for descending), "
                             f"got {_show(direction)} for {name!r}")
        keys.append((name.split("."), int(direction)))

    def sort_value(doc: dict[str, Any], path: list[str], direction: int) -> Any:
        values = [v for v in _candidates(_lookup(doc, path)) if not isinstance(v, list)]
        values = [None if v is _MISSING else v for v in values] or [None]
        # An array sorts by its smallest element ascending, its largest descending.
        pick = min if direction == 1 else max
        return pick(values, key=functools.cmp_to_key(compare))

    def cmp(a: dict[str, Any], b: dict[str, Any]) -> int:
        for path, direction in keys:
            c = compare(sort_value(a, path, direction), sort_value(b, path, direction))
            if c:
                return c * direction
        return 0

    return sorted(docs, key=functools.cmp_to_key(cmp))


# =========================================================================== updates

_UPDATE_OPERATORS = frozenset({"$set", "$unset", "$inc", "$push", "$setOnInsert"})
_KNOWN_UNSUPPORTED_UPDATES = frozenset({
    "$addToSet", "$pull", "$pullAll", "$pop", "$rename", "$min", "$max", "$mul", "$currentDate", "$bit",
})


def _check_update(update: Any) -> bool:
    """Validate an update; True for operator updates, False for replacements."""
    if isinstance(update, list):
        raise _unsupported("a pipeline-style update")
    if not isinstance(update, dict):
        raise CommandError(14, "TypeMismatch", "Update argument must be either an object or an array")
    ops = [k for k in update if k.startswith("$")]
    if not ops:
        return False
    if len(ops) != len(update):
        raise CommandError(9, "FailedToParse", "Cannot mix update operators and field names in an update")
    seen: list[str] = []
    for op, arg in update.items():
        if op in _KNOWN_UNSUPPORTED_UPDATES:
            raise CommandError(9, "FailedToParse", f"the update operator {op} is {EMULATOR_NOTE}")
        if op not in _UPDATE_OPERATORS:
            raise CommandError(9, "FailedToParse", f"Unknown modifier: {op}. Expected a valid update modifier "
                                                   "or pipeline-style update specified as an array")
        if not isinstance(arg, dict):
            raise CommandError(9, "FailedToParse",
                               f"Modifiers operate on fields but we found type {_type_name(arg)} instead. "
                               f"For example: {{$mod: {{<field>: ...}}}} not {{{op}: {_show(arg)}}}")
        for path in arg:
            if not path or "" in path.split("."):
                raise CommandError(56, "EmptyFieldName", f"An empty update path is not valid: {path!r}")
            for other in seen:
                if path == other or path.startswith(other + ".") or other.startswith(path + "."):
                    raise CommandError(40, "ConflictingUpdateOperators",
                                       f"Updating the path '{path}' would create a conflict at '{other}'")
            seen.append(path)
            if op == "$inc" and not _is_number(arg[path]):
                raise CommandError(14, "TypeMismatch",
                                   f"Cannot increment with non-numeric argument: {{{path}: {_show(arg[path])}}}")
    return True


def _walk_to_parent(doc: dict[str, Any], parts: list[str], create: bool) -> Any:
    """The container holding ``parts[-1]`` (``None`` if absent and not ``create``)."""
    node: Any = doc
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, dict):
            if part not in node:
                if not create:
                    return None
                node[part] = {}
            nxt = node[part]
        elif isinstance(node, list) and part.isdigit():
            idx = int(part)
            if idx >= len(node):
                if not create:
                    return None
                node.extend([None] * (idx + 1 - len(node)))
                node[idx] = {}
            nxt = node[idx]
        else:
            if not create:
                return None
            raise CommandError(28, "PathNotViable",
                               f"Cannot create field '{part}' in element {{{parts[i - 1] if i else part}: "
                               f"{_show(node)}}}")
        if not isinstance(nxt, dict | list):
            if not create:
                return None
            raise CommandError(28, "PathNotViable", f"Cannot create field '{parts[i + 1]}' in element "
                                                    f"{{{part}: {_show(nxt)}}}")
        node = nxt
    return node


def _get_path(doc: dict[str, Any], parts: list[str]) -> Any:
    parent = _walk_to_parent(doc, parts, create=False)
    last = parts[-1]
    if isinstance(parent, dict):
        return parent.get(last, _MISSING)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    return _MISSING


def _set_path(doc: dict[str, Any], parts: list[str], value: Any) -> None:
    parent = _walk_to_parent(doc, parts, create=True)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif last.isdigit():
        idx = int(last)
        if idx >= len(parent):
            parent.extend([None] * (idx + 1 - len(parent)))
        parent[idx] = value
    else:
        raise CommandError(28, "PathNotViable", f"Cannot create field '{last}' in element {{{_show(parent)}}}")


def _unset_path(doc: dict[str, Any], parts: list[str]) -> None:
    parent = _walk_to_parent(doc, parts, create=False)
    last = parts[-1]
    if isinstance(parent, dict):
        parent.pop(last, None)
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        parent[int(last)] = None  # mongod leaves a null hole in arrays


def _apply_update(doc: dict[str, Any], update: dict[str, Any], inserting: bool) -> dict[str, Any]:
    """A new document: ``doc`` with an operator update applied (``doc`` is not changed)."""
    out: dict[str, Any] = _copy(doc)
    for op, arg in update.items():
        for path, value in arg.items():
            parts = path.split(".")
            if op == "$set" or (op == "$setOnInsert" and inserting):
                _set_path(out, parts, _copy(value))
            elif op == "$unset":
                _unset_path(out, parts)
            elif op == "$inc":
                current = _get_path(out, parts)
                if current is _MISSING:
                    _set_path(out, parts, value)
                elif not _is_number(current):
                    raise CommandError(14, "TypeMismatch",
                                       f"Cannot apply $inc to a value of non-numeric type. "
                                       f"{{_id: {_show(out.get('_id'))}}} has the field '{parts[-1]}' of "
                                       f"non-numeric type {_type_name(current)}")
                else:
                    total = current + value
                    if isinstance(total, int) and (isinstance(current, Int64) or isinstance(value, Int64)):
                        total = Int64(total)
                    if isinstance(total, int) and not -(2**63) <= total < 2**63:
                        raise CommandError(2, "BadValue", f"Failed to apply $inc operations to current value "
                                                          f"({_show(current)}) for document {{_id: "
                                                          f"{_show(out.get('_id'))}}}: integer overflow")
                    _set_path(out, parts, total)
            elif op == "$push":
                items = [_copy(value)]
                if isinstance(value, dict) and "$each" in value:
                    if set(value) != {"$each"}:
                        raise _unsupported("$push modifiers other than $each")
                    if not isinstance(value["$each"], list):
                        raise _bad_value(f"The argument to $each in $push must be an array but it was of "
                                         f"type: {_type_name(value['$each'])}")
                    items = _copy(value["$each"])
                current = _get_path(out, parts)
                if current is _MISSING:
                    _set_path(out, parts, items)
                elif isinstance(current, list):
                    current.extend(items)
                else:
                    raise _bad_value(f"The field '{parts[-1]}' must be an array but is of type "
                                     f"{_type_name(current)} in document {{_id: {_show(out.get('_id'))}}}")
    return out


def _upsert_seed(query: dict[str, Any]) -> dict[str, Any]:
    """The fields an upsert copies from its query: top-level equalities (and ``$eq``/``$and``)."""
    seed: dict[str, Any] = {}
    for key, cond in query.items():
        if key == "$and":
            for sub in cond:
                seed.update(_upsert_seed(sub))
        elif key.startswith("$"):
            continue
        elif isinstance(cond, dict) and cond and next(iter(cond)).startswith("$"):
            if "$eq" in cond:
                _set_path(seed, key.split("."), _copy(cond["$eq"]))
        elif not isinstance(cond, Regex):
            _set_path(seed, key.split("."), _copy(cond))
    return seed


# =========================================================================== storage


@dataclass
class Collection:
    """Documents keyed by their ``_id`` (insertion order is the natural order)."""

    name: str
    docs: dict[Any, dict[str, Any]] = field(default_factory=dict)
    uuid: bytes = field(default_factory=lambda: uuid.uuid4().bytes)

    def find(self, matcher: Matcher) -> list[dict[str, Any]]:
        if not matcher.spec:
            return list(self.docs.values())
        id_cond = matcher.spec.get("_id", _MISSING)
        if len(matcher.spec) == 1 and id_cond is not _MISSING and not isinstance(id_cond, dict | Regex):
            doc = self.docs.get(_id_key(id_cond))  # point lookup, what find_one({"_id": x}) sends
            return [doc] if doc is not None and matcher.matches(doc) else []
        return [d for d in self.docs.values() if matcher.matches(d)]


@dataclass
class _Cursor:
    id: int
    ns: str
    docs: list[dict[str, Any]]
    projection: Projection
    owner: str | None
    pos: int = 0
    last_used: float = field(default_factory=time.monotonic)


# =========================================================================== SCRAM (tpemu.wire.scram)

_MECHANISMS = ("SCRAM-SHA-1", "SCRAM-SHA-256")


def _scram_secret(mechanism: str, user: str, password: str, iterations: int) -> ScramSecret:
    if mechanism == "SCRAM-SHA-1":
        return make_secret(mongodb_sha1_password(user, password), os.urandom(16), iterations, "sha1", prepare=False)
    return make_secret(password, os.urandom(28), iterations, "sha256")


@dataclass
class _ScramConversation:
    mechanism: str
    user: str
    db: str
    exchange: ScramServer
    known: bool
    skip_empty_exchange: bool
    done: bool = False


# =========================================================================== the server


@dataclass
class _Connection:
    id: int
    peer: str
    session: Session | None
    user: str | None = None
    user_db: str | None = None
    scram: _ScramConversation | None = None
    client_info: dict[str, Any] | None = None


class MongoBackend:
    """An in-memory MongoDB 7.0 lookalike for unmodified drivers and shells.

    ``users``: user name → password (SCRAM-SHA-256 and SCRAM-SHA-1), or ``None`` to trust
    every client. Timeouts are in seconds: ``idle_timeout`` between messages, ``read_timeout``
    for the rest of a message once it has started, ``write_timeout`` for the client to take a
    reply.
    """

    protocol: ClassVar[str] = "mongodb"

    def __init__(self, users: Mapping[str, str] | None = None, *, version: str = "7.0.0",
                 idle_timeout: float = 600.0, read_timeout: float = 30.0, write_timeout: float = 30.0,
                 max_cursors: int = 1000, cursor_timeout: float = 600.0, scram_iterations: int = 15000) -> None:
        self.version = version
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.max_cursors = max_cursors
        self.cursor_timeout = cursor_timeout
        self.users: dict[str, dict[str, ScramSecret]] | None = None
        if users is not None:
            self.users = {
                name: {mech: _scram_secret(mech, name, password, scram_iterations) for mech in _MECHANISMS}
                for name, password in users.items()
            }
        self.databases: dict[str, dict[str, Collection]] = {}
        self._cursors: OrderedDict[int, _Cursor] = OrderedDict()
        self._connection_ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._object_ids = bson.ObjectIdFactory()
        self._started = time.monotonic()
        self._connections = 0
        self._total_connections = 0

    # ------------------------------------------------------------------ connection loop

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     session: Session | None = None) -> None:
        """Serve one client until it disconnects, idles out or sends something unparseable."""
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername or "?")
        conn = _Connection(next(self._connection_ids), peer, session)
        self._connections += 1
        self._total_connections += 1
        logger.debug("mongodb conn=%d peer=%s connected (session=%s)", conn.id, peer, session)
        try:
            await self._serve(conn, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            logger.debug("mongodb conn=%d: client went away", conn.id)
        except TimeoutError:
            logger.info("mongodb conn=%d peer=%s: closed after a read or write timeout", conn.id, peer)
        finally:
            self._connections -= 1
            writer.close()
            try:
                async with asyncio.timeout(5):
                    await writer.wait_closed()
            except (OSError, TimeoutError):
                pass

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    first = await reader.read(mongo.HEADER_SIZE)
            except TimeoutError:
                logger.info("mongodb conn=%d peer=%s: idle for %.0f s, closing", conn.id, conn.peer, self.idle_timeout)
                return
            if not first:
                return
            async with asyncio.timeout(self.read_timeout):
                head = first + await reader.readexactly(mongo.HEADER_SIZE - len(first))
                try:
                    header = mongo.parse_header(head)
                except WireError as exc:
                    await self._refuse(conn, writer, head, exc)
                    return
                assert header is not None
                raw = head + await reader.readexactly(header.length - mongo.HEADER_SIZE)
            try:
                parsed = mongo.parse_message(raw)
            except WireError as exc:
                await self._refuse(conn, writer, raw, exc)
                return
            assert parsed is not None
            reply, keep_open = self._on_message(conn, parsed[0])
            if reply:
                writer.write(reply)
                async with asyncio.timeout(self.write_timeout):
                    await writer.drain()
            if not keep_open:
                return

    async def _refuse(self, conn: _Connection, writer: asyncio.StreamWriter, raw: bytes, exc: WireError) -> None:
        """Answer a message we cannot parse with an error (when its header is readable), then close."""
        _warn_rejected(conn.peer, "mongodb conn=%d peer=%s: bad message, closing: %s", conn.id, conn.peer, exc,
                       data=raw)
        if len(raw) < mongo.HEADER_SIZE:
            return
        request_id = int.from_bytes(raw[4:8], "little", signed=True)
        opcode = int.from_bytes(raw[12:16], "little", signed=True)
        if isinstance(exc, LimitExceeded):
            err = CommandError(10334, "BSONObjectTooLarge", f"{exc} (the tpemu emulator's cap)")
        elif isinstance(exc, bson.BSONError):
            err = CommandError(22, "InvalidBSON", str(exc))
        else:
            err = CommandError(9, "FailedToParse", str(exc))
        writer.write(self._reply_bytes(opcode, request_id, err.reply()))
        try:
            async with asyncio.timeout(self.write_timeout):
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass

    def _reply_bytes(self, opcode: int, response_to: int, doc: dict[str, Any]) -> bytes:
        if opcode == mongo.OP_QUERY:
            flags = mongo.REPLY_QUERY_FAILURE if "$err" in doc else 0
            return mongo.encode_op_reply(next(self._request_ids), response_to, [doc], flags)
        return mongo.encode_op_msg(next(self._request_ids), response_to, doc)

    def _on_message(self, conn: _Connection, msg: mongo.Message) -> tuple[bytes | None, bool]:
        """The reply bytes (if any) and whether to keep the connection open."""
        rid = msg.header.request_id
        if isinstance(msg, mongo.OpMsg):
            try:
                cmd = msg.command()
            except WireError as exc:
                return self._encode_reply(mongo.OP_MSG, rid, CommandError(9, "FailedToParse", str(exc)).reply()), True
            reply = self._run(conn, cmd)
            if msg.more_to_come:
                return None, True  # fire-and-forget (w:0): no reply at all
            return self._encode_reply(mongo.OP_MSG, rid, reply), True
        if isinstance(msg, mongo.OpQuery):
            return self._encode_reply(mongo.OP_QUERY, rid, self._op_query(conn, msg)), True
        if isinstance(msg, mongo.OpCompressed):
            _warn_rejected(conn.peer, "mongodb conn=%d peer=%s: OP_COMPRESSED refused (no compressor was offered)",
                           conn.id, conn.peer)
            err = CommandError(17, "ProtocolError", "OP_COMPRESSED is not supported by the tpemu emulator "
                                                    "(it advertises no compressors in hello)").reply()
            if msg.original_opcode == mongo.OP_QUERY:
                err = {"$err": err["errmsg"], **err}
            return self._encode_reply(msg.original_opcode, rid, err), True
        name = mongo.OPCODE_NAMES.get(msg.header.opcode, f"opcode {msg.header.opcode}")
        _warn_rejected(conn.peer, "mongodb conn=%d peer=%s: legacy %s is %s (removed in MongoDB 6.0); closing",
                       conn.id, conn.peer, name, EMULATOR_NOTE)
        if msg.header.opcode == mongo.OP_GET_MORE:
            doc = {"$err": f"legacy {name} is {EMULATOR_NOTE}", "code": 5739101, "ok": 0.0}
            return mongo.encode_op_reply(next(self._request_ids), rid, [doc], mongo.REPLY_QUERY_FAILURE), False
        return None, False  # the other legacy writes expect no reply: closing is the only signal

    def _encode_reply(self, opcode: int, response_to: int, doc: dict[str, Any]) -> bytes:
        try:
            return self._reply_bytes(opcode, response_to, doc)
        except bson.BSONEncodeError as exc:
            err = CommandError(10334, "BSONObjectTooLarge", f"reply cannot be encoded: {exc}").reply()
            if opcode == mongo.OP_QUERY:
                err = {"$err": err["errmsg"], **err}
            return self._reply_bytes(opcode, response_to, err)

    def _op_query(self, conn: _Connection, msg: mongo.OpQuery) -> dict[str, Any]:
        """Legacy OP_QUERY: only the handshake (``isMaster``/``hello`` on ``<db>.$cmd``) is served."""
        query = msg.query.get("$query", msg.query) if "$query" in msg.query else msg.query
        if not isinstance(query, dict):
            query = {}
        name = next(iter(query), "")
        if msg.collection.endswith(".$cmd") and name in ("isMaster", "ismaster", "hello"):
            cmd = dict(query)
            cmd.setdefault("$db", msg.collection[:-5])
            return self._run(conn, cmd)
        if msg.collection.endswith(".$cmd"):
            return {"ok": 0.0, "errmsg": f"Unsupported OP_QUERY command: {name}. The client driver may require an "
                                         "upgrade (the tpemu emulator, like MongoDB 6.0+, takes only OP_MSG)",
                    "code": 352, "codeName": "UnsupportedOpQueryCommand"}
        return {"$err": f"legacy OP_QUERY on {msg.collection} is {EMULATOR_NOTE}", "code": 5739101, "ok": 0.0}

    # ------------------------------------------------------------------ command dispatch

    def _run(self, conn: _Connection, cmd: dict[str, Any]) -> dict[str, Any]:
        name = next(iter(cmd), "")
        try:
            reply = self._dispatch(conn, name, cmd)
        except CommandError as exc:
            logger.debug("mongodb conn=%d: %s failed: %s", conn.id, name, exc.message)
            return exc.reply()
        except WireError as exc:  # a nested decode problem surfaced late
            return CommandError(22, "InvalidBSON", str(exc)).reply()
        except Exception as exc:  # a local fault: the client gets an error, the log the traceback
            logger.exception("mongodb conn=%d: internal error in %s", conn.id, name)
            return CommandError(1, "InternalError", f"internal error in the tpemu emulator: {exc!r}").reply()
        reply.setdefault("ok", 1.0)
        return reply

    def _dispatch(self, conn: _Connection, name: str, cmd: dict[str, Any]) -> dict[str, Any]:
        db = cmd.get("$db")
        if not isinstance(db, str):
            raise CommandError(40571, "Location40571", "OP_MSG requests require a $db argument")
        handler = self._handlers.get(name)
        if handler is None:
            raise CommandError(59, "CommandNotFound", f"no such command: '{name}' ({EMULATOR_NOTE})")
        if "startTransaction" in cmd or "autocommit" in cmd:
            raise CommandError(20, "IllegalOperation",
                               "Transaction numbers are only allowed on a replica set member or mongos")
        if conn.session is None and self.users is not None and conn.user is None and name not in _OPEN_COMMANDS:
            raise CommandError(13, "Unauthorized", f"Command {name} requires authentication")
        if conn.session is not None and conn.session.db_name and name not in _SERVER_COMMANDS \
                and db != conn.session.db_name:
            raise CommandError(13, "Unauthorized",
                               f"not authorized on {db} to execute command {name}: this session may only use "
                               f"database '{conn.session.db_name}'")
        if name not in _SERVER_COMMANDS:
            _check_db_name(db)
        return handler(self, conn, db, cmd)

    # ------------------------------------------------------------------ handshake and server commands

    def _hello(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        name = next(iter(cmd))
        if conn.client_info is None and isinstance(cmd.get("client"), dict):
            conn.client_info = cmd["client"]
            driver = cmd["client"].get("driver", {})
            logger.debug("mongodb conn=%d: client %s %s", conn.id, driver.get("name"), driver.get("version"))
        reply: dict[str, Any] = {}
        if cmd.get("helloOk"):
            reply["helloOk"] = True
        reply["isWritablePrimary" if name == "hello" else "ismaster"] = True
        reply.update({
            "maxBsonObjectSize": bson.MAX_DOCUMENT_SIZE,
            "maxMessageSizeBytes": mongo.MAX_MESSAGE_SIZE,
            "maxWriteBatchSize": MAX_WRITE_BATCH,
            "localTime": dt.datetime.now(dt.UTC),
            "logicalSessionTimeoutMinutes": SESSION_TIMEOUT_MINUTES,
            "connectionId": conn.id,
            "minWireVersion": 0,
            "maxWireVersion": WIRE_VERSION,
            "readOnly": False,
        })
        mechs = cmd.get("saslSupportedMechs")
        if isinstance(mechs, str) and self.users is not None and conn.session is None:
            # Advertised even for unknown users, so the client fails with "Authentication failed"
            # rather than falling back to a mechanism choice of its own.
            reply["saslSupportedMechs"] = list(_MECHANISMS)
        spec = cmd.get("speculativeAuthenticate")
        if isinstance(spec, dict) and spec.get("saslStart") and self.users is not None and conn.session is None:
            try:
                reply["speculativeAuthenticate"] = self._sasl_start(conn, str(spec.get("db", db)), spec)
            except CommandError:
                pass  # the driver then authenticates the ordinary way and gets the error there
        return reply

    def _ping(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _build_info(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        parts = [int(p) for p in re.findall(r"\d+", self.version)[:3]]
        return {
            "version": self.version,
            "gitVersion": "tpemu-emulator",
            "versionArray": [*parts, *[0] * (4 - len(parts))],
            "modules": [],
            "allocator": "system",
            "javascriptEngine": "none",
            "sysInfo": "deprecated",
            "bits": 64,
            "debug": False,
            "maxBsonObjectSize": bson.MAX_DOCUMENT_SIZE,
            "storageEngines": ["inMemory"],
            "buildEnvironment": {},
            "tpemu": "emulated MongoDB wire protocol (tpemu): in-memory, a subset of commands",
        }

    def _get_parameter(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        known = {"featureCompatibilityVersion": {"version": ".".join(self.version.split(".")[:2])},
                 "authenticationMechanisms": list(_MECHANISMS)}
        arg = cmd.get("getParameter")
        if arg == "*" or (isinstance(arg, dict) and arg.get("allParameters")):
            return dict(known)
        wanted = [k for k in cmd if k not in ("getParameter", "$db", "lsid", "$readPreference", "$clusterTime",
                                                "comment")]
        out = {k: known[k] for k in wanted if k in known}
        missing = [k for k in wanted if k not in known]
        if missing or not wanted:
            raise CommandError(72, "InvalidOptions", f"no option found to get ({', '.join(missing) or 'none given'}; "
                                                     f"the tpemu emulator knows {', '.join(known)})")
        return out

    def _get_cmd_line_opts(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"argv": ["mongod", "(tpemu emulator)"], "parsed": {}}

    def _server_status(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        up = time.monotonic() - self._started
        return {
            "host": "tpemu", "version": self.version, "process": "mongod", "pid": Int64(os.getpid()),
            "uptime": float(int(up)), "uptimeMillis": Int64(int(up * 1000)), "uptimeEstimate": Int64(int(up)),
            "localTime": dt.datetime.now(dt.UTC),
            "connections": {"current": self._connections, "available": 1000,
                            "totalCreated": self._total_connections},
            "storageEngine": {"name": "inMemory", "persistent": False},
            "tpemu": "other serverStatus sections are " + EMULATOR_NOTE,
        }

    def _connection_status(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        users = []
        if conn.session is not None:
            users = [{"user": conn.session.db_user, "db": conn.session.db_name or "admin"}]
        elif conn.user is not None:
            users = [{"user": conn.user, "db": conn.user_db or "admin"}]
        return {"authInfo": {"authenticatedUsers": users, "authenticatedUserRoles": []}}

    def _whatsmyuri(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"you": conn.peer}

    def _get_log(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd.get("getLog") == "*":
            return {"names": ["global", "startupWarnings"]}
        return {"totalLinesWritten": 0, "log": []}

    def _ok(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _logout(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        conn.user = conn.user_db = None
        return {}

    # ------------------------------------------------------------------ SCRAM

    def _sasl_start(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        if conn.session is not None:
            raise CommandError(18, "AuthenticationFailed",
                               f"Authentication failed: the Database Service already authenticated this connection "
                               f"as '{conn.session.db_user}'; the tpemu emulator takes no password here")
        if self.users is None:
            # Without the password the server cannot prove itself (SCRAM's server signature).
            raise CommandError(18, "AuthenticationFailed",
                               "Authentication failed: this tpemu emulator was started without users and trusts "
                               "every client; connect without credentials")
        mechanism = cmd.get("mechanism")
        if mechanism not in _MECHANISMS:
            raise CommandError(334, "MechanismUnavailable",
                               f"Received authentication for mechanism {mechanism} which is not enabled "
                               f"(the tpemu emulator supports {' and '.join(_MECHANISMS)})")
        payload = _payload(cmd.get("payload"))
        try:
            user = parse_client_first(payload).username
        except ScramError as e:
            raise CommandError(18, "AuthenticationFailed", f"Authentication failed: {e}") from None
        secret = self.users.get(user, {}).get(mechanism)
        known = secret is not None
        if secret is None:
            # Go on with a made-up secret so the reply does not reveal whether the user exists.
            salt = hashlib.sha256(user.encode() + b"tpemu").digest()[:16]
            secret = ScramSecret(salt, 15000, secrets.token_bytes(32), secrets.token_bytes(32), DIGESTS[mechanism])
        exchange = ScramServer(secret)
        try:
            server_first = exchange.first(payload)
        except ScramError as e:
            raise CommandError(18, "AuthenticationFailed", f"Authentication failed: {e}") from None
        options = cmd.get("options")
        skip = bool(options.get("skipEmptyExchange")) if isinstance(options, dict) else False
        conn.scram = _ScramConversation(mechanism, user, db, exchange, known, skip)
        return {"conversationId": 1, "done": False, "payload": server_first}

    def _sasl_continue(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        conv = conn.scram
        if conv is None or cmd.get("conversationId") not in (1, None):
            raise CommandError(17, "ProtocolError", "No SASL session state found")
        payload = _payload(cmd.get("payload"))
        if conv.done:  # the empty third step of clients that do not skip it
            conn.scram = None
            return {"conversationId": 1, "done": True, "payload": b""}
        conn.scram = None
        failed = CommandError(18, "AuthenticationFailed", "Authentication failed.")
        try:
            server_final = conv.exchange.final(payload)
        except ScramError as e:
            logger.info("mongodb conn=%d peer=%s: SCRAM authentication of %r failed: %s", conn.id, conn.peer,
                        conv.user, e)
            raise failed from None
        if not conv.known:  # a made-up secret cannot verify, but keep the rule explicit
            raise failed
        conn.user, conn.user_db = conv.user, conv.db
        logger.debug("mongodb conn=%d: authenticated %r on %s with %s", conn.id, conv.user, conv.db, conv.mechanism)
        if not conv.skip_empty_exchange:
            conv.done = True
            conn.scram = conv
        return {"conversationId": 1, "done": conv.skip_empty_exchange, "payload": server_final}

    # ------------------------------------------------------------------ namespaces

    def _collection(self, db: str, name: Any, create: bool = False) -> Collection | None:
        if not isinstance(name, str):
            raise CommandError(2, "BadValue", f"collection name has invalid type {_type_name(name)}")
        _check_collection_name(db, name)
        colls = self.databases.get(db)
        if colls is None:
            if not create:
                return None
            colls = self.databases[db] = {}
        coll = colls.get(name)
        if coll is None and create:
            coll = colls[name] = Collection(name)
        return coll

    def _list_databases(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        for name, colls in self.databases.items():
            if not colls:
                continue
            if conn.session is not None and conn.session.db_name and name != conn.session.db_name:
                continue
            size = sum(len(bson.encode(d)) for c in colls.values() for d in c.docs.values())
            entries.append({"name": name, "sizeOnDisk": Int64(size), "empty": False})
        if isinstance(cmd.get("filter"), dict):
            matcher = Matcher(cmd["filter"])
            entries = [e for e in entries if matcher.matches(e)]
        if cmd.get("nameOnly"):
            return {"databases": [{"name": e["name"]} for e in entries]}
        total = sum(e["sizeOnDisk"] for e in entries)
        return {"databases": entries, "totalSize": Int64(total), "totalSizeMb": Int64(total >> 20)}

    def _list_collections(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        for name, coll in self.databases.get(db, {}).items():
            if cmd.get("nameOnly"):
                entries.append({"name": name, "type": "collection"})
            else:
                entries.append({"name": name, "type": "collection", "options": {},
                                "info": {"readOnly": False, "uuid": Binary(4, coll.uuid)},
                                "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}})
        if cmd.get("filter"):
            matcher = Matcher(cmd["filter"])
            entries = [e for e in entries if matcher.matches(e)]
        return self._cursor_reply(conn, f"{db}.$cmd.listCollections", entries, Projection(None),
                                  _cursor_batch_size(cmd))

    def _list_indexes(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd.get("listIndexes")
        if self._collection(db, name) is None:
            raise CommandError(26, "NamespaceNotFound", f"ns does not exist: {db}.{name}")
        return self._cursor_reply(conn, f"{db}.{name}", [{"v": 2, "key": {"_id": 1}, "name": "_id_"}],
                                  Projection(None), _cursor_batch_size(cmd))

    def _create(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd.get("create")
        for option in ("capped", "timeseries", "viewOn", "validator", "clusteredIndex", "changeStreamPreAndPostImages"):
            if cmd.get(option):
                raise _unsupported(f"the create option {option!r}")
        if self._collection(db, name) is not None:
            raise CommandError(48, "NamespaceExists", f"Collection {db}.{name} already exists.")
        self._collection(db, name, create=True)
        return {}

    def _drop(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd.get("drop")
        if self._collection(db, name) is None:
            return {}  # MongoDB 7.0: dropping a missing collection succeeds
        assert isinstance(name, str)
        del self.databases[db][name]
        if not self.databases[db]:
            del self.databases[db]
        return {"nIndexesWas": 1, "ns": f"{db}.{name}"}

    def _drop_database(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        self.databases.pop(db, None)
        return {"dropped": db}

    # ------------------------------------------------------------------ CRUD

    def _insert(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        docs = cmd.get("documents")
        if not isinstance(docs, list) or not docs or len(docs) > MAX_WRITE_BATCH:
            count = len(docs) if isinstance(docs, list) else 0
            raise CommandError(16, "InvalidLength", f"Write batch sizes must be between 1 and {MAX_WRITE_BATCH}. "
                                                    f"Got {count} operations.")
        coll = self._collection(db, cmd.get("insert"), create=True)
        assert coll is not None
        ordered = cmd.get("ordered", True) is not False
        errors: list[dict[str, Any]] = []
        n = 0
        for index, doc in enumerate(docs):
            try:
                self._insert_one(coll, db, doc)
                n += 1
            except CommandError as exc:
                error = {"index": index, "code": exc.code, "errmsg": exc.message}
                if exc.code == 11000 and isinstance(doc, dict):
                    error.update({"keyPattern": {"_id": 1}, "keyValue": {"_id": doc.get("_id")}})
                errors.append(error)
                if ordered:
                    break
        reply: dict[str, Any] = {"n": n}
        if errors:
            reply["writeErrors"] = errors
        return reply

    def _insert_one(self, coll: Collection, db: str, doc: Any) -> dict[str, Any]:
        """Store ``doc`` (``_id`` first, generated if missing) and return what was stored."""
        if not isinstance(doc, dict):
            raise CommandError(14, "TypeMismatch", "insert documents must be objects")
        if "_id" not in doc:
            doc = {"_id": self._object_ids.new(), **doc}
        elif next(iter(doc)) != "_id":
            doc = {"_id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
        _id = doc["_id"]
        if isinstance(_id, list):
            raise _bad_value("can't use an array for _id")
        if isinstance(_id, Regex):
            raise _bad_value("can't use a regex for _id")
        key = _id_key(_id)
        if key in coll.docs:
            raise CommandError(11000, "DuplicateKey", f"E11000 duplicate key error collection: {db}.{coll.name} "
                                                      f"index: _id_ dup key: {{ _id: {_show(_id)} }}")
        stored: dict[str, Any] = doc
        coll.docs[key] = stored
        return stored

    def _find(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        for option in ("hint", "min", "max", "collation", "let"):
            if cmd.get(option):
                raise _unsupported(f"the find option {option!r}")
        if cmd.get("tailable") or cmd.get("awaitData"):
            raise _unsupported("a tailable cursor")
        matcher = Matcher(cmd.get("filter"))
        projection = Projection(cmd.get("projection"))
        skip = _non_negative(cmd, "skip")
        limit = _non_negative(cmd, "limit")
        batch_size = _non_negative(cmd, "batchSize", None)
        coll = self._collection(db, cmd.get("find"))
        docs = coll.find(matcher) if coll is not None else []
        docs = _sort_docs(docs, cmd.get("sort"))
        docs = docs[skip:skip + limit] if limit else docs[skip:]
        if cmd.get("singleBatch") and batch_size is None:
            batch_size = limit or None
        reply = self._cursor_reply(conn, f"{db}.{cmd.get('find')}", docs, projection, batch_size)
        if cmd.get("singleBatch") and reply["cursor"]["id"]:
            self._cursors.pop(int(reply["cursor"]["id"]), None)
            reply["cursor"]["id"] = Int64(0)
        return reply

    def _update(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        updates = cmd.get("updates")
        if not isinstance(updates, list) or not updates or len(updates) > MAX_WRITE_BATCH:
            raise CommandError(16, "InvalidLength", f"Write batch sizes must be between 1 and {MAX_WRITE_BATCH}.")
        name = cmd.get("update")
        self._collection(db, name)  # validates the name
        ordered = cmd.get("ordered", True) is not False
        n = modified = 0
        upserted: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for index, spec in enumerate(updates):
            try:
                if not isinstance(spec, dict) or "q" not in spec or "u" not in spec:
                    raise CommandError(9, "FailedToParse", "each update needs 'q' and 'u'")
                for option in ("arrayFilters", "collation", "hint"):
                    if spec.get(option):
                        raise _unsupported(f"the update option {option!r}")
                matched, changed, new_id = self._update_one_spec(db, name, spec)
            except CommandError as exc:
                errors.append({"index": index, "code": exc.code, "errmsg": exc.message})
                if ordered:
                    break
                continue
            n += matched
            modified += changed
            if new_id is not _MISSING:
                n += 1
                upserted.append({"index": index, "_id": new_id})
        reply: dict[str, Any] = {"n": n, "nModified": modified}
        if upserted:
            reply["upserted"] = upserted
        if errors:
            reply["writeErrors"] = errors
        return reply

    def _update_one_spec(self, db: str, name: Any, spec: dict[str, Any]) -> tuple[int, int, Any]:
        """Apply one ``{q, u, multi, upsert}``: (matched, modified, upserted _id or ``_MISSING``)."""
        query = spec["q"] if isinstance(spec["q"], dict) else {}
        matcher = Matcher(spec["q"])
        update = spec["u"]
        is_ops = _check_update(update)
        multi = bool(spec.get("multi"))
        if multi and not is_ops:
            raise CommandError(9, "FailedToParse", "multi update is not supported for replacement-style update")
        coll = self._collection(db, name)
        targets = coll.find(matcher) if coll is not None else []
        if not multi:
            targets = _sort_docs(targets, spec.get("sort"))[:1]
        if not targets:
            if not spec.get("upsert"):
                return 0, 0, _MISSING
            coll = self._collection(db, name, create=True)
            assert coll is not None
            seed = _upsert_seed(query)
            new = _apply_update(seed, update, inserting=True) if is_ops else \
                {**({"_id": seed["_id"]} if "_id" in seed else {}), **_copy(update)}
            _check_size(new)
            doc = self._insert_one(coll, db, new)
            return 0, 0, doc["_id"]
        assert coll is not None
        changed = 0
        for old in targets:
            new = _apply_update(old, update, inserting=False) if is_ops else \
                {"_id": old["_id"], **{k: _copy(v) for k, v in update.items() if k != "_id"}}
            if not is_ops and "_id" in update and not _equal(update["_id"], old["_id"]):
                raise CommandError(66, "ImmutableField", "After applying the update, the (immutable) field '_id' "
                                                         "was found to have been altered to _id: "
                                                         f"{_show(update['_id'])}")
            if "_id" not in new or not _equal(new["_id"], old["_id"]) or _type_rank(new["_id"]) != _type_rank(
                    old["_id"]):
                raise CommandError(66, "ImmutableField", "Performing an update on the path '_id' would modify the "
                                                         "immutable field '_id'")
            if _check_size(new) != bson.encode(old):  # byte-exact, so 1 -> 1.0 counts as a change
                coll.docs[_id_key(old["_id"])] = new
                changed += 1
        return len(targets), changed, _MISSING

    def _delete(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        deletes = cmd.get("deletes")
        if not isinstance(deletes, list) or not deletes or len(deletes) > MAX_WRITE_BATCH:
            raise CommandError(16, "InvalidLength", f"Write batch sizes must be between 1 and {MAX_WRITE_BATCH}.")
        name = cmd.get("delete")
        coll = self._collection(db, name)
        ordered = cmd.get("ordered", True) is not False
        n = 0
        errors: list[dict[str, Any]] = []
        for index, spec in enumerate(deletes):
            try:
                if not isinstance(spec, dict) or "q" not in spec or spec.get("limit") not in (0, 1):
                    raise CommandError(9, "FailedToParse", "each delete needs 'q' and a 'limit' of 0 or 1")
                for option in ("collation", "hint"):
                    if spec.get(option):
                        raise _unsupported(f"the delete option {option!r}")
                matcher = Matcher(spec["q"])
                if coll is None:
                    continue
                targets = coll.find(matcher)
                if spec["limit"] == 1:
                    targets = targets[:1]
                for doc in targets:
                    del coll.docs[_id_key(doc["_id"])]
                n += len(targets)
            except CommandError as exc:
                errors.append({"index": index, "code": exc.code, "errmsg": exc.message})
                if ordered:
                    break
        reply: dict[str, Any] = {"n": n}
        if errors:
            reply["writeErrors"] = errors
        return reply

    def _count(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        matcher = Matcher(cmd.get("query"))
        skip = _non_negative(cmd, "skip")
        limit = cmd.get("limit") or 0
        if not _is_number(limit):
            raise CommandError(14, "TypeMismatch", "Field 'limit' must be of type long")
        limit = abs(int(limit))  # the count command takes a negative limit as its absolute value
        coll = self._collection(db, cmd.get("count"))
        n = len(coll.find(matcher)) if coll is not None else 0
        n = max(0, n - skip)
        return {"n": min(n, limit) if limit else n}

    def _distinct(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        key = cmd.get("key")
        if not isinstance(key, str) or not key:
            raise _bad_value("distinct needs a 'key' string")
        matcher = Matcher(cmd.get("query"))
        coll = self._collection(db, cmd.get("distinct"))
        values: list[Any] = []
        for doc in coll.find(matcher) if coll is not None else []:
            for v in _candidates(_lookup(doc, key.split("."))):
                if v is _MISSING or isinstance(v, list):
                    continue  # arrays contribute their elements, which _candidates yields as well
                if not any(_equal(v, seen) and _type_rank(v) == _type_rank(seen) for seen in values):
                    values.append(v)
        return {"values": values}

    def _find_and_modify(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd.get("findAndModify", cmd.get("findandmodify"))
        remove = bool(cmd.get("remove"))
        update = cmd.get("update")
        if remove == (update is not None):
            raise CommandError(9, "FailedToParse", "Either an update or remove=true must be specified")
        for option in ("arrayFilters", "collation", "hint"):
            if cmd.get(option):
                raise _unsupported(f"the findAndModify option {option!r}")
        projection = Projection(cmd.get("fields"))
        matcher = Matcher(cmd.get("query"))
        coll = self._collection(db, name)
        targets = _sort_docs(coll.find(matcher) if coll is not None else [], cmd.get("sort"))[:1]
        if remove:
            if not targets:
                return {"lastErrorObject": {"n": 0}, "value": None}
            assert coll is not None
            del coll.docs[_id_key(targets[0]["_id"])]
            return {"lastErrorObject": {"n": 1}, "value": projection.apply(targets[0])}
        spec = {"q": cmd.get("query") or {}, "u": update, "upsert": cmd.get("upsert"), "sort": cmd.get("sort")}
        if targets:
            old = targets[0]
            spec["q"] = {"_id": old["_id"]}
            self._update_one_spec(db, name, spec)
            coll = self._collection(db, name)
            assert coll is not None
            new = coll.docs.get(_id_key(old["_id"]))
            value = new if cmd.get("new") else old
            return {"lastErrorObject": {"n": 1, "updatedExisting": True},
                    "value": projection.apply(value) if value is not None else None}
        if not cmd.get("upsert"):
            _check_update(update)
            return {"lastErrorObject": {"n": 0, "updatedExisting": False}, "value": None}
        _, _, new_id = self._update_one_spec(db, name, spec)
        coll = self._collection(db, name)
        assert coll is not None
        doc = coll.docs.get(_id_key(new_id))
        return {"lastErrorObject": {"n": 1, "updatedExisting": False, "upserted": new_id},
                "value": projection.apply(doc) if cmd.get("new") and doc is not None else None}

    # ------------------------------------------------------------------ aggregate

    def _aggregate(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd.get("aggregate")
        if not isinstance(name, str):
            raise _unsupported("a database-level aggregate (aggregate: 1)")
        pipeline = cmd.get("pipeline")
        if not isinstance(pipeline, list):
            raise CommandError(14, "TypeMismatch", "'pipeline' option must be specified as an array")
        if cmd.get("explain"):
            raise _unsupported("explain")
        if not isinstance(cmd.get("cursor"), dict):
            raise CommandError(9, "FailedToParse", "The 'cursor' option is required, except for aggregate with the "
                                                   "explain argument")
        coll = self._collection(db, name)
        docs: list[dict[str, Any]] = list(coll.docs.values()) if coll is not None else []
        for stage in pipeline:
            if not isinstance(stage, dict) or len(stage) != 1:
                raise CommandError(40323, "Location40323",
                                   "A pipeline stage specification object must contain exactly one field.")
            op, arg = next(iter(stage.items()))
            docs = _run_stage(op, arg, docs)
        return self._cursor_reply(conn, f"{db}.{name}", docs, Projection(None), _cursor_batch_size(cmd))

    # ------------------------------------------------------------------ cursors

    def _cursor_reply(self, conn: _Connection, ns: str, docs: list[dict[str, Any]], projection: Projection,
                      batch_size: int | None) -> dict[str, Any]:
        cursor = _Cursor(0, ns, docs, projection, self._owner(conn))
        batch = self._next_batch(cursor, DEFAULT_BATCH if batch_size is None else batch_size)
        if cursor.pos < len(docs):
            self._expire_cursors()
            cursor.id = secrets.randbits(62) or 1
            self._cursors[cursor.id] = cursor
            while len(self._cursors) > self.max_cursors:
                old_id, _ = self._cursors.popitem(last=False)
                logger.info("mongodb: cursor %d closed: more than %d cursors open", old_id, self.max_cursors)
        return {"cursor": {"firstBatch": batch, "id": Int64(cursor.id), "ns": ns}}

    def _next_batch(self, cursor: _Cursor, batch_size: int | None) -> list[dict[str, Any]]:
        """Up to ``batch_size`` documents (``None``: as many as fit), at most ~16 MiB (at least one)."""
        batch: list[dict[str, Any]] = []
        size = 0
        while cursor.pos < len(cursor.docs) and (batch_size is None or len(batch) < batch_size):
            doc = cursor.projection.apply(cursor.docs[cursor.pos])
            size += len(bson.encode(doc))
            if batch and size > MAX_BATCH_BYTES:
                break
            batch.append(doc)
            cursor.pos += 1
        return batch

    def _owner(self, conn: _Connection) -> str | None:
        return conn.session.db_user if conn.session is not None else conn.user

    def _expire_cursors(self) -> None:
        deadline = time.monotonic() - self.cursor_timeout
        for cid in [cid for cid, c in self._cursors.items() if c.last_used < deadline]:
            logger.debug("mongodb: cursor %d timed out", cid)
            del self._cursors[cid]

    def _get_more(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        cid = cmd.get("getMore")
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise CommandError(14, "TypeMismatch", "Field 'getMore' must be of type long")
        coll = cmd.get("collection")
        if not isinstance(coll, str):
            raise CommandError(14, "TypeMismatch", "Field 'collection' must be of type string")
        self._expire_cursors()
        cursor = self._cursors.get(int(cid))
        if cursor is None:
            raise CommandError(43, "CursorNotFound", f"cursor id {cid} not found")
        if cursor.ns != f"{db}.{coll}":
            raise CommandError(13, "Unauthorized", f"Requested getMore on namespace '{db}.{coll}', but cursor "
                                                   f"belongs to a different namespace {cursor.ns}")
        if cursor.owner != self._owner(conn):
            raise CommandError(13, "Unauthorized", f"cursor id {cid} was not created by the authenticated user")
        batch = self._next_batch(cursor, _non_negative(cmd, "batchSize", None) or None)
        cursor.last_used = time.monotonic()
        self._cursors.move_to_end(cursor.id)
        if cursor.pos >= len(cursor.docs):
            del self._cursors[cursor.id]
            cursor.id = 0
        return {"cursor": {"nextBatch": batch, "id": Int64(cursor.id), "ns": cursor.ns}}

    def _kill_cursors(self, conn: _Connection, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        ids = cmd.get("cursors")
        if not isinstance(ids, list):
            raise CommandError(14, "TypeMismatch", "Field 'cursors' must be of type array")
        killed, not_found = [], []
        for cid in ids:
            cursor = self._cursors.get(cid) if isinstance(cid, int) else None
            if cursor is not None and cursor.owner == self._owner(conn):
                del self._cursors[cid]
                killed.append(Int64(cid))
            else:
                not_found.append(cid)
        return {"cursorsKilled": killed, "cursorsNotFound": not_found, "cursorsAlive": [], "cursorsUnknown": []}

    _handlers: ClassVar[dict[str, Callable[[MongoBackend, _Connection, str, dict[str, Any]], dict[str, Any]]]] = {
        "hello": _hello, "isMaster": _hello, "ismaster": _hello,
        "ping": _ping, "buildInfo": _build_info, "buildinfo": _build_info,
        "getParameter": _get_parameter, "getCmdLineOpts": _get_cmd_line_opts, "serverStatus": _server_status,
        "connectionStatus": _connection_status, "whatsmyuri": _whatsmyuri, "getLog": _get_log,
        "endSessions": _ok, "refreshSessions": _ok, "killSessions": _ok, "logout": _logout,
        "saslStart": _sasl_start,
        "saslContinue": _sasl_continue,
        "listDatabases": _list_databases, "listCollections": _list_collections, "listIndexes": _list_indexes,
        "create": _create, "drop": _drop, "dropDatabase": _drop_database,
        "insert": _insert, "find": _find, "getMore": _get_more, "killCursors": _kill_cursors,
        "update": _update, "delete": _delete, "count": _count, "distinct": _distinct,
        "findAndModify": _find_and_modify, "findandmodify": _find_and_modify, "aggregate": _aggregate,
    }


# =========================================================================== helpers


def _check_size(doc: dict[str, Any]) -> bytes:
    """``doc`` encoded; a document over 16 MiB (a ``$push`` too many) is mongod's error 17419."""
    try:
        return bson.encode(doc)
    except bson.BSONEncodeError as exc:
        raise CommandError(17419, "Location17419", f"Resulting document after update is larger than "
                                                   f"{bson.MAX_DOCUMENT_SIZE} ({exc})") from None


def _payload(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, Binary):
        return value.data
    if isinstance(value, str):
        return value.encode("utf-8")
    raise CommandError(14, "TypeMismatch", "SASL payload must be binary data")


def _non_negative(cmd: dict[str, Any], name: str, default: int | None = 0) -> Any:
    value = cmd.get(name)
    if value is None:
        return default
    if not _is_number(value) or value != int(value):
        raise CommandError(14, "TypeMismatch", f"Field '{name}' must be of type long")
    if value < 0:
        raise CommandError(51024, "Location51024", f"BSON field '{name}' value must be >= 0, actual value "
                                                   f"'{int(value)}'")
    return int(value)


def _cursor_batch_size(cmd: dict[str, Any]) -> int | None:
    cursor = cmd.get("cursor")
    if isinstance(cursor, dict):
        return _non_negative(cursor, "batchSize", None)  # type: ignore[no-any-return]
    return None


def _check_db_name(db: str) -> None:
    if not db or len(db) >= 64 or any(ch in db for ch in '/\\. "$\x00'):
        raise CommandError(73, "InvalidNamespace", f"Invalid database name: '{db}'")


def _check_collection_name(db: str, name: str) -> None:
    _check_db_name(db)
    if not name or "$" in name or "\x00" in name or name.startswith(".") or name.startswith("system."):
        raise CommandError(73, "InvalidNamespace", f"Invalid namespace specified '{db}.{name}'")


def _run_stage(op: str, arg: Any, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    match op:
        case "$match":
            matcher = Matcher(arg)
            return [d for d in docs if matcher.matches(d)]
        case "$sort":
            if not isinstance(arg, dict) or not arg:
                raise CommandError(15973, "Location15973", "the $sort key specification must be an object")
            return _sort_docs(docs, arg)
        case "$skip" | "$limit":
            if not _is_number(arg) or arg != int(arg) or arg < (0 if op == "$skip" else 1):
                raise _bad_value(f"invalid argument to {op} stage: {_show(arg)}")
            return docs[int(arg):] if op == "$skip" else docs[:int(arg)]
        case "$project":
            projection = Projection(arg)
            return [projection.apply(d) for d in docs]
        case "$count":
            if not isinstance(arg, str) or not arg or arg.startswith("$") or "." in arg:
                raise _bad_value("the count field must be a non-empty string without '$' or '.'")
            return [{arg: len(docs)}] if docs else []
        case "$group":
            return _group(arg, docs)
    known = {"$lookup", "$unwind", "$addFields", "$set", "$unset", "$replaceRoot", "$facet", "$bucket", "$out",
             "$merge", "$sample", "$geoNear", "$graphLookup", "$sortByCount", "$redact", "$densify", "$fill"}
    if op in known:
        raise CommandError(40324, "Location40324", f"the pipeline stage {op} is {EMULATOR_NOTE}")
    raise CommandError(40324, "Location40324", f"Unrecognized pipeline stage name: '{op}'")


def _group(arg: Any, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``$group`` on a constant ``_id`` with ``$sum`` accumulators (what ``count_documents`` uses)."""
    if not isinstance(arg, dict) or "_id" not in arg:
        raise CommandError(15955, "Location15955", "a group specification must include an _id")
    group_id = arg["_id"]
    if (isinstance(group_id, str) and group_id.startswith("$")) or isinstance(group_id, dict):
        raise _unsupported("$group by a field or expression (only a constant _id)")
    out: dict[str, Any] = {"_id": group_id}
    for name, acc in arg.items():
        if name == "_id":
            continue
        if not isinstance(acc, dict) or list(acc) != ["$sum"]:
            raise _unsupported(f"the $group accumulator in {name!r} (only $sum)")
        term = acc["$sum"]
        if _is_number(term):
            out[name] = term * len(docs)
        elif isinstance(term, str) and term.startswith("$"):
            total: int | float = 0
            for d in docs:
                v = _lookup(d, term[1:].split("."))[0]
                if _is_number(v):
                    total += v
            out[name] = total
        else:
            raise _unsupported(f"$sum of {_show(term)}")
    return [out] if docs else []
