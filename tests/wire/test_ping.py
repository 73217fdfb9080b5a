"""Teleport's ping framing (``lib/utils/pingconn``): uint32 big-endian length + payload, length 0 = ping.

The vectors are written from that layout by hand (a 4-byte big-endian length, then the bytes): what
``PingConn.Write`` sends for each write and ``PingConn.WritePing`` for a ping. The decoder is a
stream decoder, so "three ways" means: the stream fed whole, one byte at a time (the payload
bytes come out the same), and with a partial frame after it (nothing more comes out yet).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tpemu.wire import ping

# PingConn.Write(b"SELECT 1") ; WritePing() ; Write(b"\x00\x01") — hand-assembled from the layout.
VECTOR = bytes.fromhex("00000008") + b"SELECT 1" + bytes.fromhex("00000000") + bytes.fromhex("00000002") + b"\x00\x01"
PAYLOAD = b"SELECT 1\x00\x01"


def test_vector_three_ways() -> None:
    whole = ping.PingDecoder()
    assert whole.feed(VECTOR) == PAYLOAD and whole.pings == 1 and whole.at_boundary
    one = ping.PingDecoder()
    out = b"".join(one.feed(VECTOR[i:i + 1]) for i in range(len(VECTOR)))
    assert out == PAYLOAD and one.pings == 1
    for i in range(len(VECTOR)):  # every strict prefix yields a prefix of the payload, never more
        d = ping.PingDecoder()
        assert PAYLOAD.startswith(d.feed(VECTOR[:i]))
    trailing = ping.PingDecoder()
    assert trailing.feed(VECTOR + b"\x00\x00") == PAYLOAD and not trailing.at_boundary


def test_encode() -> None:
    assert ping.encode_frame(b"SELECT 1") == VECTOR[:12]
    assert ping.encode_frame(b"") == b""  # an empty write would read as a ping: nothing is sent
    assert VECTOR[12:16] == ping.PING


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_round_trip_any_split(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(ping.encode_frame(p) + ping.PING for p in payloads)
    d = ping.PingDecoder()
    out = bytearray()
    pos = 0
    for cut in cuts * (len(stream) // max(1, sum(cuts)) + 1):
        out += d.feed(stream[pos:pos + cut])
        pos += cut
        if pos >= len(stream):
            break
    out += d.feed(stream[pos:])
    assert bytes(out) == b"".join(payloads) and d.pings == len(payloads) and d.at_boundary


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_never_raises(data: bytes) -> None:
    d = ping.PingDecoder()
    out = d.feed(data)
    assert len(out) <= len(data)
