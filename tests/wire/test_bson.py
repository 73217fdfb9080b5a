"""tpemu.wire.bson against pymongo's ``bson`` package as the oracle.

Vectors are encoded by pymongo's bson in the test (provenance: a real MongoDB driver); each is
decoded whole, fed one byte at a time to ``decode_prefix`` (``None`` until complete) and with
trailing data; our encoding of the decoded value must give the same bytes back, and pymongo must
decode our encoding to the same value. Hypothesis fuzzes the decoder (value or WireError only).
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from typing import Any

import bson as pybson
import pytest
from bson.binary import Binary as PyBinary
from bson.codec_options import CodecOptions
from bson.decimal128 import Decimal128 as PyDecimal128
from bson.errors import InvalidBSON
from bson.int64 import Int64 as PyInt64
from bson.max_key import MaxKey as PyMaxKey
from bson.min_key import MinKey as PyMinKey
from bson.objectid import ObjectId as PyObjectId
from bson.regex import Regex as PyRegex
from bson.timestamp import Timestamp as PyTimestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from tpemu.wire import bson
from tpemu.wire.errors import LimitExceeded, WireError

UTC_OPTIONS: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, tzinfo=dt.UTC)


def to_ours(v: Any) -> Any:
    """pymongo's value → the value tpemu.wire.bson decodes for the same bytes."""
    if isinstance(v, dict):
        return {k: to_ours(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_ours(x) for x in v]
    if isinstance(v, PyObjectId):
        return bson.ObjectId(v.binary)
    if isinstance(v, PyBinary):
        return v if v.subtype == 0 else bson.Binary(v.subtype, bytes(v))
    if isinstance(v, PyRegex):
        return bson.Regex(v.pattern, v.flags if isinstance(v.flags, str) else _flags(v.flags))
    if isinstance(v, PyTimestamp):
        return bson.Timestamp(v.time, v.inc)
    if isinstance(v, PyDecimal128):
        return bson.Decimal128(v.bid)
    if isinstance(v, PyMinKey):
        return bson.MIN_KEY
    if isinstance(v, PyMaxKey):
        return bson.MAX_KEY
    if isinstance(v, PyInt64):
        return bson.Int64(v)
    return v


def to_pymongo(v: Any) -> Any:
    """Our value → pymongo's, so that pymongo can encode it as the oracle."""
    if isinstance(v, dict):
        return {k: to_pymongo(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_pymongo(x) for x in v]
    if isinstance(v, bson.ObjectId):
        return PyObjectId(v.raw)
    if isinstance(v, bson.Timestamp):
        return PyTimestamp(v.time, v.inc)
    return v


def _flags(flags: int) -> str:
    import re

    letters = [("i", re.I), ("l", re.L), ("m", re.M), ("s", re.S), ("u", re.U), ("x", re.X)]
    return "".join(ch for ch, bit in letters if flags & bit)


def sample_documents() -> list[dict[str, Any]]:
    return [
        {},
        {"hello": "world"},
        {"ping": 1, "$db": "admin"},
        {
            "double": 1.5, "neg": -0.0, "inf": float("inf"),
            "string": "héllo \u2603 \U0001f600", "empty": "",
            "doc": {"a": {"b": {"c": [1, 2, {"d": None}]}}},
            "array": [1, "two", 3.0, [4], {"five": 5}],
            "bin0": b"\x00\x01\xff", "uuid": PyBinary(uuid.UUID(int=7).bytes, 4), "user": PyBinary(b"x", 0x80),
            "oid": PyObjectId("65f0a1b2c3d4e5f601234567"),
            "t": True, "f": False,
            "date": dt.datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=dt.UTC),
            "epoch": dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
            "old": dt.datetime(1, 1, 1, tzinfo=dt.UTC),
            "null": None,
            "regex": PyRegex("^a.*b$", "imsx"),
            "i32": -(2**31), "i32max": 2**31 - 1,
            "ts": PyTimestamp(1700000000, 42),
            "i64": PyInt64(5), "big": 2**62, "neg64": -(2**63),
            "dec": PyDecimal128("1.000000000000000000000000000000001"),
            "min": PyMinKey(), "max": PyMaxKey(),
            "": "empty key",
        },
    ]


def feed_three_ways(raw: bytes) -> Any:
    """Decode ``raw`` whole, byte by byte and with trailing data; all must agree."""
    whole = bson.decode(raw)
    for i in range(len(raw)):
        assert bson.decode_prefix(raw[:i]) is None
    assert bson.decode_prefix(raw) == (whole, len(raw))
    trailing = raw + b"\x05\x00\x00\x00\x00tail"
    assert bson.decode_prefix(trailing) == (whole, len(raw))
    with pytest.raises(bson.BSONError, match="trailing"):
        bson.decode(trailing)
    return whole


@pytest.mark.parametrize("doc", sample_documents(), ids=lambda d: f"{len(d)}-fields")
def test_pymongo_encoded_vectors(doc: dict[str, Any]) -> None:
    raw = pybson.encode(doc)
    ours = feed_three_ways(raw)
    assert ours == to_ours(doc)
    assert list(ours) == list(doc)  # key order kept
    assert bson.encode(ours) == raw
    assert pybson.decode(bson.encode(ours), codec_options=UTC_OPTIONS) == pybson.decode(raw, codec_options=UTC_OPTIONS)


def test_our_encoding_of_python_values_decodes_in_pymongo() -> None:
    doc = {"_id": bson.ObjectId(b"\x01" * 12), "n": 2**40, "i": 3, "tup": (1, 2), "naive": dt.datetime(2020, 1, 1),
           "b": bson.Binary(2, b"old"), "ba": bytearray(b"ab")}
    back = pybson.decode(bson.encode(doc))
    assert back["_id"] == PyObjectId(b"\x01" * 12)
    assert back["n"] == 2**40 and isinstance(back["n"], PyInt64)
    assert back["i"] == 3 and not isinstance(back["i"], PyInt64)
    assert back["tup"] == [1, 2]
    assert back["naive"] == dt.datetime(2020, 1, 1)
    assert back["b"] == PyBinary(b"old", 2)
    assert back["ba"] == b"ab"


def test_out_of_range_datetime_is_kept_as_millis() -> None:
    raw = b"\x10\x00\x00\x00\x09d\x00" + struct.pack("<q", 2**62) + b"\x00"
    assert bson.decode(raw) == {"d": bson.DatetimeMS(2**62)}
    assert bson.encode(bson.decode(raw)) == raw


def test_object_id_factory_makes_increasing_ids() -> None:
    factory = bson.ObjectIdFactory()
    a, b = factory.new(), factory.new()
    assert (a != b and a.raw[:9] == b.raw[:9]) or a.raw[:4] != b.raw[:4]
    assert PyObjectId(a.raw).generation_time.year >= 2024


def _doc(body: bytes) -> bytes:
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


@pytest.mark.parametrize(("raw", "message"), [
    (b"\x04\x00\x00\x00", "below the minimum"),
    (_doc(b"")[:-1] + b"\x01", "does not end with NUL"),
    (_doc(b"\x02s\x00\x05\x00\x00\x00abc\x00"), "out of range"),  # string longer than the document
    (_doc(b"\x02s\x00\x00\x00\x00\x00"), "out of range"),  # string length 0
    (_doc(b"\x02s\x00\x02\x00\x00\x00ab"), "NUL-terminated"),
    (_doc(b"\x02s\x00\x02\x00\x00\x00\xff\x00"), "UTF-8"),
    (_doc(b"\x10k"), "unterminated cstring"),
    (_doc(b"\x10\xff\x00\x01\x00\x00\x00"), "UTF-8"),
    (_doc(b"\x08b\x00\x02"), "boolean"),
    (_doc(b"\x10i\x00\x01\x00"), "truncated"),
    (_doc(b"\x05b\x00\x10\x00\x00\x00\x00ab"), "binary length"),
    (_doc(b"\x05b\x00\x05\x00\x00\x00\x02\x05\x00\x00\x00x"), "subtype 2"),
    (_doc(b"\x03d\x00\x06\x00\x00\x00\x00"), "out of range"),  # embedded length past the end
    (_doc(b"\x0dcode\x00\x02\x00\x00\x00x\x00"), "JavaScript code"),
    (_doc(b"\x06u\x00"), "undefined"),
    (_doc(b"\x42x\x00"), "unknown BSON type 0x42"),
])
def test_malformed_documents(raw: bytes, message: str) -> None:
    with pytest.raises(bson.BSONError, match=message):
        bson.decode(raw)
    if message not in ("JavaScript code", "undefined"):  # deprecated types pymongo still reads
        with pytest.raises(InvalidBSON):  # pymongo agrees that these are not BSON
            pybson.decode(raw)


def test_size_and_depth_limits() -> None:
    with pytest.raises(LimitExceeded):
        bson.decode_prefix(struct.pack("<i", bson.MAX_DOCUMENT_SIZE + 1))
    deep: dict[str, Any] = {}
    for _ in range(bson.MAX_DEPTH + 2):
        deep = {"a": deep}
    raw = pybson.encode(deep)
    with pytest.raises(LimitExceeded, match="nesting"):
        bson.decode(raw)
    with pytest.raises(bson.BSONEncodeError):
        bson.encode(deep)
    shallow: dict[str, Any] = {}
    for _ in range(bson.MAX_DEPTH - 1):
        shallow = {"a": shallow}
    assert bson.decode(pybson.encode(shallow)) == shallow


def test_a_maximal_document_round_trips() -> None:
    big = {"blob": b"x" * (bson.MAX_DOCUMENT_SIZE - 100)}
    raw = bson.encode(big)
    assert raw == pybson.encode(big)
    assert bson.decode(raw) == big
    with pytest.raises(bson.BSONEncodeError, match="over"):
        bson.encode({"blob": b"x" * bson.MAX_DOCUMENT_SIZE})
    # A command or reply wrapping a maximal document may use mongod's 16 KiB of headroom.
    wrapper = {"cursor": {"firstBatch": [{**big, "pad": "p" * 200}], "id": 0, "ns": "db.c"}, "ok": 1.0}
    raw = bson.encode(wrapper, bson.MAX_COMMAND_SIZE)
    assert len(raw) > bson.MAX_DOCUMENT_SIZE
    with pytest.raises(LimitExceeded):
        bson.decode(raw)
    assert bson.decode(raw, bson.MAX_COMMAND_SIZE) == wrapper


@pytest.mark.parametrize("value", [object(), {1: "x"}, "a\x00b", 2**64, bson.Int64(2**63)])
def test_unencodable_values(value: Any) -> None:
    doc = value if isinstance(value, dict) else ({value: 1} if isinstance(value, str) else {"v": value})
    with pytest.raises(bson.BSONEncodeError):
        bson.encode(doc)


def test_decode_all_reads_a_sequence() -> None:
    docs = [{"a": 1}, {"b": [2]}, {}]
    raw = b"".join(pybson.encode(d) for d in docs)
    assert bson.decode_all(raw) == docs
    with pytest.raises(bson.BSONError):
        bson.decode_all(raw[:-1])


# --------------------------------------------------------------------------- hypothesis

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False),
    st.text(), st.binary(max_size=64),
    st.builds(bson.ObjectId, st.binary(min_size=12, max_size=12)),
    st.builds(bson.Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.datetimes(timezones=st.just(dt.UTC)).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
)
keys = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=8)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                      max_leaves=20)
documents = st.dictionaries(keys, values, max_size=6)


@settings(max_examples=100, deadline=None)
@given(documents)
def test_round_trip_matches_pymongo(doc: dict[str, Any]) -> None:
    raw = bson.encode(doc)
    assert raw == pybson.encode(to_pymongo(doc), codec_options=UTC_OPTIONS)
    decoded = bson.decode(raw)
    assert bson.encode(decoded) == raw


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=256))
def test_decoder_fuzz(data: bytes) -> None:
    try:
        result = bson.decode_prefix(data)
    except WireError:
        return
    if result is not None:
        doc, used = result
        assert isinstance(doc, dict) and 5 <= used <= len(data)


@settings(max_examples=150, deadline=None)
@given(documents, st.integers(0, 1000), st.integers(0, 255))
def test_decoder_fuzz_mutations(doc: dict[str, Any], at: int, byte: int) -> None:
    raw = bytearray(bson.encode(doc))
    raw[at % len(raw)] = byte
    try:
        bson.decode(bytes(raw))
    except WireError:
        pass
