"""The emulated MongoDB server, driven by pymongo 4 (a real driver), raw wire messages and units.

pymongo is synchronous: its calls run in a worker thread (``asyncio.to_thread``) while the
emulator serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pymongo
import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo import monitoring
from pymongo.errors import CursorNotFound, DuplicateKeyError, OperationFailure
from pymongo.write_concern import WriteConcern

from tpemu.agent.backends.base import Session, serve_tcp
from tpemu.agent.backends.mongo import (
    CommandError,
    Matcher,
    MongoBackend,
    Projection,
    _apply_update,
    _check_update,
    _sort_docs,
    compare,
)
from tpemu.wire import bson, mongo

Client = pymongo.MongoClient[dict[str, Any]]


class Servers:
    """Starts emulated servers on 127.0.0.1:0 and pymongo clients for them; cleans up both."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.clients: list[Client] = []

    async def start(self, backend: MongoBackend, ssl_context: ssl.SSLContext | None = None,
                    session: Session | None = None) -> int:
        server = await serve_tcp(backend, ssl_context=ssl_context, session=session)
        self.servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    def client(self, port: int, **kwargs: Any) -> Client:
        kwargs.setdefault("serverSelectionTimeoutMS", 3000)
        kwargs.setdefault("maxPoolSize", 1)  # one connection: errors must leave it usable
        client: Client = pymongo.MongoClient("127.0.0.1", port, directConnection=True, **kwargs)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await asyncio.to_thread(client.close)
        for server in self.servers:
            server.close()
            await server.wait_closed()
        await asyncio.sleep(0.05)  # let the handlers see EOF and close their transports


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    s = Servers()
    try:
        yield s
    finally:
        await s.close()


async def run(fn: Callable[[], Any]) -> Any:
    return await asyncio.to_thread(fn)


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


# =========================================================================== pymongo end to end


async def test_handshake_and_server_commands(servers: Servers) -> None:
    port = await servers.start(MongoBackend())
    client = servers.client(port)

    def check() -> None:
        hello = client.admin.command("hello")
        assert hello["isWritablePrimary"] is True and hello["maxWireVersion"] >= 17
        assert hello["minWireVersion"] == 0 and hello["maxBsonObjectSize"] == 16 * 1024 * 1024
        assert hello["maxMessageSizeBytes"] == mongo.MAX_MESSAGE_SIZE and hello["maxWriteBatchSize"] == 100000
        assert hello["logicalSessionTimeoutMinutes"] == 30 and hello["readOnly"] is False
        assert isinstance(hello["connectionId"], int) and hello["localTime"].year >= 2024
        legacy = client.admin.command("isMaster")
        assert legacy["ismaster"] is True and "isWritablePrimary" not in legacy
        info = client.server_info()
        assert info["version"] == "7.0.0" and info["versionArray"] == [7, 0, 0, 0] and "tpemu" in info
        assert client.admin.command("ping") == {"ok": 1.0}
        assert client.admin.command("getParameter", 1, featureCompatibilityVersion=1)[
            "featureCompatibilityVersion"] == {"version": "7.0"}
        with pytest.raises(OperationFailure) as err:
            client.admin.command("getParameter", 1, nosuchparam=1)
        assert err.value.code == 72 and "tpemu" in str(err.value)
        assert client.admin.command("getCmdLineOpts")["argv"][0] == "mongod"
        assert client.admin.command("serverStatus")["connections"]["current"] >= 1
        assert client.admin.command("connectionStatus")["authInfo"]["authenticatedUsers"] == []

    await run(check)


