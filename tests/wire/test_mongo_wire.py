"""tpemu.wire.mongo: message framing, OP_MSG, OP_QUERY, OP_REPLY, OP_COMPRESSED, CRC-32C.

Provenance: the client messages are captured in the test from pymongo talking to nx-27017 (the
MongoDB engine behind the Database Service) through a tee (its handshake, ping/insert/find
OP_MSGs, the insert with a kind-1 document sequence), and nx-27017's replies from the same tee;
the legacy OP_QUERY handshake is built per the spec with pymongo's bson; OP_COMPRESSED comes
from pymongo's own (private) message builder with its zlib context; CRC-32C vectors are RFC 3720 appendix B.4's.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import Any

import bson as pybson
import pymongo
import pytest
from bson.codec_options import CodecOptions
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo.compression_support import ZlibContext
from pymongo.message import _op_msg

from tpemu.agent.engines.mongo import MongoEngine
from tpemu.wire import bson, mongo
from tpemu.wire.errors import LimitExceeded, WireError


def split_messages(stream: bytes) -> list[bytes]:
    out = []
    while stream:
        length = struct.unpack_from("<i", stream)[0]
        out.append(stream[:length])
        stream = stream[length:]
    return out


@dataclass
class Capture:
    """What crossed the tee, per connection, as complete messages."""

    client: list[list[bytes]]  # pymongo's requests
    server: list[list[bytes]]  # nx-27017's replies


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    """pymongo talking to nx-27017 (the MongoDB engine) through a tee: connect, ping, insert_many, find."""
    seen: list[tuple[bytearray, bytearray]] = []

    async def main() -> None:
        engine = MongoEngine("wire", tmp_path_factory.mktemp("mongo-wire"))
        endpoint = await engine.ensure_access("", "", timeout=60)
        handlers: set[asyncio.Task[None]] = set()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            handlers.add(asyncio.current_task())  # type: ignore[arg-type]
            requests, replies = bytearray(), bytearray()
            seen.append((requests, replies))
            up_reader, up_writer = await endpoint.open()

            async def upstream() -> None:
                while data := await reader.read(65536):
                    requests.extend(data)
                    up_writer.write(data)
                    await up_writer.drain()
                up_writer.write_eof()

            task = asyncio.create_task(upstream())
            try:
                while data := await up_reader.read(65536):
                    replies.extend(data)
                    writer.write(data)
                    await writer.drain()
            finally:
                task.cancel()
                up_writer.close()
                writer.close()
                handlers.discard(asyncio.current_task())  # type: ignore[arg-type]

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def use_client() -> None:
            client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                "127.0.0.1", port, directConnection=True, maxPoolSize=1, serverSelectionTimeoutMS=5000)
            try:
                client.admin.command("ping")
                client.db.coll.insert_many([{"_id": i, "v": "x" * i} for i in range(3)])
                assert [d["_id"] for d in client.db.coll.find({"_id": {"$gte": 1}})] == [1, 2]
            finally:
                client.close()

        try:
            await asyncio.to_thread(use_client)
            async with asyncio.timeout(5):  # pymongo closed its sockets: the tee's handlers end
                while handlers:
                    await asyncio.sleep(0.02)
        finally:
            server.close()
            await server.wait_closed()
            await engine.close()

    asyncio.run(main())
    return Capture([split_messages(bytes(c)) for c, _ in seen], [split_messages(bytes(r)) for _, r in seen])


@pytest.fixture(scope="module")
def pymongo_messages(capture: Capture) -> list[list[bytes]]:
    return capture.client


def parse_three_ways(raw: bytes) -> mongo.Message:
    """Parse ``raw`` whole, prefix by prefix (``None`` until complete) and with trailing data."""
    msg, used = mongo.parse_message(raw) or (None, 0)
    assert msg is not None and used == len(raw)
    for i in range(len(raw)):
        assert mongo.parse_message(raw[:i]) is None
    again = mongo.parse_message(raw + b"\x10\x00\x00\x00trailing")
    assert again == (msg, len(raw))
    return msg


def test_captured_pymongo_traffic_parses(pymongo_messages: list[list[bytes]]) -> None:
    connections = [[parse_three_ways(raw) for raw in conn] for conn in pymongo_messages]
    assert len(connections) >= 2  # the monitor's connection and the pool's
    for messages in connections:
        # pymongo 4.20 opens each connection with an OP_MSG "ismaster" (older drivers used OP_QUERY).
        first = messages[0]
        assert isinstance(first, mongo.OpMsg)
        assert first.body["ismaster"] == 1 and first.body["$db"] == "admin"
        assert first.body["helloOk"] is True and "driver" in first.body["client"]
        assert all(isinstance(m, mongo.OpMsg) for m in messages)
    commands = [next(iter(m.command())) for conn in connections for m in conn if isinstance(m, mongo.OpMsg)]
    assert {"ping", "insert", "find"} <= set(commands)
    insert = next(m for conn in connections for m in conn if isinstance(m, mongo.OpMsg) and "insert" in m.body)
    assert isinstance(insert, mongo.OpMsg)
    assert insert.sequences and insert.sequences[0].identifier == "documents"
    assert [d["_id"] for d in insert.sequences[0].documents] == [0, 1, 2]
    assert insert.command()["documents"][2] == {"_id": 2, "v": "xx"}
    assert insert.body["$db"] == "db" and not insert.more_to_come


def test_reencoding_matches_pymongo(pymongo_messages: list[list[bytes]]) -> None:
    for raw in (raw for conn in pymongo_messages for raw in conn):
        msg = parse_three_ways(raw)
        h = msg.header
        if isinstance(msg, mongo.OpMsg):
            assert mongo.encode_op_msg(h.request_id, h.response_to, msg.body, msg.flags, msg.sequences) == raw
        elif isinstance(msg, mongo.OpQuery):
            assert mongo.encode_op_query(h.request_id, msg.collection, msg.query, msg.flags, msg.skip,
                                         msg.limit) == raw


def test_nx27017_replies_parse_and_answer_their_requests(capture: Capture) -> None:
    """A real server's replies (nx-27017 as the engine runs it): OP_MSG, each answering a request."""
    for requests, replies in zip(capture.client, capture.server, strict=True):
        asked = {parse_three_ways(raw).header.request_id for raw in requests}
        assert len(replies) == len(requests)  # pymongo sent nothing with moreToCome
        for raw in replies:
            msg = parse_three_ways(raw)
            assert isinstance(msg, mongo.OpMsg) and msg.header.response_to in asked
            assert msg.body["ok"] == 1.0
            h = msg.header
            assert mongo.encode_op_msg(h.request_id, h.response_to, msg.body, msg.flags, msg.sequences) == raw
    bodies = [parse_three_ways(raw).body for conn in capture.server for raw in conn]  # type: ignore[union-attr]
    found = next(b for b in bodies if "cursor" in b)
    assert [d["_id"] for d in found["cursor"]["firstBatch"]] == [1, 2]
    assert any(b.get("n") == 3 for b in bodies)  # the insert_many's reply


