"""``tpemu lab``: the seed's networks on one Linux machine, in network namespaces (glue over ``ip``/``nft``).

The topology of the seed (Teleport's networking reference): a public network with the load
balancer and two Proxy Service instances, a private network with the Auth Service and its
PostgreSQL, an agent network whose only way out is an HTTP CONNECT proxy (squid; agents use
``HTTPS_PROXY``/``NO_PROXY``), and a client network. Each host is a namespace; each network is a
bridge inside one router namespace, to which every host has a veth pair; the router forwards
between networks and its nftables ruleset lets through only what the seed allows:

* client → load balancer (443 and 3080), public → private (Auth 3025, PostgreSQL 5432);
* the agent network → the load balancer *only from the squid host*: an agent dialing the proxy
  directly is dropped, through squid it works;
* nothing reaches into the agent network (agents dial out: reverse tunnels).

Safety: everything lives in namespaces this module creates (names start with ``tpemu-lab-``),
addresses come from 10.77.0.0/16 inside them, no link or rule is added to the machine's own
namespace, and ``down`` deletes the namespaces (their links, addresses and rules go with them).
Root only. :func:`plan` is pure: the commands ``up`` runs, for ``--dry-run`` and tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tpemu.errors import LocalFault

PREFIX = "tpemu-lab-"
ROUTER = PREFIX + "router"
BASE = "10.77"


@dataclass(frozen=True)
class Net:
    name: str
    index: int  # 10.77.<index>.0/24; the router is .1

    @property
    def subnet(self) -> str:
        return f"{BASE}.{self.index}.0/24"

    @property
    def gateway(self) -> str:
        return f"{BASE}.{self.index}.1"


@dataclass(frozen=True)
class Host:
    name: str
    net: Net
    last: int
    role: str

    @property
    def ns(self) -> str:
        return PREFIX + self.name

    @property
    def addr(self) -> str:
        return f"{BASE}.{self.net.index}.{self.last}"


PUBLIC, PRIVATE, AGENTS, CLIENTS = Net("public", 1), Net("private", 2), Net("agents", 3), Net("clients", 4)
NETS = (PUBLIC, PRIVATE, AGENTS, CLIENTS)
HOSTS = (
    Host("lb", PUBLIC, 10, "load balancer (HAProxy, mode tcp, PROXY v2)"),
    Host("proxy-a", PUBLIC, 11, "Proxy Service A (peer_listen_addr :3021)"),
    Host("proxy-b", PUBLIC, 12, "Proxy Service B (peer_listen_addr :3021)"),
    Host("auth", PRIVATE, 10, "Auth Service (:3025)"),
    Host("pg", PRIVATE, 11, "PostgreSQL (the Auth backend)"),
    Host("squid", AGENTS, 10, "squid, the agents' only way out (:3128)"),
    Host("agent", AGENTS, 20, "agent (HTTPS_PROXY=http://squid:3128)"),
    Host("client", CLIENTS, 10, "client (tpemu, psql, ssh)"),
)
HOST = {h.name: h for h in HOSTS}


def ruleset() -> str:
    """The router's nftables ruleset (forwarding policy: drop)."""
    lb, squid = HOST["lb"].addr, HOST["squid"].addr
    return f"""table inet tpemu_lab {{
  chain forward {{
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    ip saddr {CLIENTS.subnet} ip daddr {lb} tcp dport {{ 443, 3080 }} accept
    ip saddr {PUBLIC.subnet} ip daddr {PRIVATE.subnet} tcp dport {{ 3025, 5432 }} accept
    ip saddr {PUBLIC.subnet} ip daddr {PUBLIC.subnet} accept
    ip saddr {PRIVATE.subnet} ip daddr {PRIVATE.subnet} accept
    ip saddr {AGENTS.subnet} ip daddr {AGENTS.subnet} accept
    ip saddr {squid} ip daddr {lb} tcp dport {{ 443, 3080 }} accept
    ip protocol icmp ip saddr {CLIENTS.subnet} ip daddr {PUBLIC.subnet} accept
    counter drop
  }}
}}
"""


