"""``tpemu.testkit.Cluster(kube=..., apps=...)``: Kubernetes and applications in the public test API,
used with real clients (kubectl, curl) as a project's own tests would."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

from tests.conftest import need
from tpemu.testkit import Cluster


async def _run(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                env={**os.environ, "NO_PROXY": "*", **env})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cluster_with_kube_and_apps() -> None:
    kubectl, curl = need("kubectl"), need("curl")
    async with Cluster(nodes=(), databases=False, kube=True, apps=[{"name": "echo", "uri": "emulated-echo"}]) as c:
        alice = await c.user("alice", kubernetes_groups=["system:masters"])
        await alice.kube_login("emu")
        code, out, err = await _run(kubectl, "--request-timeout=20s", "get", "ns", env=alice.env())
        assert code == 0 and "default" in out, err
        login = await alice.app_login("echo")
        code, out, err = await _run(curl, "-sS", *login.curl().split()[1:], env=alice.env())
        assert code == 0 and json.loads(out)["app"] == "echo", (out, err)