async def test_crud(servers: Servers) -> None:
    port = await servers.start(MongoBackend())
    client = servers.client(port)

    def check() -> None:
        coll = client.shop.items
        coll.insert_many([
            {"_id": 1, "name": "apple", "qty": 5, "tags": ["fruit", "red"], "dims": {"w": 1, "h": 2}},
            {"_id": 2, "name": "banana", "qty": 0, "tags": ["fruit"], "dims": {"w": 3, "h": 1}},
            {"_id": 3, "name": "carrot", "qty": 12, "tags": ["veg"], "price": None},
            {"_id": 4, "name": "date", "qty": 7.5, "parts": [{"k": "a", "n": 1}, {"k": "b", "n": 2}]},
        ])
        ids = lambda flt, **kw: [d["_id"] for d in coll.find(flt, **kw)]  # noqa: E731
        assert ids({"qty": {"$gt": 4, "$lte": 7.5}}) == [1, 4]
        assert ids({"tags": "fruit"}) == [1, 2]  # array membership
        assert ids({"tags": {"$in": ["veg", "red"]}}) == [1, 3]
        assert ids({"tags": {"$nin": ["fruit"]}}) == [3, 4]
        assert ids({"dims.w": {"$gte": 2}}) == [2]
        assert ids({"parts.k": "b"}) == [4]  # through an array of documents
        assert ids({"parts.1.n": 2}) == [4]  # array index in a path
        assert ids({"price": None}) == [1, 2, 3, 4]  # null matches missing too
        assert ids({"price": {"$exists": True}}) == [3]
        assert ids({"name": {"$ne": "apple"}, "qty": {"$lt": 10}}) == [2, 4]
        assert ids({"$or": [{"qty": 0}, {"name": "date"}]}) == [2, 4]
        assert ids({"$and": [{"qty": {"$gte": 5}}, {"tags": "fruit"}]}) == [1]
        assert ids({"name": {"$regex": "^c", "$options": "i"}}) == [3]
        assert ids({"qty": {"$not": {"$gt": 5}}}) == [1, 2]
        assert ids({}, sort=[("qty", -1)], skip=1, limit=2) == [4, 1]
        assert ids({}, sort=[("tags", 1), ("_id", -1)]) == [4, 2, 1, 3]  # missing < arrays by min element
        assert coll.find_one({"_id": 1}, {"name": 1, "_id": 0}) == {"name": "apple"}
        assert coll.find_one({"_id": 1}, {"dims.h": 1}) == {"_id": 1, "dims": {"h": 2}}
        assert coll.find_one({"_id": 1}, {"tags": 0, "dims": 0}) == {"_id": 1, "name": "apple", "qty": 5}

        res = coll.update_many({"tags": "fruit"}, {"$inc": {"qty": 10}, "$set": {"meta.seen": True}})
        assert (res.matched_count, res.modified_count) == (2, 2)
        assert coll.find_one({"_id": 2}) == {"_id": 2, "name": "banana", "qty": 10, "tags": ["fruit"],
                                             "dims": {"w": 3, "h": 1}, "meta": {"seen": True}}
        res = coll.update_one({"_id": 3}, {"$push": {"tags": {"$each": ["root", "orange"]}}, "$unset": {"price": ""}})
        assert res.modified_count == 1
        assert coll.find_one({"_id": 3}) == {"_id": 3, "name": "carrot", "qty": 12, "tags": ["veg", "root", "orange"]}
        assert coll.update_one({"_id": 3}, {"$set": {"qty": 12}}).modified_count == 0  # no change
        res = coll.update_one({"name": "eggplant", "qty": 1}, {"$set": {"tags": []}}, upsert=True)
        assert res.upserted_id is not None and res.matched_count == 0
        assert coll.find_one({"_id": res.upserted_id}, {"_id": 0}) == {"name": "eggplant", "qty": 1, "tags": []}
        assert coll.replace_one({"_id": 4}, {"name": "dates", "qty": 1}).modified_count == 1
        assert coll.find_one({"_id": 4}) == {"_id": 4, "name": "dates", "qty": 1}
        assert coll.replace_one({"_id": 9}, {"x": 1}, upsert=True).upserted_id == 9

        assert coll.count_documents({}) == 6
        assert coll.count_documents({"qty": {"$gte": 10}}) == 3
        assert coll.count_documents({"qty": {"$gte": 10}}, skip=1, limit=1) == 1
        assert coll.count_documents({"nothing": 1}) == 0
        assert coll.estimated_document_count() == 6
        assert sorted(coll.distinct("tags")) == ["fruit", "orange", "red", "root", "veg"]
        doc = coll.find_one_and_update({"_id": 1}, {"$inc": {"qty": 1}}, return_document=pymongo.ReturnDocument.AFTER)
        assert doc is not None and doc["qty"] == 16
        assert coll.find_one_and_delete({"_id": 9}) == {"_id": 9, "x": 1}
        assert coll.delete_one({"tags": "fruit"}).deleted_count == 1
        assert coll.delete_many({"qty": {"$lt": 100}}).deleted_count == 4
        assert coll.count_documents({}) == 0

        assert client.list_database_names() == ["shop"]
        assert client.shop.list_collection_names() == ["items"]
        client.shop.create_collection("other")
        assert sorted(c["name"] for c in client.shop.list_collections()) == ["items", "other"]
        assert [i["name"] for i in client.shop.other.list_indexes()] == ["_id_"]
        client.shop.drop_collection("other")
        client.shop.drop_collection("never-existed")
        assert client.shop.list_collection_names() == ["items"]
        client.drop_database("shop")
        assert client.list_database_names() == []

    await run(check)


