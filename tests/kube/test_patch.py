"""The Kubernetes patch formats (``tpemu.agent.kube.patch``): RFC 7386 and RFC 6902 examples,
strategic merge by merge keys and directives, and what kubectl's client-side apply sends."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpemu.agent.kube import patch


def test_merge_patch_rfc7386_example() -> None:
    target = {"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"},
              "tags": ["example", "sample"], "content": "This will be unchanged"}
    p = {"title": "Hello!", "phoneNumber": "+01-123-456-7890", "author": {"familyName": None}, "tags": ["example"]}
    assert patch.merge_patch(target, p) == {"title": "Hello!", "author": {"givenName": "John"},
                                            "tags": ["example"], "content": "This will be unchanged",
                                            "phoneNumber": "+01-123-456-7890"}


def test_json_patch_operations() -> None:
    doc = {"a": {"b": [1, 2]}, "c": 1}
    out = patch.json_patch(doc, [{"op": "add", "path": "/a/b/-", "value": 3},
                                 {"op": "replace", "path": "/c", "value": 2},
                                 {"op": "move", "from": "/c", "path": "/d"},
                                 {"op": "copy", "from": "/d", "path": "/e"},
                                 {"op": "remove", "path": "/a/b/0"},
                                 {"op": "test", "path": "/e", "value": 2}])
    assert out == {"a": {"b": [2, 3]}, "d": 2, "e": 2}
    assert doc == {"a": {"b": [1, 2]}, "c": 1}  # the input is not changed
    for bad in ([{"op": "test", "path": "/c", "value": 9}], [{"op": "remove", "path": "/zz"}],
                [{"op": "nope", "path": "/c"}], {"op": "add"}, [{"op": "add", "path": "c", "value": 1}]):
        with pytest.raises(patch.PatchError):
            patch.json_patch(doc, bad)


def test_strategic_merge_by_name_and_directives() -> None:
    live: dict[str, Any] = {"spec": {"containers": [{"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
                                                    {"name": "b", "image": "b:1"}],
                                     "volumes": [{"name": "v"}], "nodeSelector": {"k": "v"}}}
    p = {"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                  "containers": [{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]},
                                 {"name": "b", "$patch": "delete"}],
                  "nodeSelector": {"$patch": "replace", "z": "1"}}}
    out = patch.strategic_merge(live, p)
    assert out["spec"]["containers"] == [{"name": "a", "image": "a:2", "env": [{"name": "X", "value": "1"},
                                                                              {"name": "Y", "value": "2"}]}]
    assert out["spec"]["nodeSelector"] == {"z": "1"}
    assert out["spec"]["volumes"] == [{"name": "v"}]


def test_strategic_merge_replaces_lists_without_merge_key() -> None:
    assert patch.strategic_merge({"args": ["a", "b"]}, {"args": ["c"]}) == {"args": ["c"]}
    assert patch.strategic_merge({"finalizers": ["x", "y"]}, {"$deleteFromPrimitiveList/finalizers": ["x"]}) == {
        "finalizers": ["y"]}
    with pytest.raises(patch.PatchError):
        patch.strategic_merge({"containers": [{"name": "a"}]}, {"containers": [{"image": "no-name"}]})


def test_kubectl_apply_replica_patch() -> None:
    # What kubectl apply sends when only spec.replicas changed (plus its annotation).
    live = {"metadata": {"name": "web", "annotations": {"a": "1"}}, "spec": {"replicas": 2}}
    p = {"metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
         "spec": {"replicas": 3}}
    out = patch.strategic_merge(live, p)
    assert out["spec"]["replicas"] == 3 and out["metadata"]["annotations"]["a"] == "1"


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                           lambda children: st.lists(children, max_size=3) | st.dictionaries(
                               st.text(max_size=3), children, max_size=3), max_leaves=10)


@given(st.dictionaries(st.text(max_size=3), json_values, max_size=4),
       st.dictionaries(st.text(max_size=3), json_values, max_size=4))
def test_merge_patch_properties(target: dict[str, Any], p: dict[str, Any]) -> None:
    out = patch.merge_patch(target, p)
    for k, v in p.items():
        if v is None:
            assert k not in out
        elif not isinstance(v, dict):
            assert out[k] == v
    # applying the same patch twice changes nothing more (idempotence of RFC 7386)
    assert patch.merge_patch(out, p) == out
