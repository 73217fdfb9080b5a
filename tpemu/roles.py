"""Roles and their label rules for applications and Kubernetes clusters (Teleport's ``RoleV6``) (pure).

Only the parts of a role that decide *which* apps and Kubernetes clusters a user may reach —
``spec.allow.app_labels`` / ``spec.deny.app_labels`` and ``spec.allow.kubernetes_labels`` /
``spec.deny.kubernetes_labels`` — and *as whom* in Kubernetes: ``kubernetes_groups`` /
``kubernetes_users``, templates over the user's traits (:mod:`tpemu.parse`:
``{{internal.kubernetes_groups}}``, ``{{email.local(external.email)}}``,
``{{regexp.replace(external.team, "^(.*)$", "team-$1")}}``) that ``Role.ApplyTraits`` interpolates
and ``RoleSet.CheckKubeGroupsAndUsers`` unites over the roles, less the deny side's.

Teleport (``lib/services/role.go``: ``RoleSet.checkAccess`` with
``NewAppLabelsMatcher`` / ``NewKubernetesClusterLabelMatcher`` and ``MatchLabels``) grants access
when no role's deny rule matches the resource's labels and at least one role's allow rule does; a
rule matches when every key of the selector matches (``'*': '*'`` matches everything, a value
``'*'`` matches any value of that key, ``^…$`` is a regular expression, anything else exact).

The preset roles are built in as Teleport defines them (``lib/services/presets.go``:
``NewPresetAccessRole`` allows every app and Kubernetes cluster, as the groups and users of the
user's ``kubernetes_groups``/``kubernetes_users`` traits; ``editor`` and ``auditor`` allow none).
Other roles are stored by the Auth Service (:mod:`tpemu.auth.roles`); an unknown role
name grants nothing. This module is pure and shared: the Auth Service decides with it when it
issues certificates, and the agents (:mod:`tpemu.agent.access`) per connection or request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tpemu import authapi, parse

WILDCARD = "*"
#: The rule kinds enforced here, as the role spec names them.
KINDS = ("app_labels", "kubernetes_labels")
#: The Kubernetes principals a role grants (lists of templates).
PRINCIPALS = ("kubernetes_groups", "kubernetes_users")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._+-]{0,127}")

Selector = Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class Role:
    name: str
    allow: Mapping[str, Selector] = field(default_factory=dict)
    deny: Mapping[str, Selector] = field(default_factory=dict)
    #: ``kubernetes_groups`` / ``kubernetes_users`` of each side: templates, as stored.
    allow_principals: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    deny_principals: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def resource(self) -> dict[str, Any]:
        def side(rules: Mapping[str, Selector], principals: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
            return {**{k: {key: list(v) for key, v in sel.items()} for k, sel in rules.items()},
                    **{k: list(v) for k, v in principals.items()}}
        return {"kind": "role", "version": "v6", "metadata": {"name": self.name},
                "spec": {"allow": side(self.allow, self.allow_principals),
                         "deny": side(self.deny, self.deny_principals)}}

    @classmethod
    def from_resource(cls, data: object) -> Role:
        body = authapi.body_object(data)
        meta = authapi.body_object(body.get("metadata") or {})
        name = authapi.field_str(meta, "name", required=True, max_len=128)
        if not _NAME.fullmatch(name):
            raise authapi.BadParameter(f"invalid role name {name!r}")
        spec = authapi.body_object(body.get("spec") or {})
        return cls(name, _rules(spec.get("allow"), "allow"), _rules(spec.get("deny"), "deny"),
                   _principals(spec.get("allow"), "allow"), _principals(spec.get("deny"), "deny"))


def _principals(data: object, where: str) -> dict[str, tuple[str, ...]]:
    """``kubernetes_groups``/``kubernetes_users``: lists of templates, each checked to parse (as
    Teleport's role validation does with ``parse.NewExpression``)."""
    side = authapi.body_object(data or {})
    out: dict[str, tuple[str, ...]] = {}
    for kind in PRINCIPALS:
        raw = side.get(kind)
        if raw is None:
            continue
        if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw) or len(raw) > 256:
            raise authapi.BadParameter(f"spec.{where}.{kind} must be a list of strings")
        for value in raw:
            try:
                parse.parse(value)
            except parse.ExpressionError as exc:
                raise authapi.BadParameter(f"spec.{where}.{kind}: {exc}") from None
        out[kind] = tuple(raw)
    return out


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
    "access": Role("access", {"app_labels": _ALL, "kubernetes_labels": _ALL},
                   allow_principals={"kubernetes_groups": ("{{internal.kubernetes_groups}}",),
                                     "kubernetes_users": ("{{internal.kubernetes_users}}",)}),
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


def kube_principals(roles: Iterable[Role], traits: Mapping[str, Sequence[str]],
                    warn: Callable[[str, str, parse.ExpressionError], None] | None = None,
                    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``CheckKubeGroupsAndUsers`` over roles whose templates ``ApplyTraits`` interpolated: the groups
    and users of every role's allow side, less those of any deny side; ``warn(role, value, error)``
    hears of a template that fails for another reason than a missing trait (the value is skipped)."""
    allowed: dict[str, list[str]] = {k: [] for k in PRINCIPALS}
    denied: dict[str, set[str]] = {k: set() for k in PRINCIPALS}
    for role in roles:
        def warned(value: str, exc: parse.ExpressionError, name: str = role.name) -> None:
            if warn is not None:
                warn(name, value, exc)
        for kind in PRINCIPALS:
            for value in parse.apply_traits_slice(role.allow_principals.get(kind, ()), traits, warned):
                if value not in allowed[kind]:
                    allowed[kind].append(value)
            denied[kind] |= set(parse.apply_traits_slice(role.deny_principals.get(kind, ()), traits, warned))
    groups, users = (tuple(v for v in allowed[k] if v not in denied[k]) for k in PRINCIPALS)
    return groups, users