async def test_cursors_batches_and_kill(servers: Servers) -> None:
    port = await servers.start(MongoBackend())
    listener = Commands()
    client = servers.client(port, event_listeners=[listener])
    other = servers.client(port)

    def check() -> None:
        coll = client.db.c
        coll.insert_many([{"_id": i} for i in range(250)])
        listener.names.clear()
        assert [d["_id"] for d in coll.find(batch_size=7)] == list(range(250))
        assert listener.names.count("getMore") == 35  # ceil((250 - 7) / 7)
        listener.names.clear()
        assert len(list(coll.find())) == 250  # default first batch 101, then the rest in one getMore
        assert listener.names.count("getMore") == 1
        assert len(list(coll.find(limit=5, batch_size=2))) == 5
        assert len(list(coll.aggregate([{"$match": {"_id": {"$lt": 30}}}], batchSize=4))) == 30

        cursor = coll.find(batch_size=2)
        next(cursor)
        cursor_id = cursor.cursor_id
        assert cursor_id
        # A getMore may come on another connection of the pool (same user): it must work.
        more = other.db.command("getMore", cursor_id, collection="c", batchSize=3)
        assert [d["_id"] for d in more["cursor"]["nextBatch"]] == [2, 3, 4]
        with pytest.raises(OperationFailure) as err:
            other.db.command("getMore", cursor_id, collection="wrong")
        assert err.value.code == 13
        listener.names.clear()
        cursor.close()
        assert "killCursors" in listener.names
        with pytest.raises(OperationFailure) as err:
            other.db.command("getMore", cursor_id, collection="c")
        assert err.value.code == 43 and err.value.details is not None
        assert err.value.details["codeName"] == "CursorNotFound"

        exhaust = coll.find({}, batch_size=10, cursor_type=pymongo.CursorType.EXHAUST)
        assert len(list(exhaust)) == 250

    await run(check)


async def test_large_batches_are_split_to_the_advertised_size(servers: Servers) -> None:
    port = await servers.start(MongoBackend())
    listener = Commands()
    client = servers.client(port, event_listeners=[listener])

    def check() -> None:
        # 24 MiB of documents: more than one message (pymongo splits by our maxMessageSizeBytes)
        # and more than one reply batch (the emulator stops a batch near 16 MiB).
        client.db.c.insert_many([{"_id": i, "blob": bytes(1024 * 1024)} for i in range(24)])
        assert listener.names.count("insert") == 2
        assert [d["_id"] for d in client.db.c.find()] == list(range(24))
        assert listener.names.count("getMore") == 1

    await run(check)


