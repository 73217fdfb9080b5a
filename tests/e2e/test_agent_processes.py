"""Agents as real processes (issue: agents and reverse tunnels), driven only through the CLI.

A cluster process (Auth + Proxy in separate-listener mode: web port and tunnel port 3024-style)
and two agent processes with the ``db`` role: one reaches the proxy through a real squid on
127.0.0.2 (``HTTPS_PROXY``), one directly. Both join with a token, appear in ``tpemu db ls`` and
are reached through their tunnels by psql. Then: an agent is killed with SIGKILL — its database
disappears after the heartbeat window and psql gets a clear error; the cluster process is
restarted — the other agent reconnects within its backoff bound and psql works again; squid's
access log shows the tunnel went through it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import realservers
from tpemu import pki

pytestmark = pytest.mark.e2e
TPEMU = str(Path(sys.executable).with_name("tpemu"))
PASSWORD = "agents are tunnelling"


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TPEMU, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


class Proc:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.log_path, self.env = args, log, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log_path.open("ab") as f:
            self.proc = subprocess.Popen([TPEMU, *self.args], stdout=f, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(self.env or {})})
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 20.0, after: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log()[after:]:
            assert self.proc is not None and self.proc.poll() is None, f"exited:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"{text!r} not in log:\n{self.log()[-3000:]}"
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


def psql_select(home: Path, name: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """``tpemu proxy db --tunnel`` + psql through it; returns psql's result."""
    port = realservers.free_port()
    tunnel = subprocess.Popen([TPEMU, "proxy", "db", name, "--tunnel", "--port", str(port), "--home", str(home)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        realservers.wait_tcp("127.0.0.1", port, 15)
        return subprocess.run(["psql", f"host=127.0.0.1 port={port} user=alice dbname=postgres sslmode=disable",
                               "-tAc", "select 40 + 2"], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
    finally:
        tunnel.terminate()
        tunnel.wait(10)


def test_two_agent_processes_kill_and_restart(tmp_path: Path, procs: list[Proc]) -> None:
    realservers.binary("psql")
    web, tunnel_port, ssh = (realservers.free_port() for _ in range(3))
    cluster_dir = tmp_path / "cluster"
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(f"""teleport: {{data_dir: {cluster_dir}, log: {{severity: INFO}}}}
auth_service: {{listen_addr: "127.0.0.1:0", proxy_listener_mode: separate, keep_alive_interval: 1s,
               keep_alive_count_max: 3}}
proxy_service: {{web_listen_addr: "127.0.0.1:{web}", tunnel_listen_addr: "127.0.0.1:{tunnel_port}",
                listen_addr: "127.0.0.1:{ssh}"}}
ssh_service: {{enabled: no}}
""")
    cluster = Proc(["start", "--config", str(cfg)], tmp_path / "cluster.log").start()
    procs.append(cluster)
    cluster.wait_log("listeners:")
    pin = pki.ca_pin(pki.load_certs((cluster_dir / "pki" / "ca.crt").read_bytes())[0])
    out = run("tokens", "add", "--type", "db", "--ttl", "1h", "--format", "json", "--data-dir", str(cluster_dir))
    assert out.returncode == 0, out.stderr
    token = json.loads(out.stdout)["metadata"]["name"]
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    out = run("users", "add", "alice", "--db-users", "alice", "--db-names", "postgres", "--password-file", str(pw),
              "--data-dir", str(cluster_dir))
    assert out.returncode == 0, out.stderr

    with realservers.squid(tmp_path) as squid:
        agents = {}
        for name, env in (("pga", {"HTTPS_PROXY": squid.url, "TPEMU_PROXY_LOOPBACK": "yes"}), ("pgb", {})):
            acfg = tmp_path / f"{name}.yaml"
            acfg.write_text(f"""teleport: {{data_dir: {tmp_path / name}, nodename: agent-{name}}}
auth_service: {{enabled: no, keep_alive_interval: 1s, keep_alive_count_max: 3}}
proxy_service: {{enabled: no}}
db_service:
  enabled: yes
  databases: [{{name: {name}, protocol: postgres, uri: emulated}}]
""")
            agent = Proc(["start", "--config", str(acfg), "--roles", "db", "--token", token, "--proxy",
                          f"127.0.0.1:{web}", "--ca-pin", pin], tmp_path / f"{name}.log", env).start()
            procs.append(agent)
            agents[name] = agent
        for agent in agents.values():
            agent.wait_log("up (SSH tunnel port")
        home = tmp_path / "home"
        out = run("login", "--proxy", f"127.0.0.1:{web}", "--user", "alice", "--password-file", str(pw), "--home",
                  str(home), "--ca", str(cluster_dir / "pki" / "ca.crt"))
        assert out.returncode == 0, out.stderr
        out = run("db", "ls", "--home", str(home))
        assert out.returncode == 0 and "pga" in out.stdout and "pgb" in out.stdout, out.stdout + out.stderr
        for name in ("pga", "pgb"):
            res = psql_select(home, name, tmp_path)
            assert res.stdout.strip() == "42", res.stderr

        # Kill an agent: the proxy knows at once (its tunnel is gone) and db ls says "disconnected"
        # until the Auth Service's inventory expires the announcement (issue 16: it was listed as
        # alive for 14 s). With this cluster's 1 s heartbeats the announcement may already be gone.
        agents["pgb"].stop(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while True:
            lines = [line for line in run("db", "ls", "--home", str(home)).stdout.splitlines()
                     if line.split()[:1] == ["pgb"]]
            if not lines or "disconnected" in lines[0]:
                break
            assert time.monotonic() < deadline, f"pgb still listed as alive: {lines}"
            time.sleep(0.2)
        res = psql_select(home, "pgb", tmp_path)
        assert res.returncode != 0 and "pgb" in res.stderr and ("not found" in res.stderr or "offline" in res.stderr), \
            res.stderr

        # Restart the cluster process: the other agent reconnects within its backoff bound.
        mark = len(agents["pga"].log())
        cluster.stop()
        agents["pga"].wait_log("reconnecting", after=mark)
        time.sleep(2)
        cluster.start()
        cluster.wait_log("listeners:", after=0)
        t0 = time.monotonic()
        agents["pga"].wait_log("up (SSH tunnel port", timeout=20, after=mark)
        assert time.monotonic() - t0 < 15  # the default backoff tops out at 10 s
        res = psql_select(home, "pga", tmp_path)
        assert res.stdout.strip() == "42", res.stderr
        agents["pga"].stop()
        # squid writes a CONNECT line when a tunnel ends: the join (web port) and the tunnel port.
        deadline = time.monotonic() + 10
        while f"CONNECT 127.0.0.1:{tunnel_port}" not in squid.log():
            assert time.monotonic() < deadline, squid.log()
            time.sleep(0.2)
        assert f"CONNECT 127.0.0.1:{web}" in squid.log()
