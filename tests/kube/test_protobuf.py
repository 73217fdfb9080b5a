"""Kubernetes protobuf request bodies (``tpemu.agent.kube.protobuf``): what kubectl's ``create``
generators send, decoded to JSON; truncation at every byte, unknown fields, garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpemu.agent.kube import protobuf as pb


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def ld(number: int, data: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(data)) + data


def vi(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def s(number: int, text: str) -> bytes:
    return ld(number, text.encode())


def entry(number: int, key: str, value: bytes) -> bytes:
    return ld(number, s(1, key) + ld(2, value))


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    return pb.MAGIC + ld(1, s(1, api_version) + s(2, kind)) + ld(2, raw) + s(4, "application/vnd.kubernetes.protobuf")


META = ld(1, s(1, "s1") + s(3, "default") + entry(11, "app", b"x") + ld(8, vi(1, 0)))
SECRET = envelope("v1", "Secret", META + entry(2, "k", b"v") + s(3, "Opaque"))


def test_secret_as_kubectl_create_sends_it() -> None:
    assert pb.decode(SECRET) == {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": {"k": "dg=="},
                                 "metadata": {"name": "s1", "namespace": "default", "labels": {"app": "x"},
                                              "creationTimestamp": "1970-01-01T00:00:00Z"}}


def test_deployment_and_configmap_and_namespace() -> None:
    container = s(1, "nginx") + s(2, "nginx:1.27") + ld(6, vi(3, 80)) + ld(8, b"")
    template = ld(1, entry(11, "app", b"d2")) + ld(2, ld(2, container))
    spec = vi(1, 2) + ld(2, entry(1, "app", b"d2")) + ld(3, template) + ld(4, b"")
    dep = pb.decode(envelope("apps/v1", "Deployment", ld(1, s(1, "d2")) + ld(2, spec) + ld(3, b"")))
    assert dep["spec"] == {"replicas": 2, "selector": {"matchLabels": {"app": "d2"}}, "strategy": {},
                           "template": {"metadata": {"labels": {"app": "d2"}}, "spec": {"containers": [
                               {"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 80}],
                                "resources": {}}]}}}
    assert "status" not in dep
    cm = pb.decode(envelope("v1", "ConfigMap", ld(1, s(1, "c")) + entry(2, "a", b"b")))
    assert cm["data"] == {"a": "b"}
    ns = pb.decode(envelope("v1", "Namespace", ld(1, s(1, "foo")) + ld(2, s(1, "kubernetes"))))
    assert ns["spec"] == {"finalizers": ["kubernetes"]}


def test_truncated_at_every_byte() -> None:
    # A cut inside a field is an error; a cut at a field boundary of the envelope is a shorter valid
    # message: without the object (raw) at all, or without the trailing contentType.
    whole = pb.decode(SECRET)
    seen = []
    for i in range(len(pb.MAGIC), len(SECRET)):
        try:
            seen.append(pb.decode(SECRET[:i]))
        except pb.ProtobufError:
            pass
    assert seen == [{"apiVersion": "v1", "kind": "Secret"}, whole]


def test_refusals() -> None:
    with pytest.raises(pb.ProtobufError, match="magic"):
        pb.decode(b"{}")
    with pytest.raises(pb.ProtobufError, match="kind Service"):
        pb.decode(envelope("v1", "Service", META))
    with pytest.raises(pb.ProtobufError, match="field 99 of Secret"):
        pb.decode(envelope("v1", "Secret", META + s(99, "surprise")))
    with pytest.raises(pb.ProtobufError, match="wire type"):
        pb.decode(envelope("v1", "Secret", META + bytes([0x1B])))


@given(st.binary(max_size=200))
def test_garbage_only_raises_protobuf_error(data: bytes) -> None:
    try:
        pb.decode(pb.MAGIC + data)
    except (pb.ProtobufError, UnicodeDecodeError):
        pass