async def test_cursor_cap_closes_the_oldest(servers: Servers) -> None:
    port = await servers.start(MongoBackend(max_cursors=2))
    client = servers.client(port)

    def check() -> None:
        client.db.c.insert_many([{"_id": i} for i in range(10)])
        cursors = [client.db.c.find(batch_size=1) for _ in range(3)]
        for c in cursors:
            next(c)
        with pytest.raises(CursorNotFound):
            list(cursors[0])
        assert len(list(cursors[2])) == 9

    await run(check)


async def test_unacknowledged_writes(servers: Servers) -> None:
    port = await servers.start(MongoBackend())
    client = servers.client(port)

    def check() -> None:
        fire = client.db.get_collection("c", write_concern=WriteConcern(w=0))
        fire.insert_one({"_id": "x"})
        fire.insert_one({"_id": "x"})  # a duplicate: the error is not reported (moreToCome, no reply)
        assert client.db.c.find_one({"_id": "x"}) == {"_id": "x"}
        assert client.db.command("ping")["ok"] == 1.0

    await run(check)


async def test_errors_are_mongod_like_and_leave_the_connection_usable(servers: Servers) -> None:
    port = await servers.start(MongoBackend())
    client = servers.client(port)

    def failure(fn: Callable[[], Any]) -> OperationFailure:
        with pytest.raises(OperationFailure) as err:
            fn()
        assert client.admin.command("ping")["ok"] == 1.0  # same (only) connection still works
        return err.value

    def check() -> None:
        err = failure(lambda: client.db.command("frobnicate"))
        assert err.code == 59 and err.details is not None and err.details["codeName"] == "CommandNotFound"
        assert str(err).startswith("no such command: 'frobnicate' (not supported by the tpemu emulator)")
        client.db.c.insert_one({"_id": 1})
        with pytest.raises(DuplicateKeyError) as dup:
            client.db.c.insert_one({"_id": 1})
        assert "E11000 duplicate key error collection: db.c index: _id_ dup key: { _id: 1 }" in str(dup.value)
        assert failure(lambda: client.db.c.find_one({"a": {"$frob": 1}})).code == 2
        assert "unknown operator: $frob" in str(failure(lambda: client.db.c.find_one({"a": {"$frob": 1}})))
        err = failure(lambda: client.db.c.find_one({"a": {"$elemMatch": {"b": 1}}}))
        assert err.code == 2 and "$elemMatch is not supported by the tpemu emulator" in str(err)
        err = failure(lambda: list(client.db.c.aggregate([{"$lookup": {"from": "x"}}])))
        assert err.code == 40324 and "not supported by the tpemu emulator" in str(err)
        err = failure(lambda: client.db.c.update_one({"_id": 1}, {"$set": {"_id": 2}}))
        assert err.code == 66
        err = failure(lambda: client.db.c.update_one({"_id": 1}, {"$inc": {"a": "x"}}))
        assert err.code == 14
        err = failure(lambda: client.db.c.update_one({"_id": 1}, {"$addToSet": {"a": 1}}))
        assert err.code == 9 and "tpemu" in str(err)
        err = failure(lambda: client.db.c.find_one({}, {"a": 1, "b": 0}))
        assert err.code == 31254
        err = failure(lambda: client.db.command("create", "c"))
        assert err.code == 48
        err = failure(lambda: client.db.command("insert", "bad$name", documents=[{}]))
        assert err.code == 73
        client.db.big.insert_one({"_id": 1, "blob": b"x" * (16 * 1024 * 1024 - 100), "l": []})
        found = client.db.big.find_one()  # a maximal document comes back (its reply is > 16 MiB)
        assert found is not None and len(found["blob"]) == 16 * 1024 * 1024 - 100
        err = failure(lambda: client.db.big.update_one({"_id": 1}, {"$push": {"l": b"y" * 1000}}))
        assert err.code == 17419 and "larger than 16777216" in str(err)
        with client.start_session() as s:
            err = failure(lambda: s.with_transaction(lambda sess: client.db.c.insert_one({}, session=sess)))
        assert err.code == 20

    await run(check)


