"""What a fallback SQL statement takes and returns, known without running it (Describe's answers).

PostgreSQL's extended protocol asks for a prepared statement's parameter types and result columns
before any row exists (``Describe`` → ParameterDescription, RowDescription), and MySQL's
``COM_STMT_PREPARE`` the same; the clients (asyncpg, psycopg, PyMySQL) encode parameters and
decode results by them. SQLite stores values with dynamic types, so these are inferred from the
sqlglot tree of the translated statement and the tables' declared types:

* parameters (:func:`infer_params`): from a declared type, the column a parameter is compared
  with or inserted into, a cast (``$1::int`` became ``tpemu_cast(?1, 'INT')``), ``LIMIT``/``OFFSET``;
  text otherwise, as PostgreSQL does for an unknown;
* result columns (:func:`static_types`): a table column's declared type, a literal's, a cast's,
  a comparison's (boolean), integer arithmetic, ``count``/``sum``, ``coalesce``; ``None`` where
  only the values can tell (the session then types the column from its rows).

The names of the result columns come from SQLite itself (the session steps the statement once
inside a savepoint); :func:`returning_names` is the fallback when NULL parameters make that step fail.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from sqlglot import exp

from tpemu.agent.backends.sql.shim import SqlStmt, literal_type
from tpemu.agent.backends.sql.values import SqlType, sql_type

#: table name → column name → declared type (lower-case names; ``None``: no type SQLite knows).
TableTypes = dict[str, dict[str, SqlType | None]]


def table_types(conn: sqlite3.Connection) -> TableTypes:
    """Every table's and view's columns with their declared types, from SQLite's schema."""
    out: TableTypes = {}
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"):
        out[name.lower()] = {str(r[1]).lower(): sql_type(r[2]) for r in
                             conn.execute(f'PRAGMA table_info("{name.replace(chr(34), chr(34) * 2)}")')}
    return out


def static_types(node: SqlStmt, names: list[str], tables: TableTypes, pg: bool,
                 params: Sequence[SqlType | None] = ()) -> list[SqlType | None]:
    """Each result column's type where it is known without the values: a table column's declared
    type, a literal's, a cast's, a comparison's, ``count``'s."""
    by_name: dict[str, SqlType | None] = {}
    for columns in tables.values():
        for k, v in columns.items():
            by_name.setdefault(k, v)
    exprs = list(node.source.expressions) if isinstance(node.source, exp.Select) else []
    if any(isinstance(e, exp.Star) for e in exprs):
        exprs = []
    out: list[SqlType | None] = []
    for i, name in enumerate(names):
        e = exprs[i] if i < len(exprs) else None
        t = expression_type(e, pg, by_name, params) if e is not None else None
        if t is None and e is None:
            t = by_name.get(name.lower())
        out.append(t)
    return out


_NUMERIC_ORDER = (SqlType.BOOL, SqlType.INT2, SqlType.INT4, SqlType.INT8, SqlType.NUMERIC, SqlType.FLOAT4,
                  SqlType.FLOAT8)
_TEXT_FUNCTIONS = (exp.Lower, exp.Upper, exp.Substring, exp.Trim, exp.DPipe)


