"""Redis serialization protocol, RESP2 and RESP3 (pure, no I/O).

Spec: https://redis.io/docs/latest/develop/reference/protocol-spec/ (RESP2 and RESP3), and
Redis 7.0's ``networking.c`` for how a server reads commands:

* a command is an array of bulk strings, ``*<n>\\r\\n`` then ``$<len>\\r\\n<bytes>\\r\\n`` per
  argument; anything else inside the array is ``Protocol error: expected '$', got 'x'``;
* or an *inline* command (the first byte is not ``*``): one line split on spaces with
  ``sdssplitargs`` quoting (``"…"`` with ``\\n \\xHH`` escapes, ``'…'``), as typed in telnet.
  Empty lines are skipped.

Replies (:func:`encode`) map Python values onto RESP2 or RESP3 types; :func:`parse_value`
reads any RESP2/RESP3 value (what a client reads; used by tests and tools).

Limits, smaller than Redis's: a bulk string is at most :data:`MAX_BULK` (64 MiB; Redis allows
512 MiB), a whole command at most :data:`MAX_COMMAND` bytes, an array at most
:data:`MAX_ARGS` elements (Redis's 1024*1024), an inline line at most 64 KiB (Redis's), and
replies parsed by :func:`parse_value` nest at most :data:`MAX_DEPTH` deep.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from tpemu.wire.errors import LimitExceeded, WireError

MAX_BULK: Final = 64 * 1024 * 1024
MAX_COMMAND: Final = MAX_BULK + 1024 * 1024
MAX_ARGS: Final = 1024 * 1024
MAX_INLINE: Final = 64 * 1024
MAX_DEPTH: Final = 64


class RESPError(WireError):
    """Bad RESP from the peer; ``str(exc)`` is the ``Protocol error: …`` text Redis would send."""


# --------------------------------------------------------------------------- reply value types


@dataclass(frozen=True, slots=True)
class SimpleString:
    """``+OK``: a status reply (``str`` values encode as bulk strings)."""

    text: str


@dataclass(frozen=True, slots=True)
class Error:
    """``-ERR message``: the first word is the error code (ERR, WRONGTYPE, NOAUTH …)."""

    message: str


@dataclass(frozen=True, slots=True)
class Verbatim:
    """RESP3 verbatim string (``=``), e.g. ``txt`` for INFO; a bulk string in RESP2."""

    format: str
    text: str


@dataclass(frozen=True, slots=True)
class BigNumber:
    """RESP3 big number (``(``); a bulk string in RESP2."""

    value: int


@dataclass(frozen=True, slots=True)
class Map:
    """A RESP3 map as parsed (keys may be unhashable); :func:`encode` also takes a ``dict``."""

    items: tuple[tuple[Any, Any], ...]


@dataclass(frozen=True, slots=True)
class Set:
    """A RESP3 set as parsed; :func:`encode` also takes ``set``/``frozenset``."""

    items: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Push:
    """A RESP3 out-of-band push (``>``)."""

    items: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Attribute:
    """A RESP3 attribute (``|``) and the value it annotates."""

    items: tuple[tuple[Any, Any], ...]
    value: Any


@dataclass(frozen=True, slots=True)
class NullArray:
    """RESP2's null array ``*-1`` (RESP3 has one null, ``_``)."""


NULL_ARRAY: Final = NullArray()


# --------------------------------------------------------------------------- encoding


def encode(value: Any, protocol: int = 2) -> bytes:
    """Encode a reply for a client speaking RESP ``protocol`` (2 or 3).

    ``bytes``/``str`` → bulk string, ``int`` → integer, ``None`` → null, ``list``/``tuple`` →
    array, ``dict``/:class:`Map` → map (RESP2: flat array), ``set``/:class:`Set` → set
    (RESP2: array), ``float`` → double (RESP2: bulk string), ``bool`` → boolean (RESP2: 1/0),
    plus :class:`SimpleString`, :class:`Error`, :class:`Verbatim`, :class:`BigNumber`,
    :class:`Push`, :data:`NULL_ARRAY`.
    """
    out = bytearray()
    _encode(out, value, protocol == 3)
    return bytes(out)


def _line(out: bytearray, prefix: bytes, text: str | bytes) -> None:
    # surrogateescape: servers echo client bytes in errors; they round-trip unchanged.
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    if b"\r" in raw or b"\n" in raw:
        raw = raw.replace(b"\r", b" ").replace(b"\n", b" ")  # one-line types cannot carry CR/LF
    out += prefix + raw + b"\r\n"


def _bulk(out: bytearray, raw: bytes) -> None:
    out += b"$%d\r\n" % len(raw)
    out += raw
    out += b"\r\n"


def _encode(out: bytearray, value: Any, resp3: bool) -> None:
    if value is None:
        out += b"_\r\n" if resp3 else b"$-1\r\n"
    elif value is True or value is False:
        if resp3:
            out += b"#t\r\n" if value else b"#f\r\n"
        else:
            out += b":1\r\n" if value else b":0\r\n"
    elif isinstance(value, int):
        out += b":%d\r\n" % value
    elif isinstance(value, bytes | bytearray | memoryview):
        _bulk(out, bytes(value))
    elif isinstance(value, str):
        _bulk(out, value.encode("utf-8"))
    elif isinstance(value, SimpleString):
        _line(out, b"+", value.text)
    elif isinstance(value, Error):
        _line(out, b"-", value.message)
    elif isinstance(value, float):
        text = _format_double(value)
        if resp3:
            out += b"," + text + b"\r\n"
        else:
            _bulk(out, text)
    elif isinstance(value, list | tuple):
        out += b"*%d\r\n" % len(value)
        for item in value:
            _encode(out, item, resp3)
    elif isinstance(value, Mapping | Map):
        items = list(value.items()) if isinstance(value, Mapping) else list(value.items)
        out += (b"%%%d\r\n" % len(items)) if resp3 else (b"*%d\r\n" % (2 * len(items)))
        for k, v in items:
            _encode(out, k, resp3)
            _encode(out, v, resp3)
    elif isinstance(value, set | frozenset | Set):
        items = list(value.items) if isinstance(value, Set) else list(value)
        out += (b"~%d\r\n" if resp3 else b"*%d\r\n") % len(items)
        for item in items:
            _encode(out, item, resp3)
    elif isinstance(value, Verbatim):
        raw = value.text.encode("utf-8")
        if resp3:
            fmt = value.format.encode("ascii")[:3].ljust(3, b" ")
            out += b"=%d\r\n" % (len(raw) + 4) + fmt + b":" + raw + b"\r\n"
        else:
            _bulk(out, raw)
    elif isinstance(value, BigNumber):
        if resp3:
            out += b"(%d\r\n" % value.value
        else:
            _bulk(out, str(value.value).encode())
    elif isinstance(value, Push):
        out += (b">%d\r\n" if resp3 else b"*%d\r\n") % len(value.items)
        for item in value.items:
            _encode(out, item, resp3)
    elif isinstance(value, NullArray):
        out += b"_\r\n" if resp3 else b"*-1\r\n"
    else:
        raise TypeError(f"cannot encode a {type(value).__name__} as RESP")


def _format_double(value: float) -> bytes:
    if math.isnan(value):
        return b"nan"
    if math.isinf(value):
        return b"inf" if value > 0 else b"-inf"
    return repr(value).encode()


def encode_command(*args: bytes | str | int) -> bytes:
    """A command as clients send it (an array of bulk strings)."""
    parts = [a if isinstance(a, bytes) else str(a).encode("utf-8") for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


# --------------------------------------------------------------------------- command parsing


@dataclass(frozen=True, slots=True)
class Command:
    """One client command: its arguments (the first is the name), and whether it came inline."""

    args: tuple[bytes, ...]
    inline: bool = False

    @property
    def name(self) -> str:
        return self.args[0].decode("utf-8", "replace").lower()


class CommandReader:
    """Incremental command parser (sans-IO): :meth:`feed` bytes, then take :meth:`next_command`.

    Keeps its place inside a half-received multibulk command, so a large or many-argument
    command is scanned once however it is split. After a :class:`RESPError` the stream is
    unusable (Redis closes the connection after a protocol error).
    """

    def __init__(self, max_bulk: int = MAX_BULK, max_command: int = MAX_COMMAND, max_args: int = MAX_ARGS,
                 max_inline: int = MAX_INLINE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._args: list[bytes] = []
        self._expected = 0  # arguments still to read in the current multibulk command; 0 = none open
        self._command_start = 0
        self.max_bulk = max_bulk
        self.max_command = max_command
        self.max_args = max_args
        self.max_inline = max_inline

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as commands."""
        return len(self._buf) - self._command_start

    def next_command(self) -> Command | None:
        """The next complete command, or ``None`` if more bytes are needed.

        Raises :class:`RESPError` (or :class:`LimitExceeded`, a subclass of ``WireError``).
        """
        while True:
            if self._expected == 0:
                self._compact()
                if self._pos >= len(self._buf):
                    return None
                if self._buf[self._pos] != ord("*"):
                    cmd = self._inline()
                    if cmd is None:
                        return None
                    if not cmd.args:
                        continue  # an empty line: Redis ignores it
                    return cmd
                count = self._int_line(self._pos + 1, "multibulk length", self.max_inline)
                if count is None:
                    return None
                value, after = count
                if value > self.max_args:
                    raise RESPError("Protocol error: invalid multibulk length")
                self._pos = after
                if value <= 0:
                    self._command_start = self._pos
                    continue  # *0 / *-1: no command, as in Redis
                self._expected = value
                self._args = []
            while self._expected:
                if self._pos >= len(self._buf):
                    return None
                if self._buf[self._pos] != ord("$"):
                    got = chr(self._buf[self._pos])
                    raise RESPError(f"Protocol error: expected '$', got '{got}'")
                header = self._int_line(self._pos + 1, "bulk length", 32)
                if header is None:
                    return None
                size, data_at = header
                if size < 0 or size > self.max_bulk:
                    if size > self.max_bulk:
                        raise LimitExceeded("Redis bulk string", self.max_bulk, size)
                    raise RESPError("Protocol error: invalid bulk length")
                if data_at + size - self._command_start > self.max_command:
                    raise LimitExceeded("Redis command", self.max_command, data_at + size - self._command_start)
                if len(self._buf) < data_at + size + 2:
                    return None
                if self._buf[data_at + size:data_at + size + 2] != b"\r\n":
                    raise RESPError("Protocol error: bulk string is not followed by CRLF")
                self._args.append(bytes(self._buf[data_at:data_at + size]))
                self._pos = data_at + size + 2
                self._expected -= 1
            args, self._args = tuple(self._args), []
            self._command_start = self._pos
            return Command(args)

    def _compact(self) -> None:
        if self._command_start > 65536 or self._command_start == len(self._buf):
            del self._buf[:self._command_start]
            self._pos -= self._command_start
            self._command_start = 0

    def _int_line(self, start: int, what: str, max_len: int) -> tuple[int, int] | None:
        """The integer on the line starting at ``start`` and the position after its CRLF."""
        end = self._buf.find(b"\r\n", start, start + max_len + 2)
        if end < 0:
            if len(self._buf) - start > max_len:
                raise RESPError(f"Protocol error: invalid {what}" if what != "multibulk length"
                                else "Protocol error: too big mbulk count string")
            return None
        text = bytes(self._buf[start:end])
        if not text or not (text.isdigit() or (text[:1] == b"-" and text[1:].isdigit())):
            raise RESPError(f"Protocol error: invalid {what}")
        return int(text), end + 2

    def _inline(self) -> Command | None:
        end = self._buf.find(b"\n", self._pos)
        if end < 0:
            if len(self._buf) - self._pos > self.max_inline:
                raise RESPError("Protocol error: too big inline request")
            return None
        if end - self._pos > self.max_inline:
            raise RESPError("Protocol error: too big inline request")
        line = bytes(self._buf[self._pos:end])
        if line.endswith(b"\r"):
            line = line[:-1]
        self._pos = end + 1
        self._command_start = self._pos
        args = split_args(line)
        if args is None:
            raise RESPError("Protocol error: unbalanced quotes in request")
        return Command(tuple(args), inline=True)


def parse_command(data: bytes | bytearray | memoryview) -> tuple[Command, int] | None:
    """One command at the start of ``data`` and the bytes it used; ``None`` if incomplete.

    Empty inline lines and ``*0`` arrays before it are consumed and counted.
    """
    reader = CommandReader()
    reader.feed(data)
    cmd = reader.next_command()
    if cmd is None:
        return None
    return cmd, len(data) - reader.buffered


_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("a"): b"\a"}
_HEX = b"0123456789abcdefABCDEF"


def split_args(line: bytes) -> list[bytes] | None:
    """Split an inline command like Redis's ``sdssplitargs``; ``None`` for unbalanced quotes."""
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in b" \t\n\r\v\f":
            i += 1
        if i >= n:
            return args
        current = bytearray()
        in_dq = in_sq = False
        while True:
            if in_dq:
                if i >= n:
                    return None
                c = line[i]
                if c == ord("\\") and i + 3 < n and line[i + 1] == ord("x") and line[i + 2] in _HEX \
                        and line[i + 3] in _HEX:
                    current.append(int(line[i + 2:i + 4], 16))
                    i += 3
                elif c == ord("\\") and i + 1 < n:
                    i += 1
                    current += _ESCAPES.get(line[i], bytes((line[i],)))
                elif c == ord('"'):
                    # a closing quote must be followed by a space or the end
                    if i + 1 < n and line[i + 1] not in b" \t\n\r\v\f":
                        return None
                    i += 1
                    break
                else:
                    current.append(c)
            elif in_sq:
                if i >= n:
                    return None
                c = line[i]
                if c == ord("\\") and i + 1 < n and line[i + 1] == ord("'"):
                    i += 1
                    current.append(ord("'"))
                elif c == ord("'"):
                    if i + 1 < n and line[i + 1] not in b" \t\n\r\v\f":
                        return None
                    i += 1
                    break
                else:
                    current.append(c)
            else:
                if i >= n:
                    break
                c = line[i]
                if c in b" \t\n\r\v\f":
                    break
                if c == ord('"'):
                    in_dq = True
                elif c == ord("'"):
                    in_sq = True
                else:
                    current.append(c)
            i += 1
        args.append(bytes(current))


# --------------------------------------------------------------------------- value parsing


def parse_value(data: bytes | bytearray | memoryview, max_bulk: int = MAX_BULK,
                max_elements: int = MAX_ARGS) -> tuple[Any, int] | None:
    """Parse one RESP2/RESP3 value at the start of ``data``: ``(value, bytes used)`` or ``None``.

    Types: ``+`` :class:`SimpleString`, ``-``/``!`` :class:`Error`, ``:`` int, ``$`` bytes or
    ``None``, ``*`` list (``*-1``: :data:`NULL_ARRAY`), ``_`` ``None``, ``,`` float, ``#`` bool,
    ``(`` :class:`BigNumber`, ``=`` :class:`Verbatim`, ``%`` :class:`Map`, ``~`` :class:`Set`,
    ``>`` :class:`Push`, ``|`` :class:`Attribute`.
    """
    parser = _ValueParser(bytes(data), max_bulk, max_elements)
    try:
        value = parser.value(0)
    except _Incomplete:
        return None
    return value, parser.pos


class _Incomplete(Exception):
    pass


class _ValueParser:
    def __init__(self, data: bytes, max_bulk: int, max_elements: int) -> None:
        self.data = data
        self.pos = 0
        self.max_bulk = max_bulk
        self.max_elements = max_elements

    def line(self) -> bytes:
        end = self.data.find(b"\r\n", self.pos)
        if end < 0:
            if len(self.data) - self.pos > MAX_INLINE:
                raise LimitExceeded("RESP line", MAX_INLINE)
            raise _Incomplete
        text = self.data[self.pos:end]
        self.pos = end + 2
        return text

    def integer(self, what: str) -> int:
        text = self.line()
        if not text or not (text.isdigit() or (text[:1] in b"-+" and text[1:].isdigit())):
            raise RESPError(f"invalid RESP {what}: {text[:32]!r}")
        return int(text)

    def blob(self, what: str) -> bytes | None:
        size = self.integer(f"{what} length")
        if size == -1:
            return None
        if size < 0:
            raise RESPError(f"invalid RESP {what} length {size}")
        if size > self.max_bulk:
            raise LimitExceeded(f"RESP {what}", self.max_bulk, size)
        if len(self.data) < self.pos + size + 2:
            raise _Incomplete
        raw = self.data[self.pos:self.pos + size]
        if self.data[self.pos + size:self.pos + size + 2] != b"\r\n":
            raise RESPError(f"RESP {what} is not followed by CRLF")
        self.pos += size + 2
        return raw

    def count(self, what: str) -> int:
        n = self.integer(f"{what} length")
        if n < -1:
            raise RESPError(f"invalid RESP {what} length {n}")
        if n > self.max_elements:
            raise LimitExceeded(f"RESP {what} element count", self.max_elements, n)
        return n

    def text(self, raw: bytes) -> str:
        # Redis echoes client bytes in its errors, UTF-8 or not: keep them (surrogateescape).
        return raw.decode("utf-8", "surrogateescape")

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise LimitExceeded("RESP nesting depth", MAX_DEPTH, depth)
        if self.pos >= len(self.data):
            raise _Incomplete
        kind = self.data[self.pos:self.pos + 1]
        self.pos += 1
        match kind:
            case b"+":
                return SimpleString(self.text(self.line()))
            case b"-":
                return Error(self.text(self.line()))
            case b":":
                return self.integer("integer")
            case b"$":
                return self.blob("bulk string")
            case b"!":
                raw = self.blob("blob error")
                return Error(self.text(raw or b""))
            case b"=":
                raw = self.blob("verbatim string")
                if raw is None or len(raw) < 4 or raw[3:4] != b":":
                    raise RESPError("RESP verbatim string lacks its 3-letter format prefix")
                return Verbatim(self.text(raw[:3]), self.text(raw[4:]))
            case b"_":
                if self.line() != b"":
                    raise RESPError("RESP null has a payload")
                return None
            case b"#":
                flag = self.line()
                if flag not in (b"t", b"f"):
                    raise RESPError(f"invalid RESP boolean {flag[:8]!r}")
                return flag == b"t"
            case b",":
                text = self.line()
                try:
                    return float(text.decode("ascii"))
                except (UnicodeDecodeError, ValueError):
                    raise RESPError(f"invalid RESP double {text[:32]!r}") from None
            case b"(":
                return BigNumber(self.integer("big number"))
            case b"*" | b"~" | b">":
                n = self.count("aggregate")
                if n == -1:
                    if kind != b"*":
                        raise RESPError(f"RESP {kind.decode()} with length -1")
                    return NULL_ARRAY
                items = [self.value(depth + 1) for _ in range(n)]
                if kind == b"~":
                    return Set(tuple(items))
                if kind == b">":
                    return Push(tuple(items))
                return items
            case b"%" | b"|":
                n = self.count("map")
                if n == -1:
                    raise RESPError("RESP map length -1")
                pairs = tuple((self.value(depth + 1), self.value(depth + 1)) for _ in range(n))
                if kind == b"|":
                    return Attribute(pairs, self.value(depth + 1))
                return Map(pairs)
        raise RESPError(f"unknown RESP type byte {kind!r}")
