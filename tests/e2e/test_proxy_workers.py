"""``tpemu.proxy_service.workers: 2`` (:mod:`tpemu.proxy.workers`), driven through the CLI.

A cluster process (Auth, a proxy with two workers on one web port, an agent with an emulated
Postgres holding one reverse tunnel) and real asyncpg connections with the user's database
certificate, each a new TCP connection the kernel hands to either worker (``SO_REUSEPORT``): all
must work, so the worker without the agent's tunnel reaches it through its sibling; the log shows
both workers accepting and a dial through a sibling. Stopping the cluster stops the child worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import realservers

pytestmark = pytest.mark.e2e
TPEMU = str(Path(sys.executable).with_name("tpemu"))
PASSWORD = "two workers one port"


def tpemu(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TPEMU, *args], capture_output=True, text=True, timeout=timeout)


def wait_log(proc: subprocess.Popen[bytes], log: Path, text: str, timeout: float = 40.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in (got := log.read_text(errors="replace")):
        assert proc.poll() is None, f"exited:\n{got[-3000:]}"
        assert time.monotonic() < deadline, f"{text!r} not in log:\n{got[-3000:]}"
        time.sleep(0.1)
    return got


def children_of(pid: int) -> list[int]:
    """``pid``'s child worker processes (``python -m tpemu …``): any other, short-lived child a
    library might start is not a worker."""
    try:
        kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    workers = []
    for kid in kids:
        try:
            argv = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # already gone
        if argv[1:3] == [b"-m", b"tpemu"]:
            workers.append(kid)
    return workers


async def sixteen_queries(home: Path, web: int) -> list[int]:
    """16 ``select 40 + 2``, each on a new TCP connection: the kernel spreads them over both
    workers (all 16 on one: 2 * 0.5^16). Polled, not slept: the tunnel and inventory settle first."""
    import asyncpg

    from tpemu.client import db as db_mod
    from tpemu.client import profile as profile_mod
    from tpemu.wire import alpn

    prof = profile_mod.current(home)
    assert prof is not None
    login = await db_mod.db_login(prof, "pg", "alice", "postgres")
    ctx = ssl.create_default_context(cafile=login.ca_path)
    ctx.load_cert_chain(login.cert_path, login.key_path)
    ctx.set_alpn_protocols([alpn.POSTGRES])
    ctx.check_hostname = False
    deadline = time.monotonic() + 30
    answers: list[int] = []
    while len(answers) < 16:
        try:
            conn = await asyncpg.connect(host="127.0.0.1", port=web, user="alice", database="postgres", ssl=ctx,
                                         direct_tls=True, timeout=10)
        except (OSError, asyncpg.PostgresError) as exc:
            assert time.monotonic() < deadline and not answers, f"connection {len(answers) + 1} failed: {exc}"
            await asyncio.sleep(0.2)
            continue
        try:
            answers.append(await conn.fetchval("select 40 + 2"))
        finally:
            await conn.close()
    return answers


def test_two_workers_serve_one_port_and_reach_a_tunnel_held_by_either(tmp_path: Path) -> None:
    pytest.importorskip("asyncpg", reason="asyncpg is a test dependency (pip install -e '.[test]')")
    web, auth = realservers.free_port(), realservers.free_port()
    data = tmp_path / "data"
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(f"""teleport: {{data_dir: {data}, nodename: workers-node, log: {{severity: INFO}}}}
auth_service: {{listen_addr: "127.0.0.1:{auth}"}}
proxy_service: {{web_listen_addr: "127.0.0.1:{web}"}}
ssh_service: {{enabled: no}}
db_service:
  enabled: yes
  databases: [{{name: pg, protocol: postgres, uri: emulated}}]
tpemu:
  proxy_service: {{workers: 2}}
""")
    log = tmp_path / "cluster.log"
    with log.open("wb") as f:
        proc = subprocess.Popen([TPEMU, "start", "--config", str(cfg)], stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_log(proc, log, "agent:")
        assert "proxy worker 1 of 2" in log.read_text()
        child = children_of(proc.pid)
        assert len(child) == 1, child
        pw = tmp_path / "pw"
        pw.write_text(PASSWORD)
        out = tpemu("users", "add", "alice", "--db-users", "alice", "--db-names", "postgres", "--password-file",
                    str(pw), "--data-dir", str(data))
        assert out.returncode == 0, out.stderr
        home = tmp_path / "home"
        out = tpemu("login", "--proxy", f"127.0.0.1:{web}", "--user", "alice", "--password-file", str(pw), "--home",
                    str(home), "--ca", str(data / "pki" / "ca.crt"))
        assert out.returncode == 0, out.stderr
        answers = asyncio.run(sixteen_queries(home, web))
        assert answers == [42] * 16
        text = wait_log(proc, log, "(the first dial through a sibling")
        assert "a tunnel held by worker" in text
    finally:
        child = children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    for pid in child:  # the child worker went with worker 0
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
            assert time.monotonic() < deadline, f"worker {pid} still running after worker 0 stopped"
            time.sleep(0.1)
    assert os.environ.get("TPEMU_PROXY_WORKER") is None


def test_sigterm_during_start_up_still_shuts_down_cleanly(tmp_path: Path) -> None:
    """A SIGTERM as soon as worker 0 answers (before its children are ready: what a bench or a test
    stopping a cluster it just saw answer does) ends in a clean shutdown: exit 0, the child gone,
    worker 0's short socket folder (the data dir is too deep for a socket path) removed."""
    import re
    import socket

    web, auth = realservers.free_port(), realservers.free_port()
    data = tmp_path / ("d" * 100) / "data"
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(f"""teleport: {{data_dir: {data}, nodename: workers-node, log: {{severity: INFO}}}}
auth_service: {{listen_addr: "127.0.0.1:{auth}"}}
proxy_service: {{web_listen_addr: "127.0.0.1:{web}"}}
ssh_service: {{enabled: no}}
tpemu:
  proxy_service: {{workers: 2}}
""")
    log = tmp_path / "cluster.log"
    with log.open("wb") as f:
        proc = subprocess.Popen([TPEMU, "start", "--config", str(cfg)], stdout=f, stderr=subprocess.STDOUT)
    try:
        text = wait_log(proc, log, "proxy workers: sockets in ")
        folder = Path(re.search(r"sockets in (\S+) ", text).group(1))  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", web), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
                time.sleep(0.02)
        kids = children_of(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert not folder.exists(), log.read_text()[-3000:]
    for pid in kids:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
            assert time.monotonic() < deadline, f"worker {pid} still running after worker 0 stopped"
            time.sleep(0.1)
