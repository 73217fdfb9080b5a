"""SPDY/3.1 framing with zlib header compression, as Kubernetes streams speak it — pure, no I/O.

``kubectl port-forward`` (and the SPDY fallback of ``exec``) multiplexes streams over SPDY/3.1
(``k8s.io/apimachinery/pkg/util/httpstream/spdy`` on ``moby/spdystream`` and its ``spdy`` framer,
a fork of Go's old ``go.net/spdy``), either on a connection upgraded with ``Upgrade: SPDY/3.1`` or
tunnelled in WebSocket binary messages (``SPDY/3.1+portforward.k8s.io``). Frame layout (SPDY
Protocol Draft 3, §2.2):

* control frame: ``1`` bit, 15-bit version (3), 16-bit type, 8-bit flags, 24-bit length, data;
* data frame: ``0`` bit, 31-bit stream id, 8-bit flags (``FIN`` = 1), 24-bit length, data.

Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are a 32-bit count of (32-bit length + name,
32-bit length + value) pairs, several values of one name joined by NUL, names lower case, and
compressed with zlib using the SPDY/3 dictionary (§2.6.10.1), *one* compression context per
direction for the whole connection, each block ending in a sync flush. So the decoder and the
encoder are stateful (:class:`Decoder`, :class:`Encoder`); every other part is a pure function of
the bytes.

Checks follow spdystream's framer (``spdy/read.go``): a zero stream id where one is required, a
RST_STREAM status 0, flags on PING/GOAWAY/WINDOW_UPDATE, fixed lengths, upper-case or duplicate
header names and a header block that does not fill its frame exactly are errors; unknown control
types are errors too (spdystream fails the read). Limits: :data:`MAX_DATA` for a data frame's
payload, :data:`MAX_CONTROL` for a control frame, :data:`MAX_HEADER_BLOCK` for a decompressed
header block (a zlib bomb stops there) — each raises :class:`~tpemu.wire.errors.LimitExceeded`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from tpemu.wire.errors import LimitExceeded, WireError

VERSION = 3

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS = 1, 2, 3, 4
PING, GOAWAY, HEADERS, WINDOW_UPDATE = 6, 7, 8, 9
#: Control flags (§2.3.1 / §2.6): FIN ends the sender's half; UNIDIRECTIONAL on SYN_STREAM.
FLAG_FIN, FLAG_UNIDIRECTIONAL = 0x01, 0x02

#: RST_STREAM status codes (§2.6.3).
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, UNSUPPORTED_VERSION = 1, 2, 3, 4
CANCEL, INTERNAL_ERROR, FLOW_CONTROL_ERROR, STREAM_IN_USE = 5, 6, 7, 8
STREAM_ALREADY_CLOSED, INVALID_CREDENTIALS, FRAME_TOO_LARGE = 9, 10, 11
#: GOAWAY status codes (§2.6.6).
GOAWAY_OK, GOAWAY_PROTOCOL_ERROR, GOAWAY_INTERNAL_ERROR = 0, 1, 2

#: The 24-bit length field's ceiling.
MAX_LENGTH = (1 << 24) - 1
#: Largest data frame payload accepted (Go's io.Copy writes 32 KiB chunks; spdystream one frame per Write).
MAX_DATA = 1 << 20
#: Largest control frame accepted (a port-forward SYN_STREAM is ~60 bytes).
MAX_CONTROL = 64 * 1024
#: Largest header block after decompression.
MAX_HEADER_BLOCK = 64 * 1024
#: Header names and values each at most this long (inside the block's own limit).
_MAX_HEADERS = 1024

_NAMES = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding",
    "accept-language", "accept-ranges", "age", "allow", "authorization", "cache-control", "connection",
    "content-base", "content-encoding", "content-language", "content-length", "content-location", "content-md5",
    "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host", "if-match",
    "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
    "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer", "retry-after",
    "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
    "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url", "public",
    "set-cookie", "keep-alive", "origin")
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.")
#: The zlib dictionary of SPDY/3 header blocks (§2.6.10.1): length-prefixed words, then a tail.
#: 1423 bytes, Adler-32 0xe3c6a7c2 (the dictionary id in every header stream's zlib header).
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode("ascii") for w in _NAMES) + _TAIL.encode("ascii")

_CONTROL_NAMES = {SYN_STREAM: "SYN_STREAM", SYN_REPLY: "SYN_REPLY", RST_STREAM: "RST_STREAM",
                  SETTINGS: "SETTINGS", PING: "PING", GOAWAY: "GOAWAY", HEADERS: "HEADERS",
                  WINDOW_UPDATE: "WINDOW_UPDATE"}
#: spdystream's invalidReqHeaders: hop-by-hop headers a SYN_STREAM must not carry.
_INVALID_REQUEST_HEADERS = frozenset({"connection", "host", "keep-alive", "proxy-connection", "transfer-encoding"})

Headers = tuple[tuple[str, str], ...]


class SpdyError(WireError):
    """A frame that breaks SPDY/3.1 (or spdystream's reading of it)."""


@dataclass(frozen=True, slots=True)
class SynStream:
    stream_id: int
    associated_to: int
    priority: int
    flags: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class SynReply:
    stream_id: int
    flags: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class Settings:
    flags: int
    #: ``(flags, id, value)`` per entry.
    entries: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True, slots=True)
