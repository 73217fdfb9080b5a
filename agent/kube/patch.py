"""The patch formats of the Kubernetes API (pure).

* ``application/merge-patch+json`` — RFC 7386 JSON merge patch;
* ``application/json-patch+json`` — RFC 6902 JSON patch (add, remove, replace, move, copy, test);
* ``application/strategic-merge-patch+json`` — Kubernetes' strategic merge patch
  (``k8s.io/apimachinery/pkg/util/strategicpatch``): a merge patch in which lists of objects with a
  *merge key* are merged element by element instead of replaced, with the ``$patch``
  (``replace``/``delete``/``merge``), ``$setElementOrder/<list>``, ``$retainKeys`` and
  ``$deleteFromPrimitiveList/<list>`` directives. The merge keys are those the built-in types
  declare (``patchMergeKey`` tags: containers and volumes by ``name``, ports by ``containerPort``,
  volume mounts by ``mountPath`` …); kubectl's client-side ``apply`` sends exactly these patches;
* ``application/apply-patch+yaml`` — server-side apply, here without managed-field ownership: the
  applied configuration is merged into the live object as a strategic merge of its fields.
"""

from __future__ import annotations

import copy
from typing import Any

from tpemu.errors import PeerFault

#: ``patchMergeKey`` of the built-in types' lists (``k8s.io/api`` struct tags).
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "volumes": "name",
    "env": "name", "imagePullSecrets": "name", "volumeMounts": "mountPath", "volumeDevices": "devicePath",
    "ports": "containerPort", "conditions": "type", "hostAliases": "ip", "topologySpreadConstraints": "topologyKey",
    "ownerReferences": "uid",
}


class PatchError(PeerFault, ValueError):
    """A patch that cannot be applied; the message is for the client (422/400 Status)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, dict):
            if part not in doc:
                raise PatchError(f"path element {part!r} not found")
            doc = doc[part]
        elif isinstance(doc, list):
            if not part.isdigit() or int(part) >= len(doc):
                raise PatchError(f"array index {part!r} out of range")
            doc = doc[int(part)]
        else:
            raise PatchError(f"cannot descend into a scalar at {part!r}")
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str) or not isinstance(op.get("path"), str):
            raise PatchError("each JSON patch operation needs string 'op' and 'path'")
        name, parts = op["op"], _pointer(op["path"])
        if name == "test":
            if _walk(doc, parts) != op.get("value"):
                raise PatchError(f"test operation failed at {op['path']!r}")
            continue
        value: Any
        if name in ("move", "copy"):
            if not isinstance(op.get("from"), str):
                raise PatchError(f"{name} needs 'from'")
            src = _pointer(op["from"])
            value = copy.deepcopy(_walk(doc, src))
            if name == "move":
                doc = _remove(doc, src)
            doc = _add(doc, parts, value)
        elif name == "add":
            if "value" not in op:
                raise PatchError("add needs 'value'")
            doc = _add(doc, parts, copy.deepcopy(op["value"]))
        elif name == "remove":
            doc = _remove(doc, parts)
        elif name == "replace":
            if "value" not in op:
                raise PatchError("replace needs 'value'")
            doc = _add(_remove(doc, parts), parts, copy.deepcopy(op["value"]))
        else:
            raise PatchError(f"unknown JSON patch operation {name!r}")
    return doc


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise PatchError(f"array index {last!r} out of range")
    else:
        raise PatchError("cannot add to a scalar")
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path element {last!r} not found")
        del parent[last]
    elif isinstance(parent, list):
        if not last.isdigit() or int(last) >= len(parent):
            raise PatchError(f"array index {last!r} out of range")
        del parent[int(last)]
    else:
        raise PatchError("cannot remove from a scalar")
    return doc


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """Kubernetes' strategic merge patch of ``patch`` into ``target``."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    out = dict(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if isinstance(out.get(name), list) and isinstance(value, list):
                out[name] = [v for v in out[name] if v not in value]
            continue
        if value is None:
            out.pop(key, None)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(out.get(key), list):
            out[key] = _merge_list(out[key], value, MERGE_KEYS[key])
        else:
            merged = strategic_merge(out.get(key), value, key)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
    if isinstance(retain, list):
        out = {k: v for k, v in out.items() if k in retain}
    return out


def _merge_list(current: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    out = [copy.deepcopy(c) for c in current]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            if isinstance(item, dict) and item.get("$patch") == "replace":
                return [copy.deepcopy(i) for i in patch if i is not item]
            raise PatchError(f"list items must be objects with the merge key {merge_key!r}")
        index = next((i for i, c in enumerate(out) if isinstance(c, dict) and c.get(merge_key) == item[merge_key]),
                     None)
        if item.get("$patch") == "delete":
            if index is not None:
                del out[index]
            continue
        if index is None:
            out.append(strategic_merge({}, item))
        else:
            out[index] = strategic_merge(out[index], item)
    return out


def apply(live: Any, applied: Any) -> Any:
    """Server-side apply without field ownership: the applied fields merged into the live object."""
    return strategic_merge(live, applied)
