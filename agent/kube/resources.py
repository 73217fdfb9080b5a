"""The resource types the emulated Kubernetes API serves, their discovery entries and table columns (pure).

Follows the Kubernetes API conventions (``api-conventions.md``) and the discovery documents of
``k8s.io/apimachinery/pkg/apis/meta/v1`` (``APIResourceList``, ``APIGroupList``, ``Table``):
kubectl reads the resource list of each group version (legacy discovery) and asks ``get`` for a
server-side ``Table`` (``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``), whose columns
here are those of the API server's printers (``pkg/printers/internalversion/printers.go``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

Obj = dict[str, Any]


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    description: str
    priority: int = 0
    format: str = ""


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    columns: tuple[Column, ...] = ()
    cells: Callable[[Obj, dt.datetime], list[Any]] | None = None
    subresources: tuple[str, ...] = ()
    #: Discovery ``categories``: ``all`` makes ``kubectl get all`` include the type, as the API
    #: server's own types do (pods, services, deployments, …).
    categories: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """The store's name for the type: ``pods``, ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def discovery(self) -> list[Obj]:
        entry: Obj = {"name": self.plural, "singularName": self.singular, "namespaced": self.namespaced,
                      "kind": self.kind, "verbs": list(ALL_VERBS if self.plural != "namespaces" else
                                                         ("create", "delete", "get", "list", "patch", "update",
                                                          "watch"))}
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        out = [entry]
        for sub in self.subresources:
            verbs = {"log": ["get"], "exec": ["create", "get"], "portforward": ["create", "get"],
                     "status": ["get", "patch", "update"], "scale": ["get", "patch", "update"]}[sub]
            kind = {"scale": "Scale", "exec": "PodExecOptions",
                    "portforward": "PodPortForwardOptions"}.get(sub, self.kind)
            out.append({"name": f"{self.plural}/{sub}", "singularName": "", "namespaced": self.namespaced,
                        "kind": kind, "verbs": verbs,
                        **({"group": "autoscaling", "version": "v1"} if sub == "scale" else {})})
        return out


