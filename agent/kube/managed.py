"""Field ownership: ``metadata.managedFields`` and server-side apply's conflicts (pure).

What ``k8s.io/apimachinery/pkg/util/managedfields`` and structured-merge-diff do for the built-in
types, on the fields of these objects:

* every write records who set which fields: one ``managedFields`` entry per manager and operation
  (``Apply`` for server-side apply, ``Update`` for create/update/patch), its fields as ``FieldsV1``
  (``{"f:spec": {"f:replicas": {}}}``; items of lists with a merge key as
  ``k:{"name":"nginx"}`` with ``"."`` for the item itself, other lists owned whole);
* an update takes the fields it changes away from their other owners;
* an apply that would change a field another manager owns fails with 409 ``Conflict``
  (``Apply failed with 1 conflict: conflict with "kubectl-patch" using apps/v1: .spec.replicas``,
  ``internal/conflict.go`` ``getConflictMessage``) unless forced, which takes the fields over;
  fields the applier owned before and no longer applies are removed when no one else owns them;
* an object without ``managedFields`` is owned by ``before-first-apply`` at its first apply;
* a write that sets ``managedFields`` itself (kubectl's client-side-apply upgrade patch) keeps
  what it sets (``[]`` clears them).

The manager of a non-apply write is the ``fieldManager`` parameter, else the User-Agent up to its
first ``/`` (``managerOrUserAgent``). Not modelled: the list-map keys with several fields (ports are
keyed by ``containerPort`` alone, as their strategic merge key), the ``/status`` and ``/scale``
subresource managers, and a fields' type beyond the served schemas.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from tpemu.agent.kube.patch import MERGE_KEYS, strategic_merge
from tpemu.net.kube_status import StatusError

Obj = dict[str, Any]
#: A path: ("f", name) for a field or map key, ("k", json key) for a list item, ("i", ".") for
#: the item itself.
Path = tuple[tuple[str, str], ...]
#: Metadata the API server owns or that identifies the object (``managedfields`` strips these before
#: computing field sets: ``internal/stripmeta.go``).
_SKIPPED_META = frozenset({"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                           "managedFields", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds"})
BEFORE_FIRST_APPLY = "before-first-apply"


def manager_of(field_manager: str, user_agent: str) -> str:
    """``managerOrUserAgent``: the ``fieldManager`` parameter, else the User-Agent up to its first ``/``."""
    if field_manager:
        return field_manager[:128]
    return (user_agent.split("/", 1)[0] or "unknown")[:128]


def paths(obj: Obj) -> set[Path]:
    """The field paths of an object (its ownership unit), without ``apiVersion``/``kind``, the
    identifying metadata and ``status``."""
    out: set[Path] = set()
    for key, value in obj.items():
        if key in ("apiVersion", "kind", "status"):
            continue
        if key == "metadata" and isinstance(value, dict):
            meta = {k: v for k, v in value.items() if k not in _SKIPPED_META}
            if meta:
                _collect(meta, (("f", "metadata"),), out)
            continue
        _collect(value, (("f", key),), out)
    return out


def _collect(value: Any, here: Path, out: set[Path]) -> None:
    name = here[-1][1]
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _collect(item, (*here, ("f", key)), out)
        return
    key = MERGE_KEYS.get(name)
    if isinstance(value, list) and value and key and all(isinstance(i, dict) and key in i for i in value):
        for item in value:
            item_path = (*here, ("k", json.dumps({key: item[key]}, separators=(",", ":"))))
            out.add((*item_path, ("i", ".")))
            for k, v in item.items():
                _collect(v, (*item_path, ("f", k)), out)
        return
    out.add(here)


def to_fields_v1(ps: set[Path]) -> Obj:
    tree: Obj = {}
    for path in sorted(ps):
        node = tree
        for kind, name in path:
            node = node.setdefault(name if kind == "i" else f"{kind}:{name}", {})
    return tree


def from_fields_v1(tree: Any, here: Path = ()) -> set[Path]:
    out: set[Path] = set()
    if not isinstance(tree, dict):
        return out
    if not tree and here:
        out.add(here)
    for key, sub in tree.items():
        if key == ".":
            out.add((*here, ("i", ".")))
        elif isinstance(key, str) and key[:2] in ("f:", "k:"):
            out |= from_fields_v1(sub, (*here, (key[0], key[2:])))
    return out


def _value(obj: Any, path: Path) -> Any:
    cur = obj
    for kind, name in path:
        if kind == "i":
            return cur
        if kind == "f":
            if not isinstance(cur, dict) or name not in cur:
                return _MISSING
            cur = cur[name]
        else:
            want = json.loads(name)
            if not isinstance(cur, list):
                return _MISSING
            cur = next((i for i in cur if isinstance(i, dict) and all(i.get(k) == v for k, v in want.items())),
                       _MISSING)
            if cur is _MISSING:
                return _MISSING
    return cur


_MISSING = object()


def _remove(obj: Any, path: Path) -> None:
    parent = obj
    for depth, (kind, name) in enumerate(path):
        last = depth == len(path) - 1 or path[depth + 1][0] == "i"
        if kind == "f":
            if not isinstance(parent, dict) or name not in parent:
                return
            if last:
                del parent[name]
                return
            parent = parent[name]
        elif kind == "k":
            if not isinstance(parent, list):
                return
            want = json.loads(name)
            match = [i for i, item in enumerate(parent) if isinstance(item, dict)
                     and all(item.get(k) == v for k, v in want.items())]
            if not match:
                return
            if last:
                del parent[match[0]]
                return
            parent = parent[match[0]]


def path_text(path: Path) -> str:
    """structured-merge-diff's ``Path.String()``: ``.spec.template.spec.containers[name="nginx"].image``."""
    out = ""
    for kind, name in path:
        if kind == "f":
            out += f".{name}"
        elif kind == "k":
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(name).items()) + "]"
    return out


