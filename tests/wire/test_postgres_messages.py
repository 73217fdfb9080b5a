"""tpemu.wire.postgres: start-up packets, frontend message framing/decoding, backend encoders, values.

Byte vectors marked "captured" were recorded on this machine from the real clients talking to
the emulated server (asyncpg 0.32.0; psycopg 3.3.9 with its bundled libpq 18), by wrapping the
server's reads; they are pasted as hex. Value vectors come from psycopg's own binary dumpers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpemu.wire import LimitExceeded, WireError
from tpemu.wire import postgres as pg
from tpemu.wire import postgres_values as pgv

# asyncpg 0.32.0 (captured): StartupMessage, Parse, Describe(S), Flush, Bind, Execute, Sync, Terminate.
ASYNCPG_STARTUP = bytes.fromhex(
    "00000038"
    "00030000636c69656e745f656e636f64696e6700277574662d3827007573657200616c6963650064617461626173650064620000")
ASYNCPG_PARSE = bytes.fromhex(
    "500000002d" "5f5f6173796e6370675f73746d745f315f5f0073656c6563742024313a3a696e7434202b2031000000")
ASYNCPG_DESCRIBE = bytes.fromhex("4400000018" "535f5f6173796e6370675f73746d745f315f5f00")
ASYNCPG_BIND = bytes.fromhex(
    "420000002a" "005f5f6173796e6370675f73746d745f315f5f00000100010001000000040000002900010001")
ASYNCPG_EXECUTE = bytes.fromhex("4500000009" "0000000001")
ASYNCPG_SASL_INITIAL = bytes.fromhex(
    "7000000043"
    "534352414d2d5348412d323536000000002d6e2c2c6e3d616c6963652c723d4f68357861747437327071414a483661326d6f33"
    "69356364364c713331554e44")
# psycopg 3.3.9 / libpq 18 (captured): StartupMessage, Query BEGIN, Parse with types (0, int2),
# Bind with mixed formats (text 'x', binary int2 5), Describe(P), Execute.
PSYCOPG_STARTUP = bytes.fromhex(
    "00000033" "000300007573657200616c696365006461746162617365006462006170706c69636174696f6e5f6e616d6500740000")
PSYCOPG_QUERY = bytes.fromhex("510000000a" "424547494e00")
PSYCOPG_PARSE = bytes.fromhex("5000000023" "0073656c6563742024313a3a746578742c2024320000020000000000000015")
PSYCOPG_BIND = bytes.fromhex("420000001d" "00000002000000010002000000017800000002000500010000")
PSYCOPG_DESCRIBE = bytes.fromhex("4400000006" "5000")
PSYCOPG_EXECUTE = bytes.fromhex("4500000009" "0000000000")
SYNC = bytes.fromhex("5300000004")  # both clients
FLUSH = bytes.fromhex("4800000004")  # asyncpg
TERMINATE = bytes.fromhex("5800000004")  # both clients


def three_ways(parse: Callable[[bytes], Any], data: bytes, size: Callable[[Any], int]) -> Any:
    """Feed ``data`` whole, one byte at a time, and with trailing bytes; all must agree."""
    whole = parse(data)
    assert whole is not None
    assert size(whole) == len(data)
    for i in range(len(data)):
        assert parse(data[:i]) is None, f"parsed after only {i} of {len(data)} bytes"
    trailing = parse(data + b"\x00junk")
    assert trailing == whole
    return whole


def test_startup_message_from_asyncpg() -> None:
    msg = three_ways(pg.parse_startup, ASYNCPG_STARTUP, lambda m: m.length)
    assert isinstance(msg, pg.StartupMessage)
    assert msg.params == (("client_encoding", "'utf-8'"), ("user", "alice"), ("database", "db"))
    assert (msg.major, msg.minor) == (3, 0)


def test_startup_message_from_libpq() -> None:
    msg = three_ways(pg.parse_startup, PSYCOPG_STARTUP, lambda m: m.length)
    assert isinstance(msg, pg.StartupMessage)
    assert msg.get("user") == "alice" and msg.get("database") == "db" and msg.get("application_name") == "t"


def test_startup_encoder_round_trips() -> None:
    for params in ({}, {"user": ""}, {"user": "alice", "database": "db", "options": "-c a=b"}):
        msg = pg.parse_startup(pg.encode_startup(params))
        assert isinstance(msg, pg.StartupMessage)
        assert dict(msg.params) == params


def test_ssl_and_gssenc_requests() -> None:
    assert isinstance(pg.parse_startup(pg.SSL_REQUEST + b"\x16\x03"), pg.SSLRequest)
    assert isinstance(pg.parse_startup(pg.GSSENC_REQUEST), pg.GSSENCRequest)


@pytest.mark.parametrize("bad", [
    b"\x00\x00\x00\x0a\x00\x03\x00\x00a\x00",  # a name without a value
    b"\x00\x00\x00\x0b\x00\x03\x00\x00a\x00b",  # value not terminated
    b"\x00\x00\x00\x08\x00\x04\x00\x00",  # protocol 4.0
    b"GET / HTTP/1.1\r\n",  # announces a 1.1 GB packet
])
def test_startup_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(WireError):
        pg.parse_startup(bad)


@pytest.mark.parametrize("data,expected", [
    (ASYNCPG_PARSE, pg.Parse("__asyncpg_stmt_1__", "select $1::int4 + 1", ())),
    (ASYNCPG_DESCRIBE, pg.Describe("S", "__asyncpg_stmt_1__")),
    (ASYNCPG_BIND, pg.Bind("", "__asyncpg_stmt_1__", (1,), (b"\x00\x00\x00\x29",), (1,))),
    (ASYNCPG_EXECUTE, pg.Execute("", 1)),
    (PSYCOPG_QUERY, pg.Query("BEGIN")),
    (PSYCOPG_PARSE, pg.Parse("", "select $1::text, $2", (0, pgv.OID_INT2))),
    (PSYCOPG_BIND, pg.Bind("", "", (0, 1), (b"x", b"\x00\x05"), (0,))),
    (PSYCOPG_DESCRIBE, pg.Describe("P", "")),
    (PSYCOPG_EXECUTE, pg.Execute("", 0)),
    (SYNC, pg.Sync()),
    (FLUSH, pg.Flush()),
    (TERMINATE, pg.Terminate()),
    (pg.encode_message(b"C", b"S\x00"), pg.Close("S", "")),
    (pg.encode_message(b"d", b"row"), pg.OtherMessage(b"d", b"row")),
])
def test_frontend_messages(data: bytes, expected: object) -> None:
    msg = three_ways(pg.parse_message, data, lambda m: m.size)
    assert pg.decode_frontend(msg) == expected


def test_pipelined_messages_are_framed_one_by_one() -> None:
    stream = ASYNCPG_PARSE + ASYNCPG_DESCRIBE + FLUSH
    seen = []
    while stream:
        msg = pg.parse_message(stream)
        assert msg is not None
        seen.append(type(pg.decode_frontend(msg)).__name__)
        stream = stream[msg.size:]
    assert seen == ["Parse", "Describe", "Flush"]


def test_message_size_cap_applies_before_the_body_arrives() -> None:
    head = b"Q" + (2 << 20).to_bytes(4, "big")
    with pytest.raises(LimitExceeded):
        pg.parse_message(head)
    assert pg.parse_message(head, limit=4 << 20) is None


@pytest.mark.parametrize("body,tag", [
    (b"no terminator", b"Q"),
    (b"\x00q\x00\xff\xff", b"P"),  # negative parameter count
    (b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe", b"B"),  # parameter length -2
    (b"\x00\x00\x00\x01\x00\x07\x00\x00\x00\x00", b"B"),  # format code 7
    (b"X\x00", b"D"),
    (b"S\x00trailing", b"D"),
    (b"\x00\x00", b"E"),  # truncated row count
])
def test_malformed_bodies_raise(body: bytes, tag: bytes) -> None:
    msg = pg.parse_message(pg.encode_message(tag, body))
    assert msg is not None
    with pytest.raises(pg.PostgresError):
        pg.decode_frontend(msg)


def test_password_and_sasl_bodies() -> None:
    assert pg.decode_password(b"md5abc\x00") == "md5abc"
    msg = pg.parse_message(ASYNCPG_SASL_INITIAL, pg.MAX_AUTH_MESSAGE)
    assert msg is not None and msg.tag == b"p"
    initial = pg.decode_sasl_initial(msg.body)
    assert initial.mechanism == "SCRAM-SHA-256"
    assert initial.data is not None and initial.data.startswith(b"n,,n=alice,r=")
    assert pg.decode_sasl_initial(b"X\x00\xff\xff\xff\xff") == pg.SASLInitialResponse("X", None)
    with pytest.raises(pg.PostgresError):
        pg.decode_sasl_initial(b"X\x00\x00\x00\x00\x09abc")


def test_md5_password_matches_the_documented_construction() -> None:
    # concat('md5', md5(concat(md5(concat(password, username)), random-salt))), computed by hand.
    import hashlib
    inner = hashlib.md5(b"secretalice").hexdigest().encode()
    assert pg.md5_password("alice", "secret", b"\x01\x02\x03\x04") == "md5" + hashlib.md5(
        inner + b"\x01\x02\x03\x04").hexdigest()


def test_backend_encoders_follow_the_message_formats() -> None:
    # Layouts from "Message Formats" (PostgreSQL 16 docs), byte for byte.
    assert pg.encode_auth_ok() == bytes.fromhex("520000000800000000")
    assert pg.encode_auth_md5(b"abcd") == bytes.fromhex("520000000c00000005") + b"abcd"
    assert pg.encode_auth_sasl(("SCRAM-SHA-256",)) == b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"
    assert pg.encode_ready_for_query("T") == b"Z\x00\x00\x00\x05T"
    assert pg.encode_parameter_status("a", "b") == b"S\x00\x00\x00\x08a\x00b\x00"
    assert pg.encode_backend_key_data(7, b"\x00\x00\x00\x09") == b"K\x00\x00\x00\x0c\x00\x00\x00\x07\x00\x00\x00\x09"
    assert pg.encode_command_complete("SELECT 1") == b"C\x00\x00\x00\x0dSELECT 1\x00"
    assert pg.encode_data_row([b"1", None]) == b"D\x00\x00\x00\x0f\x00\x02\x00\x00\x00\x011\xff\xff\xff\xff"
    assert pg.encode_parameter_description([23]) == b"t\x00\x00\x00\x0a\x00\x01\x00\x00\x00\x17"
    field = pg.FieldDescription("n", pgv.OID_INT4, 4)
    assert pg.encode_row_description([field]) == (
        b"T\x00\x00\x00\x1a\x00\x01n\x00" + bytes(4) + bytes(2) + b"\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00")
    assert pg.encode_negotiate_protocol_version(0, ("_pq_.x",)) == (
        b"v\x00\x00\x00\x13\x00\x00\x00\x00\x00\x00\x00\x01_pq_.x\x00")
    err = pg.encode_error_response("boom", "42601", "ERROR")
    assert err.startswith(b"E") and b"C42601\x00" in err and b"Mboom\x00" in err and err.endswith(b"\x00\x00")


# --- values -----------------------------------------------------------------------------------

psycopg = pytest.importorskip("psycopg")


def _psycopg_binary(value: object, oid: int) -> bytes:
    """The binary form psycopg's own dumper produces for ``value`` (which must be type ``oid``)."""
    from psycopg.adapt import PyFormat, Transformer

    dumper = Transformer().get_dumper(value, PyFormat.BINARY)
    assert dumper.oid == oid
    out = dumper.dump(value)
    assert out is not None
    return bytes(out)


