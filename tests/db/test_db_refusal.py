"""Refusals in each database protocol, checked by decoding the answer with the pure codecs."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tpemu.net.channel import open_streams
from tpemu.net.db_refusal import Refusal, refuse
from tpemu.net.pipe import park_streams
from tpemu.net.streams import PingTransport, Stream
from tpemu.wire import mongo as mongo_wire
from tpemu.wire import mysql as my
from tpemu.wire import ping
from tpemu.wire import postgres as pg


async def exchange(protocol: str, request: bytes, why: Refusal, mysql_seq: int = 0, framed: bool = False) -> bytes:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=theirs)
    if framed:
        reader, writer = await open_streams(PingTransport.wrap(park_streams(reader, writer)))
    stream = Stream(reader, writer)
    task = asyncio.ensure_future(refuse(protocol, stream, "no entry\r\nfor you", why, mysql_seq))
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(ours, ping.encode_frame(request) if framed else request)
    data = b""
    async with asyncio.timeout(5):
        while chunk := await loop.sock_recv(ours, 4096):
            data += chunk
    ours.close()
    await task
    return ping.PingDecoder().feed(data) if framed else data


async def test_postgres_and_mysql() -> None:
    data = await exchange("postgres", b"", Refusal.UNAVAILABLE)
    msg = pg.parse_message(data)
    assert msg is not None and msg.tag == b"E" and b"C08006" in msg.body and b"Mno entry" in msg.body
    data = await exchange("mysql", b"", Refusal.DENIED, mysql_seq=3)
    packet = my.parse_packet(data)
    assert packet is not None and packet.seq == 3
    assert packet.payload[:3] == b"\xff" + my.ER_ACCESS_DENIED.to_bytes(2, "little") and b"#28000" in packet.payload


@pytest.mark.parametrize("framed", [False, True], ids=["plain", "ping-framed"])
async def test_redis_answers_the_first_command(framed: bool) -> None:
    data = await exchange("redis", b"*1\r\n$4\r\nPING\r\n", Refusal.DENIED, framed=framed)
    assert data == b"-ERR no entry for you\r\n"  # one line: CR/LF in the message are folded


async def test_mongo_answers_op_msg_and_op_query() -> None:
    data = await exchange("mongodb", mongo_wire.encode_op_msg(41, 0, {"hello": 1, "$db": "admin"}), Refusal.DENIED)
    parsed = mongo_wire.parse_message(data)
    assert parsed is not None and isinstance(parsed[0], mongo_wire.OpMsg)
    assert parsed[0].header.response_to == 41
    assert parsed[0].body == {"ok": 0.0, "errmsg": "no entry\r\nfor you", "code": 13, "codeName": "Unauthorized"}
    data = await exchange("mongodb", mongo_wire.encode_op_query(42, "admin.$cmd", {"isMaster": 1}),
                          Refusal.UNAVAILABLE)
    parsed = mongo_wire.parse_message(data)
    assert parsed is not None and isinstance(parsed[0], mongo_wire.OpReply)
    assert parsed[0].header.response_to == 42 and parsed[0].documents[0]["codeName"] == "HostUnreachable"
