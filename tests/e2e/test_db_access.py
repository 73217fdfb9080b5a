"""Database access end to end: Auth, the proxy and a Database Service; real clients (psql, mariadb,
redis-cli, pymongo, asyncpg, psycopg, PyMySQL, redis-py) against the default databases (embedded engines) and against
real servers (PostgreSQL 15, MariaDB, redis-server with TLS, the nx-27017 Mongo-wire server).

The Auth Service, the proxy and an agent with the ``db`` role run in this process on port 0: the
agent joins through the proxy with a token, holds a reverse tunnel, announces its databases to
Auth; the user logs in with the real CLI (``tpemu login``, ``tpemu db ls/login/connect/config/env``,
``tpemu proxy db --tunnel`` as subprocesses). Real servers start once per session, with
certificates from the cluster's database CA: they trust that CA for client certificates, and the
Database Service presents one the Auth Service issues to its Db identity (``POST /v1/db/certs``,
CN = the database user) — no passwords anywhere.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import realservers
from tpemu import cli, config, pki
from tpemu.agent.db_service import DatabaseService
from tpemu.agent.process import AgentOptions, AgentProcess
from tpemu.agent.services import MAKERS
from tpemu.auth.service import AuthService
from tpemu.client.admin import admin_client
from tpemu.proxy.auth_routes import AuthLink
from tpemu.proxy.decide import ListenerKind
from tpemu.proxy.service import ProxyService

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery"
CLUSTER = "tpemu.local"


# -- session: one cluster state (CAs) and the real servers that trust its database CA -------------------


@pytest.fixture(scope="session")
def template() -> Iterator[Path]:
    """A data dir whose Auth backend already holds the cluster's CAs, and ``pki/`` with the
    database CA and a server certificate it signed (for the real servers)."""
    base = Path(tempfile.mkdtemp(prefix="tpemu-dbe2e-"))

    async def seed() -> None:
        from tpemu.auth.authority import CAType, ensure_authorities, issue_db_cert
        from tpemu.auth.backend_sqlite import SQLiteBackend

        backend = await SQLiteBackend.open(base / "data" / "backend" / "sqlite.db", "OFF")
        try:
            cas = await ensure_authorities(backend, CLUSTER)
        finally:
            await backend.close()
        db_ca = cas[CAType.DB]
        key = pki.generate_key()
        cert = issue_db_cert(db_ca, key.public_key(), "localhost", ["localhost", "127.0.0.1"], dt.timedelta(days=1))
        out = base / "pki"
        out.mkdir()
        out.chmod(0o755)
        (out / "ca.crt").write_bytes(db_ca.tls_cert_pem)
        (out / "server.crt").write_bytes(pki.cert_pem(cert))
        (out / "server.key").write_bytes(pki.key_pem(key))
        base.chmod(0o755)

    asyncio.run(seed())
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def real_pg(template: Path) -> Iterator[realservers.DBServer]:
    with realservers.postgres(template / "pki") as server:
        yield server


@pytest.fixture(scope="session")
def real_mariadb(template: Path) -> Iterator[realservers.DBServer]:
    with realservers.mariadb(template / "pki") as server:
        yield server


@pytest.fixture(scope="session")
def real_redis(template: Path) -> Iterator[realservers.DBServer]:
    with realservers.redis_tls(template / "pki") as server:
        yield server


@pytest.fixture(scope="session")
def real_mongo() -> Iterator[realservers.DBServer]:
    with realservers.nx_mongo() as server:
        yield server


# -- per test: Auth + proxy + Database Service, alice logged in --------------------------------------------


@dataclass
class Env:
    auth: AuthService
    proxy: ProxyService
    agent: AgentProcess
    data: Path
    home: Path
    tmp: Path

    @property
    def web(self) -> str:
        return str(self.proxy.info.bound[ListenerKind.WEB])

    @property
    def service(self) -> DatabaseService:
        service = self.agent.offers["db"][0].service
        assert isinstance(service, DatabaseService)
        return service

    @property
    def web_port(self) -> int:
        return self.proxy.info.bound[ListenerKind.WEB].port

    @property
    def ca(self) -> Path:
        return self.data / "pki" / "ca.crt"

    def keys(self) -> Path:
        return self.home / "keys" / "127.0.0.1"

    async def cli(self, *argv: str) -> tuple[int, str, str]:
        """Run the real CLI in a subprocess (its own event loop; never blocks ours)."""
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("tpemu")), *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "TPEMU_HOME": str(self.home)})
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


async def start_env(tmp: Path, template: Path, databases: list[dict[str, Any]],
                    db_users: str = "alice", db_names: str = "app") -> Env:
    data = tmp / "data"
    shutil.copytree(template / "data", data)
    cfg = config.from_dict({"teleport": {"data_dir": str(data)},
                            "auth_service": {"listen_addr": "127.0.0.1:0", "cluster_name": CLUSTER},
                            "proxy_service": {"web_listen_addr": "127.0.0.1:0"}})
    auth = AuthService(cfg)
    await auth.start()
    assert auth.addr is not None and auth.server is not None
    link = AuthLink(auth.addr, ca_pins=(auth.ca_pin,), mint=lambda: auth.mint_token(("Proxy",), 300.0))
    proxy = ProxyService(cfg, auth=link)
    await proxy.start()
    admin = admin_client(data)
    agent_cfg = config.from_dict({"teleport": {"data_dir": str(tmp / "agent")},
                                  "auth_service": {"enabled": False},
                                  "db_service": {"enabled": True, "databases": databases}})
    token = await auth.mint_token(("Db",), 300.0)
    agent = AgentProcess(agent_cfg, AgentOptions(("db",), proxy_server=proxy.info.bound[ListenerKind.WEB],
                                                 token=token, ca_pins=(auth.ca_pin,), nodename="dbagent"),
                         {"db": MAKERS["db"]})
    await agent.start()
    await agent.wait_connected()
    names = {d["name"] for d in databases}
    async with asyncio.timeout(10):  # the tunnel heartbeat and the presence in Auth
        while {r.name for _, r in proxy.tunnels.resources("db")} != names or {
                item["metadata"]["name"] for item in (await admin.call("GET", "/v1/db_servers"))["items"]} != names:
            await asyncio.sleep(0.05)
    user = {"kind": "user", "version": "v2", "metadata": {"name": "alice"},
            "spec": {"roles": ["access"], "traits": {"logins": ["alice"], "db_users": db_users.split(","),
                                                     "db_names": db_names.split(",")}}}
    await admin.call("POST", "/v1/users", {"user": user, "password": PASSWORD})
    env = Env(auth, proxy, agent, data, tmp / "home", tmp)
    (tmp / "pw").write_text(PASSWORD)
    code, _, err = await env.cli("login", "--proxy", env.web, "--user", "alice", "--password-file",
                                   str(tmp / "pw"), "--ca", str(env.ca))
    assert code == 0, err
    return env


async def stop_env(env: Env) -> None:
    await env.agent.close()
    await env.service.close()
    await env.proxy.close()
    await env.auth.close()


EMULATED = [{"name": "pg", "protocol": "postgres", "description": "emulated Postgres",
             "static_labels": {"env": "test"}},
            {"name": "my", "protocol": "mysql"},
            {"name": "mongo", "protocol": "mongodb", "description": "the embedded MongoDB wire server (nx-27017)"},
            {"name": "cache", "protocol": "redis"}]


def real_databases(pg: realservers.DBServer, my: realservers.DBServer, redis: realservers.DBServer,
                   mongo: realservers.DBServer) -> list[dict[str, Any]]:
    return [{"name": "realpg", "protocol": "postgres", "uri": pg.addr},
            {"name": "realmy", "protocol": "mysql", "uri": my.addr},
            {"name": "realredis", "protocol": "redis", "uri": redis.addr},
            {"name": "realmongo", "protocol": "mongodb", "uri": mongo.addr, "tls": {"mode": "disabled"}}]


@pytest.fixture
async def env(tmp_path: Path, template: Path) -> AsyncIterator[Env]:
    e = await start_env(tmp_path, template, EMULATED)
    try:
        yield e
    finally:
        await stop_env(e)


@pytest.fixture
async def real_env(tmp_path: Path, template: Path, real_pg: realservers.DBServer,
                   real_mariadb: realservers.DBServer, real_redis: realservers.DBServer,
                   real_mongo: realservers.DBServer) -> AsyncIterator[Env]:
    e = await start_env(tmp_path, template, EMULATED + real_databases(real_pg, real_mariadb, real_redis, real_mongo))
    try:
        yield e
    finally:
        await stop_env(e)


async def sh(argv: list[str], timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=timeout,
                                   check=False, **kw)


class Tunnel:
    """``tpemu proxy db --tunnel NAME`` as a subprocess; ``port`` once it is listening."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc, self.port = proc, port

    @classmethod
    async def start(cls, env: Env, name: str, *extra: str) -> Tunnel:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("tpemu")), "proxy", "db", "--tunnel", name, "--home", str(env.home),
            *extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        if "Started authenticated tunnel" not in line:
            proc.kill()
            err = await proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"tunnel did not start: {line!r} {err.decode()!r}")
        port = int(line.split(" on 127.0.0.1:")[1].split(" ")[0])
        return cls(proc, port)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def need(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (make test installs it on Debian as root)")
    return path


# -- the tests -----------------------------------------------------------------------------------------------


async def test_db_ls_login_config_env(env: Env) -> None:
    code, out, err = await env.cli("db", "ls")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["Name", "Protocol", "Description"]
    assert any(line.split()[:2] == ["pg", "postgres"] and "env=test" in line for line in lines), out
    assert {line.split()[0] for line in lines[1:]} == {"cache", "mongo", "my", "pg"}
    # Columns line up whatever a cell's length (a long description used to push the next ones right).
    starts = [lines[0].index(h) for h in ("Protocol", "Description", "Labels", "Last heartbeat", "Connect")]
    for line in lines[1:]:
        assert all(line[i - 1] == " " and line[i] != " " for i in starts), out
    code, out, err = await env.cli("db", "login", "pg")
    assert code == 0, err
    assert "Logged into database pg (postgres) as database user 'alice', database 'app'" in out
    cert = env.keys() / "alice-db" / CLUSTER / "pg-x509.pem"
    text = (await sh(["openssl", "x509", "-in", str(cert), "-noout", "-subject"])).stdout
    for part in ("CN = alice", "1.3.9999.2.1 = pg", "1.3.9999.2.2 = postgres", "1.3.9999.2.3 = alice",
                 "1.3.9999.2.4 = app", "OU = usage:db"):
        assert part in text, text
    code, out, _ = await env.cli("db", "ls", "--format", "json")
    assert {d["name"]: d["logged_in"] for d in json.loads(out)} == {"cache": False, "mongo": False, "my": False,
                                                                     "pg": True}
    code, out, err = await env.cli("db", "env")
    assert code == 0, err
    assert f"export PGPORT={env.web_port}" in out and "export PGSSLMODE=verify-full" in out
    code, out, err = await env.cli("db", "config", "pg", "--format", "json")
    data = json.loads(out)
    assert data["commands"]["psql"].startswith("psql \"host=127.0.0.1 port=") and data["alpn"] == "teleport-postgres"
    code, out, err = await env.cli("db", "login", "nosuch")
    assert code == 1 and "database 'nosuch' not found (databases: cache, mongo, my, pg)" in err
    code, out, err = await env.cli("db", "login", "my", "--db-user", "root")
    assert code == 0, err  # Teleport issues the certificate; the Database Service says no (below)
    code, out, err = await env.cli("db", "env", "my")
    assert code == 1 and "supports Postgres databases" in err


async def test_psql_direct_and_through_tunnel(env: Env) -> None:
    psql = need("psql")
    assert (await env.cli("db", "login", "pg"))[0] == 0
    code, out, err = await env.cli("db", "env")
    assert code == 0
    penv = dict(os.environ)
    for line in out.splitlines():
        k, v = line.removeprefix("export ").split("=", 1)
        penv[k] = v
    # psql straight to the multiplexed port: SSLRequest, TLS with its client certificate
    r = await sh([psql, "-tAc", "create table t (id int, name text); insert into t values (1, 'one'); "
                  "select name || ' as ' || current_user from t"], env=penv)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "one as alice", r.stderr
    # through the local tunnel: plain psql
    tunnel = await Tunnel.start(env, "pg")
    try:
        r = await sh([psql, f"host=127.0.0.1 port={tunnel.port} user=alice dbname=app sslmode=disable", "-tAc",
                      "select count(*) from t"])
        assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
        # a database name outside the certificate's database_names: the agent refuses in Postgres' protocol
        r = await sh([psql, f"host=127.0.0.1 port={tunnel.port} user=alice dbname=other sslmode=disable", "-tAc",
                      "select 1"])
        assert r.returncode == 2 and "FATAL:  access to db denied" in r.stderr and "'other'" in r.stderr, r.stderr
    finally:
        await tunnel.stop()
    # and tpemu db connect runs psql itself
    code, out, err = await env.cli("db", "connect", "pg", "--", "-tAc", "select name from t")
    assert code == 0 and out.strip() == "one", err


async def test_refusals_in_each_protocol(env: Env) -> None:
    psql, mariadb_cli, redis_cli = need("psql"), need("mariadb"), need("redis-cli")
    # db user root is not among alice's database users: each protocol's own error
    for name, args in (("pg", ["--db-user", "root", "--db-name", "app"]), ("my", ["--db-user", "root"]),
                       ("cache", ["--db-user", "root"]), ("mongo", ["--db-user", "root", "--db-name", "app"])):
        code, _, err = await env.cli("db", "login", name, *args)
        assert code == 0, err
    tunnels = {name: await Tunnel.start(env, name) for name in ("pg", "my", "cache", "mongo")}
    try:
        r = await sh([psql, f"host=127.0.0.1 port={tunnels['pg'].port} user=root dbname=app sslmode=disable",
                      "-c", "select 1"])
        assert r.returncode == 2 and "FATAL:  access to db denied" in r.stderr and "'root'" in r.stderr, r.stderr
        r = await sh([mariadb_cli, "--no-defaults", "--skip-ssl", "-h", "127.0.0.1", "-P", str(tunnels["my"].port),
                      "-u", "root", "-e", "select 1"])
        assert r.returncode == 1 and "ERROR 1045 (28000)" in r.stderr and "access to db denied" in r.stderr, r.stderr
        r = await sh([redis_cli, "-h", "127.0.0.1", "-p", str(tunnels["cache"].port), "ping"])
        assert r.stdout.startswith("ERR access to db denied"), r.stdout + r.stderr

        import pymongo

        def mongo() -> Any:
            c: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                f"mongodb://127.0.0.1:{tunnels['mongo'].port}/?directConnection=true",
                serverSelectionTimeoutMS=1500)
            try:
                return c.app.command("ping")
            finally:
                c.close()

        with pytest.raises(pymongo.errors.PyMongoError, match="access to db denied"):
            await asyncio.to_thread(mongo)
    finally:
        for t in tunnels.values():
            await t.stop()
    assert env.service.stats["denied"] >= 4


