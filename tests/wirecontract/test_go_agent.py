"""An independent Go agent (Go's crypto/tls and golang.org/x/crypto/ssh, the libraries Teleport's
agent uses; ``tests/go/teleagent``) against tpemu's proxy, beside tpemu's own Python agent.

Follows ``lib/reversetunnel/agent.go`` (publickey auth with the host certificate; the
``teleport-heartbeat`` channel with ``ping`` requests; ``x-teleport-version``;
``teleport-discovery``), ``transport.go`` (``teleport-transport`` + ``teleport-transport-dial``,
"@local-node"), ``srv.go`` (``keyAuth``; ``HandleNewChan``'s refusals; ``handleTransportChannel``
to the Auth Service) and ``api/utils/sshutils`` ``ConnectProxyTransport``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tpemu.testkit import Cluster

TPEMU = str(Path(sys.executable).parent / "tpemu")


class Events:
    """The Go agent's JSON lines, read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: list[dict[str, Any]] = []

    async def wait(self, event: str, timeout: float = 20.0, **fields: Any) -> dict[str, Any]:
        def match(e: dict[str, Any]) -> bool:
            return e.get("event") == event and all(e.get(k) == v for k, v in fields.items())

        for e in self.seen:
            if match(e):
                return e
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                assert line, f"the Go agent exited before {event} {fields}: {self.seen}"
                e = json.loads(line)
                self.seen.append(e)
                assert e.get("event") != "fatal", e
                if match(e):
                    return e


async def _start(binary: Path, cluster: Cluster, token: str, *extra: str) -> Events:
    proc = await asyncio.create_subprocess_exec(
        str(binary), "-proxy", f"127.0.0.1:{cluster.web.port}", "-token", token, "-ca", str(cluster.ca),
        "-cluster", cluster.cluster_name, *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    return Events(proc)


async def _stop(events: Events) -> None:
    if events.proc.returncode is None:
        events.proc.kill()
    await events.proc.wait()


async def _run(cmd: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*cmd, env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def _wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.05)


async def test_go_agent_joins_serves_ssh_and_is_listed_beside_the_python_agent(
        tmp_path: Path, go_peer: Callable[..., Path]) -> None:
    binary = go_peer("teleagent", needs_x_crypto=True)
    async with Cluster(tmp_path, nodes=("pynode",), databases=()) as cluster:
        events = await _start(binary, cluster, await cluster.token("Node"), "-hostname", "gonode",
                              "-heartbeat", "1s")
        try:
            joined = await events.wait("joined")
            assert joined["role"] == "Node"
            tunnel = await events.wait("tunnel")
            # The reverse-tunnel handler is found by the second name (protocols.go ProtocolReverseTunnelV2).
            assert tunnel["alpn"] == "teleport-reversetunnel"
            assert (await events.wait("presence", status=200))["status"] == 200
            await events.wait("version-asked")  # the proxy asked x-teleport-version
            discovery = await events.wait("discovery")
            assert discovery["request"] == "discovery" and discovery["proxies"]
            reg = cluster.proxy.tunnels
            await _wait_for(lambda: any(a.hostname == "gonode" and a.pings >= 3 and a.version == "17.0.0"
                                        for a in reg.agents.values()))
            go = next(a for a in reg.agents.values() if a.hostname == "gonode")
            assert go.host_id == joined["host_id"] and go.conn_type == "node" and go.announced is None
            alice = await cluster.user("alice", logins=["root"])
            code, out, err = await _run([TPEMU, "ls"], alice.env())
            assert code == 0, err
            assert "gonode" in out and "pynode" in out, out
            # A byte stream through the proxy to the Go agent: tpemu ssh → teleport-transport → its SSH server.
            code, out, err = await _run([TPEMU, "ssh", "root@gonode", "echo through the tunnel"], alice.env())
            assert code == 0, err
            assert out == "go-agent gonode as root: echo through the tunnel\n"
            dial = await events.wait("dial")
            assert dial["server_id"] == f"{joined['host_id']}.{cluster.cluster_name}" and dial["conn_type"] == "node"
            # The Python agent still works through the same proxy.
            code, out, err = await _run([TPEMU, "ssh", "root@pynode", "echo py"], alice.env())
            assert code == 0 and out.strip() == "py", err
        finally:
            await _stop(events)


@pytest.mark.parametrize(("probe", "expect_error", "expect_log"), [
    ("forged", "unable to authenticate", "has no matching CA keys"),
    ("plainkey", "unable to authenticate", "server doesn't support provided key type"),
    ("session", "Cannot open new SSH session on reverse tunnel. Are you connecting to the right port?",
     "Cannot open new SSH session on reverse tunnel"),
    ("bogus-type", "reversetunnel received unknown channel request bogus-type", "unknown channel request bogus-type"),
])
async def test_go_agent_bad_input_is_refused_with_specific_log_lines(
        tmp_path: Path, go_peer: Callable[..., Path], caplog: pytest.LogCaptureFixture, probe: str,
        expect_error: str, expect_log: str) -> None:
    caplog.set_level(logging.INFO)
    binary = go_peer("teleagent", needs_x_crypto=True)
    async with Cluster(tmp_path, nodes=("pynode",), databases=()) as cluster:
        events = await _start(binary, cluster, await cluster.token("Node"), "-probe", probe)
        try:
            result = await events.wait("probe")
            assert expect_error in result.get("error", ""), result
            await _wait_for(lambda: expect_log in caplog.text)
            # Nothing else is affected: the Python agent's node still answers through the proxy.
            alice = await cluster.user("alice", logins=["root"])
            code, out, err = await _run([TPEMU, "ssh", "root@pynode", "echo fine"], alice.env())
            assert code == 0 and out.strip() == "fine", err
        finally:
            await _stop(events)


@pytest.mark.parametrize(("probe", "stderr", "expect_log"), [
    ("dial-garbage", "connection rejected: teleport-transport-dial payload is neither JSON nor UTF-8 text",
     "teleport-transport-dial refused"),
    ("dial-oversized", "connection rejected: teleport-transport-dial payload exceeds the 65536-byte limit",
     "teleport-transport-dial refused"),
    ("dial-wrong-request", "", ""),
])
async def test_agent_opened_transport_bad_dial_requests(tmp_path: Path, go_peer: Callable[..., Path],
                                                        caplog: pytest.LogCaptureFixture, probe: str, stderr: str,
                                                        expect_log: str) -> None:
    # srv.go handleTransportChannel: an agent-opened teleport-transport may only reach the Auth Service.
    caplog.set_level(logging.INFO)
    binary = go_peer("teleagent", needs_x_crypto=True)
    async with Cluster(tmp_path, nodes=(), databases=()) as cluster:
        events = await _start(binary, cluster, await cluster.token("Node"), "-probe", probe)
        try:
            result = await events.wait("probe")
            assert result["ok"] is False and result.get("error") is None, result
            assert result["stderr"].startswith(stderr), result
            if expect_log:
                await _wait_for(lambda: expect_log in caplog.text)
        finally:
            await _stop(events)


async def test_agent_opened_transport_reaches_the_auth_service(tmp_path: Path, go_peer: Callable[..., Path]) -> None:
    binary = go_peer("teleagent", needs_x_crypto=True)
    async with Cluster(tmp_path, nodes=(), databases=()) as cluster:
        events = await _start(binary, cluster, await cluster.token("Node"), "-probe", "dial-remote-auth")
        try:
            result = await events.wait("probe")
            assert result["ok"] is True and result["auth_status_line"] == "HTTP/1.1 200", result
        finally:
            await _stop(events)
