"""WebSocket frames and the accept key: RFC 6455's own examples (§1.3, §5.7), three ways, and a fuzz."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import feed_three_ways
from tpemu.wire import websocket as ws
from tpemu.wire.errors import LimitExceeded, WireError


def _one(require_mask: bool):  # type: ignore[no-untyped-def]
    def parse(data: bytes) -> ws.Frame | None:
        frames = ws.FrameDecoder(require_mask).feed(data)
        return frames[0] if frames else None
    return parse


def test_accept_key_rfc_example() -> None:
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3


@pytest.mark.parametrize(("hexdata", "masked", "opcode", "payload"), [
    ("810548656c6c6f", False, ws.OP_TEXT, b"Hello"),  # §5.7 single-frame unmasked text
    ("818537fa213d7f9f4d5158", True, ws.OP_TEXT, b"Hello"),  # §5.7 single-frame masked text
    ("890548656c6c6f", False, ws.OP_PING, b"Hello"),  # §5.7 unmasked ping
])
def test_rfc_vectors(hexdata: str, masked: bool, opcode: int, payload: bytes) -> None:
    frame = feed_three_ways(_one(masked), bytes.fromhex(hexdata), trailing=False)
    assert (frame.fin, frame.opcode, frame.payload) == (True, opcode, payload)


@pytest.mark.parametrize("size", [0, 125, 126, 256, 65535, 65536, 70000])
@pytest.mark.parametrize("mask", [None, b"\x01\x02\x03\x04"])
def test_lengths_round_trip(size: int, mask: bytes | None) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    data = ws.encode_frame(ws.OP_BINARY, payload, mask)
    if size == 256 and mask is None:
        assert data[:4] == bytes.fromhex("827e0100")  # §5.7: 256 bytes in a single unmasked frame
    if size == 65536 and mask is None:
        assert data[:10] == bytes.fromhex("827f0000000000010000")  # §5.7: 64 KiB
    frames = ws.FrameDecoder(require_mask=mask is not None).feed(data + data[:1])  # + a partial next frame
    assert [f.payload for f in frames] == [payload]


def test_byte_by_byte_keeps_partial_frames() -> None:
    data = ws.encode_frame(ws.OP_BINARY, b"x" * 300, b"abcd") * 2
    dec = ws.FrameDecoder(require_mask=True)
    got = [f for b in data for f in dec.feed(bytes([b]))]
    assert [f.payload for f in got] == [b"x" * 300] * 2 and dec.pending == 0


@pytest.mark.parametrize(("data", "require_mask", "fragment"), [
    (ws.encode_frame(ws.OP_BINARY, b"a"), True, "must be masked"),
    (ws.encode_frame(ws.OP_BINARY, b"a", b"abcd"), False, "must not be masked"),
    (bytes([0xC2, 0x00]), False, "reserved bits"),
    (bytes([0x83, 0x00]), False, "unknown opcode"),
    (bytes([0x89, 0x7E, 0x00, 0x80]) + b"p" * 128, False, "control frames"),
    (bytes([0x09, 0x00]), False, "control frames"),
    (bytes([0x82, 0x7F]) + (1 << 63).to_bytes(8, "big"), False, "most significant bit"),
])
def test_bad_frames_are_wire_errors(data: bytes, require_mask: bool, fragment: str) -> None:
    with pytest.raises(ws.WebSocketError, match=fragment):
        ws.FrameDecoder(require_mask).feed(data)


def test_size_cap() -> None:
    with pytest.raises(LimitExceeded):
        ws.FrameDecoder(False, max_payload=1000).feed(bytes([0x82, 0x7E]) + (1001).to_bytes(2, "big"))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.booleans())
def test_fuzz_frames_or_wire_error(data: bytes, require_mask: bool) -> None:
    try:
        for frame in ws.FrameDecoder(require_mask, max_payload=4096).feed(data):
            assert isinstance(frame.payload, bytes)
    except WireError:
        pass