def legacy_handshake() -> bytes:
    """The OP_QUERY handshake of pre-OP_MSG-era drivers (pymongo 3.x, the legacy mongo shell).

    Layout from the wire protocol spec (header, int32 flags, cstring "admin.$cmd", int32 skip 0,
    int32 numberToReturn -1, query document), the query document encoded by pymongo's bson.
    """
    client = {"driver": {"name": "PyMongo", "version": "3.13"}}
    query = pybson.encode({"isMaster": 1, "helloOk": True, "client": client})
    body = struct.pack("<i", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + query
    return struct.pack("<iiii", 16 + len(body), 42, 0, 2004) + body


def test_op_query_handshake() -> None:
    raw = legacy_handshake()
    msg = parse_three_ways(raw)
    assert isinstance(msg, mongo.OpQuery)
    assert msg.collection == "admin.$cmd" and msg.skip == 0 and msg.limit == -1
    assert msg.query["isMaster"] == 1 and msg.fields is None
    assert mongo.encode_op_query(42, "admin.$cmd", msg.query) == raw
    with_fields = raw[:16] + raw[16:] + pybson.encode({"a": 1})
    with_fields = struct.pack("<i", len(with_fields)) + with_fields[4:]
    parsed = mongo.parse_message(with_fields)
    assert parsed is not None and isinstance(parsed[0], mongo.OpQuery) and parsed[0].fields == {"a": 1}


def test_op_msg_from_pymongo_builder_with_sequences() -> None:
    _, raw, _, _ = _op_msg(0, {"insert": "c", "ordered": True, "documents": [{"a": 1}, {"b": 2}]}, "db", None,
                           CodecOptions())
    msg = parse_three_ways(raw)
    assert isinstance(msg, mongo.OpMsg)
    assert msg.command() == {"insert": "c", "ordered": True, "$db": "db", "documents": [{"a": 1}, {"b": 2}]}


def test_op_compressed_from_pymongo_is_recognised() -> None:
    _, raw, _, _ = _op_msg(0, {"ping": 1}, "admin", None, CodecOptions(), ctx=ZlibContext(-1))
    msg = parse_three_ways(raw)
    assert isinstance(msg, mongo.OpCompressed)
    assert msg.original_opcode == mongo.OP_MSG and msg.compressor_id == 2
    assert msg.uncompressed_size > 0


def test_op_reply_round_trip() -> None:
    raw = mongo.encode_op_reply(7, 3, [{"ok": 1.0, "ismaster": True}, {"x": 1}], cursor_id=5, starting_from=2)
    msg = parse_three_ways(raw)
    assert isinstance(msg, mongo.OpReply)
    assert msg.header == mongo.MsgHeader(len(raw), 7, 3, mongo.OP_REPLY)
    assert msg.cursor_id == 5 and msg.starting_from == 2
    assert msg.documents == ({"ok": 1.0, "ismaster": True}, {"x": 1})
    bad = bytearray(raw)
    struct.pack_into("<i", bad, 32, 3)  # numberReturned says 3, only 2 follow
    with pytest.raises(mongo.MongoWireError, match="3 documents"):
        mongo.parse_message(bytes(bad))


@pytest.mark.parametrize(("data", "crc"), [
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),  # RFC 3720 B.4
    (b"\xff" * 32, 0x62A8AB43),  # RFC 3720 B.4
    (bytes(range(32)), 0x46DD794E),  # RFC 3720 B.4
])
def test_crc32c_vectors(data: bytes, crc: int) -> None:
    assert mongo.crc32c(data) == crc


