"""Low-level socket helpers for peeking at a connection without consuming it (glue, Linux).

``SO_RCVLOWAT`` makes epoll report a TCP socket readable only once that many bytes are queued,
so a router waiting for the rest of a ClientHello sleeps instead of waking for every segment.
``TCP_INFO``'s state tells a peer that closed (``CLOSE_WAIT``) from one that is merely slow, which
``MSG_PEEK`` alone cannot: peeking at a half-closed socket returns the same bytes again.
"""

from __future__ import annotations

import _socket
import asyncio
import select
import socket
import struct

TCP_CLOSE_WAIT = 8
_TCP_INFO = getattr(socket, "TCP_INFO", 11)


def set_rcvlowat(sock: socket.socket, nbytes: int) -> None:
    """Wake the reader only when ``nbytes`` are queued (best effort; ignored where unsupported)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, max(1, nbytes))
    except OSError:
        pass


def peer_closed(sock: socket.socket) -> bool:
    """Whether the peer has sent FIN (TCP state CLOSE_WAIT) or the socket is gone."""
    if sock.family == socket.AF_UNIX:
        # A socket pair (an upgraded stream handed to the front door): poll for RDHUP.
        try:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLRDHUP)
            return any(ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _, ev in poller.poll(0))
        except (OSError, ValueError):
            return True
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 8)
    except OSError:
        return True
    return struct.unpack_from("B", info)[0] in (TCP_CLOSE_WAIT, 7)  # 7 = TCP_CLOSE


def format_addr(addr: object) -> str:
    """``host:port`` / ``[v6]:port`` for an address tuple from ``accept``/``getpeername``."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)


def sockaddr(addr: object) -> tuple[str, int]:
    """The ``(host, port)`` of an address tuple (IPv6 tuples have four items)."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        return str(addr[0]), int(addr[1])
    return ("", 0)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an IPv4/IPv6 loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def close_with_answer(sock: socket.socket, answer: bytes = b"") -> None:
    """Send ``answer`` (best effort) and close so that the peer can read it.

    Closing a socket with unread bytes queued makes the kernel send RST, and an RST can
    overtake the answer at the peer; so what is queued is drained first and the close is a FIN.
    """
    try:
        sock.setblocking(False)
        while sock.recv(65536):
            pass
    except OSError:
        pass
    try:
        if answer:
            sock.send(answer)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


async def read_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes from a non-blocking socket (never more, so what follows stays in
    the kernel for the next reader, a TLS stack for one); ``IncompleteReadError`` at EOF."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(buf), n)
        buf += chunk
    return bytes(buf)


_UVLoop: type[asyncio.AbstractEventLoop] | None
try:
    import uvloop

    _UVLoop = uvloop.Loop
except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio's loop works too
    _UVLoop = None

#: The C socket type's own ``family``/``type`` getters: plain ints, no enum conversion.
_FAMILY = _socket.socket.family.__get__
_TYPE = _socket.socket.type.__get__
#: The C ``detach`` (``socket.socket.detach`` is a Python wrapper that also sets ``_closed``).
_DETACH = _socket.socket.detach


class Handed:
    """An accepted socket as uvloop's ``loop.connect_accepted_socket`` is given it (see :func:`handed_to`).

    uvloop reads ``type`` once and ``family`` twice — on a ``socket.socket`` each is an IntEnum
    conversion, ~0.7 µs in Python 3.11, ~2 µs per connection — then ``fileno()``, and calls
    ``close()`` once its transport has closed the descriptor. This answers with plain ints and,
    on that close, detaches the Python socket (what uvloop does with a real one), so that the
    number is never closed twice. Until then the Python socket owns the descriptor as before
    (closing it after a failed hand-over is safe either way).
    """

    __slots__ = ("family", "sock", "type")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.family: int = _FAMILY(sock)
        self.type: int = _TYPE(sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        sock = self.sock
        sock._closed = True  # type: ignore[attr-defined]  # (what socket.socket.detach does first)
        _DETACH(sock)


def handed_to(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> socket.socket:
    """What to give ``loop.connect_accepted_socket`` for ``sock``: a :class:`Handed` on uvloop
    (typed as the socket it stands for), the socket itself on asyncio's loop, whose transport
    reads and writes through it."""
    if type(loop) is _UVLoop:
        return Handed(sock)  # type: ignore[return-value]
    return sock
