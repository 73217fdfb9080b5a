"""Kubernetes' protobuf encoding of request bodies, for the objects kubectl's generators send (pure).

``kubectl create namespace|configmap|secret|deployment`` and ``kubectl auth can-i|whoami`` send
``application/vnd.kubernetes.protobuf``
(``k8s.io/apimachinery/pkg/runtime/serializer/protobuf``): the 4-byte magic ``k8s\\0``, then a
``runtime.Unknown`` (1 ``typeMeta`` {1 apiVersion, 2 kind}, 2 ``raw``, 3 contentEncoding,
4 contentType) whose ``raw`` is the object in the field numbering of ``k8s.io/api``'s
``generated.proto``. This module decodes those kinds into the JSON form the rest of the
emulated API uses. A field it does not know, with a non-empty value, is an error naming the field
(the request is then refused with 415 and "send JSON"), never silently dropped.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from typing import Any

from tpemu.wire.errors import WireError

MAGIC = b"k8s\x00"
MAX_DEPTH = 32


class ProtobufError(WireError):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint too long")


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """The ``(field number, value)`` pairs of one message (varints as ints, length-delimited as bytes)."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("field number 0")
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError(f"field {number}: {length} bytes announced, {len(data) - pos} left")
            out.append((number, data[pos:pos + length]))
            pos += length
        elif wire == 1:
            pos += 8
            if pos > len(data):
                raise ProtobufError("truncated fixed64")
            out.append((number, 0))
        elif wire == 5:
            pos += 4
            if pos > len(data):
                raise ProtobufError("truncated fixed32")
            out.append((number, 0))
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
    return out


Field = tuple[str, Callable[[Any, int], Any], bool]  # (json name, decoder, repeated)


def _s(value: Any, depth: int) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a string")
    return value.decode("utf-8")


def _b64(value: Any, depth: int) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("expected bytes")
    return base64.b64encode(value).decode()


def _int(value: Any, depth: int) -> int:
    if not isinstance(value, int):
        raise ProtobufError("expected a varint")
    return value - (1 << 64) if value >= 1 << 63 else value


def _bool(value: Any, depth: int) -> bool:
    return bool(_int(value, depth))


def _map(value_decoder: Callable[[Any, int], Any]) -> Callable[[Any, int], tuple[str, Any]]:
    def entry(value: Any, depth: int) -> tuple[str, Any]:
        if not isinstance(value, bytes):
            raise ProtobufError("expected a map entry")
        key, val = "", value_decoder(b"", depth)
        for number, v in fields(value):
            if number == 1:
                key = _s(v, depth)
            elif number == 2:
                val = value_decoder(v, depth)
        return key, val
    return entry


def _time(value: Any, depth: int) -> str:
    seconds = 0
    for number, v in fields(value if isinstance(value, bytes) else b""):
        if number == 1:
            seconds = _int(v, depth)
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _message(name: str, schema: dict[int, Field]) -> Callable[[Any, int], dict[str, Any]]:
    def decode(value: Any, depth: int) -> dict[str, Any]:
        if depth > MAX_DEPTH:
            raise ProtobufError("message nested too deeply")
        if not isinstance(value, bytes):
            raise ProtobufError(f"{name}: expected a message")
        out: dict[str, Any] = {}
        for number, v in fields(value):
            spec = schema.get(number)
            if spec is None:
                if v in (0, b""):
                    continue
                raise ProtobufError(f"field {number} of {name} is not emulated")
            key, decoder, repeated = spec
            item = decoder(v, depth + 1)
            if decoder.__name__ == "entry":  # a map
                out.setdefault(key, {})[item[0]] = item[1]
            elif repeated:
                out.setdefault(key, []).append(item)
            else:
                out[key] = item
        return out
    return decode


_OWNER = _message("OwnerReference", {1: ("kind", _s, False), 3: ("name", _s, False), 4: ("uid", _s, False),
                                     5: ("apiVersion", _s, False), 6: ("controller", _bool, False),
                                     7: ("blockOwnerDeletion", _bool, False)})
OBJECT_META = _message("ObjectMeta", {
    1: ("name", _s, False), 2: ("generateName", _s, False), 3: ("namespace", _s, False), 4: ("selfLink", _s, False),
    5: ("uid", _s, False), 6: ("resourceVersion", _s, False), 7: ("generation", _int, False),
    8: ("creationTimestamp", _time, False), 11: ("labels", _map(_s), False), 12: ("annotations", _map(_s), False),
    13: ("ownerReferences", _OWNER, True), 14: ("finalizers", _s, True)})
_SELECTOR = _message("LabelSelector", {1: ("matchLabels", _map(_s), False)})
_PORT = _message("ContainerPort", {1: ("name", _s, False), 2: ("hostPort", _int, False),
                                   3: ("containerPort", _int, False), 4: ("protocol", _s, False)})