async def test_emulated_clients_through_tunnels(env: Env) -> None:
    mariadb_cli, redis_cli = need("mariadb"), need("redis-cli")
    for name, args in (("my", ["--db-name", "app"]), ("cache", []), ("mongo", [])):
        code, _, err = await env.cli("db", "login", name, *args)
        assert code == 0, err
    tunnels = {name: await Tunnel.start(env, name) for name in ("my", "cache", "mongo")}
    try:
        r = await sh([mariadb_cli, "--no-defaults", "--skip-ssl", "-h", "127.0.0.1", "-P", str(tunnels["my"].port),
                      "-u", "alice", "-D", "app", "-NBe",
                      "create table t (id int, v varchar(10)); insert into t values (1, 'a'); select v from t"])
        assert r.returncode == 0 and r.stdout.strip() == "a", r.stderr
        r = await sh([redis_cli, "-h", "127.0.0.1", "-p", str(tunnels["cache"].port), "set", "k", "v"])
        assert r.stdout.strip() == "OK", r.stdout + r.stderr
        r = await sh([redis_cli, "-h", "127.0.0.1", "-p", str(tunnels["cache"].port), "get", "k"])
        assert r.stdout.strip() == "v", r.stdout + r.stderr

        import pymongo
        import pymysql
        import redis

        def py_clients() -> tuple[Any, Any, Any]:
            m: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                f"mongodb://127.0.0.1:{tunnels['mongo'].port}/?directConnection=true", serverSelectionTimeoutMS=5000)
            try:
                m.app.things.insert_one({"_id": 7, "x": "seven"})
                doc = m.app.things.find_one({"_id": 7})
            finally:
                m.close()
            conn = pymysql.connect(host="127.0.0.1", port=tunnels["my"].port, user="alice", database="app")
            try:
                with conn.cursor() as cur:
                    cur.execute("select v from t where id = %s", (1,))
                    row = cur.fetchone()
            finally:
                conn.close()
            rc = redis.Redis(host="127.0.0.1", port=tunnels["cache"].port)
            try:
                value = rc.get("k")
            finally:
                rc.close()
            return doc, row, value

        assert await asyncio.to_thread(py_clients) == ({"_id": 7, "x": "seven"}, ("a",), b"v")
    finally:
        for t in tunnels.values():
            await t.stop()


