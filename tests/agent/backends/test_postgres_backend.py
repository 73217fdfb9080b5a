"""The emulated Postgres server against real clients: psql 15, asyncpg, psycopg 3 (libpq 18).

Also raw-socket tests for what clients must not be able to do to it: garbage, oversized
messages, slow or silent peers, plaintext injected after an SSLRequest.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tpemu.agent.backends.base import Session
from tpemu.agent.backends.postgres import PostgresBackend
from tpemu.wire import postgres as pg

asyncpg = pytest.importorskip("asyncpg")
psycopg = pytest.importorskip("psycopg")

Start = Callable[..., Awaitable[int]]
PSQL = shutil.which("psql")
needs_psql = pytest.mark.skipif(PSQL is None, reason="psql is not installed")
USERS = {"alice": "s3cret pw"}


async def psql(port: int, sql: str, password: str = "s3cret pw", user: str = "alice",
               extra: str = "") -> tuple[int, str, str]:
    assert PSQL is not None
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"}
    proc = await asyncio.create_subprocess_exec(
        PSQL, f"host=127.0.0.1 port={port} user={user} dbname=app {extra}", "-X", "-tA", "-c", sql, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode().strip(), err.decode().strip()


async def read_until_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    async with asyncio.timeout(timeout):
        return await reader.read(-1)


async def read_messages(reader: asyncio.StreamReader, until: bytes, timeout: float = 5.0) -> list[pg.Message]:
    """Backend messages up to and including the first one tagged ``until``."""
    out: list[pg.Message] = []
    async with asyncio.timeout(timeout):
        while True:
            head = await reader.readexactly(5)
            body = await reader.readexactly(int.from_bytes(head[1:], "big") - 4)
            msg = pg.parse_message(head + body)
            assert msg is not None
            out.append(msg)
            if msg.tag == until:
                return out


def error_fields(msg: pg.Message) -> dict[str, str]:
    return {f[:1].decode(): f[1:].decode() for f in msg.body.split(b"\x00") if f}


# --- psql ------------------------------------------------------------------------------------


@pytest.mark.e2e
@needs_psql
@pytest.mark.parametrize("method", ["trust", "password", "md5", "scram-sha-256"])
async def test_psql_authenticates_with_each_method(serve: Start, method: str) -> None:
    port = await serve(PostgresBackend(USERS, method))  # type: ignore[arg-type]
    code, out, err = await psql(port, "select current_user, current_database()")
    assert (code, out, err) == (0, "alice|app", "")
    code, out, err = await psql(port, "select 1", password="wrong")
    if method == "trust":
        assert code == 0  # no password is asked
    else:
        assert code == 2 and 'password authentication failed for user "alice"' in err
    code, _, err = await psql(port, "select 1", user="mallory")
    assert code == 2 and ('"mallory"' in err)
    assert (await psql(port, "select 2"))[:2] == (0, "2")  # still serving


@pytest.mark.e2e
@needs_psql
async def test_psql_over_tls_with_certificate_verification(serve: Start, tls: Any) -> None:
    port = await serve(PostgresBackend(USERS, ssl_context=tls.server))
    code, out, err = await psql(port, "\\conninfo", extra=f"sslmode=verify-full sslrootcert={tls.ca_file}")
    assert code == 0, err
    assert "SSL connection (protocol: TLSv1.3" in out
    code, out, _ = await psql(port, "select 1", extra="sslmode=disable")  # plain still works
    assert (code, out) == (0, "1")


@pytest.mark.e2e
@needs_psql
async def test_psql_scripts_and_errors(serve: Start) -> None:
    port = await serve(PostgresBackend(USERS))
    code, out, err = await psql(port, "create table t (id serial primary key, name text); "
                                      "insert into t (name) values ('a'), ('b'); select id, name from t order by id")
    assert (code, err) == (0, "")
    assert out.splitlines() == ["CREATE TABLE", "INSERT 0 2", "1|a", "2|b"]  # psql 15 prints every result
    code, out, err = await psql(port, "select relname from pg_class")
    assert code == 1
    assert "the system catalog pg_class" in err and "is not supported by the tpemu emulator" in err
    code, out, err = await psql(port, "selec 1")
    assert code == 1 and "syntax error at or near" in err
    code, out, err = await psql(port, "select count(*) from t")
    assert (code, out) == (0, "2")


@pytest.mark.e2e
@needs_psql
async def test_psql_rollback_join_and_catalog_refusal(serve: Start) -> None:
    """The issue's case: ROLLBACK undoes the change (the hand-written engine kept it), a join runs,
    and ``\\dt`` (a pg_catalog query SQLite cannot answer as PostgreSQL would) is refused with 0A000."""
    port = await serve(PostgresBackend(USERS))
    code, _, err = await psql(port, "create table t (id int primary key, name text); "
                                    "insert into t values (1, 'a'), (2, 'b')")
    assert code == 0, err
    code, out, err = await psql(port, "begin; update t set name = upper(name); rollback; select * from t order by id")
    assert (code, out.splitlines()) == (0, ["BEGIN", "UPDATE 2", "ROLLBACK", "1|a", "2|b"]), err
    code, out, err = await psql(port, "select a.name, b.name from t a join t b on b.id = 3 - a.id order by 1")
    assert (code, out.splitlines()) == (0, ["a|b", "b|a"]), err
    code, out, err = await psql(port, "\\dt")
    assert code == 1 and "system catalog" in err and "not supported by the tpemu emulator" in err, err


@pytest.mark.e2e
async def test_asyncpg_transactions_and_batches_roll_back(serve: Start) -> None:
    port = await serve(PostgresBackend(USERS))
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="alice", password="s3cret pw", database="app",
                                 ssl=False)
    try:
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        with pytest.raises(ZeroDivisionError):
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (1)")
                raise ZeroDivisionError
        assert await conn.fetchval("SELECT count(*) FROM t") == 0
        with pytest.raises(asyncpg.UniqueViolationError):  # one batch up to Sync: all or nothing, as PostgreSQL
            await conn.executemany("INSERT INTO t VALUES ($1)", [(1,), (2,), (1,)])
        assert await conn.fetchval("SELECT count(*) FROM t") == 0
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="arithmetic on numeric"):
            await conn.fetchval("SELECT 0.1 + 0.2")  # PostgreSQL says 0.3; SQLite's floats would not
    finally:
        await conn.close()


# --- asyncpg ---------------------------------------------------------------------------------


@pytest.mark.e2e
async def test_asyncpg_round_trip_with_binary_formats(serve: Start) -> None:
    port = await serve(PostgresBackend(USERS))
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="alice", password="s3cret pw", database="app",
                                 ssl=False)
    try:
        assert conn.get_server_version().major == 16
        await conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL, qty int, "
                           "price numeric, ratio float8, ok boolean, at timestamptz, small smallint)")
        at = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
        rows = [("pen", 3, Decimal("1.25"), 0.5, True, at, 7), ("ink", None, Decimal("-20"), 1e-9, False, None, -1),
                ("naïve ✓", 2**31 - 1, Decimal("0.0001"), -2.5, None, at, None)]
        await conn.executemany("INSERT INTO items (name, qty, price, ratio, ok, at, small) "
                               "VALUES ($1, $2, $3, $4, $5, $6, $7)", rows)
        got = await conn.fetch("SELECT name, qty, price, ratio, ok, at, small FROM items ORDER BY id")
        assert [tuple(r) for r in got] == rows
        row = await conn.fetchrow("SELECT id, name FROM items WHERE qty = $1 AND ok = $2", 3, True)
        assert (row["id"], row["name"]) == (1, "pen")
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
        assert await conn.fetchval("SELECT count(*) FROM items WHERE price > $1", Decimal("0")) == 2
        stmt = await conn.prepare("SELECT name FROM items WHERE id = $1")
        assert [await stmt.fetchval(i) for i in (1, 2, 3)] == ["pen", "ink", "naïve ✓"]
        async with conn.transaction():  # a cursor fetches in chunks: Execute with a row limit
            names = [r["name"] async for r in conn.cursor("SELECT name FROM items ORDER BY id", prefetch=2)]
        assert names == ["pen", "ink", "naïve ✓"]
        assert await conn.execute("DELETE FROM items WHERE id > $1", 1) == "DELETE 2"
        assert await conn.fetchval("SELECT count(*) FROM items") == 1
        with pytest.raises(asyncpg.UndefinedTableError):
            await conn.fetch("SELECT * FROM nope WHERE x = $1", 1)
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="not supported by the tpemu emulator"):
            await conn.fetch("SELECT * FROM pg_catalog.pg_type")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO items (id, name) VALUES (1, 'dup')")
        assert await conn.fetchval("SELECT current_user") == "alice"  # still usable
        assert isinstance(await conn.fetchval("SELECT now()"), datetime)
    finally:
        await conn.close()


@pytest.mark.e2e
async def test_asyncpg_pool_reset_query(serve: Start) -> None:
    port = await serve(PostgresBackend(None))
    async with asyncpg.create_pool(host="127.0.0.1", port=port, user="bob", database="app", ssl=False,
                                   min_size=1, max_size=1) as pool:
        for _ in range(2):  # release runs "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;"
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1


# --- psycopg ---------------------------------------------------------------------------------


@pytest.mark.e2e
async def test_psycopg_transactions_and_parameters(serve: Start, tls: Any) -> None:
    port = await serve(PostgresBackend(USERS, "md5", ssl_context=tls.server))
    dsn = f"host=127.0.0.1 port={port} user=alice password='s3cret pw' dbname=app sslmode=verify-full " \
          f"sslrootcert={tls.ca_file}"
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.info.server_version == 160000
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY, name varchar(20), score float8)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # psycopg sent BEGIN
        await conn.commit()
        async with conn.cursor() as cur:
            await cur.executemany("INSERT INTO t VALUES (%s, %s, %s)", [(1, "a", 1.5), (2, "b'q", None)])
            await cur.execute("SELECT id, name, score FROM t WHERE id >= %s ORDER BY id", [1], binary=True)
            assert await cur.fetchall() == [(1, "a", 1.5), (2, "b'q", None)]
            await cur.execute("SELECT %s, %s, %s, %s", [True, 2**40, Decimal("3.25"), "x"])
            assert await cur.fetchone() == (True, 2**40, Decimal("3.25"), "x")
            with pytest.raises(psycopg.errors.UndefinedTable):
                await cur.execute("SELECT * FROM nope")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
            with pytest.raises(psycopg.errors.InFailedSqlTransaction):
                await cur.execute("SELECT 1")
            await conn.rollback()  # the inserts of this transaction go with it, as in PostgreSQL
            await cur.execute("SELECT count(*) FROM t")
            assert await cur.fetchone() == (0,)
            await cur.executemany("INSERT INTO t VALUES (%s, %s, %s)", [(1, "a", 1.5), (2, "b'q", None)])
            await cur.execute("DELETE FROM t WHERE id = %s", [2])
            assert cur.rowcount == 1
            await conn.commit()
            await cur.execute("SELECT count(*) FROM t")
            assert await cur.fetchone() == (1,)
            await cur.execute("SELECT 1; SELECT 2")  # no parameters: the simple protocol, two results
            assert await cur.fetchone() == (1,)
            assert cur.nextset() and await cur.fetchone() == (2,)


# --- behind the Database Service -------------------------------------------------------------


@pytest.mark.e2e
async def test_session_needs_no_password_but_checks_user_and_database(serve: Start) -> None:
    session = Session(teleport_user="alice@example.com", db_user="alice", db_name="app")
    port = await serve(PostgresBackend(USERS, "scram-sha-256"), session)
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="alice", database="app", ssl=False)
    assert await conn.fetchval("SELECT current_user || '@' || current_database()") == "alice@app"
    await conn.close()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match='user "alice"'):
        await asyncpg.connect(host="127.0.0.1", port=port, user="bob", database="app", ssl=False)
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match='database "app"'):
        await asyncpg.connect(host="127.0.0.1", port=port, user="alice", database="other", ssl=False)


# --- hostile and broken peers ----------------------------------------------------------------


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _trusted_session(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await _connect(port)
    writer.write(pg.encode_startup({"user": "alice", "database": "app"}))
    msgs = await read_messages(reader, b"Z")
    assert msgs[0].tag == b"R" and msgs[-1].body == b"I"
    return reader, writer


async def test_garbage_gets_an_error_and_the_server_keeps_serving(serve: Start) -> None:
    port = await serve(PostgresBackend(None))
    reader, writer = await _connect(port)
    writer.write(b"GET / HTTP/1.1\r\nHost: db\r\n\r\n")
    data = await read_until_eof(reader)
    writer.close()
    msg = pg.parse_message(data)
    assert msg is not None and msg.tag == b"E"
    fields = error_fields(msg)
    assert fields["S"] == "FATAL" and fields["C"] == "08P01" and "start-up packet" in fields["M"]
    reader, writer = await _trusted_session(port)
    writer.close()


async def test_oversized_message_is_refused_without_reading_it(serve: Start) -> None:
    port = await serve(PostgresBackend(None, max_message=4096))
    reader, writer = await _trusted_session(port)
    writer.write(b"Q" + (10 << 20).to_bytes(4, "big") + b"SELECT ")  # announces 10 MiB, sends 7 bytes
    data = await read_until_eof(reader)
    writer.close()
    msg = pg.parse_message(data)
    assert msg is not None and error_fields(msg)["C"] == "54000"


async def test_silent_and_trickling_clients_are_cut_off(serve: Start) -> None:
    port = await serve(PostgresBackend(None, startup_timeout=0.3, idle_timeout=0.3))
    loop = asyncio.get_running_loop()
    start = loop.time()
    reader, writer = await _connect(port)
    data = await read_until_eof(reader, 3)  # says nothing at all
    assert b"canceling authentication due to timeout" in data
    writer.close()
    reader, writer = await _connect(port)
    startup = pg.encode_startup({"user": "alice"})
    for b in startup[:2]:  # a partial header, a byte at a time, then nothing
        writer.write(bytes((b,)))
        await asyncio.sleep(0.1)
    data = await read_until_eof(reader, 3)
    assert b"canceling authentication due to timeout" in data
    writer.close()
    reader, writer = await _trusted_session(port)  # idle after start-up
    data = await read_until_eof(reader, 3)
    msg = pg.parse_message(data)
    assert msg is not None and error_fields(msg)["C"] == "57P05"
    writer.close()
    assert loop.time() - start < 3


async def test_a_trickled_message_body_is_cut_off_after_message_timeout(serve: Start) -> None:
    port = await serve(PostgresBackend(None, message_timeout=0.3))
    reader, writer = await _trusted_session(port)
    writer.write(b"Q" + (4 + 20).to_bytes(4, "big") + b"SELECT")  # 14 of the 20 body bytes, then nothing
    data = await read_until_eof(reader, 3)
    msg = pg.parse_message(data)
    assert msg is not None
    fields = error_fields(msg)
    assert fields["C"] == "08006" and "did not arrive within" in fields["M"]
    writer.close()


async def test_buffered_messages_are_read_without_a_timer_each(serve: Start,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncpg pipelines Bind/Execute/Sync in one write: one deadline for the wait, not one per read."""
    made = 0
    real_timeout = asyncio.timeout

    def counting(delay: float | None) -> asyncio.Timeout:
        nonlocal made
        made += 1
        return real_timeout(delay)

    port = await serve(PostgresBackend(None, auth="trust"))
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="alice", database="app", ssl=False)
    assert await conn.fetchval("select 1") == 1  # prepared and cached by asyncpg
    monkeypatch.setattr(asyncio, "timeout", counting)
    for _ in range(20):
        assert await conn.fetchval("select 1") == 1
    monkeypatch.undo()
    await conn.close()
    assert made <= 20 + 2, made  # one per query (six per query before)


