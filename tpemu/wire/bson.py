"""BSON documents (pure, no I/O).

Spec: BSON 1.1 (https://bsonspec.org/spec.html). A document is ``int32 total length`` (little
endian, self-inclusive), then elements ``type byte, cstring name, value``, then ``0x00``.

Python mapping, in both directions (the emulator's own types are frozen dataclasses here):

=========  =====================  ==========================================================
type       BSON                   Python
=========  =====================  ==========================================================
0x01       double                 ``float``
0x02       string                 ``str``
0x03       document               ``dict`` (key order kept)
0x04       array                  ``list`` (``tuple`` also encodes as an array)
0x05       binary                 ``bytes`` for subtype 0, :class:`Binary` for the others
0x07       ObjectId               :class:`ObjectId`
0x08       boolean                ``bool``
0x09       UTC datetime           aware ``datetime`` (UTC); :class:`DatetimeMS` when out of range
0x0A       null                   ``None``
0x0B       regex                  :class:`Regex`
0x10       int32                  ``int``
0x11       timestamp              :class:`Timestamp`
0x12       int64                  :class:`Int64` (an ``int``; plain ints that do not fit int32
                                  are encoded as int64 as well)
0x13       decimal128             :class:`Decimal128` (the 16 raw bytes, not interpreted)
0xFF/0x7F  min/max key            :data:`MIN_KEY` / :data:`MAX_KEY`
=========  =====================  ==========================================================

The deprecated types (undefined 0x06, DBPointer 0x0C, symbol 0x0E, JavaScript code 0x0D/0x0F)
are refused with a :class:`BSONError` naming the type: no MongoDB driver of the last decade
sends them in commands.

Hard limits: a document is at most 16 MiB (MongoDB's ``maxBsonObjectSize``; callers may allow
the 16 KiB more that mongod allows a command or reply wrapping such a document) and nests at most
:data:`MAX_DEPTH` levels (mongod's default ``maxBSONDepth`` is 200; ours is lower because every
level is a Python call).
"""

from __future__ import annotations

import datetime as _dt
import os
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from tpemu.errors import LocalFault
from tpemu.wire.errors import LimitExceeded, WireError

#: MongoDB's maxBsonObjectSize: the largest document a server stores.
MAX_DOCUMENT_SIZE: Final = 16 * 1024 * 1024
#: mongod's BSONObjMaxInternalSize: a command or reply wrapping a maximal document may be this big.
MAX_COMMAND_SIZE: Final = MAX_DOCUMENT_SIZE + 16 * 1024
#: Nesting limit (documents and arrays) for decoding and encoding.
MAX_DEPTH: Final = 100
#: The smallest document: int32 length 5 + terminating NUL.
EMPTY_DOCUMENT: Final = b"\x05\x00\x00\x00\x00"

_INT32 = struct.Struct("<i")
_INT64 = struct.Struct("<q")
_UINT32 = struct.Struct("<I")
_DOUBLE = struct.Struct("<d")
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


class BSONError(WireError):
    """Malformed BSON from the peer."""


class BSONEncodeError(LocalFault, ValueError):
    """A value this codec cannot encode (a local fault, not the peer's)."""


@dataclass(frozen=True, slots=True)
class ObjectId:
    """A 12-byte ObjectId: 4-byte big-endian seconds, 5 random bytes, 3-byte counter."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 12:
            raise ValueError("an ObjectId is 12 bytes")

    @classmethod
    def from_hex(cls, text: str) -> ObjectId:
        return cls(bytes.fromhex(text))

    def __str__(self) -> str:
        return self.raw.hex()

    def __repr__(self) -> str:
        return f"ObjectId('{self.raw.hex()}')"


class ObjectIdFactory:
    """Makes ObjectIds the way drivers do (time, per-process random, incrementing counter)."""

    def __init__(self) -> None:
        self._random = os.urandom(5)
        self._counter = int.from_bytes(os.urandom(3), "big")

    def new(self) -> ObjectId:
        self._counter = (self._counter + 1) & 0xFFFFFF
        return ObjectId(int(time.time()).to_bytes(4, "big") + self._random + self._counter.to_bytes(3, "big"))


@dataclass(frozen=True, slots=True)
class Binary:
    """Binary data with a subtype other than 0 (0 decodes to plain ``bytes``)."""

    subtype: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Regex:
    pattern: str
    flags: str = ""


@dataclass(frozen=True, slots=True)
class Timestamp:
    """MongoDB's internal timestamp: seconds (high 32 bits) and an increment (low 32 bits)."""

    time: int
    inc: int


