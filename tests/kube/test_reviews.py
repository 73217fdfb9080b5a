"""``kubectl auth can-i|whoami`` against the emulated API (``tpemu.agent.kube.reviews``): the
SelfSubjectAccessReview decision follows the emulation's RBAC for resources and non-resource
paths, SelfSubjectReview names the impersonated user, both are found by discovery, JSON and the
protobuf kubectl sends are read, and bad input gets a Kubernetes ``Status``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tpemu.agent.kube import protobuf as kproto
from tpemu.agent.kube import resources as res
from tpemu.agent.kube.api import EmulatedAPI
from tpemu.net.kube_http import Reply, Request

SSAR = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
SSR = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
MASTERS = ("admin", ["system:masters", "system:authenticated"])
VIEWER = ("vic", ["view", "system:authenticated"])
EDITOR = ("eve", ["edit", "system:authenticated"])
NOBODY = ("bob", ["viewers", "system:authenticated"])


def req(method: str, target: str, body: Any, user: tuple[str, list[str]], ctype: str = "application/json") -> Request:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Request(method, target, {"content-type": ctype, "impersonate-user": user[0]},
                   {"impersonate-group": list(user[1])}, data)


async def review(api: EmulatedAPI, user: tuple[str, list[str]], body: Any, path: str = SSAR,
                 ctype: str = "application/json", method: str = "POST") -> tuple[int, Any]:
    out = await api.handle(req(method, path, body, user, ctype))
    assert isinstance(out, Reply)
    return out.status, json.loads(out.body)


def can_i(verb: str, resource: str, group: str = "", namespace: str = "default", name: str = "",
          sub: str = "") -> dict[str, Any]:
    attrs = {"verb": verb, "resource": resource, "group": group, "namespace": namespace}
    attrs.update({k: v for k, v in (("name", name), ("subresource", sub)) if v})
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs}}


@pytest.fixture
def api(tmp_path: Path) -> Any:
    a = EmulatedAPI("emu", tmp_path)
    yield a
    a.close()


@pytest.mark.parametrize(("user", "body", "allowed"), [
    (MASTERS, can_i("delete", "secrets"), True),
    (MASTERS, can_i("create", "widgets", "example.com"), True),  # masters: every resource, served or not
    (VIEWER, can_i("list", "pods"), True),
    (VIEWER, can_i("get", "secrets"), False),  # view excludes secrets
    (VIEWER, can_i("delete", "pods"), False),
    (VIEWER, can_i("list", "namespaces", namespace=""), True),
    (EDITOR, can_i("create", "deployments", "apps"), True),
    (EDITOR, can_i("create", "pods", sub="exec", name="p1"), True),
    (EDITOR, can_i("delete", "namespaces", namespace=""), False),
    (NOBODY, can_i("list", "pods"), False),
    (NOBODY, can_i("list", "widgets", "example.com"), False),
])
async def test_access_review_follows_rbac(api: EmulatedAPI, user: tuple[str, list[str]], body: dict[str, Any],
                                          allowed: bool) -> None:
    code, out = await review(api, user, body)
    assert code == 201 and out["kind"] == "SelfSubjectAccessReview"
    assert out["status"]["allowed"] is allowed
    assert out["spec"] == body["spec"]  # echoed, as the API server does
    assert ("reason" in out["status"]) is allowed


async def test_non_resource_review(api: EmulatedAPI) -> None:
    def body(path: str, verb: str = "get") -> dict[str, Any]:
        return {"kind": "SelfSubjectAccessReview", "spec": {"nonResourceAttributes": {"path": path, "verb": verb}}}

    assert (await review(api, NOBODY, body("/version")))[1]["status"]["allowed"] is True
    assert (await review(api, NOBODY, body("/apis/apps/v1")))[1]["status"]["allowed"] is True
    assert (await review(api, NOBODY, body("/metrics")))[1]["status"]["allowed"] is False
    assert (await review(api, NOBODY, body("/version", "post")))[1]["status"]["allowed"] is False
    assert (await review(api, MASTERS, body("/metrics")))[1]["status"]["allowed"] is True


async def test_self_subject_review_names_the_impersonated_user(api: EmulatedAPI) -> None:
    code, out = await review(api, VIEWER, {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
                                           "metadata": {"creationTimestamp": None}}, SSR)
    assert code == 201
    assert out["status"]["userInfo"] == {"username": "vic", "groups": ["view", "system:authenticated"]}


def _ld(number: int, data: bytes) -> bytes:
    return bytes([number << 3 | 2, len(data)]) + data


def test_protobuf_access_review_decodes() -> None:
    """The bytes client-go's protobuf serializer writes for ``kubectl auth can-i list pods``:
    ``k8s\\0`` + runtime.Unknown{typeMeta{apiVersion, kind}, raw = SelfSubjectAccessReview{
    metadata{}, spec{resourceAttributes{namespace 1, verb 2, version 4, resource 5}}, status{}}}."""
    attrs = _ld(1, b"default") + _ld(2, b"list") + _ld(4, b"v1") + _ld(5, b"pods")
    raw = _ld(1, b"") + _ld(2, _ld(1, attrs)) + _ld(3, b"")
    type_meta = _ld(1, b"authorization.k8s.io/v1") + _ld(2, b"SelfSubjectAccessReview")
    body = kproto.MAGIC + _ld(1, type_meta) + _ld(2, raw) + _ld(3, b"") + _ld(4, b"")
    assert kproto.decode(body) == {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "metadata": {},
        "spec": {"resourceAttributes": {"namespace": "default", "verb": "list", "version": "v1", "resource": "pods"}}}
    for cut in range(len(kproto.MAGIC), len(body)):  # byte by byte: a ProtobufError or an object, no crash
        try:
            part = kproto.decode(body[:cut])
        except kproto.ProtobufError:
            continue
        assert part["kind"] == "SelfSubjectAccessReview"  # decoding needs the kind: a prefix keeps it
    with pytest.raises(kproto.ProtobufError, match="field 8 of ResourceAttributes"):
        kproto.decode(kproto.MAGIC + _ld(1, type_meta) + _ld(2, _ld(2, _ld(1, _ld(8, b"x")))))


async def test_protobuf_access_review_end_to_end(api: EmulatedAPI) -> None:
    attrs = _ld(1, b"default") + _ld(2, b"get") + _ld(5, b"secrets")
    type_meta = _ld(1, b"authorization.k8s.io/v1") + _ld(2, b"SelfSubjectAccessReview")
    body = kproto.MAGIC + _ld(1, type_meta) + _ld(2, _ld(2, _ld(1, attrs)))
    code, out = await review(api, VIEWER, body, ctype="application/vnd.kubernetes.protobuf")
    assert code == 201 and out["status"]["allowed"] is False


@pytest.mark.parametrize(("body", "ctype", "code", "reason"), [
    (b"{not json", "application/json", 400, "BadRequest"),
    (b"[]", "application/json", 400, "BadRequest"),
    ({"kind": "Pod", "spec": {}}, "application/json", 400, "BadRequest"),
    ({"kind": "SelfSubjectAccessReview"}, "application/json", 422, "Invalid"),
    ({"kind": "SelfSubjectAccessReview", "spec": {}}, "application/json", 422, "Invalid"),
    ({"kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": {"verb": 7}}}, "application/json", 422,
     "Invalid"),
    (kproto.MAGIC + b"\x0a\x05junk!", "application/vnd.kubernetes.protobuf", 415, "UnsupportedMediaType"),
])
async def test_bad_reviews_get_status(api: EmulatedAPI, body: Any, ctype: str, code: int, reason: str) -> None:
    got, out = await review(api, MASTERS, body, ctype=ctype)
    assert (got, out["kind"], out["reason"]) == (code, "Status", reason)


async def test_reviews_are_only_created(api: EmulatedAPI) -> None:
    code, out = await review(api, MASTERS, b"", method="GET")
    assert code == 405 and out["reason"] == "MethodNotAllowed"


async def test_discovery_lists_reviews_and_the_all_category(api: EmulatedAPI) -> None:
    groups = {g["name"] for g in (await review(api, MASTERS, b"", "/apis", method="GET"))[1]["groups"]}
    assert {"apps", "authorization.k8s.io", "authentication.k8s.io"} <= groups
    authz = (await review(api, MASTERS, b"", "/apis/authorization.k8s.io/v1", method="GET"))[1]
    assert [(r["name"], r["verbs"]) for r in authz["resources"]] == [("selfsubjectaccessreviews", ["create"])]
    in_all = {r["name"] for gv in ("/api/v1", "/apis/apps/v1")
              for r in (await review(api, MASTERS, b"", gv, method="GET"))[1]["resources"]
              if "all" in r.get("categories", [])}
    assert in_all == {t.plural for t in res.TYPES if "all" in t.categories} == {"pods", "services", "deployments"}


async def test_protobuf_whoami_with_the_empty_user_info_kubectl_sends(api: EmulatedAPI) -> None:
    """``kubectl auth whoami`` (1.32): k8s' generated marshaller writes every non-pointer field, so the
    request's ``status`` holds an empty ``userInfo{username "", uid ""}``; the server ignores it."""
    user_info = _ld(1, b"") + _ld(2, b"")
    raw = _ld(1, _ld(8, b"")) + _ld(2, _ld(1, user_info))
    type_meta = _ld(1, b"authentication.k8s.io/v1") + _ld(2, b"SelfSubjectReview")
    body = kproto.MAGIC + _ld(1, type_meta) + _ld(2, raw) + _ld(3, b"") + _ld(4, b"")
    code, out = await review(api, VIEWER, body, SSR, ctype="application/vnd.kubernetes.protobuf")
    assert code == 201, out
    assert out["status"]["userInfo"] == {"username": "vic", "groups": ["view", "system:authenticated"]}
    assert out["apiVersion"] == "authentication.k8s.io/v1" and out["kind"] == "SelfSubjectReview"