@pytest.mark.parametrize("oid,value", [
    (pgv.OID_BOOL, True), (pgv.OID_INT2, -2), (pgv.OID_INT4, 41), (pgv.OID_INT8, 2**40), (pgv.OID_FLOAT8, 2.5),
    (pgv.OID_FLOAT4, 0.5), (pgv.OID_TEXT, "héllo"), (pgv.OID_NUMERIC, Decimal("1.5")),
    (pgv.OID_NUMERIC, Decimal("-12345678.0001")), (pgv.OID_NUMERIC, Decimal("0.00001")),
    (pgv.OID_NUMERIC, Decimal("100000000")), (pgv.OID_NUMERIC, Decimal("0")), (pgv.OID_NUMERIC, Decimal("NaN")),
    (pgv.OID_TIMESTAMPTZ, datetime(2024, 2, 29, 12, 30, 1, 123456, tzinfo=UTC)),
    (pgv.OID_TIMESTAMP, datetime(1999, 12, 31, 23, 59, 59)), (pgv.OID_DATE, date(2001, 1, 2)),
])
def test_binary_values_match_psycopg(oid: int, value: Any) -> None:
    ours = pgv.encode_binary_value(oid, value)
    if oid in (pgv.OID_INT2, pgv.OID_INT4, pgv.OID_INT8, pgv.OID_FLOAT4):
        width = {pgv.OID_INT2: ">h", pgv.OID_INT4: ">i", pgv.OID_INT8: ">q", pgv.OID_FLOAT4: ">f"}[oid]
        assert ours == struct.pack(width, value)  # psycopg picks the int width by value; the layout is fixed
    else:
        assert ours == _psycopg_binary(value, oid)
    back = pgv.decode_binary_value(oid, ours)
    if isinstance(value, Decimal) and value.is_nan():
        assert isinstance(back, Decimal) and back.is_nan()
    else:
        assert back == value


