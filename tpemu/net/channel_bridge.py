"""Bridge an SSH channel to a plain socket (glue over asyncssh streams).

Both ends of a reverse tunnel hand their callers an ordinary connected socket — one end of a
``socketpair`` — whose other end is pumped to and from an SSH channel. Services and proxies then
use the public APIs they would use on any TCP connection (``asyncssh.run_server(sock=…)``,
``asyncio.open_connection(sock=…)``, ``loop.connect_accepted_socket``), at the cost of one extra
in-process copy. Half-close is carried both ways (EOF ↔ SSH channel EOF).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import asyncssh

_tasks: set[asyncio.Task[None]] = set()


def bridge(reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes], first: bytes = b"") -> socket.socket:
    """A non-blocking socket carrying the channel's bytes (``first`` is delivered before the rest)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    task = asyncio.get_running_loop().create_task(_pump(ours, reader, writer, first))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return theirs


async def _pump(sock: socket.socket, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes],
                first: bytes) -> None:
    try:
        r, w = await asyncio.open_connection(sock=sock, limit=256 * 1024)
    except OSError:
        writer.close()
        return

    async def channel_to_sock() -> None:
        if first:
            w.write(first)
        while data := await reader.read(65536):
            w.write(data)
            await w.drain()
        if w.can_write_eof():
            w.write_eof()

    async def sock_to_channel() -> None:
        while data := await r.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()

    try:
        await asyncio.gather(channel_to_sock(), sock_to_channel())
    except (OSError, asyncssh.Error, ConnectionError):
        pass
    finally:
        writer.close()
        w.close()
        with contextlib.suppress(OSError, ConnectionError):
            await w.wait_closed()
