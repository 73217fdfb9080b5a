"""Low-level socket helpers for peeking at a connection without consuming it (glue, Linux).

``SO_RCVLOWAT`` makes epoll report a TCP socket readable only once that many bytes are queued,
so a router waiting for the rest of a ClientHello sleeps instead of waking for every segment.
``TCP_INFO``'s state tells a peer that closed (``CLOSE_WAIT``) from one that is merely slow, which
``MSG_PEEK`` alone cannot: peeking at a half-closed socket returns the same bytes again.
"""

from __future__ import annotations

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