def _entries(obj: Obj) -> list[Obj]:
    raw = (obj.get("metadata") or {}).get("managedFields")
    return [e for e in raw if isinstance(e, dict)] if isinstance(raw, list) else []


def _entry(manager: str, operation: str, api_version: str, ps: set[Path], now: str) -> Obj:
    return {"manager": manager, "operation": operation, "apiVersion": api_version, "time": now,
            "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(ps)}


def _printed(entry: Obj) -> str:
    """``printManager``: Update managers with their API version and time."""
    text = json.dumps(entry.get("manager", ""))
    if entry.get("operation") == "Update":
        text += f" using {entry.get('apiVersion', '')}"
        if entry.get("time"):
            text += f" at {entry['time']}"
    return text


def _set_entries(obj: Obj, entries: list[Obj]) -> None:
    kept = [e for e in entries if e.get("fieldsV1")]
    if kept:
        obj.setdefault("metadata", {})["managedFields"] = kept
    else:
        obj.get("metadata", {}).pop("managedFields", None)


def record_update(live: Obj | None, new: Obj, manager: str, api_version: str, now: str) -> None:
    """Record a create (``live`` None), update or patch by ``manager`` in ``new``'s managedFields."""
    given = (new.get("metadata") or {}).get("managedFields")
    live_entries = _entries(live) if live is not None else []
    if live is not None and isinstance(given, list) and given and given != live_entries:
        # The client set managedFields itself (kubectl's upgrade from client-side apply): kept as
        # given; a single empty entry clears them (fieldmanager's "reset" convention).
        if not all(isinstance(e, dict) for e in given):
            raise StatusError(422, "metadata.managedFields: Invalid value: each entry must be an object",
                              "Invalid")
        if given == [{}]:
            new["metadata"].pop("managedFields", None)
        return
    new.setdefault("metadata", {}).pop("managedFields", None)
    new_paths = paths(new)
    if live is None:
        _set_entries(new, [_entry(manager, "Update", api_version, new_paths, now)])
        return
    changed = {p for p in new_paths if _value(new, p) != _value(live, p)}
    gone = paths(live) - new_paths
    if not changed and not gone:
        _set_entries(new, copy.deepcopy(live_entries))
        return
    entries = []
    previous: set[Path] = set()
    for entry in live_entries:
        owned = from_fields_v1(entry.get("fieldsV1"))
        if entry.get("manager") == manager and entry.get("operation") == "Update":
            previous = owned
            continue
        entries.append({**entry, "fieldsV1": to_fields_v1(owned - changed - gone)})
    entries.append(_entry(manager, "Update", api_version, changed | (previous & new_paths), now))
    _set_entries(new, entries)


def apply(live: Obj, applied: Obj, manager: str, api_version: str, force: bool, now: str) -> Obj:
    """Server-side apply of ``applied`` by ``manager`` onto ``live``: the new object (see the module
    docstring), or 409 with the conflicts."""
    applied_paths = paths(applied)
    entries = _entries(live)
    if not entries and paths(live):
        entries = [_entry(BEFORE_FIRST_APPLY, "Update", api_version, paths(live), now)]
    conflicts: list[tuple[Obj, Path]] = []
    for entry in entries:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            continue
        for path in sorted(from_fields_v1(entry.get("fieldsV1")) & applied_paths):
            if path[-1][0] != "i" and _value(live, path) != _value(applied, path):
                conflicts.append((entry, path))
    if conflicts and not force:
        raise conflict_error(conflicts)
    taken = {p for _, p in conflicts}
    new: Obj = strategic_merge(live, _without_status(applied))
    mine = next((from_fields_v1(e.get("fieldsV1")) for e in entries
                 if e.get("manager") == manager and e.get("operation") == "Apply"), set())
    others: list[Obj] = []
    others_paths: set[Path] = set()
    for entry in entries:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            continue
        owned = from_fields_v1(entry.get("fieldsV1")) - taken
        others_paths |= owned
        others.append({**entry, "fieldsV1": to_fields_v1(owned)})
    for path in sorted(mine - applied_paths - others_paths, key=len, reverse=True):
        _remove(new, path)
    _set_entries(new, [*others, _entry(manager, "Apply", api_version, applied_paths, now)])
    return new


def _without_status(applied: Obj) -> Obj:
    return {k: copy.deepcopy(v) for k, v in applied.items() if k != "status"}


def conflict_error(conflicts: list[tuple[Obj, Path]]) -> StatusError:
    """``internal/conflict.go`` ``NewConflictError``."""
    if len(conflicts) == 1:
        message = f"Apply failed with 1 conflict: conflict with {_printed(conflicts[0][0])}: " \
                  f"{path_text(conflicts[0][1])}"
    else:
        by_manager: dict[str, list[str]] = {}
        for entry, path in conflicts:
            by_manager.setdefault(_printed(entry), []).append(path_text(path))
        lines = []
        for printed in sorted(by_manager, key=lambda p: json.loads(p.split(" using ")[0])):
            lines.append(f"conflicts with {printed}:")
            lines += [f"- {p}" for p in by_manager[printed]]
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    causes = [{"reason": "FieldManagerConflict", "message": f"conflict with {_printed(e)}", "field": path_text(p)}
              for e, p in conflicts]
    return StatusError(409, message, "Conflict", {"causes": causes})
