"""PROXY protocol v1 and v2 headers: parse and encode (pure, no I/O).

Spec: HAProxy's "The PROXY protocol" versions 1 & 2 (haproxy/doc/proxy-protocol.txt):
v1 §2.1 (a text line of at most 107 bytes), v2 §2.2 (a 16-byte binary header, addresses, TLVs
§2.2.7). A load balancer puts one in front of the client's bytes to say who the client really is;
the router consumes exactly the header's length and sniffs again.
"""

import ipaddress
from enum import Enum
from typing import NamedTuple

from tpemu.wire.errors import LimitExceeded, WireError

V1_PREFIX = b"PROXY "
#: v1 §2.1: "a receiver must wait for the CRLF within the first 107 characters".
V1_MAX_LINE = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_LEN = 16
#: Cap on the v2 address+TLV block. The field allows 65535, real load balancers send < 300.
DEFAULT_V2_MAX_PAYLOAD = 4096
MAX_TLVS = 64

# v2 TLV types (§2.2.7).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_TYPE_NETNS = 0x30


class ProxyProtocolError(WireError):
    """A malformed PROXY protocol header."""


class Command(Enum):
    LOCAL = 0  # health check from the proxy itself: use the real connection addresses
    PROXY = 1


class Family(Enum):
    UNSPEC = "UNKNOWN"
    TCP4 = "TCP4"
    TCP6 = "TCP6"
    UDP4 = "UDP4"
    UDP6 = "UDP6"
    UNIX_STREAM = "UNIX_STREAM"
    UNIX_DGRAM = "UNIX_DGRAM"


