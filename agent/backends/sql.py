"""A small in-memory SQL engine shared by the emulated Postgres and MySQL servers (pure: no I/O).

It understands the subset unmodified clients need to connect and round-trip data, in two
dialects (``Dialect.POSTGRES``: ``"ident"``, ``$1`` parameters, ``::`` casts, ``||``
concatenation; ``Dialect.MYSQL``: backticks, ``"…"`` and ``'…'`` strings with backslash
escapes, ``@@system_variables``, case-insensitive names and string comparison):

* ``SELECT <exprs> [FROM t [AS a]] [WHERE …] [ORDER BY …] [LIMIT n [OFFSET m]]`` with literals,
  ``*``, ``AS`` aliases, arithmetic, comparisons, ``AND``/``OR``/``NOT``, ``IS [NOT] NULL``,
  ``[NOT] LIKE``/``ILIKE``, ``[NOT] IN (…)``, ``BETWEEN``, ``CAST``/``::``, the aggregates
  ``count/sum/min/max/avg`` (without ``GROUP BY``) and a few functions (``version()``,
  ``current_user``, ``current_database()``, ``now()``, ``database()``, ``user()`` …);
* ``CREATE TABLE [IF NOT EXISTS]`` (``NOT NULL``, ``PRIMARY KEY``, ``UNIQUE``, ``DEFAULT``,
  ``SERIAL``/``AUTO_INCREMENT``/identity), ``INSERT … VALUES … [RETURNING]``, ``UPDATE``,
  ``DELETE``, ``TRUNCATE``, ``DROP TABLE [IF EXISTS]``, ``CREATE DATABASE``;
* ``BEGIN``/``COMMIT``/``ROLLBACK``/savepoints as no-ops (the transaction *status* is tracked
  so each protocol can report it; changes are never undone), ``SET`` (stored), ``SHOW``.

Everything else raises :class:`SqlError` with kind ``NOT_SUPPORTED`` (SQLSTATE 0A000, MySQL
1235) and a message saying the tpemu emulator does not support it. Errors carry both
protocols' codes so each backend can answer in its own words.

The shapes, in use order: ``SqlEngine`` (one per backend: the shared store) →
``engine.open_session(user, database)`` → ``SqlSession.parse_script(sql)`` /
``SqlSession.parse(sql)`` → ``describe(stmt, param_types)`` (columns and parameter types,
without running) → ``execute(stmt, params)`` → :class:`Result`.
"""

from __future__ import annotations

import enum
import functools
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, DivisionByZero, InvalidOperation
from typing import TypeAlias

from tpemu.errors import PeerFault

Value: TypeAlias = bool | int | float | Decimal | str | datetime | date | None


class Dialect(enum.Enum):
    POSTGRES = "postgres"
    MYSQL = "mysql"


class SqlType(enum.Enum):
    """The engine's column types; each protocol maps them to its own codes (OIDs, MYSQL_TYPE_*)."""

    BOOL = "boolean"
    INT2 = "smallint"
    INT4 = "integer"
    INT8 = "bigint"
    FLOAT4 = "real"
    FLOAT8 = "double precision"
    NUMERIC = "numeric"
    TEXT = "text"
    VARCHAR = "character varying"
    CHAR = "character"
    NAME = "name"
    TIMESTAMP = "timestamp without time zone"
    TIMESTAMPTZ = "timestamp with time zone"
    DATE = "date"


_INT_TYPES = {SqlType.INT2: 16, SqlType.INT4: 32, SqlType.INT8: 64}
_FLOAT_TYPES = (SqlType.FLOAT4, SqlType.FLOAT8)
_TEXT_TYPES = (SqlType.TEXT, SqlType.VARCHAR, SqlType.CHAR, SqlType.NAME)
_NUMERIC_TYPES = (*_INT_TYPES, *_FLOAT_TYPES, SqlType.NUMERIC)


class ErrorKind(enum.Enum):
    """Error classes with (Postgres SQLSTATE, MySQL error number, MySQL SQL state)."""

    SYNTAX = ("42601", 1064, "42000")
    NOT_SUPPORTED = ("0A000", 1235, "42000")
    UNDEFINED_TABLE = ("42P01", 1146, "42S02")
    DUPLICATE_TABLE = ("42P07", 1050, "42S01")
    UNDEFINED_COLUMN = ("42703", 1054, "42S22")
    DUPLICATE_COLUMN = ("42701", 1060, "42S21")
    UNDEFINED_FUNCTION = ("42883", 1305, "42000")
    UNDEFINED_PARAMETER = ("42P02", 1064, "42000")
    UNDEFINED_SETTING = ("42704", 1193, "HY000")
    COLUMN_COUNT = ("42601", 1136, "21S01")
    GROUPING = ("42803", 1140, "42000")
    INVALID_TEXT = ("22P02", 1366, "HY000")
    OUT_OF_RANGE = ("22003", 1264, "22003")
    DIVISION_BY_ZERO = ("22012", 1365, "22012")
    NOT_NULL = ("23502", 1048, "23000")
    UNIQUE = ("23505", 1062, "23000")
    NO_DATABASE = ("3D000", 1046, "3D000")
    UNKNOWN_DATABASE = ("3D000", 1049, "42000")
    FAILED_TRANSACTION = ("25P02", 1105, "HY000")
    LIMIT = ("53400", 1114, "HY000")

    @property
    def pg_code(self) -> str:
        return self.value[0]

    @property
    def mysql_errno(self) -> int:
        return self.value[1]

    @property
    def mysql_state(self) -> str:
        return self.value[2]


