"""Kubernetes access end to end with unmodified clients: kubectl 1.32 and the Python ``kubernetes``
client, through the proxy's web port (SNI ``kube-teleport-proxy-alpn.teleport.cluster.local``, as
``tsh kube login`` writes it) and through ``kube_listen_addr`` in separate mode, to an agent's
Kubernetes Service over its reverse tunnel, backed by the emulated Kubernetes API.

Checks the issue's "must show" list: ``tpemu kube ls``/``login``, ``kubectl get ns``, ``kubectl apply
-f`` of a deployment, ``kubectl get pods -w`` seeing the pods change, ``kubectl exec -- uname -a``
(WebSocket v5 channel protocol), ``kubectl logs``, the Python client listing pods; a user without
Kubernetes groups gets Kubernetes' own ``Forbidden`` Status, one without any Kubernetes trait
Teleport's refusal; malformed, oversized and unknown requests get ``Status`` errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests import kube_env
from tests.conftest import need
from tpemu.agent import access
from tpemu.agent.kube import controller
from tpemu.proxy.decide import ListenerKind

pytestmark = pytest.mark.e2e

DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: REPLICAS
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
        ports: [{containerPort: 80}]
"""

PY_LIST_PODS = """
from kubernetes import client, config
config.load_kube_config()
v1 = client.CoreV1Api()
print(",".join(sorted(p.metadata.name for p in v1.list_namespaced_pod("default").items)))
print(",".join(sorted(n.metadata.name for n in v1.list_namespace().items)))
"""


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[kube_env.KubeEnv]:
    need("kubectl")
    controller.START_DELAY = 0.3
    e = await kube_env.start(tmp_path)
    try:
        yield e
    finally:
        await kube_env.stop(e)


