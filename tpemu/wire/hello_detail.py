"""A learner's decoding of a connection's first bytes (pure, no I/O): every field of a TLS
ClientHello, or the first line of SSH/HTTP, for the live routing page, the decision trace and
``tpemu inspect --pcap``. Not on the hot path: the router uses :mod:`tpemu.wire.tls`.

Specs: record header RFC 8446 §5.1; handshake header §4; ClientHello §4.1.2 (legacy_version,
random, legacy_session_id, cipher_suites, legacy_compression_methods, extensions); extensions
``server_name`` RFC 6066 §3, ``supported_groups`` RFC 8446 §4.2.7, ``signature_algorithms``
§4.2.3, ``application_layer_protocol_negotiation`` RFC 7301 §3.1, ``supported_versions``
§4.2.1, ``key_share`` §4.2.8; GREASE values RFC 8701. Names of groups and suites are IANA's.

Only the first handshake record is decoded (a hello split over several records is reassembled
up to ``MAX_BYTES``); every length is checked against what is there, so truncated or hostile
input gives a partial result with an ``error`` field, never an exception.
"""

from __future__ import annotations

import struct
from typing import Any

from tpemu.wire import sniff
from tpemu.wire.errors import WireError
from tpemu.wire.tls import version_name

#: At most this much of a stream prefix is decoded.
MAX_BYTES = 16 * 1024 + 64

GROUPS = {0x0017: "secp256r1", 0x0018: "secp384r1", 0x0019: "secp521r1", 0x001D: "x25519", 0x001E: "x448",
          0x0100: "ffdhe2048", 0x0101: "ffdhe3072", 0x11EC: "X25519MLKEM768", 0x6399: "X25519Kyber768Draft00",
          0x0200: "MLKEM512", 0x0201: "MLKEM768", 0x0202: "MLKEM1024", 0x11EB: "SecP256r1MLKEM768"}
SUITES = {0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384", 0x1303: "TLS_CHACHA20_POLY1305_SHA256",
          0xC02B: "ECDHE_ECDSA_AES_128_GCM_SHA256", 0xC02F: "ECDHE_RSA_AES_128_GCM_SHA256",
          0xC02C: "ECDHE_ECDSA_AES_256_GCM_SHA384", 0xC030: "ECDHE_RSA_AES_256_GCM_SHA384",
          0xCCA9: "ECDHE_ECDSA_CHACHA20_POLY1305", 0xCCA8: "ECDHE_RSA_CHACHA20_POLY1305",
          0x00FF: "EMPTY_RENEGOTIATION_SCSV"}
EXTENSIONS = {0: "server_name", 5: "status_request", 10: "supported_groups", 11: "ec_point_formats",
              13: "signature_algorithms", 16: "alpn", 18: "signed_certificate_timestamp", 21: "padding",
              22: "encrypt_then_mac", 23: "extended_master_secret", 27: "compress_certificate",
              35: "session_ticket", 41: "pre_shared_key", 42: "early_data", 43: "supported_versions",
              45: "psk_key_exchange_modes", 49: "post_handshake_auth", 51: "key_share", 17513: "application_settings",
              65037: "encrypted_client_hello", 65281: "renegotiation_info"}


