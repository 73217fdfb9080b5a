"""The seed's topology, for real, in ``tpemu lab``: a squid-only agent joins and serves.

Every process runs in its own namespace, driven through the CLI only:

* ``auth`` (private net): ``tpemu start --roles auth`` on 10.77.2.10:3025;
* ``proxy-a`` (public net): ``tpemu start --roles proxy`` joined to it with a proxy token,
  ``public_addr`` = the load balancer, ``proxy_protocol: on``;
* ``lb`` (public net): HAProxy ``mode tcp`` on 10.77.1.10:443 → proxy-a, PROXY v2;
* ``squid`` (agent net): the agent network's only way out;
* ``agent`` (agent net): ``HTTPS_PROXY=http://10.77.3.10:3128``, joins through the LB and serves SSH;
* ``client`` (client net): ``tpemu login`` through the LB and ``tpemu ssh`` to the agent.

The agent cannot reach the LB without squid (the router drops it); squid's log shows the CONNECT;
``lab down`` leaves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import realservers
from tpemu import lab

pytestmark = pytest.mark.e2e
TPEMU = str(Path(sys.executable).with_name("tpemu"))
PASSWORD = "lab password"
PROBE = ("import socket,sys\n"
         "try:\n  socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close(); print('open')\n"
         "except OSError as e: print('closed', type(e).__name__)\n")


def ns_run(host: str, *argv: str, env: dict[str, str] | None = None,
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", lab.HOST[host].ns, *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, check=False)


def ns_open(host: str, addr: str, port: int) -> bool:
    return ns_run(host, sys.executable, "-c", PROBE, addr, str(port), timeout=10).stdout.startswith("open")


def ns_wait(host: str, addr: str, port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ns_open(host, addr, port):
        assert proc.poll() is None, f"exited:\n{log.read_text(errors='replace')[-3000:]}"
        assert time.monotonic() < deadline, f"{addr}:{port} not up:\n{log.read_text(errors='replace')[-3000:]}"
        time.sleep(0.1)


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, host: str, argv: list[str], log: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", lab.HOST[host].ns, *argv], stdout=out,
                                    stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            realservers.stop(proc, 10)


@pytest.fixture
def lab_env() -> Iterator[Procs]:
    if os.geteuid() != 0:
        pytest.skip("tpemu lab needs root")
    for tool in ("nft", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"tpemu lab needs {tool} (make test installs it)")
    realservers.binary("haproxy")
    realservers.binary("squid")
    if lab.namespaces():
        pytest.skip(f"a lab is already up here ({', '.join(lab.namespaces())}); not touching it")
    lab.up()
    procs = Procs()
    try:
        yield procs
    finally:
        procs.stop()
        lab.down()
        assert lab.namespaces() == []


def test_squid_only_agent_joins_and_serves(lab_env: Procs) -> None:
    auth, proxy, lb, squid = (lab.HOST[n] for n in ("auth", "proxy-a", "lb", "squid"))
    with realservers.server_dir("lab") as d:
        # Auth in the private network.
        (d / "auth.yaml").write_text(f"""teleport: {{data_dir: {d / 'auth'}, log: {{severity: INFO}}}}
auth_service: {{listen_addr: "{auth.addr}:3025", cluster_name: lab.tpemu, keep_alive_interval: 1s}}
proxy_service: {{enabled: no}}
ssh_service: {{enabled: no}}
""")
        p = lab_env.start("auth", [TPEMU, "start", "-c", str(d / "auth.yaml"), "--roles", "auth"], d / "auth.log")
        ns_wait("auth", auth.addr, 3025, p, d / "auth.log")
        info = json.loads((d / "auth" / "auth" / "admin.json").read_text())
        pin = info["ca_pin"]

        def tctl(*args: str) -> subprocess.CompletedProcess[str]:
            return ns_run("auth", TPEMU, *args, "--data-dir", str(d / "auth"))

        out = tctl("tokens", "add", "--type", "proxy", "--ttl", "1h", "--format", "json")
        assert out.returncode == 0, out.stderr
        proxy_token = json.loads(out.stdout)["metadata"]["name"]
        # The proxy in the public network, behind the LB.
        (d / "proxy.yaml").write_text(f"""teleport: {{data_dir: {d / 'proxy'}, nodename: proxy-a,
           log: {{severity: INFO}}, auth_server: "{auth.addr}:3025", auth_token: {proxy_token}, ca_pin: ["{pin}"]}}
