"""An HTTP app's ``rewrite`` block: extra request headers and redirect rewriting (pure).

Teleport's app agent (``lib/srv/app/transport.go``):

* ``rewriteHeaders``: each ``rewrite.headers`` entry (``"Name: value"`` in ``teleport.yaml``,
  ``lib/config/fileconf.go`` ``Rewrite.Headers``, parsed by ``ParseHeader`` in
  ``lib/service/servicecfg/app.go``) replaces the request's headers of that name with the value
  after ``services.ApplyValueTraits`` (``lib/services/role.go``, :mod:`tpemu.parse`):
  ``{{internal.logins}}``, ``{{external.team}}``, ``{{email.local(external.email)}}`` or
  ``{{regexp.replace(external.team, "^(.*)$", "team-$1")}}`` (with a literal prefix/suffix) becomes
  one header per value; a value that interpolates to nothing, or fails, skips the header.
  ``Host`` sets the request's host.
  Headers Teleport injects itself (``IsReservedHeader``: ``teleport-jwt-assertion``,
  ``X-Forwarded-*`` …) are never rewritten: ``CheckAndSetDefaults`` refuses them at start-up
  ("header %q is reserved and can't be rewritten").
* ``rewriteRedirect``: a ``3xx`` whose ``Location`` host is listed in ``rewrite.redirect`` is sent
  to the app's public address instead (``https://<public_addr>:<proxy port>``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from tpemu import parse
from tpemu.errors import LocalFault

log = logging.getLogger(__name__)

#: ``IsReservedHeader`` (``lib/srv/app/common/header.go``, older ``lib/srv/app/transport.go``):
#: the JWT headers, ``X-Forwarded-Ssl``, Teleport's API/AWS headers and ``reverseproxy.XHeaders``.
RESERVED = frozenset({
    "teleport-jwt-assertion", "cf-access-token", "x-forwarded-ssl", "x-teleport-api-error", "x-teleport-api-info",
    "x-teleport-aws-assumed-role", "x-teleport-aws-assumed-role-authorization", "x-forwarded-proto",
    "x-forwarded-for", "x-forwarded-host", "x-forwarded-port", "x-forwarded-server", "x-real-ip"})
MAX_VALUE = 4096
# RFC 9110 token characters (httpguts.ValidHeaderFieldName).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class RewriteError(LocalFault, ValueError):
    """An app's ``rewrite`` block cannot be used; the message names the app and the header."""


@dataclass(frozen=True)
class Header:
    name: str  # lower-case
    value: str


def parse_header(app: str, text: str) -> Header:
    """``ParseHeader``: ``"Name: value"``, split at the first colon, both sides trimmed; a reserved
    name is refused as ``CheckAndSetDefaults`` does."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep:
        raise RewriteError(f"app {app!r}: failed to parse {text!r} as http header (want \"Name: value\")")
    if not _TOKEN.fullmatch(name):
        raise RewriteError(f"app {app!r}: invalid http header name: {text!r}")
    if len(value) > MAX_VALUE or any(c in value for c in "\r\n\0"):
        raise RewriteError(f"app {app!r}: invalid http header value: {text!r}")
    if name.lower() in RESERVED:
        raise RewriteError(f"invalid application {app!r} header rewrite configuration: header "
                           f"{'-'.join(p.capitalize() for p in name.split('-'))!r} is reserved and can't be rewritten")
    return Header(name.lower(), value)


def apply_value_traits(value: str, traits: Mapping[str, Sequence[str]]) -> list[str]:
    """``ApplyValueTraits``: the literal, or one string per non-empty value of the expression;
    raises ``LookupError`` saying why the header is skipped."""
    try:
        out = parse.apply_value_traits(value, traits)
    except parse.ExpressionError as exc:
        raise LookupError(str(exc)) from None
    if not out:
        raise LookupError(f"{value!r} interpolates to no value")
    return out


class Rewrite:
    """One app's compiled ``rewrite`` block."""

    def __init__(self, app: str, headers: Sequence[str] = (), redirect: Sequence[str] = ()) -> None:
        self.app = app
        self.headers = [parse_header(app, h) for h in headers]
        self.redirect = frozenset(h.lower() for h in redirect)

    def request_headers(self, headers: list[tuple[str, str]], traits: Mapping[str, Sequence[str]],
                        user: str) -> list[tuple[str, str]]:
        """``rewriteHeaders``: ``headers`` (lower-case names) with the configured ones applied."""
        out = list(headers)
        for header in self.headers:
            try:
                values = apply_value_traits(header.value, traits)
            except LookupError as exc:
                log.info("app %s: header %s not set for %s: %s", self.app, header.name, user, exc)
                continue
            values = [v for v in values if len(v) <= MAX_VALUE and not any(c in v for c in "\r\n\0")]
            out = [(k, v) for k, v in out if k != header.name]
            if header.name == "host":  # r.Host: one value, the last one wins
                out += [("host", values[-1])] if values else []
                continue
            out += [(header.name, v) for v in values]
        return out

    def location(self, status: int, location: str, public_host: str, public_port: int) -> str:
        """``rewriteRedirect``: the ``Location`` of a ``3xx`` answer, sent to the app's public
        address when its host is one of ``rewrite.redirect``."""
        if not self.redirect or not 300 <= status <= 308 or not public_host:
            return location
        try:
            parts = urlsplit(location)
            host = (parts.hostname or "").lower()
        except ValueError:
            return location
        if host not in self.redirect:
            return location
        netloc = f"{public_host}:{public_port}" if public_port else public_host
        return urlunsplit(("https", netloc, parts.path, parts.query, parts.fragment))