class Ping:
    ping_id: int


@dataclass(frozen=True, slots=True)
class GoAway:
    last_good_stream_id: int
    status: int


@dataclass(frozen=True, slots=True)
class HeadersFrame:
    stream_id: int
    flags: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass(frozen=True, slots=True)
class Data:
    stream_id: int
    flags: int
    data: bytes

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


Frame = SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate | Data


def header(headers: Headers, name: str) -> str:
    """The first value of ``name`` (lower case) in a header block, or ``""``."""
    return next((v for n, v in headers if n == name), "")


# -- header blocks ------------------------------------------------------------------------------------


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block: names lower-cased, repeated names' values NUL-joined."""
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        merged.setdefault(name.lower(), []).append(value)
    out = [struct.pack(">I", len(merged))]
    for name, values in merged.items():
        n, v = name.encode("utf-8"), "\x00".join(values).encode("utf-8")
        out += [struct.pack(">I", len(n)), n, struct.pack(">I", len(v)), v]
    return b"".join(out)


def parse_header_block(block: bytes, stream_id: int) -> Headers:
    """The pairs of an uncompressed block, which must be consumed exactly (raises :class:`SpdyError`)."""
    if len(block) < 4:
        raise SpdyError(f"stream {stream_id}: header block of {len(block)} bytes has no pair count")
    (count,) = struct.unpack_from(">I", block, 0)
    if count > _MAX_HEADERS:
        raise LimitExceeded("SPDY header count", _MAX_HEADERS, count)
    at, pairs, seen = 4, [], set()
    for _ in range(count):
        fields = []
        for part in ("name", "value"):
            if at + 4 > len(block):
                raise SpdyError(f"stream {stream_id}: header block ends inside a {part} length")
            (n,) = struct.unpack_from(">I", block, at)
            at += 4
            if at + n > len(block):
                raise SpdyError(f"stream {stream_id}: header {part} of {n} bytes overruns the block")
            fields.append(bytes(block[at:at + n]))
            at += n
        try:
            name, value = fields[0].decode("utf-8"), fields[1].decode("utf-8")
        except UnicodeDecodeError:
            raise SpdyError(f"stream {stream_id}: header is not UTF-8") from None
        if not name:
            raise SpdyError(f"stream {stream_id}: empty header name")
        if name != name.lower():
            raise SpdyError(f"stream {stream_id}: header was not lowercased: {name!r}")
        if name in seen:
            raise SpdyError(f"stream {stream_id}: multiple headers with same name: {name!r}")
        seen.add(name)
        pairs += [(name, v) for v in value.split("\x00")]
    if at != len(block):
        raise SpdyError(f"stream {stream_id}: compressed payload size was incorrect ({len(block) - at} bytes "
                        "after the last header)")
    return tuple(pairs)


# -- decoding -----------------------------------------------------------------------------------------