async def test_byte_by_byte_client_and_protocol_negotiation(serve: Start) -> None:
    port = await serve(PostgresBackend(None))
    reader, writer = await _connect(port)
    startup = pg.encode_startup({"user": "alice", "database": "app", "_pq_.compression": "on"}, minor=2)
    for b in startup:
        writer.write(bytes((b,)))
        await writer.drain()
    msgs = await read_messages(reader, b"Z")
    assert msgs[0].tag == b"v"  # NegotiateProtocolVersion: 3.0 and the ignored option
    assert msgs[0].body == b"\x00\x00\x00\x00\x00\x00\x00\x01_pq_.compression\x00"
    assert msgs[1].tag == b"R"
    status = dict(m.body[:-1].split(b"\x00", 1) for m in msgs if m.tag == b"S")
    assert status[b"server_version"] == b"16.0 (tpemu)" and status[b"integer_datetimes"] == b"on"
    writer.write(pg.encode_message(b"X"))
    assert await read_until_eof(reader) == b""
    writer.close()


async def test_cancel_request_and_gssenc(serve: Start) -> None:
    port = await serve(PostgresBackend(None))
    reader, writer = await _connect(port)
    writer.write((16).to_bytes(4, "big") + pg.CANCEL_REQUEST_CODE.to_bytes(4, "big") + bytes(8))
    assert await read_until_eof(reader) == b""
    writer.close()
    reader, writer = await _connect(port)
    writer.write(pg.GSSENC_REQUEST + pg.SSL_REQUEST)  # no TLS configured: two refusals, then start-up
    assert await reader.readexactly(2) == b"NN"
    writer.write(pg.encode_startup({"user": "alice"}))
    assert (await read_messages(reader, b"Z"))[-1].tag == b"Z"
    writer.close()


