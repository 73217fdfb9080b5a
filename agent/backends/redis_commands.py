"""What every command of the emulated Redis shares: the command table, errors, argument parsing.

Commands register themselves with :func:`command` (arity, group, flags and the argument hints
that ``COMMAND``/``COMMAND DOCS`` report, as Redis 7's ``commands.def`` describes them); a handler is
called as ``handler(backend, client, args)`` and raises :class:`ReplyError` with Redis's wording.
Also here: Redis's integer and glob rules (``string2ll``, ``stringmatchlen`` in ``util.c``), the
per-connection state (:class:`Client`, ``client.c``'s fields that ``CLIENT LIST`` shows) and the
``COMMAND`` reply layouts. The server is :mod:`tpemu.agent.backends.redis`, the data-type
commands :mod:`tpemu.agent.backends.redis_keyspace` (keys, expiry, strings),
:mod:`tpemu.agent.backends.redis_hashes` and :mod:`tpemu.agent.backends.redis_lists`.
"""

from __future__ import annotations

import functools
import itertools
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tpemu.agent.backends.base import Session
from tpemu.errors import PeerFault
from tpemu.wire.resp import SimpleString

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

class ReplyError(PeerFault):
    """A command failed; ``message`` starts with the error code (ERR, WRONGTYPE, …)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Spec:
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


_COMMANDS: dict[str, Spec] = {}


def command(name: str, arity: int, group: str, summary: str, since: str = "1.0.0", arguments: str = "",
            keys: tuple[int, int, int] = (1, 1, 1), flags: str = "", subcommands: str = "") -> Callable[..., Any]:
    """Register a command handler with what COMMAND and COMMAND DOCS report about it.

    ``arity`` as Redis: positive is exact, negative a minimum (both count the name).
    ``arguments``: space-separated ``name:type`` with ``?`` (optional) and ``*`` (multiple)
    prefixes, enough for redis-cli's hints.
    """
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _COMMANDS[name] = Spec(name, fn, arity, group, summary, since, tuple(arguments.split()), keys,
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
class Client:
    id: int
    addr: str
    laddr: str
    session: Session | None
    protocol: int = 2
    user: str | None = None
    name: bytes = b""
    lib_name: bytes = b""
    lib_ver: bytes = b""
    multi: list[tuple[Spec, list[bytes]]] | None = None  # commands queued since MULTI
    multi_failed: bool = False  # a command was refused while queueing: EXEC aborts
    created: float = field(default_factory=time.monotonic)
    last_command: str = "NULL"
    last_active: float = field(default_factory=time.monotonic)

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


def _command_info(spec: Spec) -> list[Any]:
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


def _command_docs(spec: Spec) -> dict[str, Any]:
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
