"""The dialect shim of the fallback SQL engine: a client's statement (PostgreSQL or MySQL) → SQLite.

Each statement is parsed by sqlglot in the client's dialect, checked against what SQLite can run
faithfully, rewritten where SQLite spells it differently, and generated in SQLite's dialect with
sqlglot's ``unsupported_level=RAISE`` (a construct sqlglot cannot translate is refused, never
dropped). What is refused with ``NOT_SUPPORTED`` (SQLSTATE 0A000 / MySQL 1235), because SQLite
would answer something else than the real server:

* functions outside a short allow-list (SQLite has same-named functions that differ: ``random()``
  is an integer there, MySQL's ``LENGTH`` counts bytes), PostgreSQL-only types (``jsonb``,
  ``uuid`` …), ``CREATE TABLE … AS``, ``SELECT … INTO``, ``COPY``, the system catalogs
  (``pg_catalog``, ``information_schema``: psql's ``\\d``), schemas other than ``public``;
* arithmetic on ``numeric`` values (SQLite computes in binary floating point: ``0.1 + 0.2``);
* ``READ ONLY`` transactions (SQLite has no such mode).

Rewrites: ``$1`` → ``?1``; PostgreSQL's casts → :func:`~.values.pg_cast` (strict, as the real
input functions); ``a / b`` → ``a / tpemu_divisor(b)`` in PostgreSQL (division by zero is an
error there, NULL in SQLite); ``now()`` → the canonical UTC text; every column definition gets
the declared type kept verbatim and ``CHECK (tpemu_check(…))`` (:func:`~.values.check_value`);
``SERIAL PRIMARY KEY`` / ``AUTO_INCREMENT`` → ``INTEGER PRIMARY KEY AUTOINCREMENT`` (no reused
ids, as a sequence); MySQL text columns ``COLLATE NOCASE`` (its default collation is
case-insensitive); ``TRUNCATE`` → ``DELETE``; ``FOR UPDATE`` is dropped (SQLite has one writer:
a conflicting write fails with SQLSTATE 40001 instead of a lost update).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import sqlglot
from sqlglot import TokenType, exp
from sqlglot.errors import ErrorLevel, ParseError, SqlglotError, TokenError, UnsupportedError

from tpemu.agent.backends.sql.values import (
    Column,
    Dialect,
    ErrorKind,
    SqlError,
    SqlType,
    parse_type,
    unsupported,
)

# sqlglot warns (logging) when it parses a statement as an opaque Command; those are refused here.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

#: Function expressions SQLite computes as the real servers do (for the values SQLite holds).
_FUNCTIONS: tuple[type[exp.Expr], ...] = (
    exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max, exp.Lower, exp.Upper, exp.Coalesce, exp.Abs, exp.Nullif,
    exp.Substring, exp.Trim, exp.Case, exp.If, exp.Exists, exp.Cast, exp.CurrentTimestamp, exp.CurrentUser,
    exp.CurrentDatabase, exp.CurrentSchema, exp.CurrentVersion, exp.SessionUser, exp.And, exp.Or,
)
#: …and those only in PostgreSQL (MySQL's LENGTH counts bytes, SQLite's characters).
_PG_FUNCTIONS: tuple[type[exp.Expr], ...] = (exp.Length,)
#: PostgreSQL functions with nothing to do here (no advisory locks are ever held): void.
_PG_ANONYMOUS = {"pg_advisory_unlock_all": "tpemu_void"}
_MYSQL_ANONYMOUS = {"now": "tpemu_now_local", "user": "tpemu_user", "session_user": "tpemu_user",
                    "system_user": "tpemu_user", "last_insert_id": "tpemu_last_insert_id",
                    "version": "tpemu_version"}
_CATALOG_SCHEMAS = ("pg_catalog", "information_schema", "mysql", "performance_schema", "sys")
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.Sum, exp.Avg)
_TRANSACTION = re.compile(
    r"\s*(?:BEGIN|START\s+TRANSACTION)(?:\s+(?:WORK|TRANSACTION))?"
    r"(?P<modes>(?:\s*,?\s*(?:ISOLATION\s+LEVEL\s+(?:SERIALIZABLE|REPEATABLE\s+READ|READ\s+COMMITTED|"
    r"READ\s+UNCOMMITTED)|READ\s+WRITE|READ\s+ONLY|(?:NOT\s+)?DEFERRABLE|WITH\s+CONSISTENT\s+SNAPSHOT))*)\s*",
    re.I)
_SET_NAMES = re.compile(r"\s*SET\s+(?:NAMES|CHARACTER\s+SET|CHARSET)\s+\S+(?:\s+COLLATE\s+\S+)?\s*", re.I)
#: MySQL table options that change nothing a client sees here.
_TABLE_OPTIONS = (exp.EngineProperty, exp.CharacterSetProperty, exp.CollateProperty)
_NO_OP = re.compile(r"\s*(?:RESET\s+ALL|DISCARD\s+ALL|UNLISTEN\s+\*|CLOSE\s+ALL|DEALLOCATE\s+(?:PREPARE\s+)?ALL)"
                    r"\s*", re.I)


@dataclass
class SqlStmt:
    """A statement SQLite runs: its SQLite text, command tag, whether it returns rows; ``source``
    is the client's statement (for result types), ``ast`` the rewritten one."""

    sqlite: str
    command: str
    returns_rows: bool
    ast: exp.Expr
    source: exp.Expr
    ddl: bool = False
    described: tuple[Column, ...] | None = None


