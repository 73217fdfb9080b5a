"""First-bytes detection: every protocol, decided at the right byte, never too early."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tpemu import testing
from tpemu.wire import UnknownProtocol, WireError, postgres, proxy_protocol
from tpemu.wire.sniff import MAX_SNIFF_BYTES, Protocol, sniff

VECTORS = [
    (testing.client_hello("a.example", ["h2"]), Protocol.TLS),
    (b"SSH-2.0-OpenSSH_9.2p1\r\n", Protocol.SSH),
    (b"GET / HTTP/1.1\r\n", Protocol.HTTP),
    (b"POST /x HTTP/1.1\r\n", Protocol.HTTP),
    (b"PUT /x HTTP/1.1\r\n", Protocol.HTTP),
    (b"PATCH /x HTTP/1.1\r\n", Protocol.HTTP),
    (b"OPTIONS * HTTP/1.1\r\n", Protocol.HTTP),
    (b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\n", Protocol.PROXY_V1),
    (proxy_protocol.encode_v2(("1.1.1.1", 1), ("2.2.2.2", 2)), Protocol.PROXY_V2),
    (postgres.SSL_REQUEST, Protocol.POSTGRES),
    (postgres.GSSENC_REQUEST, Protocol.POSTGRES),
    (postgres.encode_startup({"user": "a"}), Protocol.POSTGRES),
]


@pytest.mark.parametrize("data,proto", VECTORS)
def test_decides_once_and_stays(data: bytes, proto: Protocol) -> None:
    decided_at = None
    for i in range(len(data) + 1):
        got = sniff(data[:i])
        if got is None:
            assert decided_at is None, f"undecided again at {i} after deciding at {decided_at}"
        else:
            assert got is proto
            decided_at = decided_at if decided_at is not None else i
    assert decided_at is not None and decided_at <= MAX_SNIFF_BYTES
    assert sniff(data + b"trailing") is proto


@pytest.mark.parametrize("data", [b"\x00\x01", b"hello", b"\x16\x04", b"SSX", b"\r\n\r\nX", b"PUX",
                                  b"\xff\xfe", b"\x00\x00\x00\x08\x00\x00\x00\x00"])
def test_unknown(data: bytes) -> None:
    with pytest.raises(UnknownProtocol, match="unrecognized protocol|first record"):
        sniff(data)


def test_unknown_message_is_readable() -> None:
    with pytest.raises(UnknownProtocol) as info:
        sniff(b"hello\x01")
    assert "68 65 6c 6c 6f 01" in str(info.value) and "'hello.'" in str(info.value)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
def test_fuzz(data: bytes) -> None:
    try:
        sniff(data)
    except WireError:
        pass
