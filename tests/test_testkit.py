"""tpemu's public test API (``tpemu.Cluster``, ``tpemu.SyncCluster``) and its pytest plugin, used as a
user's test suite would: the fixtures come from the ``pytest11`` entry point, the clients are real
(psycopg, asyncpg, redis-py, PyMySQL, pymongo, the tpemu CLI, OpenSSH's ssh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import asyncpg
import psycopg
import pymongo
import pymysql
import pytest
import redis

import tpemu
from tests.conftest import need
from tpemu.testkit import Cluster, SyncCluster, SyncUser

TPEMU = str(Path(sys.executable).parent / "tpemu")


def test_public_names() -> None:
    assert tpemu.Cluster is Cluster and tpemu.SyncCluster is SyncCluster
    with pytest.raises(AttributeError, match="no attribute 'Clusterr'"):
        _ = tpemu.Clusterr  # type: ignore[attr-defined]


def test_every_database_through_the_fixture_user(tpemu_user: SyncUser) -> None:
    with psycopg.connect(tpemu_user.db_url("pg")) as conn:  # straight to the proxy, verify-full TLS
        assert conn.execute("select 40 + 2").fetchone() == (42,)
    env = tpemu_user.db_env("pg")
    assert env["PGSSLMODE"] == "verify-full" and env["PGUSER"] == "alice" and Path(env["PGSSLCERT"]).exists()
    with psycopg.connect("", **{k.removeprefix("PG").lower(): v for k, v in env.items()
                                if k != "PGDATABASE"}, dbname=env["PGDATABASE"]) as conn:
        assert conn.execute("select current_user").fetchone() == ("alice",)
    port = tpemu_user.tunnel("redis")
    assert tpemu_user.tunnel("redis") == port  # the same route, the same tunnel
    r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)
    assert r.set("k", "v") and r.get("k") == b"v"
    assert tpemu_user.db_url("redis") == f"redis://127.0.0.1:{port}/0"
    mongo = pymongo.MongoClient(tpemu_user.db_url("mongo"), serverSelectionTimeoutMS=10000)
    try:
        assert mongo.get_default_database().command("ping")["ok"] == 1.0
    finally:
        mongo.close()
    my_port = tpemu_user.tunnel("mysql", db_name="")
    conn = pymysql.connect(host="127.0.0.1", port=my_port, user="alice", connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("select 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()
    with pytest.raises(LookupError, match=r"no database 'nope' \(databases: mongo, mysql, pg, redis\)"):
        tpemu_user.db_url("nope")
    with pytest.raises(ValueError, match="db_env is for Postgres databases; redis is redis"):
        tpemu_user.db_env("redis")


@pytest.mark.tpemu_user("bob", logins=("root",), db_users=("bob", "reader"), db_names=("app", "postgres"))
def test_user_marker_and_other_routes(tpemu_user: SyncUser) -> None:
    assert tpemu_user.name == "bob"
    assert "postgresql://bob@" in tpemu_user.db_url("pg") and "/app?" in tpemu_user.db_url("pg")
    with psycopg.connect(tpemu_user.db_url("pg", db_user="reader", db_name="postgres")) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == ("reader", "postgres")
    # A route the user is not allowed: the certificate is issued, the Database Service refuses it.
    with pytest.raises(psycopg.OperationalError, match="access to db denied"):
        psycopg.connect(tpemu_user.db_url("pg", db_user="root"), connect_timeout=10)


def test_reset_deletes_users_and_empties_databases(tpemu_cluster: SyncCluster) -> None:
    carol = tpemu_cluster.user("carol")
    r = redis.Redis(host="127.0.0.1", port=carol.tunnel("redis"), socket_timeout=10)
    r.set("left-over", "1")
    home = carol.home
    tpemu_cluster.reset()
    assert not home.exists()
    dave = tpemu_cluster.user("dave")
    assert redis.Redis(host="127.0.0.1", port=dave.tunnel("redis"), socket_timeout=10).get("left-over") is None
    users = subprocess.run([TPEMU, "users", "ls", "--format", "json", "-d", str(tpemu_cluster.cluster.data_dir)],
                           capture_output=True, text=True, timeout=30)
    assert users.returncode == 0, users.stderr
    assert "dave" in users.stdout and "carol" not in users.stdout


@pytest.mark.e2e
@pytest.mark.tpemu_cluster(nodes=("web1", "web2"), databases=(), mode="separate")
def test_cluster_marker_nodes_cli_and_openssh(tpemu_cluster: SyncCluster, tpemu_user: SyncUser) -> None:
    env = {**os.environ, **tpemu_user.env()}
    ls = subprocess.run([TPEMU, "ls", "--format", "json"], env=env, capture_output=True, text=True, timeout=30)
    assert ls.returncode == 0, ls.stderr
    assert sorted(n["hostname"] for n in json.loads(ls.stdout)) == ["web1", "web2"]
    ssh = subprocess.run(["ssh", "-F", str(tpemu_user.ssh_config()), "-o", "BatchMode=yes",
                          tpemu_user.ssh_target("web2"), "echo $((6 * 7))"], capture_output=True, text=True, timeout=30)
    assert (ssh.returncode, ssh.stdout) == (0, "42\n"), ssh.stderr


@pytest.mark.e2e
@pytest.mark.tpemu_cluster(nodes=(), databases=(), kube="emu", apps=True)
def test_cluster_marker_kube_and_apps_with_kubectl_and_curl(tpemu_cluster: SyncCluster,
                                                            tpemu_user: SyncUser) -> None:
    kubectl, curl = need("kubectl"), need("curl")
    kubeconfig = tpemu_user.kubeconfig()  # tpemu kube login emu
    env = {**os.environ, **tpemu_user.env(), "NO_PROXY": "*"}
    assert env["KUBECONFIG"] == str(kubeconfig)
    res = subprocess.run([kubectl, "--request-timeout=20s", "get", "namespaces", "-o", "name"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "namespace/default" in res.stdout.split(), res.stderr
    login = tpemu_user.app_login("echo")  # tpemu apps login echo: curl through the web port, by SNI
    command = login.curl().split()
    assert command[0] == "curl" and command[-1] == login.url()
    res = subprocess.run([curl, "-sS", *command[1:-1], login.url() + "from-testkit"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    echoed = json.loads(res.stdout)
    assert echoed["path"] == "/from-testkit" and echoed["headers"]["teleport-jwt-assertion"].count(".") == 2


async def test_kube_refusal_and_a_tcp_app_tunnel(tmp_path: Path) -> None:
    import asyncio

    from tpemu.client.kube import KubeError

    async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    backend = await asyncio.start_server(upper, "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    try:
        async with Cluster(tmp_path, nodes=(), databases=(), kube="emu",
                           apps=[{"name": "upper", "uri": f"tcp://127.0.0.1:{port}"}]) as c:
            carol = await c.user("carol", kube_groups=())
            with pytest.raises(KubeError, match="does not allow Kubernetes access"):
                await carol.kubeconfig()
            alice = await c.user("alice")
            local = await alice.app_tunnel("upper")
            assert await alice.app_tunnel("upper") == local  # one tunnel per app
            reader, writer = await asyncio.open_connection("127.0.0.1", local)
            writer.write(b"through teleport-tcp")
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(20), 10) == b"THROUGH TELEPORT-TCP"
            writer.close()
            assert (await alice.kubeconfig()).read_text().count("server: https://") == 1
    finally:
        backend.close()


async def test_async_cluster(tmp_path: Path) -> None:
    async with Cluster(tmp_path, nodes=(), databases=[{"name": "only", "protocol": "postgres"}]) as c:
        assert [r.name for r in c.databases()] == ["only"]
        user = await c.user("erin")
        conn = await asyncpg.connect(await user.db_url("only"), timeout=10)
        try:
            assert await conn.fetchval("select 7") == 7
        finally:
            await conn.close()
        assert c.db_service().stats["served"] == 1
    assert not (tmp_path / "data").exists() or tmp_path.exists()  # a given folder is left in place


async def test_async_fixture(tpemu_async_cluster: Cluster) -> None:
    user = await tpemu_async_cluster.user()
    assert (await user.db_env())["PGHOST"] == "127.0.0.1"


def test_bad_options_are_clear() -> None:
    with pytest.raises(ValueError, match="mode must be multiplex or separate, got 'both'"):
        Cluster(mode="both")
    with pytest.raises(RuntimeError, match="not running"):
        SyncCluster().reset()


def test_tpemu_only_proxy_keys_warn_and_the_tpemu_section_takes_them(tmp_path: Path) -> None:
    # The config loader moves tpemu's old spelling (proxy_service.sniff_timeout) under tpemu:, as
    # `tpemu start` does for a file; a test author hears of it as a file's author does.
    with pytest.warns(DeprecationWarning, match=r"'sniff_timeout' is tpemu-only: pass it as "
                                                r"Cluster\(tpemu=\{'proxy_service': \{'sniff_timeout'"):
        moved = Cluster(tmp_path / "a", proxy={"sniff_timeout": "3s"})
    assert moved.cfg.tpemu.proxy_service.sniff_timeout == 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        direct = Cluster(tmp_path / "b", tpemu={"proxy_service": {"sniff_timeout": "4s"}})
    assert direct.cfg.tpemu.proxy_service.sniff_timeout == 4.0
    with pytest.warns(DeprecationWarning), pytest.raises(tpemu.config.ConfigError, match="set twice"):
        Cluster(tmp_path / "c", proxy={"sniff_timeout": "3s"}, tpemu={"proxy_service": {"sniff_timeout": "4s"}})