# =========================================================================== authentication and TLS


async def test_scram_authentication(servers: Servers) -> None:
    port = await servers.start(MongoBackend(users={"alice": "s3cret", "bob": "pässwörd"}))
    trust_port = await servers.start(MongoBackend())

    def check() -> None:
        alice = servers.client(port, username="alice", password="s3cret")
        alice.app.c.insert_one({"x": 1})
        status = alice.admin.command("connectionStatus")["authInfo"]["authenticatedUsers"]
        assert status == [{"user": "alice", "db": "admin"}]
        bob = servers.client(port, username="bob", password="pässwörd", authMechanism="SCRAM-SHA-256",
                             authSource="app")
        assert bob.app.c.count_documents({}) == 1
        sha1 = servers.client(port, username="alice", password="s3cret", authMechanism="SCRAM-SHA-1")
        assert sha1.app.c.count_documents({}) == 1

        for user, password in (("alice", "wrong"), ("mallory", "s3cret")):
            with pytest.raises(OperationFailure) as err:
                servers.client(port, username=user, password=password).admin.command("ping")
            assert err.value.code == 18 and str(err.value).startswith("Authentication failed.")

        trusting = servers.client(trust_port, username="alice", password="s3cret")
        with pytest.raises(OperationFailure) as err:
            trusting.admin.command("ping")
        assert err.value.code == 18 and "started without users" in str(err.value)

        anonymous = servers.client(port)
        assert anonymous.admin.command("ping")["ok"] == 1.0  # ping and hello need no authentication
        with pytest.raises(OperationFailure) as err:
            anonymous.app.c.find_one()
        assert err.value.code == 13 and "requires authentication" in str(err.value)

    await run(check)


async def test_speculative_authentication_in_hello() -> None:
    backend = MongoBackend(users={"alice": "s3cret"})
    server = await serve_tcp(backend)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        spec = {"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": b"n,,n=alice,r=abcdef", "db": "admin"}
        reply = await round_trip(reader, writer, {"hello": 1, "speculativeAuthenticate": spec,
                                                  "saslSupportedMechs": "admin.alice", "$db": "admin"})
        assert reply["saslSupportedMechs"] == ["SCRAM-SHA-1", "SCRAM-SHA-256"]
        server_first = reply["speculativeAuthenticate"]["payload"]
        assert server_first.startswith(b"r=abcdef") and b",i=15000" in server_first
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def test_tls(servers: Servers, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    port = await servers.start(MongoBackend(users={"alice": "pw"}), ssl_context=ctx)

    def check() -> None:
        client = servers.client(port, tls=True, tlsCAFile=str(ca_file), username="alice", password="pw")
        client.db.c.insert_one({"_id": 1})
        assert client.db.c.find_one() == {"_id": 1}
        untrusted = servers.client(port, tls=True, serverSelectionTimeoutMS=500)
        with pytest.raises(pymongo.errors.ServerSelectionTimeoutError):
            untrusted.admin.command("ping")

    await run(check)


async def test_session_from_the_database_service(servers: Servers) -> None:
    backend = MongoBackend(users={"alice": "s3cret"})
    session = Session(teleport_user="alice@example.com", db_user="alice", db_name="app", client="127.0.0.1:5")
    port = await servers.start(backend, session=session)
    other_port = await servers.start(backend)  # the same backend, standalone

    def check() -> None:
        client = servers.client(port)  # no password: the Database Service already authenticated
        client.app.c.insert_one({"_id": 1})
        assert client.app.c.find_one() == {"_id": 1}
        assert client.admin.command("connectionStatus")["authInfo"]["authenticatedUsers"] == [
            {"user": "alice", "db": "app"}]
        with pytest.raises(OperationFailure) as err:
            client.other.c.find_one()
        assert err.value.code == 13 and "may only use database 'app'" in str(err.value)
        standalone = servers.client(other_port, username="alice", password="s3cret")
        standalone.other.c.insert_one({"_id": 2})
        assert client.list_database_names() == ["app"]
        with pytest.raises(OperationFailure) as err:
            servers.client(port, username="alice", password="s3cret").app.c.find_one()
        assert err.value.code == 18

    await run(check)


# =========================================================================== raw wire behaviour


_request_ids = iter(range(1000, 10**6))


async def read_message(reader: asyncio.StreamReader) -> mongo.Message:
    head = await asyncio.wait_for(reader.readexactly(16), 5)
    length = struct.unpack_from("<i", head)[0]
    body = await asyncio.wait_for(reader.readexactly(length - 16), 5)
    parsed = mongo.parse_message(head + body)
    assert parsed is not None
    return parsed[0]


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: dict[str, Any],
                     flags: int = 0, checksum: bool = False) -> dict[str, Any]:
    rid = next(_request_ids)
    writer.write(mongo.encode_op_msg(rid, 0, body, flags, checksum=checksum))
    msg = await read_message(reader)
    assert isinstance(msg, mongo.OpMsg) and msg.header.response_to == rid
    return msg.body