async def test_plaintext_injected_after_ssl_request_breaks_only_that_connection(serve: Start, tls: Any) -> None:
    port = await serve(PostgresBackend(None, ssl_context=tls.server))
    reader, writer = await _connect(port)
    # CVE-2021-23214 shape: the "answer" to the SSLRequest is sent before the server's 'S'.
    writer.write(pg.SSL_REQUEST + pg.encode_startup({"user": "alice"}))
    assert await reader.readexactly(1) == b"S"
    assert b"R\x00\x00\x00\x08\x00\x00\x00\x00" not in await read_until_eof(reader)
    writer.close()
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="alice", database="app", ssl=tls.client)
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()


async def test_extended_protocol_error_skips_to_sync(serve: Start) -> None:
    port = await serve(PostgresBackend(None))
    reader, writer = await _trusted_session(port)
    bad = pg.encode_message(b"P", b"\x00SELEC 1\x00\x00\x00")
    bind = pg.encode_message(b"B", b"\x00\x00\x00\x00\x00\x00\x00\x00")
    execute = pg.encode_message(b"E", b"\x00\x00\x00\x00\x00")
    writer.write(bad + bind + execute + pg.encode_message(b"S"))
    msgs = await read_messages(reader, b"Z")
    assert [m.tag for m in msgs] == [b"E", b"Z"]
    assert error_fields(msgs[0])["C"] == "42601"
    good = pg.encode_message(b"P", b"\x00SELECT $1::int\x00\x00\x00")
    bind = pg.encode_message(b"B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x0242\x00\x00")
    writer.write(good + bind + pg.encode_message(b"D", b"P\x00") + execute + pg.encode_message(b"S"))
    msgs = await read_messages(reader, b"Z")
    assert [m.tag for m in msgs] == [b"1", b"2", b"T", b"D", b"C", b"Z"]
    assert msgs[3].body == b"\x00\x01\x00\x00\x00\x0242"
    writer.write(pg.encode_message(b"F", b"\x00" * 8) + pg.encode_message(b"S"))  # FunctionCall
    msgs = await read_messages(reader, b"Z")
    assert error_fields(msgs[0])["C"] == "0A000"
    writer.close()


