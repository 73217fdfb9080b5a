"""Role template expressions: ``{{internal.logins}}``, ``{{email.local(external.email)}}`` … (pure).

Teleport's ``lib/utils/parse`` (``parse.go`` ``NewExpression``/``Interpolate``, ``ast.go``) for string
expressions, used where roles and app rewrites interpolate a user's traits
(``services.ApplyValueTraits``, ``lib/services/role.go``):

* a literal (no braces) is itself; ``{{ expr }}`` with a literal prefix and suffix (neither holding
  a brace; the prefix loses its leading and the suffix its trailing white space) gives one string
  per non-empty value of ``expr``, each between the prefix and the suffix;
* ``expr`` is a variable — ``internal.NAME``, ``external.NAME``, ``external["NAME"]`` — a string
  literal (``"…"`` with Go escapes, or a back-quoted raw string), ``email.local(expr)`` (the local
  part of each address, ``net/mail.ParseAddress``; an empty or unparsable one fails the whole
  expression) or ``regexp.replace(expr, "re", "replacement")`` (Go's ``ReplaceAllString``: ``$1``,
  ``${name}``, ``$$``; values the expression does not match are dropped);
* a trait the user lacks fails with "variable not found"; ``internal`` names are Teleport's
  internal traits only.

Failures raise :class:`ExpressionError` (a bad expression) or :class:`NotFound` (a missing trait),
whose messages read as Teleport's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parseaddr

from tpemu.errors import PeerFault

#: The internal traits (``constants.Trait*``, ``teleport.TraitJWT``) a template may name.
INTERNAL = frozenset({"logins", "windows_logins", "kubernetes_groups", "kubernetes_users", "db_names", "db_users",
                      "db_roles", "aws_role_arns", "azure_identities", "gcp_service_accounts", "jwt",
                      "host_user_uid", "host_user_gid", "github_identities"})
MAX_EXPRESSION = 4096
#: ``reVariable``: prefix, ``{{expression}}``, suffix; none of them holding a brace.
_TEMPLATE = re.compile(r"^(?P<prefix>[^}{]*)\{\{(?P<expr>\s*[^}{]*\s*)\}\}(?P<suffix>[^}{]*)$", re.S)
_TOKEN = re.compile(r'\s*(?:(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<str>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)'
                    r"|(?P<punct>[.()\[\],]))", re.S)
_GO_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"',
               "'": "'"}


class ExpressionError(PeerFault, ValueError):
    """A template that does not parse or evaluate (Teleport's ``trace.BadParameter``)."""


class NotFound(ExpressionError):
    """The template names a trait the user does not have."""


@dataclass(frozen=True)
class _Var:
    namespace: str
    name: str


@dataclass(frozen=True)
class _Lit:
    value: str


@dataclass(frozen=True)
class _EmailLocal:
    arg: _Node


@dataclass(frozen=True)
class _Replace:
    arg: _Node
    pattern: re.Pattern[str]
    replacement: str


_Node = _Var | _Lit | _EmailLocal | _Replace


@dataclass(frozen=True)
class Expression:
    prefix: str
    suffix: str
    node: _Node

    def interpolate(self, traits: Mapping[str, Sequence[str]]) -> list[str]:
        """``Interpolate``: the non-empty values, each between the prefix and the suffix."""
        return [f"{self.prefix}{v}{self.suffix}" for v in _evaluate(self.node, traits) if v]


def parse(text: str) -> Expression:
    """``NewExpression``."""
    if len(text) > MAX_EXPRESSION:
        raise ExpressionError(f"expression of {len(text)} characters (at most {MAX_EXPRESSION})")
    match = _TEMPLATE.match(text)
    if match is None:
        if "{{" in text or "}}" in text:
            raise ExpressionError(f"{text!r} is using template brackets '{{{{' or '}}}}', however expression does "
                                  "not parse, make sure the format is {{expression}}")
        return Expression("", "", _Lit(text))
    node = _Parser(match.group("expr")).expression()
    return Expression(match.group("prefix").lstrip(), match.group("suffix").rstrip(), node)


def apply_value_traits(text: str, traits: Mapping[str, Sequence[str]]) -> list[str]:
    """``services.ApplyValueTraits``: interpolate one role value; :class:`NotFound` when it names a
    missing trait, :class:`ExpressionError` when it does not parse or names an unsupported variable."""
    return parse(text).interpolate(traits)


def apply_traits_slice(values: Sequence[str], traits: Mapping[str, Sequence[str]],
                       warn: Callable[[str, ExpressionError], None] | None = None) -> list[str]:
    """``applyValueTraitsSlice``: every value interpolated, deduplicated in order; a value that fails is
    skipped (``warn`` hears why, unless it only names a missing trait)."""
    out: list[str] = []
    for value in values:
        try:
            results = apply_value_traits(value, traits)
        except NotFound:
            continue
        except ExpressionError as exc:
            if warn is not None:
                warn(value, exc)
            continue
        out += [r for r in results if r not in out]
    return out


def _evaluate(node: _Node, traits: Mapping[str, Sequence[str]]) -> list[str]:
    if isinstance(node, _Lit):
        return [node.value]
    if isinstance(node, _Var):
        if node.namespace == "literal":
            return [node.name]
        if node.namespace not in ("internal", "external"):
            raise ExpressionError(f"unsupported variable namespace {node.namespace!r}")
        if node.namespace == "internal" and node.name not in INTERNAL:
            raise ExpressionError(f"unsupported variable {node.name!r}")
        if node.name not in traits:
            raise NotFound(f"variable not found: {node.namespace}.{node.name}")
        return list(traits[node.name])
    if isinstance(node, _EmailLocal):
        return [_email_local(v) for v in _evaluate(node.arg, traits)]
    out = []
    for value in _evaluate(node.arg, traits):
        if node.pattern.search(value) is None:
            out.append("")  # filtered out: only matching values are kept
            continue
        out.append(node.pattern.sub(lambda m: _expand(m, node.replacement), value))
    return out


def _email_local(value: str) -> str:
    """The local part of one address (``Alice <alice@example.com>`` or ``alice@example.com``)."""
    if not value:
        raise ExpressionError('found empty "local" argument')
    _, address = parseaddr(value)
    local, at, domain = address.partition("@")
    if not address or not at or not local or not domain or any(c in address for c in " <>,;"):
        raise ExpressionError(f'failed to parse "local" argument {value!r}: mail: missing @ in addr-spec')
    return local


def _expand(match: re.Match[str], template: str) -> str:
    """Go's ``Regexp.Expand``: ``$name``/``${name}`` (the longest run of letters, digits and ``_``;
    numbers are group indexes, unknown or unmatched groups empty), ``$$`` a dollar."""
    out, i = [], 0
    while i < len(template):
        ch = template[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        if template.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        braced = re.compile(r"\{([A-Za-z0-9_]+)\}").match(template, i + 1)
        bare = re.compile(r"[A-Za-z0-9_]+").match(template, i + 1)
        name_match = braced or bare
        if name_match is None:
            out.append("$")
            i += 1
            continue
        name = name_match.group(1) if braced else name_match.group(0)
        i = name_match.end()
        try:
            group = match.group(int(name)) if name.isdigit() else match.group(name)
        except IndexError:  # no such group
            group = None
        out.append(group or "")
    return "".join(out)


class _Parser:
    """The expression language: variables, string literals and the two functions."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if m is None:
                raise ExpressionError(f"{text.strip()!r}: unexpected {text[pos:].strip()[:20]!r}")
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def _peek(self) -> tuple[str, str]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "")

    def _take(self, value: str) -> None:
        if self._peek()[1] != value:
            raise ExpressionError(f"{self.text.strip()!r}: expected {value!r}, found {self._peek()[1] or 'the end'!r}")
        self.i += 1

    def expression(self) -> _Node:
        node = self._node()
        if self.i != len(self.tokens):
            raise ExpressionError(f"{self.text.strip()!r}: unexpected {self._peek()[1]!r}")
        return node

    def _node(self) -> _Node:
        kind, value = self._peek()
        if kind in ("str", "raw"):
            self.i += 1
            return _Lit(_string(kind, value))
        if kind != "ident":
            raise ExpressionError(f"{self.text.strip()!r}: expected a variable, a string or a function")
        self.i += 1
        namespace = value
        if self._peek()[1] == "[":
            self.i += 1
            key_kind, key = self._peek()
            if key_kind not in ("str", "raw"):
                raise ExpressionError(f"{self.text.strip()!r}: found invalid map key that is not a string")
            self.i += 1
            self._take("]")
            return _Var(namespace, _string(key_kind, key))
        if self._peek()[1] != ".":
            raise ExpressionError(f'found variable "{namespace}" with 1 field, expected 2')
        self.i += 1
        kind, name = self._peek()
        if kind != "ident":
            raise ExpressionError(f"{self.text.strip()!r}: expected a name after {namespace!r}.")
        self.i += 1
        if self._peek()[1] == ".":
            raise ExpressionError(f'found variable "{namespace}.{name}.…" with more than 2 fields, expected 2')
        if self._peek()[1] != "(":
            return _Var(namespace, name)
        self.i += 1
        args = [self._node()]
        while self._peek()[1] == ",":
            self.i += 1
            args.append(self._node())
        self._take(")")
        return self._call(namespace, name, args)

    def _call(self, namespace: str, name: str, args: list[_Node]) -> _Node:
        if (namespace, name) == ("email", "local"):
            if len(args) != 1:
                raise ExpressionError(f'function "local" takes 1 argument, got {len(args)}')
            return _EmailLocal(args[0])
        if (namespace, name) == ("regexp", "replace"):
            if len(args) != 3:
                raise ExpressionError(f'function "replace" takes 3 arguments, got {len(args)}')
            pattern, replacement = args[1], args[2]
            if not isinstance(pattern, _Lit):
                raise ExpressionError('found function "replace" with 2nd argument that is not a string')
            if not isinstance(replacement, _Lit):
                raise ExpressionError('found function "replace" with 3rd argument that is not a string')
            try:
                compiled = re.compile(pattern.value)
            except re.error as exc:
                raise ExpressionError(f'failed to parse "replace" 2nd argument regexp {pattern.value!r}: '
                                      f"{exc}") from None
            return _Replace(args[0], compiled, replacement.value)
        if (namespace, name) in (("regexp", "match"), ("regexp", "not_match")):
            raise ExpressionError(f"{self.text.strip()!r} does not evaluate to a string")
        raise ExpressionError(f"unsupported function: {namespace}.{name}")


def _string(kind: str, token: str) -> str:
    if kind == "raw":
        return token[1:-1]
    body, out, i = token[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _GO_ESCAPES:
            out.append(_GO_ESCAPES[nxt])
            i += 2
        elif nxt in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[nxt]
            digits = body[i + 2:i + 2 + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise ExpressionError(f"invalid escape in string literal {token}")
            out.append(chr(int(digits, 16)))
            i += 2 + width
        else:
            raise ExpressionError(f"invalid escape in string literal {token}")
    return "".join(out)