@dataclass
class TransactionStmt:
    action: str  # begin commit rollback savepoint release rollback_to
    name: str = ""


@dataclass
class SetStmt:
    name: str
    value: str


@dataclass
class ShowStmt:
    what: str
    like: str | None = None


@dataclass
class DatabaseStmt:
    action: str  # use create drop
    name: str
    if_exists: bool = False


@dataclass
class EmptyStmt:
    command: str = ""


Node = SqlStmt | TransactionStmt | SetStmt | ShowStmt | DatabaseStmt | EmptyStmt


@dataclass
class Statement:
    node: Node
    text: str
    param_count: int = 0

    @property
    def is_empty(self) -> bool:
        return isinstance(self.node, EmptyStmt) and not self.node.command


def _command(node: exp.Expr) -> str:
    if isinstance(node, exp.Create | exp.Drop):
        kind = str(node.args.get("kind") or "TABLE").upper()
        return f"{'CREATE' if isinstance(node, exp.Create) else 'DROP'} {kind}"
    if isinstance(node, exp.Alter):
        return "ALTER TABLE"
    if isinstance(node, exp.TruncateTable):
        return "TRUNCATE TABLE"
    if isinstance(node, exp.SetOperation):
        return "SELECT"
    words: dict[type[exp.Expr], str] = {exp.Select: "SELECT", exp.Insert: "INSERT", exp.Update: "UPDATE",
                                        exp.Delete: "DELETE"}
    return words.get(type(node), type(node).__name__.upper())


def split_statements(sql: str, dialect: Dialect) -> list[str]:
    """The statements of a query string, split at the semicolons sqlglot's tokenizer sees (not
    those inside literals or comments)."""
    try:
        tokens = sqlglot.Dialect.get_or_raise(dialect.value).tokenize(sql)
    except (TokenError, SqlglotError) as e:
        raise SqlError(ErrorKind.SYNTAX, f"syntax error: {str(e).splitlines()[0] if str(e) else e}") from None
    out: list[str] = []
    start = 0
    for tok in tokens:
        if tok.token_type is TokenType.SEMICOLON:
            out.append(sql[start:tok.start])
            start = tok.end + 1
    out.append(sql[start:])
    return [s for s in out if s.strip() and not _only_comments(s, dialect)]


def _only_comments(text: str, dialect: Dialect) -> bool:
    try:
        return not sqlglot.Dialect.get_or_raise(dialect.value).tokenize(text)
    except SqlglotError:
        return False


