"""The fallback SQL engine's store and sessions: one SQLite database file per database name.

One file per database in a private temporary folder (WAL mode, so readers see the last commit
while a writer works), one SQLite connection per client session, every statement translated by
:mod:`tpemu.agent.backends.sql.shim`. Transactions are SQLite's own, so ``BEGIN … ROLLBACK``
undoes the changes and a failed statement leaves nothing half-applied. Protocol semantics kept:

* PostgreSQL: the statements of one query string, and those between two Syncs of the extended
  protocol, run in one implicit transaction (an error rolls back all of them; :meth:`SqlSession.
  end_batch`); an error inside a transaction block refuses every statement until ``ROLLBACK``
  (SQLSTATE 25P02); ``CREATE DATABASE`` inside a block is refused (25001).
* MySQL: ``autocommit=0`` opens a transaction at the first statement; DDL commits the open
  transaction first (MySQL's implicit commit); ``USE`` inside a transaction is refused (a
  transaction cannot span two SQLite files).
* A write while another session holds the write lock fails at once with SQLSTATE 40001 / MySQL
  1213 (a serialization failure: the client retries) instead of blocking the event loop; a
  statement running past ``statement_timeout`` seconds is interrupted (57014 / 3024).

This module is the state machine of those semantics (transactions, ``SET``/``SHOW``, databases,
``USE``). How each SQLite connection is set up to act as the server (pragmas, the functions the
rewrites call, the statement deadline) and SQLite's errors in the server's words are
:mod:`.connection`; the parameter and result types known without running a statement (what
Describe answers) are :mod:`.describe`.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sqlite3
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tpemu.agent.backends.sql.connection import StatementGuard, connect, sqlite_error
from tpemu.agent.backends.sql.describe import TableTypes, infer_params, returning_names, static_types, table_types
from tpemu.agent.backends.sql.shim import (
    DatabaseStmt,
    EmptyStmt,
    SetStmt,
    ShowStmt,
    SqlStmt,
    Statement,
    TransactionStmt,
    Translator,
    split_statements,
)
from tpemu.agent.backends.sql.values import (
    Column,
    Dialect,
    ErrorKind,
    SqlError,
    SqlType,
    Value,
    coerce,
    to_sqlite,
    unsupported,
    value_type,
)

#: PostgreSQL run-time settings reported by SHOW (lower-case names); SET adds to a session's copy.
PG_SETTINGS = {
    "application_name": "", "client_encoding": "UTF8", "datestyle": "ISO, MDY", "integer_datetimes": "on",
    "intervalstyle": "postgres", "is_superuser": "off", "max_identifier_length": "63",
    "server_encoding": "UTF8", "standard_conforming_strings": "on", "timezone": "UTC",
    "transaction_isolation": "serializable", "default_transaction_read_only": "off", "in_hot_standby": "off",
    "search_path": '"$user", public',
}
#: MySQL system variables answered for ``@@name`` and SHOW VARIABLES.
MYSQL_VARIABLES: dict[str, str | int] = {
    "autocommit": 1, "character_set_client": "utf8mb4", "character_set_connection": "utf8mb4",
    "character_set_results": "utf8mb4", "character_set_server": "utf8mb4", "collation_connection":
    "utf8mb4_general_ci", "max_allowed_packet": 1048576, "sql_mode": "STRICT_TRANS_TABLES", "time_zone": "SYSTEM",
    "system_time_zone": "UTC", "transaction_isolation": "SERIALIZABLE", "tx_isolation": "SERIALIZABLE",
    "wait_timeout": 28800, "interactive_timeout": 28800, "lower_case_table_names": 0, "have_ssl": "YES",
    "ssl_cipher": "", "license": "GPL", "hostname": "tpemu", "port": 3306,
}
#: Settings a PostgreSQL client may SET whose effect the fallback does not emulate but that change
#: nothing it returns (the rest are refused: SET of an unknown setting would hide a difference).
_PG_SETTABLE = set(PG_SETTINGS) | {"extra_float_digits", "statement_timeout", "lock_timeout",
                                   "idle_in_transaction_session_timeout", "client_min_messages", "names"}


@dataclass(frozen=True)
class Result:
    """What a statement produced: ``columns`` is ``None`` without a result set; ``command`` the
    PostgreSQL command word; ``tag`` its CommandComplete tag."""

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
    params: tuple[SqlType, ...]
    columns: tuple[Column, ...] | None


class SqlEngine:
    """The databases of one emulated server: one SQLite file each, in a private temporary folder
    removed when the engine is garbage-collected (or the process exits).

    ``max_bytes`` bounds each database file (SQLite's ``max_page_count``): past it, writes fail
    with ``ErrorKind.LIMIT``; ``max_databases`` bounds how many exist; ``statement_timeout``
    (seconds) interrupts a statement that runs longer (it runs on the event loop's thread).
    """

    def __init__(self, dialect: Dialect, server_version: str, version_string: str | None = None, *,
                 max_databases: int = 100, max_bytes: int = 64 << 20, statement_timeout: float = 2.0,
                 variables: dict[str, str | int] | None = None) -> None:
        self.dialect = dialect
        self.server_version = server_version
        self.version_string = version_string or server_version
        self.variables: dict[str, str | int] = {**MYSQL_VARIABLES, "version": server_version,
                                                 "version_comment": "tpemu emulator (SQLite)", **(variables or {})}
        self.max_databases = max_databases
        self.max_bytes = max_bytes
        self.statement_timeout = statement_timeout
        self.started = datetime.now(UTC)
        self._dir = Path(tempfile.mkdtemp(prefix="tpemu-sql-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._dir, True)
        self.databases: dict[str, Path] = {}
        self._files = 0
        self._next_session = 1

    def _key(self, name: str) -> str:
        return name.lower() if self.dialect is Dialect.MYSQL else name

    def database(self, name: str, create: bool = True) -> Path | None:
        """The file of database ``name``; created if missing and ``create`` (raises LIMIT when full)."""
        key = self._key(name)
        if key not in self.databases and create:
            if len(self.databases) >= self.max_databases:
                raise SqlError(ErrorKind.LIMIT, f"the emulator keeps at most {self.max_databases} databases")
            self._files += 1
            path = self._dir / f"db{self._files}.sqlite"
            with contextlib.closing(sqlite3.connect(path, timeout=0)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
            self.databases[key] = path
        return self.databases.get(key)

    def drop_database(self, name: str) -> bool:
        path = self.databases.pop(self._key(name), None)
        if path is None:
            return False
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return True

    def open_session(self, user: str, database: str | None, client_host: str = "localhost",
                     settings: dict[str, str] | None = None) -> SqlSession:
        """A per-connection session; ``database`` is created on first use (``None``: none selected)."""
        if database is not None:
            self.database(database)
        sid = self._next_session
        self._next_session += 1
        return SqlSession(self, sid, user, database, client_host, dict(settings or {}))


class SqlSession:
    """One client's SQLite connection, settings and transaction state."""

    def __init__(self, engine: SqlEngine, session_id: int, user: str, database: str | None, client_host: str,
                 settings: dict[str, str]) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self.id = session_id
        self.user = user
        self.client_host = client_host
        self.settings: dict[str, str] = {**PG_SETTINGS, **{k.lower(): v for k, v in settings.items()}}
        self.variables: dict[str, str | int] = dict(engine.variables)
        #: MySQL status variables SHOW STATUS answers (the server sets Ssl_cipher / Ssl_version).
        self.status: dict[str, str] = {}
        self.failed = False
        self.implicit = False
        self.last_insert_id = 0
        self._guard = StatementGuard()
        self._db: str | None = None
        self._conn: sqlite3.Connection | None = None
        self._numeric: set[str] | None = None
        me = weakref.proxy(self)  # no cycle through the translator's callbacks (see _open)
        numeric = lambda: me._numeric_columns()  # noqa: E731, PLW0108 (a bound method would hold the session)
        self._translator = Translator(self.dialect, self.variables, numeric, lambda: me._db)
        self._open(database)

    # -- the connection to the current database -----------------------------------------------------------

    @property
    def database(self) -> str | None:
        return self._db

    @database.setter
    def database(self, name: str | None) -> None:
        if self.in_transaction and name != self._db:
            raise unsupported("changing the database inside a transaction (the SQLite fallback keeps one file per "
                              "database)")
        self._open(name)

    def _open(self, name: str | None) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._db = name
        self._numeric = None
        self.failed = self.implicit = False
        path: Path | str
        if name is None:  # MySQL without a database: SELECT 1 works, a table is "No database selected"
            path = ":memory:"
        else:
            found = self.engine.database(name)
            assert found is not None
            path = found
        # The connection's functions see the session through a weak reference (no cycle: see connection.py).
        self._conn = connect(path, self.dialect, self.engine.max_bytes, self._guard, weakref.proxy(self))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    @property
    def version_string(self) -> str:
        return self.engine.version_string

    def _error(self, e: sqlite3.Error) -> SqlError:
        """SQLite's error as the server's; the SqlError a function raised takes precedence."""
        return self._guard.take_error() or sqlite_error(e, self.dialect, self._db)

    def require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise SqlError(ErrorKind.NO_DATABASE, "No database selected")
        return self._conn

    def _require_database(self) -> None:
        if self._db is None:
            raise SqlError(ErrorKind.NO_DATABASE, "No database selected")

    @property
    def in_transaction(self) -> bool:
        return self._conn is not None and self._conn.in_transaction and not self.implicit

    @property
    def transaction_status(self) -> str:
        """PostgreSQL's ReadyForQuery status: ``I`` idle, ``T`` in a block, ``E`` in a failed block."""
        if not self.in_transaction:
            return "I"
        return "E" if self.failed else "T"

    def mark_failed(self) -> None:
        """A statement failed: PostgreSQL aborts the open transaction block (or the implicit one)."""
        if self._conn is not None and self._conn.in_transaction and self.dialect is Dialect.POSTGRES:
            self.failed = True

    def end_batch(self) -> None:
        """The end of a PostgreSQL query string or extended-protocol batch (Sync): the implicit
        transaction commits, or rolls back if a statement failed."""
        if not self.implicit:
            return
        self.implicit = False
        conn = self.require()
        failed, self.failed = self.failed, False
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK" if failed else "COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise self._error(e) from None

    @property
    def pg(self) -> bool:
        return self.dialect is Dialect.POSTGRES

    @property
    def autocommit(self) -> bool:
        return str(self.variables.get("autocommit", 1)).lower() in ("1", "on", "true")

    def _numeric_columns(self) -> set[str]:
        if self._numeric is None:
            self._numeric = {c for cols in table_types(self.require()).values() for c, t in cols.items()
                             if t is SqlType.NUMERIC} if self._conn is not None else set()
        return self._numeric

    # -- parsing ----------------------------------------------------------------------------------------------

    def parse_script(self, sql: str) -> list[Statement]:
        """Every statement of a query string (all parsed before anything runs, as PostgreSQL does)."""
        return [self._translator.statement(text) for text in split_statements(sql, self.dialect)]

    def parse(self, sql: str) -> Statement:
        """Exactly one statement (an empty string gives an empty statement)."""
        stmts = self.parse_script(sql)
        if len(stmts) > 1:
            raise SqlError(ErrorKind.SYNTAX, "cannot insert multiple commands into a prepared statement")
        return stmts[0] if stmts else Statement(EmptyStmt(), sql)

    # -- describe and execute ----------------------------------------------------------------------------------

    def describe(self, stmt: Statement, param_types: Sequence[SqlType | None] = ()) -> Description:
        """Parameter types (declared, else from the column they meet, else text) and result columns."""
        node = stmt.node
        ptypes = list(param_types[: stmt.param_count]) + [None] * max(0, stmt.param_count - len(param_types))
        if not isinstance(node, SqlStmt):
            return Description(tuple(t or SqlType.TEXT for t in ptypes), None)
        tables = table_types(self.require())
        infer_params(node.ast, tables, ptypes)
        final = tuple(t or SqlType.TEXT for t in ptypes)
        columns = None
        if node.returns_rows:
            columns = self._probe_columns(node, tables, final)
            node.described = columns
        return Description(final, columns)

    def _probe_columns(self, node: SqlStmt, tables: TableTypes, params: Sequence[SqlType]) -> tuple[Column, ...]:
        """Result column names from SQLite itself (the statement stepped once with NULL parameters
        inside a savepoint that is rolled back), types from the tables' declared types."""
        conn = self.require()
        names: list[str]
        self._guard.start(self.engine.statement_timeout)
        try:
            conn.execute("SAVEPOINT tpemu_describe")
            try:
                cur = conn.execute(node.sqlite, [None] * len(params))
                names = [d[0] for d in cur.description or ()]
                cur.close()
            finally:
                conn.execute("ROLLBACK TO tpemu_describe")
                conn.execute("RELEASE tpemu_describe")
        except (sqlite3.IntegrityError, sqlite3.OperationalError) as e:
            if self._guard.error is None and not isinstance(e, sqlite3.IntegrityError):
                raise self._error(e) from None
            self._guard.error = None
            names = returning_names(node, tables)  # NULL parameters broke a constraint or a LIMIT
        except sqlite3.Error as e:
            raise self._error(e) from None
        finally:
            self._guard.stop()
        types = static_types(node, names, tables, self.pg, params)
        return tuple(Column(n, t or SqlType.TEXT) for n, t in zip(names, types, strict=True))

    def execute(self, stmt: Statement, params: Sequence[Value] = (), param_types: Sequence[SqlType] = ()) -> Result:
        """Run ``stmt`` with ``params`` (already decoded)."""
        node = stmt.node
        if self.failed and not isinstance(node, TransactionStmt):
            raise SqlError(ErrorKind.FAILED_TRANSACTION,
                           "current transaction is aborted, commands ignored until end of transaction block")
        if len(params) < stmt.param_count:
            raise SqlError(ErrorKind.UNDEFINED_PARAMETER,
                           f"statement needs {stmt.param_count} parameters, got {len(params)}")
        try:
            if isinstance(node, SqlStmt):
                return self._run(node, params, param_types)
            if isinstance(node, TransactionStmt):
                return self._transaction(node)
            if isinstance(node, SetStmt):
                return self._set_value(node)
            if isinstance(node, ShowStmt):
                return self._show(node)
            if isinstance(node, DatabaseStmt):
                return self._database(node)
            return Result(node.command)
        except SqlError:
            self.mark_failed()
            raise

    def _run(self, node: SqlStmt, params: Sequence[Value], param_types: Sequence[SqlType] = ()) -> Result:
        conn = self.require()
        if node.ddl or node.command in ("INSERT", "UPDATE", "DELETE"):
            self._require_database()
        if self.dialect is Dialect.MYSQL:
            if node.ddl and conn.in_transaction:
                self._commit(conn)  # MySQL's implicit commit before DDL
            elif not node.ddl and not self.autocommit and not conn.in_transaction:
                conn.execute("BEGIN")
        elif not conn.in_transaction:
            conn.execute("BEGIN")  # the implicit transaction of this query string / batch
            self.implicit = True
        self._guard.start(self.engine.statement_timeout)
        try:
            cur = conn.execute(node.sqlite, [to_sqlite(p) for p in params])
            raw = cur.fetchall() if cur.description else []
        except sqlite3.Error as e:
            raise self._error(e) from None
        except OverflowError as e:
            raise SqlError(ErrorKind.OUT_OF_RANGE, f"value out of range: {e}") from None
        finally:
            self._guard.stop()
        if node.ddl:
            self._numeric = None
        if node.command in ("INSERT", "UPDATE", "DELETE") and not node.returns_rows:
            if node.command == "INSERT" and cur.lastrowid:
                # MySQL's LAST_INSERT_ID() is the first id of a multi-row insert (SQLite gives the last;
                # one writer at a time makes them consecutive)
                self.last_insert_id = cur.lastrowid - max(cur.rowcount - 1, 0) if not self.pg else cur.lastrowid
            return Result(node.command, rowcount=max(cur.rowcount, 0), last_insert_id=self.last_insert_id)
        if not node.returns_rows:
            return Result(node.command)
        columns = node.described
        if columns is None:
            names = [d[0] for d in cur.description]
            static = static_types(node, names, table_types(conn), self.pg, param_types)
            columns = tuple(Column(n, static[i] or value_type([r[i] for r in raw])) for i, n in enumerate(names))
        rows = tuple(tuple(coerce(v, columns[i].type, self.dialect) for i, v in enumerate(r)) for r in raw)
        if node.command == "INSERT":
            self.last_insert_id = cur.lastrowid or 0
        return Result(node.command, columns, rows, len(rows), self.last_insert_id)

    def _commit(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise self._error(e) from None

    def _transaction(self, node: TransactionStmt) -> Result:
        conn = self.require()
        pg_dialect = self.dialect is Dialect.POSTGRES
        try:
            if node.action == "begin":
                if conn.in_transaction and not pg_dialect:
                    conn.execute("COMMIT")  # MySQL: BEGIN commits the open transaction first
                if not conn.in_transaction:
                    conn.execute("BEGIN")
                self.implicit = False  # an implicit transaction becomes this block
                return Result("BEGIN")
            if node.action in ("commit", "rollback"):
                failed, self.failed = self.failed, False
                self.implicit = False
                if conn.in_transaction:
                    conn.execute("ROLLBACK" if failed or node.action == "rollback" else "COMMIT")
                return Result("ROLLBACK" if failed or node.action == "rollback" else "COMMIT")
            if not self.in_transaction:
                raise SqlError(ErrorKind.NO_TRANSACTION, f"{node.action.upper().replace('_', ' ')} can only be used "
                                                         "in transaction blocks")
            name = '"' + node.name.replace('"', '""') + '"'
            if node.action == "savepoint":
                conn.execute(f"SAVEPOINT {name}")
                return Result("SAVEPOINT")
            if node.action == "release":
                conn.execute(f"RELEASE {name}")
                return Result("RELEASE")
            conn.execute(f"ROLLBACK TO {name}")
            self.failed = False
            return Result("ROLLBACK")
        except sqlite3.Error as e:
            raise self._error(e) from None

    def _set_value(self, node: SetStmt) -> Result:
        if self.dialect is Dialect.POSTGRES:
            if node.name not in _PG_SETTABLE:
                raise unsupported(f"SET {node.name}")
            self.settings[node.name] = node.value
        elif node.name.startswith("@@") is False and node.name.startswith("@"):
            raise unsupported("user variables")
        else:
            name = node.name.removeprefix("@@").removeprefix("session.").removeprefix("global.")
            if name in ("names", "character set", "charset"):
                return Result("SET")
            if name not in self.variables:
                raise SqlError(ErrorKind.UNDEFINED_SETTING, f"Unknown system variable '{name}'")
            value: str | int = int(node.value) if re.fullmatch(r"-?\d+", node.value) else node.value
            if name == "autocommit":
                value = 1 if str(value).lower() in ("1", "on", "true") else 0
                conn = self.require()
                if value and conn.in_transaction:
                    self._commit(conn)
            self.variables[name] = value
        return Result("SET")

    def _show(self, node: ShowStmt) -> Result:
        if self.dialect is Dialect.POSTGRES:
            key = node.what
            value = self.engine.server_version if key == "server_version" else self.settings.get(key)
            if value is None:
                raise SqlError(ErrorKind.UNDEFINED_SETTING, f'unrecognized configuration parameter "{key}"')
            return Result("SHOW", (Column(key, SqlType.TEXT),), ((value,),), 1)
        rows: list[tuple[str, ...]]
        pattern = re.compile(re.escape(node.like).replace("%", ".*").replace("_", "."), re.I) if node.like else None
        if node.what == "tables":
            self._require_database()
            rows = [(r[0],) for r in self.require().execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
            header = f"Tables_in_{self.database}"
        elif node.what == "databases":
            rows, header = [(k,) for k in sorted(self.engine.databases)], "Database"
        elif node.what in ("variables", "session variables", "global variables"):
            rows = [(k, str(v)) for k, v in sorted(self.variables.items())]
            header = ""
        elif node.what in ("status", "session status"):
            rows = [(k, v) for k, v in sorted(self.status.items())]
            header = ""
        else:
            raise unsupported(f"SHOW {node.what.upper()}")
        if pattern is not None:
            rows = [r for r in rows if pattern.fullmatch(str(r[0]))]
        if header:
            return Result("SHOW", (Column(header, SqlType.TEXT),), tuple(rows), len(rows))
        return Result("SHOW", (Column("Variable_name", SqlType.TEXT), Column("Value", SqlType.TEXT)), tuple(rows),
                      len(rows))

    def _database(self, node: DatabaseStmt) -> Result:
        pg = self.dialect is Dialect.POSTGRES
        if node.action == "use":
            if self.engine.database(node.name, create=False) is None:
                raise SqlError(ErrorKind.UNKNOWN_DATABASE, f"Unknown database '{node.name}'")
            self.database = node.name
            return Result("USE")
        conn = self._conn
        if conn is not None and conn.in_transaction and not self.implicit:
            if pg:
                raise SqlError(ErrorKind.ACTIVE_TRANSACTION,
                               f"{node.action.upper()} DATABASE cannot run inside a transaction block")
            self._commit(conn)  # MySQL's implicit commit
        exists = self.engine.database(node.name, create=False) is not None
        if node.action == "create":
            if exists and not node.if_exists:
                raise SqlError(ErrorKind.DUPLICATE_DATABASE, f'database "{node.name}" already exists' if pg else
                               f"Can't create database '{node.name}'; database exists")
            self.engine.database(node.name)
            return Result("CREATE DATABASE", rowcount=1)
        if not exists:
            if node.if_exists:
                return Result("DROP DATABASE")
            raise SqlError(ErrorKind.UNKNOWN_DATABASE, f'database "{node.name}" does not exist' if pg else
                           f"Can't drop database '{node.name}'; database doesn't exist")
        if self.engine._key(node.name) == self.engine._key(self.database or ""):
            raise unsupported("dropping the current database")
        self.engine.drop_database(node.name)
        return Result("DROP DATABASE")
