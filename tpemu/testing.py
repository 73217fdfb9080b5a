"""Real byte vectors for tests and benchmarks (glue over ``ssl``; never used by the services).

ClientHellos come from Python's own TLS stack (``SSLContext.wrap_bio``) with chosen SNI and
ALPN, so they carry the extensions, GREASE-free ordering and key shares a real OpenSSL client
sends. :func:`large_client_hello` grows one to the size of a post-quantum hello
(X25519MLKEM768 key shares make Chrome's ~1.8 KB) and :func:`split_records` re-frames a hello over
several TLS records, as some clients and middleboxes do.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence


def client_hello(sni: str | None = "proxy.tpemu.test", alpn: Sequence[str] = (),
                 max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> bytes:
    """The first flight (one TLS record holding the ClientHello) of a real OpenSSL client."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def handshake_message(record_stream: bytes) -> bytes:
    """The handshake message (4-byte header + body) carried by a stream of handshake records."""
    out = bytearray()
    pos = 0
    while pos + 5 <= len(record_stream):
        length = int.from_bytes(record_stream[pos + 3:pos + 5], "big")
        out += record_stream[pos + 5:pos + 5 + length]
        pos += 5 + length
    return bytes(out)


def split_records(message: bytes, sizes: Sequence[int], version: bytes = b"\x03\x01") -> bytes:
    """Frame a handshake message as records whose payloads have the given sizes (the last one
    takes the rest)."""
    out = bytearray()
    pos = 0
    for size in sizes:
        chunk = message[pos:pos + size]
        out += b"\x16" + version + len(chunk).to_bytes(2, "big") + chunk
        pos += size
    if pos < len(message):
        chunk = message[pos:]
        out += b"\x16" + version + len(chunk).to_bytes(2, "big") + chunk
    return bytes(out)


def add_extension(message: bytes, ext_type: int, data: bytes) -> bytes:
    """Insert an extension at the front of a ClientHello handshake message's extension block."""
    body = bytearray(message[4:])
    p = 34
    p += 1 + body[p]
    p += 2 + int.from_bytes(body[p:p + 2], "big")
    p += 1 + body[p]
    ext_len = int.from_bytes(body[p:p + 2], "big")
    ext = ext_type.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data
    body[p:p + 2] = (ext_len + len(ext)).to_bytes(2, "big")
    body[p + 2:p + 2] = ext
    return b"\x01" + len(body).to_bytes(3, "big") + bytes(body)


def large_client_hello(sni: str | None = "proxy.tpemu.test", alpn: Sequence[str] = ("teleport-postgres",),
                       target_size: int = 1800, records: int = 2) -> bytes:
    """A ~``target_size``-byte hello split over ``records`` records, like a post-quantum one.

    The extra bytes are a private-use extension (0xfe20) the size of an ML-KEM-768 key share;
    parsers must skip unknown extensions, so routing is unchanged.
    """
    message = handshake_message(client_hello(sni, alpn))
    grow = max(0, target_size - (len(message) + 5 * records) - 4)
    message = add_extension(message, 0xFE20, bytes(range(256)) * (grow // 256) + bytes(grow % 256))
    first = len(message) // records
    return split_records(message, [first] * (records - 1))