class Translator:
    """Turns one client statement into a :data:`Node`. ``variables`` answers MySQL's ``@@name``;
    ``numeric_columns`` names the columns declared ``numeric`` in the current database;
    ``database`` is the current database (MySQL ``db.table`` names it or is refused)."""

    def __init__(self, dialect: Dialect, variables: dict[str, str | int], numeric_columns: Callable[[], set[str]],
                 database: Callable[[], str | None]) -> None:
        self.dialect = dialect
        self.variables = variables
        self.numeric_columns = numeric_columns
        self.database = database

    @property
    def pg(self) -> bool:
        return self.dialect is Dialect.POSTGRES

    def statement(self, text: str) -> Statement:
        m = _TRANSACTION.fullmatch(text)
        if m is not None:
            if re.search(r"READ\s+ONLY", m.group("modes"), re.I):
                raise unsupported("READ ONLY transactions")
            return Statement(TransactionStmt("begin"), text)
        if self.pg and _NO_OP.fullmatch(text):
            return Statement(EmptyStmt(text.split(maxsplit=1)[0].upper()), text)
        if not self.pg and _SET_NAMES.fullmatch(text):  # the connection's character set: utf8mb4 only
            if not re.search(r"utf8", text, re.I):
                raise unsupported("character sets other than utf8mb4")
            return Statement(EmptyStmt("SET"), text)
        try:
            tree = sqlglot.parse_one(text, read=self.dialect.value)
        except ParseError as e:
            first = e.errors[0] if e.errors else {}
            near = str(first.get("highlight") or text.strip()[:20]).replace('"', "'")
            raise SqlError(ErrorKind.SYNTAX, f'syntax error at or near "{near}"') from None
        except SqlglotError as e:
            raise SqlError(ErrorKind.SYNTAX, f"syntax error: {str(e).splitlines()[0] if str(e) else e}") from None
        except RecursionError:
            raise unsupported("statements nested this deeply") from None
        node = self.classify(tree)
        count = 0
        if isinstance(node, SqlStmt):
            numbers = [int(p.this.this) for p in tree.find_all(exp.Parameter) if isinstance(p.this, exp.Literal)]
            count = max(numbers, default=0) or len(list(tree.find_all(exp.Placeholder)))
        return Statement(node, text, count)

    def classify(self, tree: exp.Expr) -> Node:
        if isinstance(tree, exp.Transaction):
            return TransactionStmt("begin")
        if isinstance(tree, exp.Commit):
            return TransactionStmt("commit")
        if isinstance(tree, exp.Rollback):
            savepoint = tree.args.get("savepoint")
            return TransactionStmt("rollback_to", savepoint.name) if savepoint else TransactionStmt("rollback")
        if isinstance(tree, exp.Use):
            return DatabaseStmt("use", tree.this.name)
        if isinstance(tree, exp.Create | exp.Drop) and str(tree.args.get("kind") or "").upper() in ("DATABASE",
                                                                                                  "SCHEMA"):
            return DatabaseStmt("create" if isinstance(tree, exp.Create) else "drop", tree.this.name,
                                bool(tree.args.get("exists")))
        if isinstance(tree, exp.Set):
            return self._set(tree)
        if isinstance(tree, exp.Show):
            like = tree.args.get("like")
            return ShowStmt(str(tree.name).lower(), like.name if isinstance(like, exp.Literal) else None)
        if isinstance(tree, exp.Command):
            word = str(tree.this).upper()
            rest = tree.expression.name if isinstance(tree.expression, exp.Literal) else ""
            if word == "SAVEPOINT":
                return TransactionStmt("savepoint", rest.strip())
            if word == "RELEASE":
                return TransactionStmt("release", re.sub(r"(?i)^\s*savepoint\s+", "", rest).strip())
            if word == "SHOW":
                return ShowStmt(rest.strip().lower())
            raise unsupported(f"{word.upper()} statements")
        if isinstance(tree, exp.Copy):
            raise unsupported("COPY")
        if isinstance(tree, exp.Condition):  # a bare expression is no statement
            raise SqlError(ErrorKind.SYNTAX, f'syntax error at or near "{tree.sql().split()[0][:30]}"')
        if not isinstance(tree, exp.Select | exp.SetOperation | exp.Insert | exp.Update | exp.Delete | exp.Create
                          | exp.Drop | exp.Alter | exp.TruncateTable):
            raise unsupported(f"{type(tree).__name__.upper()} statements")
        self._check(tree)
        source = tree.copy()
        if isinstance(tree, exp.Select):
            self._name_columns(tree)
        tree = self._prepare(tree)
        tree = tree.transform(self._rewrite)
        try:
            text = tree.sql(dialect="sqlite", unsupported_level=ErrorLevel.RAISE)
        except UnsupportedError as e:
            raise unsupported(str(e).splitlines()[0]) from None
        returns = isinstance(tree, exp.Select | exp.SetOperation) or bool(tree.args.get("returning"))
        ddl = isinstance(source, exp.Create | exp.Drop | exp.Alter | exp.TruncateTable)
        return SqlStmt(text, _command(source), returns, tree, source, ddl)

    # -- what SQLite cannot run faithfully ------------------------------------------------------------

    def _check(self, tree: exp.Expr) -> None:
        if isinstance(tree, exp.Create):
            kind = str(tree.args.get("kind") or "").upper()
            if kind not in ("TABLE", "INDEX", "VIEW"):
                raise unsupported(f"CREATE {kind}")
            if kind == "TABLE" and tree.args.get("expression") is not None:
                raise unsupported("CREATE TABLE … AS")
        if isinstance(tree, exp.Drop) and str(tree.args.get("kind") or "").upper() not in ("TABLE", "INDEX", "VIEW"):
            raise unsupported(f"DROP {tree.args.get('kind')}")
        if isinstance(tree, exp.TruncateTable) and len(tree.expressions) != 1:
            raise unsupported("TRUNCATE of several tables")
        if tree.find(exp.Into) is not None:
            raise unsupported("SELECT … INTO")
        numeric: set[str] | None = None
        for node in tree.walk():
            if isinstance(node, exp.Func) and not isinstance(node, _FUNCTIONS) and not (
                    self.pg and isinstance(node, _PG_FUNCTIONS)):
                name = str(node.this).lower() if isinstance(node, exp.Anonymous) else \
                    node.sql(dialect=self.dialect.value).split("(")[0].strip().lower()
                if not (isinstance(node, exp.Anonymous) and name in (_PG_ANONYMOUS if self.pg else _MYSQL_ANONYMOUS)):
                    raise unsupported(f"the function {name}()")
            if isinstance(node, exp.Table):
                self._check_table(node)
            if isinstance(node, _ARITHMETIC):
                if numeric is None:
                    numeric = self.numeric_columns()
                if self._is_numeric(node, numeric):
                    raise unsupported("arithmetic on numeric values (SQLite computes in binary floating point)")
            if isinstance(node, exp.Cast) and not self.pg:
                t, _ = parse_type(node.to.sql(dialect="mysql"))
                if node.to.this.name not in ("BIGINT", "UBIGINT", "TEXT", "CHAR", "VARCHAR", "DOUBLE", "FLOAT") and \
                        t not in (SqlType.INT8, SqlType.TEXT, SqlType.CHAR, SqlType.VARCHAR):
                    raise unsupported(f"CAST to {node.to.sql(dialect='mysql')}")
            if isinstance(node, exp.DataType) and isinstance(node.parent, exp.Cast) and self.pg \
                    and parse_type(node.sql(dialect="postgres"))[0] is None:
                raise unsupported(f"type {node.sql(dialect='postgres').lower()}")

    def _check_table(self, table: exp.Table) -> None:
        schema, name = table.db.lower(), table.name.lower()
        if table.catalog:
            raise unsupported("three-part table names")
        if schema in _CATALOG_SCHEMAS or (self.pg and name.startswith("pg_")):
            raise unsupported(f"the system catalog {table.sql(dialect=self.dialect.value)} (psql's \\d commands, "
                              "information_schema)")
        if name.startswith("sqlite_"):
            raise SqlError(ErrorKind.UNDEFINED_TABLE, f'relation "{table.name}" does not exist' if self.pg
                           else f"Table '{self.database()}.{table.name}' doesn't exist")
        if schema and schema != ("public" if self.pg else (self.database() or "").lower()):
            raise unsupported(f"the {'schema' if self.pg else 'database'} {table.db} here (only "
                              f"{'public' if self.pg else 'the current database'})")

    def _is_numeric(self, node: exp.Expr, numeric: set[str]) -> bool:
        for e in node.walk():
            if isinstance(e, exp.Literal) and not e.is_string and not re.fullmatch(r"\d+", e.this):
                return True
            if isinstance(e, exp.Cast) and e.to.this in (exp.DataType.Type.DECIMAL, exp.DataType.Type.BIGDECIMAL):
                return True
            if isinstance(e, exp.Column) and e.name.lower() in numeric:
                return True
        return False

    # -- SET ---------------------------------------------------------------------------------------------

    def _set(self, tree: exp.Set) -> Node:
        items = tree.expressions
        if len(items) != 1 or not isinstance(items[0], exp.SetItem):
            raise unsupported("this SET form")
        item = items[0].this
        if isinstance(item, exp.EQ):
            name = item.this.name if isinstance(item.this, exp.Column | exp.Identifier | exp.Var) else item.this.sql()
            value = item.expression
            text = value.name if isinstance(value, exp.Literal | exp.Column | exp.Identifier | exp.Var) \
                else value.sql()
            return SetStmt(name.lower(), text)
        return SetStmt(item.sql().lower(), "")

    # -- rewriting ------------------------------------------------------------------------------------------

    def _name_columns(self, tree: exp.Select) -> None:
        """Give computed result columns the name the real server would: PostgreSQL the function
        name or ``?column?``, MySQL the expression as written."""
        named: list[object] = []
        for e in tree.expressions:
            if isinstance(e, exp.Alias | exp.Column | exp.Star):
                named.append(e)
            elif not self.pg:
                text = "DATABASE()" if isinstance(e, exp.CurrentSchema) else e.sql(dialect="mysql")
                named.append(exp.alias_(e, text, quoted=True))
            else:
                name = "?column?"
                if isinstance(e, exp.Cast):
                    name = e.to.sql(dialect="postgres").lower().split("(")[0]
                elif isinstance(e, exp.Boolean):
                    name = "bool"
                elif isinstance(e, exp.Filter) and isinstance(e.this, exp.Func):
                    name = e.this.sql_name().lower()
                elif isinstance(e, exp.CurrentTimestamp):
                    name = "now" if e.args.get("sysdate") is None else "current_timestamp"
                elif isinstance(e, exp.Func):
                    name = {"CurrentVersion": "version"}.get(type(e).__name__, e.sql_name().lower())
                    if isinstance(e, exp.Anonymous):
                        name = str(e.this).lower()
                named.append(exp.alias_(e, name, quoted=True))
        tree.set("expressions", named)

    def _prepare(self, tree: exp.Expr) -> exp.Expr:
        """Whole-statement rewrites before the node-by-node pass."""
        if isinstance(tree, exp.TruncateTable):
            return exp.Delete(this=tree.expressions[0])
        properties = tree.args.get("properties")
        if isinstance(tree, exp.Create) and properties is not None and not self.pg:
            kept = [p for p in properties.expressions if not isinstance(p, _TABLE_OPTIONS)]
            properties.set("expressions", kept)
            if not kept:
                tree.set("properties", None)
        for select in tree.find_all(exp.Select):
            select.set("locks", None)  # FOR UPDATE: see the module docstring
            for e in select.expressions:  # a bare decimal literal keeps its digits ("2.50")
                target = e.this if isinstance(e, exp.Alias) else e
                if isinstance(target, exp.Literal) and not target.is_string and re.fullmatch(r"\d*\.\d*", target.this):
                    target.replace(exp.func("tpemu_decimal", exp.Literal.string(target.this)))
        return tree

    def _rewrite(self, node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Parameter) and isinstance(node.this, exp.Literal):
            return exp.var(f"?{node.this.this}")
        if isinstance(node, exp.CurrentVersion):
            return exp.func("tpemu_version")
        if isinstance(node, exp.CurrentUser | exp.SessionUser):
            return exp.func("current_user" if self.pg else "tpemu_current_user")
        if isinstance(node, exp.CurrentDatabase | exp.CurrentSchema):
            return exp.func("current_database") if self.pg or isinstance(node, exp.CurrentSchema) else node
        if isinstance(node, exp.CurrentTimestamp):
            return exp.func("tpemu_now" if self.pg else "tpemu_now_local")
        if isinstance(node, exp.Anonymous):
            names = _PG_ANONYMOUS if self.pg else _MYSQL_ANONYMOUS
            if str(node.this).lower() in names:
                return exp.func(names[str(node.this).lower()], *(self._inner(e) for e in node.expressions))
        if isinstance(node, exp.SessionParameter):
            value = self.variables.get(node.name.lower())
            if value is None:
                raise SqlError(ErrorKind.UNDEFINED_SETTING, f"Unknown system variable '{node.name}'")
            return exp.Literal.number(value) if isinstance(value, int) else exp.Literal.string(str(value))
        if isinstance(node, exp.Cast) and self.pg:
            return exp.func("tpemu_cast", self._inner(node.this), exp.Literal.string(node.to.sql(dialect="postgres")))
        if isinstance(node, exp.Div | exp.Mod) and self.pg:
            node.set("expression", exp.func("tpemu_divisor", node.expression))
            return node
        if isinstance(node, exp.ColumnDef):
            return self._column(node)
        if isinstance(node, exp.Table) and node.args.get("db"):
            node.set("db", None)  # public. / the current database (others were refused)
        return node

    def _inner(self, node: exp.Expr) -> exp.Expr:
        """The rewrite of a node moved into a replacement (sqlglot's transform does not visit those)."""
        return node.transform(self._rewrite)

    def _column(self, node: exp.ColumnDef) -> exp.ColumnDef:
        kind = node.args.get("kind")
        if not isinstance(kind, exp.DataType):
            raise unsupported("a column without a type")
        declared = kind.sql(dialect=self.dialect.value)
        constraints = node.constraints
        primary = any(isinstance(c.kind, exp.PrimaryKeyColumnConstraint) for c in constraints)
        auto = any(isinstance(c.kind, exp.AutoIncrementColumnConstraint) for c in constraints)
        if kind.this in (exp.DataType.Type.SERIAL, exp.DataType.Type.BIGSERIAL, exp.DataType.Type.SMALLSERIAL) or auto:
            if not primary:
                raise unsupported("SERIAL / AUTO_INCREMENT on a column that is not declared PRIMARY KEY")
            node.set("kind", exp.DataType(this=exp.DataType.Type.USERDEFINED, kind="INTEGER"))
            kept = [c for c in constraints if not isinstance(c.kind, exp.AutoIncrementColumnConstraint)]
            node.set("constraints", [*kept, exp.ColumnConstraint(kind=exp.AutoIncrementColumnConstraint())])
            return node
        t, _ = parse_type(declared)
        if t is None:
            raise unsupported(f"the type {declared.lower()}")
        node.set("kind", exp.DataType(this=exp.DataType.Type.USERDEFINED, kind=declared))
        for c in constraints:  # SQLite takes an expression as a DEFAULT only in parentheses
            if isinstance(c.kind, exp.DefaultColumnConstraint) and not isinstance(c.kind.this, exp.Literal | exp.Null
                                                                                         | exp.Paren | exp.Boolean):
                c.kind.set("this", exp.Paren(this=c.kind.this))
        check = exp.func("tpemu_check", exp.column(node.name, quoted=True), exp.Literal.string(declared),
                         exp.Literal.string(self.dialect.value), exp.Literal.string(node.name))
        node.append("constraints", exp.ColumnConstraint(kind=exp.CheckColumnConstraint(this=check)))
        if not self.pg and t in (SqlType.TEXT, SqlType.VARCHAR, SqlType.CHAR):
            node.append("constraints", exp.ColumnConstraint(kind=exp.CollateColumnConstraint(
                this=exp.var("NOCASE"))))
        return node


def literal_type(e: exp.Expr, pg: bool) -> SqlType | None:
    """A result expression's type where it is known without the values."""
    e = e.this if isinstance(e, exp.Alias) else e
    if isinstance(e, exp.Literal):
        if e.is_string:
            return None
        return SqlType.INT4 if re.fullmatch(r"\d+", e.this) else SqlType.NUMERIC
    if isinstance(e, exp.Neg):
        return literal_type(e.this, pg)
    if isinstance(e, exp.Boolean):
        return SqlType.BOOL if pg else SqlType.INT8
    if pg and isinstance(e, exp.Predicate | exp.Connector | exp.Not | exp.Exists):
        return SqlType.BOOL
    if isinstance(e, exp.Count):
        return SqlType.INT8
    if isinstance(e, exp.CurrentTimestamp):
        return SqlType.TIMESTAMPTZ if pg else SqlType.TIMESTAMP
    if isinstance(e, exp.CurrentUser | exp.SessionUser | exp.CurrentDatabase):
        return SqlType.NAME if pg else SqlType.TEXT
    if isinstance(e, exp.Cast):
        return parse_type(e.to.sql(dialect="postgres" if pg else "mysql"))[0] or (None if pg else SqlType.INT8)
    return None