_ENV = _message("EnvVar", {1: ("name", _s, False), 2: ("value", _s, False)})
_RESOURCES = _message("ResourceRequirements", {})
_CONTAINER = _message("Container", {
    1: ("name", _s, False), 2: ("image", _s, False), 3: ("command", _s, True), 4: ("args", _s, True),
    5: ("workingDir", _s, False), 6: ("ports", _PORT, True), 7: ("env", _ENV, True),
    8: ("resources", _RESOURCES, False), 13: ("terminationMessagePath", _s, False),
    14: ("imagePullPolicy", _s, False), 20: ("terminationMessagePolicy", _s, False)})
_POD_SPEC = _message("PodSpec", {2: ("containers", _CONTAINER, True), 3: ("restartPolicy", _s, False),
                                 4: ("terminationGracePeriodSeconds", _int, False),
                                 6: ("dnsPolicy", _s, False), 19: ("schedulerName", _s, False)})
_TEMPLATE = _message("PodTemplateSpec", {1: ("metadata", OBJECT_META, False), 2: ("spec", _POD_SPEC, False)})
_STRATEGY = _message("DeploymentStrategy", {1: ("type", _s, False)})
_DEPLOYMENT_SPEC = _message("DeploymentSpec", {1: ("replicas", _int, False), 2: ("selector", _SELECTOR, False),
                                              3: ("template", _TEMPLATE, False), 4: ("strategy", _STRATEGY, False)})
_EMPTY = _message("Status", {})


def _ignored(value: Any, depth: int) -> dict[str, Any]:
    """A field the server computes and never reads from the request (a review's ``status``: kubectl
    auth whoami sends an empty ``userInfo`` in it), skipped whatever it holds."""
    if not isinstance(value, bytes):
        raise ProtobufError("expected a message")
    return {}
_RESOURCE_ATTRIBUTES = _message("ResourceAttributes", {
    1: ("namespace", _s, False), 2: ("verb", _s, False), 3: ("group", _s, False), 4: ("version", _s, False),
    5: ("resource", _s, False), 6: ("subresource", _s, False), 7: ("name", _s, False)})
_NON_RESOURCE_ATTRIBUTES = _message("NonResourceAttributes", {1: ("path", _s, False), 2: ("verb", _s, False)})

KINDS: dict[str, Callable[[Any, int], dict[str, Any]]] = {
    "Namespace": _message("Namespace", {1: ("metadata", OBJECT_META, False),
                                        2: ("spec", _message("NamespaceSpec", {1: ("finalizers", _s, True)}), False),
                                        3: ("status", _EMPTY, False)}),
    "ConfigMap": _message("ConfigMap", {1: ("metadata", OBJECT_META, False), 2: ("data", _map(_s), False),
                                        3: ("binaryData", _map(_b64), False), 4: ("immutable", _bool, False)}),
    "Secret": _message("Secret", {1: ("metadata", OBJECT_META, False), 2: ("data", _map(_b64), False),
                                  3: ("type", _s, False), 4: ("stringData", _map(_s), False),
                                  5: ("immutable", _bool, False)}),
    "Deployment": _message("Deployment", {1: ("metadata", OBJECT_META, False), 2: ("spec", _DEPLOYMENT_SPEC, False),
                                          3: ("status", _EMPTY, False)}),
    # kubectl auth can-i / whoami (k8s.io/api authorization/v1 and authentication/v1 generated.proto).
    "SelfSubjectAccessReview": _message("SelfSubjectAccessReview", {
        1: ("metadata", OBJECT_META, False),
        2: ("spec", _message("SelfSubjectAccessReviewSpec", {1: ("resourceAttributes", _RESOURCE_ATTRIBUTES, False),
                                                            2: ("nonResourceAttributes", _NON_RESOURCE_ATTRIBUTES,
                                                                False)}), False),
        3: ("status", _ignored, False)}),
    "SelfSubjectReview": _message("SelfSubjectReview", {1: ("metadata", OBJECT_META, False),
                                                        2: ("status", _ignored, False)}),
}


def decode(body: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded request body; raises :class:`ProtobufError`."""
    if not body.startswith(MAGIC):
        raise ProtobufError("the body does not start with the k8s protobuf magic")
    api_version = kind = ""
    raw = b""
    for number, value in fields(body[len(MAGIC):]):
        if number == 1 and isinstance(value, bytes):
            for n, v in fields(value):
                if n == 1:
                    api_version = _s(v, 0)
                elif n == 2:
                    kind = _s(v, 0)
        elif number == 2 and isinstance(value, bytes):
            raw = value
        elif number == 3 and value:
            raise ProtobufError("content encodings are not supported")
    decoder = KINDS.get(kind)
    if decoder is None:
        raise ProtobufError(f"protobuf bodies of kind {kind or '?'} are not emulated")
    obj = decoder(raw, 0)
    obj = {"apiVersion": api_version, "kind": kind, **obj}
    if not obj.get("status"):
        obj.pop("status", None)
    return obj
