"""tpemu.agent.backends.sql: the SQLite-backed fallback engine of the emulated PostgreSQL and MySQL servers.

What is accepted is executed faithfully (transactions, joins, constraints, the declared types);
what SQLite cannot run as the real server would is refused with the protocol's error and
changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tpemu.agent.backends.sql import Dialect, ErrorKind, Result, SqlEngine, SqlError, SqlSession, SqlType


@pytest.fixture
def engine() -> SqlEngine:
    return SqlEngine(Dialect.POSTGRES, "16.0 (tpemu)", "PostgreSQL 16.0 (tpemu)")


@pytest.fixture
def pg(engine: SqlEngine) -> SqlSession:
    return engine.open_session("alice", "app")


@pytest.fixture
def my() -> SqlSession:
    engine = SqlEngine(Dialect.MYSQL, "8.0.36-tpemu")
    engine.database("app")
    return engine.open_session("bob", "app", "10.0.0.5")


def run(s: SqlSession, sql: str, params: tuple[object, ...] = ()) -> Result:
    """Run a query string as the emulated server does (PostgreSQL: one implicit transaction that
    ends with the string); return the last result."""
    result = None
    try:
        for stmt in s.parse_script(sql):
            result = s.execute(stmt, params)  # type: ignore[arg-type]
    except SqlError:
        s.mark_failed()
        s.end_batch()
        raise
    s.end_batch()
    assert result is not None
    return result


def error(s: SqlSession, sql: str) -> SqlError:
    with pytest.raises(SqlError) as e:
        run(s, sql)
    return e.value


def rows(s: SqlSession, sql: str) -> tuple[tuple[object, ...], ...]:
    return run(s, sql).rows


# -- transactions: the data-loss bug of the hand-written engine ------------------------------------------


def test_rollback_undoes_the_changes_and_joins_run(pg: SqlSession) -> None:
    run(pg, "CREATE TABLE t (id int PRIMARY KEY, name text); INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    run(pg, "BEGIN")
    assert run(pg, "UPDATE t SET name = upper(name)").tag == "UPDATE 2"
    assert rows(pg, "SELECT name FROM t ORDER BY id") == (("A",), ("B",))  # inside: the change is seen
    assert run(pg, "ROLLBACK").tag == "ROLLBACK"
    assert rows(pg, "SELECT * FROM t ORDER BY id") == ((1, "a"), (2, "b"))
    run(pg, "CREATE TABLE u (t_id int REFERENCES t (id), tag text); INSERT INTO u VALUES (1, 'x'), (1, 'y')")
    assert rows(pg, "SELECT t.name, count(u.tag) FROM t LEFT JOIN u ON u.t_id = t.id GROUP BY t.name "
                    "ORDER BY t.name") == (("a", 2), ("b", 0))
    assert error(pg, "INSERT INTO u VALUES (9, 'z')").kind is ErrorKind.FOREIGN_KEY


def test_a_failing_query_string_is_rolled_back_whole(pg: SqlSession) -> None:
    run(pg, "CREATE TABLE t (x int)")
    assert error(pg, "INSERT INTO t VALUES (1); SELECT 1/0").kind is ErrorKind.DIVISION_BY_ZERO
    assert rows(pg, "SELECT count(*) FROM t") == ((0,),)  # PostgreSQL's implicit transaction
    run(pg, "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)")
    assert rows(pg, "SELECT count(*) FROM t") == ((2,),)
    # a refused statement (not only a failing one) also leaves nothing of the string behind
    assert error(pg, "INSERT INTO t VALUES (3); SELECT random()").kind is ErrorKind.NOT_SUPPORTED
    assert rows(pg, "SELECT count(*) FROM t") == ((2,),)


def test_failed_block_refuses_until_rollback_and_savepoints(pg: SqlSession) -> None:
    run(pg, "CREATE TABLE t (x int PRIMARY KEY)")
    run(pg, "BEGIN; INSERT INTO t VALUES (1)")
    assert pg.transaction_status == "T"
    error(pg, "INSERT INTO t VALUES (1)")
    assert pg.transaction_status == "E"
    assert error(pg, "SELECT 1").kind is ErrorKind.FAILED_TRANSACTION
    assert run(pg, "COMMIT").tag == "ROLLBACK" and pg.transaction_status == "I"
    assert rows(pg, "SELECT count(*) FROM t") == ((0,),)
    run(pg, "START TRANSACTION ISOLATION LEVEL SERIALIZABLE; INSERT INTO t VALUES (1); SAVEPOINT s1; "
            "INSERT INTO t VALUES (2)")
    error(pg, "SELECT 1/0")
    assert run(pg, "ROLLBACK TO SAVEPOINT s1").tag == "ROLLBACK" and pg.transaction_status == "T"
    assert run(pg, "RELEASE s1; COMMIT").tag == "COMMIT"
    assert rows(pg, "SELECT x FROM t") == ((1,),)
    assert error(pg, "SAVEPOINT s").kind is ErrorKind.NO_TRANSACTION
    run(pg, "BEGIN")
    assert error(pg, "CREATE DATABASE other").kind is ErrorKind.ACTIVE_TRANSACTION
    run(pg, "ROLLBACK")


def test_sessions_see_commits_only_and_one_writer_at_a_time(engine: SqlEngine) -> None:
    a, b = engine.open_session("a", "app"), engine.open_session("b", "app")
    run(a, "CREATE TABLE t (x int)")
    run(a, "BEGIN; INSERT INTO t VALUES (1)")
    assert rows(b, "SELECT count(*) FROM t") == ((0,),)  # not committed yet
    e = error(b, "INSERT INTO t VALUES (2)")  # a holds the write lock: a serialization failure, no wait
    assert e.kind is ErrorKind.LOCKED and e.kind.pg_code == "40001"
    run(a, "COMMIT")
    assert rows(b, "SELECT count(*) FROM t") == ((1,),)
    run(b, "INSERT INTO t VALUES (2)")
    assert rows(a, "SELECT x FROM t ORDER BY x") == ((1,), (2,))


def test_mysql_transactions(my: SqlSession) -> None:
    run(my, "CREATE TABLE t (x int)")
    run(my, "SET autocommit = 0")
    run(my, "INSERT INTO t VALUES (1)")
    assert my.in_transaction
    run(my, "ROLLBACK")
    assert rows(my, "SELECT COUNT(*) FROM t") == ((0,),)
    run(my, "INSERT INTO t VALUES (1)")
    run(my, "CREATE TABLE u (y int)")  # DDL commits the open transaction first (MySQL's implicit commit)
    run(my, "ROLLBACK")
    assert rows(my, "SELECT COUNT(*) FROM t") == ((1,),)
    run(my, "SET autocommit = 1; BEGIN; INSERT INTO t VALUES (2)")
    with pytest.raises(SqlError, match="changing the database inside a transaction"):
        my.database = "other"
    run(my, "COMMIT")
    assert rows(my, "SELECT COUNT(*) FROM t") == ((2,),)


# -- what is refused, and that it changes nothing -----------------------------------------------------------


@pytest.mark.parametrize("sql,needle", [
    ("SELECT * FROM pg_catalog.pg_class", "system catalog"),
    ("SELECT typname FROM pg_type", "system catalog"),
    ("SELECT * FROM information_schema.tables", "system catalog"),
    ("SELECT * FROM other.t", "schema other"),
    ("COPY t FROM STDIN", "COPY"),
    ("CREATE TABLE j (x jsonb)", "type jsonb"),
    ("SELECT '{}'::jsonb", "type jsonb"),
    ("SELECT random()", "function"),
    ("SELECT generate_series(1, 3)", "function generate_series()"),
    ("SELECT 0.1 + 0.2", "arithmetic on numeric"),
    ("SELECT sum(price) FROM t", "arithmetic on numeric"),
    ("BEGIN READ ONLY", "READ ONLY"),
    ("CREATE TABLE c AS SELECT 1", "CREATE TABLE … AS"),
    ("SELECT 1 INTO c", "SELECT … INTO"),
    ("CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql", "CREATE FUNCTION"),
    ("SET work_mem = '1GB'", "SET work_mem"),
    ("INSERT INTO t (price) VALUES (1.234)", "more decimals than numeric(10,2)"),
    ("INSERT INTO t (price) VALUES (1234567890123456.5)", "15 significant digits"),
    ("INSERT INTO t (at) VALUES ('2024-01-01T10:00:00Z')", "keeps times as text"),
])
def test_outside_what_sqlite_runs_faithfully_is_refused(pg: SqlSession, sql: str, needle: str) -> None:
    run(pg, "CREATE TABLE t (price numeric(10,2), at timestamptz)")
    e = error(pg, sql)
    assert needle in e.message, e.message
    assert e.kind is ErrorKind.NOT_SUPPORTED and e.kind.pg_code == "0A000" and e.kind.mysql_errno == 1235
    assert "install the real engine" in e.message
    assert rows(pg, "SELECT count(*) FROM t") == ((0,),)


@pytest.mark.parametrize("sql,kind,message", [
    ("INSERT INTO t (v) VALUES ('toolong')", ErrorKind.TOO_LONG, "value too long for type character varying(3)"),
    ("INSERT INTO t (s) VALUES (40000)", ErrorKind.OUT_OF_RANGE, "smallint out of range"),
    ("INSERT INTO t (s) VALUES ('abc')", ErrorKind.INVALID_TEXT, 'invalid input syntax for type smallint: "abc"'),
    ("INSERT INTO t (b) VALUES (7)", ErrorKind.DATATYPE_MISMATCH, 'column "b" is of type boolean'),
    ("SELECT 'abc'::int", ErrorKind.INVALID_TEXT, 'invalid input syntax for type integer: "abc"'),
    ("SELECT 40000::smallint", ErrorKind.OUT_OF_RANGE, "smallint out of range"),
    ("SELECT 1/0", ErrorKind.DIVISION_BY_ZERO, "division by zero"),
    ("SELECT 5 % 0", ErrorKind.DIVISION_BY_ZERO, "division by zero"),
    ("SELECT nope FROM t", ErrorKind.UNDEFINED_COLUMN, 'column "nope" does not exist'),
    ("SELECT * FROM nope", ErrorKind.UNDEFINED_TABLE, 'relation "nope" does not exist'),
    ("SELECT * FROM sqlite_master", ErrorKind.UNDEFINED_TABLE, 'relation "sqlite_master" does not exist'),
    ("CREATE TABLE t (x int)", ErrorKind.DUPLICATE_TABLE, 'relation "t" already exists'),
    ("selec 1", ErrorKind.SYNTAX, "syntax error"),
])
def test_the_real_servers_errors(pg: SqlSession, sql: str, kind: ErrorKind, message: str) -> None:
    run(pg, "CREATE TABLE t (v varchar(3), s smallint, b boolean)")
    e = error(pg, sql)
    assert e.kind is kind and message in e.message, e.message
    assert rows(pg, "SELECT count(*) FROM t") == ((0,),)


def test_a_runaway_statement_is_interrupted() -> None:
    s = SqlEngine(Dialect.POSTGRES, "16", statement_timeout=0.2).open_session("a", "app")
    e = error(s, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n")
    assert e.kind is ErrorKind.TIMEOUT and e.kind.pg_code == "57014"
    assert rows(s, "SELECT 1") == ((1,),)


# -- values and types -----------------------------------------------------------------------------------


def test_select_literals_and_session_functions(pg: SqlSession) -> None:
    r = run(pg, "SELECT 1, 'a' AS x, 2.50, NULL, TRUE, 1 < 2, 'a' LIKE 'A', 'a' ILIKE 'A', version(), current_user, "
                "current_database(), now()")
    assert [c.name for c in r.columns or ()][:5] == ["?column?", "x", "?column?", "?column?", "bool"]
    assert [c.name for c in r.columns or ()][8:] == ["version", "current_user", "current_database", "now"]
    assert [c.type for c in r.columns or ()] == [SqlType.INT4, SqlType.TEXT, SqlType.NUMERIC, SqlType.TEXT,
                                                SqlType.BOOL, SqlType.BOOL, SqlType.BOOL, SqlType.BOOL,
                                                SqlType.TEXT, SqlType.NAME, SqlType.NAME, SqlType.TIMESTAMPTZ]
    row = r.rows[0]
    assert row[:11] == (1, "a", Decimal("2.50"), None, True, True, False, True, "PostgreSQL 16.0 (tpemu)", "alice",
                        "app")
    assert isinstance(row[11], datetime) and row[11].tzinfo is not None
    assert rows(pg, "SELECT 7/2, 7 % 3, -7/2, '12'::int + 1, lower('ÉA'), length('héllo'), "
                    "substring('abc', -1, 3)") == ((3, 1, -3, 13, "éa", 5, "a"),)


def test_table_round_trip_with_declared_types(pg: SqlSession) -> None:
    assert run(pg, "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2), "
                   "qty int DEFAULT 1, ok boolean, seen timestamptz DEFAULT now())").tag == "CREATE TABLE"
    r = run(pg, "INSERT INTO items (name, price, ok) VALUES ('pen', 1.5, true), ('ink', 20, false) RETURNING id, name")
    assert r.tag == "INSERT 0 2" and r.rows == ((1, "pen"), (2, "ink"))
    r = run(pg, "SELECT id, name, price, qty, ok FROM items WHERE qty >= 1 AND name <> 'ink' ORDER BY id DESC")
    assert r.rows == ((1, "pen", Decimal("1.5"), 1, True),)
    assert [c.type for c in r.columns or ()] == [SqlType.INT4, SqlType.TEXT, SqlType.NUMERIC, SqlType.INT4,
                                                SqlType.BOOL]
    assert run(pg, "DELETE FROM items WHERE id = 2").tag == "DELETE 1"
    assert run(pg, "INSERT INTO items (name) VALUES ('pad') RETURNING id").rows == ((3,),)  # ids are not reused
    assert run(pg, "TRUNCATE items").tag == "TRUNCATE TABLE"
    assert rows(pg, "SELECT count(*) FROM items") == ((0,),)
    assert run(pg, "DROP TABLE items").tag == "DROP TABLE"


def test_null_ordering_and_like_follow_the_dialect(pg: SqlSession, my: SqlSession) -> None:
    for s in (pg, my):
        run(s, "CREATE TABLE n (x int, t varchar(5)); INSERT INTO n VALUES (2, 'B'), (NULL, 'a'), (1, 'c')")
    assert rows(pg, "SELECT x FROM n ORDER BY x") == ((1,), (2,), (None,))
    assert rows(my, "SELECT x FROM n ORDER BY x") == ((None,), (1,), (2,))
    assert rows(pg, "SELECT x FROM n ORDER BY x DESC NULLS LAST") == ((2,), (1,), (None,))
    assert rows(pg, "SELECT t FROM n WHERE t = 'b'") == ()  # case-sensitive in PostgreSQL
    assert rows(my, "SELECT t FROM n WHERE t = 'b'") == (("B",),)  # utf8mb4_general_ci


def test_describe_infers_parameter_types(pg: SqlSession) -> None:
    run(pg, "CREATE TABLE t (id bigint, name text, ok boolean, at timestamptz)")
    d = pg.describe(pg.parse("SELECT $1::int + 1, $2 FROM t WHERE id = $3 AND ok = $4 LIMIT $5"))
    assert d.params == (SqlType.INT4, SqlType.TEXT, SqlType.INT8, SqlType.BOOL, SqlType.INT8)
    assert d.columns is not None and d.columns[1].type is SqlType.TEXT
    d = pg.describe(pg.parse("INSERT INTO t (at, name) VALUES ($1, $2)"))
    assert d.params == (SqlType.TIMESTAMPTZ, SqlType.TEXT) and d.columns is None
    d = pg.describe(pg.parse("SELECT $1"), [SqlType.INT2])  # a declared type wins, and types the result
    assert d.params == (SqlType.INT2,) and d.columns is not None and d.columns[0].type is SqlType.INT2
    stmt = pg.parse("INSERT INTO t (id, name, at) VALUES ($1, $2, $3)")
    pg.execute(stmt, (5, "x", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)), (SqlType.INT8, SqlType.TEXT,
                                                                         SqlType.TIMESTAMPTZ))
    pg.end_batch()
    assert rows(pg, "SELECT name, at FROM t WHERE id = 5") == (("x", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),)


def test_scripts_parse_completely_before_running(pg: SqlSession) -> None:
    assert len(pg.parse_script("select 1; ; select ';'; -- x")) == 2
    with pytest.raises(SqlError) as e:
        pg.parse_script("CREATE TABLE a (x int); SELEC 1")
    assert e.value.kind is ErrorKind.SYNTAX
    assert error(pg, "SELECT * FROM a").kind is ErrorKind.UNDEFINED_TABLE
    with pytest.raises(SqlError, match="multiple commands"):
        pg.parse("select 1; select 2")
    assert pg.parse("").is_empty


def test_settings_and_show(pg: SqlSession) -> None:
    assert rows(pg, "SHOW server_version") == (("16.0 (tpemu)",),)
    run(pg, "SET application_name = 'x'; SET search_path TO public")
    assert rows(pg, "SHOW application_name") == (("x",),)
    assert error(pg, "SHOW nope").kind is ErrorKind.UNDEFINED_SETTING
    run(pg, "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;")  # asyncpg's pool reset


def test_mysql_client_queries(my: SqlSession) -> None:
    r = run(my, "select @@version_comment limit 1")
    assert r.columns is not None and r.columns[0].name == "@@version_comment"
    assert r.rows == (("tpemu emulator (SQLite)",),)
    r = run(my, "SELECT DATABASE(), USER(), CURRENT_USER(), @@session.autocommit, @@max_allowed_packet")
    assert [c.name for c in r.columns or ()] == ["DATABASE()", "USER()", "CURRENT_USER()", "@@session.autocommit",
                                                "@@max_allowed_packet"]
    assert r.rows[0][:4] == ("app", "bob@10.0.0.5", "bob@%", 1)
    run(my, "SET NAMES utf8mb4; SET autocommit = 0")
    assert rows(my, "SELECT @@autocommit") == ((0,),)
    assert error(my, "SELECT @@nope").kind.mysql_errno == 1193
    assert error(my, "SET @x = 5").kind.mysql_errno == 1235


def test_mysql_tables(my: SqlSession) -> None:
    run(my, "CREATE TABLE `Users` (id INT AUTO_INCREMENT PRIMARY KEY, Name VARCHAR(5), note TEXT, at DATETIME) "
            "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
    r = run(my, "INSERT INTO users (name, note) VALUES ('Ann', 'it''s'), (\"Bo\", 'a\\nb\\\\')")
    assert r.rowcount == 2 and r.last_insert_id == 1
    assert rows(my, "SELECT LAST_INSERT_ID()") == ((1,),)
    assert rows(my, "SELECT id, note FROM users WHERE name = 'ann'") == ((1, "it's"),)
    assert rows(my, "SELECT note FROM app.users WHERE id = 2") == (("a\nb\\",),)
    assert rows(my, "SELECT name FROM users ORDER BY id LIMIT 1, 1") == (("Bo",),)
    assert rows(my, "SELECT 7/2, 1/0") == ((3.5, None),)  # MySQL: NULL for a division by zero
    assert rows(my, "SHOW TABLES") == (("Users",),)
    assert rows(my, "SHOW DATABASES") == (("app",),)
    run(my, "INSERT INTO users (name, at) VALUES ('T', '2024-01-02 03:04:05')")
    assert rows(my, "SELECT at FROM users WHERE name = 't'") == ((datetime(2024, 1, 2, 3, 4, 5),),)
    e = error(my, "SELECT * FROM nope")
    assert (e.kind.mysql_errno, e.message) == (1146, "Table 'app.nope' doesn't exist")
    assert error(my, "INSERT INTO users (id, name) VALUES (1, 'dup')").kind.mysql_errno == 1062
    e = error(my, "INSERT INTO users (name) VALUES ('toolong')")
    assert (e.kind.mysql_errno, e.message) == (1406, "Data too long for column 'Name' at row 1")
    assert error(my, "SELECT LENGTH('é')").kind.mysql_errno == 1235  # bytes in MySQL, characters in SQLite
    assert error(my, "SELECT * FROM other.t").kind.mysql_errno == 1235


def test_mysql_databases(my: SqlSession) -> None:
    my.database = None
    assert error(my, "SELECT * FROM t").kind.mysql_errno == 1046
    assert error(my, "USE other").kind.mysql_errno == 1049
    run(my, "CREATE DATABASE other; USE other")
    assert my.database == "other"
    assert error(my, "SELECT * FROM information_schema.tables").kind.mysql_errno == 1235


def test_store_limits() -> None:
    engine = SqlEngine(Dialect.POSTGRES, "16", max_databases=2, max_bytes=64 << 10)
    engine.open_session("a", "db2")
    s = engine.open_session("a", "db")  # the second of two
    with pytest.raises(SqlError) as e:
        engine.open_session("a", "db3")
    assert e.value.kind is ErrorKind.LIMIT
    run(s, "CREATE TABLE t (v text)")
    e2 = error(s, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) "
                  "INSERT INTO t SELECT 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' FROM n")
    assert e2.kind is ErrorKind.LIMIT
    assert rows(s, "SELECT count(*) FROM t") == ((0,),)  # the failed statement kept nothing


_WORDS = ["SELECT", "FROM", "WHERE", "INSERT", "INTO", "VALUES", "CREATE", "TABLE", "DELETE", "UPDATE", "SET",
          "ORDER", "BY", "LIMIT", "t", "x", "1", "'a'", "(", ")", ",", ";", "*", "=", "+", "-", "AND", "NOT", "NULL",
          "$1", "::", "int", "text", "count", "@@version", "`q`", '"q"', "1.5", "IS", "IN", "LIKE", "AS", "DESC",
          "BEGIN", "ROLLBACK", "JOIN", "ON", "/", "0", "pg_class", "sqlite_master", "PRAGMA", "ATTACH"]


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], max_examples=200,
          deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=14), st.sampled_from(list(Dialect)))
def test_fuzz_statements_only_raise_sql_errors(words: list[str], dialect: Dialect) -> None:
    s = SqlEngine(dialect, "x").open_session("u", "db")
    run(s, "CREATE TABLE t (x int, q text)")
    try:
        for stmt in s.parse_script(" ".join(words)):
            s.execute(stmt, (1,) * stmt.param_count)
    except SqlError:
        pass
    s.end_batch()


@settings(deadline=None)
@given(st.text(max_size=60), st.sampled_from(list(Dialect)))
def test_fuzz_any_text_parses_or_raises_sql_error(text: str, dialect: Dialect) -> None:
    s = SqlEngine(dialect, "x").open_session("u", "db")
    try:
        s.parse_script(text)
    except SqlError:
        pass
