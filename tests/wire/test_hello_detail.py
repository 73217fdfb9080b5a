"""The learner's decoder of first bytes (tpemu.wire.hello_detail): real ClientHellos from
OpenSSL (whole, split over records, truncated at every byte, with trailing data), GREASE and
post-quantum key shares added by hand, and hypothesis: never an exception, always a dict."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tpemu import testing
from tpemu.wire import hello_detail
from tpemu.wire.hello_detail import describe, describe_client_hello, is_grease


def test_real_openssl_hello_every_field() -> None:
    hello = testing.client_hello("db.example.test", ["teleport-postgres", "http/1.1"])
    d = describe(hello)
    assert d["protocol"] == "tls" and "error" not in d and "truncated" not in d
    assert d["record"] == {"content_type": 22, "version": "TLSv1.0", "length": len(hello) - 5, "records": 1}
    assert d["handshake"] == {"type": 1, "length": len(hello) - 9}
    assert d["legacy_version"] == "TLSv1.2" and len(d["random"]) == 64 and d["session_id_bytes"] == 32
    assert d["sni"] == "db.example.test" and d["alpn"] == ["teleport-postgres", "http/1.1"]
    assert d["supported_versions"] == ["TLSv1.3", "TLSv1.2"]
    assert d["key_shares"][0]["group"] in ("x25519", "X25519MLKEM768")
    assert "TLS_AES_256_GCM_SHA384" in d["cipher_suites"]
    assert {"server_name", "alpn", "supported_versions", "key_share"} <= set(d["extensions"])
    # trailing bytes after the hello (the client's next flight) change nothing
    assert describe(hello + b"\x17\x03\x03\x00\x05hello") == d


def test_split_over_records_and_truncated_anywhere() -> None:
    hello = testing.client_hello("split.test", ["h2"])
    message = testing.handshake_message(hello)
    split = testing.split_records(message, [40, 100, 7])
    d = describe(split)
    assert d["record"]["records"] >= 3 and d["sni"] == "split.test" and d["alpn"] == ["h2"] and "error" not in d
    for i in range(len(hello)):  # byte by byte: partial results, never an exception
        part = describe(hello[:i])
        assert isinstance(part, dict)
        if i >= 1:
            assert part["protocol"] == "tls" or part["protocol"] is None


def record(message: bytes) -> bytes:
    return testing.split_records(message, [len(message)])


def test_grease_and_post_quantum_key_shares() -> None:
    hello = testing.client_hello("pq.test")
    share = struct.pack(">HH", 0x11EC, 1216) + bytes(1216) + struct.pack(">HH", 0x2A2A, 1) + b"\x00"
    grown = record(testing.add_extension(testing.handshake_message(hello), 0x3A3A, b""))  # a GREASE extension
    d = describe_client_hello(grown)
    assert "GREASE" in d["extensions"]
    assert is_grease(0xFAFA) and is_grease(0x0A0A) and not is_grease(0x0A1A) and not is_grease(0x1301)
    body = struct.pack(">H", len(share)) + share
    pq = testing.add_extension(testing.handshake_message(testing.client_hello("pq2.test")), 51, body)
    hand = describe_client_hello(record(pq))
    assert {"group": "X25519MLKEM768", "bytes": 1216} in hand["key_shares"]
    assert {"group": "GREASE", "bytes": 1} in hand["key_shares"]
    assert hand["duplicate_extensions"] == ["key_share"]  # OpenSSL's own key_share came second


def test_other_protocols_and_garbage() -> None:
    assert describe(b"SSH-2.0-OpenSSH_9.2\r\nrest") == {
        "protocol": "ssh", "hex": b"SSH-2.0-OpenSSH_9.2\r\nrest".hex(" "), "first_line": "SSH-2.0-OpenSSH_9.2"}
    assert describe(b"GET /webapi/ping HTTP/1.1\r\nHost: x\r\n\r\n")["first_line"] == "GET /webapi/ping HTTP/1.1"
    garbage = describe(b"\x00\x01hello")
    assert garbage["protocol"] is None and "unrecognized protocol" in garbage["error"]
    not_handshake = describe_client_hello(b"\x17\x03\x03\x00\x02ab")
    assert not_handshake["error"] == "record content type 23 is not handshake (22)"
    lying = describe_client_hello(b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03")
    assert lying["truncated"] == "2 of 4 handshake bytes present" and "random" in lying["error"]


@settings(deadline=None)
@given(st.binary(max_size=600))
def test_never_raises_on_anything(data: bytes) -> None:
    assert isinstance(describe(data), dict)
    assert isinstance(describe_client_hello(b"\x16\x03\x01" + data), dict)


@settings(deadline=None)  # a wall-clock deadline flakes on a loaded shared machine (264 ms seen at load ~4)
@given(st.integers(min_value=0, max_value=2000), st.binary(max_size=64))
def test_corrupting_a_real_hello_gives_partial_results(cut: int, junk: bytes) -> None:
    hello = testing.client_hello("fuzz.test", ["h2"])
    d = describe(hello[:cut] + junk)
    assert isinstance(d, dict)
    if cut >= len(hello):
        assert d["sni"] == "fuzz.test"  # the junk after a whole hello changes nothing


def test_size_cap() -> None:
    huge = testing.client_hello("cap.test") + bytes(10 * hello_detail.MAX_BYTES)
    assert describe(huge)["sni"] == "cap.test"
