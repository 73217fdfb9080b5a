"""PROXY protocol v1/v2: spec examples, round trips, TLVs, caps, errors, fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import feed_three_ways
from tpemu.wire import LimitExceeded, WireError
from tpemu.wire import proxy_protocol as pp


def parse(data: bytes) -> pp.ProxyHeader | None:
    return pp.parse_proxy_header(data)


# v1 examples from haproxy/doc/proxy-protocol.txt §2.1.
def test_v1_tcp4_spec_example() -> None:
    data = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    h = feed_three_ways(parse, data)
    assert (h.version, h.family, h.src, h.dst, h.length) == (
        1, pp.Family.TCP4, ("255.255.255.255", 65535), ("255.255.255.255", 65535), len(data))


def test_v1_tcp6_and_unknown() -> None:
    data = b"PROXY TCP6 2001:db8::1 ::1 56324 443\r\n"
    h = feed_three_ways(parse, data)
    assert h.src == ("2001:db8::1", 56324) and h.dst == ("::1", 443)
    h = feed_three_ways(parse, b"PROXY UNKNOWN\r\n")
    assert h.family is pp.Family.UNSPEC and h.src is None
    # §2.1: anything after UNKNOWN up to the CRLF is ignored.
    assert feed_three_ways(parse, b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").length == 35


@pytest.mark.parametrize("line,message", [
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unsupported PROXY v1 protocol"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "needs 4 address fields"),
    (b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n", "bad address"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not IPv4"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad port"),
    (b"PROXX TCP4\r\n", "must start with"),
])
def test_v1_errors(line: bytes, message: str) -> None:
    with pytest.raises(pp.ProxyProtocolError, match=message):
        parse(line)


def test_v1_line_cap() -> None:
    with pytest.raises(LimitExceeded, match="107"):
        parse(b"PROXY TCP4 " + b"1" * 200)


def test_v2_round_trip_tcp4_tcp6_with_tlvs() -> None:
    tlvs = ((pp.PP2_TYPE_ALPN, b"h2"), (pp.PP2_TYPE_AUTHORITY, b"example.com"), (0xE4, b"\x00" * 40))
    data = pp.encode_v2(("192.0.2.1", 51000), ("198.51.100.7", 443), tlvs)
    h = feed_three_ways(parse, data)
    assert (h.version, h.command, h.family) == (2, pp.Command.PROXY, pp.Family.TCP4)
    assert h.src == ("192.0.2.1", 51000) and h.dst == ("198.51.100.7", 443)
    assert h.tlvs == tlvs and h.tlv(pp.PP2_TYPE_AUTHORITY) == b"example.com" and h.tlv(0x99) is None
    data6 = pp.encode_v2(("2001:db8::5", 1), ("::1", 2))
    h6 = feed_three_ways(parse, data6)
    assert h6.family is pp.Family.TCP6 and h6.src == ("2001:db8::5", 1) and h6.length == 16 + 36


def test_v2_local_is_accepted_even_with_odd_family() -> None:
    h = feed_three_ways(parse, pp.encode_v2(None, None, command=pp.Command.LOCAL))
    assert h.command is pp.Command.LOCAL and h.src is None and h.length == 16
    odd = pp.V2_SIGNATURE + b"\x20\x77\x00\x03abc"
    assert feed_three_ways(parse, odd).family is pp.Family.UNSPEC


def test_v2_hex_vector() -> None:
    # Hand-assembled per §2.2: PROXY, TCP4, 127.0.0.1:12345 → 127.0.0.2:3080, one NOOP TLV.
    data = bytes.fromhex("0d0a0d0a000d0a515549540a" "21" "11" "0010" "7f000001" "7f000002" "3039" "0c08"
                         "04" "0001" "00")
    h = feed_three_ways(parse, data)
    assert h.src == ("127.0.0.1", 12345) and h.dst == ("127.0.0.2", 3080) and h.tlvs == ((4, b"\x00"),)


@pytest.mark.parametrize("data,message", [
    (pp.V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12, "unsupported PROXY v2 version"),
    (pp.V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12, "unknown PROXY v2 command"),
    (pp.V2_SIGNATURE + b"\x21\x41\x00\x0c" + b"\x00" * 12, "unknown PROXY v2 address family"),
    (pp.V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4, "too short"),
    (pp.V2_SIGNATURE + b"\x21\x11\x00\x0e" + b"\x00" * 12 + b"\x01\x00", "truncated TLV"),
    (pp.V2_SIGNATURE + b"\x21\x11\x00\x10" + b"\x00" * 12 + b"\x01\x00\x09\x00", "overruns"),
    (b"\r\n\r\n\x00\r\nQUIX\n", "bad PROXY v2 signature"),
])
def test_v2_errors(data: bytes, message: str) -> None:
    with pytest.raises(pp.ProxyProtocolError, match=message):
        parse(data)


def test_v2_payload_cap() -> None:
    with pytest.raises(LimitExceeded, match="PROXY v2 payload"):
        parse(pp.V2_SIGNATURE + b"\x21\x11\xff\xff")


def test_encode_v1() -> None:
    assert pp.encode_v1(("10.0.0.1", 1), ("10.0.0.2", 2)) == b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"
    assert pp.encode_v1(None, None) == b"PROXY UNKNOWN\r\n"
    with pytest.raises(ValueError):
        pp.encode_v1(("10.0.0.1", 1), ("::1", 2))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz(data: bytes) -> None:
    for prefix in (b"", pp.V2_SIGNATURE, b"PROXY "):
        try:
            parse(prefix + data)
        except WireError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 65535), st.integers(0, 65535),
       st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=5))
def test_v2_encode_parse_round_trip(src: object, dst: object, sport: int, dport: int,
                                    tlvs: list[tuple[int, bytes]]) -> None:
    data = pp.encode_v2((str(src), sport), (str(dst), dport), tuple(tlvs))
    h = parse(data)
    assert h is not None and h.src == (str(src), sport) and h.dst == (str(dst), dport)
    assert h.tlvs == tuple(tlvs) and h.length == len(data)
    v1 = parse(pp.encode_v1((str(src), sport), (str(dst), dport)))
    assert v1 is not None and v1.src == (str(src), sport)
