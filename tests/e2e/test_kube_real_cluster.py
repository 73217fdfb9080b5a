"""``kubernetes_service.kubeconfig_file``: the Kubernetes Service in front of a *separate* API server.

The upstream is tpemu's emulated API started on its own (``python -m tpemu.agent.kube.standalone``)
as a real API server runs: HTTPS that requires a client certificate of its CA, serving a request
only when it carries ``Impersonate-User`` and the certificate's user may impersonate (Kubernetes'
impersonation filter). The agent reaches it with the kubeconfig's credentials and Teleport's
impersonation headers (``lib/kube/proxy/forwarder.go`` ``setupImpersonationHeaders``); users run
unmodified kubectl and the Python ``kubernetes`` client through the proxy's web port.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests import kube_env
from tests.conftest import need
from tpemu import pki
from tpemu.agent.kube import controller, remote

pytestmark = pytest.mark.e2e

SERVICE = "teleport-kube-service"


def _issue(ca: x509.Certificate, ca_key: pki.PrivateKey, folder: Path, name: str, server: bool) -> tuple[Path, Path]:
    key = pki.generate_key()
    cert = pki.issue_cert(ca, ca_key, key.public_key(), x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
                          sans=("127.0.0.1", "localhost") if server else (), server=server, client=not server)
    cpath, kpath = folder / f"{name}.crt", folder / f"{name}.key"
    cpath.write_bytes(pki.cert_pem(cert))
    kpath.write_bytes(pki.key_pem(key))
    return cpath, kpath


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[tuple[Path, int, Path]]:
    """The separate API server: (folder with its certificates, port, kubeconfig for the agent)."""
    folder = tmp_path / "upstream"
    folder.mkdir()
    ca_key = pki.generate_key()
    ca = pki.make_ca("upstream-ca", ca_key, "kubernetes")
    (folder / "ca.crt").write_bytes(pki.cert_pem(ca))
    scert, skey = _issue(ca, ca_key, folder, "apiserver", server=True)
    ccert, ckey = _issue(ca, ca_key, folder, SERVICE, server=False)
    _issue(ca, ca_key, folder, "someone", server=False)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tpemu.agent.kube.standalone", "--data-dir", str(folder / "data"), "--cert", str(scert),
        "--key", str(skey), "--client-ca", str(folder / "ca.crt"), "--impersonator", SERVICE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("listening on "), line
        port = int(line.rsplit(":", 1)[1])
        kubeconfig = folder / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "real",
            "clusters": [{"name": "real", "cluster": {
                "server": f"https://127.0.0.1:{port}",
                "certificate-authority-data": base64.b64encode(pki.cert_pem(ca)).decode()}}],
            "users": [{"name": "svc", "user": {"client-certificate": ccert.name, "client-key": ckey.name}}],
            "contexts": [{"name": "real", "context": {"cluster": "real", "user": "svc"}}]}))
        yield folder, port, kubeconfig
    finally:
        proc.terminate()
        await proc.wait()


async def _raw(folder: Path, port: int, who: str, headers: str = "", path: str = "/api/v1/namespaces") -> str:
    ctx = ssl.create_default_context(cafile=str(folder / "ca.crt"))
    ctx.load_cert_chain(str(folder / f"{who}.crt"), str(folder / f"{who}.key"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data.decode()


async def test_the_upstream_checks_its_callers(upstream: tuple[Path, int, Path]) -> None:
    folder, port, _ = upstream
    assert " 200 " in (await _raw(folder, port, SERVICE, "Impersonate-User: x\r\nImpersonate-Group: system:masters\r\n"
                                  )).split("\r\n")[0]
    refused = await _raw(folder, port, SERVICE)  # the service itself, not impersonating
    assert " 403 " in refused.split("\r\n")[0] and "only impersonated requests" in refused
    refused = await _raw(folder, port, "someone", "Impersonate-User: x\r\n")
    assert " 403 " in refused.split("\r\n")[0] and "cannot impersonate" in refused


def test_kubeconfig_errors_are_specific(tmp_path: Path) -> None:
    path = tmp_path / "kc"
    path.write_text("current-context: a\ncontexts: [{name: a, context: {cluster: c, user: u}}]\n"
                    "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
                    "users: [{name: u, user: {exec: {command: aws}}}]\n")
    with pytest.raises(remote.KubeconfigError, match="exec is not supported"):
        remote.load_kubeconfig(path)
    path.write_text("current-context: a\ncontexts: []\n")
    with pytest.raises(remote.KubeconfigError, match="context 'a' not found"):
        remote.load_kubeconfig(path)
    path.write_text("current-context: a\ncontexts: [{name: a, context: {cluster: c}}]\n"
                    "clusters: [{name: c, cluster: {server: 'ftp://x'}}]\n")
    with pytest.raises(remote.KubeconfigError, match="http\\(s\\) URL"):
        remote.load_kubeconfig(path)
    with pytest.raises(remote.KubeconfigError, match="cannot read"):
        remote.load_kubeconfig(tmp_path / "absent")


async def test_kubectl_and_python_client_through_a_real_cluster_backend(
        tmp_path: Path, upstream: tuple[Path, int, Path]) -> None:
    kubectl = need("kubectl")
    controller.START_DELAY = 0.3
    folder, port, kubeconfig = upstream
    env = await kube_env.start(tmp_path / "cluster", kubeconfig=kubeconfig)
    try:
        for user in ("alice", "bob"):
            code, out, err = await env.run(user, "tpemu", "kube", "login", kube_env.KUBE)
            assert code == 0, err
        code, out, err = await env.run("alice", kubectl, "--request-timeout=20s", "get", "ns")
        assert code == 0 and "default" in out and "kube-system" in out, err
        code, out, err = await env.run("alice", kubectl, "--request-timeout=20s", "create", "configmap", "cm",
                                       "--from-literal=k=through-the-kubeconfig")
        assert code == 0, err
        code, out, err = await env.run("alice", kubectl, "--request-timeout=20s", "run", "p", "--image=busybox")
        assert code == 0, err
        code, out, err = await env.run("alice", kubectl, "--request-timeout=30s", "wait", "--for=condition=Ready",
                                       "pod/p", "--timeout=30s")
        assert code == 0, (out, err)
        code, out, err = await env.run("alice", kubectl, "--request-timeout=20s", "exec", "p", "--", "echo",
                                       "exec upstream")
        assert code == 0 and out.strip() == "exec upstream", (out, err)
        code, out, err = await env.run("alice", sys.executable, "-c",
                                       "from kubernetes import client, config\nconfig.load_kube_config()\n"
                                       "print(client.CoreV1Api().read_namespaced_config_map('cm', 'default').data)")
        assert code == 0 and "through-the-kubeconfig" in out, err
        # the objects live in the upstream, not in the agent
        stored = await _raw(folder, port, SERVICE, "Impersonate-User: x\r\nImpersonate-Group: system:masters\r\n",
                            "/api/v1/namespaces/default/configmaps/cm")
        assert " 200 " in stored.split("\r\n")[0] and "through-the-kubeconfig" in stored, stored
        assert not (tmp_path / "cluster" / "agent" / "kube" / f"{kube_env.KUBE}.sqlite").exists()
        # bob is impersonated as himself, with no groups beyond system:authenticated: the upstream's RBAC says no
        code, out, err = await env.run("bob", kubectl, "--request-timeout=20s", "get", "configmaps")
        assert code != 0 and "Forbidden" in err and '"bob"' in err, (out, err)
    finally:
        await kube_env.stop(env)