class ProxyHeader(NamedTuple):
    """A parsed PROXY header; ``length`` is how many stream bytes it occupies.

    A ``NamedTuple`` (one per connection behind a load balancer: a frozen dataclass's
    ``__init__`` would cost more than the parse).
    """

    version: int
    command: Command
    family: Family
    src: tuple[str, int] | None
    dst: tuple[str, int] | None
    tlvs: tuple[tuple[int, bytes], ...]
    length: int

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of ``kind``, or ``None``."""
        for k, v in self.tlvs:
            if k == kind:
                return v
        return None


def parse_proxy_header(data: bytes | bytearray | memoryview,
                       max_v2_payload: int = DEFAULT_V2_MAX_PAYLOAD) -> ProxyHeader | None:
    """Parse a v1 or v2 header at the start of ``data``; ``None`` if more bytes are needed.

    Raises :class:`ProxyProtocolError` if ``data`` does not start with a valid header and
    :class:`~tpemu.wire.errors.LimitExceeded` past the size caps.
    """
    if not data:
        return None
    if data[0] == 0x0D:
        return parse_v2(data, max_v2_payload)
    if data[0] == 0x50:  # "P"
        return parse_v1(data)
    raise ProxyProtocolError("not a PROXY protocol header")


def parse_v1(data: bytes | bytearray | memoryview) -> ProxyHeader | None:
    """Parse ``PROXY TCP4|TCP6|UNKNOWN src dst sport dport\\r\\n`` (v1 §2.1)."""
    head = bytes(data[:V1_MAX_LINE])
    if not head.startswith(V1_PREFIX[: len(head)]):
        raise ProxyProtocolError("PROXY v1 header must start with 'PROXY '")
    end = head.find(b"\r\n")
    if end < 0:
        if len(head) >= V1_MAX_LINE:
            raise LimitExceeded("PROXY v1 line", V1_MAX_LINE)
        if b"\n" in head:
            raise ProxyProtocolError("PROXY v1 line must end with CRLF")
        return None
    line = head[:end]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 line is not ASCII") from None
    parts = text.split(" ")
    if len(parts) < 2 or parts[0] != "PROXY":
        raise ProxyProtocolError(f"malformed PROXY v1 line {text!r}")
    proto = parts[1]
    if proto == "UNKNOWN":
        # §2.1: the receiver must ignore anything after UNKNOWN up to the CRLF.
        return ProxyHeader(1, Command.PROXY, Family.UNSPEC, None, None, (), end + 2)
    if proto not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"unsupported PROXY v1 protocol {proto!r} (expected TCP4, TCP6 or UNKNOWN)")
    if len(parts) != 6:
        raise ProxyProtocolError(f"PROXY v1 {proto} line needs 4 address fields, got {len(parts) - 2}")
    version = 4 if proto == "TCP4" else 6
    src = (_v1_ip(parts[2], version), _v1_port(parts[4]))
    dst = (_v1_ip(parts[3], version), _v1_port(parts[5]))
    return ProxyHeader(1, Command.PROXY, Family.TCP4 if version == 4 else Family.TCP6, src, dst, (), end + 2)


def _v1_ip(text: str, version: int) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"bad address {text!r} in PROXY v1 line") from None
    if addr.version != version:
        raise ProxyProtocolError(f"address {text!r} is not IPv{version}")
    return str(addr)


def _v1_port(text: str) -> int:
    # §2.1: ports are decimal 0..65535 without leading zeroes.
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyProtocolError(f"bad port {text!r} in PROXY v1 line")
    return int(text)


_COMMANDS = (Command.LOCAL, Command.PROXY)

_V2_FAMILIES = {
    0x00: (Family.UNSPEC, 0),
    0x11: (Family.TCP4, 12),
    0x12: (Family.UDP4, 12),
    0x21: (Family.TCP6, 36),
    0x22: (Family.UDP6, 36),
    0x31: (Family.UNIX_STREAM, 216),
    0x32: (Family.UNIX_DGRAM, 216),
}


def parse_v2(data: bytes | bytearray | memoryview,
             max_payload: int = DEFAULT_V2_MAX_PAYLOAD) -> ProxyHeader | None:
    """Parse a binary v2 header (§2.2): signature, ver/cmd, family, length, addresses, TLVs."""
    n = len(data)
    sig = bytes(data[:12])
    if sig != V2_SIGNATURE and not V2_SIGNATURE.startswith(sig):
        raise ProxyProtocolError("bad PROXY v2 signature")
    if n < V2_HEADER_LEN:
        return None
    ver_cmd = data[12]
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"unsupported PROXY v2 version {ver_cmd >> 4}")
    cmd = ver_cmd & 0x0F
    if cmd > 1:
        raise ProxyProtocolError(f"unknown PROXY v2 command {cmd}")
    fam_byte = data[13]
    length = data[14] << 8 | data[15]
    if length > max_payload:
        raise LimitExceeded("PROXY v2 payload", max_payload, length)
    if n < V2_HEADER_LEN + length:
        return None
    payload = bytes(data[V2_HEADER_LEN:V2_HEADER_LEN + length])
    total = V2_HEADER_LEN + length
    command = _COMMANDS[cmd]
    known = _V2_FAMILIES.get(fam_byte)
    if known is None:
        if command is Command.PROXY:
            raise ProxyProtocolError(f"unknown PROXY v2 address family/transport {fam_byte:#04x}")
        # §2.2: with LOCAL the receiver must accept the header and ignore the whole block.
        return ProxyHeader(2, command, Family.UNSPEC, None, None, (), total)
    family, addr_len = known
    if len(payload) < addr_len:
        raise ProxyProtocolError(f"PROXY v2 payload of {length} bytes is too short for {family.value} addresses")
    src = dst = None
    if command is Command.PROXY:
        if family in (Family.TCP4, Family.UDP4):
            # Formatted by hand: ipaddress.IPv4Address costs microseconds per connection.
            src = (f"{payload[0]}.{payload[1]}.{payload[2]}.{payload[3]}", payload[8] << 8 | payload[9])
            dst = (f"{payload[4]}.{payload[5]}.{payload[6]}.{payload[7]}", payload[10] << 8 | payload[11])
        elif family in (Family.TCP6, Family.UDP6):
            src = (str(ipaddress.IPv6Address(payload[0:16])), payload[32] << 8 | payload[33])
            dst = (str(ipaddress.IPv6Address(payload[16:32])), payload[34] << 8 | payload[35])
        elif family in (Family.UNIX_STREAM, Family.UNIX_DGRAM):
            src = (_unix_path(payload[0:108]), 0)
            dst = (_unix_path(payload[108:216]), 0)
    return ProxyHeader(2, command, family, src, dst, _parse_tlvs(payload, addr_len), total)


def _unix_path(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "backslashreplace")


def _parse_tlvs(payload: bytes, start: int) -> tuple[tuple[int, bytes], ...]:
    # §2.2.7: each TLV is type (1), length (2, big endian), value. A TLV that overruns the
    # payload is an error; unknown types are kept raw and skipped by the caller.
    out: list[tuple[int, bytes]] = []
    p = start
    end = len(payload)
    while p < end:
        if len(out) == MAX_TLVS:
            raise ProxyProtocolError(f"more than {MAX_TLVS} TLVs in PROXY v2 header")
        if p + 3 > end:
            raise ProxyProtocolError("truncated TLV header in PROXY v2 payload")
        kind = payload[p]
        ln = payload[p + 1] << 8 | payload[p + 2]
        p += 3
        if p + ln > end:
            raise ProxyProtocolError(f"TLV {kind:#04x} of {ln} bytes overruns the PROXY v2 payload")
        out.append((kind, payload[p:p + ln]))
        p += ln
    return tuple(out)


def encode_v1(src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    """A v1 line; ``None`` addresses give ``PROXY UNKNOWN``."""
    if src is None or dst is None:
        return b"PROXY UNKNOWN\r\n"
    s = ipaddress.ip_address(src[0])
    d = ipaddress.ip_address(dst[0])
    if s.version != d.version:
        raise ValueError("source and destination address families differ")
    proto = "TCP4" if s.version == 4 else "TCP6"
    return f"PROXY {proto} {s} {d} {src[1]} {dst[1]}\r\n".encode("ascii")


def encode_v2(src: tuple[str, int] | None, dst: tuple[str, int] | None,
              tlvs: tuple[tuple[int, bytes], ...] = (), command: Command = Command.PROXY) -> bytes:
    """A v2 header; ``command=LOCAL`` or ``None`` addresses give an UNSPEC family."""
    if command is Command.LOCAL or src is None or dst is None:
        fam = 0x00
        addrs = b""
    else:
        s = ipaddress.ip_address(src[0])
        d = ipaddress.ip_address(dst[0])
        if s.version != d.version:
            raise ValueError("source and destination address families differ")
        fam = 0x11 if s.version == 4 else 0x21
        addrs = s.packed + d.packed + src[1].to_bytes(2, "big") + dst[1].to_bytes(2, "big")
    body = addrs + b"".join(bytes((k,)) + len(v).to_bytes(2, "big") + v for k, v in tlvs)
    if len(body) > 0xFFFF:
        raise ValueError("PROXY v2 payload too large")
    return V2_SIGNATURE + bytes((0x20 | command.value, fam)) + len(body).to_bytes(2, "big") + body


def _ip(addr: tuple[str, int] | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if addr is None:
        return None
    try:
        return ipaddress.ip_address(addr[0].strip("[]"))
    except ValueError:
        return None  # a UNIX path or an empty host (from a PROXY v2 header the client's LB sent)


def encode_for_backend(version: str, src: tuple[str, int] | None, dst: tuple[str, int] | None) -> bytes:
    """The header a pass-through route sends to its backend (``send_proxy: v1|v2``); never raises.

    Follows HAProxy's ``make_proxy_line_v1``/``make_proxy_line_v2`` (``src/connection.c``) for
    addresses that do not fit the strict encoders: an IPv6 client on an IPv4 listener (or the
    reverse) gives ``PROXY UNKNOWN`` in v1 and IPv4-mapped IPv6 addresses (``TCP6``) in v2; a
    source that is no IP address at all (a UNIX path from an upstream v2 header) gives
    ``UNKNOWN`` in v1 and a ``LOCAL`` header in v2.
    """
    s, d = _ip(src), _ip(dst)
    if src is None or dst is None or s is None or d is None:
        return encode_v1(None, None) if version == "v1" else encode_v2(None, None, command=Command.LOCAL)
    if s.version == d.version:
        pair = ((str(s), src[1]), (str(d), dst[1]))
        return encode_v1(*pair) if version == "v1" else encode_v2(*pair)
    if version == "v1":
        return encode_v1(None, None)
    s6 = s if isinstance(s, ipaddress.IPv6Address) else ipaddress.IPv6Address(f"::ffff:{s}")
    d6 = d if isinstance(d, ipaddress.IPv6Address) else ipaddress.IPv6Address(f"::ffff:{d}")
    return encode_v2((str(s6), src[1]), (str(d6), dst[1]))
