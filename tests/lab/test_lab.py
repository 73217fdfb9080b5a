"""``tpemu lab``: namespaces, veth, the router's nftables policy, and ``down`` leaving nothing.

Root only (skipped otherwise, with the reason); bounded: every probe has a 1-2 s deadline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tpemu import lab

SERVER = ("import socket,sys\n"
          "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
          "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(); print('ready', flush=True)\n"
          "while True:\n  c,_=s.accept(); c.sendall(b'hello'); c.close()\n")
CLIENT = ("import socket,sys\n"
          "try:\n  c=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)\n"
          "  print(c.recv(5).decode())\n"
          "except OSError as e: print('blocked', type(e).__name__)\n")


@pytest.fixture
def lab_up() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("tpemu lab needs root")
    if shutil.which("nft") is None or shutil.which("ip") is None:
        pytest.skip("tpemu lab needs iproute2 and nftables (make test installs them)")
    with lab.exclusive():  # one lab per machine: other checkouts' tests wait their turn
        if lab.namespaces():
            pytest.skip(f"a lab is already up here ({', '.join(lab.namespaces())}); not touching it")
        lab.up()
        try:
            yield
        finally:
            lab.down()


def _in(ns: str, code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            text=True)


def _probe(host: str, target: str, port: int) -> str:
    out = subprocess.run(["ip", "netns", "exec", lab.HOST[host].ns, sys.executable, "-c", CLIENT, target, str(port)],
                         capture_output=True, text=True, timeout=10, check=False)
    return out.stdout.strip()


def test_plan_is_inside_namespaces_only() -> None:
    for cmd in lab.plan():
        # Every command names a lab namespace (ip -n NS / ip netns add|exec NS): none touches the host's.
        assert any(arg.startswith(lab.PREFIX) for arg in cmd), cmd
    assert "policy drop" in lab.ruleset()


def test_up_policy_and_down_leaves_nothing(lab_up: None) -> None:
    assert set(lab.namespaces()) == {h.ns for h in lab.HOSTS} | {lab.ROUTER}
    lb, squid = lab.HOST["lb"], lab.HOST["squid"]
    servers = [_in(lb.ns, SERVER, lb.addr, "443"), _in(squid.ns, SERVER, squid.addr, "3128")]
    try:
        for s in servers:
            assert s.stdout is not None and s.stdout.readline().strip() == "ready"
        assert _probe("client", lb.addr, 443) == "hello"  # clients → LB
        assert _probe("squid", lb.addr, 443) == "hello"  # squid → LB
        assert _probe("agent", squid.addr, 3128) == "hello"  # agents → squid (same network)
        assert _probe("agent", lb.addr, 443).startswith("blocked")  # agents → LB directly: dropped
        assert _probe("client", lab.HOST["auth"].addr, 3025).startswith("blocked")  # clients → private: dropped
        status = lab.status()
        assert status["up"] is True
    finally:
        for s in servers:
            s.kill()
            s.wait(5)
    lab.down()
    assert lab.namespaces() == []
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    assert "tpemu" not in links and "v-agent" not in links
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=False).stdout
    assert "tpemu_lab" not in rules
    assert lab.status()["up"] is False
