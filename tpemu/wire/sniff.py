"""First-bytes protocol detection (pure, no I/O).

Behaviour follows Teleport's ``lib/multiplexer/multiplexer.go`` (summarised in
``shared/TELEPORT_NETWORKING.md``): TLS by the handshake record byte ``0x16`` (tpemu also checks
the version bytes ``03 0x``), SSH by ``SSH-``, HTTP by its method, PROXY v1 by ``PROXY `` and v2
by its 12-byte signature, Postgres by an 8-byte startup head. MySQL cannot be sniffed: its server
speaks first, so it needs its own listener or TLS with ALPN.
"""

from enum import Enum

from tpemu.wire import http, postgres, proxy_protocol, tls
from tpemu.wire.errors import UnknownProtocol


class Protocol(Enum):
    TLS = "tls"
    SSH = "ssh"
    HTTP = "http"
    PROXY_V1 = "proxy-v1"
    PROXY_V2 = "proxy-v2"
    POSTGRES = "postgres"


#: The most bytes :func:`sniff` ever needs before it decides (``OPTIONS `` and the v2 signature).
MAX_SNIFF_BYTES = 12

_V1 = proxy_protocol.V1_PREFIX
_V2 = proxy_protocol.V2_SIGNATURE
_SSH = b"SSH-"


def sniff(prefix: bytes | bytearray | memoryview) -> Protocol | None:
    """Name the protocol the stream ``prefix`` starts with.

    Returns ``None`` when the bytes so far are a prefix of more than one candidate (or too
    short); raises :class:`~tpemu.wire.errors.UnknownProtocol` when they match none.
    """
    n = len(prefix)
    if n == 0:
        return None
    first = prefix[0]
    if first == 0x16:
        verdict = tls.looks_like_tls(prefix)
        if verdict:
            return Protocol.TLS
        if verdict is None:
            return None
        raise UnknownProtocol(
            f"{tls.NOT_TLS_MESSAGE}: record header {bytes(prefix[:3]).hex(' ')} has no TLS version")
    head = bytes(prefix[:MAX_SNIFF_BYTES])
    if first == 0x53:  # S
        if head.startswith(_SSH):
            return Protocol.SSH
        if _SSH.startswith(head):
            return None
    elif first == 0x0D:
        if head.startswith(_V2):
            return Protocol.PROXY_V2
        if _V2.startswith(head):
            return None
    elif first == 0x00:
        verdict = postgres.looks_like_startup(head)
        if verdict:
            return Protocol.POSTGRES
        if verdict is None:
            return None
    else:
        undecided = False
        if first == 0x50:  # P: PROXY v1 or POST/PUT/PATCH
            if head.startswith(_V1):
                return Protocol.PROXY_V1
            undecided = _V1.startswith(head)
        verdict = http.starts_with_method(head)
        if verdict:
            return Protocol.HTTP
        if verdict is None or undecided:
            return None
    raise UnknownProtocol(describe_unknown(head))


def describe_unknown(head: bytes) -> str:
    """A readable line for bytes that match no protocol: hex plus printable ASCII."""
    text = "".join(chr(c) if 0x20 <= c < 0x7F else "." for c in head)
    return (f"unrecognized protocol: first bytes {head.hex(' ')} ({text!r}); "
            "expected TLS, SSH, HTTP, PROXY v1/v2 or a Postgres startup packet")
