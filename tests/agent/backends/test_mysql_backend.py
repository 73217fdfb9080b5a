"""The emulated MySQL server against real clients: the mariadb 10.11 CLI and PyMySQL 1.2.

Also raw-socket tests: garbage, oversized packets, silent peers, and an SSLRequest with the
ClientHello pipelined right behind it in the same segment (what clients really do).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from tpemu.agent.backends.base import Session
from tpemu.agent.backends.mysql import SERVER_CAPABILITIES, MySQLBackend
from tpemu.wire import mysql as my

pymysql = pytest.importorskip("pymysql")

Start = Callable[..., Awaitable[int]]
MARIADB = shutil.which("mariadb")
needs_mariadb = pytest.mark.skipif(MARIADB is None, reason="the mariadb client is not installed")
USERS = {"alice": "s3cret"}
PLUGINS = ["mysql_native_password", "caching_sha2_password"]


@pytest.fixture(scope="module")
def rsa_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def mariadb(port: int, sql: str, *options: str, password: str = "s3cret", user: str = "alice",
                  script: bool = False) -> tuple[int, str, str]:
    """Run the mariadb CLI; ``script=True`` feeds ``sql`` on stdin (where --force applies) instead of -e."""
    assert MARIADB is not None
    args = [MARIADB, "--no-defaults", "--connect-timeout=5", "-h", "127.0.0.1", "-P", str(port), "-u", user,
            f"-p{password}", *options]
    proc = await asyncio.create_subprocess_exec(
        *args, *(() if script else ("-e", sql)), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(20):
        out, err = await proc.communicate(sql.encode() if script else b"")
    assert proc.returncode is not None
    return proc.returncode, out.decode().strip(), err.decode().strip()


def connect(port: int, password: str = "s3cret", **kw: Any) -> Any:
    return pymysql.connect(host="127.0.0.1", port=port, user="alice", password=password, connect_timeout=5,
                           read_timeout=10, **kw)


async def read_until_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    async with asyncio.timeout(timeout):
        return await reader.read(-1)


# --- mariadb CLI -----------------------------------------------------------------------------


@pytest.mark.e2e
@needs_mariadb
@pytest.mark.parametrize("plugin", PLUGINS)
async def test_mariadb_cli_round_trip(serve: Start, tls: Any, plugin: str) -> None:
    port = await serve(MySQLBackend(USERS, plugin, ssl_context=tls.server, database="app"))  # type: ignore[arg-type]
    code, out, err = await mariadb(port, "SELECT 1, CURRENT_USER(), DATABASE(); "
                                         "CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(10)); "
                                         "INSERT INTO t (name) VALUES ('a'), ('b\\'c'); "
                                         "SELECT id, name FROM t ORDER BY id DESC; DELETE FROM t WHERE id = 1; "
                                         "SELECT COUNT(*) AS n FROM t", "--batch")
    assert (code, err) == (0, "")
    assert out.splitlines() == ["1\tCURRENT_USER()\tDATABASE()", "1\talice@%\tapp", "id\tname", "2\tb'c", "1\ta",
                                "n", "1"]
    code, _, err = await mariadb(port, "SELECT 1", password="wrong")
    assert code == 1 and "ERROR 1045 (28000): Access denied for user 'alice'@'127.0.0.1'" in err
    assert (await mariadb(port, "SELECT 2", "--batch", "--skip-column-names"))[:2] == (0, "2")


@pytest.mark.e2e
@needs_mariadb
async def test_mariadb_cli_verifies_tls_and_sees_the_cipher(serve: Start, tls: Any) -> None:
    port = await serve(MySQLBackend(USERS, "caching_sha2_password", ssl_context=tls.server))
    code, out, err = await mariadb(port, "status", "--ssl", f"--ssl-ca={tls.ca_file}", "--ssl-verify-server-cert")
    assert code == 0, err
    assert "Cipher in use is TLS_" in out  # what the client itself negotiated
    code, out, err = await mariadb(port, "SHOW STATUS LIKE 'Ssl_cipher'", "--ssl", f"--ssl-ca={tls.ca_file}",
                                   "--batch", "--skip-column-names")
    assert code == 0 and out.startswith("Ssl_cipher\tTLS_"), err  # what the server saw


@pytest.mark.e2e
@needs_mariadb
async def test_mariadb_cli_errors_keep_the_session(serve: Start, tls: Any) -> None:
    port = await serve(MySQLBackend(USERS, ssl_context=tls.server, database="app"))
    _, out, err = await mariadb(port, "SELECT * FROM information_schema.tables; SELECT 'still here'; "
                                      "SELEC 1; SELECT 3;", "--force", "--batch", "--skip-column-names",
                                script=True)  # one connection, every statement sent
    assert out.splitlines() == ["still here", "3"]
    assert "ERROR 1235 (42000)" in err and "not supported by the tpemu emulator" in err
    assert "ERROR 1064 (42000)" in err


@pytest.mark.e2e
@needs_mariadb
async def test_mariadb_cli_caching_sha2_without_tls(serve: Start, rsa_key: Any) -> None:
    port = await serve(MySQLBackend(USERS, "caching_sha2_password", rsa_private_key=rsa_key))
    # With TLS wanted but not offered, libmariadb sends the password in cleartext: refused.
    code, _, err = await mariadb(port, "SELECT 1")
    assert code == 1 and "refusing a cleartext password on an unencrypted connection" in err
    # With --skip-ssl it asks for the server's RSA key and encrypts the password with it.
    code, out, err = await mariadb(port, "SELECT 1", "--skip-ssl", "--batch", "--skip-column-names")
    assert (code, out, err) == (0, "1", "")


# --- PyMySQL ---------------------------------------------------------------------------------


@pytest.mark.e2e
async def test_pymysql_rollback_undoes_and_refusals_change_nothing(serve: Start) -> None:
    port = await serve(MySQLBackend(USERS, database="app"))

    def work() -> None:
        conn = connect(port, database="app", ssl_disabled=True)  # PyMySQL: autocommit off
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE t (id INT PRIMARY KEY, name VARCHAR(3))")
                cur.execute("INSERT INTO t VALUES (1, 'a')")
                conn.rollback()
                cur.execute("SELECT COUNT(*) FROM t")
                assert cur.fetchone() == (0,)
                with pytest.raises(pymysql.err.DataError) as e:  # strict mode: refused, not truncated
                    cur.execute("INSERT INTO t VALUES (2, 'toolong')")
                assert e.value.args[0] == 1406
                with pytest.raises(pymysql.err.NotSupportedError) as ns:
                    cur.execute("SELECT LENGTH('x')")  # bytes in MySQL, characters in SQLite: refused
                assert ns.value.args[0] == 1235 and "not supported by the tpemu emulator" in ns.value.args[1]
                cur.execute("INSERT INTO t VALUES (3, 'c')")
                conn.commit()
                cur.execute("SELECT id FROM t")
                assert cur.fetchall() == ((3,),)
        finally:
            conn.close()

    await asyncio.to_thread(work)


@pytest.mark.e2e
async def test_pymysql_native_password_round_trip(serve: Start) -> None:
    port = await serve(MySQLBackend(USERS, database="app"))

    def work() -> None:
        conn = connect(port, database="app", ssl_disabled=True)
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE t (id BIGINT AUTO_INCREMENT PRIMARY KEY, name TEXT, price DECIMAL(10,2), "
                            "ratio DOUBLE, at DATETIME, flag BOOLEAN)")
                rows = [("quote ' and \\ back", Decimal("1.25"), 0.5, datetime(2024, 1, 2, 3, 4, 5), True),
                        ("ünïcode ✓", None, -1e-3, None, False)]
                cur.executemany("INSERT INTO t (name, price, ratio, at, flag) VALUES (%s, %s, %s, %s, %s)", rows)
                assert cur.rowcount == 2
                assert conn.insert_id() in (1, 2)
                cur.execute("SELECT name, price, ratio, at, flag FROM t ORDER BY id")
                assert cur.fetchall() == ((rows[0][0], Decimal("1.25"), 0.5, datetime(2024, 1, 2, 3, 4, 5), 1),
                                          (rows[1][0], None, -0.001, None, 0))
                cur.execute("SELECT id FROM t WHERE name = %s", ("QUOTE ' AND \\ BACK",))  # utf8mb4_general_ci
                assert cur.fetchall() == ((1,),)
                cur.execute("DELETE FROM t WHERE id = %s", (2,))
                assert cur.rowcount == 1
                conn.commit()
                conn.ping(reconnect=False)
                conn.select_db("app")  # COM_INIT_DB
                with pytest.raises(pymysql.err.OperationalError) as e:
                    conn.select_db("nope")
                assert e.value.args[0] == 1049
                with pytest.raises(pymysql.err.ProgrammingError) as pe:
                    cur.execute("SELECT * FROM missing")
                assert pe.value.args[0] == 1146
                cur.execute("SELECT COUNT(*) FROM t")
                assert cur.fetchone() == (1,)
        finally:
            conn.close()

    await asyncio.to_thread(work)


@pytest.mark.e2e
async def test_pymysql_caching_sha2_full_then_fast_over_tls(serve: Start, tls: Any) -> None:
    backend = MySQLBackend(USERS, "caching_sha2_password", ssl_context=tls.server)
    port = await serve(backend)

    def login() -> Any:
        conn = connect(port, ssl=tls.client)
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW STATUS LIKE 'Ssl_version'")
                return cur.fetchone()
        finally:
            conn.close()

    assert backend._sha2_cache == set()
    assert (await asyncio.to_thread(login))[1].startswith("TLSv1.")  # full authentication: cleartext over TLS
    assert ("alice", "s3cret") in backend._sha2_cache
    assert (await asyncio.to_thread(login))[1].startswith("TLSv1.")  # fast path
    with pytest.raises(pymysql.err.OperationalError) as e:
        await asyncio.to_thread(connect, port, "wrong", ssl=tls.client)
    assert e.value.args[0] == 1045


@pytest.mark.e2e
async def test_pymysql_caching_sha2_rsa_exchange_without_tls(serve: Start, rsa_key: Any) -> None:
    port = await serve(MySQLBackend(USERS, "caching_sha2_password", rsa_private_key=rsa_key))

    def login(password: str) -> Any:
        conn = connect(port, password, ssl_disabled=True)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT CURRENT_USER()")
                return cur.fetchone()
        finally:
            conn.close()

    assert await asyncio.to_thread(login, "s3cret") == ("alice@%",)
    with pytest.raises(pymysql.err.OperationalError):
        await asyncio.to_thread(login, "s3cre")


@pytest.mark.e2e
@pytest.mark.parametrize("server,client", [(PLUGINS[0], PLUGINS[1]), (PLUGINS[1], PLUGINS[0])])
async def test_pymysql_auth_switch(serve: Start, tls: Any, monkeypatch: pytest.MonkeyPatch, server: str,
                                   client: str) -> None:
    port = await serve(MySQLBackend(USERS, server, ssl_context=tls.server))  # type: ignore[arg-type]
    # PyMySQL's test hook: answer the greeting with another plugin than the one it asks for.
    monkeypatch.setattr(pymysql.connections, "_DEFAULT_AUTH_PLUGIN", client)

    def login(password: str) -> Any:
        conn = connect(port, password, ssl=tls.client)
        try:
            return conn.get_server_info()
        finally:
            conn.close()

    assert await asyncio.to_thread(login, "s3cret") == "8.0.36-tpemu"
    with pytest.raises(pymysql.err.OperationalError):
        await asyncio.to_thread(login, "wrong")


@pytest.mark.e2e
async def test_pymysql_unsupported_commands_and_multi_statements(serve: Start) -> None:
    port = await serve(MySQLBackend(USERS))

    def work() -> None:
        conn = connect(port, ssl_disabled=True, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
        try:
            conn._execute_command(pymysql.constants.COMMAND.COM_STMT_PREPARE, "SELECT 1")
            with pytest.raises(pymysql.err.NotSupportedError) as e:
                conn._read_ok_packet()
            assert e.value.args[0] == 1235 and "COM_STMT_PREPARE is not supported" in e.value.args[1]
            with conn.cursor() as cur:
                cur.execute("SELECT 1; SELECT 'two'")
                assert cur.fetchall() == ((1,),)
                assert cur.nextset() and cur.fetchall() == (("two",),)
        finally:
            conn.close()

    await asyncio.to_thread(work)


@pytest.mark.e2e
async def test_session_accepts_any_password_but_checks_user_and_database(serve: Start) -> None:
    session = Session(teleport_user="alice@example.com", db_user="alice", db_name="app")
    port = await serve(MySQLBackend(USERS, "caching_sha2_password"), session)

    def attempt(**kw: Any) -> Any:
        conn = pymysql.connect(host="127.0.0.1", port=port, connect_timeout=5, ssl_disabled=True, **kw)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT DATABASE()")
                db = cur.fetchone()
                with pytest.raises(pymysql.err.OperationalError) as e:
                    cur.execute("USE other")
                assert e.value.args[0] == 1044
                return db
        finally:
            conn.close()

    assert await asyncio.to_thread(attempt, user="alice", password="anything") == ("app",)
    with pytest.raises(pymysql.err.OperationalError) as e:
        await asyncio.to_thread(attempt, user="bob", password="")
    assert e.value.args[0] == 1045
    with pytest.raises(pymysql.err.OperationalError) as e:
        await asyncio.to_thread(attempt, user="alice", password="", database="other")
    assert e.value.args[0] == 1044


# --- hostile and broken peers ----------------------------------------------------------------


async def _greeting(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, my.Greeting]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = await reader.readexactly(4)
    payload = await reader.readexactly(int.from_bytes(head[:3], "little"))
    return reader, writer, my.parse_handshake_v10(payload)


def _response(user: str = "alice", caps: int = SERVER_CAPABILITIES & ~my.CLIENT_DEPRECATE_EOF) -> bytes:
    return my.encode_handshake_response(my.HandshakeResponse(caps, 1 << 24, 45, user, b"", None,
                                                             my.NATIVE_PASSWORD, ()))


async def _read_packet(reader: asyncio.StreamReader) -> my.Packet:
    head = await reader.readexactly(4)
    packet = my.parse_packet(head + await reader.readexactly(int.from_bytes(head[:3], "little")))
    assert packet is not None
    return packet


async def test_garbage_and_oversized_packets_are_refused(serve: Start) -> None:
    port = await serve(MySQLBackend(None, max_packet=4096))
    reader, writer, g = await _greeting(port)
    assert g.server_version == "8.0.36-tpemu" and g.capabilities & my.CLIENT_DEPRECATE_EOF
    writer.write(b"GET / HTTP/1.1\r\nHost: db\r\n\r\n")
    data = await read_until_eof(reader)
    assert data[4:7] == b"\xff\x13\x04" and b"Bad handshake" in data  # ER_HANDSHAKE_ERROR 1043
    writer.close()
    reader, writer, _ = await _greeting(port)
    writer.write(my.encode_packet(1, _response()))
    assert (await _read_packet(reader)).payload[:1] == b"\x00"  # OK
    writer.write(b"\x00\x00\x20\x00" + b"\x03SELECT")  # announces 2 MiB
    data = await read_until_eof(reader)
    assert int.from_bytes(data[5:7], "little") == my.ER_NET_PACKET_TOO_LARGE
    writer.close()


async def test_silent_and_idle_clients_are_cut_off(serve: Start) -> None:
    port = await serve(MySQLBackend(None, handshake_timeout=0.3, idle_timeout=0.3))
    reader, writer, _ = await _greeting(port)
    data = await read_until_eof(reader, 3)  # never answers the greeting
    assert b"Bad handshake: timed out" in data
    writer.close()
    reader, writer, _ = await _greeting(port)
    writer.write(my.encode_packet(1, _response()))
    await _read_packet(reader)
    data = await read_until_eof(reader, 3)  # idle after login
    assert int.from_bytes(data[5:7], "little") == 4031
    writer.close()


async def test_ssl_request_with_pipelined_client_hello(serve: Start, tls: Any) -> None:
    port = await serve(MySQLBackend(USERS, ssl_context=tls.server))
    reader, writer, g = await _greeting(port)
    assert g.capabilities & my.CLIENT_SSL
    caps = (SERVER_CAPABILITIES | my.CLIENT_SSL) & ~my.CLIENT_DEPRECATE_EOF
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = tls.client.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    ssl_request = caps.to_bytes(4, "little") + (1 << 24).to_bytes(4, "little") + b"\x2d" + bytes(23)
    writer.write(my.encode_packet(1, ssl_request) + outgoing.read())  # one segment: the race clients create
    async with asyncio.timeout(5):
        while True:
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                incoming.write(await reader.read(65536))
    auth = my.native_password_scramble("s3cret", g.nonce)
    resp = my.HandshakeResponse(caps, 1 << 24, 45, "alice", auth, None, my.NATIVE_PASSWORD, ())
    client.write(my.encode_packet(2, my.encode_handshake_response(resp)))
    writer.write(outgoing.read())
    plain = b""
    async with asyncio.timeout(5):
        while len(plain) < 5:
            try:
                plain += client.read(1024)
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                incoming.write(await reader.read(65536))
    assert plain[3] == 3 and plain[4] == 0x00  # OK, sequence 3
    writer.close()


def test_constructor_validates_the_plugin() -> None:
    with pytest.raises(ValueError):
        MySQLBackend(USERS, "sha256_password")  # type: ignore[arg-type]
    assert MySQLBackend.protocol == "mysql"
