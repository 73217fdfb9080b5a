"""The emulated Kubernetes API server: discovery, OpenAPI, authorization, and request routing (glue).

Good enough for unmodified kubectl 1.32 and the Python ``kubernetes`` client: aggregated discovery
(``/api`` and ``/apis`` as an ``apidiscovery.k8s.io/v2`` ``APIGroupDiscoveryList`` when asked, as
kubectl 1.32 asks) and legacy discovery (``/api``, ``/api/v1``, ``/apis``,
``/apis/<group>/<version>``), ``/version``, OpenAPI v3 documents with the served kinds' schemas
(:mod:`tpemu.agent.kube.schema`: ``kubectl explain``, and the ``fieldValidation`` parameter that makes
kubectl leave ``--validate`` to the server), and the REST paths of
``api-conventions.md`` for the types of :mod:`tpemu.agent.kube.resources` (handled in
:mod:`tpemu.agent.kube.objects`), and the self-reviews of ``kubectl auth can-i|whoami``
(:mod:`tpemu.agent.kube.reviews`).

**Who is asking.** The Kubernetes Service in front (``tpemu.agent.kube.service``, Teleport's kube
forwarder) authenticates the Teleport user and sets ``Impersonate-User`` / ``Impersonate-Group``,
as Teleport does toward a real cluster; this server trusts those headers as a real API server
trusts them from an account allowed to impersonate. **Authorization** follows Kubernetes' default
roles: the group ``system:masters`` may do everything; ``edit`` (the aggregated ClusterRole of that
name, bound to the group) may read and write namespaced objects; ``view`` may read them except
secrets; every authenticated user may read discovery (``system:discovery``). Anything else is
refused with Kubernetes' own ``Forbidden`` Status.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpemu.agent.kube import resources as res
from tpemu.agent.kube import reviews, schema
from tpemu.agent.kube.controller import Controller
from tpemu.agent.kube.store import Store
from tpemu.config import PodPort
from tpemu.net.kube_http import Reply, Request, Streamed, Upgraded
from tpemu.net.kube_status import StatusError, forbidden

log = logging.getLogger(__name__)

#: What ``/version`` reports: the Kubernetes minor version kubectl 1.32 is made for.
VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-tpemu", "gitCommit": "tpemu", "gitTreeState": "clean",
           "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.4", "compiler": "gc", "platform": "linux/amd64"}
MASTERS = "system:masters"
READ_VERBS = frozenset({"get", "list", "watch"})


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]


@dataclass(frozen=True)
class Target:
    """A REST path: ``/api/v1/namespaces/<ns>/<plural>/<name>/<sub>`` and its cluster-wide forms."""

    rt: res.ResourceType
    namespace: str
    name: str
    sub: str


def json_reply(obj: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(obj, separators=(",", ":")).encode())


def status_reply(exc: StatusError) -> Reply:
    return Reply(exc.code, exc.body())


def authorize(user: User, verb: str, rt: res.ResourceType | None, namespace: str, name: str = "",
              sub: str = "") -> None:
    """Kubernetes' default RBAC roles, as this emulation binds them (see the module docstring)."""
    groups = set(user.groups)
    if MASTERS in groups:
        return
    if rt is None:  # discovery, /version, /openapi: system:discovery
        return
    writable = rt.namespaced or rt.plural != "namespaces"
    if "edit" in groups and writable and (rt.namespaced or verb in READ_VERBS):
        return
    if ({"view", "edit"} & groups) and verb in READ_VERBS and rt.plural != "secrets" and not sub:
        return
    if ({"view", "edit"} & groups) and verb in READ_VERBS and rt.plural == "namespaces":
        return
    raise forbidden(user.name, verb, rt.plural, rt.group, namespace if rt.namespaced else "", name, sub)