@pytest.fixture
async def raw_server() -> AsyncIterator[tuple[MongoBackend, int]]:
    backend = MongoBackend(read_timeout=0.3, idle_timeout=0.6)
    server = await serve_tcp(backend)
    try:
        yield backend, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)


async def test_raw_legacy_and_flags(raw_server: tuple[MongoBackend, int]) -> None:
    _, port = raw_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # The legacy OP_QUERY handshake (older drivers): answered with OP_REPLY.
        writer.write(mongo.encode_op_query(7, "admin.$cmd", {"isMaster": 1, "helloOk": True}))
        reply = await read_message(reader)
        assert isinstance(reply, mongo.OpReply) and reply.header.response_to == 7
        assert reply.documents[0]["ismaster"] is True and reply.documents[0]["helloOk"] is True
        assert reply.documents[0]["maxWireVersion"] == 21
        writer.write(mongo.encode_op_query(8, "admin.$cmd", {"find": "c"}))
        reply = await read_message(reader)
        assert isinstance(reply, mongo.OpReply) and reply.documents[0]["code"] == 352
        # moreToCome: no reply at all; the next reply answers the next request.
        writer.write(mongo.encode_op_msg(9, 0, {"insert": "c", "documents": [{"_id": 1}], "$db": "d"},
                                         mongo.MORE_TO_COME))
        body = await round_trip(reader, writer, {"count": "c", "$db": "d"})
        assert body["n"] == 1
        # A checksummed request is verified and served.
        assert (await round_trip(reader, writer, {"ping": 1, "$db": "admin"}, checksum=True))["ok"] == 1.0
        # OP_COMPRESSED is refused with an error; the connection stays usable.
        compressed = struct.pack("<iiiiiib", 25, 10, 0, mongo.OP_COMPRESSED, mongo.OP_MSG, 10, 2) + b"\x00" * 0
        writer.write(compressed)
        refused = await read_message(reader)
        assert isinstance(refused, mongo.OpMsg) and refused.header.response_to == 10
        assert refused.body["ok"] == 0.0 and "OP_COMPRESSED is not supported" in refused.body["errmsg"]
        assert (await round_trip(reader, writer, {"ping": 1, "$db": "admin"}))["ok"] == 1.0
        assert (await round_trip(reader, writer, {"ping": 1}))["code"] == 40571  # $db is required
        # A legacy OP_INSERT cannot be answered: the connection is closed.
        writer.write(struct.pack("<iiii", 16 + 4 + 5, 11, 0, mongo.OP_INSERT) + b"\x00\x00\x00\x00d.c\x00\x00")
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


