"""``kubectl port-forward`` end to end with unmodified kubectl 1.32 and curl: through the proxy's web port
(SNI route → reverse tunnel → the agent's Kubernetes Service → the emulated pod), through
``kube_listen_addr`` in separate mode, and to a Kubernetes Service joined directly to Auth (the proxy
relays per request and splices the upgrade).

The pod's port 80 is a real HTTP server on loopback (``python -m http.server``), named by the
agent's ``tpemu.kubernetes_service.pod_ports``. Checked: the WebSocket tunnel (kubectl's default)
and the SPDY fallback (``KUBECTL_PORT_FORWARD_WEBSOCKETS=false``), ``pod/…`` and ``deploy/…``
targets, concurrent connections with their bodies intact, a port nothing serves (kubectl prints
the kubelet's error and ends with "lost connection to pod"), an unknown pod, and a user whose
Kubernetes group may only view (Kubernetes' Forbidden for ``pods/portforward``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests import kube_env
from tests.conftest import need
from tests.e2e.test_kube_access import DEPLOYMENT, kubectl
from tpemu.agent.kube import controller

pytestmark = pytest.mark.e2e

USERS = {"alice": {"kubernetes_groups": ["system:masters"]}, "vic": {"kubernetes_groups": ["view"]}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def web_server(tmp_path: Path) -> AsyncIterator[tuple[int, bytes]]:
    """A real HTTP server on loopback serving ``blob`` (2 MiB of random bytes)."""
    root = tmp_path / "www"
    root.mkdir()
    blob = os.urandom(2 << 20)
    (root / "blob").write_bytes(blob)
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                                "--directory", str(root), stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)
    try:
        async with asyncio.timeout(20):
            while True:
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
        yield port, blob
    finally:
        proc.terminate()
        await proc.wait()


class Forward:
    """A running ``kubectl port-forward``: its local port, its output so far."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, out: list[str]) -> None:
        self.proc, self.port, self.out = proc, port, out

    async def stop(self) -> tuple[int, str]:
        if self.proc.returncode is None:
            self.proc.terminate()
        assert self.proc.stderr is not None
        err = (await asyncio.wait_for(self.proc.stderr.read(), 20)).decode()
        return await self.proc.wait(), err


async def port_forward(env: kube_env.KubeEnv, user: str, target: str, remote: int, *extra: str,
                       environ: dict[str, str] | None = None) -> Forward:
    proc = await asyncio.create_subprocess_exec(
        need("kubectl"), "port-forward", target, f"0:{remote}", *extra, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**env.env(user), **(environ or {})})
    assert proc.stdout is not None
    out: list[str] = []
    async with asyncio.timeout(30):
        while not (found := re.search(r"Forwarding from 127\.0\.0\.1:(\d+) -> ", "".join(out))):
            line = (await proc.stdout.readline()).decode()
            if not line:
                assert proc.stderr is not None
                rest = (await proc.stderr.read()).decode()
                raise AssertionError(f"kubectl port-forward ended: {''.join(out)} {rest}")
            out.append(line)
    return Forward(proc, int(found.group(1)), out)