def test_checksum_is_verified() -> None:
    raw = mongo.encode_op_msg(1, 0, {"ping": 1, "$db": "admin"}, checksum=True)
    msg = parse_three_ways(raw)
    assert isinstance(msg, mongo.OpMsg) and msg.checksum is not None
    assert msg.body == {"ping": 1, "$db": "admin"}
    corrupt = raw[:-1] + bytes([raw[-1] ^ 1])
    with pytest.raises(mongo.MongoWireError, match="checksum mismatch"):
        mongo.parse_message(corrupt)


def test_flags_and_sections() -> None:
    body = {"insert": "c", "$db": "d"}
    seq = (mongo.DocumentSequence("documents", ({"a": 1},)),)
    msg = parse_three_ways(mongo.encode_op_msg(1, 0, body, mongo.MORE_TO_COME | mongo.EXHAUST_ALLOWED, seq))
    assert isinstance(msg, mongo.OpMsg) and msg.more_to_come and msg.exhaust_allowed
    with pytest.raises(mongo.MongoWireError, match="unknown required flag bits 0x0004"):
        mongo.parse_message(mongo.encode_op_msg(1, 0, body, 1 << 2))
    assert mongo.parse_message(mongo.encode_op_msg(1, 0, body, 1 << 20)) is not None  # optional bits are ignored
    clash = mongo.encode_op_msg(1, 0, {"insert": "c", "$db": "d", "documents": []}, 0, seq)
    parsed = mongo.parse_message(clash)
    assert parsed is not None and isinstance(parsed[0], mongo.OpMsg)
    with pytest.raises(mongo.MongoWireError, match="both in the body"):
        parsed[0].command()


