"""Two transports in memory (:mod:`tpemu.net.memory`): bytes, half-close, close, abort,
backpressure and the order of bytes kept while parked, on both loops."""

from __future__ import annotations

import asyncio

import pytest

from tpemu.net.channel import open_streams
from tpemu.net.memory import transport_pair
from tpemu.net.pipe import Parked, Pipe, hand_over

pytestmark = pytest.mark.both_loops


class Recorder(asyncio.Protocol):
    def __init__(self, keep_open_on_eof: bool = True) -> None:
        self.data = bytearray()
        self.eof = False
        self.lost: list[Exception | None] = []
        self.paused = 0
        self.resumed = 0
        self.keep = keep_open_on_eof
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return self.keep

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1


async def until(cond: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0)


async def test_streams_both_ways_half_close_and_close() -> None:
    a, b = transport_pair()
    ra, wa = await open_streams(a)
    rb, wb = await open_streams(b)
    wa.write(b"hello")
    assert await rb.readexactly(5) == b"hello"
    wb.write(b"world!")
    assert await ra.readexactly(6) == b"world!"
    wa.write_eof()  # half-close: b reads EOF, b can still write
    assert await rb.read() == b""
    wb.write(b"after")
    assert await ra.readexactly(5) == b"after"
    wb.close()
    assert await ra.read() == b""
    await wb.wait_closed()
    assert b.is_closing()


async def test_abort_loses_both_sides_the_peer_with_a_reset() -> None:
    a, b = transport_pair()
    pa, pb = Recorder(), Recorder()
    hand_over(a, pa)
    hand_over(b, pb)
    a.abort()
    await until(lambda: pa.lost and pb.lost)
    assert pa.lost == [None]
    assert isinstance(pb.lost[0], ConnectionResetError)
    a.write(b"dropped")  # writes after the end go nowhere, raise nothing
    assert pb.data == b""


async def test_paused_reader_queues_and_pauses_the_writer_then_delivers_in_order() -> None:
    a, b = transport_pair()
    pa, pb = Recorder(), Recorder()
    hand_over(a, pa)
    hand_over(b, pb)
    b.pause_reading()
    assert pa.paused == 1  # the writer is told at once
    a.write(b"one ")
    a.write(b"two")
    a.write_eof()
    assert pb.data == b"" and not pb.eof
    b.resume_reading()
    assert pb.data == b""  # delivered from the loop, not inside resume_reading
    await until(lambda: pb.eof)
    assert pb.data == b"one two" and pa.resumed == 1


async def test_bytes_kept_while_parked_come_before_later_ones() -> None:
    """Parked pauses after the first chunk; later chunks wait in the transport. hand_over replays
    the kept chunk first, then the transport's queue (a synchronous resume had them reversed)."""
    a, b = transport_pair()
    a.write(b"first,")  # b is parked: it keeps this and pauses reading
    a.write(b"second,")
    a.write(b"third")
    assert isinstance(b.get_protocol(), Parked)
    pb = Recorder()
    hand_over(b, pb)
    await until(lambda: pb.data == b"first,second,third")


async def test_a_pipe_joins_a_memory_pair_to_streams() -> None:
    a, b = transport_pair("left")
    c, d = transport_pair("right")
    closed: list[BaseException | None] = []
    Pipe.join(b, c, on_close=lambda pipe, exc: closed.append(exc))
    ra, wa = await open_streams(a)
    rd, wd = await open_streams(d)
    wa.write(b"x" * 200_000)
    assert await rd.readexactly(200_000) == b"x" * 200_000
    wd.write(b"back")
    assert await ra.readexactly(4) == b"back"
    wa.close()
    wd.close()
    await until(lambda: closed == [None])
