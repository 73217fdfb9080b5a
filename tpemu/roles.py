"""Roles and their label rules for applications and Kubernetes clusters (Teleport's ``RoleV6``) (pure).

Only the parts of a role that decide *which* apps and Kubernetes clusters a user may reach:
``spec.allow.app_labels`` / ``spec.deny.app_labels`` and ``spec.allow.kubernetes_labels`` /
``spec.deny.kubernetes_labels``. Teleport (``lib/services/role.go``: ``RoleSet.checkAccess`` with
``NewAppLabelsMatcher`` / ``NewKubernetesClusterLabelMatcher`` and ``MatchLabels``) grants access
when no role's deny rule matches the resource's labels and at least one role's allow rule does; a
rule matches when every key of the selector matches (``'*': '*'`` matches everything, a value
``'*'`` matches any value of that key, ``^…$`` is a regular expression, anything else exact).

The preset roles are built in as Teleport defines them (``lib/services/presets.go``:
``NewPresetAccessRole`` allows every app and Kubernetes cluster; ``editor`` and ``auditor`` allow
none). Other roles are stored by the Auth Service (:mod:`tpemu.auth.roles`); an unknown role
name grants nothing. This module is pure and shared: the Auth Service decides with it when it
issues certificates, and the agents (:mod:`tpemu.agent.access`) per connection or request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tpemu import authapi

WILDCARD = "*"
#: The rule kinds enforced here, as the role spec names them.
KINDS = ("app_labels", "kubernetes_labels")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._+-]{0,127}")

Selector = Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class Role:
    name: str
    allow: Mapping[str, Selector] = field(default_factory=dict)
    deny: Mapping[str, Selector] = field(default_factory=dict)

    def resource(self) -> dict[str, Any]:
        def side(rules: Mapping[str, Selector]) -> dict[str, Any]:
            return {k: {key: list(v) for key, v in sel.items()} for k, sel in rules.items()}
        return {"kind": "role", "version": "v6", "metadata": {"name": self.name},
                "spec": {"allow": side(self.allow), "deny": side(self.deny)}}

    @classmethod
    def from_resource(cls, data: object) -> Role:
        body = authapi.body_object(data)
        meta = authapi.body_object(body.get("metadata") or {})
        name = authapi.field_str(meta, "name", required=True, max_len=128)
        if not _NAME.fullmatch(name):
            raise authapi.BadParameter(f"invalid role name {name!r}")
        spec = authapi.body_object(body.get("spec") or {})
        return cls(name, _rules(spec.get("allow"), "allow"), _rules(spec.get("deny"), "deny"))


def _rules(data: object, where: str) -> dict[str, Selector]:
    side = authapi.body_object(data or {})
    out: dict[str, Selector] = {}
    for kind in KINDS:
        raw = side.get(kind)
        if raw is None:
            continue
        if not isinstance(raw, dict):
            raise authapi.BadParameter(f"spec.{where}.{kind} must be a mapping of label to value(s)")
        sel: dict[str, tuple[str, ...]] = {}
        for key, value in raw.items():
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise authapi.BadParameter(f"spec.{where}.{kind}.{key}: a string or a list of strings")
            for v in values:
                if v.startswith("^") and v.endswith("$"):
                    try:
                        re.compile(v)
                    except re.error as exc:
                        raise authapi.BadParameter(f"spec.{where}.{kind}.{key}: bad expression {v!r}: {exc}") from None
            sel[str(key)] = tuple(values)
        out[kind] = sel
    return out


_ALL: Selector = {WILDCARD: (WILDCARD,)}
#: ``lib/services/presets.go``: access reaches every app and cluster; editor and auditor none.
PRESETS: dict[str, Role] = {
    "access": Role("access", {"app_labels": _ALL, "kubernetes_labels": _ALL}),
    "editor": Role("editor"),
    "auditor": Role("auditor"),
}


def _value_matches(pattern: str, value: str) -> bool:
    if pattern == WILDCARD:
        return True
    if pattern.startswith("^") and pattern.endswith("$"):
        return re.fullmatch(pattern, value) is not None
    return pattern == value


def selector_matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    """``MatchLabels``: an empty selector matches nothing; ``*: *`` everything; else every key."""
    if not selector:
        return False
    if WILDCARD in selector and WILDCARD in selector[WILDCARD]:
        return True
    for key, patterns in selector.items():
        if key not in labels:
            return False
        if not any(_value_matches(p, labels[key]) for p in patterns):
            return False
    return True


def check_access(roles: Iterable[Role], kind: str, labels: Mapping[str, str]) -> str:
    """Empty string when allowed, else why not (as Teleport's access-denied reasons read)."""
    roles = list(roles)
    for role in roles:
        if selector_matches(role.deny.get(kind, {}), labels):
            return f"denied by role {role.name!r} ({kind})"
    if any(selector_matches(role.allow.get(kind, {}), labels) for role in roles):
        return ""
    names = ", ".join(r.name for r in roles) or "none"
    return f"no role allows it (roles: {names}; {kind} do not match {dict(labels)})"