def test_text_values() -> None:
    assert pgv.encode_text_value(pgv.OID_BOOL, False) == b"f"
    assert pgv.encode_text_value(pgv.OID_FLOAT8, 1e20) == b"1e+20"
    assert pgv.encode_text_value(pgv.OID_FLOAT8, 3.0) == b"3"
    assert pgv.encode_text_value(pgv.OID_FLOAT8, float("inf")) == b"Infinity"
    ts = datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)
    assert pgv.encode_text_value(pgv.OID_TIMESTAMPTZ, ts) == b"2024-01-02 03:04:05.5+00"
    assert pgv.encode_text_value(pgv.OID_NUMERIC, Decimal("1E+3")) == b"1000"


@pytest.mark.parametrize("oid,data", [
    (pgv.OID_INT4, b"\x00\x01"), (pgv.OID_BOOL, b""), (pgv.OID_NUMERIC, b"\x00\x01\x00\x00\x00\x00\x00\x00"),
    (pgv.OID_NUMERIC, b"\x00\x01\x00\x00\x00\x00\x00\x00\x27\x10"), (pgv.OID_TEXT, b"\xff"), (2950, b"x" * 16),
])
def test_bad_binary_values(oid: int, data: bytes) -> None:
    with pytest.raises(pg.PostgresError):
        pgv.decode_binary_value(oid, data)