async def kubectl(env: kube_env.KubeEnv, user: str, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    return await env.run(user, need("kubectl"), "--request-timeout=20s", *args, stdin=stdin)


async def test_kubectl_through_the_web_port(env: kube_env.KubeEnv) -> None:
    code, out, err = await env.run("alice", "tpemu", "kube", "ls")
    assert code == 0 and "emu" in out, err
    code, out, err = await env.run("alice", "tpemu", "kube", "login", "emu")
    assert code == 0, err
    kubeconfig = env.kubeconfig("alice").read_text()
    assert "tls-server-name: kube-teleport-proxy-alpn.teleport.cluster.local" in kubeconfig
    assert f"server: https://{env.web}" in kubeconfig
    code, out, err = await kubectl(env, "alice", "get", "ns")
    assert code == 0, err
    assert out.split()[:3] == ["NAME", "STATUS", "AGE"] and "default" in out and "kube-system" in out

    manifest = env.tmp / "deploy.yaml"
    manifest.write_text(DEPLOYMENT.replace("REPLICAS", "1"))
    code, out, err = await kubectl(env, "alice", "apply", "-f", str(manifest))
    assert code == 0 and "deployment.apps/web created" in out, err

    # kubectl get pods -w: the list, then a watch that must see the new pod of a scale-up.
    watcher = await asyncio.create_subprocess_exec(
        need("kubectl"), "get", "pods", "-w", stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env.env("alice"))
    assert watcher.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(20):
            while not any("Running" in line for line in lines):
                lines.append((await watcher.stdout.readline()).decode())
            manifest.write_text(DEPLOYMENT.replace("REPLICAS", "2"))
            code, out, err = await kubectl(env, "alice", "apply", "-f", str(manifest))
            assert code == 0 and "deployment.apps/web configured" in out, err
            first = next(line.split()[0] for line in lines if line.startswith("web-"))
            while not any(line.startswith("web-") and not line.startswith(first) and "Running" in line
                          for line in lines):
                lines.append((await watcher.stdout.readline()).decode())
    finally:
        watcher.terminate()
        await watcher.wait()
    new = [line for line in lines if line.startswith("web-") and not line.startswith(first)]
    assert any("ContainerCreating" in line for line in new) and any("Running" in line for line in new), lines

    code, out, err = await kubectl(env, "alice", "get", "deploy", "web")
    assert code == 0 and out.split()[5:8] == ["web", "2/2", "2"], (out, err)
    code, out, err = await kubectl(env, "alice", "exec", first, "--", "uname", "-a")
    assert code == 0 and out.startswith(os.uname().sysname) and os.uname().release in out, err
    code, out, err = await kubectl(env, "alice", "exec", first, "--", "sh", "-c", "echo oops >&2; exit 7")
    assert code == 7 and "oops" in err, (out, err)
    code, out, err = await kubectl(env, "alice", "exec", "-i", first, "--", "cat", stdin=b"through stdin\n")
    assert code == 0 and out == "through stdin\n", err
    code, out, err = await kubectl(env, "alice", "logs", first)
    assert code == 0 and f"pod default/{first} scheduled on node kubeagent" in out, err
    # What users try next: the "all" category, and the API server's self-reviews.
    code, out, err = await kubectl(env, "alice", "get", "all")
    assert code == 0 and f"pod/{first}" in out and "deployment.apps/web" in out, (out, err)
    code, out, err = await kubectl(env, "alice", "auth", "can-i", "delete", "secrets")
    assert (code, out.strip()) == (0, "yes"), err

    code, out, err = await env.run("alice", sys.executable, "-c", PY_LIST_PODS)
    assert code == 0, err
    pods, namespaces = out.splitlines()
    assert first in pods.split(",") and len(pods.split(",")) == 2 and "default" in namespaces.split(",")


async def test_refusals_are_kubernetes_status(env: kube_env.KubeEnv) -> None:
    code, _, err = await env.run("bob", "tpemu", "kube", "login", "emu")
    assert code == 0, err
    code, out, err = await kubectl(env, "bob", "auth", "can-i", "list", "pods")
    assert (code, out.strip()) == (1, "no"), (out, err)
    code, out, err = await kubectl(env, "bob", "auth", "whoami", "-o", "json")
    assert code == 0 and json.loads(out)["status"]["userInfo"] == {
        "username": "bob", "groups": ["system:authenticated"]}, (out, err)
    code, _, err = await kubectl(env, "bob", "get", "pods")
    assert code == 1 and 'Error from server (Forbidden): pods is forbidden: User "bob" cannot list resource "pods" ' \
        'in API group "" in the namespace "default"' in err
    # carol has no Kubernetes trait: tpemu kube login refuses as tsh does …
    code, _, err = await env.run("carol", "tpemu", "kube", "login", "emu")
    assert code == 1 and "does not allow Kubernetes access" in err
    # … and so does the Kubernetes Service when she comes anyway with her login certificate.
    alice_cfg = env.kubeconfig("alice")
    await env.run("alice", "tpemu", "kube", "login", "emu")
    keys = env.homes["carol"] / "keys" / "127.0.0.1"
    carol_cfg = env.kubeconfig("carol")
    alice_keys = env.homes["alice"] / "keys" / "127.0.0.1"
    carol_cfg.write_text(alice_cfg.read_text()
                         .replace(str(alice_keys / "alice-kube" / "tpemu.local" / "emu-x509.pem"),
                                  str(keys / "carol-x509.pem"))
                         .replace(str(alice_keys / "alice"), str(keys / "carol")))
    code, _, err = await kubectl(env, "carol", "get", "--raw", "/api/v1/namespaces/default/pods")
    assert code == 1 and "Your user's Teleport role does not allow Kubernetes access" in err, err

    # bad input through the proxy, with kubectl's raw requests
    bad = env.tmp / "bad.json"
    bad.write_text("{not json")
    code, _, err = await kubectl(env, "alice", "create", "--raw", "/api/v1/namespaces/default/configmaps", "-f",
                                   str(bad))
    assert code == 1 and "Error from server (BadRequest)" in err and "json parse error" in err
    big = env.tmp / "big.json"
    big.write_text(json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"},
                               "data": {"x": "a" * (4 << 20)}}))
    code, _, err = await kubectl(env, "alice", "create", "--raw", "/api/v1/namespaces/default/configmaps", "-f",
                                   str(big))
    assert code == 1 and "Request entity too large: limit is 3145728" in err, err
    code, _, err = await kubectl(env, "alice", "get", "--raw", "/api/v1/nosuchthings")
    assert code == 1 and "NotFound" in err
    code, _, err = await kubectl(env, "alice", "get", "nosuchthings")
    assert code == 1 and "the server doesn't have a resource type \"nosuchthings\"" in err
    code, _, err = await kubectl(env, "alice", "get", "pod", "missing")
    assert code == 1 and 'Error from server (NotFound): pods "missing" not found' in err
    # kubectl's create generators send protobuf bodies: decoded for the kinds they make here …
    code, out, err = await kubectl(env, "alice", "create", "secret", "generic", "s1", "--from-literal=k=v")
    assert code == 0 and "secret/s1 created" in out, err
    code, out, err = await kubectl(env, "alice", "get", "secret", "s1", "-o", "jsonpath={.data.k}")
    assert code == 0 and out == "dg==", err
    code, out, err = await kubectl(env, "alice", "create", "namespace", "team-a")
    assert code == 0, err
    # … and refused, in a Status that says what to do, for the others
    code, _, err = await kubectl(env, "alice", "create", "service", "clusterip", "svc", "--tcp=80:80")
    assert code == 1 and "protobuf bodies of kind Service are not emulated; send JSON" in err, err
    # no client certificate at all: the proxy answers 401 in a Status
    ctx = ssl.create_default_context(cafile=str(env.data / "pki" / "ca.crt"))
    web = env.proxy.info.bound[ListenerKind.WEB]
    reader, writer = await asyncio.open_connection(web.host, web.port, ssl=ctx,
                                                   server_hostname="kube-teleport-proxy-alpn.teleport.cluster.local")
    writer.write(b"GET /api HTTP/1.1\r\nHost: kube\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["reason"] == "Unauthorized"
    # still serving afterwards
    code, _, err = await kubectl(env, "alice", "get", "ns", "default")
    assert code == 0, err


async def test_separate_mode_kube_listener(tmp_path: Path) -> None:
    need("kubectl")
    controller.START_DELAY = 0.3
    env = await kube_env.start(tmp_path, separate=True, users={"alice": kube_env.USERS["alice"]})
    try:
        code, _, err = await env.run("alice", "tpemu", "kube", "login", "emu")
        assert code == 0, err
        from tpemu.proxy.decide import ListenerKind

        kube_addr = env.proxy.info.bound[ListenerKind.KUBE]
        assert f"server: https://{kube_addr}" in env.kubeconfig("alice").read_text()
        code, out, err = await kubectl(env, "alice", "get", "ns")
        assert code == 0 and "kube-public" in out, err
        manifest = env.tmp / "deploy.yaml"
        manifest.write_text(DEPLOYMENT.replace("REPLICAS", "1"))
        code, out, err = await kubectl(env, "alice", "apply", "-f", str(manifest))
        assert code == 0 and "deployment.apps/web created" in out, err
        code, out, err = await kubectl(env, "alice", "rollout", "status", "deploy/web", "--timeout=20s")
        assert code == 0, (out, err)
        code, out, err = await kubectl(env, "alice", "exec", "deploy/web", "--", "uname", "-a")
        assert code == 0 and out.startswith(os.uname().sysname), err
        code, out, err = await env.run("alice", sys.executable, "-c", PY_LIST_PODS)
        assert code == 0 and "default" in out.splitlines()[1] and out.startswith("web-"), err
    finally:
        await kube_env.stop(env)


async def _direct_request(env: kube_env.KubeEnv, files: object, forwarded: str | None) -> tuple[int, dict[str, object]]:
    """One request straight to the Kubernetes Service's own port, with the TLS files of ``files``
    (a host identity) and, when given, a ``Teleport-Impersonate-User`` header."""
    addr = env.agent.direct_kube_addr
    assert addr is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(files.ca))  # type: ignore[attr-defined]
    ctx.load_cert_chain(files.cert, files.key)  # type: ignore[attr-defined]
    reader, writer = await asyncio.open_connection(addr.host, addr.port, ssl=ctx,
                                                   server_hostname="kube.teleport.cluster.local")
    head = "GET /api/v1/namespaces HTTP/1.1\r\nHost: kube\r\nConnection: close\r\n"
    if forwarded is not None:
        head += f"Teleport-Impersonate-User: {forwarded}\r\n"
    writer.write((head + "\r\n").encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


async def test_directly_joined_kubernetes_service(tmp_path: Path) -> None:
    """The Kubernetes Service joined to the Auth Service, listening on its own port (the seed's
    direct-connection table allows it for Kubernetes); the proxy reaches the address it announced
    as Teleport 17's does (``lib/kube/proxy/transport.go`` ``newLocalClusterTransport``): its own
    host certificate, the user in ``Teleport-Impersonate-User`` on every request — kubectl's
    requests, watches, exec's upgrade and ``auth whoami`` all arrive as the user — and only a
    Proxy may forward a user (``lib/authz`` ``Middleware.ServeHTTP``)."""
    need("kubectl")
    controller.START_DELAY = 0.3
    env = await kube_env.start(tmp_path, direct=True, users={"alice": kube_env.USERS["alice"]})
    try:
        assert not env.agent.tunnels and env.agent.direct_kube_addr is not None
        code, _, err = await env.run("alice", "tpemu", "kube", "login", "emu")
        assert code == 0, err
        code, out, err = await kubectl(env, "alice", "get", "ns")
        assert code == 0 and "kube-system" in out, err
        code, out, err = await kubectl(env, "alice", "auth", "whoami")
        assert code == 0 and "alice" in out and "system:masters" in out, (out, err)
        manifest = env.tmp / "deploy.yaml"
        manifest.write_text(DEPLOYMENT.replace("REPLICAS", "1"))
        code, out, err = await kubectl(env, "alice", "apply", "-f", str(manifest))
        assert code == 0 and "created" in out, err
        code, out, err = await kubectl(env, "alice", "rollout", "status", "deploy/web", "--timeout=20s")
        assert code == 0, (out, err)
        code, out, err = await kubectl(env, "alice", "exec", "deploy/web", "--", "sh", "-c", "echo hi; exit 3")
        assert code == 3 and out == "hi\n", (code, out, err)

        # The proxy's own host certificate, as the relay uses it: a Proxy's.
        user = {"username": "alice", "groups": ["access"], "teleport_cluster": kube_env.CLUSTER,
                "kubernetes_groups": ["system:masters"]}
        proxy_files = env.proxy.tls_files
        code, body = await _direct_request(env, proxy_files, json.dumps(user))
        assert code == 200 and body["kind"] == "NamespaceList", body  # the roles (access) are checked per request
        code, body = await _direct_request(env, proxy_files, None)
        assert (code, body["reason"]) == (401, "Unauthorized"), body
        code, body = await _direct_request(env, proxy_files, "{not json")
        assert (code, body["reason"]) == (400, "BadRequest"), body
        code, body = await _direct_request(env, proxy_files, json.dumps({**user, "teleport_cluster": "other"}))
        assert code == 403 and "trusted clusters are not emulated" in str(body["message"]), body
        # The agent's own host certificate (role Kube) is of the same CA, but not a Proxy's.
        code, body = await _direct_request(env, env.agent.contexts["kube"].files, json.dumps(user))
        assert code == 403 and "Credentials forwarding is only permitted for Proxy" in str(body["message"]), body
    finally:
        await kube_env.stop(env)


async def test_roles_kubernetes_labels_decide_kube_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Teleport's kubernetes_labels check (``lib/services/role.go``): a role without a matching
    ``kubernetes_labels`` rule (a role with only kubernetes_groups, or a deny rule) gets no certificate for the
    cluster, even with kubernetes_groups traits; ``access`` does."""
    env = await kube_env.start(tmp_path, users={
        "frank": {"roles": ["kube-nolabels"], "kubernetes_groups": ["system:masters"]},
        "hank": {"roles": ["editor"], "kubernetes_groups": ["system:masters"]},
        "gina": {"roles": ["access", "no-kube"], "kubernetes_groups": ["system:masters"]},
        "alice": {"kubernetes_groups": ["system:masters"]}})
    try:
        admin = kube_env.admin_client(env.data)
        await admin.call("PUT", "/v1/roles/no-kube", {"kind": "role", "metadata": {"name": "no-kube"},
                                                      "spec": {"deny": {"kubernetes_labels": {"*": "*"}}}})
        # kubernetes_groups from the trait, but no kubernetes_labels rule: the cluster is not allowed.
        await admin.call("PUT", "/v1/roles/kube-nolabels", {
            "kind": "role", "metadata": {"name": "kube-nolabels"},
            "spec": {"allow": {"kubernetes_groups": ["{{internal.kubernetes_groups}}"]}}})
        await env.login("frank")  # the role exists now: a new certificate carries its groups
        code, out, err = await env.run("frank", "tpemu", "kube", "login", kube_env.KUBE)
        assert code != 0 and f"access to kubernetes cluster {kube_env.KUBE!r} denied" in out + err, (out, err)
        # The preset editor has no kubernetes_groups template, so the trait gives no group: tsh's
        # checkIfCertsAreAllowedToAccessCluster refuses before any request.
        code, out, err = await env.run("hank", "tpemu", "kube", "login", kube_env.KUBE)
        assert code != 0 and "role does not allow Kubernetes access" in out + err, (out, err)
        code, out, err = await env.run("gina", "tpemu", "kube", "login", kube_env.KUBE)
        assert code != 0 and "denied by role 'no-kube'" in out + err, (out, err)
        code, out, err = await env.run("alice", "tpemu", "kube", "login", kube_env.KUBE)
        assert code == 0, err
        code, out, err = await kubectl(env, "alice", "get", "ns")
        assert code == 0, err
        # Checked per request by the Kubernetes Service too: a role change reaches a live certificate.
        monkeypatch.setattr(access, "TTL", 0.2)
        await admin.call("PUT", "/v1/roles/access", {"kind": "role", "metadata": {"name": "access"},
                                                     "spec": {"deny": {"kubernetes_labels": {"*": "*"}}}})
        async with asyncio.timeout(20):
            while (await kubectl(env, "alice", "get", "ns"))[0] == 0:
                await asyncio.sleep(0.1)
        code, out, err = await kubectl(env, "alice", "get", "ns")
        assert "Forbidden" in err and "access denied to kubernetes cluster" in err, err
    finally:
        await kube_env.stop(env)


async def test_testkit_cluster_with_a_directly_joined_kubernetes_service(tmp_path: Path) -> None:
    """``tpemu.Cluster(kube=..., kube_direct=True)``: the public test API's direct Kubernetes Service,
    reached through the proxy's per-request relay (Teleport-Impersonate-User), with kubectl."""
    from tpemu.testkit import Cluster

    kubectl_bin = need("kubectl")
    async with Cluster(tmp_path, nodes=(), databases=(), kube="emu", kube_direct=True) as c:
        alice = await c.user("alice")
        await alice.kubeconfig()
        env = {**os.environ, **alice.env(), "NO_PROXY": "*"}
        for argv, want in ((("get", "ns", "-o", "name"), "namespace/kube-system"),
                           (("auth", "whoami"), "system:masters"), (("auth", "can-i", "create", "pods"), "yes")):
            proc = await asyncio.create_subprocess_exec(kubectl_bin, "--request-timeout=20s", *argv, env=env,
                                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0 and want in out.decode(), (argv, out, err)


async def test_explain_field_validation_and_server_side_apply(env: kube_env.KubeEnv) -> None:
    """What a kubectl user meets after ``get``: ``kubectl explain`` from the OpenAPI v3 schemas,
    ``--validate`` refusing a misspelt field as the API server does, server-side apply owning fields
    (a conflict with another manager, ``--force-conflicts``), all after aggregated discovery alone."""
    code, _, err = await env.run("alice", "tpemu", "kube", "login", "emu")
    assert code == 0, err
    code, out, err = await kubectl(env, "alice", "explain", "deployment.spec.replicas")
    assert code == 0 and "FIELD: replicas <integer>" in out, (out, err)
    code, out, err = await kubectl(env, "alice", "explain", "pods.spec.containers")
    assert code == 0 and "image\t<string>" in out and "name\t<string> -required-" in out, (out, err)
    code, out, err = await kubectl(env, "alice", "explain", "deployment.spec.replicass")
    assert code == 1 and 'field "replicass" does not exist' in err, (out, err)
    # discovery: one request each for /api and /apis (aggregated), no per-group-version fallback
    code, out, err = await kubectl(env, "alice", "get", "deploy", "-v=6")
    assert code == 0 and "/apis/apps/v1?" not in err and "/api/v1?" not in err, err

    bad = env.tmp / "bad.yaml"
    bad.write_text(DEPLOYMENT.replace("REPLICAS", "1").replace("  replicas:", "  replicass:")
                   .replace("image: nginx", "imagee: x\n        image: nginx"))
    for flags in ((), ("--validate=strict",)):
        code, out, err = await kubectl(env, "alice", "apply", *flags, "-f", str(bad))
        assert code == 1 and err.strip() == (
            f'Error from server (BadRequest): error when creating "{bad}": Deployment in version "v1" cannot be '
            'handled as a Deployment: strict decoding error: unknown field "spec.replicass", unknown field '
            '"spec.template.spec.containers[0].imagee"'), (flags, out, err)
    code, out, err = await kubectl(env, "alice", "apply", "--server-side", "-f", str(bad))
    assert code == 1 and "Error from server: failed to create typed patch object (default/web; apps/v1, " \
        "Kind=Deployment): errors:" in err and '.spec.template.spec.containers[name="nginx"].imagee: field not ' \
        "declared in schema" in err, err
    code, out, err = await kubectl(env, "alice", "apply", "--validate=warn", "-f", str(bad))
    assert code == 0 and 'Warning: unknown field "spec.replicass"' in err and "created" in out, (out, err)
    code, out, err = await kubectl(env, "alice", "get", "deploy", "web", "-o", "json")
    spec = json.loads(out)["spec"]  # stored without them (the last-applied annotation keeps its text)
    assert code == 0 and "replicass" not in spec and "imagee" not in spec["template"]["spec"]["containers"][0], out
    code, out, err = await kubectl(env, "alice", "delete", "deploy", "web")
    assert code == 0, err

    manifest = env.tmp / "deploy.yaml"
    manifest.write_text(DEPLOYMENT.replace("REPLICAS", "1"))
    code, out, err = await kubectl(env, "alice", "apply", "--server-side", "-f", str(manifest))
    assert code == 0 and "deployment.apps/web serverside-applied" in out, err
    code, out, err = await kubectl(env, "alice", "patch", "deploy", "web", "-p", '{"spec":{"replicas":3}}')
    assert code == 0, err
    code, out, err = await kubectl(env, "alice", "apply", "--server-side", "-f", str(manifest))
    assert code == 1 and 'error: Apply failed with 1 conflict: conflict with "kubectl-patch" using apps/v1 at ' in err \
        and err.splitlines()[0].endswith(": .spec.replicas") and "--force-conflicts" in err, err
    code, out, err = await kubectl(env, "alice", "apply", "--server-side", "--force-conflicts", "-f", str(manifest))
    assert code == 0, err
    code, out, err = await kubectl(env, "alice", "get", "deploy", "web", "-o", "json", "--show-managed-fields")
    deploy = json.loads(out)
    assert deploy["spec"]["replicas"] == 1
    owners = {(e["manager"], e["operation"]): e["fieldsV1"] for e in deploy["metadata"]["managedFields"]}
    assert "f:replicas" in owners[("kubectl", "Apply")]["f:spec"], owners
    assert "f:replicas" not in owners.get(("kubectl-patch", "Update"), {}).get("f:spec", {}), owners


async def test_role_templates_decide_kubernetes_principals(tmp_path: Path) -> None:
    """A role's ``kubernetes_groups``/``kubernetes_users`` are templates over the user's traits
    (``lib/utils/parse``: ``email.local``, ``regexp.replace``), interpolated when the certificate is
    issued; the API server sees the result (``kubectl auth whoami``)."""
    need("kubectl")
    env = await kube_env.start(tmp_path, users={
        "dana": {"roles": ["kube-tmpl"], "email": ["Dana Scully <dana.s@example.com>"], "team": ["admins", "dev"]},
        "erin": {"roles": ["kube-tmpl"], "email": ["erin@example.com"], "team": ["dev"]}})
    try:
        admin = kube_env.admin_client(env.data)
        await admin.call("PUT", "/v1/roles/kube-tmpl", {"kind": "role", "metadata": {"name": "kube-tmpl"}, "spec": {
            "allow": {"kubernetes_labels": {"*": "*"},
                      "kubernetes_groups": ['{{regexp.replace(external.team, "^admins$", "system:masters")}}',
                                            "team-{{external.team}}"],
                      "kubernetes_users": ["{{email.local(external.email)}}"]},
            "deny": {"kubernetes_groups": ["team-dev"]}}})
        for user in ("dana", "erin"):
            await env.login(user)  # a login certificate after the role exists (it carries the principals)
            code, out, err = await env.run(user, "tpemu", "kube", "login", kube_env.KUBE)
            assert code == 0, (out, err)
        code, out, err = await kubectl(env, "dana", "auth", "whoami", "-o", "json")
        assert code == 0 and json.loads(out)["status"]["userInfo"] == {
            "username": "dana.s", "groups": ["system:masters", "team-admins", "system:authenticated"]}, (out, err)
        code, out, err = await kubectl(env, "dana", "get", "ns", "kube-system", "-o", "name")
        assert code == 0 and out.strip() == "namespace/kube-system", err
        # erin's team does not match the regexp and team-dev is denied: only her user remains
        code, out, err = await kubectl(env, "erin", "auth", "whoami", "-o", "json")
        assert code == 0 and json.loads(out)["status"]["userInfo"] == {
            "username": "erin", "groups": ["system:authenticated"]}, (out, err)
        code, out, err = await kubectl(env, "erin", "get", "pods")
        assert code == 1 and 'User "erin" cannot list resource "pods"' in err, err
        with pytest.raises(Exception, match="expected"):  # a template that does not parse is refused
            await admin.call("PUT", "/v1/roles/broken", {"kind": "role", "metadata": {"name": "broken"}, "spec": {
                "allow": {"kubernetes_users": ["{{email.local(external.email}}"]}}})
    finally:
        await kube_env.stop(env)