def is_grease(value: int) -> bool:
    """RFC 8701: 0x0A0A, 0x1A1A … 0xFAFA."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def _name(table: dict[int, str], value: int) -> str:
    if is_grease(value):
        return "GREASE"
    return table.get(value, f"{value:#06x}")


class _Reader:
    """Bounds-checked big-endian reads over ``data[pos:end]``."""

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data, self.pos, self.end = data, pos, len(data) if end is None else end

    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left():
            raise WireError(f"{what}: needs {n} bytes, {self.left()} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        v: int = struct.unpack(">H", self.take(2, what))[0]
        return v

    def u24(self, what: str) -> int:
        return int.from_bytes(self.take(3, what), "big")

    def vec(self, width: int, what: str) -> _Reader:
        n = self.u8(what) if width == 1 else self.u16(what)
        start = self.pos
        self.take(n, what)
        return _Reader(self.data, start, start + n)


def _u16_list(r: _Reader, what: str) -> list[int]:
    if r.left() % 2:
        raise WireError(f"{what}: odd length {r.left()}")
    return [r.u16(what) for _ in range(r.left() // 2)]


def _extension(kind: int, body: _Reader, out: dict[str, Any]) -> None:
    if kind == 0:
        names = body.vec(2, "server_name list")
        while names.left():
            name_type = names.u8("server_name type")
            host = names.vec(2, "host_name")
            if name_type == 0:
                out["sni"] = host.data[host.pos:host.end].decode("ascii", "replace")
    elif kind == 16:
        protos = body.vec(2, "alpn list")
        out["alpn"] = []
        while protos.left():
            p = protos.vec(1, "alpn protocol")
            out["alpn"].append(p.data[p.pos:p.end].decode("ascii", "replace"))
    elif kind == 43:
        versions = body.vec(1, "supported_versions")
        out["supported_versions"] = [version_name(v) if not is_grease(v) else "GREASE"
                                     for v in _u16_list(versions, "supported_versions")]
    elif kind == 10:
        out["supported_groups"] = [_name(GROUPS, g) for g in _u16_list(body.vec(2, "supported_groups"),
                                                                          "supported_groups")]
    elif kind == 51:
        shares = body.vec(2, "key_share list")
        out["key_shares"] = []
        while shares.left():
            group = shares.u16("key_share group")
            key = shares.vec(2, "key_exchange")
            out["key_shares"].append({"group": _name(GROUPS, group), "bytes": key.left()})
    elif kind == 13:
        out["signature_algorithms"] = len(_u16_list(body.vec(2, "signature_algorithms"), "signature_algorithms"))


def describe_client_hello(data: bytes) -> dict[str, Any]:
    """Every field of the ClientHello starting ``data`` (a stream prefix), as JSON-ready values."""
    data = bytes(data[:MAX_BYTES])
    out: dict[str, Any] = {"protocol": "tls"}
    try:
        r = _Reader(data)
        content_type = r.u8("record content type")
        major, minor = r.u8("record version"), r.u8("record version")
        length = r.u16("record length")
        out["record"] = {"content_type": content_type, "version": version_name(major << 8 | minor), "length": length}
        if content_type != 0x16:
            raise WireError(f"record content type {content_type} is not handshake (22)")
        # Reassemble the handshake message from consecutive handshake records (RFC 8446 §5.1).
        payload = bytearray(r.take(min(length, r.left()), "record payload"))
        records = 1
        while len(payload) >= 4 and len(payload) < 4 + int.from_bytes(payload[1:4], "big") and r.left() >= 5:
            if r.u8("record content type") != 0x16:
                break
            r.take(2, "record version")
            n = r.u16("record length")
            payload += r.take(min(n, r.left()), "record payload")
            records += 1
        out["record"]["records"] = records
        h = _Reader(bytes(payload))
        hs_type = h.u8("handshake type")
        hs_len = h.u24("handshake length")
        out["handshake"] = {"type": hs_type, "length": hs_len}
        if hs_type != 1:
            raise WireError(f"handshake type {hs_type} is not ClientHello (1)")
        if hs_len > h.left():
            out["truncated"] = f"{h.left()} of {hs_len} handshake bytes present"
        body = _Reader(h.data, h.pos, h.pos + min(hs_len, h.left()))
        out["legacy_version"] = version_name(body.u16("legacy_version"))
        out["random"] = body.take(32, "random").hex()
        out["session_id_bytes"] = body.vec(1, "legacy_session_id").left()
        suites = _u16_list(body.vec(2, "cipher_suites"), "cipher_suites")
        out["cipher_suites"] = [_name(SUITES, s) for s in suites]
        body.vec(1, "legacy_compression_methods")
        out["extensions"] = []
        if body.left():
            exts = body.vec(2, "extensions")
            while exts.left():
                kind = exts.u16("extension type")
                ext = exts.vec(2, f"extension {kind}")
                name = _name(EXTENSIONS, kind)
                if name in out["extensions"] and name != "GREASE":
                    # RFC 8446 §4.2: no more than one extension of a type; decode the first only.
                    out.setdefault("duplicate_extensions", []).append(name)
                    continue
                out["extensions"].append(name)
                _extension(kind, ext, out)
    except WireError as exc:
        out["error"] = str(exc)
    return out


def describe(data: bytes) -> dict[str, Any]:
    """What the first bytes of a connection are, decoded for a person (any protocol)."""
    head = bytes(data[:MAX_BYTES])
    try:
        proto = sniff.sniff(head)
    except WireError as exc:
        return {"protocol": None, "error": str(exc), "hex": head[:32].hex(" ")}
    if proto is sniff.Protocol.TLS:
        return describe_client_hello(head)
    out: dict[str, Any] = {"protocol": proto.value if proto is not None else None, "hex": head[:32].hex(" ")}
    if proto in (sniff.Protocol.SSH, sniff.Protocol.HTTP, sniff.Protocol.PROXY_V1):
        out["first_line"] = head.split(b"\n", 1)[0].rstrip(b"\r")[:200].decode("ascii", "replace")
    return out