class SqlError(PeerFault):
    """A statement failed; ``kind`` gives each protocol its error code."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _unsupported(what: str) -> SqlError:
    return SqlError(ErrorKind.NOT_SUPPORTED, f"{what} is not supported by the tpemu emulator")


# --- Tokens -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # ident qident string number param op sysvar uservar eof
    value: str
    pos: int
    end: int


_OPS2 = ("::", "<=", ">=", "<>", "!=", "||", "&&", ":=")
_OPS1 = "(),;.*+-/%=<>[]"
_IDENT_START = re.compile(r"[A-Za-z_\u0080-\uffff]")
_IDENT = re.compile(r"[A-Za-z0-9_$\u0080-\uffff]*")
_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_DIGITS = frozenset("0123456789")  # not str.isdigit(): that accepts "²"
_MYSQL_ESCAPES = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a"}


def tokenize(sql: str, dialect: Dialect) -> list[Token]:
    """Split ``sql`` into tokens; raises :class:`SqlError` (syntax) on an unterminated literal."""
    mysql = dialect is Dialect.MYSQL
    out: list[Token] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
            continue
        if sql.startswith("--", i) or (mysql and c == "#"):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            if j < 0:
                raise SqlError(ErrorKind.SYNTAX, "unterminated /* comment")
            i = j + 2
            continue
        start = i
        if c == "'" or (mysql and c == '"'):
            text, i = _scan_string(sql, i, c, backslash=mysql)
            out.append(Token("string", text, start, i))
            continue
        if c in "eE" and i + 1 < n and sql[i + 1] == "'" and not mysql:
            text, i = _scan_string(sql, i + 1, "'", backslash=True)
            out.append(Token("string", text, start, i))
            continue
        if (c == '"' and not mysql) or (c == "`" and mysql):
            j = i + 1
            parts = []
            while True:
                k = sql.find(c, j)
                if k < 0:
                    raise SqlError(ErrorKind.SYNTAX, f"unterminated quoted identifier at position {start + 1}")
                parts.append(sql[j:k])
                if k + 1 < n and sql[k + 1] == c:
                    parts.append(c)
                    j = k + 2
                    continue
                i = k + 1
                break
            name = "".join(parts)
            if not name:
                raise SqlError(ErrorKind.SYNTAX, f"zero-length delimited identifier at position {start + 1}")
            out.append(Token("qident", name, start, i))
            continue
        if c in _DIGITS or (c == "." and i + 1 < n and sql[i + 1] in _DIGITS):
            m = _NUMBER.match(sql, i)
            assert m is not None
            i = m.end()
            if i < n and (_IDENT_START.match(sql[i]) or sql[i] in _DIGITS):
                raise SqlError(ErrorKind.SYNTAX, f"trailing junk after numeric literal at position {start + 1}")
            out.append(Token("number", m.group(), start, i))
            continue
        if c == "$" and not mysql:
            j = i + 1
            while j < n and sql[j] in _DIGITS:
                j += 1
            if j == i + 1:
                raise _unsupported("dollar-quoted strings")
            out.append(Token("param", sql[i + 1 : j], start, j))
            i = j
            continue
        if c == "@" and mysql:
            sys_var = sql.startswith("@@", i)
            j = i + (2 if sys_var else 1)
            m = re.compile(r"[A-Za-z0-9_$.]+").match(sql, j)
            if m is None:
                raise SqlError(ErrorKind.SYNTAX, f"invalid variable name at position {start + 1}")
            i = m.end()
            out.append(Token("sysvar" if sys_var else "uservar", m.group().lower(), start, i))
            continue
        if _IDENT_START.match(c):
            m = _IDENT.match(sql, i + 1)
            assert m is not None
            i = m.end()
            word = sql[start:i]
            out.append(Token("ident", word if mysql else word.lower(), start, i))
            continue
        two = sql[i : i + 2]
        if two in _OPS2:
            out.append(Token("op", two, start, i + 2))
            i += 2
            continue
        if c in _OPS1:
            out.append(Token("op", c, start, i + 1))
            i += 1
            continue
        raise SqlError(ErrorKind.SYNTAX, f"syntax error at or near \"{c}\" (position {start + 1})")
    out.append(Token("eof", "", n, n))
    return out


def _scan_string(sql: str, i: int, quote: str, backslash: bool) -> tuple[str, int]:
    """Scan a quoted string starting at ``sql[i] == quote``; returns (text, index after it)."""
    j, n = i + 1, len(sql)
    parts: list[str] = []
    while j < n:
        c = sql[j]
        if c == quote:
            if j + 1 < n and sql[j + 1] == quote:
                parts.append(quote)
                j += 2
                continue
            return "".join(parts), j + 1
        if backslash and c == "\\" and j + 1 < n:
            nxt = sql[j + 1]
            parts.append(_MYSQL_ESCAPES.get(nxt, nxt))
            j += 2
            continue
        parts.append(c)
        j += 1
    raise SqlError(ErrorKind.SYNTAX, f"unterminated quoted string at position {i + 1}")


# --- Syntax tree ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Literal:
    value: Value
    type: SqlType | None  # None: untyped (NULL, or a string literal that adapts to its context)


@dataclass(frozen=True, slots=True)
class Param:
    index: int  # 0-based ($1 is 0)


@dataclass(frozen=True, slots=True)
class ColumnRef:
    table: str | None
    name: str


@dataclass(frozen=True, slots=True)
class FuncCall:
    name: str
    args: tuple[Expr, ...]
    star: bool = False  # count(*)


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "-", "not"
    operand: Expr


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # + - * / % || = <> < <= > >= and or
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class IsNull:
    operand: Expr
    negated: bool


@dataclass(frozen=True, slots=True)
class Like:
    operand: Expr
    pattern: Expr
    negated: bool
    case_insensitive: bool


@dataclass(frozen=True, slots=True)
class InList:
    operand: Expr
    items: tuple[Expr, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class Cast:
    operand: Expr
    type: SqlType
    type_name: str


@dataclass(frozen=True, slots=True)
class Variable:
    """A MySQL ``@@system`` (``system=True``) or ``@user`` variable."""

    name: str
    system: bool


Expr: TypeAlias = Literal | Param | ColumnRef | FuncCall | Unary | Binary | IsNull | Like | InList | Cast | Variable


@dataclass(frozen=True, slots=True)
class SelectItem:
    expr: Expr | None  # None = "*"
    alias: str | None
    source: str  # the text as written (MySQL names unaliased columns by it)
    star_table: str | None = None


@dataclass(frozen=True, slots=True)
class TableName:
    name: str
    schema: str | None = None


@dataclass(frozen=True, slots=True)
class OrderKey:
    expr: Expr
    descending: bool
    nulls_first: bool | None


@dataclass(frozen=True, slots=True)
class SelectStmt:
    items: tuple[SelectItem, ...]
    table: TableName | None
    alias: str | None
    where: Expr | None
    order: tuple[OrderKey, ...]
    limit: Expr | None
    offset: Expr | None


@dataclass(frozen=True, slots=True)
class InsertStmt:
    table: TableName
    columns: tuple[str, ...] | None
    rows: tuple[tuple[Expr | None, ...], ...]  # None = DEFAULT
    returning: tuple[SelectItem, ...]


@dataclass(frozen=True, slots=True)
class UpdateStmt:
    table: TableName
    alias: str | None
    assignments: tuple[tuple[str, Expr | None], ...]
    where: Expr | None
    returning: tuple[SelectItem, ...]


@dataclass(frozen=True, slots=True)
class DeleteStmt:
    table: TableName
    alias: str | None
    where: Expr | None
    returning: tuple[SelectItem, ...]


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    name: str
    type: SqlType
    type_modifier: int | None = None
    not_null: bool = False
    primary_key: bool = False
    unique: bool = False
    auto_increment: bool = False
    default: Expr | None = None


@dataclass(frozen=True, slots=True)
class CreateTableStmt:
    table: TableName
    columns: tuple[ColumnSpec, ...]
    if_not_exists: bool
    primary_key: tuple[str, ...] = ()
    unique: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class DropTableStmt:
    tables: tuple[TableName, ...]
    if_exists: bool


@dataclass(frozen=True, slots=True)
class TruncateStmt:
    tables: tuple[TableName, ...]


@dataclass(frozen=True, slots=True)
class DatabaseStmt:
    """CREATE DATABASE / DROP DATABASE / USE."""

    action: str  # create drop use
    name: str
    if_flag: bool = False


@dataclass(frozen=True, slots=True)
class TransactionStmt:
    action: str  # begin commit rollback savepoint release rollback_to


@dataclass(frozen=True, slots=True)
class SetStmt:
    assignments: tuple[tuple[str, str, Expr | str], ...]  # (scope, name, value expr or raw text)


@dataclass(frozen=True, slots=True)
class ShowStmt:
    what: str  # variable name (Postgres) or databases/tables/variables/status/warnings/columns
    like: str | None = None
    target: str | None = None
    full: bool = False


@dataclass(frozen=True, slots=True)
class NoOpStmt:
    """Statements accepted and ignored (session resets, CREATE INDEX …); ``tag`` is the answer."""

    tag: str


@dataclass(frozen=True, slots=True)
class EmptyStmt:
    pass


Node: TypeAlias = (SelectStmt | InsertStmt | UpdateStmt | DeleteStmt | CreateTableStmt | DropTableStmt
                   | TruncateStmt | DatabaseStmt | TransactionStmt | SetStmt | ShowStmt | NoOpStmt | EmptyStmt)


@dataclass(frozen=True, slots=True)
class Statement:
    """One parsed statement; ``param_count`` is the highest ``$n`` used (Postgres)."""

    node: Node
    text: str
    param_count: int

    @property
    def is_empty(self) -> bool:
        return isinstance(self.node, EmptyStmt)


# --- Parser -----------------------------------------------------------------------------------

_RESERVED = frozenset((
    "all", "and", "as", "asc", "between", "by", "case", "cast", "create", "delete", "desc", "distinct", "drop",
    "else", "end", "except", "for", "from", "group", "having", "in", "insert", "intersect", "into", "is", "join",
    "left", "like", "ilike", "limit", "not", "null", "nulls", "offset", "on", "or", "order", "returning", "right",
    "select", "set", "table", "then", "union", "update", "using", "values", "when", "where", "with", "inner",
    "outer", "cross", "full", "natural", "window", "fetch", "lock"
))
_UNSUPPORTED_STATEMENTS = frozenset((
    "alter", "grant", "revoke", "copy", "explain", "analyze", "vacuum", "listen", "notify", "prepare", "execute",
    "fetch", "declare", "lock", "call", "do", "comment", "cluster", "reindex", "refresh", "security", "import",
    "load", "handler", "replace", "rename", "checkpoint", "move", "reassign", "optimize", "repair", "check",
    "checksum", "kill", "flush", "purge", "install", "uninstall", "xa", "signal", "get", "help", "values", "with",
    "table"
))
_AGGREGATES = frozenset(("count", "sum", "min", "max", "avg"))
_NO_PAREN_FUNCS = {
    Dialect.POSTGRES: frozenset(("current_user", "session_user", "user", "current_timestamp", "current_date",
                                 "localtimestamp", "current_schema", "current_catalog", "current_role")),
    Dialect.MYSQL: frozenset(("current_user", "current_timestamp", "current_date", "localtimestamp", "localtime")),
}


def _type_from_words(words: list[str], dialect: Dialect) -> tuple[SqlType, bool]:
    """Map a type name (lower-case words) to (type, is_serial); raises NOT_SUPPORTED."""
    name = " ".join(words)
    table: dict[str, tuple[SqlType, bool]] = {
        "int": (SqlType.INT4, False), "integer": (SqlType.INT4, False), "int4": (SqlType.INT4, False),
        "mediumint": (SqlType.INT4, False), "serial": (SqlType.INT4, True), "serial4": (SqlType.INT4, True),
        "smallint": (SqlType.INT2, False), "int2": (SqlType.INT2, False), "tinyint": (SqlType.INT2, False),
        "smallserial": (SqlType.INT2, True), "bigint": (SqlType.INT8, False), "int8": (SqlType.INT8, False),
        "bigserial": (SqlType.INT8, True), "serial8": (SqlType.INT8, True),
        "signed": (SqlType.INT8, False), "unsigned": (SqlType.INT8, False),
        "signed integer": (SqlType.INT8, False), "unsigned integer": (SqlType.INT8, False),
        "real": (SqlType.FLOAT4, False), "float4": (SqlType.FLOAT4, False),
        "float": (SqlType.FLOAT8, False), "float8": (SqlType.FLOAT8, False), "double": (SqlType.FLOAT8, False),
        "double precision": (SqlType.FLOAT8, False), "numeric": (SqlType.NUMERIC, False),
        "decimal": (SqlType.NUMERIC, False), "dec": (SqlType.NUMERIC, False),
        "text": (SqlType.TEXT, False), "tinytext": (SqlType.TEXT, False), "mediumtext": (SqlType.TEXT, False),
        "longtext": (SqlType.TEXT, False), "varchar": (SqlType.VARCHAR, False),
        "character varying": (SqlType.VARCHAR, False), "char": (SqlType.CHAR, False),
        "character": (SqlType.CHAR, False), "bpchar": (SqlType.CHAR, False), "name": (SqlType.NAME, False),
        "boolean": (SqlType.BOOL, False), "bool": (SqlType.BOOL, False),
        "timestamp": (SqlType.TIMESTAMP, False), "timestamp without time zone": (SqlType.TIMESTAMP, False),
        "datetime": (SqlType.TIMESTAMP, False), "timestamptz": (SqlType.TIMESTAMPTZ, False),
        "timestamp with time zone": (SqlType.TIMESTAMPTZ, False), "date": (SqlType.DATE, False),
    }
    if dialect is Dialect.MYSQL:
        table["timestamp"] = (SqlType.TIMESTAMPTZ, False)  # MySQL TIMESTAMP is stored in UTC
        table["float"] = (SqlType.FLOAT4, False)
        table["boolean"] = table["bool"] = (SqlType.INT2, False)  # BOOL is TINYINT(1) in MySQL
    if name not in table:
        raise _unsupported(f"type {name}")
    return table[name]


class _Parser:
    """Recursive descent over the token list of one statement."""

    def __init__(self, sql: str, tokens: list[Token], dialect: Dialect) -> None:
        self.sql, self.toks, self.dialect = sql, tokens, dialect
        self.i = 0
        self.max_param = 0

    # token helpers
    def peek(self, k: int = 0) -> Token:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> Token:
        t = self.toks[self.i]
        if t.kind != "eof":
            self.i += 1
        return t

    def is_kw(self, word: str, k: int = 0) -> bool:
        t = self.peek(k)
        return t.kind == "ident" and t.value.lower() == word

    def accept_kw(self, *words: str) -> bool:
        if all(self.is_kw(w, k) for k, w in enumerate(words)):
            self.i += len(words)
            return True
        return False

    def expect_kw(self, *words: str) -> None:
        if not self.accept_kw(*words):
            raise self.error(f"expected {' '.join(w.upper() for w in words)}")

    def is_op(self, op: str, k: int = 0) -> bool:
        t = self.peek(k)
        return t.kind == "op" and t.value == op

    def accept_op(self, op: str) -> bool:
        if self.is_op(op):
            self.i += 1
            return True
        return False

    def expect_op(self, op: str) -> None:
        if not self.accept_op(op):
            raise self.error(f'expected "{op}"')

    def error(self, why: str = "") -> SqlError:
        t = self.peek()
        near = "end of input" if t.kind == "eof" else f'"{self.sql[t.pos:t.end]}"'
        msg = f"syntax error at or near {near}" if t.kind != "eof" else "syntax error at end of input"
        if why:
            msg += f" ({why})"
        return SqlError(ErrorKind.SYNTAX, msg)

    def name(self, what: str = "identifier") -> str:
        t = self.peek()
        if t.kind == "qident" or (t.kind == "ident" and t.value.lower() not in _RESERVED):
            self.i += 1
            return t.value
        raise self.error(f"expected {what}")

    def at_end(self) -> bool:
        return self.peek().kind == "eof"

    def keyword(self) -> str:
        t = self.peek()
        return t.value.lower() if t.kind == "ident" else ""

    # statements
    def statement(self) -> Node:
        if self.at_end():
            return EmptyStmt()
        kw = self.keyword()
        mysql = self.dialect is Dialect.MYSQL
        if kw == "select":
            node: Node = self.select()
        elif kw == "insert":
            node = self.insert()
        elif kw == "update":
            node = self.update()
        elif kw == "delete":
            node = self.delete()
        elif kw == "create":
            node = self.create()
        elif kw == "drop":
            node = self.drop()
        elif kw == "truncate":
            self.next()
            self.accept_kw("table")
            tables = [self.table_name()]
            while self.accept_op(","):
                tables.append(self.table_name())
            node = TruncateStmt(tuple(tables))
        elif kw in ("begin", "start", "commit", "end", "rollback", "abort", "savepoint", "release"):
            node = self.transaction()
        elif kw == "set":
            node = self.set_stmt()
        elif kw == "show":
            node = self.show()
        elif kw in ("describe", "desc") and mysql:
            self.next()
            node = ShowStmt("columns", target=self.table_name().name)
        elif kw == "use" and mysql:
            self.next()
            node = DatabaseStmt("use", self.name("database name"))
        elif kw in ("reset", "discard", "close", "unlisten", "deallocate") and not mysql:
            node = self.session_reset(kw)
        elif kw in _UNSUPPORTED_STATEMENTS:
            raise _unsupported(f"the {kw.upper()} statement")
        else:
            raise self.error()
        if not self.at_end():
            raise self.error()
        return node

    def session_reset(self, kw: str) -> Node:
        self.next()
        rest = self.rest_text()
        tags = {"reset": "RESET", "discard": "DISCARD ALL" if rest.lower() == "all" else "DISCARD",
                "close": "CLOSE CURSOR ALL" if rest.lower() == "all" else "CLOSE CURSOR",
                "unlisten": "UNLISTEN", "deallocate": "DEALLOCATE ALL" if rest.lower().endswith("all")
                else "DEALLOCATE"}
        if kw == "close" and rest.lower() != "all":
            raise _unsupported("cursors")
        return NoOpStmt(tags[kw])

    def rest_text(self) -> str:
        start = self.peek().pos
        while not self.at_end():
            self.next()
        return self.sql[start : self.peek().pos].strip()

    def transaction(self) -> Node:
        kw = self.keyword()
        self.next()
        if kw == "start":
            self.expect_kw("transaction")
            self.rest_text()
            return TransactionStmt("begin")
        if kw == "begin":
            self.rest_text()  # WORK / TRANSACTION / ISOLATION LEVEL … / READ ONLY: accepted, ignored
            return TransactionStmt("begin")
        if kw == "savepoint":
            self.name("savepoint name")
            return TransactionStmt("savepoint")
        if kw == "release":
            self.accept_kw("savepoint")
            self.name("savepoint name")
            return TransactionStmt("release")
        self.accept_kw("work") or self.accept_kw("transaction")
        if kw in ("rollback", "abort") and self.accept_kw("to"):
            self.accept_kw("savepoint")
            self.name("savepoint name")
            return TransactionStmt("rollback_to")
        self.rest_text()  # AND [NO] CHAIN, RELEASE …
        return TransactionStmt("commit" if kw in ("commit", "end") else "rollback")

    def set_stmt(self) -> Node:
        self.next()
        if self.dialect is Dialect.POSTGRES:
            scope = "session"
            if self.accept_kw("session") or self.accept_kw("local"):
                scope = self.toks[self.i - 1].value.lower()
            if self.is_kw("transaction") or self.is_kw("characteristics"):
                self.rest_text()
                return SetStmt(())
            if self.accept_kw("time", "zone"):
                return SetStmt(((scope, "timezone", self.rest_text().strip("'")),))
            if self.accept_kw("names"):
                return SetStmt(((scope, "client_encoding", self.rest_text().strip("'")),))
            name = self.name("parameter name")
            while self.accept_op("."):
                name += "." + self.name("parameter name")
            if not (self.accept_kw("to") or self.accept_op("=")):
                raise self.error("expected TO or =")
            value = self.rest_text()
            if len(value) >= 2 and value[0] == value[-1] == "'":
                value = value[1:-1].replace("''", "'")
            return SetStmt(((scope, name.lower(), value),))
        assignments: list[tuple[str, str, Expr | str]] = []
        while True:
            if self.accept_kw("names") or self.accept_kw("character", "set") or self.accept_kw("charset"):
                value = self.rest_text()
                assignments.append(("session", "names", value))
                break
            if self.is_kw("transaction"):
                self.rest_text()
                break
            scope = "session"
            for s in ("session", "global", "local", "persist"):
                if self.accept_kw(s):
                    scope = s
                    break
            t = self.next()
            if t.kind == "sysvar":
                name = t.value
                for prefix in ("session.", "global.", "local."):
                    if name.startswith(prefix):
                        scope, name = prefix[:-1], name[len(prefix):]
            elif t.kind == "uservar":
                scope, name = "user", t.value
            elif t.kind in ("ident", "qident"):
                name = t.value.lower()
            else:
                raise self.error("expected a variable name")
            if not (self.accept_op("=") or self.accept_op(":=")):
                raise self.error('expected "="')
            if (self.peek().kind == "ident" and self.peek(1).kind in ("eof",)) or (
                    self.peek().kind == "ident" and self.is_op(",", 1)):
                value_expr: Expr | str = self.next().value  # SET sql_mode = ANSI, autocommit = ON
            else:
                value_expr = self.expr()
            assignments.append((scope, name, value_expr))
            if not self.accept_op(","):
                break
        return SetStmt(tuple(assignments))

    def show(self) -> Node:
        self.next()
        if self.dialect is Dialect.POSTGRES:
            if self.accept_kw("all"):
                return ShowStmt("all")
            if self.accept_kw("transaction", "isolation", "level"):
                return ShowStmt("transaction_isolation")
            if self.accept_kw("time", "zone"):
                return ShowStmt("timezone")
            name = self.name("parameter name")
            while self.accept_op("."):
                name += "." + self.name("parameter name")
            return ShowStmt(name.lower())
        full = self.accept_kw("full")
        for scope in ("global", "session", "local"):
            self.accept_kw(scope)
        kw = self.keyword()
        self.next()
        if kw in ("databases", "schemas"):
            return ShowStmt("databases", like=self.show_like())
        if kw == "tables":
            target = self.name("database name") if (self.accept_kw("from") or self.accept_kw("in")) else None
            return ShowStmt("tables", like=self.show_like(), target=target, full=full)
        if kw in ("variables", "status"):
            return ShowStmt(kw, like=self.show_like())
        if kw in ("warnings", "errors"):
            self.rest_text()
            return ShowStmt("warnings")
        if kw in ("columns", "fields"):
            if not (self.accept_kw("from") or self.accept_kw("in")):
                raise self.error("expected FROM")
            target = self.table_name().name
            return ShowStmt("columns", target=target, like=self.show_like(), full=full)
        raise _unsupported(f"SHOW {kw.upper()}")

    def show_like(self) -> str | None:
        if self.accept_kw("like"):
            t = self.next()
            if t.kind != "string":
                raise self.error("expected a string after LIKE")
            return t.value
        if self.is_kw("where"):
            raise _unsupported("SHOW … WHERE")
        return None

    def table_name(self) -> TableName:
        first = self.name("table name")
        if self.accept_op("."):
            return TableName(self.name("table name"), first)
        return TableName(first)

    def alias(self) -> str | None:
        if self.accept_kw("as"):
            return self.name("alias")
        t = self.peek()
        if t.kind == "qident" or (t.kind == "ident" and t.value.lower() not in _RESERVED):
            self.i += 1
            return t.value
        return None

    def select_items(self) -> tuple[SelectItem, ...]:
        items = []
        while True:
            start = self.peek().pos
            if self.accept_op("*"):
                items.append(SelectItem(None, None, "*"))
            elif self.peek().kind in ("ident", "qident") and self.is_op(".", 1) and self.is_op("*", 2):
                table = self.next().value
                self.i += 2
                items.append(SelectItem(None, None, f"{table}.*", star_table=table))
            else:
                e = self.expr()
                source = self.sql[start : self.toks[self.i - 1].end]
                items.append(SelectItem(e, self.alias(), source))
            if not self.accept_op(","):
                return tuple(items)

    def select(self) -> SelectStmt:
        self.expect_kw("select")
        if self.accept_kw("distinct"):
            raise _unsupported("SELECT DISTINCT")
        self.accept_kw("all")
        items = self.select_items()
        table, alias = None, None
        if self.accept_kw("into"):
            raise _unsupported("SELECT INTO")
        if self.accept_kw("from"):
            if self.is_op("("):
                raise _unsupported("subqueries")
            table = self.table_name()
            if self.is_op("("):
                raise _unsupported(f"the table function {table.name}()")
            alias = self.alias()
            if self.is_op(",") or any(self.is_kw(k) for k in ("join", "inner", "left", "right", "full", "cross",
                                                                  "natural")):
                raise _unsupported("joins")
        where = self.expr() if self.accept_kw("where") else None
        if self.is_kw("group") or self.is_kw("having"):
            raise _unsupported("GROUP BY/HAVING")
        if any(self.is_kw(k) for k in ("union", "intersect", "except")):
            raise _unsupported(f"{self.keyword().upper()}")
        order: list[OrderKey] = []
        if self.accept_kw("order"):
            self.expect_kw("by")
            while True:
                e = self.expr()
                desc = self.accept_kw("desc")
                if not desc:
                    self.accept_kw("asc")
                nulls = None
                if self.accept_kw("nulls"):
                    if self.accept_kw("first"):
                        nulls = True
                    else:
                        self.expect_kw("last")
                        nulls = False
                order.append(OrderKey(e, desc, nulls))
                if not self.accept_op(","):
                    break
        limit = offset = None
        for _ in range(2):
            if self.accept_kw("limit"):
                if self.accept_kw("all"):
                    continue
                limit = self.expr()
                if self.dialect is Dialect.MYSQL and self.accept_op(","):
                    offset, limit = limit, self.expr()
            elif self.accept_kw("offset"):
                offset = self.expr()
                self.accept_kw("rows") or self.accept_kw("row")
        if self.is_kw("for"):
            self.rest_text()  # FOR UPDATE/SHARE: nothing to lock in a single-threaded store
        return SelectStmt(items, table, alias, where, tuple(order), limit, offset)

    def returning(self) -> tuple[SelectItem, ...]:
        if self.accept_kw("returning"):
            if self.dialect is Dialect.MYSQL:
                raise _unsupported("RETURNING")
            return self.select_items()
        return ()

    def insert(self) -> InsertStmt:
        self.expect_kw("insert")
        if self.dialect is Dialect.MYSQL:
            if self.accept_kw("ignore"):
                raise _unsupported("INSERT IGNORE")
            self.accept_kw("into")
        else:
            self.expect_kw("into")
        table = self.table_name()
        if self.dialect is Dialect.POSTGRES and self.accept_kw("as"):
            self.name()
        columns = None
        if self.accept_op("("):
            cols = [self.name("column name")]
            while self.accept_op(","):
                cols.append(self.name("column name"))
            self.expect_op(")")
            columns = tuple(cols)
        rows: list[tuple[Expr | None, ...]] = []
        if self.accept_kw("default", "values"):
            rows.append(())
        elif self.accept_kw("values") or (self.dialect is Dialect.MYSQL and self.accept_kw("value")):
            while True:
                self.expect_op("(")
                row: list[Expr | None] = []
                if not self.is_op(")"):
                    while True:
                        row.append(None if self.accept_kw("default") else self.expr())
                        if not self.accept_op(","):
                            break
                self.expect_op(")")
                rows.append(tuple(row))
                if not self.accept_op(","):
                    break
        elif self.is_kw("select"):
            raise _unsupported("INSERT … SELECT")
        elif self.is_kw("set"):
            raise _unsupported("INSERT … SET")
        else:
            raise self.error("expected VALUES")
        if self.is_kw("on"):
            raise _unsupported("ON CONFLICT / ON DUPLICATE KEY")
        return InsertStmt(table, columns, tuple(rows), self.returning())

    def update(self) -> UpdateStmt:
        self.expect_kw("update")
        table = self.table_name()
        alias = None if self.is_kw("set") else self.alias()
        self.expect_kw("set")
        assignments: list[tuple[str, Expr | None]] = []
        while True:
            col = self.name("column name")
            if self.accept_op("."):
                col = self.name("column name")
            self.expect_op("=")
            assignments.append((col, None if self.accept_kw("default") else self.expr()))
            if not self.accept_op(","):
                break
        if self.is_kw("from"):
            raise _unsupported("UPDATE … FROM")
        where = self.expr() if self.accept_kw("where") else None
        if self.is_kw("order") or self.is_kw("limit"):
            raise _unsupported("UPDATE … ORDER BY/LIMIT")
        return UpdateStmt(table, alias, tuple(assignments), where, self.returning())

    def delete(self) -> DeleteStmt:
        self.expect_kw("delete")
        self.expect_kw("from")
        table = self.table_name()
        alias = self.alias()
        if self.is_kw("using"):
            raise _unsupported("DELETE … USING")
        where = self.expr() if self.accept_kw("where") else None
        if self.is_kw("order") or self.is_kw("limit"):
            raise _unsupported("DELETE … ORDER BY/LIMIT")
        return DeleteStmt(table, alias, where, self.returning())

    def if_exists(self, negated: bool) -> bool:
        words = ("if", "not", "exists") if negated else ("if", "exists")
        return self.accept_kw(*words)

    def create(self) -> Node:
        self.expect_kw("create")
        if self.accept_kw("database") or (self.dialect is Dialect.MYSQL and self.accept_kw("schema")):
            flag = self.if_exists(True)
            name = self.name("database name")
            self.rest_text()  # CHARACTER SET … / WITH OWNER …: ignored
            return DatabaseStmt("create", name, flag)
        unique = self.accept_kw("unique")
        if self.accept_kw("index"):
            self.rest_text()
            return NoOpStmt("CREATE INDEX")
        if unique:
            raise self.error("expected INDEX")
        for temp in ("temporary", "temp"):
            self.accept_kw(temp)
        if not self.accept_kw("table"):
            raise _unsupported(f"CREATE {self.keyword().upper() or self.peek().value}")
        if_not_exists = self.if_exists(True)
        table = self.table_name()
        if self.accept_kw("as"):
            raise _unsupported("CREATE TABLE … AS")
        self.expect_op("(")
        columns: list[ColumnSpec] = []
        pk: tuple[str, ...] = ()
        uniques: list[tuple[str, ...]] = []
        while True:
            if self.accept_kw("constraint"):
                self.name("constraint name")
            if self.accept_kw("primary", "key"):
                pk = self.name_list()
            elif self.accept_kw("unique"):
                self.accept_kw("key") or self.accept_kw("index")
                if not self.is_op("("):
                    self.name()
                uniques.append(self.name_list())
            elif self.is_kw("key") or self.is_kw("index"):
                self.next()
                if not self.is_op("("):
                    self.name()
                self.name_list()  # a plain MySQL index: nothing to do
            elif self.is_kw("foreign") or self.is_kw("check") or self.is_kw("exclude"):
                raise _unsupported(f"{self.keyword().upper()} constraints")
            else:
                columns.append(self.column_spec())
            if not self.accept_op(","):
                break
        self.expect_op(")")
        if self.dialect is Dialect.MYSQL:
            self.rest_text()  # ENGINE=… DEFAULT CHARSET=…: table options are ignored
        return CreateTableStmt(table, tuple(columns), if_not_exists, pk, tuple(uniques))

    def name_list(self) -> tuple[str, ...]:
        self.expect_op("(")
        names = [self.name("column name")]
        self.skip_parens()
        while self.accept_op(","):
            names.append(self.name("column name"))
            self.skip_parens()
        self.expect_op(")")
        return tuple(names)

    def skip_parens(self) -> None:
        if self.accept_op("("):  # MySQL key prefix lengths: KEY (name(10))
            while not self.accept_op(")"):
                if self.at_end():
                    raise self.error()
                self.next()

    def type_spec(self) -> tuple[SqlType, int | None, bool, str]:
        """A type name with optional (n[, m]); returns (type, modifier, serial, text)."""
        start = self.peek().pos
        t = self.next()
        if t.kind != "ident":
            raise self.error("expected a type name")
        words = [t.value.lower()]
        follow = {"double": ("precision",), "character": ("varying",), "timestamp": ("with", "without"),
                  "signed": ("integer",), "unsigned": ("integer",)}
        while words[-1] in follow and any(self.is_kw(w) for w in follow[words[-1]]):
            words.append(self.next().value.lower())
            if words[-1] in ("with", "without"):
                self.expect_kw("time")
                self.expect_kw("zone")
                words += ["time", "zone"]
        modifier = None
        if self.accept_op("("):
            n = self.next()
            if n.kind != "number" or not n.value.isdigit():
                raise self.error("expected a type length")
            modifier = int(n.value)
            if self.accept_op(","):
                self.next()
            self.expect_op(")")
            if words[0] == "timestamp" and (self.is_kw("with") or self.is_kw("without")):
                words.append(self.next().value.lower())
                self.expect_kw("time")
                self.expect_kw("zone")
                words += ["time", "zone"]
        if self.dialect is Dialect.MYSQL:
            self.accept_kw("unsigned") or self.accept_kw("signed")
            self.accept_kw("zerofill")
        if self.accept_op("["):
            raise _unsupported("array types")
        sql_type, serial = _type_from_words(words, self.dialect)
        return sql_type, modifier, serial, self.sql[start : self.toks[self.i - 1].end]

    def column_spec(self) -> ColumnSpec:
        name = self.name("column name")
        sql_type, modifier, serial, _ = self.type_spec()
        spec = {"not_null": serial, "primary_key": False, "unique": False, "auto_increment": serial}
        default: Expr | None = None
        while True:
            if self.accept_kw("not", "null"):
                spec["not_null"] = True
            elif self.accept_kw("null"):
                pass
            elif self.accept_kw("primary", "key"):
                spec["primary_key"] = spec["not_null"] = True
            elif self.accept_kw("unique"):
                self.accept_kw("key")
                spec["unique"] = True
            elif self.accept_kw("default"):
                default = self.expr_at(7)
            elif self.accept_kw("auto_increment") or self.accept_kw("autoincrement"):
                spec["auto_increment"] = spec["not_null"] = True
            elif self.accept_kw("generated"):
                if not (self.accept_kw("always") or self.accept_kw("by", "default")):
                    raise self.error("expected ALWAYS or BY DEFAULT")
                self.expect_kw("as")
                if not self.accept_kw("identity"):
                    raise _unsupported("generated columns")
                spec["auto_increment"] = spec["not_null"] = True
            elif self.accept_kw("references"):
                self.table_name()
                if self.is_op("("):
                    self.name_list()
                while self.accept_kw("on"):
                    self.next()
                    self.accept_kw("null") or self.accept_kw("action") or self.accept_kw("default")
            elif (self.accept_kw("collate") or self.accept_kw("comment") or self.accept_kw("character", "set")
                  or self.accept_kw("charset")):
                self.next()
            elif self.is_kw("check"):
                raise _unsupported("CHECK constraints")
            elif self.accept_kw("on", "update"):
                raise _unsupported("ON UPDATE")
            else:
                break
        return ColumnSpec(name, sql_type, modifier, spec["not_null"], spec["primary_key"], spec["unique"],
                          spec["auto_increment"], default)

    def drop(self) -> Node:
        self.expect_kw("drop")
        if self.accept_kw("database") or (self.dialect is Dialect.MYSQL and self.accept_kw("schema")):
            flag = self.if_exists(False)
            return DatabaseStmt("drop", self.name("database name"), flag)
        if self.accept_kw("index"):
            self.rest_text()
            return NoOpStmt("DROP INDEX")
        self.accept_kw("temporary")
        if not self.accept_kw("table"):
            raise _unsupported(f"DROP {self.keyword().upper() or self.peek().value}")
        if_exists = self.if_exists(False)
        tables = [self.table_name()]
        while self.accept_op(","):
            tables.append(self.table_name())
        self.accept_kw("cascade") or self.accept_kw("restrict")
        return DropTableStmt(tuple(tables), if_exists)

    # expressions: precedence climbing; higher binds tighter
    def expr(self) -> Expr:
        return self.expr_at(1)

    def expr_at(self, min_prec: int) -> Expr:
        left = self.prefix(min_prec)
        while True:
            t = self.peek()
            mysql = self.dialect is Dialect.MYSQL
            word = t.value.lower() if t.kind == "ident" else ""
            op = t.value if t.kind == "op" else ""
            if (word == "or" or (op == "||" and mysql)) and min_prec <= 1:
                self.next()
                left = Binary("or", left, self.expr_at(2))
            elif (word == "and" or (op == "&&" and mysql)) and min_prec <= 2:
                self.next()
                left = Binary("and", left, self.expr_at(3))
            elif word == "is" and min_prec <= 4:
                self.next()
                negated = self.accept_kw("not")
                if self.accept_kw("null"):
                    left = IsNull(left, negated)
                elif self.is_kw("true") or self.is_kw("false"):
                    want = Literal(self.next().value.lower() == "true", SqlType.BOOL)
                    cmp: Expr = Binary("=", left, want)
                    left = Unary("not", cmp) if negated else cmp
                else:
                    raise self.error("expected NULL, TRUE or FALSE after IS")
            elif op in ("=", "<>", "!=", "<", "<=", ">", ">=") and min_prec <= 5:
                self.next()
                left = Binary("<>" if op == "!=" else op, left, self.expr_at(6))
            elif (word in ("like", "ilike", "in", "between") or (word == "not" and self.peek(1).kind == "ident"
                  and self.peek(1).value.lower() in ("like", "ilike", "in", "between"))) and min_prec <= 6:
                self.next()
                negated = word == "not"
                if negated:
                    word = self.next().value.lower()
                if word in ("like", "ilike"):
                    pattern = self.expr_at(7)
                    if self.is_kw("escape"):
                        raise _unsupported("LIKE … ESCAPE")
                    left = Like(left, pattern, negated, word == "ilike" or mysql)
                elif word == "in":
                    self.expect_op("(")
                    if self.is_kw("select"):
                        raise _unsupported("subqueries")
                    items = [self.expr()]
                    while self.accept_op(","):
                        items.append(self.expr())
                    self.expect_op(")")
                    left = InList(left, tuple(items), negated)
                else:
                    low = self.expr_at(7)
                    self.expect_kw("and")
                    high = self.expr_at(7)
                    between: Expr = Binary("and", Binary(">=", left, low), Binary("<=", left, high))
                    left = Unary("not", between) if negated else between
            elif op == "||" and not mysql and min_prec <= 7:
                self.next()
                left = Binary("||", left, self.expr_at(8))
            elif op in ("+", "-") and min_prec <= 8:
                self.next()
                left = Binary(op, left, self.expr_at(9))
            elif (op in ("*", "/", "%") or (mysql and word in ("div", "mod"))) and min_prec <= 9:
                self.next()
                left = Binary({"mod": "%", "div": "div"}.get(word, op), left, self.expr_at(10))
            elif op == "::" and not mysql:
                self.next()
                sql_type, _, _, text = self.type_spec()
                left = Cast(left, sql_type, text)
            else:
                return left

    def prefix(self, min_prec: int) -> Expr:
        t = self.peek()
        if t.kind == "ident" and t.value.lower() == "not":
            self.next()
            return Unary("not", self.expr_at(max(min_prec, 3)))
        if t.kind == "op" and t.value in ("-", "+"):
            self.next()
            operand = self.expr_at(10)
            if t.value == "+":
                return operand
            if isinstance(operand, Literal) and isinstance(operand.value, int | float | Decimal) \
                    and not isinstance(operand.value, bool):
                return _number_literal(-operand.value, self.dialect)
            return Unary("-", operand)
        return self.primary()

    def primary(self) -> Expr:
        t = self.next()
        if t.kind == "number":
            return _number_literal(_parse_number(t.value, self.dialect), self.dialect)
        if t.kind == "string":
            return Literal(t.value, None)
        if t.kind == "param":
            index = int(t.value)
            if not 1 <= index <= 65535:
                raise SqlError(ErrorKind.UNDEFINED_PARAMETER, f"there is no parameter ${t.value}")
            self.max_param = max(self.max_param, index)
            return Param(index - 1)
        if t.kind in ("sysvar", "uservar"):
            return Variable(t.value, t.kind == "sysvar")
        if t.kind == "op" and t.value == "(":
            if self.is_kw("select"):
                raise _unsupported("subqueries")
            e = self.expr()
            self.expect_op(")")
            return e
        if t.kind == "qident":
            return self.column_ref(t.value)
        if t.kind != "ident":
            self.i -= 1 if t.kind != "eof" else 0
            raise self.error()
        word = t.value.lower()
        if word == "null":
            return Literal(None, None)
        if word in ("true", "false"):
            if self.dialect is Dialect.MYSQL:
                return Literal(1 if word == "true" else 0, SqlType.INT8)
            return Literal(word == "true", SqlType.BOOL)
        if word == "cast" and self.is_op("("):
            self.next()
            e = self.expr()
            self.expect_kw("as")
            sql_type, _, _, text = self.type_spec()
            self.expect_op(")")
            return Cast(e, sql_type, text)
        if word in ("case", "exists", "interval", "array", "row"):
            raise _unsupported(word.upper())
        if word in ("timestamp", "date", "timestamptz") and self.peek().kind == "string":
            s = self.next().value
            sql_type, _ = _type_from_words([word], self.dialect)
            return Cast(Literal(s, None), sql_type, word)
        if self.is_op("("):
            self.next()
            if self.accept_op("*"):
                self.expect_op(")")
                if word != "count":
                    raise self.error()
                return FuncCall(word, (), star=True)
            if self.accept_kw("distinct"):
                raise _unsupported("DISTINCT in aggregates")
            args: list[Expr] = []
            if not self.is_op(")"):
                args.append(self.expr())
                while self.accept_op(","):
                    args.append(self.expr())
            self.expect_op(")")
            return FuncCall(word, tuple(args))
        if word in _NO_PAREN_FUNCS[self.dialect] and not self.is_op("."):
            return FuncCall(word, ())
        if word in _RESERVED:
            self.i -= 1
            raise self.error()
        return self.column_ref(t.value)

    def column_ref(self, first: str) -> ColumnRef:
        if self.accept_op("."):
            if self.is_op("*"):
                raise self.error()
            second = self.name("column name")
            if self.accept_op("."):  # schema.table.column
                return ColumnRef(second, self.name("column name"))
            return ColumnRef(first, second)
        return ColumnRef(None, first)


def _parse_number(text: str, dialect: Dialect) -> int | float | Decimal:
    if "." not in text and "e" not in text.lower():
        return int(text)
    if dialect is Dialect.MYSQL and "e" in text.lower():
        return float(text)  # MySQL: approximate-value literals are DOUBLE
    return Decimal(text)


def _number_literal(value: int | float | Decimal, dialect: Dialect) -> Literal:
    if isinstance(value, int):
        if dialect is Dialect.POSTGRES and -(2**31) <= value < 2**31:
            return Literal(value, SqlType.INT4)
        if -(2**63) <= value < 2**63:
            return Literal(value, SqlType.INT8)
        return Literal(Decimal(value), SqlType.NUMERIC)
    if isinstance(value, float):
        return Literal(value, SqlType.FLOAT8)
    return Literal(value, SqlType.NUMERIC)


def _split_tokens(tokens: list[Token]) -> Iterator[list[Token]]:
    """Split a token list at top-level ';'."""
    current: list[Token] = []
    for t in tokens:
        if t.kind == "eof" or (t.kind == "op" and t.value == ";"):
            end = t.pos
            current.append(Token("eof", "", end, end))
            yield current
            current = []
        else:
            current.append(t)


# --- Storage ----------------------------------------------------------------------------------


@dataclass
class Column:
    """A table column, or a result column (``table`` is "" for computed ones)."""

    name: str
    type: SqlType
    type_modifier: int | None = None
    not_null: bool = False
    primary_key: bool = False
    unique: bool = False
    auto_increment: bool = False
    default: Expr | None = None
    table: str = ""


@dataclass
class Table:
    name: str
    columns: list[Column]
    rows: list[list[Value]] = field(default_factory=list)
    unique_sets: list[tuple[int, ...]] = field(default_factory=list)
    next_id: int = 1
    #: Per unique column set, the keys present (built on demand, dropped when rows change in place).
    key_cache: dict[tuple[int, ...], set[tuple[Value, ...]]] = field(default_factory=dict)
    #: Approximate bytes held (see ``row_size``), counted against the engine's ``max_bytes``.
    size: int = 0

    def index(self, name: str, dialect: Dialect) -> int | None:
        key = _fold(name, dialect)
        for i, c in enumerate(self.columns):
            if _fold(c.name, dialect) == key:
                return i
        return None


def row_size(row: list[Value]) -> int:
    """An approximation of the memory one row holds: text lengths plus a fixed cost per value."""
    return sum(16 + (len(v) if isinstance(v, str) else 0) for v in row)


def _fold(name: str, dialect: Dialect) -> str:
    return name.lower() if dialect is Dialect.MYSQL else name


@dataclass(frozen=True)
class Result:
    """What a statement produced.

    ``columns`` is ``None`` for statements without a result set. ``command`` is the Postgres
    command word (``SELECT``, ``INSERT``, ``CREATE TABLE`` …); ``rowcount`` the rows returned
    or affected; ``tag`` the Postgres CommandComplete tag.
    """

    command: str
    columns: tuple[Column, ...] | None = None
    rows: tuple[tuple[Value, ...], ...] = ()
    rowcount: int = 0
    last_insert_id: int = 0

    @property
    def tag(self) -> str:
        if self.command == "INSERT":
            return f"INSERT 0 {self.rowcount}"
        if self.command in ("SELECT", "UPDATE", "DELETE"):
            return f"{self.command} {self.rowcount}"
        return self.command


@dataclass(frozen=True)
class Description:
    """Parameter types (after inference) and result columns (``None``: no result set)."""

    params: tuple[SqlType, ...]
    columns: tuple[Column, ...] | None


class SqlEngine:
    """The shared in-memory store of one emulated server, and its settings.

    ``max_rows`` (per table), ``max_tables`` (per database), ``max_databases`` and
    ``max_bytes`` (all stored values, approximately) bound what clients can make the emulator
    hold; past them statements fail with ``ErrorKind.LIMIT``. Statements scan whole tables
    (about 2 µs per row and predicate here) on the caller's event loop, which is why the row
    cap is modest.
    """

    def __init__(self, dialect: Dialect, server_version: str, version_string: str | None = None,
                 max_rows: int = 10_000, max_tables: int = 1_000, max_databases: int = 100,
                 max_bytes: int = 64 << 20,
                 variables: dict[str, str | int] | None = None) -> None:
        self.dialect = dialect
        self.variables: dict[str, str | int] = {**MYSQL_VARIABLES, "version": server_version,
                                                 "version_comment": "tpemu emulator", **(variables or {})}
        self.server_version = server_version
        self.version_string = version_string or server_version
        self.max_rows = max_rows
        self.max_tables = max_tables
        self.max_databases = max_databases
        self.max_bytes = max_bytes
        self.stored_bytes = 0
        self.databases: dict[str, dict[str, Table]] = {}
        self.started = datetime.now(UTC)
        self._next_session = 1

    def database(self, name: str, create: bool = True) -> dict[str, Table] | None:
        """The tables of database ``name``; created if missing and ``create`` (raises LIMIT when full)."""
        key = _fold(name, self.dialect)
        if key not in self.databases and create:
            if len(self.databases) >= self.max_databases:
                raise SqlError(ErrorKind.LIMIT, f"the emulator keeps at most {self.max_databases} databases")
            self.databases[key] = {}
        return self.databases.get(key)

    def open_session(self, user: str, database: str | None, client_host: str = "localhost",
                     settings: dict[str, str] | None = None) -> SqlSession:
        """A per-connection context; ``database`` is created on first use (``None``: none selected)."""
        if database is not None:
            self.database(database)
        sid = self._next_session
        self._next_session += 1
        return SqlSession(self, sid, user, database, client_host, dict(settings or {}))


#: Postgres run-time settings reported by SHOW (lower-case names); SET adds to a session's copy.
PG_SETTINGS = {
    "application_name": "", "client_encoding": "UTF8", "datestyle": "ISO, MDY", "default_transaction_isolation":
    "read committed", "extra_float_digits": "1", "integer_datetimes": "on", "intervalstyle": "postgres",
    "is_superuser": "off", "lc_messages": "C", "max_identifier_length": "63", "search_path": '"$user", public',
    "server_encoding": "UTF8", "standard_conforming_strings": "on", "statement_timeout": "0",
    "timezone": "UTC", "transaction_isolation": "read committed", "transaction_read_only": "off",
    "default_transaction_read_only": "off", "in_hot_standby": "off",
}
#: MySQL system variables answered for ``@@name`` and SHOW VARIABLES.
MYSQL_VARIABLES: dict[str, str | int] = {
    "auto_increment_increment": 1, "auto_increment_offset": 1, "autocommit": 1,
    "character_set_client": "utf8mb4", "character_set_connection": "utf8mb4",
    "character_set_database": "utf8mb4", "character_set_results": "utf8mb4", "character_set_server": "utf8mb4",
    "character_set_system": "utf8mb3", "collation_connection": "utf8mb4_general_ci",
    "collation_database": "utf8mb4_general_ci", "collation_server": "utf8mb4_general_ci", "init_connect": "",
    "interactive_timeout": 28800, "license": "GPL", "lower_case_table_names": 0, "max_allowed_packet": 1048576,
    "net_buffer_length": 16384, "net_write_timeout": 60, "performance_schema": 0, "query_cache_size": 0,
    "query_cache_type": "OFF", "sql_mode": "ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION",
    "system_time_zone": "UTC", "time_zone": "SYSTEM", "transaction_isolation": "REPEATABLE-READ",
    "tx_isolation": "REPEATABLE-READ", "wait_timeout": 28800, "sql_auto_is_null": 0, "sql_select_limit":
    18446744073709551615, "default_storage_engine": "InnoDB", "have_ssl": "YES", "hostname": "tpemu",
    "port": 3306, "ssl_cipher": "", "transaction_read_only": 0, "tx_read_only": 0,
}


@dataclass
class _Ctx:
    """Evaluation context of one statement execution."""

    session: SqlSession
    params: Sequence[Value]
    now: datetime
    table: Table | None = None
    names: tuple[str, ...] = ()  # table name and alias for qualified column references


class SqlSession:
    """Per-connection state: user, current database, settings, transaction status."""

    def __init__(self, engine: SqlEngine, session_id: int, user: str, database: str | None, client_host: str,
                 settings: dict[str, str]) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self.id = session_id
        self.user = user
        self.database = database
        self.client_host = client_host
        self.settings: dict[str, str] = {**PG_SETTINGS, **{k.lower(): v for k, v in settings.items()}}
        self.variables: dict[str, str | int] = dict(engine.variables)
        self.user_variables: dict[str, Value] = {}
        self.status: dict[str, str] = {}
        self.in_transaction = False
        self.failed = False
        self.last_insert_id = 0

    # parsing
    def parse_script(self, sql: str) -> list[Statement]:
        """All statements of a (simple-protocol) query string; empty ones are dropped.

        The whole string is parsed before anything runs, as Postgres does: a syntax error
        anywhere means nothing is executed.
        """
        tokens = tokenize(sql, self.dialect)
        out = []
        for part in _split_tokens(tokens):
            if len(part) == 1:
                continue
            out.append(self._parse_tokens(sql, part))
        return out

    def parse(self, sql: str) -> Statement:
        """Exactly one statement (an empty string gives an empty statement)."""
        stmts = self.parse_script(sql)
        if len(stmts) > 1:
            raise SqlError(ErrorKind.SYNTAX, "cannot insert multiple commands into a prepared statement")
        return stmts[0] if stmts else Statement(EmptyStmt(), sql, 0)

    def _parse_tokens(self, sql: str, tokens: list[Token]) -> Statement:
        p = _Parser(sql, tokens, self.dialect)
        node = p.statement()
        return Statement(node, sql[tokens[0].pos : tokens[-1].pos].strip(), p.max_param)

    # transaction status (Postgres ReadyForQuery / MySQL status flags)
    @property
    def transaction_status(self) -> str:
        """Postgres' ReadyForQuery status: ``I`` idle, ``T`` in a block, ``E`` in a failed block."""
        if not self.in_transaction:
            return "I"
        return "E" if self.failed else "T"

    def mark_failed(self) -> None:
        """Called by a backend when a statement failed (Postgres aborts an open transaction)."""
        if self.in_transaction and self.dialect is Dialect.POSTGRES:
            self.failed = True

    @property
    def autocommit(self) -> bool:
        return str(self.variables.get("autocommit", 1)).lower() in ("1", "on", "true")

    # describe and execute
    def describe(self, stmt: Statement, param_types: Sequence[SqlType | None] = ()) -> Description:
        """Parameter types and result columns of ``stmt`` without running it."""
        ptypes: list[SqlType | None] = list(param_types[: stmt.param_count])
        ptypes += [None] * (stmt.param_count - len(ptypes))
        planner = _Planner(self, ptypes)
        planner.infer(stmt.node)
        final = tuple(t or SqlType.TEXT for t in ptypes)
        return Description(final, _Planner(self, list(final)).columns(stmt.node))

    def execute(self, stmt: Statement, params: Sequence[Value] = (), param_types: Sequence[SqlType] = ()) -> Result:
        """Run ``stmt``; ``params`` are already decoded (as ``describe`` typed them)."""
        node = stmt.node
        if self.failed and not isinstance(node, TransactionStmt):
            raise SqlError(ErrorKind.FAILED_TRANSACTION,
                           "current transaction is aborted, commands ignored until end of transaction block")
        if len(params) < stmt.param_count:
            raise SqlError(ErrorKind.UNDEFINED_PARAMETER,
                           f"statement needs {stmt.param_count} parameters, got {len(params)}")
        ctx = _Ctx(self, params, datetime.now(UTC))
        try:
            return _Executor(self, ctx, list(param_types) or None).run(node)
        except SqlError:
            self.mark_failed()
            raise
        except RecursionError:
            self.mark_failed()
            raise _unsupported("expressions nested this deeply") from None

    # lookups shared by planner and executor
    def require_database(self) -> dict[str, Table]:
        if self.database is None:
            raise SqlError(ErrorKind.NO_DATABASE, "No database selected")
        db = self.engine.database(self.database)
        assert db is not None
        return db

    def resolve_db(self, name: TableName) -> tuple[dict[str, Table], str]:
        """The database holding ``name`` and the table key; system schemas are refused clearly."""
        schema = name.schema
        mysql = self.dialect is Dialect.MYSQL
        system = ("information_schema", "mysql", "performance_schema", "sys") if mysql else (
            "pg_catalog", "information_schema", "pg_toast")
        if schema is not None and schema.lower() in system:
            raise _unsupported(f"catalog table {schema}.{name.name}")
        if not mysql and schema is None and name.name.startswith("pg_"):
            raise _unsupported(f"catalog table pg_catalog.{name.name}")
        if mysql and schema is not None:
            db = self.engine.database(schema, create=False)
            if db is None:
                raise SqlError(ErrorKind.UNKNOWN_DATABASE, f"Unknown database '{schema}'")
            return db, _fold(name.name, self.dialect)
        if not mysql and schema not in (None, "public"):
            raise SqlError(ErrorKind.UNDEFINED_TABLE, f'schema "{schema}" does not exist')
        return self.require_database(), _fold(name.name, self.dialect)

    def table(self, name: TableName) -> Table:
        db, key = self.resolve_db(name)
        table = db.get(key)
        if table is None:
            if self.dialect is Dialect.MYSQL:
                where = name.schema or self.database
                raise SqlError(ErrorKind.UNDEFINED_TABLE, f"Table '{where}.{name.name}' doesn't exist")
            raise SqlError(ErrorKind.UNDEFINED_TABLE, f'relation "{name.name}" does not exist')
        return table

    def function_value(self, name: str, now: datetime) -> Value:
        """Values of the argument-less session functions."""
        mysql = self.dialect is Dialect.MYSQL
        if name == "version":
            return self.engine.version_string
        if name in ("current_user", "session_user", "user", "current_role", "system_user"):
            if mysql:
                return f"{self.user}@%" if name == "current_user" else f"{self.user}@{self.client_host}"
            return self.user
        if name in ("current_database", "current_catalog", "database", "schema"):
            return self.database
        if name == "current_schema":
            return "public"
        if name in ("now", "current_timestamp", "statement_timestamp", "transaction_timestamp", "clock_timestamp",
                    "sysdate", "utc_timestamp", "localtimestamp", "localtime"):
            if mysql:
                return now.replace(tzinfo=None, microsecond=0)
            return now.replace(tzinfo=None) if name in ("localtimestamp", "localtime") else now
        if name in ("current_date", "curdate", "utc_date"):
            return now.date()
        if name in ("pg_backend_pid", "connection_id"):
            return self.id
        if name == "last_insert_id":
            return self.last_insert_id
        if name == "pg_advisory_unlock_all":
            return ""
        raise AssertionError(name)


