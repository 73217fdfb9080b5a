"""The emulated Kubernetes API in process (``tpemu.agent.kube.api``/``objects``/``store``): discovery,
the REST verbs with Kubernetes' Status errors, watches with resourceVersion resume and 410, tables,
selectors, the default RBAC roles, the deployment controller, persistence across a restart, and
the Kubernetes Service's impersonation rules (Teleport's ``lib/kube/proxy/forwarder.go``)."""

from __future__ import annotations

import asyncio
import copy
import json
import re
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


async def test_server_side_apply_owns_fields(api: EmulatedAPI) -> None:
    """Server-side apply as structured-merge-diff does it: the applier owns what it applied; a field it
    stops applying is removed unless another manager owns it; another manager's field survives."""
    apply = "application/apply-patch+yaml"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    path = "/api/v1/namespaces/default/configmaps/c?fieldManager=kubectl"
    code, out = await call(api, "PATCH", path, json.dumps(cm).encode(), ctype=apply)
    assert code == 201 and out["data"] == {"a": "1"}
    assert out["metadata"]["managedFields"] == [{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                                                 "time": out["metadata"]["managedFields"][0]["time"],
                                                 "fieldsType": "FieldsV1",
                                                 "fieldsV1": {"f:data": {"f:a": {}}}}]
    # another manager adds a field with a merge patch
    code, out = await call(api, "PATCH", "/api/v1/namespaces/default/configmaps/c?fieldManager=other",
                           {"data": {"z": "9"}}, ctype="application/merge-patch+json")
    assert code == 200 and [e["manager"] for e in out["metadata"]["managedFields"]] == ["kubectl", "other"]
    yaml_body = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  b: '2'\n"
    code, out = await call(api, "PATCH", path, yaml_body, ctype=apply)
    assert code == 200 and out["data"] == {"b": "2", "z": "9"}, out
    # the other manager's field, applied with another value: a conflict, unless forced
    conflicting = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  b: '2'\n  z: '0'\n"
    code, err = await call(api, "PATCH", path, conflicting, ctype=apply)
    assert (code, err["reason"]) == (409, "Conflict"), err
    assert err["message"].startswith('Apply failed with 1 conflict: conflict with "other" using v1 at ')
    assert err["message"].endswith(": .data.z") and err["details"]["causes"][0]["field"] == ".data.z"
    code, out = await call(api, "PATCH", path + "&force=true", conflicting, ctype=apply)
    assert code == 200 and out["data"] == {"b": "2", "z": "0"}
    owners = {e["manager"]: e["fieldsV1"] for e in out["metadata"]["managedFields"]}
    assert owners == {"kubectl": {"f:data": {"f:b": {}, "f:z": {}}}}, owners  # "other" owns nothing now
    code, err = await call(api, "PATCH", "/api/v1/namespaces/default/configmaps/d", yaml_body.replace(b"c\n", b"d\n"),
                           ctype=apply)
    assert code == 422 and "fieldManager" in err["message"]
    code, err = await call(api, "PATCH", "/api/v1/namespaces/default/configmaps/c?force=true", {"data": {}},
                           ctype="application/merge-patch+json")
    assert code == 422 and "may not be specified for non-apply patch" in err["message"]


async def test_apply_conflicts_list_items_by_key(api: EmulatedAPI) -> None:
    apply = "application/apply-patch+yaml"
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
              "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": {
                  "metadata": {"labels": {"app": "web"}},
                  "spec": {"containers": [{"name": "nginx", "image": "nginx:1"}]}}}}
    base = "/apis/apps/v1/namespaces/default/deployments"
    code, _ = await call(api, "POST", base + "?fieldManager=kubectl-create", deploy)
    assert code == 201
    changed = copy.deepcopy(deploy)
    changed["spec"]["replicas"] = 3
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:2"
    code, err = await call(api, "PATCH", base + "/web?fieldManager=ci", json.dumps(changed).encode(), ctype=apply)
    assert code == 409
    assert err["message"].startswith("Apply failed with 2 conflicts: conflicts with \"kubectl-create\" using apps/v1")
    assert err["message"].endswith('\n- .spec.replicas\n- .spec.template.spec.containers[name="nginx"].image'), err
    # the same values: shared ownership, no conflict
    code, out = await call(api, "PATCH", base + "/web?fieldManager=ci", json.dumps(deploy).encode(), ctype=apply)
    assert code == 200 and {e["manager"] for e in out["metadata"]["managedFields"]} == {"kubectl-create", "ci"}
    ci = next(e for e in out["metadata"]["managedFields"] if e["manager"] == "ci")["fieldsV1"]
    assert ci["f:spec"]["f:template"]["f:spec"]["f:containers"] == {
        'k:{"name":"nginx"}': {".": {}, "f:image": {}, "f:name": {}}}