def age(obj: Obj, now: dt.datetime) -> str:
    """``HumanDuration`` of ``k8s.io/apimachinery/pkg/util/duration``: ``5s``, ``3m``, ``2d``."""
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not isinstance(stamp, str):
        return "<unknown>"
    try:
        created = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return "<unknown>"
    seconds = max(0, int((now - created).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    return f"{days}d" if days < 365 * 2 else f"{days // 365}y"


_NAME = Column("Name", "string", "Name must be unique within a namespace.", format="name")
_AGE = Column("Age", "string", "CreationTimestamp is a timestamp representing the server time when this object "
              "was created.")


def _ns_cells(obj: Obj, now: dt.datetime) -> list[Any]:
    return [obj["metadata"]["name"], (obj.get("status") or {}).get("phase", "Active"), age(obj, now)]


def _pod_cells(obj: Obj, now: dt.datetime) -> list[Any]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    containers = spec.get("containers") or []
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount") or 0) for s in statuses)
    phase = status.get("phase", "Pending")
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        phase = "Terminating"
    elif phase == "Pending" and statuses:
        waiting = (statuses[0].get("state") or {}).get("waiting") or {}
        phase = waiting.get("reason", phase)
    return [obj["metadata"]["name"], f"{ready}/{len(containers)}", phase, restarts, age(obj, now),
            status.get("podIP") or "<none>", spec.get("nodeName") or "<none>", "<none>", "<none>"]


def _cm_cells(obj: Obj, now: dt.datetime) -> list[Any]:
    return [obj["metadata"]["name"], len(obj.get("data") or {}) + len(obj.get("binaryData") or {}), age(obj, now)]


def _secret_cells(obj: Obj, now: dt.datetime) -> list[Any]:
    return [obj["metadata"]["name"], obj.get("type", "Opaque"), len(obj.get("data") or {}), age(obj, now)]


def _deploy_cells(obj: Obj, now: dt.datetime) -> list[Any]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    selector = ",".join(f"{k}={v}" for k, v in ((spec.get("selector") or {}).get("matchLabels") or {}).items())
    return [obj["metadata"]["name"], f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
            status.get("updatedReplicas", 0), status.get("availableReplicas", 0), age(obj, now),
            ",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers),
            selector or "<none>"]


def _svc_cells(obj: Obj, now: dt.datetime) -> list[Any]:
    spec = obj.get("spec") or {}
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or []) or "<none>"
    return [obj["metadata"]["name"], spec.get("type", "ClusterIP"), spec.get("clusterIP", "None"), "<none>", ports,
            age(obj, now)]


TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "Namespace", "namespaces", "namespace", False, ("ns",),
                 (_NAME, Column("Status", "string", "The status of the namespace"), _AGE), _ns_cells),
    ResourceType("", "v1", "Pod", "pods", "pod", True, ("po",),
                 (_NAME, Column("Ready", "string", "The aggregate readiness state of this pod for accepting "
                                "traffic."),
                  Column("Status", "string", "The aggregate status of the containers in this pod."),
                  Column("Restarts", "string", "The number of times the containers in this pod have been "
                         "restarted and when the last container in this pod has restarted."), _AGE,
                  Column("IP", "string", "IP address allocated to the pod.", 1),
                  Column("Node", "string", "Name of the Node this pod is assigned to.", 1),
                  Column("Nominated Node", "string", "Name of the node nominated by the scheduler.", 1),
                  Column("Readiness Gates", "string", "The readiness gates of the pod.", 1)),
                 _pod_cells, ("log", "exec", "portforward", "status"), ("all",)),
    ResourceType("", "v1", "ConfigMap", "configmaps", "configmap", True, ("cm",),
                 (_NAME, Column("Data", "string", "Number of keys"), _AGE), _cm_cells),
    ResourceType("", "v1", "Secret", "secrets", "secret", True, (),
                 (_NAME, Column("Type", "string", "The type of the secret"),
                  Column("Data", "string", "Number of items in the secret"), _AGE), _secret_cells),
    ResourceType("", "v1", "Service", "services", "service", True, ("svc",),
                 (_NAME, Column("Type", "string", "The type of the service"),
                  Column("Cluster-IP", "string", "The cluster IP"),
                  Column("External-IP", "string", "External IPs"),
                  Column("Port(s)", "string", "The ports of the service"), _AGE), _svc_cells, (), ("all",)),
    ResourceType("apps", "v1", "Deployment", "deployments", "deployment", True, ("deploy",),
                 (_NAME, Column("Ready", "string", "Number of the pod with ready state"),
                  Column("Up-to-date", "string", "Total number of non-terminated pods targeted by this deployment "
                         "that have the desired template spec."),
                  Column("Available", "string", "Total number of available pods (ready for at least "
                         "minReadySeconds) targeted by this deployment."), _AGE,
                  Column("Containers", "string", "Names of each container in the template.", 1),
                  Column("Images", "string", "Images referenced by each container in the template.", 1),
                  Column("Selector", "string", "Label selector for pods.", 1)),
                 _deploy_cells, ("status", "scale"), ("all",)),
)

#: Create-only review types the API server answers without storing anything
#: (``k8s.io/api/authorization/v1`` SelfSubjectAccessReview, ``authentication/v1``
#: SelfSubjectReview: ``kubectl auth can-i`` and ``kubectl auth whoami``), served by
#: :mod:`tpemu.agent.kube.reviews`.
REVIEWS: tuple[tuple[str, str, str, str], ...] = (
    ("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview"),
    ("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview"),
)

BY_PATH: dict[tuple[str, str, str], ResourceType] = {(t.group, t.version, t.plural): t for t in TYPES}
BY_KEY: dict[str, ResourceType] = {t.key: t for t in TYPES}
#: The API groups besides the core group, with their versions.
GROUPS: dict[str, tuple[str, ...]] = {}
for _group, _version in [(t.group, t.version) for t in TYPES] + [(r[0], r[1]) for r in REVIEWS]:
    if _group:
        GROUPS.setdefault(_group, ())
        if _version not in GROUPS[_group]:
            GROUPS[_group] = (*GROUPS[_group], _version)