# --- Functions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Func:
    min_args: int
    max_args: int
    result: Callable[[list[SqlType | None], Dialect], SqlType | None]
    dialects: tuple[Dialect, ...] = (Dialect.POSTGRES, Dialect.MYSQL)


def _fixed(t: SqlType, mysql: SqlType | None = None) -> Callable[[list[SqlType | None], Dialect], SqlType]:
    return lambda _args, d: (mysql or t) if d is Dialect.MYSQL else t


def _first(args: list[SqlType | None], _d: Dialect) -> SqlType | None:
    return next((a for a in args if a is not None), None)


def _sum_type(args: list[SqlType | None], _d: Dialect) -> SqlType:
    a = args[0] if args else None
    if a in (SqlType.INT2, SqlType.INT4):
        return SqlType.INT8
    if a in _FLOAT_TYPES:
        return SqlType.FLOAT8
    return SqlType.NUMERIC


def _avg_type(args: list[SqlType | None], _d: Dialect) -> SqlType:
    return SqlType.FLOAT8 if args and args[0] in _FLOAT_TYPES else SqlType.NUMERIC


_PG, _MY = (Dialect.POSTGRES,), (Dialect.MYSQL,)
_SESSION_FUNCS: dict[str, _Func] = {
    "version": _Func(0, 0, _fixed(SqlType.TEXT)),
    "current_user": _Func(0, 0, _fixed(SqlType.NAME, SqlType.TEXT)),
    "session_user": _Func(0, 0, _fixed(SqlType.NAME, SqlType.TEXT)),
    "current_role": _Func(0, 0, _fixed(SqlType.NAME), _PG),
    "user": _Func(0, 0, _fixed(SqlType.NAME, SqlType.TEXT)),
    "system_user": _Func(0, 0, _fixed(SqlType.TEXT), _MY),
    "current_database": _Func(0, 0, _fixed(SqlType.NAME), _PG),
    "current_catalog": _Func(0, 0, _fixed(SqlType.NAME), _PG),
    "current_schema": _Func(0, 0, _fixed(SqlType.NAME), _PG),
    "database": _Func(0, 0, _fixed(SqlType.TEXT), _MY),
    "schema": _Func(0, 0, _fixed(SqlType.TEXT), _MY),
    "now": _Func(0, 1, _fixed(SqlType.TIMESTAMPTZ, SqlType.TIMESTAMP)),
    "current_timestamp": _Func(0, 1, _fixed(SqlType.TIMESTAMPTZ, SqlType.TIMESTAMP)),
    "statement_timestamp": _Func(0, 0, _fixed(SqlType.TIMESTAMPTZ), _PG),
    "transaction_timestamp": _Func(0, 0, _fixed(SqlType.TIMESTAMPTZ), _PG),
    "clock_timestamp": _Func(0, 0, _fixed(SqlType.TIMESTAMPTZ), _PG),
    "localtimestamp": _Func(0, 1, _fixed(SqlType.TIMESTAMP)),
    "localtime": _Func(0, 1, _fixed(SqlType.TIMESTAMP), _MY),
    "sysdate": _Func(0, 1, _fixed(SqlType.TIMESTAMP), _MY),
    "utc_timestamp": _Func(0, 1, _fixed(SqlType.TIMESTAMP), _MY),
    "current_date": _Func(0, 0, _fixed(SqlType.DATE)),
    "curdate": _Func(0, 0, _fixed(SqlType.DATE), _MY),
    "utc_date": _Func(0, 0, _fixed(SqlType.DATE), _MY),
    "pg_backend_pid": _Func(0, 0, _fixed(SqlType.INT4), _PG),
    "connection_id": _Func(0, 0, _fixed(SqlType.INT8), _MY),
    "last_insert_id": _Func(0, 0, _fixed(SqlType.INT8), _MY),
    "pg_advisory_unlock_all": _Func(0, 0, _fixed(SqlType.TEXT), _PG),
}
_SCALAR_FUNCS: dict[str, _Func] = {
    "lower": _Func(1, 1, _fixed(SqlType.TEXT)), "upper": _Func(1, 1, _fixed(SqlType.TEXT)),
    "lcase": _Func(1, 1, _fixed(SqlType.TEXT), _MY), "ucase": _Func(1, 1, _fixed(SqlType.TEXT), _MY),
    "length": _Func(1, 1, _fixed(SqlType.INT4, SqlType.INT8)),
    "char_length": _Func(1, 1, _fixed(SqlType.INT4, SqlType.INT8)),
    "character_length": _Func(1, 1, _fixed(SqlType.INT4, SqlType.INT8)),
    "coalesce": _Func(1, 100, _first), "ifnull": _Func(2, 2, _first, _MY), "nullif": _Func(2, 2, _first),
    "abs": _Func(1, 1, _first), "concat": _Func(1, 100, _fixed(SqlType.TEXT)),
    "count": _Func(1, 1, _fixed(SqlType.INT8)), "sum": _Func(1, 1, _sum_type),
    "min": _Func(1, 1, _first), "max": _Func(1, 1, _first), "avg": _Func(1, 1, _avg_type),
}


