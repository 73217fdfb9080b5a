"""Fault proxies: TCP forwarders that apply toxics to the bytes in each direction (glue).

A :class:`FaultProxy` listens on ``listen`` and forwards every connection to ``upstream`` — put
it in front of any route or tunnel (the proxy's web port, the tunnel port, a database, the Auth
API). Toxics (:mod:`tpemu.faults.toxics`) change while connections are open, as in toxiproxy:
each connection draws, once per toxic, whether the toxic applies to it (``toxicity``), and
re-reads the list whenever it changes.

Theory of operation: one task per direction copies bytes; before passing a chunk on it applies
the direction's toxics in order (``latency`` and ``bandwidth`` sleep, ``slicer`` cuts the chunk
up, ``limit_data`` ends the connection at the limit, ``timeout`` drops the data, ``reset_peer``
drops it too and, ``timeout`` ms after that first chunk, resets: ``SO_LINGER`` 0 then close, so
the peer reads ``connection reset by peer`` — toxiproxy's ``ResetToxic.Pipe``). A monitor per
connection closes it ``timeout`` ms after a ``timeout`` toxic starts applying to it
(``TimeoutToxic``; 0: never). Every wait is bounded by the toxic's own attributes or by the
connection closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from typing import Any

from tpemu.faults.toxics import Toxic

log = logging.getLogger(__name__)
CHUNK = 64 * 1024
CONNECT_TIMEOUT = 10.0


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {addr!r} is not host:port")
    return host.strip("[]"), int(port)


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    """One client connection and its upstream."""

    def __init__(self, proxy: FaultProxy, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.proxy = proxy
        self.client, self.upstream = client, upstream
        self.drawn: dict[str, bool] = {}
        self.sent = {"upstream": 0, "downstream": 0}
        self.scheduled: dict[str, asyncio.TimerHandle] = {}
        self.done = asyncio.Event()

    def active(self, stream: str) -> list[Toxic]:
        out = []
        for toxic in self.proxy.toxics.values():
            if toxic.stream != stream:
                continue
            if toxic.name not in self.drawn:
                self.drawn[toxic.name] = random.random() < toxic.toxicity
            if self.drawn[toxic.name]:
                out.append(toxic)
        return out

    def close(self, reset: bool = False) -> None:
        if self.done.is_set():
            return
        self.done.set()
        for handle in self.scheduled.values():
            handle.cancel()
        for _, writer in (self.client, self.upstream):
            if reset:
                _rst(writer)
            else:
                writer.close()

    async def run(self) -> None:
        tasks = [asyncio.ensure_future(self._pump(self.client[0], self.upstream[1], "upstream")),
                 asyncio.ensure_future(self._pump(self.upstream[0], self.client[1], "downstream")),
                 asyncio.ensure_future(self._monitor())]
        try:
            await self.done.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.close()

    async def _monitor(self) -> None:
        """The ``timeout`` toxic acts without data: the connection closes N ms after it applies."""
        loop = asyncio.get_running_loop()
        while not self.done.is_set():
            for stream in ("upstream", "downstream"):
                for toxic in self.active(stream):
                    if toxic.type == "timeout" and toxic.name not in self.scheduled:
                        delay = toxic.attr("timeout") / 1000
                        if delay == 0:
                            continue  # never closes; the pumps drop the data until it is removed
                        log.info("fault proxy %s: timeout toxic %r: close in %g ms", self.proxy.name, toxic.name,
                                 delay * 1000)
                        self.scheduled[toxic.name] = loop.call_later(delay, self.close)
            for name in [n for n in self.scheduled if n not in self.proxy.toxics]:
                self.scheduled.pop(name).cancel()  # removed before it fired
            async with self.proxy.changed:
                await self.proxy.changed.wait()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, stream: str) -> None:
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    break
                active = self.active(stream)
                reset = next((t for t in active if t.type == "reset_peer"), None)
                if reset is not None:  # the data is dropped; RST timeout ms later
                    log.info("fault proxy %s: reset_peer toxic %r: TCP RST in %d ms", self.proxy.name, reset.name,
                             reset.attr("timeout"))
                    await asyncio.sleep(reset.attr("timeout") / 1000)
                    self.close(reset=True)
                    return
                if any(t.type == "timeout" for t in active):
                    continue  # dropped while a timeout toxic applies
                await self._pass(data, dst, stream)
            for toxic in self.active(stream):
                if toxic.type == "slow_close":
                    await asyncio.sleep(toxic.attr("delay") / 1000)
            if dst.can_write_eof():
                dst.write_eof()
            else:
                self.close()
        except (OSError, ConnectionError, RuntimeError):
            self.close()

    async def _pass(self, data: bytes, dst: asyncio.StreamWriter, stream: str) -> None:
        slices = [data]
        for toxic in self.active(stream):
            kind = toxic.type
            if kind == "latency":
                jitter = toxic.attr("jitter")
                await asyncio.sleep(max(0, toxic.attr("latency") + random.uniform(-jitter, jitter)) / 1000)
            elif kind == "bandwidth" and toxic.attr("rate") > 0:
                await asyncio.sleep(len(data) / (toxic.attr("rate") * 1000))
            elif kind == "slicer" and toxic.attr("average_size") > 0:
                avg, var = toxic.attr("average_size"), toxic.attr("size_variation")
                out, view = [], memoryview(data)
                while view:
                    size = max(1, avg + random.randint(-var, var)) if var else avg
                    out.append(bytes(view[:size]))
                    view = view[size:]
                slices = out
            elif kind == "limit_data":
                left = toxic.attr("bytes") - self.sent[stream]
                if left <= len(data):
                    if left > 0:
                        dst.write(data[:left])
                        self.sent[stream] += left
                        await dst.drain()
                    log.info("fault proxy %s: limit_data %r reached (%d bytes %s)", self.proxy.name, toxic.name,
                             toxic.attr("bytes"), stream)
                    self.close()
                    return
        delay = next((t.attr("delay") for t in self.active(stream) if t.type == "slicer"), 0) / 1e6
        for i, piece in enumerate(slices):
            if i and delay:
                await asyncio.sleep(delay)
            dst.write(piece)
            self.sent[stream] += len(piece)
            await dst.drain()


class FaultProxy:
    """One toxiproxy-style proxy: ``listen`` → ``upstream`` with toxics."""

    def __init__(self, name: str, listen: str, upstream: str, enabled: bool = True) -> None:
        self.name, self.listen, self.upstream, self.enabled = name, listen, upstream, enabled
        self.toxics: dict[str, Toxic] = {}
        self.changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "listen": self.listen, "upstream": self.upstream, "enabled": self.enabled,
                "toxics": [t.to_json() for t in self.toxics.values()]}

    async def start(self) -> None:
        host, port = _split(self.listen)
        _split(self.upstream)
        self._server = await asyncio.start_server(self._accept, host, port)
        bound = self._server.sockets[0].getsockname()
        self.listen = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
        log.info("fault proxy %s listening on %s → %s", self.name, self.listen, self.upstream)

    async def stop(self) -> None:
        """Stop listening and drop every connection (toxiproxy's ``enabled: false``)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for conn in list(self._conns):
            conn.close()
        await self.notify()

    async def set_enabled(self, enabled: bool) -> None:
        if enabled and not self.enabled:
            await self.start()
        elif not enabled and self.enabled:
            await self.stop()
        self.enabled = enabled

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = _split(self.upstream)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                up = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            log.warning("fault proxy %s: cannot reach upstream %s: %s", self.name, self.upstream, exc or "timed out")
            writer.close()
            return
        conn = _Conn(self, (reader, writer), up)
        self._conns.add(conn)
        try:
            await conn.run()
        finally:
            self._conns.discard(conn)