class Decoder:
    """Frames from one direction of a SPDY connection (keeps a partial frame and the zlib context)."""

    __slots__ = ("_buf", "_inflate", "max_data")

    def __init__(self, max_data: int = MAX_DATA) -> None:
        self._buf = bytearray()
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self.max_data = max_data

    @property
    def pending(self) -> int:
        """Bytes of a partial frame held."""
        return len(self._buf)

    def push(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes that arrived (frames are taken with :meth:`next`)."""
        self._buf += data

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Every complete frame in what has arrived so far, in order (raises :class:`SpdyError`)."""
        self._buf += data
        frames: list[Frame] = []
        while (frame := self.next()) is not None:
            frames.append(frame)
        return frames

    def next(self) -> Frame | None:
        """The next complete frame, or ``None`` until more bytes arrive (raises :class:`SpdyError`)."""
        buf = self._buf
        if len(buf) < 8:
            return None
        first, second = struct.unpack_from(">II", buf, 0)
        flags, length = second >> 24, second & 0xFFFFFF
        control = bool(first & 0x80000000)
        limit = MAX_CONTROL if control else self.max_data
        if length > limit:
            what = "SPDY control frame" if control else "SPDY data frame"
            raise LimitExceeded(what, limit, length)
        if len(buf) < 8 + length:
            return None
        body = bytes(buf[8:8 + length])
        del buf[:8 + length]
        if not control:
            stream_id = first & 0x7FFFFFFF
            if stream_id == 0:
                raise SpdyError("data frame on stream 0 (stream id zero is disallowed)")
            return Data(stream_id, flags, body)
        version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise SpdyError(f"unsupported SPDY version {version} (this server speaks SPDY/3.1)")
        return self._control(kind, flags, body)

    def _control(self, kind: int, flags: int, body: bytes) -> Frame:
        name = _CONTROL_NAMES.get(kind)
        if name is None:
            raise SpdyError(f"unknown control frame type {kind}")
        fixed = {RST_STREAM: 8, PING: 4, GOAWAY: 8, WINDOW_UPDATE: 8}.get(kind)
        minimum = {SYN_STREAM: 10, SYN_REPLY: 4, HEADERS: 4, SETTINGS: 4}.get(kind, 0)
        if (fixed is not None and len(body) != fixed) or len(body) < minimum:
            raise SpdyError(f"invalid control frame: {name} with {len(body)} bytes")
        if kind in (PING, GOAWAY, WINDOW_UPDATE) and flags:
            raise SpdyError(f"invalid control frame: {name} with flags {flags:#x}")
        if kind == SETTINGS:
            (count,) = struct.unpack_from(">I", body, 0)
            if len(body) != 4 + 8 * count:
                raise SpdyError(f"invalid control frame: SETTINGS of {len(body)} bytes for {count} entries")
            entries = tuple((word >> 24, word & 0xFFFFFF, value) for word, value in
                            struct.iter_unpack(">II", body[4:]))
            return Settings(flags, entries)
        if kind == PING:
            (ping_id,) = struct.unpack(">I", body)
            if ping_id == 0:
                raise SpdyError("PING with id 0")
            return Ping(ping_id)
        (word,) = struct.unpack_from(">I", body, 0)
        stream_id = word & 0x7FFFFFFF
        if kind == GOAWAY:
            return GoAway(stream_id, struct.unpack_from(">I", body, 4)[0])
        if kind == WINDOW_UPDATE:  # SPDY/3.1 §2.6.8: stream 0 is the session's window
            return WindowUpdate(stream_id, struct.unpack_from(">I", body, 4)[0] & 0x7FFFFFFF)
        if stream_id == 0:
            raise SpdyError(f"{name} on stream 0 (stream id zero is disallowed)")
        if kind == RST_STREAM:
            status = struct.unpack_from(">I", body, 4)[0]
            if status == 0:
                raise SpdyError(f"invalid control frame: RST_STREAM of stream {stream_id} with status 0")
            return RstStream(stream_id, status)
        if kind == SYN_STREAM:
            associated = struct.unpack_from(">I", body, 4)[0] & 0x7FFFFFFF
            headers = self._headers(body[10:], stream_id)
            bad = next((n for n, _ in headers if n in _INVALID_REQUEST_HEADERS), None)
            if bad is not None:
                raise SpdyError(f"stream {stream_id}: frame contained invalid header {bad!r}")
            return SynStream(stream_id, associated, body[8] >> 5, flags, headers)
        headers = self._headers(body[4:], stream_id)
        if kind == SYN_REPLY:
            return SynReply(stream_id, flags, headers)
        return HeadersFrame(stream_id, flags, headers)

    def _headers(self, compressed: bytes, stream_id: int) -> Headers:
        inflate = self._inflate
        if inflate.eof:
            raise SpdyError("the header compression stream has ended")
        try:
            block = inflate.decompress(compressed, MAX_HEADER_BLOCK + 1)
        except zlib.error as exc:
            raise SpdyError(f"stream {stream_id}: header block does not decompress: {exc}") from None
        if len(block) > MAX_HEADER_BLOCK or inflate.unconsumed_tail:
            raise LimitExceeded("SPDY header block (decompressed)", MAX_HEADER_BLOCK)
        if inflate.unused_data:
            raise SpdyError(f"stream {stream_id}: bytes after the end of the header compression stream")
        return parse_header_block(block, stream_id)


# -- encoding -----------------------------------------------------------------------------------------


def _control_frame(kind: int, flags: int, body: bytes) -> bytes:
    if len(body) > MAX_LENGTH:
        raise ValueError(f"a SPDY control frame holds at most {MAX_LENGTH} bytes")
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(body)) + body