# --- Coercion and comparison ------------------------------------------------------------------


def _bad_input(t: SqlType, v: object) -> SqlError:
    return SqlError(ErrorKind.INVALID_TEXT, f'invalid input syntax for type {t.value}: "{v}"')


def coerce(value: Value, t: SqlType, dialect: Dialect = Dialect.POSTGRES) -> Value:
    """Convert ``value`` to the Python representation of ``t`` (raises INVALID_TEXT/OUT_OF_RANGE)."""
    if value is None:
        return None
    try:
        if t is SqlType.BOOL:
            if isinstance(value, bool):
                return value
            if isinstance(value, int | float | Decimal):
                return value != 0
            if isinstance(value, str):
                s = value.strip().lower()
                if s in ("t", "true", "y", "yes", "on", "1"):
                    return True
                if s in ("f", "false", "n", "no", "off", "0"):
                    return False
            raise _bad_input(t, value)
        if t in _INT_TYPES:
            if isinstance(value, bool):
                n = int(value)
            elif isinstance(value, int):
                n = value
            elif isinstance(value, float | Decimal):
                if not math.isfinite(value):
                    raise SqlError(ErrorKind.OUT_OF_RANGE, f"{t.value} out of range")
                n = round(value) if isinstance(value, float) else int(
                    value.to_integral_value(rounding="ROUND_HALF_UP"))
            elif isinstance(value, str):
                s = value.strip()
                if dialect is Dialect.MYSQL:
                    try:
                        n = int(Decimal(s).to_integral_value(rounding="ROUND_HALF_UP"))
                    except InvalidOperation:
                        raise _bad_input(t, value) from None
                else:
                    n = int(s)
            else:
                raise _bad_input(t, value)
            bits = _INT_TYPES[t]
            if not -(2 ** (bits - 1)) <= n < 2 ** (bits - 1):
                raise SqlError(ErrorKind.OUT_OF_RANGE, f"{t.value} out of range")
            return n
        if t in _FLOAT_TYPES:
            if isinstance(value, int | float | Decimal):
                return float(value)
            if isinstance(value, str):
                s = value.strip().lower()
                return float({"infinity": "inf", "-infinity": "-inf"}.get(s, s))
            raise _bad_input(t, value)
        if t is SqlType.NUMERIC:
            if isinstance(value, bool):
                return Decimal(int(value))
            if isinstance(value, int | Decimal):
                return Decimal(value)
            if isinstance(value, float):
                return Decimal(repr(value))
            if isinstance(value, str):
                return Decimal(value.strip())
            raise _bad_input(t, value)
        if t in _TEXT_TYPES:
            return _to_text(value, dialect)
        if t in (SqlType.TIMESTAMP, SqlType.TIMESTAMPTZ):
            if isinstance(value, datetime):
                dt = value
            elif isinstance(value, date):
                dt = datetime(value.year, value.month, value.day)
            elif isinstance(value, str):
                s = value.strip()
                if s.endswith(("+00", "-00")) or re.search(r"[+-]\d\d$", s):
                    s += ":00"
                dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
            else:
                raise _bad_input(t, value)
            if t is SqlType.TIMESTAMPTZ:
                return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
            return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo is not None else dt
        if t is SqlType.DATE:
            if isinstance(value, datetime):
                return value.date()
            if isinstance(value, date):
                return value
            if isinstance(value, str):
                return datetime.fromisoformat(value.strip()).date()
            raise _bad_input(t, value)
    except (ValueError, InvalidOperation, OverflowError):
        raise _bad_input(t, value) from None
    raise AssertionError(t)


