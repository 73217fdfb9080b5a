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

from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What the router learns from a ClientHello.

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
        real = [v for v in self.versions if v & 0x0F0F != 0x0A0A]
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
            # Fast path: the whole hello sits in the first record.
            if n < 9 + hs_len:
                return None
            return _parse_body(bytes(data[9:9 + hs_len]), 5 + rec_len, 1)
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
    return _parse_body(bytes(buf[4:need]), pos, records)


def _interleaved(content_type: int) -> str:
    return f"record of content type {content_type} interleaved before the ClientHello was complete"


def _first_bytes(data: bytes | bytearray | memoryview) -> str:
    return "first bytes " + bytes(data[:8]).hex(" ")


def _parse_body(b: bytes, hello_end: int, records: int) -> ClientHello:
    """Parse a complete ClientHello body (after the 4-byte handshake header)."""
    e = len(b)
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] | None = None
    try:
        legacy = b[0] << 8 | b[1]
        p = 34  # legacy_version (2) + random (32)
        sid_len = b[p]
        if sid_len > 32:
            raise TLSError(f"legacy_session_id of {sid_len} bytes (at most 32)")
        p += 1 + sid_len
        cs_len = b[p] << 8 | b[p + 1]
        if cs_len < 2 or cs_len & 1:
            raise TLSError(f"cipher_suites length {cs_len} is not a positive even number")
        p += 2 + cs_len
        comp_len = b[p]
        if comp_len < 1:
            raise TLSError("empty legacy_compression_methods")
        p += 1 + comp_len
        if p > e:
            raise IndexError
        if p < e:
            ext_total = b[p] << 8 | b[p + 1]
            p += 2
            if p + ext_total != e:
                raise TLSError(f"extensions length {ext_total} does not match the {e - p} bytes left")
            while p < e:
                et = b[p] << 8 | b[p + 1]
                q = p + 4 + (b[p + 2] << 8 | b[p + 3])
                if q > e:
                    raise TLSError(f"extension {et} overruns the ClientHello")
                p += 4
                if et == EXT_SERVER_NAME:
                    if sni is not None:
                        raise TLSError("duplicate server_name extension")
                    sni = _parse_sni(b, p, q)
                elif et == EXT_ALPN:
                    if alpn:
                        raise TLSError("duplicate application_layer_protocol_negotiation extension")
                    alpn = _parse_alpn(b, p, q)
                elif et == EXT_SUPPORTED_VERSIONS:
                    if versions is not None:
                        raise TLSError("duplicate supported_versions extension")
                    versions = _parse_versions(b, p, q)
                p = q
    except IndexError:
        raise TLSError("truncated ClientHello body") from None
    return ClientHello(sni, alpn, versions or (legacy,), legacy, hello_end, records)


def _parse_sni(b: bytes, p: int, q: int) -> str:
    # RFC 6066 §3: ServerNameList <1..2^16-1>; exactly one host_name (type 0) allowed.
    if q - p < 2 or (b[p] << 8 | b[p + 1]) != q - p - 2:
        raise TLSError("malformed server_name extension")
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
            raw = b[p:p + ln]
            if not raw or not raw.isascii() or raw.endswith(b".") or b"\x00" in raw:
                # Go's crypto/tls refuses the same values (empty, non-ASCII, trailing dot).
                raise TLSError(f"invalid SNI host_name {raw[:64]!r}", ALERT_UNRECOGNIZED_NAME)
            name = raw.decode("ascii").lower()
        p += ln
    if name is None:
        raise TLSError("server_name extension without a host_name")
    return name


def _parse_alpn(b: bytes, p: int, q: int) -> tuple[str, ...]:
    # RFC 7301 §3.1: ProtocolNameList <2..2^16-1>, each ProtocolName <1..2^8-1>.
    if q - p < 3 or (b[p] << 8 | b[p + 1]) != q - p - 2:
        raise TLSError("malformed application_layer_protocol_negotiation extension")
    p += 2
    names = []
    while p < q:
        ln = b[p]
        p += 1
        if ln == 0 or p + ln > q:
            raise TLSError("empty or overrunning ALPN protocol name")
        # latin-1 maps every byte: matching works on the ASCII names and nothing is lost.
        names.append(b[p:p + ln].decode("latin-1"))
        p += ln
    return tuple(names)


def _parse_versions(b: bytes, p: int, q: int) -> tuple[int, ...]:
    # RFC 8446 §4.2.1: ProtocolVersion versions<2..254> in the ClientHello.
    ln = b[p] if p < q else -1
    if ln != q - p - 1 or ln < 2 or ln & 1:
        raise TLSError("malformed supported_versions extension")
    return tuple(b[i] << 8 | b[i + 1] for i in range(p + 1, q, 2))


def encode_alert(description: int, fatal: bool = True) -> bytes:
    """A plaintext TLS alert record, valid before any handshake keys exist (RFC 8446 §6)."""
    return bytes((CONTENT_ALERT, 3, 3, 0, 2, 2 if fatal else 1, description))


def version_name(version: int) -> str:
    """``TLSv1.3`` for 0x0304; GREASE and unknown values as hex."""
    return VERSION_NAMES.get(version, f"{version:#06x}")
