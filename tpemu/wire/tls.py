"""TLS ClientHello parser and alert encoder (pure, no I/O).

Specs: the record layer and handshake framing of RFC 8446 §5.1 and §4 (same bytes in TLS 1.2,
RFC 5246 §6.2.1 and §7.4); ClientHello body RFC 8446 §4.1.2; ``server_name`` RFC 6066 §3;
``application_layer_protocol_negotiation`` RFC 7301 §3.1; ``supported_versions`` RFC 8446 §4.2.1;
alerts RFC 8446 §6.

The router only needs three things from a ClientHello: SNI, the ALPN list and the versions. It
reads them without consuming the stream (the bytes stay in the kernel for the real TLS stack or
the pass-through backend), so this parser takes the raw stream prefix, which may hold the
handshake message split over several records and arrives over several reads. It is on the hot
path: it indexes bytes directly and decodes only the three extensions it needs.
"""

import operator
import struct
from collections.abc import Callable
from typing import NamedTuple

from tpemu.wire.errors import LimitExceeded, WireError

CONTENT_HANDSHAKE = 0x16
CONTENT_ALERT = 0x15
HANDSHAKE_CLIENT_HELLO = 0x01

EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43

#: RFC 8446 §5.1: "The length MUST NOT exceed 2^14 bytes."
MAX_RECORD_PAYLOAD = 1 << 14
#: Default cap on the ClientHello handshake body. A post-quantum (X25519MLKEM768) hello is
#: ~1.8 KB; browsers with many extensions stay under 3 KB. 16 KiB is generous and still bounded.
DEFAULT_MAX_HELLO = 16 * 1024
#: A legitimate client never spreads its hello over more than a few records; fuzzers and
#: attackers can send one byte per record, so the number of records is capped too.
MAX_HELLO_RECORDS = 32

# TLS versions as they appear on the wire.
SSL3 = 0x0300
TLS10 = 0x0301
TLS11 = 0x0302
TLS12 = 0x0303
TLS13 = 0x0304

VERSION_NAMES = {SSL3: "SSLv3", TLS10: "TLSv1.0", TLS11: "TLSv1.1", TLS12: "TLSv1.2", TLS13: "TLSv1.3"}

# Alert descriptions (RFC 8446 §6) the router sends before any handshake.
ALERT_HANDSHAKE_FAILURE = 40
ALERT_PROTOCOL_VERSION = 70
ALERT_INTERNAL_ERROR = 80
ALERT_DECODE_ERROR = 50
ALERT_UNRECOGNIZED_NAME = 112
ALERT_NO_APPLICATION_PROTOCOL = 120

#: Record header and handshake header of a stream's first bytes, in one C call.
_HEADS = struct.Struct(">BBBHBBH").unpack_from
#: (high byte of the extension type, extension length): one C call per extension header.
_EXT_HEADER = struct.Struct(">BxH").unpack_from

#: The error Go's crypto/tls (and so Teleport) logs when a TLS listener gets plain bytes.
NOT_TLS_MESSAGE = "tls: first record does not look like a TLS handshake"


class TLSError(WireError):
    """A malformed ClientHello; ``alert`` is the alert description to send back."""

    def __init__(self, message: str, alert: int = ALERT_DECODE_ERROR) -> None:
        super().__init__(message)
        self.alert = alert


