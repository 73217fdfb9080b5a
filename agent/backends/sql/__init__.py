"""The fallback SQL engine of the emulated PostgreSQL and MySQL servers: SQLite behind a dialect shim.

The Database Service serves a database from a real engine (:mod:`tpemu.agent.engines`); when none
is installed, or with ``uri: emulated``, its emulated servers (:mod:`~tpemu.agent.backends.postgres`,
:mod:`~tpemu.agent.backends.mysql`) run SQL here: sqlglot parses each statement in the client's
dialect, :mod:`.shim` checks and rewrites it for the standard library's :mod:`sqlite3`, and
:mod:`.engine` runs it with SQLite's own transactions, joins, constraints and aggregates, on a
connection :mod:`.connection` sets up (and :mod:`.describe` types its parameters and results). What
SQLite cannot run as the real server would is refused with the protocol's error (SQLSTATE 0A000,
MySQL 1235) naming what, never approximated; :mod:`.values` keeps stored values to the declared
types.

Shapes, in use order: :class:`SqlEngine` (one per emulated server: its databases) →
``engine.open_session(user, database)`` → :class:`SqlSession` ``parse_script`` / ``parse`` →
``describe`` (parameter and result types, without running) → ``execute`` → :class:`Result`;
PostgreSQL's servers call ``end_batch`` at the end of a query string and at Sync.
"""

from tpemu.agent.backends.sql.engine import Description, Result, SqlEngine, SqlSession
from tpemu.agent.backends.sql.shim import DatabaseStmt, Statement
from tpemu.agent.backends.sql.values import Column, Dialect, ErrorKind, SqlError, SqlType, Value, coerce

__all__ = ["Column", "DatabaseStmt", "Description", "Dialect", "ErrorKind", "Result", "SqlEngine", "SqlError",
           "SqlSession", "SqlType", "Statement", "Value", "coerce"]