def plan() -> list[list[str]]:
    """Every command ``up`` runs, in order (pure)."""
    cmds: list[list[str]] = [["ip", "netns", "add", ROUTER], ["ip", "-n", ROUTER, "link", "set", "lo", "up"]]
    for net in NETS:
        br = f"br-{net.name}"
        cmds += [["ip", "-n", ROUTER, "link", "add", br, "type", "bridge"],
                 ["ip", "-n", ROUTER, "addr", "add", f"{net.gateway}/24", "dev", br],
                 ["ip", "-n", ROUTER, "link", "set", br, "up"]]
    for host in HOSTS:
        port = f"v-{host.name}"[:15]
        cmds += [["ip", "netns", "add", host.ns], ["ip", "-n", host.ns, "link", "set", "lo", "up"],
                 # Both ends are made inside namespaces: nothing appears in the machine's own.
                 ["ip", "-n", ROUTER, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host.ns],
                 ["ip", "-n", ROUTER, "link", "set", port, "master", f"br-{host.net.name}"],
                 ["ip", "-n", ROUTER, "link", "set", port, "up"],
                 ["ip", "-n", host.ns, "addr", "add", f"{host.addr}/24", "dev", "eth0"],
                 ["ip", "-n", host.ns, "link", "set", "eth0", "up"],
                 ["ip", "-n", host.ns, "route", "add", "default", "via", host.net.gateway]]
    cmds += [["ip", "netns", "exec", ROUTER, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
             ["ip", "netns", "exec", ROUTER, "nft", "-f", "-"]]
    return cmds


class LabError(LocalFault):
    """The lab cannot be built or removed here; the message says why."""


#: One lab per machine: whoever builds, uses or removes it holds this lock (tests of several
#: checkouts may run at once on one machine).
LOCK_PATH = "/run/tpemu-lab.lock"


@contextlib.contextmanager
def exclusive(timeout: float = 300.0) -> Iterator[None]:
    """Hold the machine-wide lab lock (waits up to ``timeout`` seconds; :class:`LabError` after)."""
    with open(LOCK_PATH, "a+") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"another tpemu lab user holds {LOCK_PATH} (waited {timeout:g}s)") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _check_host() -> None:
    if os.geteuid() != 0:
        raise LabError("tpemu lab needs root (network namespaces, veth pairs, nftables)")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            raise LabError(f"tpemu lab needs {tool!r} (Debian: apt-get install iproute2 nftables)")


def _run(cmd: Sequence[str], stdin: str | None = None) -> None:
    done = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.returncode}")


def namespaces() -> list[str]:
    """The lab's namespaces that exist now."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.startswith(PREFIX))


def up() -> None:
    """Build the lab (refuses if a previous one is still there: ``down`` first)."""
    _check_host()
    if namespaces():
        raise LabError(f"a lab is already up ({', '.join(namespaces())}); run: tpemu lab down")
    try:
        for cmd in plan():
            _run(cmd, ruleset() if cmd[-2:] == ["-f", "-"] else None)
    except LabError:
        down()
        raise


def down() -> list[str]:
    """Remove every namespace the lab made (their links, addresses and rules go with them)."""
    _check_host()
    removed = []
    for ns in namespaces():
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10,
                              check=False).stdout.split()
        for pid in pids:  # processes started inside the lab (by PID, never by name)
            try:
                os.kill(int(pid), 15)
            except (ProcessLookupError, ValueError):
                pass
        _run(["ip", "netns", "del", ns])
        removed.append(ns)
    return removed


def status() -> dict[str, object]:
    """What exists now: namespaces, and per host its address and the processes inside."""
    present = set(namespaces())
    hosts = []
    for host in HOSTS:
        pids: list[str] = []
        if host.ns in present:
            pids = subprocess.run(["ip", "netns", "pids", host.ns], capture_output=True, text=True, timeout=10,
                                  check=False).stdout.split()
        hosts.append({"host": host.name, "namespace": host.ns, "addr": host.addr, "net": host.net.name,
                      "role": host.role, "up": host.ns in present, "pids": pids})
    return {"up": ROUTER in present, "hosts": hosts}


def describe() -> str:
    """The map and the commands to try (printed by ``tpemu lab up`` and ``tpemu lab``)."""
    lines = ["tpemu lab: the seed's networks in network namespaces (router: " + ROUTER + ")", ""]
    for net in NETS:
        lines.append(f"  {net.name:<8} {net.subnet}")
        for host in HOSTS:
            if host.net is net:
                lines.append(f"    {host.addr:<13} {host.ns:<20} {host.role}")
    lb, squid, auth = HOST["lb"].addr, HOST["squid"].addr, HOST["auth"].addr
    lines += ["", "Allowed: clients → LB :443/:3080; public → private :3025/:5432; squid → LB; nothing else.",
              "", "Try:",
              f"  ip netns exec {HOST['auth'].ns} tpemu start -c auth.yaml --roles auth   # listen {auth}:3025",
              f"  ip netns exec {HOST['proxy-a'].ns} tpemu start -c proxy.yaml --roles proxy  # auth {auth}:3025",
              f"  ip netns exec {HOST['agent'].ns} env HTTPS_PROXY=http://{squid}:3128 NO_PROXY=localhost \\",
              f"      tpemu start --roles node --proxy {lb}:443 --token TOKEN --nodename agent1",
              f"  ip netns exec {HOST['client'].ns} tpemu login --proxy {lb}:443 --user alice --insecure",
              f"  ip netns exec {HOST['agent'].ns} curl -m 3 -k https://{lb}:443/webapi/ping   # dropped: squid only",
              "  tpemu lab status | tpemu lab down"]
    return "\n".join(lines)


def status_text() -> str:
    data = status()
    if not data["up"]:
        return "tpemu lab is down (tpemu lab up builds it)"
    return json.dumps(data, indent=2)
