"""Faults the issue lists that no other test covers: Auth down while the proxy runs, and the
PostgreSQL backend restarted under a running Auth Service (issue 16).

(Backend kill, agent SIGKILL/restart and cluster restart are covered by
``tests/e2e/test_db_access.py::test_backend_down_is_a_clean_error``,
``tests/e2e/test_agent_processes.py::test_two_agent_processes_kill_and_restart`` and
``tests/agent/test_tunnel.py::test_proxy_restart_agent_reconnects_within_backoff``; ``make
reliability`` runs them with these.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import realservers
from tests.agent.test_tunnel import Echo, agent_for, join, roundtrip, wait_for
from tests.auth.conftest import PG_BIN, _free_port
from tpemu import authapi, authclient, config
from tpemu.auth.service import AuthService
from tpemu.testkit import Cluster
from tpemu.wire import tunnel as tw


async def test_auth_down_while_the_proxy_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with Cluster(tmp_path / "c", nodes=(), databases=()) as cluster:
        node = await join(cluster, "Node", "node1")
        agent = agent_for(cluster, node, Echo("node1"), "node1")
        agent.start()
        try:
            reg = cluster.proxy.tunnels
            await wait_for(lambda: bool(reg.resources("node")))
            await cluster.auth.close()
            # What the proxy holds keeps working: tunnels dial, the web API answers.
            sock = await reg.dial(tw.DialRequest(address="node1", conn_type="node"))
            assert await roundtrip(sock, b"a\n") == b"node1:a\n"
            ping = authclient.AuthClient.insecure(cluster.web, "the proxy")
            assert (await ping.call("GET", "/webapi/ping"))["cluster_name"] == cluster.cluster_name
            # What needs Auth fails at once with a clear error, not a hang or a traceback.
            async with asyncio.timeout(15):
                with pytest.raises(authapi.AuthAPIError) as info:
                    await ping.call("POST", "/webapi/ssh/certs", {"user": "alice", "password": "x"})
            assert info.value.status >= 500
        finally:
            await agent.close()
    assert "Traceback" not in caplog.text


@contextmanager
def pg_cluster() -> Iterator[tuple[str, list[str], Path]]:
    if not (PG_BIN / "initdb").exists() or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("a PostgreSQL server of our own needs the server binaries and root (make test installs them)")
    base = Path(tempfile.mkdtemp(prefix="tpemu-pgfault-"))
    base.chmod(0o755)
    realservers.claim(base)  # pg_ctl daemonizes: a killed run's server is stopped by the next run
    data = base / "data"
    subprocess.run(["chown", "postgres:postgres", str(base)], check=True)
    port = _free_port()
    run = ["runuser", "-u", "postgres", "--"]
    ctl = [*run, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "30"]
    subprocess.run([*run, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync",
                    "-E", "UTF8", "--locale=C.UTF-8"], check=True, capture_output=True, timeout=60)
    with (data / "postgresql.conf").open("a") as f:
        f.write(f"\nlisten_addresses='127.0.0.1'\nport={port}\nunix_socket_directories='{base}'\nfsync=off\n")
    subprocess.run([*ctl, "start"], check=True, capture_output=True, timeout=60)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", ctl, base
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], check=False, capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.e2e
async def test_postgres_backend_restart_under_the_auth_service(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with pg_cluster() as (url, ctl, _):
        cfg = config.from_dict({"teleport": {"data_dir": str(tmp_path / "auth"),
                                             "storage": {"type": "postgresql", "conn_string": url}},
                                "auth_service": {"listen_addr": "127.0.0.1:0"}})
        auth = AuthService(cfg)
        await auth.start()
        try:
            assert auth.addr is not None
            admin = authclient.AuthClient.with_identity(auth.addr, "tpemu.local", auth.admin_files)
            await admin.call("POST", "/v1/tokens", {"roles": ["node"], "token": "before-restart"})
            await asyncio.to_thread(subprocess.run, [*ctl, "-m", "immediate", "stop"], check=True,
                                    capture_output=True, timeout=60)
            # Backend down: a clean 503 naming the backend, at once.
            async with asyncio.timeout(30):
                with pytest.raises(authapi.AuthAPIError) as info:
                    await admin.call("GET", "/v1/tokens")
            assert info.value.status == 503 and "backend" in info.value.message
            await asyncio.to_thread(subprocess.run, [*ctl, "start"], check=True, capture_output=True, timeout=60)
            # Back: the Auth Service reconnects by itself and nothing acknowledged was lost.
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                try:
                    tokens = (await admin.call("GET", "/v1/tokens"))["items"]
                    break
                except authapi.AuthAPIError:
                    assert asyncio.get_running_loop().time() < deadline, "the backend did not come back"
                    await asyncio.sleep(0.2)
            assert any(t["metadata"]["name"] == "before-restart" for t in tokens)
        finally:
            await auth.close()
    assert "Traceback" not in caplog.text
