"""RFC 6455 framing and Kubernetes' channel protocol choice (``tpemu.agent.kube.websocket``): byte
vectors whole, byte by byte and with trailing data, limits, and hypothesis round trips."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpemu.agent.kube import websocket as ws
from tpemu.wire.errors import LimitExceeded

# RFC 6455 §5.7: a masked "Hello" from a client.
MASKED_HELLO = bytes.fromhex("818537fa213d7f9f4d5158")
UNMASKED_HELLO = bytes.fromhex("810548656c6c6f")


def test_rfc_vector_masked_whole_and_trailing() -> None:
    frame, used = ws.decode_frame(MASKED_HELLO + b"\x81") or (None, 0)
    assert frame == ws.Frame(True, ws.OP_TEXT, b"Hello") and used == len(MASKED_HELLO)


def test_rfc_vector_byte_by_byte() -> None:
    for i in range(len(MASKED_HELLO)):
        assert ws.decode_frame(MASKED_HELLO[:i]) is None
    assert ws.decode_frame(MASKED_HELLO) is not None


def test_server_frames_are_unmasked() -> None:
    assert ws.encode_frame(ws.OP_TEXT, b"Hello") == UNMASKED_HELLO
    assert ws.decode_frame(UNMASKED_HELLO, require_mask=False) == (ws.Frame(True, ws.OP_TEXT, b"Hello"), 7)


def test_unmasked_client_frame_refused() -> None:
    with pytest.raises(ws.WebSocketError, match="masked"):
        ws.decode_frame(UNMASKED_HELLO)


@pytest.mark.parametrize("size", [125, 126, 65535, 65536])
def test_length_forms(size: int) -> None:
    data = ws.encode_frame(ws.OP_BINARY, b"x" * size, mask=True)
    frame, used = ws.decode_frame(data) or (None, 0)
    assert frame is not None and frame.payload == b"x" * size and used == len(data)


def test_limits_and_bad_frames() -> None:
    big = ws.encode_frame(ws.OP_BINARY, b"x" * 70000, mask=True)
    with pytest.raises(LimitExceeded):
        ws.decode_frame(big, limit=65536)
    with pytest.raises(ws.WebSocketError, match="reserved"):
        ws.decode_frame(b"\xc1\x80abcd")
    with pytest.raises(ws.WebSocketError, match="opcode"):
        ws.decode_frame(b"\x83\x80abcd")
    with pytest.raises(ws.WebSocketError, match="control"):
        ws.decode_frame(b"\x09\x80abcd")  # a ping that is not final


def test_accept_key_rfc_example() -> None:
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_protocol_choice_prefers_v5() -> None:
    assert ws.choose_protocol("v4.channel.k8s.io, v5.channel.k8s.io") == ws.V5
    assert ws.choose_protocol("v4.channel.k8s.io,channel.k8s.io") == ws.V4
    assert ws.choose_protocol("base64.channel.k8s.io") is None


@given(st.binary(max_size=3000), st.sampled_from([ws.OP_BINARY, ws.OP_TEXT]))
def test_round_trip(payload: bytes, opcode: int) -> None:
    data = ws.encode_frame(opcode, payload, mask=True)
    assert ws.decode_frame(data + b"trailing") == (ws.Frame(True, opcode, payload), len(data))


@given(st.binary(max_size=64))
def test_garbage_never_crashes(data: bytes) -> None:
    try:
        ws.decode_frame(data)
    except (ws.WebSocketError, LimitExceeded):
        pass


async def test_channel_stream_answers_pings_and_joins_fragments() -> None:
    reader = asyncio.StreamReader()
    sent: list[bytes] = []

    class Writer:
        def write(self, data: bytes) -> None:
            sent.append(data)

        async def drain(self) -> None:
            return None

    stream = ws.ChannelStream(reader, Writer(), b"")  # type: ignore[arg-type]
    reader.feed_data(ws.encode_frame(ws.OP_PING, b"p", mask=True))
    # a fragmented stdin message: channel 0, "ab" + "c"
    reader.feed_data(bytes([0x02, 0x83]) + b"\0\0\0\0" + b"\x00ab")
    reader.feed_data(bytes([0x80, 0x81]) + b"\0\0\0\0" + b"c")
    assert await stream.read_message(1) == (0, b"abc")
    assert sent[0] == ws.encode_frame(ws.OP_PONG, b"p")
    reader.feed_data(ws.encode_frame(ws.OP_CLOSE, b"\x03\xe8", mask=True))
    assert await stream.read_message(1) is None
    assert stream.closed