@dataclass(frozen=True, slots=True)
class Decimal128:
    """IEEE 754-2008 decimal128, kept as its 16 little-endian bytes (not interpreted)."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class DatetimeMS:
    """A UTC datetime outside what ``datetime`` can hold, as milliseconds since the epoch."""

    millis: int


class Int64(int):
    """An int that stays a BSON int64 when re-encoded (decoded int64 values are this type)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class _Key:
    name: str

    def __repr__(self) -> str:
        return self.name


MIN_KEY: Final = _Key("MinKey")
MAX_KEY: Final = _Key("MaxKey")

_DEPRECATED = {
    0x06: "undefined",
    0x0C: "DBPointer",
    0x0D: "JavaScript code",
    0x0E: "symbol",
    0x0F: "JavaScript code with scope",
}


def datetime_to_millis(value: _dt.datetime) -> int:
    """Milliseconds since the epoch (naive datetimes are taken as UTC, as pymongo does)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def millis_to_datetime(millis: int) -> _dt.datetime | DatetimeMS:
    try:
        return _EPOCH + _dt.timedelta(milliseconds=millis)
    except OverflowError:
        return DatetimeMS(millis)


# --------------------------------------------------------------------------- decoding


def document_length(data: bytes | bytearray | memoryview, offset: int = 0,
                    max_size: int = MAX_DOCUMENT_SIZE) -> int | None:
    """The declared length of the document at ``offset``; ``None`` if fewer than 4 bytes.

    Raises :class:`BSONError` for an impossible length and :class:`LimitExceeded` past
    ``max_size`` (16 MiB unless the caller allows a command's :data:`MAX_COMMAND_SIZE`).
    """
    if len(data) - offset < 4:
        return None
    length: int = _INT32.unpack_from(data, offset)[0]
    if length < 5:
        raise BSONError(f"BSON document length {length} is below the minimum of 5")
    if length > max_size:
        raise LimitExceeded("BSON document", max_size, length)
    return length


def decode_prefix(data: bytes | bytearray | memoryview,
                  max_size: int = MAX_DOCUMENT_SIZE) -> tuple[dict[str, Any], int] | None:
    """Decode the document at the start of ``data``.

    Returns ``(document, bytes used)``, or ``None`` if ``data`` holds only part of it; bytes
    after the document are left alone. Raises :class:`BSONError` / :class:`LimitExceeded`.
    """
    length = document_length(data, 0, max_size)
    if length is None or len(data) < length:
        return None
    buf = bytes(data[:length])
    doc, _ = _decode_document(buf, 0, length, 0)
    return doc, length


def decode(data: bytes | bytearray | memoryview, max_size: int = MAX_DOCUMENT_SIZE) -> dict[str, Any]:
    """Decode exactly one document; anything missing or left over is a :class:`BSONError`."""
    length = document_length(data, 0, max_size)
    if length is None or len(data) < length:
        raise BSONError(f"truncated BSON document ({len(data)} bytes, declared {length})")
    if len(data) != length:
        raise BSONError(f"{len(data) - length} bytes of trailing data after a BSON document")
    buf = bytes(data)
    return _decode_document(buf, 0, length, 0)[0]


def decode_all(data: bytes | bytearray | memoryview, max_size: int = MAX_DOCUMENT_SIZE) -> list[dict[str, Any]]:
    """Decode a run of documents that fills ``data`` exactly (an OP_MSG document sequence)."""
    buf = bytes(data)
    docs = []
    pos = 0
    while pos < len(buf):
        length = document_length(buf, pos, max_size)
        if length is None or pos + length > len(buf):
            raise BSONError("truncated BSON document in a document sequence")
        doc, pos = _decode_document(buf, pos, len(buf), 0)
        docs.append(doc)
    return docs


def _cstring(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    nul = buf.find(b"\x00", pos, end)
    if nul < 0:
        raise BSONError("unterminated cstring in BSON")
    try:
        return buf[pos:nul].decode("utf-8"), nul + 1
    except UnicodeDecodeError:
        raise BSONError("BSON cstring is not valid UTF-8") from None


def _string(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    if end - pos < 4:
        raise BSONError("truncated BSON string length")
    (size,) = _INT32.unpack_from(buf, pos)
    pos += 4
    if size < 1 or size > end - pos:
        raise BSONError(f"BSON string length {size} is out of range")
    if buf[pos + size - 1] != 0:
        raise BSONError("BSON string is not NUL-terminated")
    try:
        return buf[pos:pos + size - 1].decode("utf-8"), pos + size
    except UnicodeDecodeError:
        raise BSONError("BSON string is not valid UTF-8") from None


def _decode_document(buf: bytes, pos: int, limit: int, depth: int) -> tuple[dict[str, Any], int]:
    """Decode the document (or array body) at ``pos``, which must end by ``limit``.

    Returns it and the position after it.
    """
    if depth > MAX_DEPTH:
        raise LimitExceeded("BSON nesting depth", MAX_DEPTH, depth)
    if limit - pos < 5:
        raise BSONError("truncated BSON document")
    (length,) = _INT32.unpack_from(buf, pos)
    end = pos + length
    if length < 5 or end > limit:
        raise BSONError(f"embedded BSON document length {length} is out of range")
    last = end - 1
    if buf[last] != 0:
        raise BSONError("BSON document does not end with NUL")
    pos += 4
    doc: dict[str, Any] = {}
    while pos < last:
        etype = buf[pos]
        name, pos = _cstring(buf, pos + 1, last)
        doc[name], pos = _decode_value(buf, etype, pos, last, depth, name)
    return doc, end


def _need(pos: int, size: int, end: int, what: str) -> None:
    if end - pos < size:
        raise BSONError(f"truncated BSON {what}")


def _decode_value(buf: bytes, etype: int, pos: int, end: int, depth: int,
                  name: str) -> tuple[Any, int]:
    """Decode one value of type ``etype`` at ``pos``; the enclosing document's elements end at ``end``."""
    match etype:
        case 0x01:
            _need(pos, 8, end, "double")
            return _DOUBLE.unpack_from(buf, pos)[0], pos + 8
        case 0x02:
            return _string(buf, pos, end)
        case 0x03:
            return _decode_document(buf, pos, end, depth + 1)
        case 0x04:
            arr, after = _decode_document(buf, pos, end, depth + 1)
            return list(arr.values()), after
        case 0x05:
            _need(pos, 5, end, "binary")
            (size,) = _INT32.unpack_from(buf, pos)
            subtype = buf[pos + 4]
            pos += 5
            if size < 0 or size > end - pos:
                raise BSONError(f"BSON binary length {size} is out of range")
            data = buf[pos:pos + size]
            if subtype == 0x02:  # old binary: an inner int32 length repeats the size minus 4
                if size < 4 or _INT32.unpack_from(data)[0] != size - 4:
                    raise BSONError("BSON binary subtype 2 has an inconsistent inner length")
                return Binary(2, data[4:]), pos + size
            return (data if subtype == 0 else Binary(subtype, data)), pos + size
        case 0x07:
            _need(pos, 12, end, "ObjectId")
            return ObjectId(buf[pos:pos + 12]), pos + 12
        case 0x08:
            _need(pos, 1, end, "boolean")
            b = buf[pos]
            if b > 1:
                raise BSONError(f"BSON boolean byte is {b} (must be 0 or 1)")
            return b == 1, pos + 1
        case 0x09:
            _need(pos, 8, end, "datetime")
            return millis_to_datetime(_INT64.unpack_from(buf, pos)[0]), pos + 8
        case 0x0A:
            return None, pos
        case 0x0B:
            pattern, pos = _cstring(buf, pos, end)
            flags, pos = _cstring(buf, pos, end)
            return Regex(pattern, flags), pos
        case 0x10:
            _need(pos, 4, end, "int32")
            return _INT32.unpack_from(buf, pos)[0], pos + 4
        case 0x11:
            _need(pos, 8, end, "timestamp")
            inc, secs = struct.unpack_from("<II", buf, pos)
            return Timestamp(secs, inc), pos + 8
        case 0x12:
            _need(pos, 8, end, "int64")
            return Int64(_INT64.unpack_from(buf, pos)[0]), pos + 8
        case 0x13:
            _need(pos, 16, end, "decimal128")
            return Decimal128(buf[pos:pos + 16]), pos + 16
        case 0xFF:
            return MIN_KEY, pos
        case 0x7F:
            return MAX_KEY, pos
    if etype in _DEPRECATED:
        raise BSONError(f"BSON type 0x{etype:02x} ({_DEPRECATED[etype]}) in field {name!r} is deprecated "
                        "and not supported by the tpemu emulator")
    raise BSONError(f"unknown BSON type 0x{etype:02x} in field {name!r}")


# --------------------------------------------------------------------------- encoding


def encode(doc: Mapping[str, Any], max_size: int = MAX_DOCUMENT_SIZE) -> bytes:
    """Encode a mapping as one BSON document (keys in the mapping's order).

    Raises :class:`BSONEncodeError` for unsupported values, keys with NUL, too deep nesting or
    a result over ``max_size`` (16 MiB by default).
    """
    out = bytearray()
    _encode_document(out, doc, 0)
    if len(out) > max_size:
        raise BSONEncodeError(f"document is {len(out)} bytes, over the {max_size}-byte BSON limit")
    return bytes(out)


def _encode_cstring(out: bytearray, text: str) -> None:
    raw = text.encode("utf-8")
    if b"\x00" in raw:
        raise BSONEncodeError(f"BSON key or regex {text!r} contains NUL")
    out += raw
    out.append(0)


def _encode_document(out: bytearray, doc: Mapping[str, Any], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BSONEncodeError(f"document nesting exceeds {MAX_DEPTH} levels")
    start = len(out)
    out += b"\x00\x00\x00\x00"
    for key, value in doc.items():
        if not isinstance(key, str):
            raise BSONEncodeError(f"BSON keys must be str, not {type(key).__name__}")
        _encode_element(out, key, value, depth)
    out.append(0)
    _INT32.pack_into(out, start, len(out) - start)


def _encode_element(out: bytearray, key: str, value: Any, depth: int) -> None:
    type_at = len(out)
    out.append(0)
    _encode_cstring(out, key)
    out[type_at] = _encode_value(out, value, depth)


def _encode_value(out: bytearray, value: Any, depth: int) -> int:
    """Append ``value``'s bytes and return its BSON type byte."""
    # bool before int: bool is an int subclass.
    if value is None:
        return 0x0A
    if value is True or value is False:
        out.append(1 if value else 0)
        return 0x08
    if isinstance(value, Int64):
        if not -(2**63) <= value < 2**63:
            raise BSONEncodeError(f"integer {int(value)} does not fit in int64")
        out += _INT64.pack(value)
        return 0x12
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            out += _INT32.pack(value)
            return 0x10
        if -(2**63) <= value < 2**63:
            out += _INT64.pack(value)
            return 0x12
        raise BSONEncodeError(f"integer {value} does not fit in int64")
    if isinstance(value, float):
        out += _DOUBLE.pack(value)
        return 0x01
    if isinstance(value, str):
        raw = value.encode("utf-8")
        out += _INT32.pack(len(raw) + 1)
        out += raw
        out.append(0)
        return 0x02
    if isinstance(value, Mapping):
        _encode_document(out, value, depth + 1)
        return 0x03
    if isinstance(value, list | tuple):
        _encode_document(out, {str(i): v for i, v in enumerate(value)}, depth + 1)
        return 0x04
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out += _INT32.pack(len(raw))
        out.append(0)
        out += raw
        return 0x05
    if isinstance(value, Binary):
        data = value.data
        if value.subtype == 0x02:
            data = _INT32.pack(len(data)) + data
        out += _INT32.pack(len(data))
        out.append(value.subtype & 0xFF)
        out += data
        return 0x05
    if isinstance(value, ObjectId):
        out += value.raw
        return 0x07
    if isinstance(value, _dt.datetime):
        out += _INT64.pack(datetime_to_millis(value))
        return 0x09
    if isinstance(value, DatetimeMS):
        out += _INT64.pack(value.millis)
        return 0x09
    if isinstance(value, Regex):
        _encode_cstring(out, value.pattern)
        _encode_cstring(out, value.flags)
        return 0x0B
    if isinstance(value, Timestamp):
        out += struct.pack("<II", value.inc, value.time)
        return 0x11
    if isinstance(value, Decimal128):
        if len(value.raw) != 16:
            raise BSONEncodeError("Decimal128 must be 16 bytes")
        out += value.raw
        return 0x13
    if value is MIN_KEY:
        return 0xFF
    if value is MAX_KEY:
        return 0x7F
    raise BSONEncodeError(f"cannot encode a {type(value).__name__} as BSON")
