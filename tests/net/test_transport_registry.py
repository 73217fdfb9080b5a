"""uvloop's transport registry made lean (tpemu.net.transport_registry): same answers, no
callback per transport, bounded."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import weakref

import pytest

from tpemu.net import transport_registry
from tpemu.net.transport_registry import PURGE_AT, LeanRegistry, lean_registry, new_uvloop

uvloop = pytest.importorskip("uvloop")


def _registry(loop: object) -> object:
    found = [o for o in gc.get_referents(loop) if isinstance(o, weakref.WeakValueDictionary)]
    assert len(found) == 1
    return found[0]


def test_installed_on_this_uvloop() -> None:
    """The uvloop tpemu runs on has exactly the registry the module expects (a uvloop that changes
    it makes this fail: look at loop.pyx's _track_transport before adapting the module)."""
    loop = new_uvloop()
    try:
        assert type(_registry(loop)) is LeanRegistry
    finally:
        loop.close()


def test_not_installed_elsewhere() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert lean_registry(loop) is False
    finally:
        loop.close()
    stock = uvloop.new_event_loop()
    try:
        assert lean_registry(stock) is True
        assert lean_registry(stock) is False  # already lean: its type is no longer the stock one
    finally:
        stock.close()


def test_a_live_transport_still_owns_its_descriptor_and_a_dead_one_does_not() -> None:
    """uvloop refuses add_reader on a descriptor a live transport owns (the registry's one use);
    once the transport is gone, the same number (reused by a new socket) is free again."""
    loop = new_uvloop()

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        fd = transport.get_extra_info("socket").fileno()
        with pytest.raises(RuntimeError, match="used by transport"):
            loop.add_reader(fd, lambda: None)
        transport.close()
        for _ in range(50):
            await asyncio.sleep(0.01)
            gc.collect()
            if not any(isinstance(t, asyncio.BaseTransport) for t in _registry(loop).values()):  # type: ignore[attr-defined]
                break
        other = socket.socket()
        dup = other.fileno() != fd
        if dup:
            os.dup2(other.fileno(), fd)  # a new socket on the number the transport had
        try:
            loop.add_reader(fd, lambda: None)  # the dead entry answers as absent
            loop.remove_reader(fd)
        finally:
            if dup:
                os.close(fd)
            other.close()
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_dead_entries_are_purged_so_the_registry_stays_bounded() -> None:
    class T:
        pass

    reg = LeanRegistry()
    live = [T() for _ in range(10)]
    for i, t in enumerate(live):
        reg[i] = t
    for i in range(10, 10 + 5 * PURGE_AT):  # transports on ever new numbers, each gone at once
        reg[i] = T()
    assert len(reg.data) <= 2 * len(live) + PURGE_AT + 1
    assert all(reg[i] is live[i] for i in range(10))
    assert reg.get(10 + 5 * PURGE_AT - 2) is None
    with pytest.raises(KeyError):
        reg[10 + 5 * PURGE_AT - 2]
    assert transport_registry.lean_registry(object()) is False
