"""The database proxy and the Database Service together, against the emulated backends, with the
Python clients (asyncpg, psycopg, PyMySQL, redis-py, pymongo) connecting the ways REAL_CLIENTS.md
found they can: TLS with ALPN and the client certificate, or Postgres' SSLRequest on the web port.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

import pytest

from tests.db.conftest import client_ctx, db_cluster, plain_cert, route_cert
from tpemu.proxy.decide import ListenerKind
from tpemu.testkit import Cluster
from tpemu.testkit.cluster import wait_for
from tpemu.wire import mysql as my
from tpemu.wire import ping
from tpemu.wire.tunnel import DialRequest


class SNIContext(ssl.SSLContext):
    """Forces the SNI whatever host the library dials (REAL_CLIENTS.md §2)."""

    sni: str | None = None

    def wrap_bio(self, incoming: Any, outgoing: Any, server_side: bool = False, server_hostname: Any = None,
                 session: Any = None) -> Any:
        return super().wrap_bio(incoming, outgoing, server_side, self.sni or server_hostname, session)


def sni_ctx(c: Cluster, cert: Any, alpn: list[str], sni: str = "localhost") -> SNIContext:
    ctx = SNIContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sni = sni
    ctx.load_verify_locations(str(c.ca))
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(cert[0], cert[1])
    ctx.set_alpn_protocols(alpn)
    return ctx


async def test_asyncpg_direct_alpn_and_sslrequest(dbc: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncpg

    service = dbc.db_service()
    requests: list[DialRequest] = []
    serve = service.serve

    async def recording(sock: socket.socket, request: DialRequest) -> None:
        requests.append(request)  # what the agent received through the tunnel
        await serve(sock, request)

    monkeypatch.setattr(service, "serve", recording)

    cert = await route_cert(dbc, "pg", db_name="app")
    ctx = sni_ctx(dbc, cert, ["teleport-postgres"])
    conn = await asyncpg.connect(host="127.0.0.1", port=dbc.web.port, user="alice", database="app", ssl=ctx,
                                 direct_tls=True, timeout=10)
    try:
        await conn.execute("create table t (id int, name text)")
        await conn.execute("insert into t values ($1, $2)", 1, "one")
        assert await conn.fetchval("select name from t where id = 1") == "one"
        assert await conn.fetchval("select current_user") == "alice"
    finally:
        await conn.close()
    # the SSLRequest path on the same port (asyncpg without direct_tls), same emulated store
    conn = await asyncpg.connect(host="127.0.0.1", port=dbc.web.port, user="alice", database="app", ssl=ctx, timeout=10)
    try:
        assert await conn.fetchval("select name from t where id = 1") == "one"
    finally:
        await conn.close()
    req = requests[-1]
    assert (req.conn_type, req.name) == ("db", "pg")
    assert req.identity is not None and req.identity["route_to_database"] == {
        "service_name": "pg", "protocol": "postgres", "username": "alice", "database": "app"}
    assert dbc.db_service().stats["served"] == 2


async def test_postgres_refusals_in_protocol(dbc: Cluster) -> None:
    import asyncpg

    cert = await route_cert(dbc, "pg", db_name="app")
    ctx = sni_ctx(dbc, cert, ["teleport-postgres"])
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="access to db denied.*'bob'"):
        await asyncpg.connect(host="127.0.0.1", port=dbc.web.port, user="bob", database="app", ssl=ctx, direct_tls=True)
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="database name 'other'"):
        await asyncpg.connect(host="127.0.0.1", port=dbc.web.port, user="alice", database="other", ssl=ctx,
                              direct_tls=True)
    nocert = sni_ctx(dbc, None, ["teleport-postgres"])
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="client certificate is required"):
        await asyncpg.connect(host="127.0.0.1", port=dbc.web.port, user="alice", database="app", ssl=nocert,
                              direct_tls=True)
    await dbc.agents["db"].close()  # the Database Service goes away: the proxy says so, in protocol
    await wait_for(lambda: not dbc.databases(), what="the proxy to drop the database agent")
    with pytest.raises(asyncpg.ConnectionFailureError,
                       match='database "pg" is unavailable: database "pg" not found among registered databases in '
                             'cluster "tpemu.local"'):  # lib/srv/db/proxyserver.go
        await asyncpg.connect(host="127.0.0.1", port=dbc.web.port, user="alice", database="app", ssl=ctx,
                              direct_tls=True)


async def test_psycopg_sslrequest_with_sni_route(dbc: Cluster) -> None:
    import psycopg

    cert, key = plain_cert(dbc)  # no route: the SNI names the database
    dsn = (f"host=pg.localhost hostaddr=127.0.0.1 port={dbc.web.port} user=alice dbname=app sslmode=verify-ca "
           f"sslrootcert={dbc.ca} sslcert={cert} sslkey={key}")

    def run() -> Any:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            return conn.execute("select 40 + 2").fetchone()

    assert await asyncio.to_thread(run) == (42,)


async def test_pymysql_on_the_mysql_listener_and_alpn(tmp_path: Any) -> None:
    import pymysql

    c = await db_cluster(tmp_path, mysql_listen_addr="127.0.0.1:0")
    try:
        cert = await route_cert(c, "my", db_name="app")
        ctx = client_ctx(c, cert)
        ctx.check_hostname = False

        def listener() -> Any:
            conn = pymysql.connect(host="127.0.0.1", port=c.listener(ListenerKind.MYSQL).port, user="alice", ssl=ctx,
                                   connect_timeout=10)
            try:
                with conn.cursor() as cur:
                    cur.execute("create table t (id int, name varchar(20))")
                    cur.execute("insert into t values (1, 'one'), (2, 'two')")
                    cur.execute("select name from t order by id")
                    return cur.fetchall()
            finally:
                conn.close()

        assert await asyncio.to_thread(listener) == (("one",), ("two",))

        # bob is not an allowed database user: the agent's ERR reaches the client
        def refused() -> Any:
            return pymysql.connect(host="127.0.0.1", port=c.listener(ListenerKind.MYSQL).port, user="bob", ssl=ctx,
                                   connect_timeout=10)

        with pytest.raises(pymysql.err.OperationalError) as err:
            await asyncio.to_thread(refused)
        assert err.value.args[0] == my.ER_ACCESS_DENIED and "access to db denied" in err.value.args[1]

        # no client certificate (PyMySQL upgrades to TLS on its own when offered): refused with an ERR
        def nocert() -> Any:
            return pymysql.connect(host="127.0.0.1", port=c.listener(ListenerKind.MYSQL).port, user="alice",
                                   connect_timeout=10)

        with pytest.raises(pymysql.err.OperationalError, match="client certificate is required"):
            await asyncio.to_thread(nocert)

        # a plain-text HandshakeResponse41 (no SSLRequest) is refused with an ERR packet
        reader, writer = await asyncio.open_connection("127.0.0.1", c.listener(ListenerKind.MYSQL).port)
        head = await reader.readexactly(4)
        greeting = my.parse_handshake_v10(await reader.readexactly(int.from_bytes(head[:3], "little")))
        # Teleport's greeting version (lib/srv/db/mysql/proxy.go serverVersion).
        assert greeting.capabilities & my.CLIENT_SSL and greeting.server_version == "8.0.0-Teleport"
        plain = my.HandshakeResponse(my.CLIENT_PROTOCOL_41 | my.CLIENT_SECURE_CONNECTION, 1 << 24, 45, "alice",
                                     b"", None, None, ())
        writer.write(my.encode_packet(1, my.encode_handshake_response(plain)))
        answer = await asyncio.wait_for(reader.read(1000), 5)
        # Teleport's text (lib/srv/db/mysql/proxy.go performHandshake, via go-mysql WriteError:
        # ER_UNKNOWN_ERROR 1105, SQL state HY000).
        assert answer == my.encode_packet(2, b"\xff\x51\x04#HY000expected TLS connection, got: *net.TCPConn")
        writer.close()
    finally:
        await c.close()


async def test_redis_and_mongo_over_alpn(dbc: Cluster) -> None:
    import redis.asyncio as aredis

    cert = await route_cert(dbc, "cache")
    ctx = client_ctx(dbc, cert, ["teleport-redis"])
    ctx.check_hostname = False
    reader, writer = await asyncio.open_connection("127.0.0.1", dbc.web.port, ssl=ctx, server_hostname="localhost")
    writer.write(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
    await writer.drain()
    got = b""
    while got.count(b"\r\n") < 3:
        got += await asyncio.wait_for(reader.read(100), 5)
    assert got == b"+OK\r\n$1\r\nv\r\n"
    writer.close()
    del aredis

    # the -ping form: framed payloads, and a refusal for a certificate without this db user
    bad = await route_cert(dbc, "cache", db_user="root")  # alice may only be alice
    ctx = client_ctx(dbc, bad, ["teleport-redis-ping"])
    ctx.check_hostname = False
    reader, writer = await asyncio.open_connection("127.0.0.1", dbc.web.port, ssl=ctx, server_hostname="localhost")
    writer.write(ping.encode_frame(b"*1\r\n$4\r\nPING\r\n"))
    decoder = ping.PingDecoder()
    answer = b""
    async with asyncio.timeout(5):
        while chunk := await reader.read(1000):
            answer += decoder.feed(chunk)
    assert answer.startswith(b"-ERR access to db denied") and b"'root'" in answer


async def test_pymongo_over_alpn(dbc: Cluster) -> None:
    import pymongo

    cert = await route_cert(dbc, "mongo", db_name="app")
    pem = dbc.root / "mongo.pem"
    pem.write_bytes(cert[0].read_bytes() + cert[1].read_bytes())

    def run() -> Any:
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            "127.0.0.1", dbc.web.port, tls=True, tlsCAFile=str(dbc.ca), tlsCertificateKeyFile=str(pem),
            tlsAllowInvalidHostnames=True, directConnection=True, connect=False, serverSelectionTimeoutMS=5000)
        ctx = client.options.pool_options._ssl_context  # REAL_CLIENTS.md §2: the only way to set ALPN
        ctx.set_alpn_protocols(["teleport-mongodb"])
        try:
            client.app.things.insert_one({"_id": 1, "name": "one"})
            return client.app.things.find_one({"_id": 1})
        finally:
            client.close()

    assert await asyncio.to_thread(run) == {"_id": 1, "name": "one"}


async def test_psycopg_direct_tls_with_alpn_postgresql(dbc: Cluster) -> None:
    """libpq >= 17 ``sslnegotiation=direct``: TLS from the first byte with ALPN ``postgresql``
    (psycopg's binary wheel bundles libpq 18), which the proxy must select."""
    import psycopg

    if psycopg.pq.version() < 170000:
        pytest.skip(f"libpq {psycopg.pq.version()} has no sslnegotiation=direct")
    cert, key = await route_cert(dbc, "pg", db_name="app")
    dsn = (f"host=localhost hostaddr=127.0.0.1 port={dbc.web.port} user=alice dbname=app sslmode=verify-full "
           f"sslrootcert={dbc.ca} sslcert={cert} sslkey={key} sslnegotiation=direct")

    def run() -> Any:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            return conn.execute("select current_user").fetchone()

    assert await asyncio.to_thread(run) == ("alice",)


async def test_separate_listeners(tmp_path: Any) -> None:
    """``postgres_listen_addr`` (SSLRequest and direct TLS), ``mongo_listen_addr``, ``redis_listen_addr``."""
    import asyncpg
    import pymongo

    # Teleport has no Redis listener of its own: redis_listen_addr is tpemu's.
    c = await db_cluster(tmp_path, postgres_listen_addr="127.0.0.1:0", mongo_listen_addr="127.0.0.1:0",
                         tpemu={"proxy_service": {"redis_listen_addr": "127.0.0.1:0"}})
    try:
        cert = await route_cert(c, "pg", db_name="app")
        ctx = sni_ctx(c, cert, ["teleport-postgres"])
        conn = await asyncpg.connect(host="127.0.0.1", port=c.listener(ListenerKind.POSTGRES).port, user="alice",
                                     database="app", ssl=ctx, timeout=10)
        try:
            assert await conn.fetchval("select 1 + 1") == 2
        finally:
            await conn.close()

        rcert = await route_cert(c, "cache")
        rctx = client_ctx(c, rcert)  # no ALPN at all: the Redis listener routes every TLS connection
        rctx.check_hostname = False
        reader, writer = await asyncio.open_connection("127.0.0.1", c.listener(ListenerKind.REDIS).port, ssl=rctx)
        writer.write(b"PING\r\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"+PONG\r\n"
        writer.close()

        mcert = await route_cert(c, "mongo", db_name="app")
        pem = tmp_path / "m.pem"
        pem.write_bytes(mcert[0].read_bytes() + mcert[1].read_bytes())

        def mongo() -> Any:
            client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                "127.0.0.1", c.listener(ListenerKind.MONGO).port, tls=True, tlsCAFile=str(c.ca),
                tlsCertificateKeyFile=str(pem), tlsAllowInvalidHostnames=True, directConnection=True,
                serverSelectionTimeoutMS=5000)
            try:
                return client.app.command("ping")
            finally:
                client.close()

        assert (await asyncio.to_thread(mongo))["ok"] == 1.0
    finally:
        await c.close()


async def test_mysql_listener_announces_the_configured_version(tmp_path: Any) -> None:
    # lib/srv/db/proxyserver.go MySQLProxy: ServerVersion = proxy_service.mysql_server_version
    # (else mysql/proxy.go's serverVersion "8.0.0-Teleport", checked above).
    c = await db_cluster(tmp_path, mysql_listen_addr="127.0.0.1:0", mysql_server_version="5.7.42-custom")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", c.listener(ListenerKind.MYSQL).port)
        head = await reader.readexactly(4)
        greeting = my.parse_handshake_v10(await reader.readexactly(int.from_bytes(head[:3], "little")))
        assert greeting.server_version == "5.7.42-custom"
        writer.close()
    finally:
        await c.close()