@pytest.mark.parametrize(("data", "code"), [
    (struct.pack("<iiii", 64 * 1024 * 1024, 5, 0, mongo.OP_MSG), 10334),  # over the size cap
    (struct.pack("<iiii", 8, 5, 0, mongo.OP_MSG), 9),  # shorter than a header
    (struct.pack("<iiii", 16 + 4 + 1 + 7, 5, 0, mongo.OP_MSG) + b"\x00" * 5 + b"\x07\x00\x00\x00\x08a\x00", 22),
])
async def test_garbage_gets_an_error_then_a_clean_close(raw_server: tuple[MongoBackend, int], data: bytes,
                                                         code: int) -> None:
    _, port = raw_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        reply = await read_message(reader)
        assert isinstance(reply, mongo.OpMsg) and reply.header.response_to == 5 and reply.body["code"] == code
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_slow_and_idle_clients_are_bounded(raw_server: tuple[MongoBackend, int]) -> None:
    _, port = raw_server
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = loop.time()
    writer.write(mongo.encode_op_msg(1, 0, {"ping": 1, "$db": "admin"})[:20])  # a message that never ends
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert loop.time() - started < 2
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = loop.time()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # idle: closed after idle_timeout
    assert 0.5 < loop.time() - started < 3
    writer.close()


# =========================================================================== the engine, unit by unit

DOC = {"_id": 1, "a": 5, "s": "x", "n": None, "arr": [1, [2, 3], {"b": 4}], "d": {"e": {"f": 1.0}},
       "docs": [{"k": 1, "v": "p"}, {"k": 2, "v": "q"}], "t": True}


@pytest.mark.parametrize(("flt", "expected"), [
    ({"a": 5}, True), ({"a": 5.0}, True), ({"a": "5"}, False), ({"t": 1}, False), ({"t": True}, True),
    ({"arr": 1}, True), ({"arr": [2, 3]}, True), ({"arr": 2}, False), ({"arr.b": 4}, True),
    ({"arr.2.b": 4}, True), ({"d.e.f": 1}, True), ({"d.e": {"f": 1}}, True), ({"d.e": {"f": 1, "g": 2}}, False),
    ({"docs.k": 2}, True), ({"docs.v": {"$in": ["q", "z"]}}, True), ({"docs.1.v": "p"}, False),
    ({"n": None}, True), ({"missing": None}, True), ({"missing": {"$exists": False}}, True),
    ({"n": {"$exists": True}}, True), ({"a": {"$gt": 4, "$lt": 6}}, True), ({"a": {"$gt": "a"}}, False),
    ({"s": {"$gt": 1}}, False), ({"s": {"$gte": "x"}}, True), ({"a": {"$ne": 5}}, False),
    ({"arr": {"$ne": 1}}, False), ({"missing": {"$ne": 1}}, True), ({"a": {"$nin": [1, 2]}}, True),
    ({"a": {"$in": []}}, False), ({"$or": [{"a": 1}, {"s": "x"}]}, True), ({"$nor": [{"a": 5}]}, False),
    ({"$and": [{"a": 5}, {"s": "y"}]}, False), ({"s": bson.Regex("X", "i")}, True),
    ({"a": {"$not": {"$lt": 3}}}, True), ({"$comment": "hi", "a": 5}, True), ({"d": {"e": {"f": 1.0}}}, True),
])
def test_matcher(flt: dict[str, Any], expected: bool) -> None:
    assert Matcher(flt).matches(DOC) is expected


@pytest.mark.parametrize("flt", [
    {"$where": "1"}, {"$frob": []}, {"$or": []}, {"$and": {}}, {"a": {"$in": 1}}, {"a": {"$size": 1}},
    {"a": {"$regex": 5}}, {"a": {"$options": "i"}}, {"a": {"$regex": "("}}, {"a": {"$not": 1}}, "notadict",
])
def test_matcher_rejects(flt: Any) -> None:
    with pytest.raises(CommandError):
        Matcher(flt)


