"""Postgres startup packets (vectors as libpq sends them) and the MySQL ERR packet."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import feed_three_ways
from tpemu.wire import LimitExceeded, WireError, mysql
from tpemu.wire import postgres as pg

# Provenance: libpq's SSLRequest as captured from psql 15 (shared/REAL_CLIENTS.md: 00000008 04d2162f).
SSL_REQUEST_FROM_PSQL = bytes.fromhex("0000000804d2162f")


def test_ssl_and_gssenc_request() -> None:
    assert SSL_REQUEST_FROM_PSQL == pg.SSL_REQUEST
    assert isinstance(feed_three_ways(pg.parse_startup, pg.SSL_REQUEST), pg.SSLRequest)
    assert isinstance(feed_three_ways(pg.parse_startup, pg.GSSENC_REQUEST), pg.GSSENCRequest)


def test_startup_message() -> None:
    data = pg.encode_startup({"user": "alice", "database": "postgres", "application_name": "psql"})
    msg = feed_three_ways(pg.parse_startup, data)
    assert isinstance(msg, pg.StartupMessage)
    assert (msg.major, msg.minor, msg.get("user"), msg.get("database"), msg.length) == (
        3, 0, "alice", "postgres", len(data))
    assert msg.get("missing", "x") == "x"


def test_cancel_request() -> None:
    data = (16).to_bytes(4, "big") + pg.CANCEL_REQUEST_CODE.to_bytes(4, "big") + (4242).to_bytes(4, "big") + b"key!"
    msg = feed_three_ways(pg.parse_startup, data)
    assert isinstance(msg, pg.CancelRequest) and msg.pid == 4242 and msg.secret == b"key!"


@pytest.mark.parametrize("data,message", [
    ((12).to_bytes(4, "big") + pg.SSL_REQUEST_CODE.to_bytes(4, "big") + b"\x00" * 4, "SSLRequest with length"),
    ((4).to_bytes(4, "big") + b"\x00\x03\x00\x00", "shorter than its header"),
    ((9).to_bytes(4, "big") + (2 << 16).to_bytes(4, "big") + b"\x00", "unsupported frontend protocol 2.0"),
    ((13).to_bytes(4, "big") + (3 << 16).to_bytes(4, "big") + b"user\x01", "not NUL-terminated"),
    ((13).to_bytes(4, "big") + (3 << 16).to_bytes(4, "big") + b"user\x00", "has no value"),
])
def test_startup_errors(data: bytes, message: str) -> None:
    with pytest.raises(pg.PostgresError, match=message):
        pg.parse_startup(data)


def test_startup_cap() -> None:
    with pytest.raises(LimitExceeded):
        pg.parse_startup((20000).to_bytes(4, "big") + (3 << 16).to_bytes(4, "big"))


def test_looks_like_startup() -> None:
    assert pg.looks_like_startup(pg.SSL_REQUEST) is True
    assert pg.looks_like_startup(b"\x00\x00") is None
    assert pg.looks_like_startup(b"\x00\x01") is False
    assert pg.looks_like_startup(b"\x00\x00\x00\x08\x00\x00\x00\x01") is False


def test_error_response_layout() -> None:
    msg = pg.encode_error_response("no", code="08004")
    assert msg[0:1] == b"E" and int.from_bytes(msg[1:5], "big") == len(msg) - 1
    assert msg[5:] == b"SFATAL\x00VFATAL\x00C08004\x00Mno\x00\x00"


def test_mysql_err_packet() -> None:
    pkt = mysql.encode_err(1105, "nope", sql_state=None)
    assert pkt == b"\x07\x00\x00\x00\xff\x51\x04nope"
    assert mysql.encode_err(1045, "x")[4:] == b"\xff\x15\x04#HY000x"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz(data: bytes) -> None:
    try:
        pg.parse_startup(data)
    except WireError:
        pass