def encode_data(stream_id: int, data: bytes | bytearray | memoryview = b"", fin: bool = False) -> bytes:
    """A data frame (``fin``: the sender's last)."""
    if not 0 < stream_id <= 0x7FFFFFFF or len(data) > MAX_LENGTH:
        raise ValueError("a data frame needs a stream id in 1..2^31-1 and at most 2^24-1 bytes")
    return struct.pack(">II", stream_id, ((FLAG_FIN if fin else 0) << 24) | len(data)) + bytes(data)


def encode_rst_stream(stream_id: int, status: int) -> bytes:
    return _control_frame(RST_STREAM, 0, struct.pack(">II", stream_id & 0x7FFFFFFF, status))


def encode_ping(ping_id: int) -> bytes:
    return _control_frame(PING, 0, struct.pack(">I", ping_id))


def encode_goaway(last_good_stream_id: int, status: int = GOAWAY_OK) -> bytes:
    return _control_frame(GOAWAY, 0, struct.pack(">II", last_good_stream_id & 0x7FFFFFFF, status))


def encode_window_update(stream_id: int, delta: int) -> bytes:
    return _control_frame(WINDOW_UPDATE, 0, struct.pack(">II", stream_id & 0x7FFFFFFF, delta & 0x7FFFFFFF))


def encode_settings(entries: tuple[tuple[int, int, int], ...], flags: int = 0) -> bytes:
    body = struct.pack(">I", len(entries)) + b"".join(struct.pack(">II", (f << 24) | i, v) for f, i, v in entries)
    return _control_frame(SETTINGS, flags, body)


class Encoder:
    """Frames for one direction of a SPDY connection (owns that direction's zlib context)."""

    __slots__ = ("_deflate",)

    def __init__(self) -> None:
        # spdystream: zlib.NewWriterLevelDict(…, zlib.BestCompression, headerDictionary).
        self._deflate = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)

    def _compress(self, headers: Headers) -> bytes:
        block = encode_header_block(headers)
        return self._deflate.compress(block) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def syn_stream(self, stream_id: int, headers: Headers, fin: bool = False, priority: int = 0,
                   associated_to: int = 0) -> bytes:
        body = struct.pack(">IIBB", stream_id, associated_to, (priority & 7) << 5, 0) + self._compress(headers)
        return _control_frame(SYN_STREAM, FLAG_FIN if fin else 0, body)

    def syn_reply(self, stream_id: int, headers: Headers = (), fin: bool = False) -> bytes:
        return _control_frame(SYN_REPLY, FLAG_FIN if fin else 0, struct.pack(">I", stream_id) + self._compress(headers))

    def headers(self, stream_id: int, headers: Headers, fin: bool = False) -> bytes:
        return _control_frame(HEADERS, FLAG_FIN if fin else 0, struct.pack(">I", stream_id) + self._compress(headers))
