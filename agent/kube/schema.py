"""The served kinds' schemas: OpenAPI v3 documents, and the unknown-field checks of field validation (pure).

The fields come from :mod:`tpemu.agent.kube.schema_data` (generated from the Python ``kubernetes``
client's models). Two consumers, as in the API server:

* ``/openapi/v3/<group-version>``: one OpenAPI 3.0 document per group version, shaped as the API
  server's (``components.schemas`` named ``io.k8s.api.<group>.<version>.<Type>``, objects referenced
  through ``allOf: [{$ref}]``, ``x-kubernetes-group-version-kind`` on each kind, the write operations
  declaring ``fieldValidation``/``fieldManager``/``dryRun``). ``kubectl explain`` walks these
  documents; kubectl's ``QueryParamVerifierV3`` sees ``fieldValidation`` on the PATCH of a kind and
  leaves ``--validate`` to the server.
* field validation (``k8s.io/apiserver/pkg/endpoints/handlers`` create.go/update.go/patch.go): a
  body decoded into the Go types reports each field the type does not declare
  (``sigs.k8s.io/json`` ``UnmarshalStrict``: ``unknown field "spec.replicass"``); ``Strict`` refuses
  the request, ``Warn`` (the default) answers with one ``Warning`` header per field, ``Ignore`` is
  silent. The field is dropped from the stored object either way, as decoding into a struct drops it.
  Server-side apply checks the applied configuration against the schema whatever the directive
  (structured-merge-diff: ``.spec.bogus: field not declared in schema``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from tpemu.agent.kube import resources as res
from tpemu.agent.kube.patch import MERGE_KEYS
from tpemu.agent.kube.schema_data import TYPES
from tpemu.net.kube_status import StatusError

#: ``metav1.FieldValidation*`` (``""`` is the default, Warn).
DIRECTIVES = ("Ignore", "Warn", "Strict")
#: The API server's prefixes of schema names (``k8s.io/kube-openapi`` naming of Go packages).
_PACKAGES = {"core": "io.k8s.api.core.v1", "apps": "io.k8s.api.apps.v1", "meta": "io.k8s.apimachinery.pkg.apis.meta.v1"}
_TIME = "io.k8s.apimachinery.pkg.apis.meta.v1.Time"
_INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
#: Fields whose ``o`` (any) type is an IntOrString in the Go types.
_INT_OR_STRING_FIELDS = frozenset({"port", "targetPort", "maxSurge", "maxUnavailable"})


@dataclass(frozen=True)
class Field:
    type: str  # a code of schema_data: s i n b t o, [x], {x}, or a type name
    required: bool


@functools.cache
def fields(type_name: str) -> dict[str, Field]:
    """The fields of one type, by JSON name (empty for an unknown type)."""
    entry = TYPES.get(type_name)
    if entry is None:
        return {}
    out: dict[str, Field] = {}
    for item in entry[1].split(","):
        name, _, code = item.partition(":")
        out[name.rstrip("!")] = Field(code, name.endswith("!"))
    return out


# -- field validation --------------------------------------------------------------------------------


def unknown_fields(kind: str, obj: Any, prune: bool = True) -> list[str]:
    """The paths of the fields of ``obj`` that the type ``kind`` does not declare, in document order
    (``spec.replicass``, ``spec.template.spec.containers[0].imagee``); dropped from ``obj`` when
    ``prune``."""
    found: list[str] = []
    _walk(kind, obj, "", found, prune)
    return found


def _walk(code: str, value: Any, path: str, found: list[str], prune: bool) -> None:
    if code.startswith("["):
        if isinstance(value, list):
            for i, item in enumerate(value):
                _walk(code[1:-1], item, f"{path}[{i}]", found, prune)
        return
    if code.startswith("{"):
        if isinstance(value, dict):
            for key, item in value.items():
                _walk(code[1:-1], item, f"{path}[{key}]", found, prune)
        return
    declared = fields(code)
    if not declared or not isinstance(value, dict):
        return  # a scalar, any value (o), or a value of the wrong type (the type checks report it)
    for key in list(value):
        where = f"{path}.{key}" if path else key
        field = declared.get(key)
        if field is None:
            found.append(where)
            if prune:
                del value[key]
        else:
            _walk(field.type, value[key], where, found, prune)


def directive(request_arg: str, options_kind: str) -> str:
    """The ``fieldValidation`` query parameter, checked as ``ValidateCreateOptions`` (and the update
    and patch variants) check it; ``""`` means Warn."""
    if request_arg in ("", *DIRECTIVES):
        return request_arg or "Warn"
    raise StatusError(422, f'{options_kind}.meta.k8s.io "" is invalid: fieldValidation: Unsupported value: '
                      f'{json.dumps(request_arg[:100])}: supported values: "", "Ignore", "Strict", "Warn"', "Invalid",
                      {"group": "meta.k8s.io", "kind": options_kind, "causes": [{
                          "reason": "FieldValueNotSupported", "field": "fieldValidation",
                          "message": f"Unsupported value: {json.dumps(request_arg[:100])}"}]})


def strict_message(paths: list[str]) -> str:
    """``runtime.NewStrictDecodingError(...).Error()``."""
    return "strict decoding error: " + ", ".join(f'unknown field "{p}"' for p in paths)


def warning_headers(paths: list[str]) -> list[tuple[str, str]]:
    """``addStrictDecodingWarnings``: one RFC 7234 ``Warning: 299 - "…"`` header per field (kubectl
    prints ``Warning: unknown field "spec.x"``)."""
    return [("Warning", "299 - " + json.dumps(f'unknown field "{p}"')) for p in paths]


def go_value(value: Any) -> str:
    """``fmt.Sprintf("%+v", v)`` of a decoded JSON value (the value in strategic-merge-patch errors):
    maps as ``map[k:v …]`` with sorted keys, lists as ``[a b]``, ``<nil>``."""
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_value(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_value(v) for v in value) + "]"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def patch_invalid(value: str, message: str) -> StatusError:
    """``errors.NewInvalid(schema.GroupKind{}, "", {field.Invalid("patch", value, message)})``."""
    detail = f"Invalid value: {json.dumps(value)}: {message}"
    return StatusError(422, f' "" is invalid: patch: {detail}', "Invalid",
                       {"causes": [{"reason": "FieldValueInvalid", "message": detail, "field": "patch"}]})


def apply_path(kind: str, obj: Any, path: str) -> str:
    """A path of :func:`unknown_fields` in structured-merge-diff's notation: ``.spec.x``, list items of
    associative lists by their key (``containers[name="nginx"]``), others by index."""
    out = ""
    cur: Any = obj
    for part in _split(path):
        if isinstance(part, int):
            key = MERGE_KEYS.get(out.rsplit(".", 1)[-1].split("[", 1)[0])
            item = cur[part] if isinstance(cur, list) and part < len(cur) else None
            if key and isinstance(item, dict) and key in item:
                out += f"[{key}={json.dumps(item[key])}]"
            else:
                out += f"[{part}]"
            cur = item
        else:
            out += f".{part}"
            cur = cur.get(part) if isinstance(cur, dict) else None
    return out


def _split(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for dotted in path.split("."):
        name, _, rest = dotted.partition("[")
        if name:
            parts.append(name)
        for index in filter(None, rest.replace("]", "").split("[")) if rest else ():
            parts.append(int(index) if index.isdigit() else index)
    return parts


def apply_error(rt: res.ResourceType, namespace: str, name: str, applied: Any, paths: list[str]) -> StatusError:
    """Server-side apply of a configuration with undeclared fields: structured-merge-diff's error,
    which the API server answers as a 500 without a reason (``fieldmanager`` ``Apply``:
    ``failed to create typed patch object``)."""
    errors = [f"{apply_path(rt.kind, applied, p)}: field not declared in schema" for p in paths]
    text = errors[0] if len(errors) == 1 else "errors:\n" + "".join(f"  {e}\n" for e in errors)
    gvk = f"{rt.group}/{rt.version}, Kind={rt.kind}"
    return StatusError(500, f"failed to create typed patch object ({namespace}/{name}; {gvk}): {text}", None)


# -- OpenAPI v3 ----------------------------------------------------------------------------------------


def schema_name(type_name: str) -> str:
    entry = TYPES.get(type_name)
    return f"{_PACKAGES[entry[0] if entry else 'core']}.{type_name}"


def _ref(name: str) -> dict[str, Any]:
    return {"allOf": [{"$ref": f"#/components/schemas/{name}"}]}


def _property(field_name: str, code: str, todo: list[str]) -> dict[str, Any]:
    if code.startswith("["):
        return {"type": "array", "items": _property("", code[1:-1], todo)}
    if code.startswith("{"):
        return {"type": "object", "additionalProperties": _property("", code[1:-1], todo)}
    scalar = {"s": {"type": "string"}, "i": {"type": "integer", "format": "int64"}, "n": {"type": "number",
              "format": "double"}, "b": {"type": "boolean"}}.get(code)
    if scalar is not None:
        return dict(scalar)
    if code == "t":
        return _ref(_TIME)
    if code == "o":
        return _ref(_INT_OR_STRING) if field_name in _INT_OR_STRING_FIELDS else {"type": "object"}
    todo.append(code)
    return {**_ref(schema_name(code)), "default": {}}


def component(type_name: str, todo: list[str]) -> dict[str, Any]:
    declared = fields(type_name)
    out: dict[str, Any] = {"type": "object", "properties": {
        name: _property(name, f.type, todo) for name, f in sorted(declared.items())}}
    required = sorted(name for name, f in declared.items() if f.required)
    if required:
        out["required"] = required
    return out


@functools.cache
def openapi_document(group: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.0 document of one group version (see the module docstring)."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        _TIME: {"type": "string", "format": "date-time", "description": "Time is a wrapper around time.Time."},
        _INT_OR_STRING: {"type": "string", "format": "int-or-string", "x-kubernetes-int-or-string": True,
                         "description": "IntOrString is a type that can hold an int32 or a string."}}
    params = [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
              for n in ("dryRun", "fieldManager", "fieldValidation")]
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    todo: list[str] = []
    for rt in res.TYPES:
        if rt.group != group or rt.version != version:
            continue
        ref_name = schema_name(rt.kind)
        gvk = [{"group": group, "version": version, "kind": rt.kind}]
        schemas[ref_name] = {**component(rt.kind, todo), "x-kubernetes-group-version-kind": gvk,
                             "description": f"{rt.kind} (emulated by tpemu)"}
        item = f"{prefix}/namespaces/{{namespace}}/{rt.plural}/{{name}}" if rt.namespaced else \
            f"{prefix}/{rt.plural}/{{name}}"
        collection = item.rsplit("/", 1)[0]
        body = {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref_name}"}}}}
        op = {"parameters": params, "responses": {"200": body}, "x-kubernetes-group-version-kind": gvk[0]}
        patch_types = ("application/apply-patch+yaml", "application/json-patch+json", "application/merge-patch+json",
                       "application/strategic-merge-patch+json")
        paths[item] = {"get": {"responses": {"200": body}}, "put": {**op, "requestBody": body},
                       "patch": {**op, "requestBody": {"content": {t: {"schema": {"type": "object"}}
                                                                   for t in patch_types}}},
                       "delete": {"parameters": params[:1], "responses": {"200": body}}}
        paths[collection] = {"get": {"responses": {"200": body}}, "post": {**op, "requestBody": body}}
    while todo:
        name = todo.pop()
        if schema_name(name) not in schemas:
            schemas[schema_name(name)] = component(name, todo)
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes (tpemu emulation)", "version": "v1.32.0"},
            "paths": paths, "components": {"schemas": schemas}}
