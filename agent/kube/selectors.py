"""Label and field selectors of list and watch requests, matched against stored objects (pure).

The syntax is apimachinery's (``staging/src/k8s.io/apimachinery/pkg/labels/selector.go``:
``a=b``, ``a==b``, ``a!=b``, ``a in (b,c)``, ``a notin (b)``, ``a``, ``!a``, comma-joined;
``pkg/fields/selector.go``: ``key=value``, ``key!=value``). Field selectors support the fields the
API server converts for pods (``metadata.name``, ``metadata.namespace``, ``status.phase``,
``spec.nodeName``); any other is the API server's ``400 field label not supported``.
"""

from __future__ import annotations

import re
from typing import Any

from tpemu.net.kube_status import StatusError

Obj = dict[str, Any]


def labels_match(selector: str, labels: dict[str, str]) -> bool:
    """A label selector (``a=b,c!=d,e in (f,g),h,!i``) against ``labels``."""
    terms = re.findall(r"[^,()]+(?:\([^)]*\))?", selector)
    for term in (t.strip() for t in terms):
        if not term:
            continue
        m = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term)
        if m:
            values = {v.strip() for v in m.group(3).split(",")}
            if (labels.get(m.group(1)) in values) != (m.group(2) == "in"):
                return False
            continue
        if "!=" in term:
            k, v = (x.strip() for x in term.split("!=", 1))
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = (x.strip() for x in term.replace("==", "=").split("=", 1))
            if labels.get(k) != v:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def fields_match(selector: str, obj: Obj) -> bool:
    meta = obj.get("metadata") or {}
    values = {"metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", ""),
              "status.phase": (obj.get("status") or {}).get("phase", ""),
              "spec.nodeName": (obj.get("spec") or {}).get("nodeName", "")}
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        neg = "!=" in term
        k, v = (x.strip() for x in re.split(r"!=|==|=", term, maxsplit=1)) if "=" in term else (term, "")
        if k not in values:
            raise StatusError(400, f'field label not supported: {k}', "BadRequest")
        if (values[k] == v) == neg:
            return False
    return True


__all__ = ["fields_match", "labels_match"]
