"""Fixtures for the SSH tests: a node's credentials made locally, clients for an SSH service."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncssh
import pytest

from tests.helpers import parked
from tpemu import pki
from tpemu.agent.ssh_service import SSHService
from tpemu.auth import authority
from tpemu.auth.authority import CAType, CertAuthority
from tpemu.authclient import HostIdentity
from tpemu.wire.tunnel import DialRequest

CLUSTER = "tpemu.local"


@dataclass
class NodeCAs:
    """A cluster's host and user CAs, and helpers to issue what a node and a user hold."""

    host: CertAuthority
    user: CertAuthority

    def node_identity(self, host_id: str = "node1-uuid", nodename: str = "node1") -> HostIdentity:
        key = pki.generate_key()
        ssh_public = asyncssh.import_private_key(pki.key_pem(key)).export_public_key()
        ssh_cert = authority.issue_host_ssh(self.host, ssh_public, host_id, nodename, "Node")
        tls = authority.issue_host_tls(self.host, key.public_key(), host_id, "Node", [nodename])
        return HostIdentity(host_id, "Node", CLUSTER, pki.key_pem(key), pki.cert_pem(tls), ssh_cert,
                            self.host.tls_cert_pem, (self.host.ssh_public,))

    def user_key(self, logins: tuple[str, ...] = ("root", "alice"), user: str = "alice",
                 not_after: dt.datetime | None = None, now: dt.datetime | None = None,
                 ca: CertAuthority | None = None) -> tuple[Any, Any]:
        key = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
        now = now or dt.datetime.now(dt.UTC)
        line = authority.issue_user_ssh(ca or self.user, key.export_public_key(), user, logins, ["access"], {},
                                        CLUSTER, not_after or now + dt.timedelta(hours=1), now)
        return key, asyncssh.import_certificate(line)

    @property
    def known_hosts(self) -> tuple[list[Any], list[Any], list[Any]]:
        return [], [asyncssh.import_public_key(self.host.ssh_public)], []


@pytest.fixture(scope="session")
def cas() -> NodeCAs:
    return NodeCAs(authority.new_authority(CAType.HOST, CLUSTER), authority.new_authority(CAType.USER, CLUSTER))


@pytest.fixture
async def node(cas: NodeCAs) -> AsyncIterator[SSHService]:
    svc = SSHService(cas.node_identity(), [cas.user.ssh_public], nodename="node1")
    yield svc
    await svc.close()


Connect = Callable[..., Any]


@pytest.fixture
async def connect(node: SSHService, cas: NodeCAs) -> AsyncIterator[Connect]:
    """``await connect(login, key=…)``: an asyncssh client connection to ``node`` over a socket
    pair served by ``SSHService.serve``, as the agent's tunnel client hands connections over."""
    tasks: list[asyncio.Task[None]] = []
    conns: list[asyncssh.SSHClientConnection] = []

    async def make(login: str = "root", key: tuple[Any, Any] | None = None, host: str = "node1",
                   **kwargs: Any) -> asyncssh.SSHClientConnection:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        request = DialRequest(address="node1", server_id=node.server_id, client_src_addr="127.0.0.9:40000",
                              client_dst_addr="127.0.0.1:3080")
        tasks.append(asyncio.get_running_loop().create_task(node.serve(await parked(theirs), request)))
        conn = await asyncssh.connect(host, 3022, sock=ours, username=login, client_keys=[key or cas.user_key()],
                                      known_hosts=cas.known_hosts, agent_path=None, config=None,
                                      preferred_auth=["publickey"], **kwargs)
        conns.append(conn)
        return conn

    yield make
    for conn in conns:
        conn.close()
    for task in tasks:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)


def processes_with(marker: str) -> list[int]:
    """Pids whose environment contains ``marker`` (a session's processes all inherit it: pass it
    with an SSH ``env`` request, ``TPEMU_MARK=<marker>``)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if marker.encode() in f.read():
                        pids.append(int(name))
            except OSError:
                continue
    return pids


async def wait_gone(marker: str, timeout: float = 5.0) -> None:
    """Until no process carries ``marker`` (zombies count as gone)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        alive = [p for p in processes_with(marker) if _state(p) not in ("Z", "")]
        if not alive:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"processes {alive} with {marker!r} still running")
        await asyncio.sleep(0.05)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