def resource_list(group: str, version: str) -> Obj | None:
    """The ``APIResourceList`` of one group version, or ``None`` when it is not served."""
    types = [t for t in TYPES if t.group == group and t.version == version]
    reviews = [{"name": plural, "singularName": plural[:-1], "namespaced": False, "kind": kind, "verbs": ["create"]}
               for g, v, plural, kind in REVIEWS if g == group and v == version]
    if not types and not reviews:
        return None
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group else version,
            "resources": [e for t in types for e in t.discovery()] + reviews}


def group_list() -> Obj:
    groups = []
    for name, versions in GROUPS.items():
        gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        groups.append({"name": name, "versions": gvs, "preferredVersion": gvs[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def table(rt: ResourceType, objects: list[Obj], now: dt.datetime, resource_version: str,
          include_object: str = "Metadata", with_columns: bool = True) -> Obj:
    """A ``meta.k8s.io/v1`` ``Table`` of ``objects``, the API server's server-side printing."""
    assert rt.cells is not None
    rows = []
    for obj in objects:
        row: Obj = {"cells": rt.cells(obj, now)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj.get("metadata") or {}}
        rows.append(row)
    out: Obj = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
                "rows": rows}
    if with_columns:
        out["columnDefinitions"] = [{"name": c.name, "type": c.type, "format": c.format,
                                     "description": c.description, "priority": c.priority} for c in rt.columns]
    else:
        out["columnDefinitions"] = []
    return out


#: The media type of aggregated discovery (``k8s.io/api/apidiscovery/v2``), which kubectl 1.32 asks
#: for first on ``/api`` and ``/apis``; a server that answers it saves the client the per-group-version
#: requests of legacy discovery.
AGGREGATED = "application/json;g=apidiscovery.k8s.io;v={};as=APIGroupDiscoveryList"


def aggregated_version(accept: str) -> str | None:
    """The aggregated-discovery version ``accept`` asks for (``v2``, else ``v2beta1``), or ``None``."""
    offered = [part.replace(" ", "") for part in accept.split(",")]
    for version in ("v2", "v2beta1"):
        if any(p.startswith("application/json;") and set(p.split(";")[1:]) >= {
                "g=apidiscovery.k8s.io", f"v={version}", "as=APIGroupDiscoveryList"} for p in offered):
            return version
    return None


def _discovery_resource(t: ResourceType) -> Obj:
    """One ``APIResourceDiscovery``, its subresources nested (``apidiscovery/v2`` types.go)."""
    legacy = t.discovery()
    main: Obj = {"resource": t.plural, "responseKind": {"group": t.group, "version": t.version, "kind": t.kind},
                 "scope": "Namespaced" if t.namespaced else "Cluster", "singularResource": t.singular,
                 "verbs": legacy[0]["verbs"]}
    for key in ("shortNames", "categories"):
        if key in legacy[0]:
            main[key] = legacy[0][key]
    subs = []
    for entry in legacy[1:]:
        kind = {"group": entry.get("group", t.group), "version": entry.get("version", t.version),
                "kind": entry["kind"]}
        subs.append({"subresource": entry["name"].split("/", 1)[1], "responseKind": kind, "verbs": entry["verbs"]})
    if subs:
        main["subresources"] = subs
    return main


def aggregated_discovery(core: bool, version: str) -> Obj:
    """``/api`` (``core``) or ``/apis`` as an ``APIGroupDiscoveryList``."""
    groups = [""] if core else list(GROUPS)
    items = []
    for group in groups:
        versions = []
        for v in (("v1",) if core else GROUPS[group]):
            resources = [_discovery_resource(t) for t in TYPES if t.group == group and t.version == v]
            resources += [{"resource": plural, "responseKind": {"group": g, "version": gv, "kind": kind},
                           "scope": "Cluster", "singularResource": plural[:-1], "verbs": ["create"]}
                          for g, gv, plural, kind in REVIEWS if g == group and gv == v]
            versions.append({"version": v, "resources": resources, "freshness": "Current"})
        meta: Obj = {"creationTimestamp": None}
        if group:
            meta["name"] = group
        items.append({"metadata": meta, "versions": versions})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}", "metadata": {},
            "items": items}
