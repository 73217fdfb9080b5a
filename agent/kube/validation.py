"""What the API server's registry strategies check before storing an object (pure).

The subset of ``pkg/apis/*/validation`` this emulation applies: object names (RFC 1123 subdomains,
labels for namespaces and services), string-to-string labels and annotations, a pod's containers
(name and image required), a deployment's selector matching its template and non-negative
replicas, config map and secret data maps; and a secret's ``stringData`` folded into ``data``.
Failures are 422 ``Invalid`` Status objects with one cause per field.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from tpemu.agent.kube import resources as res
from tpemu.net.kube_status import invalid

Obj = dict[str, Any]
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def validate(rt: res.ResourceType, obj: Obj, ns: str) -> None:
    """The checks of the types' registry strategies this emulation makes (names, labels, containers,
    selectors, replicas, data maps): 422 ``Invalid`` with one cause per field."""
    meta = obj["metadata"]
    name = meta.get("name", "")
    causes: list[tuple[str, str, str]] = []
    pattern = DNS1123_LABEL if rt.plural in ("namespaces", "services") else DNS1123_SUBDOMAIN
    if not isinstance(name, str) or not name:
        causes.append(("metadata.name", "FieldValueRequired", "Required value: name or generateName is required"))
    elif len(name) > 253 or not pattern.fullmatch(name):
        causes.append(("metadata.name", "FieldValueInvalid",
                       f'Invalid value: "{name[:100]}": a lowercase RFC 1123 '
                       f'{"label" if pattern is DNS1123_LABEL else "subdomain"} must consist of lower case '
                       "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                       "character"))
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
            causes.append((f"metadata.{key}", "FieldValueInvalid", "Invalid value: must map strings to strings"))
    raw_spec = obj.get("spec")
    spec: Obj = raw_spec if isinstance(raw_spec, dict) else {}
    if rt.kind == "Pod":
        causes += containers_causes(spec, "spec")
    elif rt.kind == "Deployment":
        selector = ((spec.get("selector") or {}).get("matchLabels")) if isinstance(spec.get("selector"),
                                                                               dict) else None
        raw_template = spec.get("template")
        template: Obj = raw_template if isinstance(raw_template, dict) else {}
        tlabels = (template.get("metadata") or {}).get("labels") or {}
        if not selector:
            causes.append(("spec.selector", "FieldValueRequired", "Required value"))
        elif any(tlabels.get(k) != v for k, v in selector.items()):
            causes.append(("spec.template.metadata.labels", "FieldValueInvalid",
                           f"Invalid value: {json.dumps(tlabels)}: `selector` does not match template `labels`"))
        causes += containers_causes(template.get("spec") or {}, "spec.template.spec")
        replicas = spec.get("replicas", 1)
        if not isinstance(replicas, int) or replicas < 0:
            causes.append(("spec.replicas", "FieldValueInvalid",
                           f"Invalid value: {replicas!r}: must be greater than or equal to 0"))
    elif rt.kind in ("ConfigMap", "Secret"):
        for key in ("data", "stringData", "binaryData"):
            value = obj.get(key)
            if value is not None and (not isinstance(value, dict) or not all(
                    isinstance(v, str) for v in value.values())):
                causes.append((key, "FieldValueInvalid", "Invalid value: must map keys to strings"))
    if causes:
        raise invalid(rt.kind, str(name)[:253], causes, rt.group)


def containers_causes(spec: Obj, where: str) -> list[tuple[str, str, str]]:
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if not isinstance(containers, list) or not containers:
        return [(f"{where}.containers", "FieldValueRequired", "Required value")]
    causes = []
    for i, c in enumerate(containers):
        if not isinstance(c, dict):
            causes.append((f"{where}.containers[{i}]", "FieldValueInvalid", "Invalid value: must be an object"))
            continue
        if not isinstance(c.get("name"), str) or not DNS1123_LABEL.fullmatch(c.get("name") or ""):
            causes.append((f"{where}.containers[{i}].name", "FieldValueRequired" if not c.get("name") else
                           "FieldValueInvalid", "Required value" if not c.get("name") else
                           f'Invalid value: "{str(c.get("name"))[:63]}": a lowercase RFC 1123 label'))
        if not isinstance(c.get("image"), str) or not c.get("image"):
            causes.append((f"{where}.containers[{i}].image", "FieldValueRequired", "Required value"))
    return causes


def fold_string_data(obj: Obj) -> None:
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict):
        data = obj.setdefault("data", {})
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()
