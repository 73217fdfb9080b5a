"""ClientHello parser: real hellos from OpenSSL (via Python's ssl), split records, caps, errors."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import feed_three_ways
from tpemu import testing
from tpemu.wire import LimitExceeded, WireError, tls


def parse(data: bytes) -> tls.ClientHello | None:
    return tls.parse_client_hello(data)


@pytest.mark.parametrize("sni,alpn", [
    ("proxy.tpemu.test", ["teleport-proxy-ssh"]),
    ("Node1.Cluster.Example", ["teleport-reversetunnelv2", "teleport-reversetunnel"]),
    (None, ["h2", "http/1.1"]),
    ("db.example.com", []),
])
def test_real_tls13_hello_whole_bytewise_trailing(sni: str | None, alpn: list[str]) -> None:
    data = testing.client_hello(sni, alpn)
    hello = feed_three_ways(parse, data)
    assert hello.sni == (sni.lower() if sni else None)
    assert hello.alpn == tuple(alpn)
    assert tls.TLS13 in hello.versions and hello.max_version == tls.TLS13
    assert hello.legacy_version == tls.TLS12
    assert hello.records == 1 and hello.hello_end == len(data)


def test_tls12_only_hello_has_no_13() -> None:
    data = testing.client_hello("a.example", ["teleport-mysql"], max_version=ssl.TLSVersion.TLSv1_2)
    hello = feed_three_ways(parse, data)
    assert hello.max_version == tls.TLS12
    assert tls.TLS13 not in hello.versions


def test_large_hello_split_over_two_records() -> None:
    data = testing.large_client_hello("big.example", ["teleport-postgres"], target_size=1800, records=2)
    assert 1700 < len(data) < 1900
    hello = feed_three_ways(parse, data)
    assert (hello.sni, hello.alpn, hello.records) == ("big.example", ("teleport-postgres",), 2)
    assert hello.hello_end == len(data)


@pytest.mark.parametrize("sizes", [[1], [3], [4], [5, 1, 1], [100, 200]])
def test_handshake_header_split_anywhere(sizes: list[int]) -> None:
    msg = testing.handshake_message(testing.client_hello("split.example", ["teleport-redis"]))
    data = testing.split_records(msg, sizes)
    hello = feed_three_ways(parse, data)
    assert hello.sni == "split.example" and hello.alpn == ("teleport-redis",)
    assert hello.records == len(sizes) + 1


def test_record_with_hello_and_more_is_fine() -> None:
    # A later handshake message may share the last record: only the hello is read.
    msg = testing.handshake_message(testing.client_hello("x.example", ["teleport-tcp"]))
    data = testing.split_records(msg[:50], []) + testing.split_records(msg[50:] + b"\x0f\x00\x00\x00", [])
    assert parse(data) == parse(data + b"trailing")
    assert parse(data).alpn == ("teleport-tcp",)  # type: ignore[union-attr]


def test_not_tls() -> None:
    for data in (b"GET / HTTP/1.1\r\n", b"SSH-2.0-x\r\n", b"\x16\x02\x00", b"\x16\x03\x09\x00\x10"):
        with pytest.raises(tls.NotTLS, match="first record does not look like a TLS handshake"):
            parse(data)


def test_not_client_hello() -> None:
    with pytest.raises(tls.TLSError, match="expected ClientHello"):
        parse(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00")


def test_zero_and_oversized_record() -> None:
    with pytest.raises(tls.TLSError, match="record length 0"):
        parse(b"\x16\x03\x01\x00\x00")
    with pytest.raises(tls.TLSError, match="out of range"):
        parse(b"\x16\x03\x01\x40\x01")


def test_size_cap() -> None:
    big = testing.large_client_hello("cap.example", target_size=3000, records=1)
    with pytest.raises(LimitExceeded, match="ClientHello exceeds the 2000-byte limit"):
        tls.parse_client_hello(big[:9], max_size=2000)


def test_too_many_records() -> None:
    msg = testing.handshake_message(testing.client_hello("r.example"))
    data = testing.split_records(msg, [1] * 40)
    with pytest.raises(tls.TLSError, match="more than 32 records"):
        parse(data)


def test_interleaved_record_type() -> None:
    msg = testing.handshake_message(testing.client_hello("r.example"))
    data = testing.split_records(msg[:10], []) + b"\x15\x03\x03\x00\x02\x02\x28"
    with pytest.raises(tls.TLSError, match="interleaved"):
        parse(data)


def _with_body(body: bytes) -> bytes:
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg


_BASE = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"


def _ext(t: int, data: bytes) -> bytes:
    return t.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def _exts(*exts: bytes) -> bytes:
    blob = b"".join(exts)
    return len(blob).to_bytes(2, "big") + blob


def test_minimal_hello_without_extensions() -> None:
    hello = feed_three_ways(parse, _with_body(_BASE))
    assert hello == tls.ClientHello(None, (), (tls.TLS12,), tls.TLS12, len(_with_body(_BASE)), 1)


@pytest.mark.parametrize("ext,message", [
    (_ext(0, b"\x00\x09\x00\x00\x02ab"), "malformed server_name"),
    (_ext(0, b"\x00\x06\x00\x00\x03ab."), "invalid SNI"),
    (_ext(0, b"\x00\x03\x00\x00\x00"), "invalid SNI"),
    (_ext(0, b"\x00\x06\x00\x00\x03\xc3\xa9x"), "invalid SNI"),
    (_ext(16, b"\x00\x05\x00"), "malformed application_layer_protocol_negotiation"),
    (_ext(16, b"\x00\x02\x00\x00"), "empty or overrunning ALPN"),
    (_ext(16, b"\x00\x03\x05ab"), "empty or overrunning ALPN"),
    (_ext(43, b"\x03\x03\x04\x03"), "malformed supported_versions"),
    (_ext(0, b"\x00\x05\x00\x00\x02ab") + _ext(0, b"\x00\x05\x00\x00\x02ab"), "duplicate server_name"),
])
def test_malformed_extensions(ext: bytes, message: str) -> None:
    with pytest.raises(tls.TLSError, match=message):
        parse(_with_body(_BASE + _exts(ext)))


def test_extension_overrun_and_length_mismatch() -> None:
    with pytest.raises(tls.TLSError, match="overruns"):
        parse(_with_body(_BASE + b"\x00\x08" + b"\x00\x00\x00\x10abcd"))
    with pytest.raises(tls.TLSError, match="does not match"):
        parse(_with_body(_BASE + b"\x00\x10" + _ext(99, b"")))


def test_session_id_and_ciphers_checked() -> None:
    with pytest.raises(tls.TLSError, match="legacy_session_id"):
        parse(_with_body(b"\x03\x03" + b"\x00" * 32 + b"\x21" + b"\x00" * 33 + b"\x00\x02\x13\x01\x01\x00"))
    with pytest.raises(tls.TLSError, match="cipher_suites"):
        parse(_with_body(b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x03\x13\x01\x00\x01\x00"))
    with pytest.raises(tls.TLSError, match="truncated"):
        parse(_with_body(b"\x03\x03" + b"\x00" * 20))


def test_unknown_extensions_skipped_and_grease_ignored() -> None:
    body = _BASE + _exts(_ext(0x0A0A, b""), _ext(0, b"\x00\x05\x00\x00\x02ok"),
                         _ext(43, b"\x04\x0a\x0a\x03\x04"), _ext(0xFE0D, b"ech" * 10))
    hello = feed_three_ways(parse, _with_body(body))
    assert hello.sni == "ok" and hello.versions == (0x0A0A, tls.TLS13) and hello.max_version == tls.TLS13


def test_alert_encoding() -> None:
    assert tls.encode_alert(tls.ALERT_NO_APPLICATION_PROTOCOL) == bytes.fromhex("15030300020278")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        tls.parse_client_hello(data)
    except WireError:
        pass


_REAL = testing.client_hello("fuzz.example", ["teleport-postgres", "h2"])


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=0, max_value=len(_REAL) - 1), st.integers(min_value=0, max_value=255),
       st.integers(min_value=1, max_value=len(_REAL)))
def test_fuzz_mutated_real_hello(pos: int, value: int, cut: int) -> None:
    data = bytearray(_REAL)
    data[pos] = value
    try:
        tls.parse_client_hello(bytes(data[:cut]))
    except WireError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=6))
def test_fuzz_record_splits_keep_meaning(sizes: list[int]) -> None:
    msg = testing.handshake_message(_REAL)
    data = testing.split_records(msg, sizes)
    hello = tls.parse_client_hello(data)
    if len(sizes) + 1 > tls.MAX_HELLO_RECORDS:
        return
    assert hello is not None and hello.sni == "fuzz.example"
    assert hello.alpn == ("teleport-postgres", "h2")