def _frame(body: bytes, opcode: int = mongo.OP_MSG) -> bytes:
    return struct.pack("<iiii", 16 + len(body), 1, 0, opcode) + body


@pytest.mark.parametrize(("raw", "message"), [
    (_frame(b""), "shorter than its flagBits"),
    (_frame(b"\x00\x00\x00\x00"), "no body"),
    (_frame(b"\x00\x00\x00\x00\x02" + bson.encode({})), "kind 2"),
    (_frame(b"\x00\x00\x00\x00\x00" + bson.encode({}) + b"\x00" + bson.encode({})), "more than one body"),
    (_frame(b"\x00\x00\x00\x00\x00" + bson.encode({"a": 1})[:-2]), "runs past"),
    (_frame(b"\x00\x00\x00\x00\x01\x03\x00\x00\x00"), "size 3"),
    (_frame(b"\x00\x00\x00\x00\x01\x08\x00\x00\x00abcd"), "not NUL-terminated"),
    (_frame(b"\x00\x00\x00\x00\x01\x06\x00\x00\x00\xff\x00"), "not UTF-8"),
    (_frame(b"\x01\x00\x00\x00\x00"), "too short for its checksum"),
    (_frame(b"\x00\x00\x00\x00", mongo.OP_QUERY), "not NUL-terminated"),
    (_frame(b"\x00\x00\x00\x00a.$cmd\x00\x00\x00\x00\x00", mongo.OP_QUERY), "numberToSkip"),
    (_frame(b"\x00\x00\x00\x00a.$cmd\x00" + bytes(8) + b"\x05\x00\x00", mongo.OP_QUERY), "truncated"),
    (_frame(b"\x00", mongo.OP_COMPRESSED), "9-byte prefix"),
    (_frame(b"\x00" * 19, mongo.OP_REPLY), "20-byte prefix"),
    (struct.pack("<iiii", 15, 1, 0, mongo.OP_MSG), "shorter than the 16-byte header"),
])
def test_malformed_messages(raw: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        mongo.parse_message(raw)


def test_size_cap_is_checked_from_the_header() -> None:
    header = struct.pack("<iiii", mongo.MAX_MESSAGE_SIZE + 1, 1, 0, mongo.OP_MSG)
    with pytest.raises(LimitExceeded):
        mongo.parse_header(header)
    with pytest.raises(LimitExceeded):
        mongo.parse_message(header)
    big_checksummed = struct.pack("<iiii", mongo.MAX_CHECKSUMMED_SIZE + 100, 1, 0, mongo.OP_MSG) + \
        struct.pack("<I", mongo.CHECKSUM_PRESENT) + bytes(mongo.MAX_CHECKSUMMED_SIZE + 80)
    with pytest.raises(LimitExceeded, match="checksum"):
        mongo.parse_message(big_checksummed)


def test_legacy_opcode_is_passed_through() -> None:
    raw = _frame(b"\x00\x00\x00\x00db.c\x00", mongo.OP_INSERT)
    msg = parse_three_ways(raw)
    assert isinstance(msg, mongo.LegacyOp) and msg.header.opcode == mongo.OP_INSERT


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([mongo.OP_MSG, mongo.OP_QUERY, mongo.OP_REPLY, mongo.OP_COMPRESSED]))
def test_parser_fuzz(body: bytes, opcode: int) -> None:
    for raw in (_frame(body, opcode), body):
        try:
            result = mongo.parse_message(raw)
        except WireError:
            continue
        if result is not None:
            assert result[1] <= len(raw)
