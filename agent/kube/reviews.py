"""The API server's self-review endpoints: ``kubectl auth can-i`` and ``kubectl auth whoami`` (glue).

``POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`` (``SelfSubjectAccessReview``:
may the caller do ``verb`` on ``resource`` in ``namespace`` — or on a non-resource ``path``?) and
``POST /apis/authentication.k8s.io/v1/selfsubjectreviews`` (``SelfSubjectReview``: who does the
server think the caller is?), answered as the API server does (``201 Created``, the request echoed
with a ``status``) and never stored. The caller is the *impersonated* user the Kubernetes Service
set, so ``whoami`` through Teleport shows the Kubernetes user and groups of the Teleport user's
traits, as against a real cluster. Teleport's own forwarder only pre-checks access reviews against
``kubernetes_resources`` and forwards them (``lib/kube/proxy/self_subject_reviews.go``); the
decision is the cluster's — here :func:`tpemu.agent.kube.api.authorize`, the emulation's RBAC.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from tpemu.agent.kube import protobuf as kproto
from tpemu.agent.kube import resources as res
from tpemu.net.kube_http import Reply, Request
from tpemu.net.kube_status import StatusError

#: (group, version, plural) → kind, for the request router.
PATHS: dict[tuple[str, str, str], str] = {(g, v, p): k for g, v, p, k in res.REVIEWS}
#: What ``system:discovery`` / ``system:public-info-viewer`` let every authenticated user GET.
_PUBLIC_PATHS = ("/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi")


def _decode(request: Request, kind: str, group_version: str) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    try:
        if "protobuf" in ctype:
            body = kproto.decode(request.body)
        elif "yaml" in ctype:
            body = yaml.safe_load(request.body.decode("utf-8"))
        else:
            body = json.loads(request.body or b"{}")
    except kproto.ProtobufError as exc:
        raise StatusError(415, f"the body of the request was in an unknown format - accepted media types "
                          f"include: application/json, application/yaml ({exc}; send JSON)",
                          "UnsupportedMediaType") from None
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise StatusError(400, f"couldn't get version/kind; json parse error: {str(exc)[:200]}", "BadRequest") from None
    if not isinstance(body, dict):
        raise StatusError(400, "the request body must be an object", "BadRequest")
    if body.get("kind") not in (None, kind) or body.get("apiVersion") not in (None, group_version):
        raise StatusError(400, f"the object in the body is a {body.get('kind')} of {body.get('apiVersion')}, "
                          f"not a {kind} of {group_version}", "BadRequest")
    return body


def _text(attrs: dict[str, Any], key: str) -> str:
    value = attrs.get(key, "")
    if not isinstance(value, str) or len(value) > 1024:
        raise StatusError(422, f"spec.resourceAttributes.{key}: Invalid value: must be a string", "Invalid")
    return value


def _allowed(user: Any, spec: dict[str, Any]) -> tuple[bool, str]:
    from tpemu.agent.kube.api import MASTERS, authorize

    attrs = spec.get("resourceAttributes")
    non_resource = spec.get("nonResourceAttributes")
    if isinstance(attrs, dict) == isinstance(non_resource, dict):
        raise StatusError(422, "SelfSubjectAccessReview.authorization.k8s.io is invalid: spec: Invalid value: "
                          "exactly one of nonResourceAttributes or resourceAttributes must be specified", "Invalid")
    masters = MASTERS in user.groups
    admin = ('RBAC: allowed by ClusterRoleBinding "cluster-admin" of ClusterRole "cluster-admin" to Group '
             f'"{MASTERS}"')
    if isinstance(non_resource, dict):
        path, verb = _text(non_resource, "path"), _text(non_resource, "verb")
        if masters:
            return True, admin
        public = verb == "get" and any(path == p or path.startswith(p + "/") for p in _PUBLIC_PATHS)
        return public, 'RBAC: allowed by ClusterRoleBinding "system:discovery" of ClusterRole "system:discovery" ' \
            'to Group "system:authenticated"' if public else ""
    assert isinstance(attrs, dict)
    verb, group, plural = _text(attrs, "verb"), _text(attrs, "group"), _text(attrs, "resource")
    namespace, name, sub = _text(attrs, "namespace"), _text(attrs, "name"), _text(attrs, "subresource")
    if masters:
        return True, admin
    rt = next((t for t in res.TYPES if t.group == group and t.plural == plural), None)
    if rt is None:  # not a served type (or "*"): only system:masters holds rules that wide
        return False, ""
    try:
        authorize(user, verb, rt, namespace, name, sub)
    except StatusError:
        return False, ""
    role = "edit" if "edit" in user.groups else "view"
    return True, f'RBAC: allowed by ClusterRoleBinding "{role}" of ClusterRole "{role}" to Group "{role}"'


def serve(request: Request, user: Any, group: str, version: str, plural: str) -> Reply:
    """Answer one review (``user``: the :class:`~tpemu.agent.kube.api.User` the request impersonates)."""
    kind = PATHS[(group, version, plural)]
    if request.method != "POST":
        raise StatusError(405, f"the server does not allow this method on the requested resource "
                          f"({request.method}); {plural} are only created", "MethodNotAllowed")
    group_version = f"{group}/{version}"
    body = _decode(request, kind, group_version)
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    out: dict[str, Any] = {"kind": kind, "apiVersion": group_version, "metadata": {
        k: v for k, v in (meta or {}).items() if k in ("name", "generateName", "labels", "annotations")}}
    if kind == "SelfSubjectReview":
        out["status"] = {"userInfo": {"username": user.name, "groups": list(user.groups)}}
    else:
        spec = body.get("spec")
        if not isinstance(spec, dict):
            raise StatusError(422, "SelfSubjectAccessReview.authorization.k8s.io is invalid: spec: Required value",
                              "Invalid")
        allowed, reason = _allowed(user, spec)
        out["spec"] = spec
        out["status"] = {"allowed": allowed, **({"reason": reason} if reason else {})}
    return Reply(201, json.dumps(out, separators=(",", ":")).encode())
