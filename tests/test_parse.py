"""Role template expressions (tpemu.parse), after Teleport's lib/utils/parse (parse.go, ast.go)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpemu import authapi, parse
from tpemu.roles import Role, kube_principals

TRAITS = {"email": ["Dana Scully <dana@example.com>", "fox@example.org"], "team": ["admins", "dev", ""],
          "kubernetes_groups": ["viewers"], "logins": ["root"]}


@pytest.mark.parametrize(("text", "want"), [
    ("plain", ["plain"]),
    ("{{external.team}}", ["admins", "dev"]),  # empty values dropped
    ('{{external["team"]}}', ["admins", "dev"]),
    ("  p-{{ internal.kubernetes_groups }}-s  ", ["p-viewers-s"]),  # outer space trimmed
    ("{{email.local(external.email)}}", ["dana", "fox"]),
    ('{{regexp.replace(external.team, "^admins$", "system:masters")}}', ["system:masters"]),  # dev dropped
    ('{{regexp.replace(external.team, "^(.)(.*)$", "$2-$1")}}', ["dmins-a", "ev-d"]),
    ('{{regexp.replace(external.team, "^(a)", "$1x$$")}}', ["$dmins"]),  # Go: $1x is the group "1x"
    ('{{regexp.replace(email.local(external.email), "^d", "D")}}', ["Dana"]),
    ('{{email.local("carol@example.net")}}', ["carol"]),
    ("{{email.local(`raw@example.net`)}}", ["raw"]),
    ('{{"lit\\u00e9"}}', ["lit\u00e9"]),
])
def test_interpolate(text: str, want: list[str]) -> None:
    assert parse.apply_value_traits(text, TRAITS) == want


@pytest.mark.parametrize(("text", "error", "words"), [
    ("{{external.nope}}", parse.NotFound, "variable not found: external.nope"),
    ("{{internal.team}}", parse.ExpressionError, "unsupported variable 'team'"),
    ("{{other.team}}", parse.ExpressionError, "unsupported variable namespace 'other'"),
    ("{{team}}", parse.ExpressionError, 'found variable "team" with 1 field, expected 2'),
    ("{{a.b.c}}", parse.ExpressionError, "expected 2"),
    ("{{external.team}}{{external.team}}", parse.ExpressionError, "make sure the format is {{expression}}"),
    ("{{external.team", parse.ExpressionError, "make sure the format is {{expression}}"),
    ("{{email.local(external.team)}}", parse.ExpressionError, "mail: missing @ in addr-spec"),
    ('{{email.local("")}}', parse.ExpressionError, 'found empty "local" argument'),
    ("{{email.local(external.email, external.team)}}", parse.ExpressionError, "takes 1 argument"),
    ('{{regexp.replace(external.team, "(", "x")}}', parse.ExpressionError, "2nd argument regexp"),
    ("{{regexp.replace(external.team, external.team, \"x\")}}", parse.ExpressionError, "not a string"),
    ('{{regexp.match("a")}}', parse.ExpressionError, "does not evaluate to a string"),
    ("{{email.remote(external.email)}}", parse.ExpressionError, "unsupported function: email.remote"),
    ('{{"bad \\q escape"}}', parse.ExpressionError, "invalid escape"),
])
def test_refusals(text: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as info:
        parse.apply_value_traits(text, TRAITS)
    assert words in str(info.value)


@given(st.text(max_size=80))
def test_any_text_interpolates_or_fails_cleanly(text: str) -> None:
    try:
        out = parse.apply_value_traits(text, TRAITS)
    except parse.ExpressionError:
        return
    assert all(isinstance(v, str) and v for v in out) or out == []


def test_kube_principals_unite_allow_and_remove_deny() -> None:
    a = Role.from_resource({"kind": "role", "metadata": {"name": "a"}, "spec": {"allow": {
        "kubernetes_groups": ['{{regexp.replace(external.team, "^admins$", "system:masters")}}', "static"],
        "kubernetes_users": ["{{email.local(external.email)}}", "{{external.missing}}"]}}})
    b = Role.from_resource({"kind": "role", "metadata": {"name": "b"}, "spec": {
        "allow": {"kubernetes_groups": ["{{internal.kubernetes_groups}}", "static"]},
        "deny": {"kubernetes_users": ["fox"]}}})
    assert kube_principals([a, b], TRAITS) == (("system:masters", "static", "viewers"), ("dana",))
    assert Role.from_resource(a.resource()) == a  # stored as given
    with pytest.raises(authapi.BadParameter, match="spec.allow.kubernetes_groups"):
        Role.from_resource({"kind": "role", "metadata": {"name": "c"},
                            "spec": {"allow": {"kubernetes_groups": ["{{bad"]}}})
    warned: list[str] = []
    odd = Role.from_resource({"kind": "role", "metadata": {"name": "d"},
                              "spec": {"allow": {"kubernetes_users": ["{{email.local(external.team)}}"]}}})
    assert kube_principals([odd], TRAITS, lambda role, value, exc: warned.append(role)) == ((), ())
    assert warned == ["d"]