class NotTLS(TLSError):
    """The stream does not start with a TLS handshake record."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(NOT_TLS_MESSAGE + (f" ({detail})" if detail else ""), ALERT_DECODE_ERROR)


class ClientHello(NamedTuple):
    """What the router learns from a ClientHello.

    A ``NamedTuple`` rather than the usual frozen dataclass: it is built once per connection on
    the hot path, and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field)
    costs about a microsecond, more than the rest of the parse.

    ``sni`` is lower-cased (DNS names are case-insensitive) or ``None`` when the client sent no
    ``server_name``; ``alpn`` keeps the client's order; ``versions`` is the
    ``supported_versions`` list, or the legacy version alone when the extension is absent.
    ``hello_end`` is how many stream bytes the records carrying the hello span.
    """

    sni: str | None
    alpn: tuple[str, ...]
    versions: tuple[int, ...]
    legacy_version: int
    hello_end: int
    records: int

    @property
    def max_version(self) -> int:
        """The highest TLS version the client offers (GREASE values ignored)."""
        real = [v for v in self.versions if (v & 0x0F0F) != 0x0A0A]
        return max(real) if real else self.legacy_version


def looks_like_tls(prefix: bytes | bytearray | memoryview) -> bool | None:
    """Whether ``prefix`` starts like a TLS handshake record; ``None`` if too short to tell."""
    n = len(prefix)
    if n == 0:
        return None
    if prefix[0] != CONTENT_HANDSHAKE:
        return False
    if n < 3:
        return None if n == 1 or prefix[1] == 3 else False
    return prefix[1] == 3 and prefix[2] <= 4


def parse_client_hello(
    data: bytes | bytearray | memoryview, max_size: int = DEFAULT_MAX_HELLO
) -> ClientHello | None:
    """Parse the ClientHello at the start of a TLS stream.

    Returns the :class:`ClientHello`, or ``None`` when more bytes are needed. Raises
    :class:`NotTLS` when the stream is not a TLS handshake, :class:`TLSError` when the hello is
    malformed, :class:`~tpemu.wire.errors.LimitExceeded` when its body exceeds ``max_size``.
    Bytes after the hello (the rest of the stream) are ignored.
    """
    n = len(data)
    if n >= 9:
        # Fast path: one struct read of the record and handshake headers; a well-formed hello in
        # a single record goes straight to the (cached) body parse. Anything else takes the
        # careful path below, which says precisely what is wrong.
        ctype, major, minor, rec_len, hs_type, hs_hi, hs_lo = _HEADS(data)
        if ctype == CONTENT_HANDSHAKE and major == 3 and minor <= 4 and hs_type == HANDSHAKE_CLIENT_HELLO \
                and rec_len <= MAX_RECORD_PAYLOAD:
            end = 9 + (hs_hi << 16 | hs_lo)
            if end - 5 <= rec_len and end - 9 <= max_size:
                if n < end:
                    return None
                if type(data) is not bytes:
                    data = bytes(data[:end])  # bytes index and decode fastest
                layout = _layouts.get(rec_len << 24 | end)
                if layout is not None:
                    hit = layout.results.get(layout.segments(data))
                    if hit is not None:
                        return hit
                return _parse_body(data, 9, end, 5 + rec_len, 1)
    if n < 5:
        if n and (data[0] != CONTENT_HANDSHAKE or (n > 1 and data[1] != 3)):
            raise NotTLS(_first_bytes(data))
        return None
    if data[0] != CONTENT_HANDSHAKE or data[1] != 3 or data[2] > 4:
        raise NotTLS(_first_bytes(data))
    rec_len = data[3] << 8 | data[4]
    if rec_len == 0 or rec_len > MAX_RECORD_PAYLOAD:
        raise TLSError(f"TLS record length {rec_len} out of range 1..{MAX_RECORD_PAYLOAD}")
    if n < 6:
        return None
    if data[5] != HANDSHAKE_CLIENT_HELLO:
        raise TLSError(f"first handshake message is type {data[5]}, expected ClientHello (1)",
                       ALERT_HANDSHAKE_FAILURE)
    if rec_len >= 4:
        if n < 9:
            return None
        hs_len = data[6] << 16 | data[7] << 8 | data[8]
        if hs_len > max_size:
            raise LimitExceeded("ClientHello", max_size, hs_len)
        if 4 + hs_len <= rec_len:
            if n < 9 + hs_len:
                return None
            if type(data) is not bytes:
                data = bytes(data[:9 + hs_len])
            return _parse_body(data, 9, 9 + hs_len, 5 + rec_len, 1)
    return _parse_fragmented(data, max_size)


def _parse_fragmented(data: bytes | bytearray | memoryview, max_size: int) -> ClientHello | None:
    """Reassemble a hello spread over several handshake records, then parse it."""
    n = len(data)
    buf = bytearray()
    pos = 0
    records = 0
    need = -1  # total handshake bytes (header + body) once the header is known
    while need < 0 or len(buf) < need:
        if records == MAX_HELLO_RECORDS:
            raise TLSError(f"ClientHello fragmented over more than {MAX_HELLO_RECORDS} records")
        if pos + 5 > n:
            if pos < n and (data[pos] != CONTENT_HANDSHAKE or (pos + 1 < n and data[pos + 1] != 3)):
                raise TLSError(_interleaved(data[pos]))
            return None
        if data[pos] != CONTENT_HANDSHAKE:
            raise TLSError(_interleaved(data[pos]))
        if data[pos + 1] != 3 or data[pos + 2] > 4:
            raise TLSError(f"bad record version {data[pos + 1]:#04x}{data[pos + 2]:02x} in ClientHello")
        rec_len = data[pos + 3] << 8 | data[pos + 4]
        if rec_len == 0 or rec_len > MAX_RECORD_PAYLOAD:
            raise TLSError(f"TLS record length {rec_len} out of range 1..{MAX_RECORD_PAYLOAD}")
        start = pos + 5
        end = start + rec_len
        records += 1
        if need < 0:
            take = end if end <= n else n
        else:
            # Only read what the hello still lacks: a later message may share the record.
            take = min(end, n, start + need - len(buf))
        buf += data[start:take]
        if need < 0 and len(buf) >= 4:
            if buf[0] != HANDSHAKE_CLIENT_HELLO:
                raise TLSError(f"first handshake message is type {buf[0]}, expected ClientHello (1)",
                               ALERT_HANDSHAKE_FAILURE)
            hs_len = buf[1] << 16 | buf[2] << 8 | buf[3]
            if hs_len > max_size:
                raise LimitExceeded("ClientHello", max_size, hs_len)
            need = 4 + hs_len
            del buf[need:]
        if take < end and (need < 0 or len(buf) < need):
            return None  # the record is not all here yet
        pos = end
    return _parse_body(bytes(buf), 4, need, pos, records)


def _interleaved(content_type: int) -> str:
    return f"record of content type {content_type} interleaved before the ClientHello was complete"


def _first_bytes(data: bytes | bytearray | memoryview) -> str:
    return "first bytes " + bytes(data[:8]).hex(" ")


# Theory of operation of the cache. Finding SNI, ALPN and supported_versions means walking the
# chain of extension headers (type, length), 12-18 of them; in pure Python that walk dominates
# the parse. But a given client sends the same hello on every connection except for a few
# volatile fields: the random, the session id, and the *contents* of key_share,
# pre_shared_key, ECH, cookie, session ticket and GREASE extensions. So after a full parse the
# layout is remembered, keyed by where the hello lies in the buffer and how it was framed: the
# slices of the hello that are not volatile contents (every length and header byte is in them).
# The next hello with that key is sliced the same way in one C call (``itemgetter`` of slice
# objects) and looked up among the results already computed for that layout. A hit means every
# non-volatile byte, every length and header included, equals an earlier hello's: a full parse
# would visit the same offsets and find the same SNI, ALPN and versions, so a hit is exact, not a
# guess. Caches are bounded, and a lookup only hits on an exact match, so input cannot poison
# them; a client whose hellos never repeat (a browser that permutes its extensions) only pays
# for the full parse.

# Keyed by peer-controlled bytes, so the bound is what a hostile client can make the proxy hold:
# 64 layouts x 64 results (~4,000 hellos, a few MB) rather than 256 x 256 (65,536: tens of MB,
# most of the RSS a 100,000-connection fuzz left behind, issue 16). Real clients repeat a handful
# of layouts.
_MAX_LAYOUTS = 64
_MAX_RESULTS = 64
#: Extensions whose contents change from one connection of a client to the next.
_VOLATILE = frozenset({41, 51, 44, 35, 0xFE0D})


class _Layout(NamedTuple):
    segments: Callable[[bytes], tuple[bytes, ...]]
    results: dict[tuple[bytes, ...], ClientHello]


_layouts: dict[int | tuple[int, int, int, int], _Layout] = {}


def _parse_body(b: bytes, start: int, e: int, hello_end: int, records: int) -> ClientHello:
    """Parse a complete ClientHello body occupying ``b[start:e]`` (through the cache)."""
    # Single-record hellos (start 9, one record) are keyed by an int the fast path builds cheaply.
    key: int | tuple[int, int, int, int] = (hello_end - 5) << 24 | e if start == 9 and records == 1 \
        else (start, e, hello_end, records)
    layout = _layouts.get(key)
    if layout is not None:
        hit = layout.results.get(layout.segments(b))
        if hit is not None:
            return hit
    hello, keep = _parse_full(b, start, e, hello_end, records)
    segments = operator.itemgetter(*keep)
    if layout is None or layout.segments.__reduce__()[1] != segments.__reduce__()[1]:
        if len(_layouts) >= _MAX_LAYOUTS:
            _layouts.clear()
        layout = _Layout(segments, {})
        _layouts[key] = layout
    if len(layout.results) >= _MAX_RESULTS:
        layout.results.clear()
    layout.results[segments(b)] = hello
    return hello


def _parse_full(b: bytes, start: int, e: int, hello_end: int,
                records: int) -> tuple[ClientHello, list[slice]]:
    """Parse and validate the hello body ``b[start:e]``; also returns its non-volatile slices.

    Reads stay below ``e`` (checked after each variable-length field), so bytes after the hello
    in the same buffer are never taken for part of it.
    """
    try:
        legacy = b[start] << 8 | b[start + 1]
        p = start + 34  # legacy_version (2) + random (32)
        sid_len = b[p]
        if sid_len > 32:
            raise TLSError(f"legacy_session_id of {sid_len} bytes (at most 32)")
        keep = [slice(start, start + 2), slice(p, p + 1)]
        p += 1 + sid_len
        seg = p
        if p + 2 > e:
            raise IndexError
        cs_len = b[p] << 8 | b[p + 1]
        if cs_len < 2 or cs_len & 1:
            raise TLSError(f"cipher_suites length {cs_len} is not a positive even number")
        p += 2 + cs_len
        if p >= e:
            raise IndexError
        comp_len = b[p]
        if comp_len < 1:
            raise TLSError("empty legacy_compression_methods")
        p += 1 + comp_len
        if p > e:
            raise IndexError
        sni: str | None = None
        alpn: tuple[str, ...] | None = None
        versions: tuple[int, ...] | None = None
        if p < e:
            if p + 2 > e:
                raise IndexError
            ext_total = b[p] << 8 | b[p + 1]
            p += 2
            if p + ext_total != e:
                raise TLSError(f"extensions length {ext_total} does not match the {e - p} bytes left")
            while p < e:
                hi, ln = _EXT_HEADER(b, p)
                q = p + 4 + ln
                if q > e:
                    raise TLSError(f"extension {hi << 8 | b[p + 1]} overruns the ClientHello")
                lo = b[p + 1]
                if hi == 0:
                    if lo == EXT_SERVER_NAME:
                        if sni is not None:
                            raise TLSError("duplicate server_name extension")
                        sni = _parse_sni(b, p + 4, q)
                    elif lo == EXT_ALPN:
                        if alpn is not None:
                            raise TLSError("duplicate application_layer_protocol_negotiation extension")
                        alpn = _parse_alpn(b, p + 4, q)
                    elif lo == EXT_SUPPORTED_VERSIONS:
                        if versions is not None:
                            raise TLSError("duplicate supported_versions extension")
                        versions = _parse_versions(b, p + 4, q)
                if ln and ((hi << 8 | lo) in _VOLATILE or (hi == lo and (lo & 0x0F) == 0x0A)):  # GREASE 0x?a?a
                    keep.append(slice(seg, p + 4))
                    seg = q
                p = q
    except (IndexError, struct.error):
        raise TLSError("truncated ClientHello body") from None
    keep.append(slice(seg, e))
    return ClientHello(sni, alpn or (), versions or (legacy,), legacy, hello_end, records), keep


def _parse_sni(b: bytes, p: int, q: int) -> str:
    # RFC 6066 §3: ServerNameList <1..2^16-1>; exactly one host_name (type 0) allowed.
    if q - p < 5 or (b[p] << 8 | b[p + 1]) != q - p - 2:
        raise TLSError("malformed server_name extension")
    if b[p + 2] == 0 and p + 5 + (b[p + 3] << 8 | b[p + 4]) == q:
        return _host_name(b[p + 5:q])  # the usual case: one host_name entry
    p += 2
    name: str | None = None
    while p < q:
        if p + 3 > q:
            raise TLSError("malformed server_name entry")
        kind = b[p]
        ln = b[p + 1] << 8 | b[p + 2]
        p += 3
        if p + ln > q:
            raise TLSError("server_name entry overruns the extension")
        if kind == 0:
            if name is not None:
                raise TLSError("more than one host_name in server_name")
            name = _host_name(b[p:p + ln])
        p += ln
    if name is None:
        raise TLSError("server_name extension without a host_name")
    return name


def _host_name(raw: bytes) -> str:
    if not raw or not raw.isascii() or raw[-1] == 0x2E or 0 in raw:
        # Go's crypto/tls refuses the same values (empty, non-ASCII, trailing dot).
        raise TLSError(f"invalid SNI host_name {raw[:64]!r}", ALERT_UNRECOGNIZED_NAME)
    return raw.lower().decode("ascii")


def _parse_alpn(b: bytes, p: int, q: int) -> tuple[str, ...]:
    # RFC 7301 §3.1: ProtocolNameList <2..2^16-1>, each ProtocolName <1..2^8-1>.
    if q - p < 3 or (b[p] << 8 | b[p + 1]) != q - p - 2:
        raise TLSError("malformed application_layer_protocol_negotiation extension")
    p += 2
    names = []
    while p < q:
        end = p + 1 + b[p]
        if end == p + 1 or end > q:
            raise TLSError("empty or overrunning ALPN protocol name")
        # latin-1 maps every byte: matching works on the ASCII names and nothing is lost.
        names.append(b[p + 1:end].decode("latin-1"))
        p = end
    return tuple(names)


_VERSION_LISTS = {n: struct.Struct(f">{n}H").unpack_from for n in range(1, 128)}


def _parse_versions(b: bytes, p: int, q: int) -> tuple[int, ...]:
    # RFC 8446 §4.2.1: ProtocolVersion versions<2..254> in the ClientHello.
    ln = b[p] if p < q else -1
    if ln != q - p - 1 or ln < 2 or ln & 1:
        raise TLSError("malformed supported_versions extension")
    return _VERSION_LISTS[ln >> 1](b, p + 1)


def encode_alert(description: int, fatal: bool = True) -> bytes:
    """A plaintext TLS alert record, valid before any handshake keys exist (RFC 8446 §6)."""
    return bytes((CONTENT_ALERT, 3, 3, 0, 2, 2 if fatal else 1, description))


def version_name(version: int) -> str:
    """``TLSv1.3`` for 0x0304; GREASE and unknown values as hex."""
    return VERSION_NAMES.get(version, f"{version:#06x}")