def test_bson_order() -> None:
    ordered = [bson.MIN_KEY, None, float("nan"), -1, 2.5, 3, "a", "b", {"a": 1}, {"a": 1, "b": 0}, [0], [1],
               b"\x00", bson.Binary(4, b"\x00" * 2), bson.ObjectId(b"\x00" * 12), False, True,
               bson.DatetimeMS(0), bson.Timestamp(1, 1), bson.Regex("a"), bson.MAX_KEY]
    for i, a in enumerate(ordered):
        for j, b in enumerate(ordered):
            assert compare(a, b) == (i > j) - (i < j), (a, b)
    assert compare(1, 1.0) == 0 and compare(float("nan"), float("nan")) == 0


def test_projection_and_sort_units() -> None:
    assert Projection({"docs.v": 1, "_id": 0}).apply(DOC) == {"docs": [{"v": "p"}, {"v": "q"}]}
    assert Projection({"d.e.f": 0, "arr": 0, "docs": 0, "t": 0, "n": 0, "s": 0}).apply(DOC) == \
        {"_id": 1, "a": 5, "d": {"e": {}}}
    with pytest.raises(CommandError):
        Projection({"a": {"$slice": 1}})
    docs = [{"_id": 1, "v": [3, 1]}, {"_id": 2, "v": 2}, {"_id": 3}, {"_id": 4, "v": "s"}]
    assert [d["_id"] for d in _sort_docs(docs, {"v": 1})] == [3, 1, 2, 4]
    assert [d["_id"] for d in _sort_docs(docs, {"v": -1})] == [4, 1, 2, 3]
    with pytest.raises(CommandError):
        _sort_docs(docs, {"v": 2})


def test_update_units() -> None:
    doc = {"_id": 1, "a": {"b": 1}, "l": [1], "i": bson.Int64(1)}
    update = {"$set": {"a.c": 2, "x.y.z": 3}, "$inc": {"a.b": 1.5, "i": 2}, "$push": {"l": {"$each": [2, 3]}}}
    assert _check_update(update) is True
    new = _apply_update(doc, update, inserting=False)
    assert new == {"_id": 1, "a": {"b": 2.5, "c": 2}, "l": [1, 2, 3], "i": 3, "x": {"y": {"z": 3}}}
    assert isinstance(new["i"], bson.Int64) and doc["a"] == {"b": 1}  # the original is untouched
    assert _check_update({"a": 1}) is False  # a replacement
    for bad in ({"$set": {"a": 1}, "$unset": {"a.b": ""}}, {"$set": 1}, {"$set": {"a": 1}, "b": 2}, [{"$set": {}}],
                {"$inc": {"a": "1"}}, {"$currentDate": {"a": True}}, {"$foo": {"a": 1}}):
        with pytest.raises(CommandError):
            _check_update(bad)
    for bad_target in ({"$push": {"a": 1}}, {"$inc": {"a": 1}}, {"$set": {"a.b.c": 1}}):
        with pytest.raises(CommandError):
            _apply_update({"_id": 1, "a": {"b": 5}} if "$set" in bad_target else {"_id": 1, "a": "s"}, bad_target,
                          inserting=False)


json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=3)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["a", "b", "a.b", "$eq", "$gt", "$in", "$or", "$and", "$not", "$exists", "$ne", "0"]),
        inner, max_size=3),
    max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "a.b", "$or", "$and", "$nor"]), json_like, max_size=3),
       st.dictionaries(st.sampled_from(["a", "b"]), json_like, max_size=2))
def test_matcher_fuzz(flt: dict[str, Any], doc: dict[str, Any]) -> None:
    """Any filter either compiles and answers a bool for any document, or is a CommandError."""
    try:
        matcher = Matcher(flt)
    except CommandError:
        return
    assert matcher.matches(doc) in (True, False)
