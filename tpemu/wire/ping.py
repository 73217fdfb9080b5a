"""Teleport's ping framing for ``<protocol>-ping`` ALPN connections (pure, no I/O).

Spec: gravitational/teleport ``lib/utils/pingconn/pingconn.go`` (``PingConn``): every write is
sent as one packet, a ``uint32`` big-endian length followed by that many bytes; a packet of
length zero is a ping and carries nothing. The reader drops pings and returns the payloads as
one byte stream. Clients ask for it (``teleport-postgres-ping`` …) so that load balancers do not
close idle connections; the proxy sends a ping every :data:`PING_INTERVAL` seconds.

:class:`PingDecoder` is a streaming decoder: it never holds more than a 4-byte length header, so
no size limit is needed (payload bytes are handed back as they arrive, whatever the frame size).
"""

from __future__ import annotations

import struct

#: ``defaults.ProxyPingInterval`` in Teleport.
PING_INTERVAL = 30.0
PING = b"\x00\x00\x00\x00"
MAX_FRAME = 0xFFFFFFFF
_LEN = struct.Struct(">I")


def encode_frame(payload: bytes) -> bytes:
    """One data packet (``PingConn.Write``); an empty payload sends nothing (it would be a ping)."""
    if not payload:
        return b""
    out = bytearray()
    view = memoryview(payload)
    while view:
        chunk = view[:MAX_FRAME]
        out += _LEN.pack(len(chunk))
        out += chunk
        view = view[len(chunk):]
    return bytes(out)


class PingDecoder:
    """Turns a ping-framed byte stream back into the payload stream."""

    __slots__ = ("_header", "_left", "pings")

    def __init__(self) -> None:
        self._left = 0  # payload bytes still to come in the current packet
        self._header = bytearray()
        #: Pings seen so far (for logs and tests).
        self.pings = 0

    @property
    def at_boundary(self) -> bool:
        """Whether the stream could end here cleanly (no partial header or payload)."""
        return self._left == 0 and not self._header

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """The payload bytes contained in ``data`` (possibly none)."""
        out = bytearray()
        view = memoryview(data)
        while view:
            if self._left:
                take = view[:self._left]
                out += take
                self._left -= len(take)
                view = view[len(take):]
                continue
            need = 4 - len(self._header)
            self._header += view[:need]
            view = view[need:]
            if len(self._header) < 4:
                break
            (length,) = _LEN.unpack(self._header)
            self._header.clear()
            if length == 0:
                self.pings += 1
            self._left = length
        return bytes(out)
