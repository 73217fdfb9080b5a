"""The SQLite side of a fallback SQL session: a connection set up to act as the client's server.

:func:`connect` opens one database file with what the translated statements rely on: the file
size cap (``max_page_count``: past it, writes fail as the server's "disk full"), foreign keys on,
PostgreSQL's case-sensitive ``LIKE``, the SQL functions the shim's rewrites call (``tpemu_check``
keeping stored values to the declared types, ``tpemu_cast``, ``tpemu_divisor`` for division by
zero, ``current_user()`` …, Unicode ``lower``/``upper``, PostgreSQL's ``substring``), and a
progress handler that interrupts a statement past its deadline (a runaway query must not hold
the event loop). :func:`sqlite_error` names SQLite's errors as PostgreSQL or MySQL would.

The functions see their session through a :class:`SessionView` (a weak proxy: a strong reference
would make session → connection → function → session a cycle that keeps SQLite's descriptors open
until the cyclic collector runs), and report their own :class:`SqlError` through the session's
:class:`StatementGuard` (SQLite only says "user-defined function raised exception").
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from tpemu.agent.backends.sql.values import (
    Dialect,
    ErrorKind,
    SqlError,
    canonical_timestamp,
    check_value,
    pg_cast,
    unsupported,
)

#: Functions whose answer changes between two calls with the same arguments.
_VOLATILE = frozenset({"tpemu_now", "tpemu_now_local", "tpemu_last_insert_id"})


class SessionView(Protocol):
    """What the connection's functions read from their session."""

    @property
    def user(self) -> str: ...
    @property
    def client_host(self) -> str: ...
    @property
    def database(self) -> str | None: ...
    @property
    def last_insert_id(self) -> int: ...
    @property
    def version_string(self) -> str: ...


@dataclass
class StatementGuard:
    """The running statement's deadline (0: none running) and the error one of its functions raised."""

    deadline: float = 0.0
    error: SqlError | None = None

    def start(self, timeout: float) -> None:
        self.error = None
        self.deadline = time.monotonic() + timeout

    def stop(self) -> None:
        self.deadline = 0.0

    def take_error(self) -> SqlError | None:
        err, self.error = self.error, None
        return err


def connect(path: Path | str, dialect: Dialect, max_bytes: int, guard: StatementGuard,
            session: SessionView) -> sqlite3.Connection:
    """A connection to ``path`` (``":memory:"``: MySQL with no database selected), autocommit at
    SQLite's level (the session issues BEGIN/COMMIT itself), never waiting for a lock."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {max(16, max_bytes // page)}")
    conn.execute("PRAGMA foreign_keys = ON")
    if dialect is Dialect.POSTGRES:
        conn.execute("PRAGMA case_sensitive_like = ON")  # LIKE is case-sensitive there (ILIKE is not)
    for name, nargs, fn in _functions(session, dialect):
        conn.create_function(name, nargs, _guarded(guard, fn), deterministic=name not in _VOLATILE)
    conn.set_progress_handler(lambda: 1 if guard.deadline and time.monotonic() > guard.deadline else 0, 20_000)
    return conn


def _functions(self: SessionView, dialect: Dialect) -> list[tuple[str, int, Callable[..., Any]]]:
    pg = dialect is Dialect.POSTGRES
    out: list[tuple[str, int, Callable[..., Any]]] = [
        ("tpemu_check", 4, check_value),
        ("tpemu_cast", 2, pg_cast),
        ("tpemu_divisor", 1, _divisor),
        ("tpemu_decimal", 1, lambda text: text),
        ("tpemu_void", 0, lambda: ""),
        ("tpemu_now", 0, lambda: canonical_timestamp(datetime.now(UTC))),
        ("tpemu_now_local", 0, lambda: datetime.now(UTC).replace(tzinfo=None, microsecond=0).isoformat(sep=" ")),
        ("tpemu_version", 0, lambda: self.version_string),
        ("current_user", 0, lambda: self.user),
        ("current_database", 0, lambda: self.database),
        ("tpemu_user", 0, lambda: f"{self.user}@{self.client_host}"),
        ("tpemu_current_user", 0, lambda: f"{self.user}@%" if not pg else self.user),
        ("tpemu_last_insert_id", 0, lambda: self.last_insert_id),
        # SQLite's lower()/upper() change ASCII letters only; the servers follow Unicode.
        ("lower", 1, lambda v: v.lower() if isinstance(v, str) else v),
        ("upper", 1, lambda v: v.upper() if isinstance(v, str) else v),
    ]
    if pg:
        out += [("substring", 2, _pg_substring), ("substring", 3, _pg_substring),
                ("substr", 2, _pg_substring), ("substr", 3, _pg_substring)]
    return out


def _guarded(guard: StatementGuard, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` keeping the SqlError it raises in ``guard`` (raised again after the statement)."""
    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except SqlError as e:
            guard.error = e
            raise
    return call


