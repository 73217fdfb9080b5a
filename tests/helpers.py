"""Test helpers shared by the suites."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from tpemu.testkit import Cluster, User

T = TypeVar("T")

def unverified_client_context(alpn: list[str] | None = None) -> ssl.SSLContext:
    """A TLS client context that checks no certificate (for tests of what a server negotiates or
    answers, not of its identity), offering ``alpn`` if given."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


TRAILERS = (b"\x00", b"\x16\x03\x01\x00\x05hello", b"GET / HTTP/1.1\r\n\r\n")


def feed_three_ways(parse: Callable[[bytes], T | None], data: bytes, *,
                    trailing: bool = True, same: Callable[[Any, Any], bool] | None = None) -> T:
    """Feed ``data`` whole, one byte at a time (every strict prefix must ask for more), and with
    trailing bytes (the result must not change); return the whole-input result."""
    whole = parse(data)
    assert whole is not None, "the complete vector must parse"
    for i in range(len(data)):
        got = parse(data[:i])
        assert got is None, f"prefix of {i} bytes gave {got!r} instead of asking for more"
    if trailing:
        for extra in TRAILERS:
            got = parse(data + extra)
            assert (same or (lambda a, b: a == b))(got, whole), f"trailing {extra!r} changed the result"
    return whole


@contextlib.asynccontextmanager
async def ssh_cluster(tmp: Path, **options: Any) -> AsyncIterator[Cluster]:
    """A :class:`tpemu.Cluster` with SSH nodes only (``nodes=``, default node1) and alice (logins
    root and alice) logged in: what the SSH suites share."""
    async with Cluster(tmp, databases=(), **options) as c:
        await c.user("alice", logins=("root", "alice"))
        yield c


def alice(c: Cluster) -> User:
    return c.users["alice"]


async def parked(sock: Any) -> Any:
    """A connected socket as a parked transport: what the tunnel hands a service (a channel)."""
    import asyncio

    from tpemu.net.pipe import Parked

    sock.setblocking(False)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(Parked, sock)
    return transport