auth_service: {{enabled: no, cluster_name: lab.tpemu}}
proxy_service: {{web_listen_addr: "{proxy.addr}:3080", public_addr: ["{lb.addr}:443"], proxy_protocol: on,
                peer_listen_addr: "{proxy.addr}:3021"}}
ssh_service: {{enabled: no}}
""")
        p = lab_env.start("proxy-a", [TPEMU, "start", "-c", str(d / "proxy.yaml"), "--roles", "proxy"], d / "proxy.log")
        ns_wait("proxy-a", proxy.addr, 3080, p, d / "proxy.log")
        (d / "haproxy.cfg").write_text(f"""defaults
  mode tcp
  timeout connect 2s
  timeout client 1h
  timeout server 1h
frontend web
  bind {lb.addr}:443
  default_backend proxies
backend proxies
  server a {proxy.addr}:3080 send-proxy-v2
""")
        p = lab_env.start("lb", [realservers.binary("haproxy"), "-db", "-f", str(d / "haproxy.cfg")], d / "lb.log")
        ns_wait("client", lb.addr, 443, p, d / "lb.log")
        (d / "squid").mkdir()
        shutil.chown(d / "squid", "proxy", "proxy")
        (d / "squid.conf").write_text(f"""http_port {squid.addr}:3128
acl agents src {lab.AGENTS.subnet}
http_access allow agents
http_access deny all
cache deny all
cache_mem 8 MB
cache_effective_user proxy
pid_filename {d}/squid/squid.pid
cache_log {d}/squid/cache.log
access_log stdio:{d}/squid/access.log
coredump_dir {d}/squid
shutdown_lifetime 1 seconds
""")
        p = lab_env.start("squid", [realservers.binary("squid"), "-N", "-f", str(d / "squid.conf")], d / "squid.log")
        ns_wait("agent", squid.addr, 3128, p, d / "squid.log")

        # The agent network's only way out is squid.
        assert not ns_open("agent", lb.addr, 443)
        out = tctl("tokens", "add", "--type", "node", "--ttl", "1h", "--format", "json")
        node_token = json.loads(out.stdout)["metadata"]["name"]
        env = {"HTTPS_PROXY": f"http://{squid.addr}:3128", "NO_PROXY": "localhost,127.0.0.1"}
        (d / "agent.yaml").write_text(f"""teleport: {{data_dir: {d / 'agent'}, nodename: agent1,
           log: {{severity: INFO}}}}
auth_service: {{enabled: no, keep_alive_interval: 1s}}
proxy_service: {{enabled: no}}
ssh_service: {{enabled: yes, listen_addr: "127.0.0.1:0"}}
""")
        agent = lab_env.start("agent", [TPEMU, "start", "-c", str(d / "agent.yaml"), "--roles", "node", "--token",
                                        node_token, "--proxy", f"{lb.addr}:443", "--ca-pin", pin], d / "agent.log", env)
        pw = d / "pw"
        pw.write_text(PASSWORD)
        out = tctl("users", "add", "alice", "--logins", "alice,root", "--password-file", str(pw))
        assert out.returncode == 0, out.stderr
        home = d / "home"
        out = ns_run("client", TPEMU, "login", "--proxy", f"{lb.addr}:443", "--user", "alice", "--password-file",
                     str(pw), "--insecure", "--home", str(home))
        assert out.returncode == 0, out.stderr + out.stdout
        deadline = time.monotonic() + 30
        while True:  # the node appears once its tunnel is up and its heartbeat is in
            out = ns_run("client", TPEMU, "ssh", f"--home={home}", "alice@agent1", "echo", "served-from-the-lab")
            if out.returncode == 0 or time.monotonic() > deadline or agent.poll() is not None:
                break
            time.sleep(0.3)
        assert out.returncode == 0 and out.stdout.strip() == "served-from-the-lab", (
            out.stderr + (d / "agent.log").read_text(errors="replace")[-3000:])
        access = (d / "squid" / "access.log").read_text(errors="replace")
        assert f"CONNECT {lb.addr}:443" in access, access
        # The proxy logged the agent's real address as squid sent it (PROXY v2 from the LB).
        assert f"peer={squid.addr}:" in (d / "proxy.log").read_text(errors="replace")