async def test_real_servers(real_env: Env) -> None:
    env = real_env
    psql, mariadb_cli, redis_cli = need("psql"), need("mariadb"), need("redis-cli")
    for name in ("realpg", "realmy", "realredis", "realmongo"):
        code, _, err = await env.cli("db", "login", name, *(["--db-name", "app"] if name != "realredis" else []))
        assert code == 0, err
    # psql straight to the web port (SSLRequest) → agent → PostgreSQL with the agent's cert for alice
    code, out, _ = await env.cli("db", "env", "realpg")
    penv = dict(os.environ)
    for line in out.splitlines():
        k, v = line.removeprefix("export ").split("=", 1)
        penv[k] = v
    r = await sh([psql, "-tAc", "select current_user || ' ' || version()"], env=penv)
    assert r.returncode == 0 and r.stdout.startswith("alice PostgreSQL 15"), r.stderr
    r = await sh([psql, "-tAc", "select ssl, client_dn from pg_stat_ssl where pid = pg_backend_pid()"], env=penv)
    assert r.stdout.strip() == "t|/CN=alice", r.stdout + r.stderr
    tunnels = {name: await Tunnel.start(env, name) for name in ("realpg", "realmy", "realredis", "realmongo")}
    try:
        r = await sh([psql, f"host=127.0.0.1 port={tunnels['realpg'].port} user=alice dbname=app sslmode=disable",
                      "-tAc", "select 6 * 7"])
        assert r.returncode == 0 and r.stdout.strip() == "42", r.stderr
        r = await sh([mariadb_cli, "--no-defaults", "--skip-ssl", "-h", "127.0.0.1", "-P",
                      str(tunnels["realmy"].port), "-u", "alice", "-D", "app", "-NBe",
                      "select concat(current_user(), ' ', version(), ' ', "
                      "(select variable_value from information_schema.session_status "
                      "where variable_name = 'Ssl_version'))"])
        assert r.returncode == 0 and r.stdout.startswith("alice@% "), r.stdout + r.stderr
        assert r.stdout.strip().endswith("TLSv1.3") and "mariadb" in r.stdout.lower(), r.stdout
        r = await sh([redis_cli, "-h", "127.0.0.1", "-p", str(tunnels["realredis"].port), "info", "server"])
        assert "redis_version:7" in r.stdout, r.stdout + r.stderr

        import asyncpg
        import psycopg
        import pymongo
        import pymysql
        import redis

        conn = await asyncpg.connect(host="127.0.0.1", port=tunnels["realpg"].port, user="alice", database="app",
                                     ssl=False)
        try:
            assert await conn.fetchval("select current_setting('server_version_num')::int / 10000") == 15
        finally:
            await conn.close()

        def py_clients() -> tuple[Any, ...]:
            with psycopg.connect(f"host=127.0.0.1 port={tunnels['realpg'].port} user=alice dbname=app "
                                 "sslmode=disable") as pconn:
                pg_user = pconn.execute("select current_user").fetchone()
            my = pymysql.connect(host="127.0.0.1", port=tunnels["realmy"].port, user="alice", database="app")
            try:
                with my.cursor() as cur:
                    cur.execute("select current_user()")
                    my_user = cur.fetchone()
            finally:
                my.close()
            rc = redis.Redis(host="127.0.0.1", port=tunnels["realredis"].port)
            try:
                rc.set("real", "yes")
                rv = rc.get("real")
            finally:
                rc.close()
            m: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                f"mongodb://127.0.0.1:{tunnels['realmongo'].port}/?directConnection=true",
                serverSelectionTimeoutMS=5000)
            try:
                m.app.things.insert_one({"_id": 1, "where": "nx-27017"})
                doc = m.app.things.find_one({"_id": 1})
            finally:
                m.close()
            return pg_user, my_user, rv, doc

        assert await asyncio.to_thread(py_clients) == (("alice",), ("alice@%",), b"yes",
                                                        {"_id": 1, "where": "nx-27017"})
    finally:
        for t in tunnels.values():
            await t.stop()


