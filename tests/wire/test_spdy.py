"""SPDY/3.1 frames: layouts of SPDY Protocol Draft 3 §2.2/§2.6, kubectl's own bytes, three ways, and a fuzz."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import feed_three_ways
from tpemu.wire import spdy
from tpemu.wire.errors import LimitExceeded, WireError

#: Captured from kubectl v1.32.4 ``port-forward pod/web 35530:80`` through the WebSocket tunnel (the
#: SPDY bytes of its binary messages joined; spdystream's framer writes each field with its own
#: Write, so kubectl sends many tiny messages), then ``curl http://127.0.0.1:35530/``: request 0's
#: error stream (SYN_STREAM id 1, then an empty data frame with FIN: client-go closes its writing
#: half of the error stream at once), its data stream (id 3), curl's request and FIN on stream 3.
KUBECTL = bytes.fromhex(
    "800300010000003d0000000100000000000078f9e3c6a7c202253a703a2b294a4dcc851625aca9a0808614cb45a024cc64"
    "61c0c0c0c0590489c44c50e2663400000000ffff0000000101000000800300010000001800000003000000000000c2aa1554"
    "0a2512d209000000ffff"
    "000000030000004f474554202f20485454502f312e310d0a486f73743a203132372e302e302e313a33353533300d0a5573"
    "65722d4167656e743a206375726c2f372e38382e310d0a4163636570743a202a2f2a0d0a0d0a0000000301000000")


def _first(data: bytes) -> spdy.Frame | None:
    dec = spdy.Decoder()
    dec.push(data)
    return dec.next()


def test_dictionary_is_the_spdy3_one() -> None:
    # §2.6.10.1: the dictionary's Adler-32 is what a zlib header with FDICT names (0xe3c6a7c2).
    assert len(spdy.DICTIONARY) == 1423 and zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy.DICTIONARY.endswith(b"utf-,*,enq=0.")


@pytest.mark.parametrize(("hexdata", "frame"), [
    # §2.2.2 data frame: stream 3, FIN, 2 bytes.
    ("0000000301000002" "6869", spdy.Data(3, spdy.FLAG_FIN, b"hi")),
    ("0000000100000000", spdy.Data(1, 0, b"")),
    # §2.6.3 RST_STREAM stream 5, CANCEL.
    ("8003000300000008" "00000005" "00000005", spdy.RstStream(5, spdy.CANCEL)),
    # §2.6.5 PING id 1 (a client's: odd).
    ("8003000600000004" "00000001", spdy.Ping(1)),
    # §2.6.6 GOAWAY last good 7, OK.
    ("8003000700000008" "00000007" "00000000", spdy.GoAway(7, 0)),
    # §2.6.8 WINDOW_UPDATE stream 0 (the session), +65536.
    ("8003000900000008" "00000000" "00010000", spdy.WindowUpdate(0, 65536)),
    # §2.6.4 SETTINGS: one entry, id 7 (initial window) = 65536.
    ("800300040000000c" "00000001" "00000007" "00010000", spdy.Settings(0, ((0, 7, 65536),))),
])
def test_fixed_layout_vectors(hexdata: str, frame: spdy.Frame) -> None:
    assert feed_three_ways(_first, bytes.fromhex(hexdata)) == frame


def test_kubectl_port_forward_bytes() -> None:
    first = feed_three_ways(_first, KUBECTL[:8 + 0x3D])
    assert first == spdy.SynStream(1, 0, 0, 0, (("streamtype", "error"), ("port", "80"), ("requestid", "0")))
    dec = spdy.Decoder()
    frames = [f for b in KUBECTL for f in dec.feed(bytes([b]))]
    assert frames == spdy.Decoder().feed(KUBECTL) and dec.pending == 0
    assert frames[1:] == [
        spdy.Data(1, spdy.FLAG_FIN, b""),
        spdy.SynStream(3, 0, 0, 0, (("streamtype", "data"), ("port", "80"), ("requestid", "0"))),
        spdy.Data(3, 0, b"GET / HTTP/1.1\r\nHost: 127.0.0.1:35530\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"),
        spdy.Data(3, spdy.FLAG_FIN, b"")]
    # Go's zlib and Python's agree on the dictionary: our own encoding of the same block decodes alike.
    assert spdy.Decoder().feed(spdy.Encoder().syn_stream(1, first.headers))[0] == first  # type: ignore[union-attr]


def test_one_compression_context_per_direction() -> None:
    enc = spdy.Encoder()
    data = enc.syn_stream(1, (("streamtype", "error"), ("port", "80"), ("requestid", "0")))
    second = enc.syn_stream(3, (("streamtype", "data"), ("port", "80"), ("requestid", "0")))
    first = feed_three_ways(_first, data)
    assert isinstance(first, spdy.SynStream) and first.stream_id == 1
    frames = spdy.Decoder().feed(data + second)
    assert [(f.stream_id, dict(f.headers)) for f in frames if isinstance(f, spdy.SynStream)] == [
        (1, {"streamtype": "error", "port": "80", "requestid": "0"}),
        (3, {"streamtype": "data", "port": "80", "requestid": "0"})]
    # The second block only decodes with the first one's zlib context.
    with pytest.raises(WireError):
        spdy.Decoder().feed(second)


def test_byte_by_byte_through_a_shared_context() -> None:
    enc = spdy.Encoder()
    data = b"".join([enc.syn_stream(1, (("streamtype", "error"), ("port", "8080"), ("requestid", "0")), fin=True),
                     enc.syn_reply(1), spdy.encode_data(1, b"x" * 300, fin=True),
                     enc.headers(1, (("a", "1"), ("a", "2"))), spdy.encode_ping(2), spdy.encode_goaway(1)])
    dec = spdy.Decoder()
    got = [f for b in data for f in dec.feed(bytes([b]))]
    assert dec.pending == 0
    assert got == [spdy.SynStream(1, 0, 0, spdy.FLAG_FIN, (("streamtype", "error"), ("port", "8080"),
                                                           ("requestid", "0"))),
                   spdy.SynReply(1, 0, ()), spdy.Data(1, spdy.FLAG_FIN, b"x" * 300),
                   spdy.HeadersFrame(1, 0, (("a", "1"), ("a", "2"))), spdy.Ping(2), spdy.GoAway(1, 0)]
    assert spdy.header(got[0].headers, "port") == "8080" and spdy.header(got[0].headers, "nope") == ""  # type: ignore[union-attr]


def _raw_block(pairs: list[tuple[bytes, bytes]], count: int | None = None) -> bytes:
    out = (len(pairs) if count is None else count).to_bytes(4, "big")
    for n, v in pairs:
        out += len(n).to_bytes(4, "big") + n + len(v).to_bytes(4, "big") + v
    return out


def _syn_with_block(block: bytes) -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 8, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
    body = (1).to_bytes(4, "big") + bytes(6) + deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
    return bytes.fromhex("80030001") + len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize(("data", "fragment"), [
    (bytes.fromhex("8002000600000004" "00000001"), "unsupported SPDY version 2"),
    (bytes.fromhex("8003000500000000"), "unknown control frame type 5"),
    (bytes.fromhex("8003000600000004" "00000000"), "PING with id 0"),
    (bytes.fromhex("8003000601000004" "00000001"), "PING with flags"),
    (bytes.fromhex("8003000600000005" "0000000100"), "PING with 5 bytes"),
    (bytes.fromhex("8003000300000008" "00000001" "00000000"), "status 0"),
    (bytes.fromhex("8003000300000008" "00000000" "00000005"), "stream 0"),
    (bytes.fromhex("0000000000000000"), "data frame on stream 0"),
    (bytes.fromhex("8003000400000008" "00000002" "00000000"), "SETTINGS of 8 bytes for 2 entries"),
    (bytes.fromhex("8003000100000004" "00000001"), "SYN_STREAM with 4 bytes"),
    (bytes.fromhex("800300010000000e" "00000001" "00000000" "0000" "deadbeef"), "does not decompress"),
    (_syn_with_block(_raw_block([(b"Port", b"80")])), "not lowercased"),
    (_syn_with_block(_raw_block([(b"port", b"80"), (b"port", b"81")])), "multiple headers"),
    (_syn_with_block(_raw_block([(b"port", b"80")]) + b"junk"), "payload size was incorrect"),
    (_syn_with_block(_raw_block([(b"port", b"80")], count=2)), "ends inside a name length"),
    (_syn_with_block(_raw_block([(b"host", b"x")])), "invalid header 'host'"),
    (_syn_with_block(_raw_block([(b"", b"x")])), "empty header name"),
    (_syn_with_block(b"\x00\x00"), "no pair count"),
])
def test_refusals(data: bytes, fragment: str) -> None:
    with pytest.raises(spdy.SpdyError, match=fragment):
        spdy.Decoder().feed(data)


def test_limits() -> None:
    with pytest.raises(LimitExceeded, match="data frame"):
        spdy.Decoder().feed(bytes.fromhex("00000001") + (spdy.MAX_DATA + 1).to_bytes(4, "big"))
    with pytest.raises(LimitExceeded, match="control frame"):
        spdy.Decoder().feed(bytes.fromhex("80030001") + (spdy.MAX_CONTROL + 1).to_bytes(4, "big"))
    # A zlib bomb: a tiny frame whose block inflates past the limit stops at the limit.
    bomb = _syn_with_block(_raw_block([(b"x", b"a" * (spdy.MAX_HEADER_BLOCK * 4))]))
    assert len(bomb) < spdy.MAX_CONTROL
    with pytest.raises(LimitExceeded, match="header block"):
        spdy.Decoder().feed(bomb)
    with pytest.raises(LimitExceeded, match="header count"):
        spdy.Decoder().feed(_syn_with_block((10**6).to_bytes(4, "big")))


def test_encoder_refuses_what_cannot_be_framed() -> None:
    with pytest.raises(ValueError):
        spdy.encode_data(0, b"")
    with pytest.raises(ValueError):
        spdy.encode_data(1, bytes(spdy.MAX_LENGTH + 1))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_raw(data: bytes) -> None:
    try:
        spdy.Decoder().feed(data)
    except WireError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 2**31 - 1), st.binary(max_size=40),
                          st.lists(st.tuples(st.text("abcxyz-", min_size=1, max_size=8), st.text(max_size=8)),
                                   max_size=4)), max_size=6),
       st.integers(0, 400), st.binary(max_size=4))
def test_fuzz_mutated_streams(frames: list[tuple[int, int, bytes, list[tuple[str, str]]]], cut: int,
                              noise: bytes) -> None:
    enc = spdy.Encoder()
    out = b""
    for kind, sid, data, headers in frames:
        if kind == 0:
            out += enc.syn_stream(sid, tuple(headers))
        elif kind == 1:
            out += enc.syn_reply(sid, tuple(headers))
        elif kind == 2:
            out += spdy.encode_data(sid, data, fin=bool(sid & 1))
        elif kind == 3:
            out += spdy.encode_rst_stream(sid, spdy.CANCEL)
        else:
            out += spdy.encode_ping(sid)
    # Intact streams decode to as many frames as were encoded; cut and noisy ones may only fail cleanly.
    assert len(spdy.Decoder().feed(out)) == len(frames)
    mutated = out[:cut] + noise + out[cut:]
    try:
        spdy.Decoder().feed(mutated)
    except WireError:
        pass