async def curl(port: int, path: str = "/blob") -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(need("curl"), "-s", "-m", "30", f"http://127.0.0.1:{port}{path}",
                                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out, _ = await asyncio.wait_for(proc.communicate(), 40)
    assert proc.returncode is not None
    return proc.returncode, out


async def _start(tmp: Path, pod_port: int, **options: Any) -> kube_env.KubeEnv:
    need("kubectl")
    controller.START_DELAY = 0.3
    env = await kube_env.start(tmp, users=USERS, pod_ports=[
        {"port": 80, "target": f"127.0.0.1:{pod_port}", "pod_labels": {"app": "web"}}], **options)
    for user in USERS:
        code, _, err = await env.run(user, "tpemu", "kube", "login", kube_env.KUBE)
        assert code == 0, err
    manifest = env.tmp / "deploy.yaml"
    manifest.write_text(DEPLOYMENT.replace("REPLICAS", "1"))
    code, out, err = await kubectl(env, "alice", "apply", "-f", str(manifest))
    assert code == 0, err
    code, out, err = await kubectl(env, "alice", "rollout", "status", "deploy/web", "--timeout=20s")
    assert code == 0, (out, err)
    return env


async def _forward_and_refuse(env: kube_env.KubeEnv, blob: bytes) -> None:
    """One forward with four concurrent curls, then a port nothing serves."""
    fwd = await port_forward(env, "alice", "deploy/web", 80)
    try:
        results = await asyncio.gather(*(curl(fwd.port) for _ in range(4)))
        assert all(code == 0 and hashlib.sha256(body).digest() == hashlib.sha256(blob).digest()
                   for code, body in results), [(c, len(b)) for c, b in results]
    finally:
        await fwd.stop()
    await _refused(env)


async def _refused(env: kube_env.KubeEnv) -> None:
    code, out, _ = await kubectl(env, "alice", "get", "pods", "-l", "app=web", "-o", "name")
    pod = out.split()[0]
    fwd = await port_forward(env, "alice", pod, 81)
    code, body = await curl(fwd.port, "/")
    assert code != 0 and body == b""  # kubectl closes the local connection
    async with asyncio.timeout(20):  # and ends by itself
        await fwd.proc.wait()
    code, err = await fwd.stop()
    assert code != 0, err
    assert re.search(rf"an error occurred forwarding {fwd.port} -> 81: error forwarding port 81 to pod [0-9a-f]{{64}}, "
                     r"uid : failed to execute portforward in network namespace \\\"/var/run/netns/cni-[0-9a-f-]{36}"
                     r"\\\": failed to connect to localhost:81 inside namespace \\\"[0-9a-f]{64}\\\", IPv4: dial tcp4 "
                     r"127\.0\.0\.1:81: connect: connection refused IPv6 dial tcp6 \[::1\]:81: connect: connection "
                     r"refused", err), err
    assert "error: lost connection to pod" in err


async def test_port_forward_through_the_web_port(tmp_path: Path, web_server: tuple[int, bytes]) -> None:
    port, blob = web_server
    env = await _start(tmp_path, port)
    try:
        await _forward_and_refuse(env, blob)
        # pod/<name>, and the SPDY fallback kubectl takes when the WebSocket upgrade is off.
        code, out, _ = await kubectl(env, "alice", "get", "pods", "-l", "app=web", "-o", "name")
        fwd = await port_forward(env, "alice", out.split()[0], 80, "-v=6",
                                 environ={"KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"})
        try:
            results = await asyncio.gather(*(curl(fwd.port) for _ in range(3)))
            assert all(code == 0 and body == blob for code, body in results)
        finally:
            _, err = await fwd.stop()
        assert re.search(r"POST https://\S+/portforward 101 Switching Protocols", err), err
        fwd = await port_forward(env, "alice", "deploy/web", 80, "-v=6")
        try:
            assert await curl(fwd.port) == (0, blob)
        finally:
            _, err = await fwd.stop()
        assert re.search(r"GET https://\S+/portforward 101 Switching Protocols", err), err  # the tunnel
        # Kubernetes' own refusals, as kubectl shows them.
        code, _, err = await kubectl(env, "alice", "port-forward", "pod/nope", "0:80")
        assert code == 1 and 'Error from server (NotFound): pods "nope" not found' in err, err
        proc = await asyncio.create_subprocess_exec(need("kubectl"), "port-forward", "deploy/web", "0:80",
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                    env=env.env("vic"))
        out_b, err_b = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 1, out_b
        assert re.search(r'pods \\?"web-\w+-\w+\\?" is forbidden: User \\?"vic\\?" cannot (get|create) resource '
                         r'\\?"pods/portforward\\?" in API group \\?"\\?" in the namespace \\?"default\\?"',
                         err_b.decode()), err_b
    finally:
        await kube_env.stop(env)


@pytest.mark.parametrize("mode", ["separate", "direct"])
async def test_port_forward_separate_mode_and_direct_service(tmp_path: Path, web_server: tuple[int, bytes],
                                                             mode: str) -> None:
    port, blob = web_server
    env = await _start(tmp_path, port, **{mode: True})
    try:
        if mode == "separate":
            from tpemu.proxy.decide import ListenerKind

            assert f"server: https://{env.proxy.info.bound[ListenerKind.KUBE]}" in env.kubeconfig("alice").read_text()
        await _forward_and_refuse(env, blob)
    finally:
        await kube_env.stop(env)