# --- fuzz -------------------------------------------------------------------------------------


def _only_wire_errors(fn: Callable[[], object]) -> None:
    try:
        fn()
    except WireError:
        pass


@given(st.binary(max_size=200))
def test_fuzz_parse_startup(data: bytes) -> None:
    _only_wire_errors(lambda: pg.parse_startup(data))


@given(st.sampled_from(b"QPBDECSHXpdF"), st.binary(max_size=120))
def test_fuzz_frontend_messages(tag: int, body: bytes) -> None:
    def run() -> None:
        msg = pg.parse_message(pg.encode_message(bytes((tag,)), body))
        assert msg is not None
        pg.decode_frontend(msg)
        pg.decode_password(body)
        pg.decode_sasl_initial(body)
    _only_wire_errors(run)


@given(st.binary(max_size=64))
def test_fuzz_parse_message_raw(data: bytes) -> None:
    _only_wire_errors(lambda: pg.parse_message(data, limit=1000))


@given(st.sampled_from(sorted(pgv.TYPE_SIZES)), st.binary(max_size=40))
def test_fuzz_binary_values(oid: int, data: bytes) -> None:
    _only_wire_errors(lambda: pgv.decode_binary_value(oid, data))


@given(st.decimals(allow_nan=False, allow_infinity=False, places=None))
def test_numeric_binary_round_trip(value: Decimal) -> None:
    assert pgv.decode_binary_value(pgv.OID_NUMERIC, pgv.encode_binary_value(pgv.OID_NUMERIC, value)) == value
