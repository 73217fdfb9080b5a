"""The emulated Kubernetes API in process (``tpemu.agent.kube.api``/``objects``/``store``): discovery,
the REST verbs with Kubernetes' Status errors, watches with resourceVersion resume and 410, tables,
selectors, the default RBAC roles, the deployment controller, persistence across a restart, and
the Kubernetes Service's impersonation rules (Teleport's ``lib/kube/proxy/forwarder.go``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tpemu import identity as ident
from tpemu.agent.kube import controller
from tpemu.agent.kube.api import EmulatedAPI
from tpemu.agent.kube.service import NO_ACCESS, principals
from tpemu.net.kube_http import Reply, Request, Streamed
from tpemu.net.kube_status import StatusError

ADMIN = ("admin", ["system:masters", "system:authenticated"])


def req(method: str, target: str, body: Any = None, user: tuple[str, list[str]] = ADMIN,
        ctype: str = "application/json", accept: str = "application/json") -> Request:
    headers = {"accept": accept, "content-type": ctype, "impersonate-user": user[0]}
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
    return Request(method, target, headers, {"impersonate-group": list(user[1])}, data)


async def call(api: EmulatedAPI, *args: Any, **kw: Any) -> tuple[int, Any]:
    out = await api.handle(req(*args, **kw))
    assert isinstance(out, Reply)
    return out.status, json.loads(out.body) if out.content_type == "application/json" else out.body


@pytest.fixture
async def api(tmp_path: Path) -> Any:
    controller.START_DELAY = 0.01
    a = EmulatedAPI("emu", tmp_path, node_name="node1")
    yield a
    a.close()


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1", "labels": {"app": "x"}},
       "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
DEPLOY = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
          "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                   "template": {"metadata": {"labels": {"app": "web"}},
                                "spec": {"containers": [{"name": "n", "image": "nginx"}]}}}}


async def test_discovery(api: EmulatedAPI) -> None:
    assert (await call(api, "GET", "/api"))[1]["versions"] == ["v1"]
    groups = (await call(api, "GET", "/apis"))[1]
    # apps for the stored types; the two review groups of kubectl auth can-i / whoami (reviews.py).
    assert [g["name"] for g in groups["groups"]] == ["apps", "authorization.k8s.io", "authentication.k8s.io"]
    core = (await call(api, "GET", "/api/v1"))[1]
    names = {r["name"] for r in core["resources"]}
    assert {"namespaces", "pods", "pods/log", "pods/exec", "configmaps", "secrets"} <= names
    apps = (await call(api, "GET", "/apis/apps/v1"))[1]
    assert apps["groupVersion"] == "apps/v1" and "deployments" in {r["name"] for r in apps["resources"]}
    assert (await call(api, "GET", "/version"))[1]["minor"] == "32"
    index = (await call(api, "GET", "/openapi/v3"))[1]["paths"]
    assert set(index) == {"api/v1", "apis/apps/v1", "apis/authorization.k8s.io/v1", "apis/authentication.k8s.io/v1"}
    doc = (await call(api, "GET", "/openapi/v3/apis/apps/v1"))[1]
    op = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert "fieldValidation" in {p["name"] for p in op["parameters"]}


async def test_crud_and_status_errors(api: EmulatedAPI) -> None:
    code, pod = await call(api, "POST", "/api/v1/namespaces/default/pods", POD)
    assert code == 201 and pod["metadata"]["uid"] and pod["status"]["phase"] == "Pending"
    code, err = await call(api, "POST", "/api/v1/namespaces/default/pods", POD)
    assert (code, err["reason"], err["message"]) == (409, "AlreadyExists", 'pods "p1" already exists')
    code, err = await call(api, "GET", "/api/v1/namespaces/default/pods/nope")
    assert (code, err["kind"], err["reason"], err["details"]) == (404, "Status", "NotFound",
                                                                  {"name": "nope", "kind": "pods"})
    code, err = await call(api, "POST", "/api/v1/namespaces/nons/pods", POD)
    assert code == 404 and err["message"] == 'namespaces "nons" not found'
    code, err = await call(api, "POST", "/api/v1/namespaces/default/pods", b"{bad")
    assert code == 400 and err["reason"] == "BadRequest"
    code, err = await call(api, "POST", "/api/v1/namespaces/default/pods",
                           {**POD, "metadata": {"name": "Bad_Name"}})
    assert code == 422 and err["reason"] == "Invalid" and err["details"]["causes"][0]["field"] == "metadata.name"
    code, err = await call(api, "POST", "/api/v1/namespaces/default/pods", {**POD, "spec": {}})
    assert code == 422 and "spec.containers: Required value" in err["message"]
    code, err = await call(api, "POST", "/api/v1/namespaces/default/configmaps", POD)
    assert code == 400
    code, err = await call(api, "GET", "/api/v1/nosuch")
    assert code == 404 and err["reason"] == "NotFound"
    code, err = await call(api, "GET", "/apis/nogroup/v1/things")
    assert code == 404
    code, err = await call(api, "POST", "/api/v1/namespaces/default/pods/p1", POD)
    assert code == 405 and err["reason"] == "MethodNotAllowed"
    code, err = await call(api, "POST", "/api/v1/namespaces/default/secrets", b"\x00",
                           ctype="application/vnd.kubernetes.protobuf")
    assert code == 415
    # update with a stale resourceVersion: Conflict
    code, live = await call(api, "GET", "/api/v1/namespaces/default/pods/p1")
    stale = {**live, "metadata": {**live["metadata"], "resourceVersion": "1"}}
    code, err = await call(api, "PUT", "/api/v1/namespaces/default/pods/p1", stale)
    assert code == 409 and err["reason"] == "Conflict"
    live["metadata"]["labels"] = {"app": "y"}
    code, updated = await call(api, "PUT", "/api/v1/namespaces/default/pods/p1", live)
    assert code == 200 and int(updated["metadata"]["resourceVersion"]) > int(live["metadata"]["resourceVersion"])
    code, patched = await call(api, "PATCH", "/api/v1/namespaces/default/pods/p1", {"metadata": {"labels": {"z": "1"}}},
                               ctype="application/merge-patch+json")
    assert patched["metadata"]["labels"] == {"app": "y", "z": "1"}
    code, err = await call(api, "PATCH", "/api/v1/namespaces/default/pods/p1", {}, ctype="text/plain")
    assert code == 415
    code, gone = await call(api, "DELETE", "/api/v1/namespaces/default/pods/p1")
    assert code == 200 and gone["metadata"]["name"] == "p1"
    assert (await call(api, "GET", "/api/v1/namespaces/default/pods/p1"))[0] == 404


async def test_server_side_apply_creates_then_merges(api: EmulatedAPI) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    path = "/api/v1/namespaces/default/configmaps/c?fieldManager=kubectl"
    code, out = await call(api, "PATCH", path, json.dumps(cm).encode(), ctype="application/apply-patch+yaml")
    assert code == 201 and out["data"] == {"a": "1"}
    yaml_body = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  b: '2'\n"
    code, out = await call(api, "PATCH", path, yaml_body, ctype="application/apply-patch+yaml")
    assert code == 200 and out["data"] == {"a": "1", "b": "2"}
    code, err = await call(api, "PATCH", "/api/v1/namespaces/default/configmaps/d", yaml_body.replace(b"c\n", b"d\n"),
                           ctype="application/apply-patch+yaml")
    assert code == 422 and "fieldManager" in err["message"]


async def test_list_table_and_selectors(api: EmulatedAPI) -> None:
    for name, app in (("a", "x"), ("b", "y")):
        await call(api, "POST", "/api/v1/namespaces/default/pods", {**POD, "metadata": {"name": name,
                                                                                       "labels": {"app": app}}})
    code, lst = await call(api, "GET", "/api/v1/namespaces/default/pods?labelSelector=app%3Dx")
    assert [p["metadata"]["name"] for p in lst["items"]] == ["a"] and lst["kind"] == "PodList"
    code, lst = await call(api, "GET", "/api/v1/pods?labelSelector=app+in+(x,y),app!=y")
    assert [p["metadata"]["name"] for p in lst["items"]] == ["a"]
    code, lst = await call(api, "GET", "/api/v1/namespaces/default/pods?fieldSelector=metadata.name%3Db")
    assert [p["metadata"]["name"] for p in lst["items"]] == ["b"]
    code, _ = await call(api, "GET", "/api/v1/pods?fieldSelector=spec.nope%3Db")
    assert code == 400
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    code, table = await call(api, "GET", "/api/v1/namespaces/default/pods", accept=accept)
    assert table["kind"] == "Table" and [c["name"] for c in table["columnDefinitions"]][:5] == [
        "Name", "Ready", "Status", "Restarts", "Age"]
    assert table["rows"][0]["cells"][:3] == ["a", "0/1", "ContainerCreating"]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


async def test_watch_resume_and_expired(api: EmulatedAPI) -> None:
    code, lst = await call(api, "GET", "/api/v1/namespaces/default/configmaps")
    rv = lst["metadata"]["resourceVersion"]
    await call(api, "POST", "/api/v1/namespaces/default/configmaps",
               {"metadata": {"name": "c1"}, "data": {"k": "v"}})
    out = await api.handle(req("GET", f"/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}"))
    assert isinstance(out, Streamed)
    it = out.chunks.__aiter__()
    first = json.loads(await asyncio.wait_for(it.__anext__(), 2))
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "c1")
    await call(api, "PATCH", "/api/v1/namespaces/default/configmaps/c1", {"data": {"k": "w"}},
               ctype="application/merge-patch+json")
    second = json.loads(await asyncio.wait_for(it.__anext__(), 2))
    assert second["type"] == "MODIFIED" and second["object"]["data"] == {"k": "w"}
    await call(api, "DELETE", "/api/v1/namespaces/default/configmaps/c1")
    third = json.loads(await asyncio.wait_for(it.__anext__(), 2))
    assert third["type"] == "DELETED"
    await it.aclose()  # type: ignore[attr-defined]
    assert not api.store.watches
    api.store.window_start = api.store.rv  # as if the change window had moved on
    code, err = await call(api, "GET", f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}")
    assert code == 410 and err["reason"] == "Expired"
    code, err = await call(api, "GET", "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=abc")
    assert code == 400


async def test_deployment_controller_and_restart(tmp_path: Path, api: EmulatedAPI) -> None:
    code, dep = await call(api, "POST", "/apis/apps/v1/namespaces/default/deployments", DEPLOY)
    assert code == 201 and dep["metadata"]["generation"] == 1
    async with asyncio.timeout(5):
        while True:
            pods = (await call(api, "GET", "/api/v1/namespaces/default/pods"))[1]["items"]
            if len(pods) == 2 and all(p["status"]["phase"] == "Running" for p in pods):
                break
            await asyncio.sleep(0.01)
    async with asyncio.timeout(5):
        while (await call(api, "GET", "/apis/apps/v1/namespaces/default/deployments/web"))[1]["status"].get(
                "readyReplicas") != 2:
            await asyncio.sleep(0.01)
    code, scaled = await call(api, "PATCH", "/apis/apps/v1/namespaces/default/deployments/web",
                              {"spec": {"replicas": 1}}, ctype="application/strategic-merge-patch+json")
    assert scaled["metadata"]["generation"] == 2
    assert len((await call(api, "GET", "/api/v1/namespaces/default/pods"))[1]["items"]) == 1
    code, err = await call(api, "POST", "/apis/apps/v1/namespaces/default/deployments",
                           {**DEPLOY, "metadata": {"name": "bad"}, "spec": {**DEPLOY["spec"], "selector": {
                               "matchLabels": {"app": "other"}}}})
    assert code == 422 and "selector" in err["message"]
    api.close()
    again = EmulatedAPI("emu", tmp_path, node_name="node1")  # the objects are in SQLite
    try:
        code, dep2 = await call(again, "GET", "/apis/apps/v1/namespaces/default/deployments/web")
        assert code == 200 and dep2["metadata"]["uid"] == dep["metadata"]["uid"]
        code, _ = await call(again, "DELETE", "/apis/apps/v1/namespaces/default/deployments/web")
        assert (await call(again, "GET", "/api/v1/namespaces/default/pods"))[1]["items"] == []
    finally:
        again.close()


async def test_logs(api: EmulatedAPI) -> None:
    await call(api, "POST", "/api/v1/namespaces/default/pods", POD)
    code, text = await call(api, "GET", "/api/v1/namespaces/default/pods/p1/log")
    assert code == 200 and b"scheduled on node node1" in text
    code, _ = await call(api, "GET", "/api/v1/namespaces/default/pods/p1/log?container=zz")
    assert code == 400


async def test_rbac_default_roles(api: EmulatedAPI) -> None:
    bob = ("bob", ["system:authenticated"])
    code, err = await call(api, "GET", "/api/v1/namespaces/default/pods", user=bob)
    assert (code, err["reason"], err["message"]) == (
        403, "Forbidden", 'pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the '
        'namespace "default"')
    code, err = await call(api, "GET", "/api/v1/namespaces", user=bob)
    assert err["message"].endswith('cannot list resource "namespaces" in API group "" at the cluster scope')
    assert (await call(api, "GET", "/api/v1", user=bob))[0] == 200  # discovery for every user
    viewer = ("v", ["view"])
    assert (await call(api, "GET", "/api/v1/namespaces/default/pods", user=viewer))[0] == 200
    assert (await call(api, "GET", "/api/v1/namespaces/default/secrets", user=viewer))[0] == 403
    assert (await call(api, "POST", "/api/v1/namespaces/default/pods", POD, user=viewer))[0] == 403
    editor = ("e", ["edit"])
    assert (await call(api, "POST", "/api/v1/namespaces/default/pods", POD, user=editor))[0] == 201
    assert (await call(api, "DELETE", "/api/v1/namespaces/default", user=editor))[0] == 403
    assert (await api.handle(Request("GET", "/api", {}, {}))).status == 401  # type: ignore[union-attr]


def _identity(**kw: Any) -> ident.Identity:
    return ident.Identity(username="alice", **kw)


def test_principals_follow_teleport() -> None:
    plain = Request("GET", "/api", {}, {})
    with pytest.raises(StatusError) as no:
        principals(_identity(), plain)
    assert (no.value.code, no.value.message) == (404, NO_ACCESS)
    assert principals(_identity(kubernetes_groups=("system:masters",)), plain) == (
        "alice", ("system:masters", "system:authenticated"))
    assert principals(_identity(kubernetes_users=("bob",)), plain) == ("bob", ("system:authenticated",))
    with pytest.raises(StatusError, match="select a user"):
        principals(_identity(kubernetes_users=("a", "b")), plain)
    chosen = Request("GET", "/api", {"impersonate-user": "b"}, {"impersonate-group": ["dev"]})
    assert principals(_identity(kubernetes_users=("a", "b"), kubernetes_groups=("dev", "ops")), chosen) == (
        "b", ("dev", "system:authenticated"))
    with pytest.raises(StatusError, match="denied"):
        principals(_identity(kubernetes_groups=("dev",)), Request("GET", "/", {}, {"impersonate-group": [
            "system:masters"]}))
