"""SSH end to end with real clients: OpenSSH's ``ssh`` through ``tpemu config``'s ProxyCommand, and
the ``tpemu ssh`` command line in both listener modes and through an HTTP CONNECT proxy (tinyproxy).

The cluster (Auth, proxy, agents holding real reverse tunnels) runs in this process; the clients are
separate processes, as a user would run them.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests import realservers
from tests.helpers import alice, ssh_cluster
from tests.ssh.conftest import processes_with, wait_gone
from tpemu.proxy.decide import ListenerKind
from tpemu.testkit.cluster import CLUSTER, Cluster, wait_for

pytestmark = pytest.mark.e2e

TPEMU = str(Path(sys.executable).parent / "tpemu")



def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.upper() not in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")}
    env.update(extra)
    return env


async def run(argv: list[str], env: dict[str, str] | None = None, stdin: bytes | None = None,
              timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a client without blocking the event loop that serves it."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env or clean_env())
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode(errors="replace"),
                                       err.decode(errors="replace"))


async def write_config(c: Cluster) -> Path:
    result = await run([TPEMU, "config", f"--home={alice(c).home}"])
    assert result.returncode == 0, result.stderr
    path = c.root / "ssh_config"
    path.write_text(result.stdout)
    return path


async def test_openssh_runs_commands_on_nodes_through_the_proxy(tmp_path: Path) -> None:
    ssh = realservers.binary("ssh")
    async with ssh_cluster(tmp_path) as c:
        # `ssh -F <(tpemu config) …` as such cannot work: OpenSSH closes every inherited descriptor
        # above 2 before it reads -F, so /dev/fd/63 is gone. The same config through stdin works:
        line = (f"{shlex.quote(TPEMU)} config --home={shlex.quote(str(alice(c).home))} | "
                f"{shlex.quote(ssh)} -F /dev/stdin -o BatchMode=yes alice@node1.{CLUSTER} uname -a")
        result = await run(["bash", "-c", line])
        assert result.returncode == 0, result.stderr
        assert result.stdout == (await run(["uname", "-a"])).stdout
        cfg = await write_config(c)  # what users do: tpemu config >> ~/.ssh/config
        base = [ssh, "-F", str(cfg), "-o", "BatchMode=yes"]
        # Exit status, stdin and stderr pass through; a pty when asked (-tt).
        result = await run([*base, f"alice@node1.{CLUSTER}", "cat; echo to-stderr >&2; exit 42"], stdin=b"piped\n")
        assert (result.returncode, result.stdout) == (42, "piped\n") and "to-stderr" in result.stderr
        result = await run([*base, "-tt", f"alice@node1.{CLUSTER}", "tty; echo $TERM"], env=clean_env(TERM="vt100"))
        assert result.returncode == 0 and "/dev/pts/" in result.stdout and "vt100" in result.stdout
        # Host certificates are checked: with no @cert-authority line the node is not trusted.
        result = await run([*base, "-o", "UserKnownHostsFile=/dev/null", f"alice@node1.{CLUSTER}", "true"])
        assert result.returncode == 255 and "Host key verification failed" in result.stderr
        # Specific errors: unknown node (from the proxy), wrong login (the node refuses).
        result = await run([*base, f"alice@ghost.{CLUSTER}", "true"])
        assert result.returncode == 255
        assert "node 'ghost' not found: direct dialing to nodes not found in inventory" in result.stderr
        result = await run([*base, f"bob@node1.{CLUSTER}", "true"])
        assert result.returncode == 255 and "Permission denied (publickey)" in result.stderr


async def test_openssh_client_killed_mid_session_leaves_nothing_running(tmp_path: Path) -> None:
    ssh = realservers.binary("ssh")
    async with ssh_cluster(tmp_path) as c:
        cfg = await write_config(c)
        marker = f"tpemu-{uuid.uuid4().hex}"
        proc = await asyncio.create_subprocess_exec(
            ssh, "-F", str(cfg), "-o", "BatchMode=yes", "-o", "SendEnv=TPEMU_MARK", f"alice@node1.{CLUSTER}",
            "sleep 300 | cat", stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=clean_env(TPEMU_MARK=marker), start_new_session=True)
        try:
            await wait_for(lambda: len(processes_with(marker)) >= 3, 15, "the remote command to start")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # ssh and its ProxyCommand vanish at once
            await proc.wait()
        await wait_gone(marker, timeout=8)
        await wait_for(lambda: not c.ssh_service("node1")._sessions, 5, "the node's session to end")


@pytest.mark.parametrize("mode", ["multiplex", "separate"])
async def test_tpemu_ssh_cli_direct_and_through_http_connect(tmp_path: Path, mode: str) -> None:
    async with ssh_cluster(tmp_path, mode=mode) as c:
        home = f"--home={alice(c).home}"
        result = await run([TPEMU, "ssh", home, "alice@node1", "echo $USER on $(hostname); exit 3"])
        assert result.returncode == 3 and result.stdout.startswith("alice on "), result.stderr
        result = await run([TPEMU, "ssh", home, "-l", "alice", f"node1.{CLUSTER}", "cat"], stdin=b"in\n")
        assert (result.returncode, result.stdout) == (0, "in\n")
        target = c.web if mode == "multiplex" else c.proxy.info.bound.get(ListenerKind.SSH)
        assert target is not None
        with realservers.tinyproxy(tmp_path) as proxy:
            env = clean_env(HTTPS_PROXY=proxy.url, TPEMU_PROXY_LOOPBACK="yes")
            result = await run([TPEMU, "ssh", home, "alice@node1", "echo via-connect"], env=env)
            assert result.returncode == 0 and result.stdout == "via-connect\n", result.stderr
            ls = await run([TPEMU, "ls", home], env=env)
            assert ls.returncode == 0 and "node1" in ls.stdout and "⟵ Tunnel" in ls.stdout
            log = proxy.log()
        assert f"CONNECT {c.web}" in log  # the ping and ls
        assert f"CONNECT {target}" in log  # the SSH connection to the proxy


async def test_tpemu_ssh_cli_errors(tmp_path: Path) -> None:
    async with ssh_cluster(tmp_path) as c:
        home = f"--home={alice(c).home}"
        result = await run([TPEMU, "ssh", home, "bob@node1", "true"])
        assert result.returncode == 1
        assert result.stderr.strip() == ("tpemu: access denied to bob connecting to node1: 'bob' is not one of "
                                         "the logins of alice (allowed: root, alice)")
        result = await run([TPEMU, "ssh", home, "alice@ghost", "true"])
        assert result.returncode == 255 and "node 'ghost' not found" in result.stderr
        result = await run([TPEMU, "ssh", "--home", str(tmp_path / "nobody"), "alice@node1", "true"])
        assert result.returncode == 1 and "not logged in" in result.stderr
        # An expired certificate: the client says so before dialing (tsh would ask to log in again).
        assert c.auth.server is not None
        from tpemu.auth import authority
        from tpemu.auth.authority import CAType

        prof = alice(c).profile
        import datetime as dt

        past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
        prof.ssh_cert_path.write_bytes(authority.issue_user_ssh(
            c.auth.server.ca(CAType.USER), prof.ssh_public_path.read_bytes(), "alice", ["alice"], ["access"], {},
            CLUSTER, past + dt.timedelta(hours=1), past))
        result = await run([TPEMU, "ssh", home, "alice@node1", "true"])
        assert result.returncode == 1 and "your certificate for alice expired at" in result.stderr
        cfg = await write_config(c)
        result = await run([realservers.binary("ssh"), "-F", str(cfg), "-o", "BatchMode=yes",
                            f"alice@node1.{CLUSTER}", "true"])
        assert result.returncode == 255 and "your certificate for alice expired at" in result.stderr