async def test_per_connection_and_per_store_bounds(serve: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    from tpemu.agent.backends import postgres_query as backend_module  # the query phase keeps the bound

    monkeypatch.setattr(backend_module, "MAX_STATEMENTS", 2)
    backend = PostgresBackend(None)
    backend.engine.max_databases = 2  # "postgres" and "app"
    port = await serve(backend)
    reader, writer = await _trusted_session(port)
    for name in (b"a", b"b", b"c"):
        writer.write(pg.encode_message(b"P", name + b"\x00SELECT 1\x00\x00\x00"))
    writer.write(pg.encode_message(b"S"))
    msgs = await read_messages(reader, b"Z")
    assert [m.tag for m in msgs] == [b"1", b"1", b"E", b"Z"]
    assert error_fields(msgs[2])["C"] == "53400"
    writer.close()
    reader, writer = await _connect(port)
    writer.write(pg.encode_startup({"user": "alice", "database": "third"}))
    msg = pg.parse_message(await read_until_eof(reader))
    assert msg is not None and error_fields(msg)["C"] == "53400"
    writer.close()


def test_rejection_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from tpemu.agent.backends.client_stream import RejectionLog

    limiter = RejectionLog(burst=2, interval=3600)
    logger = logging.getLogger("tpemu.test.rejections")
    with caplog.at_level(logging.WARNING, logger="tpemu.test.rejections"):
        for i in range(5):
            limiter.warning(logger, "refused %d", i)
    assert [r.getMessage() for r in caplog.records] == ["refused 0", "refused 1"]
    limiter._window_start -= 7200  # a new window reports what was dropped
    with caplog.at_level(logging.WARNING, logger="tpemu.test.rejections"):
        limiter.warning(logger, "refused %d", 9)
    assert caplog.records[-1].getMessage() == "refused 9 (3 similar messages suppressed)"


def test_constructor_validates_the_auth_method() -> None:
    with pytest.raises(ValueError):
        PostgresBackend(USERS, "kerberos")  # type: ignore[arg-type]
    assert PostgresBackend.protocol == "postgres"
    assert PostgresBackend(None).engine.database("postgres", create=False) is not None