def _to_text(value: Value, dialect: Dialect) -> str:
    if isinstance(value, bool):
        if dialect is Dialect.MYSQL:
            return "1" if value else "0"
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        s = repr(value)
        return s[:-2] if s.endswith(".0") else s
    if isinstance(value, datetime):
        s = value.isoformat(sep=" ")
        return s.replace("+00:00", "+00") if dialect is Dialect.POSTGRES else s.split("+")[0]
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _type_of_value(v: Value) -> SqlType | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return SqlType.BOOL
    if isinstance(v, int):
        return SqlType.INT8
    if isinstance(v, float):
        return SqlType.FLOAT8
    if isinstance(v, Decimal):
        return SqlType.NUMERIC
    if isinstance(v, datetime):
        return SqlType.TIMESTAMPTZ if v.tzinfo is not None else SqlType.TIMESTAMP
    if isinstance(v, date):
        return SqlType.DATE
    return SqlType.TEXT


def _align(a: Value, b: Value, dialect: Dialect) -> tuple[Value, Value]:
    """Bring two non-NULL values to a comparable type (strings adapt to the other side)."""
    if type(a) is type(b):
        return a, b
    if isinstance(a, str) and not isinstance(b, str):
        ta = _type_of_value(b)
        assert ta is not None
        return coerce(a, ta if ta is not SqlType.INT8 else SqlType.NUMERIC, dialect), b
    if isinstance(b, str) and not isinstance(a, str):
        ra, rb = _align(b, a, dialect)
        return rb, ra
    if isinstance(a, bool) or isinstance(b, bool):
        return int(a) if isinstance(a, bool) else a, int(b) if isinstance(b, bool) else b
    if isinstance(a, datetime) and isinstance(b, datetime):
        return coerce(a, SqlType.TIMESTAMPTZ), coerce(b, SqlType.TIMESTAMPTZ)
    if isinstance(a, datetime) and isinstance(b, date):
        return a, coerce(b, SqlType.TIMESTAMPTZ if a.tzinfo else SqlType.TIMESTAMP)
    if isinstance(b, datetime) and isinstance(a, date):
        return coerce(a, SqlType.TIMESTAMPTZ if b.tzinfo else SqlType.TIMESTAMP), b
    if isinstance(a, float) and isinstance(b, Decimal):
        return a, float(b)
    if isinstance(b, float) and isinstance(a, Decimal):
        return float(a), b
    return a, b