class EmulatedAPI:
    """One emulated Kubernetes cluster, stored in ``<data_dir>/kube/<name>.sqlite``."""

    def __init__(self, name: str, data_dir: Path | None, node_name: str = "",
                 pod_ports: Sequence[PodPort] = ()) -> None:
        from tpemu.agent.kube.objects import Objects

        self.name = name
        self.data_dir = data_dir
        self.store = Store(data_dir / "kube" / f"{name}.sqlite" if data_dir is not None else None)
        self.controller = Controller(self.store, node_name or f"tpemu-{name}")
        self.objects = Objects(self)
        self._bootstrapped = False
        self.exec_sessions = 0
        self.portforward_sessions = 0
        #: What the pods serve to ``kubectl port-forward`` (``tpemu.kubernetes_service.pod_ports``).
        self.pod_ports = tuple(pod_ports)

    def workdir(self, namespace: str, pod: str) -> Path:
        from tpemu.agent.kube.exec import pod_workdir

        return pod_workdir(self.name, namespace, pod)

    def start(self) -> None:
        """Create the namespaces every cluster has, resume the controllers (needs a running loop)."""
        if self._bootstrapped:
            return
        self._bootstrapped = True
        self.objects.bootstrap()
        self.controller.resume()

    def close(self) -> None:
        self.controller.close()
        self.store.close()

    # -- entry --------------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Reply | Streamed | Upgraded:
        user = User(request.headers.get("impersonate-user", ""),
                    tuple(request.multi.get("impersonate-group", ())))
        if not user.name:
            return status_reply(StatusError(401, "Unauthorized"))
        try:
            return await self._route(request, user)
        except StatusError as exc:
            if exc.code >= 500:
                log.warning("kube api %s: %s %s: %s", self.name, request.method, request.path, exc.message)
            return status_reply(exc)

    async def _route(self, request: Request, user: User) -> Reply | Streamed | Upgraded:
        path = request.path.rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        method = request.method
        if path in ("/healthz", "/livez", "/readyz"):
            return Reply(200, b"ok", "text/plain; charset=utf-8")
        if path == "/version":
            return json_reply(VERSION)
        if path in ("/api", "/apis"):
            version = res.aggregated_version(request.headers.get("accept", ""))
            if version is not None:
                body = json.dumps(res.aggregated_discovery(path == "/api", version), separators=(",", ":")).encode()
                return Reply(200, body, res.AGGREGATED.format(version),
                             [("Vary", "Accept"), ("Etag", '"' + hashlib.sha256(body).hexdigest().upper() + '"')])
        if path == "/api":
            return json_reply({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": request.headers.get("host", "")}]})
        if path == "/apis":
            return json_reply(res.group_list())
        if parts and parts[0] == "openapi":
            return self._openapi(parts)
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 2:
            group = parts[1]
            if len(parts) == 2:
                versions = res.GROUPS.get(group)
                if versions is None:
                    raise _unknown_path(request)
                gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
                return json_reply({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": gvs,
                                   "preferredVersion": gvs[0]})
            version, rest = parts[2], parts[3:]
        else:
            raise _unknown_path(request)
        if not rest:
            listing = res.resource_list(group, version)
            if listing is None:
                raise _unknown_path(request)
            return json_reply(listing)
        if len(rest) == 1 and (group, version, rest[0]) in reviews.PATHS:
            return reviews.serve(request, user, group, version, rest[0])  # kubectl auth can-i / whoami
        target = _target(group, version, rest)
        if target is None:
            raise _unknown_path(request)
        self.start()
        return await self.objects.serve(request, user, target, method)

    def _openapi(self, parts: list[str]) -> Reply:
        # /openapi/v3 → index; /openapi/v3/api/v1, /openapi/v3/apis/apps/v1 → one document each.
        if parts[1:2] != ["v3"]:
            raise StatusError(404, "the server could not find the requested resource", "NotFound")
        docs = {"api/v1": ("", "v1"), **{f"apis/{g}/{v}": (g, v) for g, vs in res.GROUPS.items() for v in vs}}
        if len(parts) == 2:
            return json_reply({"paths": {p: {"serverRelativeURL": f"/openapi/v3/{p}?hash={_doc_hash(*gv)}"}
                                         for p, gv in docs.items()}})
        key = "/".join(parts[2:])
        if key not in docs:
            raise StatusError(404, "the server could not find the requested resource", "NotFound")
        return json_reply(schema.openapi_document(*docs[key]))


def _unknown_path(request: Request) -> StatusError:
    return StatusError(404, "the server could not find the requested resource", "NotFound",
                       {"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]})


def _target(group: str, version: str, rest: list[str]) -> Target | None:
    namespace = ""
    # /namespaces/<ns>/<plural>/… — except the namespace's own /namespaces/<name>/status|finalize.
    if rest[0] == "namespaces" and len(rest) >= 3 and not (
            not group and len(rest) == 3 and rest[2] in ("status", "finalize")):
        namespace, rest = rest[1], rest[2:]
        rt = res.BY_PATH.get((group, version, rest[0]))
        if rt is None or not rt.namespaced:
            return None
    else:
        rt = res.BY_PATH.get((group, version, rest[0]))
        if rt is None:
            return None
    if len(rest) > 3:
        return None
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    if sub and sub not in rt.subresources and not (rt.plural == "namespaces" and sub in ("status", "finalize")):
        return None
    return Target(rt, namespace, name, sub)


@functools.cache
def _doc_hash(group: str, version: str) -> str:
    doc = json.dumps(schema.openapi_document(group, version), sort_keys=True).encode()
    return hashlib.sha256(doc).hexdigest()[:32].upper()