async def test_field_validation(api: EmulatedAPI) -> None:
    """Unknown fields, as the API server's field validation treats them (create.go, patch.go)."""
    bad = {**POD, "metadata": {"name": "v1"}, "spec": {"containers": [{"name": "c", "image": "b", "imagee": "x"}],
                                                       "replicass": 2}}
    base = "/api/v1/namespaces/default/pods"
    code, err = await call(api, "POST", base + "?fieldValidation=Strict", bad)
    assert (code, err["reason"]) == (400, "BadRequest")
    assert err["message"] == ('Pod in version "v1" cannot be handled as a Pod: strict decoding error: unknown field '
                              '"spec.containers[0].imagee", unknown field "spec.replicass"'), err
    out = await api.handle(req("POST", base, bad))  # Warn, the default: stored without them, with warnings
    assert isinstance(out, Reply) and out.status == 201
    assert [v for k, v in out.headers if k == "Warning"] == ['299 - "unknown field \\"spec.containers[0].imagee\\""',
                                                          '299 - "unknown field \\"spec.replicass\\""']
    stored = json.loads(out.body)
    assert "replicass" not in stored["spec"] and "imagee" not in stored["spec"]["containers"][0]
    code, err = await call(api, "PATCH", base + "/v1?fieldValidation=Strict", {"spec": {"bogus": 1}},
                           ctype="application/strategic-merge-patch+json")
    assert (code, err["reason"]) == (422, "Invalid")
    assert err["message"] == (' "" is invalid: patch: Invalid value: "map[spec:map[bogus:1]]": strict decoding '
                              'error: unknown field "spec.bogus"'), err
    code, err = await call(api, "POST", base + "?fieldValidation=Bogus", bad)
    assert code == 422 and 'supported values: "", "Ignore", "Strict", "Warn"' in err["message"]
    out = await api.handle(req("POST", base + "?fieldValidation=Ignore", {**bad, "metadata": {"name": "v2"}}))
    assert isinstance(out, Reply) and out.status == 201 and not [k for k, _ in out.headers if k == "Warning"]
    code, err = await call(api, "PATCH", base + "/v3?fieldManager=m", json.dumps(
        {**bad, "metadata": {"name": "v3"}}).encode(), ctype="application/apply-patch+yaml")
    assert code == 500 and err["message"] == (
        "failed to create typed patch object (default/v3; /v1, Kind=Pod): errors:\n"
        '  .spec.containers[name="c"].imagee: field not declared in schema\n'
        "  .spec.replicass: field not declared in schema\n"), err


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


async def test_aggregated_discovery(api: EmulatedAPI) -> None:
    """``/api`` and ``/apis`` as kubectl 1.32 asks for them (``apidiscovery.k8s.io/v2``), legacy otherwise."""
    accept = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;"
              "g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json")
    out = await api.handle(req("GET", "/apis", accept=accept))
    assert isinstance(out, Reply) and out.content_type == "application/json;g=apidiscovery.k8s.io;v=v2;" \
        "as=APIGroupDiscoveryList"
    doc = json.loads(out.body)
    assert doc["kind"] == "APIGroupDiscoveryList" and doc["apiVersion"] == "apidiscovery.k8s.io/v2"
    apps = next(i for i in doc["items"] if i["metadata"].get("name") == "apps")
    deploy = next(r for r in apps["versions"][0]["resources"] if r["resource"] == "deployments")
    assert deploy["scope"] == "Namespaced" and deploy["shortNames"] == ["deploy"]
    assert {s["subresource"]: s["responseKind"]["group"] for s in deploy["subresources"]} == {
        "status": "apps", "scale": "autoscaling"}
    out = await api.handle(req("GET", "/api", accept=accept.replace("v=v2;", "v=v9;")))
    assert isinstance(out, Reply) and "v2beta1" in out.content_type
    core = json.loads(out.body)["items"][0]
    pods = next(r for r in core["versions"][0]["resources"] if r["resource"] == "pods")
    assert "name" not in core["metadata"] and {s["subresource"] for s in pods["subresources"]} == {
        "log", "exec", "portforward", "status"}
    out = await api.handle(req("GET", "/api"))
    assert isinstance(out, Reply) and json.loads(out.body)["kind"] == "APIVersions"


async def test_openapi_schemas_walk_to_every_field(api: EmulatedAPI) -> None:
    """Every ``$ref`` of each document resolves inside it, and a kind's schema reaches its nested types
    (what ``kubectl explain deployment.spec.template.spec.containers.ports`` walks)."""
    index = (await call(api, "GET", "/openapi/v3"))[1]["paths"]
    for key in index:
        doc = (await call(api, "GET", f"/openapi/v3/{key}"))[1]
        schemas = doc["components"]["schemas"]
        refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(doc)))
        assert refs <= set(schemas), (key, refs - set(schemas))
    doc = (await call(api, "GET", "/openapi/v3/apis/apps/v1"))[1]["components"]["schemas"]
    node = doc["io.k8s.api.apps.v1.Deployment"]
    assert node["x-kubernetes-group-version-kind"] == [{"group": "apps", "version": "v1", "kind": "Deployment"}]
    for step in ("spec", "template", "spec", "containers"):
        prop = node["properties"][step]
        ref = (prop.get("items") or prop)["allOf"][0]["$ref"].rsplit("/", 1)[1]
        node = doc[ref]
    assert node["required"] == ["name"] and node["properties"]["ports"]["type"] == "array"