async def test_backend_down_is_a_clean_error(tmp_path: Path, template: Path) -> None:
    psql, mariadb_cli, redis_cli = need("psql"), need("mariadb"), need("redis-cli")
    dead = realservers.free_port()
    databases = [{"name": "deadpg", "protocol": "postgres", "uri": f"127.0.0.1:{dead}"},
                 {"name": "deadmy", "protocol": "mysql", "uri": f"127.0.0.1:{dead}"},
                 {"name": "deadredis", "protocol": "redis", "uri": f"127.0.0.1:{dead}"},
                 {"name": "deadmongo", "protocol": "mongodb", "uri": f"127.0.0.1:{dead}", "tls": {"mode": "disabled"}}]
    env = await start_env(tmp_path, template, databases)
    try:
        for name in ("deadpg", "deadmy", "deadredis", "deadmongo"):
            assert (await env.cli("db", "login", name, "--db-name", "app"))[0] == 0
        tunnels = {name: await Tunnel.start(env, name) for name in ("deadpg", "deadmy", "deadredis", "deadmongo")}
        try:
            r = await sh([psql, f"host=127.0.0.1 port={tunnels['deadpg'].port} user=alice dbname=app sslmode=disable",
                          "-c", "select 1"])
            assert r.returncode == 2 and "FATAL:  database 'deadpg' is unavailable: cannot connect to " \
                f"127.0.0.1:{dead}: Connection refused" in r.stderr, r.stderr
            r = await sh([mariadb_cli, "--no-defaults", "--skip-ssl", "-h", "127.0.0.1", "-P",
                          str(tunnels["deadmy"].port), "-u", "alice", "-e", "select 1"])
            assert r.returncode == 1 and "ERROR 1105 (HY000)" in r.stderr and "Connection refused" in r.stderr, \
                r.stderr
            r = await sh([redis_cli, "-h", "127.0.0.1", "-p", str(tunnels["deadredis"].port), "ping"])
            assert r.stdout.startswith("ERR database 'deadredis' is unavailable"), r.stdout + r.stderr

            import pymongo

            def mongo() -> Any:
                c: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
                    f"mongodb://127.0.0.1:{tunnels['deadmongo'].port}/?directConnection=true",
                    serverSelectionTimeoutMS=1500)
                try:
                    return c.app.command("ping")
                finally:
                    c.close()

            with pytest.raises(pymongo.errors.PyMongoError, match="is unavailable"):
                await asyncio.to_thread(mongo)
        finally:
            for t in tunnels.values():
                await t.stop()
        assert env.service.stats["unavailable"] >= 4
    finally:
        await stop_env(env)


def test_cli_help_lists_db_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["db", "--help"])
    out = capsys.readouterr().out
    for word in ("ls", "login", "connect", "env", "config"):
        assert word in out