def _divisor(value: Any) -> Any:
    if value == 0 and not isinstance(value, str | bytes) and value is not None:
        raise SqlError(ErrorKind.DIVISION_BY_ZERO, "division by zero")
    return value


def _pg_substring(value: Any, start: Any, length: Any = None) -> Any:
    """PostgreSQL's substring(): positions before 1 count (and shorten the result); a negative
    length is an error (SQLite's substr counts negative starts from the end)."""
    if value is None or start is None:
        return None
    text = value if isinstance(value, str) else str(value)
    begin = int(start)
    if length is None:
        return text[max(begin, 1) - 1:]
    if int(length) < 0:
        raise SqlError(ErrorKind.INVALID_TEXT, "negative substring length not allowed")
    end = begin + int(length)
    return text[max(begin, 1) - 1: max(end - 1, 0)]


_ERRORS = (
    ("UNIQUE constraint failed", ErrorKind.UNIQUE, "duplicate key value violates unique constraint",
     "Duplicate entry for key"),
    ("PRIMARY KEY constraint failed", ErrorKind.UNIQUE, "duplicate key value violates unique constraint",
     "Duplicate entry for key 'PRIMARY'"),
    ("NOT NULL constraint failed", ErrorKind.NOT_NULL, "null value violates not-null constraint",
     "Column cannot be null"),
    ("FOREIGN KEY constraint failed", ErrorKind.FOREIGN_KEY, "insert or update violates foreign key constraint",
     "Cannot add or update a child row: a foreign key constraint fails"),
    ("CHECK constraint failed", ErrorKind.CHECK, "new row violates check constraint", "Check constraint is violated"),
    ("datatype mismatch", ErrorKind.INVALID_TEXT, "invalid input syntax for type integer", "Incorrect integer value"),
    ("no such table", ErrorKind.UNDEFINED_TABLE, "", ""),
    ("no such column", ErrorKind.UNDEFINED_COLUMN, "", ""),
    ("already exists", ErrorKind.DUPLICATE_TABLE, "", ""),
    ("no such function", ErrorKind.UNDEFINED_FUNCTION, "", ""),
    ("database is locked", ErrorKind.LOCKED, "could not serialize access: another session holds the write lock "
                                             "(SQLite fallback: one writer at a time); retry the transaction",
     "Deadlock found when trying to get lock; try restarting transaction (SQLite fallback: one writer at a time)"),
    ("interrupted", ErrorKind.TIMEOUT, "canceling statement due to statement timeout",
     "Query execution was interrupted, maximum statement execution time exceeded"),
    ("database or disk is full", ErrorKind.LIMIT, "the emulated database is full", "The table is full"),
    ("integer overflow", ErrorKind.OUT_OF_RANGE, "bigint out of range", "BIGINT value is out of range"),
    ("no such savepoint", ErrorKind.NO_TRANSACTION, "", ""),
)


def sqlite_error(e: sqlite3.Error, dialect: Dialect, database: str | None) -> SqlError:
    """SQLite's error as the client's server would name it (``database``: the session's current one)."""
    text = str(e)
    mysql = dialect is Dialect.MYSQL
    m = re.match(r"no such table: (?:main\.)?(.+)", text)
    if m and database is None:
        return SqlError(ErrorKind.NO_DATABASE, "No database selected")
    if m:
        return SqlError(ErrorKind.UNDEFINED_TABLE, f"Table '{database}.{m.group(1)}' doesn't exist" if mysql
                        else f'relation "{m.group(1)}" does not exist')
    m = re.match(r"no such column: (.+)", text)
    if m:
        return SqlError(ErrorKind.UNDEFINED_COLUMN, f"Unknown column '{m.group(1)}' in 'field list'" if mysql
                        else f'column "{m.group(1)}" does not exist')
    m = re.match(r"table (\S+) already exists", text)
    if m:
        return SqlError(ErrorKind.DUPLICATE_TABLE, f"Table '{m.group(1)}' already exists" if mysql
                        else f'relation "{m.group(1)}" already exists')
    if "syntax error" in text or "near \"" in text:
        # sqlglot parsed the client's statement: SQLite refusing its translation is a gap here
        return unsupported(f"this statement in SQLite's dialect ({text})")
    for needle, kind, pg_text, my_text in _ERRORS:
        if needle in text:
            message = my_text if mysql else pg_text
            return SqlError(kind, f"{message} ({text})" if message else text)
    return SqlError(ErrorKind.INTERNAL, text)