def compare(a: Value, b: Value, dialect: Dialect) -> int | None:
    """-1/0/1, or ``None`` when either side is NULL (SQL's unknown)."""
    if a is None or b is None:
        return None
    a, b = _align(a, b, dialect)
    if isinstance(a, str) and isinstance(b, str) and dialect is Dialect.MYSQL:
        a, b = a.casefold().rstrip(" "), b.casefold().rstrip(" ")  # utf8mb4_general_ci, PAD SPACE
    try:
        return (a > b) - (a < b)  # type: ignore[operator]
    except TypeError:
        raise SqlError(ErrorKind.INVALID_TEXT, f"cannot compare {a!r} with {b!r}") from None


def _truth(v: Value) -> bool | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float | Decimal):
        return v != 0
    if isinstance(v, str):
        try:
            return bool(coerce(v, SqlType.BOOL))
        except SqlError:
            try:
                return Decimal(v.strip() or "0") != 0
            except InvalidOperation:
                return False
    return True


def _like_regex(pattern: str, case_insensitive: bool) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL | (re.IGNORECASE if case_insensitive else 0))


def _to_number(v: Value, dialect: Dialect) -> int | float | Decimal:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int | float | Decimal):
        return v
    if isinstance(v, str):
        s = v.strip()
        try:
            return int(s)
        except ValueError:
            try:
                return Decimal(s)
            except InvalidOperation:
                if dialect is Dialect.MYSQL:
                    return 0
                raise _bad_input(SqlType.NUMERIC, v) from None
    raise _unsupported(f"arithmetic on {type(v).__name__} values")


def _arith(op: str, a: Value, b: Value, dialect: Dialect) -> Value:
    if a is None or b is None:
        return None
    x, y = _to_number(a, dialect), _to_number(b, dialect)
    if op in ("/", "div", "%") and y == 0:
        if dialect is Dialect.MYSQL:
            return None  # MySQL: division by zero is NULL (with a warning)
        raise SqlError(ErrorKind.DIVISION_BY_ZERO, "division by zero")
    try:
        if isinstance(x, int) and isinstance(y, int):
            return _int_arith(op, x, y, dialect)
        if isinstance(x, float) or isinstance(y, float):
            return _float_arith(op, float(x), float(y))
        return _decimal_arith(op, Decimal(x), Decimal(y))
    except (DivisionByZero, InvalidOperation, OverflowError):
        raise SqlError(ErrorKind.OUT_OF_RANGE, "numeric value out of range") from None


def _int_arith(op: str, x: int, y: int, dialect: Dialect) -> int | Decimal:
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if op == "%":
        return x - y * _trunc_div(x, y)
    if op == "/" and dialect is Dialect.MYSQL:
        return (Decimal(x) / Decimal(y)).quantize(Decimal("0.0001"))
    return _trunc_div(x, y)


def _float_arith(op: str, x: float, y: float) -> float | int:
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if op == "%":
        return math.fmod(x, y)
    return int(x / y) if op == "div" else x / y


def _decimal_arith(op: str, x: Decimal, y: Decimal) -> Decimal | int:
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if op == "%":
        return x % y
    return int(x / y) if op == "div" else x / y


def _trunc_div(x: int, y: int) -> int:
    q = abs(x) // abs(y)
    return q if (x >= 0) == (y >= 0) else -q


def _arith_type(op: str, a: SqlType | None, b: SqlType | None, dialect: Dialect) -> SqlType | None:
    if a is None and b is None:
        return None
    a, b = a or b, b or a
    if a in _FLOAT_TYPES or b in _FLOAT_TYPES:
        return SqlType.FLOAT8
    if a in _INT_TYPES and b in _INT_TYPES:
        if dialect is Dialect.MYSQL and op == "/":
            return SqlType.NUMERIC
        return SqlType.INT8 if SqlType.INT8 in (a, b) else SqlType.INT4 if SqlType.INT4 in (a, b) else SqlType.INT2
    if a in _NUMERIC_TYPES and b in _NUMERIC_TYPES:
        return SqlType.INT8 if op == "div" else SqlType.NUMERIC
    if a is SqlType.BOOL or b is SqlType.BOOL:
        return SqlType.INT8
    if a in _TEXT_TYPES or b in _TEXT_TYPES:
        if a in _NUMERIC_TYPES:
            return a
        if b in _NUMERIC_TYPES:
            return b
        return SqlType.NUMERIC
    raise _unsupported(f"the operator {op} on {a.value if a else '?'} and {b.value if b else '?'}")


# --- Planning (types, names) ------------------------------------------------------------------


class _Planner:
    """Static typing: parameter types (filled in place) and result columns."""

    def __init__(self, session: SqlSession, ptypes: list[SqlType | None]) -> None:
        self.s = session
        self.dialect = session.dialect
        self.ptypes = ptypes

    def infer(self, node: Node) -> None:
        if isinstance(node, SelectStmt):
            table = self.s.table(node.table) if node.table else None
            names = self._names(node.table, node.alias)
            if node.where is not None:
                self.type_of(node.where, table, names, SqlType.BOOL)
            for item in node.items:
                if item.expr is not None:
                    self.type_of(item.expr, table, names, None)
            for key in node.order:
                self.type_of(key.expr, table, names, None, order_items=node.items)
            for e in (node.limit, node.offset):
                if e is not None:
                    self.type_of(e, None, (), SqlType.INT8)
        elif isinstance(node, InsertStmt):
            table = self.s.table(node.table)
            cols = self._insert_columns(table, node.columns)
            for row in node.rows:
                for e, ci in zip(row, cols):
                    if e is not None:
                        self.type_of(e, None, (), table.columns[ci].type)
            self._returning(node.returning, table, self._names(node.table, None))
        elif isinstance(node, UpdateStmt):
            table = self.s.table(node.table)
            names = self._names(node.table, node.alias)
            for col, e in node.assignments:
                ci = self._column_index(table, col)
                if e is not None:
                    self.type_of(e, table, names, table.columns[ci].type)
            if node.where is not None:
                self.type_of(node.where, table, names, SqlType.BOOL)
            self._returning(node.returning, table, names)
        elif isinstance(node, DeleteStmt):
            table = self.s.table(node.table)
            names = self._names(node.table, node.alias)
            if node.where is not None:
                self.type_of(node.where, table, names, SqlType.BOOL)
            self._returning(node.returning, table, names)

    def _returning(self, items: tuple[SelectItem, ...], table: Table, names: tuple[str, ...]) -> None:
        for item in items:
            if item.expr is not None:
                self.type_of(item.expr, table, names, None)

    def _names(self, table: TableName | None, alias: str | None) -> tuple[str, ...]:
        if table is None:
            return ()
        return tuple(_fold(n, self.dialect) for n in (table.name, alias) if n)

    def _insert_columns(self, table: Table, columns: tuple[str, ...] | None) -> list[int]:
        if columns is None:
            return list(range(len(table.columns)))
        out = [self._column_index(table, c) for c in columns]
        if len(set(out)) != len(out):
            raise SqlError(ErrorKind.DUPLICATE_COLUMN, "column specified more than once")
        return out

    def _column_index(self, table: Table, name: str) -> int:
        i = table.index(name, self.dialect)
        if i is None:
            if self.dialect is Dialect.MYSQL:
                raise SqlError(ErrorKind.UNDEFINED_COLUMN, f"Unknown column '{name}' in 'field list'")
            raise SqlError(ErrorKind.UNDEFINED_COLUMN, f'column "{name}" of relation "{table.name}" does not exist')
        return i

    def column(self, table: Table | None, names: tuple[str, ...], ref: ColumnRef) -> Column:
        if ref.table is not None and _fold(ref.table, self.dialect) not in names:
            if self.dialect is Dialect.MYSQL:
                raise SqlError(ErrorKind.UNDEFINED_COLUMN, f"Unknown column '{ref.table}.{ref.name}'")
            raise SqlError(ErrorKind.UNDEFINED_TABLE, f'missing FROM-clause entry for table "{ref.table}"')
        i = table.index(ref.name, self.dialect) if table is not None else None
        if i is None or table is None:
            if self.dialect is Dialect.MYSQL:
                raise SqlError(ErrorKind.UNDEFINED_COLUMN, f"Unknown column '{ref.name}' in 'field list'")
            raise SqlError(ErrorKind.UNDEFINED_COLUMN, f'column "{ref.name}" does not exist')
        return table.columns[i]

    def type_of(self, e: Expr, table: Table | None, names: tuple[str, ...], hint: SqlType | None,
                order_items: tuple[SelectItem, ...] = ()) -> SqlType | None:
        def t(x: Expr, h: SqlType | None = None) -> SqlType | None:
            return self.type_of(x, table, names, h)

        if isinstance(e, Literal):
            return e.type if e.type is not None or e.value is None else (hint or SqlType.TEXT)
        if isinstance(e, Param):
            if e.index >= len(self.ptypes):
                raise SqlError(ErrorKind.UNDEFINED_PARAMETER, f"there is no parameter ${e.index + 1}")
            if self.ptypes[e.index] is None and hint is not None:
                self.ptypes[e.index] = hint
            return self.ptypes[e.index]
        if isinstance(e, ColumnRef):
            if order_items and e.table is None:
                for item in order_items:
                    if item.alias is not None and _fold(item.alias, self.dialect) == _fold(e.name, self.dialect):
                        return t(item.expr) if item.expr is not None else None
            return self.column(table, names, e).type
        if isinstance(e, Variable):
            if not e.system:
                return _type_of_value(self.s.user_variables.get(e.name))
            value = self.s.variables.get(_sysvar_name(e.name))
            if value is None:
                raise SqlError(ErrorKind.UNDEFINED_SETTING, f"Unknown system variable '{_sysvar_name(e.name)}'")
            return SqlType.INT8 if isinstance(value, int) else SqlType.TEXT
        if isinstance(e, Unary):
            if e.op == "not":
                t(e.operand, SqlType.BOOL)
                return SqlType.BOOL
            return t(e.operand, hint)
        if isinstance(e, Binary):
            if e.op in ("and", "or"):
                t(e.left, SqlType.BOOL)
                t(e.right, SqlType.BOOL)
                return SqlType.BOOL
            if e.op == "||":
                t(e.left, SqlType.TEXT)
                t(e.right, SqlType.TEXT)
                return SqlType.TEXT
            lt = t(e.left)
            rt = t(e.right, lt)
            if lt is None and rt is not None:
                lt = t(e.left, rt)
            if e.op in ("=", "<>", "<", "<=", ">", ">="):
                return SqlType.BOOL
            return _arith_type(e.op, lt, rt, self.dialect)
        if isinstance(e, IsNull):
            t(e.operand)
            return SqlType.BOOL
        if isinstance(e, Like):
            t(e.operand, SqlType.TEXT)
            t(e.pattern, SqlType.TEXT)
            return SqlType.BOOL
        if isinstance(e, InList):
            lt = t(e.operand)
            for member in e.items:
                it = t(member, lt)
                if lt is None and it is not None:
                    lt = t(e.operand, it)
            return SqlType.BOOL
        if isinstance(e, Cast):
            t(e.operand, e.type)
            return e.type
        if isinstance(e, FuncCall):
            spec = self.function(e)
            if e.name in ("lower", "upper", "lcase", "ucase", "length", "char_length", "character_length",
                          "concat"):
                args = [t(a, SqlType.TEXT) for a in e.args]
            else:
                args = [t(a, hint) for a in e.args]
            return spec.result(args, self.dialect)
        raise AssertionError(e)

    def function(self, e: FuncCall) -> _Func:
        spec = _SESSION_FUNCS.get(e.name) or _SCALAR_FUNCS.get(e.name)
        if spec is None or self.dialect not in spec.dialects:
            raise SqlError(ErrorKind.UNDEFINED_FUNCTION,
                           f"function {e.name}() is not supported by the tpemu emulator")
        if not spec.min_args <= len(e.args) <= spec.max_args and not e.star:
            raise SqlError(ErrorKind.UNDEFINED_FUNCTION,
                           f"function {e.name}() does not take {len(e.args)} arguments")
        return spec

    def columns(self, node: Node) -> tuple[Column, ...] | None:
        if isinstance(node, SelectStmt):
            table = self.s.table(node.table) if node.table else None
            return self._item_columns(node.items, table, self._names(node.table, node.alias))
        if isinstance(node, InsertStmt | UpdateStmt | DeleteStmt):
            if not node.returning:
                return None
            table = self.s.table(node.table)
            alias = node.alias if not isinstance(node, InsertStmt) else None
            return self._item_columns(node.returning, table, self._names(node.table, alias))
        if isinstance(node, ShowStmt):
            return tuple(Column(n, SqlType.TEXT) for n in _show_columns(node, self.s))
        return None

    def _item_columns(self, items: tuple[SelectItem, ...], table: Table | None,
                      names: tuple[str, ...]) -> tuple[Column, ...]:
        out: list[Column] = []
        for item in items:
            if item.expr is None:
                if table is None:
                    raise SqlError(ErrorKind.SYNTAX, "SELECT * with no tables specified is not valid")
                if item.star_table is not None and _fold(item.star_table, self.dialect) not in names:
                    raise SqlError(ErrorKind.UNDEFINED_TABLE,
                                   f'missing FROM-clause entry for table "{item.star_table}"')
                out.extend(Column(c.name, c.type, c.type_modifier, table=table.name) for c in table.columns)
                continue
            col_type = self.type_of(item.expr, table, names, None) or SqlType.TEXT
            name = item.alias or self.column_name(item)
            src = self.column(table, names, item.expr) if isinstance(item.expr, ColumnRef) else None
            out.append(Column(name, col_type, src.type_modifier if src else None,
                              table=table.name if src and table else ""))
        return tuple(out)

    def column_name(self, item: SelectItem) -> str:
        e = item.expr
        if self.dialect is Dialect.MYSQL:
            if isinstance(e, ColumnRef):
                return e.name
            return item.source
        return _pg_column_name(e)


def _pg_column_name(e: Expr | None) -> str:
    """Postgres' FigureColname: column and function names, else ``?column?``."""
    if isinstance(e, ColumnRef):
        return e.name
    if isinstance(e, FuncCall):
        return e.name
    if isinstance(e, Cast):
        inner = _pg_column_name(e.operand)
        if inner != "?column?":
            return inner
        return {SqlType.INT4: "int4", SqlType.INT8: "int8", SqlType.INT2: "int2", SqlType.BOOL: "bool",
                SqlType.FLOAT8: "float8", SqlType.FLOAT4: "float4", SqlType.VARCHAR: "varchar",
                SqlType.CHAR: "bpchar", SqlType.TIMESTAMPTZ: "timestamptz"}.get(e.type, e.type.value)
    return "?column?"


