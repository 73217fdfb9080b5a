"""Role label rules for apps and Kubernetes clusters (``lib/services/role.go`` ``RoleSet.checkAccess``
and ``MatchLabels``; presets from ``lib/services/presets.go``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpemu import authapi
from tpemu.auth.roles import PRESETS, Role, check_access, selector_matches


def role(allow: dict[str, object] | None = None, deny: dict[str, object] | None = None, name: str = "r") -> Role:
    return Role.from_resource({"metadata": {"name": name}, "spec": {"allow": allow or {}, "deny": deny or {}}})


def test_selectors() -> None:
    assert selector_matches({"*": ("*",)}, {})
    assert not selector_matches({}, {"env": "dev"})
    assert selector_matches({"env": ("dev",)}, {"env": "dev", "team": "a"})
    assert not selector_matches({"env": ("dev",)}, {"env": "prod"})
    assert not selector_matches({"env": ("dev",), "team": ("a",)}, {"env": "dev"})  # every key must match
    assert selector_matches({"env": ("*",)}, {"env": "anything"})
    assert not selector_matches({"env": ("*",)}, {"team": "a"})
    assert selector_matches({"env": ("^dev-[0-9]+$",)}, {"env": "dev-12"})
    assert not selector_matches({"env": ("^dev-[0-9]+$",)}, {"env": "dev-12x"})
    assert selector_matches({"env": ("prod", "dev")}, {"env": "dev"})


def test_presets_and_deny_wins() -> None:
    assert check_access([PRESETS["access"]], "app_labels", {"env": "prod"}) == ""
    assert check_access([PRESETS["access"]], "kubernetes_labels", {}) == ""
    assert "no role allows" in check_access([PRESETS["editor"]], "app_labels", {})
    assert "no role allows" in check_access([], "app_labels", {})
    dev = role({"app_labels": {"env": "dev"}})
    assert check_access([dev], "app_labels", {"env": "dev"}) == ""
    assert check_access([dev], "kubernetes_labels", {"env": "dev"}) != ""  # app rules say nothing of kube
    no_prod = role(deny={"app_labels": {"env": "prod"}}, name="no-prod")
    assert "denied by role 'no-prod'" in check_access([PRESETS["access"], no_prod], "app_labels", {"env": "prod"})
    assert check_access([PRESETS["access"], no_prod], "app_labels", {"env": "dev"}) == ""


def test_bad_roles_are_refused_clearly() -> None:
    with pytest.raises(authapi.BadParameter, match="mapping"):
        role({"app_labels": ["env"]})
    with pytest.raises(authapi.BadParameter, match="list of strings"):
        role({"app_labels": {"env": 3}})
    with pytest.raises(authapi.BadParameter, match="bad expression"):
        role({"app_labels": {"env": "^($"}})
    with pytest.raises(authapi.BadParameter, match="invalid role name"):
        role(name="../x")
    r = role({"app_labels": {"env": ["dev"]}, "kubernetes_labels": {"*": "*"}})
    assert Role.from_resource(r.resource()) == r


@given(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=4),
       st.dictionaries(st.text(min_size=1, max_size=5), st.text(max_size=5), min_size=1, max_size=3))
def test_exact_selector_is_a_subset_test(labels: dict[str, str], sel: dict[str, str]) -> None:
    selector = {k: (v,) for k, v in sel.items() if v != "*" and not v.startswith("^") and k != "*"}
    if selector:
        assert selector_matches(selector, labels) == all(labels.get(k) == v[0] for k, v in selector.items())