def expression_type(e: exp.Expr, pg: bool, columns: dict[str, SqlType | None],
                     params: Sequence[SqlType | None]) -> SqlType | None:
    """A result expression's type without its values (PostgreSQL's rules where they matter to a
    client: int op int is an integer, a comparison a boolean, a column its declared type)."""
    e = e.this if isinstance(e, exp.Alias | exp.Paren) else e
    known = literal_type(e, pg)
    if known is not None:
        return known
    if isinstance(e, exp.Column):
        return columns.get(e.name.lower())
    if isinstance(e, exp.Parameter | exp.Placeholder):  # SELECT $1: the parameter's type
        n = int(e.this.this) - 1 if isinstance(e, exp.Parameter) and isinstance(e.this, exp.Literal) else -1
        return params[n] if 0 <= n < len(params) else None
    if isinstance(e, _TEXT_FUNCTIONS):
        return SqlType.TEXT
    if isinstance(e, exp.Length):
        return SqlType.INT4
    if isinstance(e, exp.Add | exp.Sub | exp.Mul | exp.Div | exp.Mod):
        sides = [expression_type(x, pg, columns, params) for x in (e.this, e.expression)]
        if all(t in _NUMERIC_ORDER for t in sides):
            widest = max(sides, key=_NUMERIC_ORDER.index)
            if not pg and isinstance(e, exp.Div):
                return SqlType.FLOAT8  # MySQL's / is never an integer division
            return SqlType.INT4 if widest in (SqlType.BOOL, SqlType.INT2) else widest
        return None
    if isinstance(e, exp.Neg | exp.Abs | exp.Min | exp.Max):
        return expression_type(e.this, pg, columns, params)
    if isinstance(e, exp.Sum):
        inner = expression_type(e.this, pg, columns, params)
        return SqlType.INT8 if inner in (SqlType.INT2, SqlType.INT4, SqlType.INT8) else inner
    if isinstance(e, exp.Coalesce):
        for x in (e.this, *e.expressions):
            t = expression_type(x, pg, columns, params)
            if t is not None:
                return t
    return None



def infer_params(tree: Any, tables: TableTypes, ptypes: list[SqlType | None]) -> None:
    """Fill the unknown (``None``) entries of ``ptypes`` from where each parameter is used in ``tree``."""
    def column_type(col: object) -> SqlType | None:
        if not isinstance(col, exp.Column):
            return None
        name = col.name.lower()
        for columns in tables.values():
            if name in columns and columns[name] is not None:
                return columns[name]
        return None

    def index(p: object) -> int | None:
        if isinstance(p, exp.Var) and str(p.this).startswith("?"):
            return int(str(p.this)[1:]) - 1
        return None

    for cmp in tree.find_all(exp.Binary):
        for side, other in ((cmp.left, cmp.right), (cmp.right, cmp.left)):
            i = index(side)
            if i is not None and 0 <= i < len(ptypes) and ptypes[i] is None:
                ptypes[i] = column_type(other)
    for call in tree.find_all(exp.Anonymous):  # $1::int became tpemu_cast(?1, 'INT')
        if str(call.this).lower() == "tpemu_cast" and len(call.expressions) == 2:
            i = index(call.expressions[0])
            if i is not None and 0 <= i < len(ptypes) and ptypes[i] is None:
                ptypes[i] = sql_type(call.expressions[1].name)
    for limit in list(tree.find_all(exp.Limit)) + list(tree.find_all(exp.Offset)):
        i = index(limit.expression)
        if i is not None and 0 <= i < len(ptypes) and ptypes[i] is None:
            ptypes[i] = SqlType.INT8
    if isinstance(tree, exp.Insert) and isinstance(tree.this, exp.Schema | exp.Table):
        if isinstance(tree.this, exp.Schema):
            names = [c.name.lower() for c in tree.this.expressions]
            table = tables.get(tree.this.this.name.lower(), {})
        else:  # INSERT INTO t VALUES (…): the table's columns in order
            table = tables.get(tree.this.name.lower(), {})
            names = list(table)
        values = tree.expression
        for row in values.expressions if isinstance(values, exp.Values) else ():
            for name, value in zip(names, row.expressions, strict=False):
                i = index(value)
                if i is not None and 0 <= i < len(ptypes) and ptypes[i] is None:
                    ptypes[i] = table.get(name)


def returning_names(node: SqlStmt, tables: TableTypes) -> list[str]:
    """The result column names from the tree: a SELECT's list, or what RETURNING names."""
    if isinstance(node.ast, exp.Select) and not any(isinstance(e, exp.Star) for e in node.ast.expressions):
        return [e.alias_or_name for e in node.ast.expressions]  # computed ones are aliased (shim._name_columns)
    returning = node.ast.args.get("returning")
    table = node.ast.this.this if isinstance(node.ast.this, exp.Schema) else node.ast.this
    names: list[str] = []
    for e in returning.expressions if returning is not None else ():
        if isinstance(e, exp.Star):
            names += list(tables.get(table.name.lower() if table is not None else "", {}))
        else:
            names.append(e.alias_or_name)
    return names