def _sysvar_name(name: str) -> str:
    for prefix in ("session.", "global.", "local."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _show_columns(node: ShowStmt, s: SqlSession) -> tuple[str, ...]:
    if s.dialect is Dialect.POSTGRES:
        return ("name", "setting", "description") if node.what == "all" else (node.what,)
    if node.what == "databases":
        return ("Database",)
    if node.what == "tables":
        db = node.target or s.database or ""
        return (f"Tables_in_{db}", "Table_type") if node.full else (f"Tables_in_{db}",)
    if node.what in ("variables", "status"):
        return ("Variable_name", "Value")
    if node.what == "warnings":
        return ("Level", "Code", "Message")
    if node.what == "columns":
        return ("Field", "Type", "Null", "Key", "Default", "Extra")
    raise AssertionError(node.what)


# --- Execution --------------------------------------------------------------------------------


class _Executor:
    def __init__(self, session: SqlSession, ctx: _Ctx, param_types: list[SqlType] | None) -> None:
        self.s = session
        self.ctx = ctx
        self.dialect = session.dialect
        self._columns: dict[ColumnRef, int] = {}
        ptypes: list[SqlType | None] = list(param_types) if param_types is not None else [
            _type_of_value(v) or SqlType.TEXT for v in ctx.params]
        self._planner = _Planner(session, ptypes)

    def planner(self) -> _Planner:
        return self._planner

    def run(self, node: Node) -> Result:
        if isinstance(node, SelectStmt):
            return self.select(node)
        if isinstance(node, InsertStmt):
            return self.insert(node)
        if isinstance(node, UpdateStmt):
            return self.update(node)
        if isinstance(node, DeleteStmt):
            return self.delete(node)
        if isinstance(node, CreateTableStmt):
            return self.create_table(node)
        if isinstance(node, DropTableStmt):
            return self.drop_table(node)
        if isinstance(node, TruncateStmt):
            for name in node.tables:
                t = self.s.table(name)
                t.rows.clear()
                self._resize(t)
                t.key_cache.clear()
            return Result("TRUNCATE TABLE")
        if isinstance(node, DatabaseStmt):
            return self.database(node)
        if isinstance(node, TransactionStmt):
            return self.transaction(node)
        if isinstance(node, SetStmt):
            return self.set(node)
        if isinstance(node, ShowStmt):
            return self.show(node)
        if isinstance(node, NoOpStmt):
            return Result(node.tag)
        if isinstance(node, EmptyStmt):
            return Result("")
        raise AssertionError(node)

    # expressions
    def eval(self, e: Expr, row: list[Value] | None, group: list[list[Value]] | None = None) -> Value:
        ctx, d = self.ctx, self.dialect
        if isinstance(e, Literal):
            return e.value
        if isinstance(e, Param):
            return ctx.params[e.index]
        if isinstance(e, ColumnRef):
            if row is None:
                if group is not None:
                    raise SqlError(ErrorKind.GROUPING, f'column "{e.name}" must appear in the GROUP BY clause '
                                   "or be used in an aggregate function")
                self.planner().column(None, (), e)  # raises "column … does not exist"
                raise AssertionError(e)
            return row[self._col(e)]
        if isinstance(e, Variable):
            if not e.system:
                return self.s.user_variables.get(e.name)
            name = _sysvar_name(e.name)
            if name not in self.s.variables:
                raise SqlError(ErrorKind.UNDEFINED_SETTING, f"Unknown system variable '{name}'")
            return self.s.variables[name]
        if isinstance(e, Unary):
            v = self.eval(e.operand, row, group)
            if e.op == "not":
                tv = _truth(v)
                return None if tv is None else not tv
            if v is None:
                return None
            n = _to_number(v, d)
            return -n
        if isinstance(e, Binary):
            if e.op in ("and", "or"):
                lv = _truth(self.eval(e.left, row, group))
                if e.op == "and" and lv is False:
                    return False
                if e.op == "or" and lv is True:
                    return True
                rv = _truth(self.eval(e.right, row, group))
                if e.op == "and":
                    return False if rv is False else None if (lv is None or rv is None) else True
                return True if rv is True else None if (lv is None or rv is None) else False
            a, b = self.eval(e.left, row, group), self.eval(e.right, row, group)
            if e.op == "||":
                return None if a is None or b is None else _to_text(a, d) + _to_text(b, d)
            if e.op in ("=", "<>", "<", "<=", ">", ">="):
                c = compare(a, b, d)
                if c is None:
                    return None
                return {"=": c == 0, "<>": c != 0, "<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}[e.op]
            return _arith(e.op, a, b, d)
        if isinstance(e, IsNull):
            return (self.eval(e.operand, row, group) is None) != e.negated
        if isinstance(e, Like):
            v, p = self.eval(e.operand, row, group), self.eval(e.pattern, row, group)
            if v is None or p is None:
                return None
            matched = _like_regex(_to_text(p, d), e.case_insensitive).fullmatch(_to_text(v, d)) is not None
            return matched != e.negated
        if isinstance(e, InList):
            v = self.eval(e.operand, row, group)
            if v is None:
                return None
            unknown = False
            for item in e.items:
                c = compare(v, self.eval(item, row, group), d)
                if c == 0:
                    return not e.negated
                unknown = unknown or c is None
            return None if unknown else e.negated
        if isinstance(e, Cast):
            return coerce(self.eval(e.operand, row, group), e.type, d)
        if isinstance(e, FuncCall):
            return self.call(e, row, group)
        raise AssertionError(e)

    def _col(self, e: ColumnRef) -> int:
        index = self._columns.get(e)
        if index is None:
            table = self.ctx.table
            assert table is not None
            col = self.planner().column(table, self.ctx.names, e)
            index = self._columns[e] = next(i for i, c in enumerate(table.columns) if c is col)
        return index

    def call(self, e: FuncCall, row: list[Value] | None, group: list[list[Value]] | None) -> Value:
        d = self.dialect
        self.planner().function(e)
        if e.name in _SESSION_FUNCS:
            if e.name == "current_timestamp" and e.args:
                pass  # precision argument: ignored
            return self.s.function_value(e.name, self.ctx.now)
        if e.name in _AGGREGATES:
            if group is None:
                raise SqlError(ErrorKind.GROUPING, "aggregate functions are not allowed here")
            if e.star:
                return len(group)
            values = [v for v in (self.eval(e.args[0], r, None) for r in group) if v is not None]
            if e.name == "count":
                return len(values)
            if not values:
                return None
            if e.name in ("min", "max"):
                def order(a: Value, b: Value) -> int:
                    return compare(a, b, d) or 0

                key = functools.cmp_to_key(order)
                return min(values, key=key) if e.name == "min" else max(values, key=key)
            nums = [_to_number(v, d) for v in values]
            if any(isinstance(n, float) for n in nums):
                total: int | float | Decimal = math.fsum(float(n) for n in nums)
            elif any(isinstance(n, Decimal) for n in nums):
                total = sum((Decimal(n) for n in nums), Decimal(0))
            else:
                total = sum(nums)
            if e.name == "sum":
                return total
            if isinstance(total, float):
                return total / len(nums)
            scale = Decimal("1E-16") if d is Dialect.POSTGRES else Decimal("1E-4")
            return (Decimal(total) / len(nums)).quantize(scale)
        args = [self.eval(a, row, group) for a in e.args]
        if e.name in ("lower", "lcase"):
            return None if args[0] is None else _to_text(args[0], d).lower()
        if e.name in ("upper", "ucase"):
            return None if args[0] is None else _to_text(args[0], d).upper()
        if e.name in ("length", "char_length", "character_length"):
            if args[0] is None:
                return None
            text = _to_text(args[0], d)
            return len(text.encode()) if e.name == "length" and d is Dialect.MYSQL else len(text)
        if e.name in ("coalesce", "ifnull"):
            return next((a for a in args if a is not None), None)
        if e.name == "nullif":
            return None if compare(args[0], args[1], d) == 0 else args[0]
        if e.name == "abs":
            if args[0] is None:
                return None
            n = _to_number(args[0], d)
            return -n if n < 0 else n
        if e.name == "concat":
            if d is Dialect.MYSQL and any(a is None for a in args):
                return None
            return "".join(_to_text(a, d) for a in args if a is not None)
        raise AssertionError(e.name)

    def _has_aggregate(self, e: Expr | None) -> bool:
        if e is None:
            return False
        if isinstance(e, FuncCall):
            return e.name in _AGGREGATES or any(self._has_aggregate(a) for a in e.args)
        if isinstance(e, Unary | Cast | IsNull):
            return self._has_aggregate(e.operand)
        if isinstance(e, Binary):
            return self._has_aggregate(e.left) or self._has_aggregate(e.right)
        if isinstance(e, Like):
            return self._has_aggregate(e.operand) or self._has_aggregate(e.pattern)
        if isinstance(e, InList):
            return self._has_aggregate(e.operand) or any(self._has_aggregate(i) for i in e.items)
        return False

    def _scan(self, table: Table, where: Expr | None) -> list[int]:
        if where is not None and self._has_aggregate(where):
            raise SqlError(ErrorKind.GROUPING, "aggregate functions are not allowed in WHERE")
        return [i for i, row in enumerate(table.rows) if where is None or _truth(self.eval(where, row)) is True]

    def _bind_table(self, name: TableName, alias: str | None) -> Table:
        table = self.s.table(name)
        self.ctx.table = table
        self.ctx.names = tuple(_fold(n, self.dialect) for n in (name.name, alias) if n)
        return table

    def _project(self, items: tuple[SelectItem, ...], row: list[Value] | None, table: Table | None,
                 group: list[list[Value]] | None = None) -> list[Value]:
        out: list[Value] = []
        for item in items:
            if item.expr is None:
                assert table is not None and row is not None
                out.extend(row)
            else:
                out.append(self.eval(item.expr, row, group))
        return out

    def _coerce_row(self, row: list[Value], columns: tuple[Column, ...]) -> tuple[Value, ...]:
        return tuple(coerce(v, c.type, self.dialect) for v, c in zip(row, columns))

    def select(self, node: SelectStmt) -> Result:
        planner = self.planner()
        table = self._bind_table(node.table, node.alias) if node.table else None
        columns = planner.columns(node)
        assert columns is not None
        aggregate = any(self._has_aggregate(i.expr) for i in node.items)
        pairs: list[tuple[list[Value], list[Value] | None]] = []
        if table is None:
            if node.where is not None and _truth(self.eval(node.where, None)) is not True:
                pass
            elif aggregate:
                pairs.append((self._project(node.items, None, None, [[]]), None))
            else:
                pairs.append((self._project(node.items, None, None), None))
        else:
            matched = [table.rows[i] for i in self._scan(table, node.where)]
            if aggregate:
                pairs.append((self._project(node.items, None, table, matched), None))
            else:
                pairs = [(self._project(node.items, row, table), row) for row in matched]
        if node.order:
            pairs = self._order(pairs, node)
        offset = self._count(node.offset, "OFFSET")
        limit = self._count(node.limit, "LIMIT")
        rows = [p[0] for p in pairs[offset:]]
        if limit is not None:
            rows = rows[:limit]
        out = tuple(self._coerce_row(r, columns) for r in rows)
        return Result("SELECT", columns, out, len(out))

    def _count(self, e: Expr | None, what: str) -> int | None:
        if e is None:
            return None
        v = self.eval(e, None)
        if v is None:
            return None
        n = coerce(v, SqlType.INT8, self.dialect)
        assert isinstance(n, int)
        if n < 0:
            raise SqlError(ErrorKind.OUT_OF_RANGE, f"{what} must not be negative")
        return n

    def _order(self, pairs: list[tuple[list[Value], list[Value] | None]], node: SelectStmt) -> list[
            tuple[list[Value], list[Value] | None]]:
        items = node.items
        aliases = {_fold(i.alias, self.dialect): k for k, i in enumerate(items) if i.alias}
        keyed = []
        for out_row, src in pairs:
            keys = []
            for key in node.order:
                e = key.expr
                if isinstance(e, Literal) and isinstance(e.value, int) and not isinstance(e.value, bool):
                    if not 1 <= e.value <= len(out_row):
                        raise SqlError(ErrorKind.UNDEFINED_COLUMN, f"ORDER BY position {e.value} is not in select list")
                    keys.append(out_row[e.value - 1])
                elif isinstance(e, ColumnRef) and e.table is None and _fold(e.name, self.dialect) in aliases \
                        and not any(i.expr is None for i in items):
                    keys.append(out_row[aliases[_fold(e.name, self.dialect)]])
                else:
                    keys.append(self.eval(e, src))
            keyed.append((keys, out_row, src))
        mysql = self.dialect is Dialect.MYSQL

        def cmp(x: tuple[list[Value], object, object], y: tuple[list[Value], object, object]) -> int:
            for key, a, b in zip(node.order, x[0], y[0]):
                if a is None or b is None:
                    if a is None and b is None:
                        continue
                    # Postgres: NULLs sort as larger than any value; MySQL: as smaller.
                    nulls_first = key.nulls_first if key.nulls_first is not None else (
                        (not key.descending) if mysql else key.descending)
                    return (-1 if a is None else 1) if nulls_first else (1 if a is None else -1)
                c = compare(a, b, self.dialect) or 0
                if c:
                    return -c if key.descending else c
            return 0

        keyed.sort(key=functools.cmp_to_key(cmp))
        return [(o, s) for _, o, s in keyed]

    def _grow(self, table: Table, delta: int) -> None:
        engine = self.s.engine
        if delta > 0 and engine.stored_bytes + delta > engine.max_bytes:
            raise SqlError(ErrorKind.LIMIT, f"the emulator keeps at most {engine.max_bytes >> 20} MiB of data")
        engine.stored_bytes += delta
        table.size += delta

    def _resize(self, table: Table) -> None:
        """Recount a table after rows went away or were restored."""
        size = sum(row_size(r) for r in table.rows)
        self.s.engine.stored_bytes += size - table.size
        table.size = size

    def _key(self, row: list[Value], cols: tuple[int, ...]) -> tuple[Value, ...]:
        if self.dialect is Dialect.MYSQL:
            return tuple(v.casefold().rstrip(" ") if isinstance(v, str) else v for v in (row[i] for i in cols))
        return tuple(row[i] for i in cols)

    def _check_row(self, table: Table, row: list[Value], skip: int | None = None) -> None:
        """NOT NULL and uniqueness; ``skip`` is the row being replaced (UPDATE)."""
        for col, v in zip(table.columns, row):
            if v is None and col.not_null:
                if self.dialect is Dialect.MYSQL:
                    raise SqlError(ErrorKind.NOT_NULL, f"Column '{col.name}' cannot be null")
                raise SqlError(ErrorKind.NOT_NULL, f'null value in column "{col.name}" of relation '
                               f'"{table.name}" violates not-null constraint')
        for key_cols in table.unique_sets:
            key = self._key(row, key_cols)
            if any(v is None for v in key):
                continue
            if skip is None:
                keys = table.key_cache.get(key_cols)
                if keys is None:
                    keys = table.key_cache[key_cols] = {self._key(r, key_cols) for r in table.rows}
                clash = key in keys
            else:
                clash = any(ri != skip and self._key(other, key_cols) == key for ri, other in enumerate(table.rows))
            if clash:
                names = ", ".join(table.columns[i].name for i in key_cols)
                shown = ", ".join(_to_text(row[i], self.dialect) for i in key_cols)
                if self.dialect is Dialect.MYSQL:
                    raise SqlError(ErrorKind.UNIQUE, f"Duplicate entry '{shown}' for key '{table.name}.{names}'")
                raise SqlError(ErrorKind.UNIQUE, f"duplicate key value violates unique constraint "
                               f'"{table.name}_{"_".join(table.columns[i].name for i in key_cols)}_key": '
                               f"Key ({names})=({shown}) already exists.")

    def _default(self, table: Table, ci: int) -> Value:
        col = table.columns[ci]
        if col.auto_increment:
            n = table.next_id
            table.next_id += 1
            return n
        if col.default is not None:
            return coerce(self.eval(col.default, None), col.type, self.dialect)
        return None

    def insert(self, node: InsertStmt) -> Result:
        table = self.s.table(node.table)
        cols = self.planner()._insert_columns(table, node.columns)
        before = len(table.rows)
        try:
            new_rows, last_id = self._insert_rows(table, cols, node.rows)
        except SqlError:
            # A statement is atomic: rows it already added go away again.
            del table.rows[before:]
            self._resize(table)
            table.key_cache.clear()
            raise
        if last_id:
            self.s.last_insert_id = last_id
        return self._returning("INSERT", node.returning, table, new_rows, last_id)

    def _insert_rows(self, table: Table, cols: list[int],
                     rows: tuple[tuple[Expr | None, ...], ...]) -> tuple[list[list[Value]], int]:
        new_rows: list[list[Value]] = []
        last_id = 0
        mysql = self.dialect is Dialect.MYSQL
        for exprs in rows:
            if exprs and len(exprs) != len(cols):
                if mysql:
                    raise SqlError(ErrorKind.COLUMN_COUNT, "Column count doesn't match value count at row 1")
                more = "expressions" if len(exprs) > len(cols) else "target columns"
                raise SqlError(ErrorKind.COLUMN_COUNT, f"INSERT has more {more} than "
                               f"{'target columns' if more == 'expressions' else 'expressions'}")
            given: dict[int, Value] = {}
            for ci, e in zip(cols, exprs):
                if e is not None:
                    given[ci] = coerce(self.eval(e, None), table.columns[ci].type, self.dialect)
            row: list[Value] = []
            for ci, col in enumerate(table.columns):
                # MySQL: NULL into an AUTO_INCREMENT column means "the next id".
                if ci in given and not (col.auto_increment and given[ci] is None and mysql):
                    v = given[ci]
                    if col.auto_increment and isinstance(v, int) and v >= table.next_id:
                        table.next_id = v + 1
                else:
                    v = self._default(table, ci)
                    if col.auto_increment and isinstance(v, int):
                        last_id = last_id or v
                row.append(v)
            if len(table.rows) >= self.s.engine.max_rows:
                raise SqlError(ErrorKind.LIMIT, f"table {table.name} is full (the emulator keeps at most "
                               f"{self.s.engine.max_rows} rows per table)")
            self._check_row(table, row)
            self._grow(table, row_size(row))
            table.rows.append(row)  # visible to the uniqueness check of the next row
            for key_cols, keys in table.key_cache.items():
                keys.add(self._key(row, key_cols))
            new_rows.append(row)
        return new_rows, last_id

    def _returning(self, command: str, items: tuple[SelectItem, ...], table: Table, rows: list[list[Value]],
                   last_id: int = 0) -> Result:
        if not items:
            return Result(command, rowcount=len(rows), last_insert_id=last_id)
        self.ctx.table = table
        self.ctx.names = self.ctx.names or (_fold(table.name, self.dialect),)
        columns = self.planner()._item_columns(items, table, self.ctx.names)
        out = tuple(self._coerce_row(self._project(items, r, table), columns) for r in rows)
        return Result(command, columns, out, len(out), last_id)

    def update(self, node: UpdateStmt) -> Result:
        table = self._bind_table(node.table, node.alias)
        planner = self.planner()
        targets = [(planner._column_index(table, c), e) for c, e in node.assignments]
        changed_rows = []
        changed = 0
        backup = list(table.rows)
        table.key_cache.clear()
        try:
            for ri in self._scan(table, node.where):
                old = table.rows[ri]
                new = list(old)
                for ci, e in targets:
                    new[ci] = self._default(table, ci) if e is None else coerce(
                        self.eval(e, old), table.columns[ci].type, self.dialect)
                self._check_row(table, new, skip=ri)
                if new != old:
                    changed += 1
                self._grow(table, row_size(new) - row_size(old))
                table.rows[ri] = new
                changed_rows.append(new)
        except SqlError:
            table.rows[:] = backup  # a statement is atomic
            self._resize(table)
            raise
        result = self._returning("UPDATE", node.returning, table, changed_rows)
        if self.dialect is Dialect.MYSQL:
            return Result("UPDATE", rowcount=changed)  # MySQL reports changed, not matched, rows
        return result

    def delete(self, node: DeleteStmt) -> Result:
        table = self._bind_table(node.table, node.alias)
        doomed = set(self._scan(table, node.where))
        removed = [r for i, r in enumerate(table.rows) if i in doomed]
        table.rows[:] = [r for i, r in enumerate(table.rows) if i not in doomed]
        self._resize(table)
        table.key_cache.clear()
        return self._returning("DELETE", node.returning, table, removed)

    def create_table(self, node: CreateTableStmt) -> Result:
        db, key = self.s.resolve_db(node.table)
        if key in db:
            if node.if_not_exists:
                return Result("CREATE TABLE")
            if self.dialect is Dialect.MYSQL:
                raise SqlError(ErrorKind.DUPLICATE_TABLE, f"Table '{node.table.name}' already exists")
            raise SqlError(ErrorKind.DUPLICATE_TABLE, f'relation "{node.table.name}" already exists')
        if len(db) >= self.s.engine.max_tables:
            raise SqlError(ErrorKind.LIMIT, f"the emulator keeps at most {self.s.engine.max_tables} tables")
        if not node.columns:
            raise _unsupported("tables without columns")
        columns = [Column(c.name, c.type, c.type_modifier, c.not_null, c.primary_key, c.unique, c.auto_increment,
                          c.default, node.table.name) for c in node.columns]
        table = Table(node.table.name, columns)
        seen = set()
        for c in columns:
            k = _fold(c.name, self.dialect)
            if k in seen:
                raise SqlError(ErrorKind.DUPLICATE_COLUMN, f'column "{c.name}" specified more than once')
            seen.add(k)
        uniques: list[tuple[int, ...]] = [(i,) for i, c in enumerate(columns) if c.primary_key or c.unique]
        for names in (node.primary_key, *node.unique):
            if not names:
                continue
            idx: list[int] = []
            for n in names:
                i = table.index(n, self.dialect)
                if i is None:
                    raise SqlError(ErrorKind.UNDEFINED_COLUMN, f'column "{n}" named in key does not exist')
                idx.append(i)
                if names is node.primary_key:
                    columns[i].not_null = columns[i].primary_key = True
            uniques.append(tuple(idx))
        table.unique_sets = list(dict.fromkeys(uniques))
        db[key] = table
        return Result("CREATE TABLE")

    def drop_table(self, node: DropTableStmt) -> Result:
        for name in node.tables:
            db, key = self.s.resolve_db(name)
            if key not in db:
                if node.if_exists:
                    continue
                self.s.table(name)  # raises the dialect's "does not exist"
            self.s.engine.stored_bytes -= db.pop(key).size
        return Result("DROP TABLE")

    def database(self, node: DatabaseStmt) -> Result:
        engine = self.s.engine
        exists = engine.database(node.name, create=False) is not None
        mysql = self.dialect is Dialect.MYSQL
        if node.action == "create":
            if exists and not node.if_flag:
                raise SqlError(ErrorKind.DUPLICATE_TABLE, f"Can't create database '{node.name}'; database exists"
                               if mysql else f'database "{node.name}" already exists')
            engine.database(node.name)
            return Result("CREATE DATABASE")
        if node.action == "drop":
            if not exists:
                if node.if_flag:
                    return Result("DROP DATABASE")
                raise SqlError(ErrorKind.UNKNOWN_DATABASE, f"Can't drop database '{node.name}'; database doesn't "
                               "exist" if mysql else f'database "{node.name}" does not exist')
            if not mysql and _fold(node.name, self.dialect) == _fold(self.s.database or "", self.dialect):
                raise SqlError(ErrorKind.NOT_SUPPORTED, "cannot drop the currently open database")
            dropped = engine.databases.pop(_fold(node.name, self.dialect))
            engine.stored_bytes -= sum(t.size for t in dropped.values())
            count = len(dropped)
            if mysql and _fold(node.name, self.dialect) == _fold(self.s.database or "", self.dialect):
                self.s.database = None
            return Result("DROP DATABASE", rowcount=count)
        if not exists:
            raise SqlError(ErrorKind.UNKNOWN_DATABASE, f"Unknown database '{node.name}'")
        self.s.database = node.name
        return Result("USE")

    def transaction(self, node: TransactionStmt) -> Result:
        s = self.s
        action = node.action
        if action == "begin":
            s.in_transaction = True
            return Result("BEGIN")
        if action in ("commit", "rollback"):
            was_failed = s.failed
            s.in_transaction = s.failed = False
            return Result("ROLLBACK" if was_failed or action == "rollback" else "COMMIT")
        if s.failed and action != "rollback_to":
            raise SqlError(ErrorKind.FAILED_TRANSACTION,
                           "current transaction is aborted, commands ignored until end of transaction block")
        if action == "rollback_to":
            s.failed = False
            return Result("ROLLBACK")
        return Result("SAVEPOINT" if action == "savepoint" else "RELEASE")

    def set(self, node: SetStmt) -> Result:
        s = self.s
        for scope, name, value in node.assignments:
            v: Value = value if isinstance(value, str) else self.eval(value, None)
            if self.dialect is Dialect.POSTGRES:
                s.settings[name] = "" if v is None else _to_text(v, self.dialect)
                continue
            if scope == "user":
                s.user_variables[name] = v
            elif name == "names":
                cs = str(v).split()[0].strip("'\"") if v else "utf8mb4"
                for var in ("character_set_client", "character_set_connection", "character_set_results"):
                    s.variables[var] = cs
            else:
                if name not in s.variables:
                    raise SqlError(ErrorKind.UNDEFINED_SETTING, f"Unknown system variable '{name}'")
                if isinstance(s.variables[name], int):
                    text = str(v).lower()
                    v = 1 if text in ("on", "true") else 0 if text in ("off", "false") else v
                s.variables[name] = v if isinstance(v, int | str) and not isinstance(v, bool) else _to_text(
                    v, self.dialect)
        return Result("SET")

    def show(self, node: ShowStmt) -> Result:
        s = self.s
        columns = self.planner().columns(node)
        assert columns is not None
        rows: list[tuple[Value, ...]] = []
        like = _like_regex(node.like, True) if node.like is not None else None

        def keep(name: str) -> bool:
            return like is None or like.fullmatch(name) is not None

        if self.dialect is Dialect.POSTGRES:
            settings = {**s.settings, "server_version": s.engine.server_version}
            if node.what == "all":
                rows = [(k, v, "") for k, v in sorted(settings.items())]
            elif node.what in settings:
                rows = [(settings[node.what],)]
            else:
                raise SqlError(ErrorKind.UNDEFINED_SETTING, f'unrecognized configuration parameter "{node.what}"')
        elif node.what == "databases":
            rows = [(n,) for n in sorted(s.engine.databases) if keep(n)]
        elif node.what == "tables":
            db_name = node.target or s.database
            if db_name is None:
                raise SqlError(ErrorKind.NO_DATABASE, "No database selected")
            db = s.engine.database(db_name, create=False)
            if db is None:
                raise SqlError(ErrorKind.UNKNOWN_DATABASE, f"Unknown database '{db_name}'")
            rows = [((t.name, "BASE TABLE") if node.full else (t.name,)) for t in db.values() if keep(t.name)]
        elif node.what == "variables":
            rows = [(k, str(v)) for k, v in sorted(s.variables.items()) if keep(k)]
        elif node.what == "status":
            status = {"Ssl_cipher": "", "Ssl_version": "", "Threads_connected": "1",
                      "Uptime": str(int((self.ctx.now - s.engine.started).total_seconds())), **s.status}
            rows = [(k, v) for k, v in sorted(status.items()) if keep(k)]
        elif node.what == "columns":
            table = s.table(TableName(node.target or ""))
            for c in table.columns:
                if keep(c.name):
                    key = "PRI" if c.primary_key else "UNI" if c.unique else ""
                    default = None if c.default is None else _default_text(c.default)
                    rows.append((c.name, _mysql_type_name(c), "NO" if c.not_null else "YES", key, default,
                                 "auto_increment" if c.auto_increment else ""))
        return Result("SHOW", columns, tuple(rows), len(rows))


def _default_text(e: Expr) -> str | None:
    if isinstance(e, Literal):
        return None if e.value is None else str(e.value)
    if isinstance(e, FuncCall):
        return e.name.upper() if e.name == "current_timestamp" else f"{e.name}()"
    return "expression"


def _mysql_type_name(c: Column) -> str:
    base = {SqlType.BOOL: "tinyint(1)", SqlType.INT2: "smallint", SqlType.INT4: "int", SqlType.INT8: "bigint",
            SqlType.FLOAT4: "float", SqlType.FLOAT8: "double", SqlType.NUMERIC: "decimal", SqlType.TEXT: "text",
            SqlType.VARCHAR: "varchar", SqlType.CHAR: "char", SqlType.NAME: "varchar", SqlType.TIMESTAMP: "datetime",
            SqlType.TIMESTAMPTZ: "timestamp", SqlType.DATE: "date"}[c.type]
    if c.type_modifier is not None and c.type in (SqlType.VARCHAR, SqlType.CHAR):
        return f"{base}({c.type_modifier})"
    return base
