"""An app's ``rewrite`` block (``tpemu.agent.app_rewrite``), as Teleport's app agent applies it
(``lib/srv/app/transport.go`` ``rewriteHeaders`` / ``rewriteRedirect``, ``ParseHeader`` and the
reserved-header check of ``lib/service/servicecfg/app.go``, ``ApplyValueTraits`` of
``lib/services/role.go``): byte-level vectors for the header parser, trait interpolation, and the
start-up refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpemu import config
from tpemu.agent.app_rewrite import Header, Rewrite, RewriteError, apply_value_traits, parse_header
from tpemu.agent.app_service import AppError, app_defs

TRAITS = {"logins": ["alice", "root"], "team": ["blue", ""], "db_users": [], "kubernetes_groups": ["dev"],
          "email": ["Alice Liddell <alice@example.com>"]}


@pytest.mark.parametrize(("text", "want"), [
    ("Host: grafana.example.com", Header("host", "grafana.example.com")),
    ("  X-Env :  prod  ", Header("x-env", "prod")),
    ("X-Url: http://a:b/c", Header("x-url", "http://a:b/c")),  # split at the first colon only
    ("X-Empty:", Header("x-empty", "")),
    ("X-Logins: {{internal.logins}}", Header("x-logins", "{{internal.logins}}")),
])
def test_parse_header(text: str, want: Header) -> None:
    assert parse_header("grafana", text) == want


@pytest.mark.parametrize(("text", "words"), [
    ("no colon", "failed to parse"),
    ("Bad Name: x", "invalid http header name"),
    (": x", "invalid http header name"),
    ("X-A: a\rb", "invalid http header value"),
    ("X-A: a\nb", "invalid http header value"),
    ("X-A: " + "v" * 5000, "invalid http header value"),
    ("teleport-jwt-assertion: forged", "header 'Teleport-Jwt-Assertion' is reserved and can't be rewritten"),
    ("X-Forwarded-For: 1.2.3.4", "header 'X-Forwarded-For' is reserved"),
    ("x-real-ip: 1.2.3.4", "header 'X-Real-Ip' is reserved"),
])
def test_parse_header_refusals(text: str, words: str) -> None:
    with pytest.raises(RewriteError, match="grafana") as info:
        parse_header("grafana", text)
    assert words in str(info.value)


@given(st.text(max_size=200))
def test_parse_header_never_fails_otherwise(text: str) -> None:
    try:
        header = parse_header("a", text)
    except RewriteError:
        return
    assert header.name and header.name == header.name.lower() and "\n" not in header.value


@pytest.mark.parametrize(("value", "want"), [
    ("plain", ["plain"]),
    ("{{internal.logins}}", ["alice", "root"]),
    ("{{ internal.logins }}", ["alice", "root"]),
    ('{{external["team"]}}', ["blue"]),  # empty values dropped
    ("team-{{external.team}}-x", ["team-blue-x"]),
    ("{{internal.kubernetes_groups}}", ["dev"]),
    # the template functions of lib/utils/parse
    ("{{email.local(external.email)}}", ["alice"]),
    ('x-{{regexp.replace(internal.logins, "^a(.*)$", "A$1")}}', ["x-Alice"]),  # root does not match: dropped
])
def test_apply_value_traits(value: str, want: list[str]) -> None:
    assert apply_value_traits(value, TRAITS) == want


@pytest.mark.parametrize(("value", "words"), [
    ("{{external.nope}}", "variable not found: external.nope"),
    ("{{internal.db_users}}", "interpolates to no value"),  # present but empty
    ("{{internal.team}}", "unsupported variable 'team'"),
    ("{{email.local(internal.logins)}}", "mail: missing @ in addr-spec"),
    ("{{internal.logins}}{{internal.logins}}", "make sure the format is {{expression}}"),
    ("{{internal.logins", "make sure the format is {{expression}}"),
])
def test_apply_value_traits_skips(value: str, words: str) -> None:
    with pytest.raises(LookupError) as info:
        apply_value_traits(value, TRAITS)
    assert words in str(info.value)


def test_request_headers_replace_add_and_skip() -> None:
    rw = Rewrite("grafana", ["Host: grafana.example.com", "X-Logins: {{internal.logins}}",
                             "X-Missing: {{external.nope}}", "X-Fixed: yes"])
    incoming = [("host", "127.0.0.1:3000"), ("x-logins", "forged"), ("x-missing", "kept"), ("accept", "*/*")]
    assert rw.request_headers(incoming, TRAITS, "alice") == [
        ("x-missing", "kept"),  # its rewrite interpolated to nothing: the header is left alone
        ("accept", "*/*"), ("host", "grafana.example.com"), ("x-logins", "alice"), ("x-logins", "root"),
        ("x-fixed", "yes")]


@pytest.mark.parametrize(("status", "location", "want"), [
    (302, "http://internal.example:8080/login?next=/x#f", "https://grafana.tpemu.local:3080/login?next=/x#f"),
    (307, "http://INTERNAL.example/", "https://grafana.tpemu.local:3080/"),
    (302, "http://elsewhere.example/login", "http://elsewhere.example/login"),
    (200, "http://internal.example/", "http://internal.example/"),  # only redirects
    (302, "/relative", "/relative"),
    (302, "http://[bad", "http://[bad"),
])
def test_redirect_location(status: int, location: str, want: str) -> None:
    rw = Rewrite("grafana", redirect=["internal.example"])
    assert rw.location(status, location, "grafana.tpemu.local", 3080) == want


def test_app_defs_refuse_a_bad_rewrite_at_start() -> None:
    good = config.from_dict({"app_service": {"enabled": True, "apps": [
        {"name": "g", "uri": "http://127.0.0.1:3000", "rewrite": {"headers": ["X-A: {{internal.logins}}"],
                                                                "redirect": ["localhost"]}}]}})
    (app,) = app_defs(good.app_service.apps, False)
    assert app.rewrite is not None and app.rewrite.redirect == {"localhost"}
    bad = config.from_dict({"app_service": {"enabled": True, "apps": [
        {"name": "g", "uri": "http://127.0.0.1:3000", "rewrite": {"headers": ["X-Forwarded-Host: evil"]}}]}})
    with pytest.raises(AppError, match="invalid application 'g' header rewrite configuration: header "
                       "'X-Forwarded-Host' is reserved and can't be rewritten"):
        app_defs(bad.app_service.apps, False)
    with pytest.raises(config.ConfigError, match="rewrite.headers"):
        config.from_dict({"app_service": {"apps": [{"name": "g", "uri": "http://x",
                                                    "rewrite": {"headers": [{"X": 1}]}}]}})
