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
from dataclasses import dataclass, field
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
    with lab.exclusive():  # one lab per machine: other checkouts' tests wait their turn
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


@dataclass
class Lab:
    """The running lab cluster: where things are and how to drive them."""

    procs: Procs
    d: Path
    pin: str = ""
    proxies: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def tctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return ns_run("auth", TPEMU, *args, "--data-dir", str(self.d / "auth"))

    def token(self, kind: str) -> str:
        out = self.tctl("tokens", "add", "--type", kind, "--ttl", "1h", "--format", "json")
        assert out.returncode == 0, out.stderr
        return str(json.loads(out.stdout)["metadata"]["name"])

    def start_auth(self) -> None:
        """Auth in the private network."""
        auth, d = lab.HOST["auth"], self.d
        (d / "auth.yaml").write_text(f"""teleport: {{data_dir: {d / 'auth'}, log: {{severity: INFO}}}}
auth_service: {{listen_addr: "{auth.addr}:3025", cluster_name: lab.tpemu, keep_alive_interval: 1s}}
proxy_service: {{enabled: no}}
ssh_service: {{enabled: no}}
""")
        p = self.procs.start("auth", [TPEMU, "start", "-c", str(d / "auth.yaml"), "--roles", "auth"], d / "auth.log")
        ns_wait("auth", auth.addr, 3025, p, d / "auth.log")
        self.pin = json.loads((d / "auth" / "auth" / "admin.json").read_text())["ca_pin"]

    def start_proxy(self, name: str) -> None:
        """A proxy in the public network behind the LB (public_addr, PROXY protocol, peering on 3021)."""
        host, auth, lb, d = lab.HOST[name], lab.HOST["auth"], lab.HOST["lb"], self.d
        (d / f"{name}.yaml").write_text(f"""teleport: {{data_dir: {d / name}, nodename: {name},
           log: {{severity: INFO}}, auth_server: "{auth.addr}:3025", auth_token: {self.token("proxy")},
           ca_pin: ["{self.pin}"]}}
auth_service: {{enabled: no, cluster_name: lab.tpemu, keep_alive_interval: 1s}}
proxy_service: {{web_listen_addr: "{host.addr}:3080", public_addr: ["{lb.addr}:443"], proxy_protocol: on,
                peer_listen_addr: "{host.addr}:3021"}}
ssh_service: {{enabled: no}}
""")
        p = self.procs.start(name, [TPEMU, "start", "-c", str(d / f"{name}.yaml"), "--roles", "proxy"],
                             d / f"{name}.log")
        ns_wait(name, host.addr, 3080, p, d / f"{name}.log")
        self.proxies[name] = p

    def start_lb(self, frontends: dict[int, tuple[str, ...]]) -> None:
        """HAProxy mode tcp: port → proxies (the first preferred, the others backups), PROXY v2."""
        lb, d = lab.HOST["lb"], self.d
        cfg = ["defaults", "  mode tcp", "  timeout connect 2s", "  timeout client 1h", "  timeout server 1h",
               "  retries 3", "  option redispatch"]
        for port, names in frontends.items():
            cfg += [f"frontend f{port}", f"  bind {lb.addr}:{port}", f"  default_backend b{port}", f"backend b{port}"]
            cfg += [f"  server {n} {lab.HOST[n].addr}:3080 send-proxy-v2 check inter 200ms fall 1 rise 1"
                    + (" backup" if i else "") for i, n in enumerate(names)]
        (d / "haproxy.cfg").write_text("\n".join(cfg) + "\n")
        p = self.procs.start("lb", [realservers.binary("haproxy"), "-db", "-f", str(d / "haproxy.cfg")], d / "lb.log")
        for port in frontends:
            ns_wait("client", lb.addr, port, p, d / "lb.log")

    def start_squid(self) -> None:
        squid, d = lab.HOST["squid"], self.d
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
        p = self.procs.start("squid", [realservers.binary("squid"), "-N", "-f", str(d / "squid.conf")],
                             d / "squid.log")
        ns_wait("agent", squid.addr, 3128, p, d / "squid.log")

    def start_agent(self, port: int) -> subprocess.Popen[bytes]:
        """The SSH agent in the agent network: its only way out is squid (HTTPS_PROXY)."""
        squid, lb, d = lab.HOST["squid"], lab.HOST["lb"], self.d
        env = {"HTTPS_PROXY": f"http://{squid.addr}:3128", "NO_PROXY": "localhost,127.0.0.1"}
        (d / "agent.yaml").write_text(f"""teleport: {{data_dir: {d / 'agent'}, nodename: agent1,
           log: {{severity: INFO}}}}
auth_service: {{enabled: no, keep_alive_interval: 1s}}
proxy_service: {{enabled: no}}
ssh_service: {{enabled: yes, listen_addr: "127.0.0.1:0"}}
""")
        return self.procs.start("agent", [TPEMU, "start", "-c", str(d / "agent.yaml"), "--roles", "node", "--token",
                                          self.token("node"), "--proxy", f"{lb.addr}:{port}", "--ca-pin", self.pin],
                                d / "agent.log", env)

    def login(self) -> Path:
        pw, home = self.d / "pw", self.d / "home"
        pw.write_text(PASSWORD)
        out = self.tctl("users", "add", "alice", "--logins", "alice,root", "--password-file", str(pw))
        assert out.returncode == 0, out.stderr
        out = ns_run("client", TPEMU, "login", "--proxy", f"{lab.HOST['lb'].addr}:443", "--user", "alice",
                     "--password-file", str(pw), "--insecure", "--home", str(home))
        assert out.returncode == 0, out.stderr + out.stdout
        return home

    def ssh_until_ok(self, home: Path, text: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``tpemu ssh`` from the client network, retried until the node answers (its tunnel and
        heartbeat may still be on their way)."""
        deadline = time.monotonic() + timeout
        while True:
            out = ns_run("client", TPEMU, "ssh", f"--home={home}", "alice@agent1", "echo", text)
            if (out.returncode == 0 and out.stdout.strip() == text) or time.monotonic() > deadline:
                return out
            time.sleep(0.2)


def test_squid_only_agent_joins_and_serves(lab_env: Procs) -> None:
    lb, squid = lab.HOST["lb"], lab.HOST["squid"]
    with realservers.server_dir("lab") as d:
        c = Lab(lab_env, d)
        c.start_auth()
        c.start_proxy("proxy-a")
        c.start_lb({443: ("proxy-a",)})
        c.start_squid()
        # The agent network's only way out is squid.
        assert not ns_open("agent", lb.addr, 443)
        c.start_agent(443)
        home = c.login()
        out = c.ssh_until_ok(home, "served-from-the-lab")
        assert out.returncode == 0 and out.stdout.strip() == "served-from-the-lab", (
            out.stderr + (d / "agent.log").read_text(errors="replace")[-3000:])
        access = (d / "squid" / "access.log").read_text(errors="replace")
        assert f"CONNECT {lb.addr}:443" in access, access
        # The proxy logged the agent's real address as squid sent it (PROXY v2 from the LB).
        assert f"peer={squid.addr}:" in (d / "proxy-a.log").read_text(errors="replace")


def test_two_proxies_peering_and_sigkill_failover(lab_env: Procs) -> None:
    """Clients enter at A (LB :443), the agent at B (LB :3080): SSH goes A → peer → B → agent.
    Then proxy B is killed with SIGKILL: the agent re-tunnels through squid and the LB to A, and
    SSH through A works again; the time is measured and printed."""
    with realservers.server_dir("lab") as d:
        c = Lab(lab_env, d)
        c.start_auth()
        c.start_proxy("proxy-a")
        c.start_proxy("proxy-b")
        c.start_lb({443: ("proxy-a", "proxy-b"), 3080: ("proxy-b", "proxy-a")})
        c.start_squid()
        c.start_agent(3080)
        home = c.login()
        out = c.ssh_until_ok(home, "via-peer")
        assert out.returncode == 0, out.stderr + (d / "agent.log").read_text(errors="replace")[-3000:]
        a_log = (d / "proxy-a.log").read_text(errors="replace")
        assert "through peer proxy proxy-b" in a_log, a_log[-3000:]
        killed = time.monotonic()
        c.proxies["proxy-b"].kill()
        c.proxies["proxy-b"].wait(10)
        out = c.ssh_until_ok(home, "after-sigkill", timeout=40)
        resumed = time.monotonic() - killed
        assert out.returncode == 0, out.stderr + (d / "agent.log").read_text(errors="replace")[-3000:]
        print(f"\nlab: proxy B SIGKILLed; SSH through A to the re-tunnelled agent after {resumed:.2f}s")
        # The agent's backoff bound (agent/tunnel.py: 0.5 s doubling to 10 s) + the LB's 200 ms check.
        assert resumed < 15
