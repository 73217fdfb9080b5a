"""tpemu.agent.backends.sql: the in-memory SQL engine behind the emulated Postgres and MySQL servers."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tpemu.agent.backends.sql import Dialect, ErrorKind, Result, SqlEngine, SqlError, SqlSession, SqlType


@pytest.fixture
def pg() -> SqlSession:
    return SqlEngine(Dialect.POSTGRES, "16.0 (tpemu)", "PostgreSQL 16.0 (tpemu)").open_session("alice", "app")


@pytest.fixture
def my() -> SqlSession:
    engine = SqlEngine(Dialect.MYSQL, "8.0.36-tpemu")
    engine.database("app")
    return engine.open_session("bob", "app", "10.0.0.5")


def run(s: SqlSession, sql: str, params: tuple[object, ...] = ()) -> Result:
    """Run every statement of ``sql``; return the last result."""
    result = None
    for stmt in s.parse_script(sql):
        result = s.execute(stmt, params)  # type: ignore[arg-type]
    assert result is not None
    return result


def error(s: SqlSession, sql: str) -> SqlError:
    with pytest.raises(SqlError) as e:
        run(s, sql)
    return e.value


def test_select_literals_and_session_functions(pg: SqlSession) -> None:
    r = run(pg, "SELECT 1, 'a' AS x, 2.50, NULL, TRUE, version(), current_user, current_database(), now()")
    assert [c.name for c in r.columns or ()] == ["?column?", "x", "?column?", "?column?", "?column?", "version",
                                                "current_user", "current_database", "now"]
    assert [c.type for c in r.columns or ()] == [SqlType.INT4, SqlType.TEXT, SqlType.NUMERIC, SqlType.TEXT,
                                                SqlType.BOOL, SqlType.TEXT, SqlType.NAME, SqlType.NAME,
                                                SqlType.TIMESTAMPTZ]
    row = r.rows[0]
    assert row[:8] == (1, "a", Decimal("2.50"), None, True, "PostgreSQL 16.0 (tpemu)", "alice", "app")
    assert isinstance(row[8], datetime) and row[8].tzinfo is not None
    assert r.tag == "SELECT 1"


def test_expressions(pg: SqlSession) -> None:
    r = run(pg, "SELECT 7/2, 7 % 3, -7/2, 2 * 3 + 1, 'x' || 1, 2 BETWEEN 1 AND 3, 'abc' LIKE 'a%', 'ABC' ILIKE 'a_c',"
                " 3 IN (1, 2, 3), 1 = NULL, NULL IS NULL, NOT (1 < 2) OR 2 >= 2, CAST('5' AS int) + 1, '7'::bigint,"
                " lower('AbC'), length('héllo'), coalesce(NULL, 3), 1.5 + 1")
    assert r.rows[0] == (3, 1, -3, 7, "x1", True, True, True, True, None, True, True, 6, 7, "abc", 5, 3,
                         Decimal("2.5"))
    assert error(pg, "SELECT 1/0").kind is ErrorKind.DIVISION_BY_ZERO
    assert error(pg, "SELECT 'abc'::int").kind is ErrorKind.INVALID_TEXT
    assert error(pg, "SELECT 40000::smallint").kind is ErrorKind.OUT_OF_RANGE


def test_table_round_trip(pg: SqlSession) -> None:
    assert run(pg, "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2), "
                   "qty int DEFAULT 1, seen timestamptz DEFAULT now())").tag == "CREATE TABLE"
    r = run(pg, "INSERT INTO items (name, price) VALUES ('pen', 1.5), ('ink', 20) RETURNING id, name")
    assert r.tag == "INSERT 0 2" and r.rows == ((1, "pen"), (2, "ink"))
    assert run(pg, "INSERT INTO items (name, qty) VALUES ('pad', 3)").tag == "INSERT 0 1"
    r = run(pg, "SELECT id, name, price, qty FROM items WHERE qty >= 1 AND name <> 'ink' ORDER BY id DESC")
    assert r.rows == ((3, "pad", None, 3), (1, "pen", Decimal("1.5"), 1))
    assert run(pg, "UPDATE items SET qty = qty + 10 WHERE name = 'pen'").tag == "UPDATE 1"
    r = run(pg, "SELECT count(*), sum(qty), max(name), avg(id) FROM items")
    assert r.rows[0][:3] == (3, 15, "pen")
    assert r.rows[0][3] == Decimal(2)
    assert run(pg, "SELECT * FROM items ORDER BY 1 LIMIT 1 OFFSET 1").rows[0][:2] == (2, "ink")
    assert run(pg, "DELETE FROM items WHERE id IN (1, 2)").tag == "DELETE 2"
    assert run(pg, "SELECT name FROM items").rows == (("pad",),)
    assert run(pg, "TRUNCATE items; SELECT count(*) FROM items").rows == ((0,),)
    assert run(pg, "DROP TABLE items").tag == "DROP TABLE"
    assert error(pg, "SELECT * FROM items").kind is ErrorKind.UNDEFINED_TABLE


def test_constraints_and_atomic_statements(pg: SqlSession) -> None:
    run(pg, "CREATE TABLE t (id int PRIMARY KEY, name varchar(10) NOT NULL UNIQUE)")
    run(pg, "INSERT INTO t VALUES (1, 'a')")
    e = error(pg, "INSERT INTO t VALUES (2, 'b'), (1, 'c')")
    assert e.kind is ErrorKind.UNIQUE and "Key (id)=(1)" in e.message
    assert run(pg, "SELECT count(*) FROM t").rows == ((1,),)  # row 2 was not kept
    assert error(pg, "INSERT INTO t (id) VALUES (3)").kind is ErrorKind.NOT_NULL
    assert error(pg, "INSERT INTO t VALUES (3, 'x', 1)").kind is ErrorKind.COLUMN_COUNT
    assert run(pg, "UPDATE t SET name = 'a' WHERE id = 5").tag == "UPDATE 0"
    run(pg, "INSERT INTO t VALUES (2, 'b')")
    assert error(pg, "UPDATE t SET name = 'a' WHERE id = 2").kind is ErrorKind.UNIQUE
    assert run(pg, "SELECT name FROM t ORDER BY id").rows == (("a",), ("b",))
    assert error(pg, "CREATE TABLE t (x int)").kind is ErrorKind.DUPLICATE_TABLE
    assert run(pg, "CREATE TABLE IF NOT EXISTS t (x int)").tag == "CREATE TABLE"
    assert error(pg, "SELECT nope FROM t").kind is ErrorKind.UNDEFINED_COLUMN


def test_describe_infers_parameter_types(pg: SqlSession) -> None:
    run(pg, "CREATE TABLE t (id bigint, name text, ok boolean, at timestamptz)")
    d = pg.describe(pg.parse("SELECT $1::int + 1, $2 FROM t WHERE id = $3 AND ok = $4 LIMIT $5"))
    assert d.params == (SqlType.INT4, SqlType.TEXT, SqlType.INT8, SqlType.BOOL, SqlType.INT8)
    assert [c.type for c in d.columns or ()] == [SqlType.INT4, SqlType.TEXT]
    d = pg.describe(pg.parse("INSERT INTO t (at, name) VALUES ($1, $2)"))
    assert d.params == (SqlType.TIMESTAMPTZ, SqlType.TEXT) and d.columns is None
    d = pg.describe(pg.parse("SELECT $1"), [SqlType.INT2])  # a declared type wins
    assert d.params == (SqlType.INT2,)
    assert pg.describe(pg.parse("DELETE FROM t WHERE id = $1 RETURNING name")).columns is not None
    stmt = pg.parse("INSERT INTO t (id, name) VALUES ($1, $2)")
    pg.execute(stmt, (5, "x"), (SqlType.INT8, SqlType.TEXT))
    assert run(pg, "SELECT name FROM t WHERE id = 5").rows == (("x",),)


def test_scripts_parse_completely_before_running(pg: SqlSession) -> None:
    assert len(pg.parse_script("select 1; ; select 2;")) == 2
    with pytest.raises(SqlError) as e:
        pg.parse_script("CREATE TABLE a (x int); SELEC 1")
    assert e.value.kind is ErrorKind.SYNTAX and 'near "SELEC"' in e.value.message
    assert error(pg, "SELECT * FROM a").kind is ErrorKind.UNDEFINED_TABLE
    with pytest.raises(SqlError, match="multiple commands"):
        pg.parse("select 1; select 2")
    assert pg.parse("").is_empty


def test_transaction_status(pg: SqlSession) -> None:
    assert pg.transaction_status == "I"
    assert run(pg, "BEGIN").tag == "BEGIN" and pg.transaction_status == "T"
    error(pg, "SELECT * FROM missing")
    assert pg.transaction_status == "E"
    assert error(pg, "SELECT 1").kind is ErrorKind.FAILED_TRANSACTION
    assert run(pg, "COMMIT").tag == "ROLLBACK" and pg.transaction_status == "I"
    run(pg, "START TRANSACTION ISOLATION LEVEL SERIALIZABLE; SAVEPOINT s1")
    error(pg, "SELECT 1/0")
    assert run(pg, "ROLLBACK TO SAVEPOINT s1").tag == "ROLLBACK" and pg.transaction_status == "T"
    assert run(pg, "RELEASE s1; COMMIT").tag == "COMMIT"


def test_settings_and_show(pg: SqlSession) -> None:
    assert run(pg, "SHOW server_version").rows == (("16.0 (tpemu)",),)
    run(pg, "SET application_name = 'x'; SET search_path TO public")
    assert run(pg, "SHOW application_name").rows == (("x",),)
    assert error(pg, "SHOW nope").kind is ErrorKind.UNDEFINED_SETTING
    for sql in ("RESET ALL", "DISCARD ALL", "UNLISTEN *", "CLOSE ALL", "DEALLOCATE ALL",
                "SELECT pg_advisory_unlock_all()"):
        run(pg, sql)


@pytest.mark.parametrize("sql,needle", [
    ("SELECT * FROM pg_catalog.pg_class", "catalog table pg_catalog.pg_class"),
    ("SELECT typname FROM pg_type", "catalog table pg_catalog.pg_type"),
    ("SELECT * FROM information_schema.tables", "catalog table"),
    ("SELECT DISTINCT 1", "SELECT DISTINCT"),
    ("SELECT 1 UNION SELECT 2", "UNION"),
    ("SELECT (SELECT 1)", "subqueries"),
    ("COPY t FROM STDIN", "COPY statement"),
    ("ALTER TABLE t ADD x int", "ALTER statement"),
    ("SELECT $$x$$", "dollar-quoted strings"),
    ("CREATE TABLE j (x jsonb)", "type jsonb"),
    ("SELECT generate_series(1, 3)", "function generate_series()"),
])
def test_outside_the_subset_says_so(pg: SqlSession, sql: str, needle: str) -> None:
    e = error(pg, sql)
    assert needle in e.message and "not supported by the tpemu emulator" in e.message
    assert e.kind.pg_code in ("0A000", "42883")


def test_mysql_client_queries(my: SqlSession) -> None:
    r = run(my, "select @@version_comment limit 1")
    assert r.columns is not None and r.columns[0].name == "@@version_comment"
    assert r.rows == (("tpemu emulator",),)
    r = run(my, "SELECT DATABASE(), USER(), CURRENT_USER(), @@session.autocommit, @@max_allowed_packet")
    assert [c.name for c in r.columns or ()] == ["DATABASE()", "USER()", "CURRENT_USER()", "@@session.autocommit",
                                                "@@max_allowed_packet"]
    assert r.rows[0][:4] == ("app", "bob@10.0.0.5", "bob@%", 1)
    run(my, "SET NAMES utf8mb4; SET autocommit = 0; SET @x = 5")
    assert run(my, "SELECT @@autocommit, @x").rows == ((0, 5),)
    assert error(my, "SELECT @@nope").kind.mysql_errno == 1193


def test_mysql_tables(my: SqlSession) -> None:
    run(my, "CREATE TABLE `Users` (id INT AUTO_INCREMENT PRIMARY KEY, Name VARCHAR(20), note TEXT) "
            "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
    r = run(my, "INSERT INTO users (name, note) VALUES ('Ann', 'it''s'), (\"Bo\", 'a\\nb\\\\')")
    assert r.rowcount == 2 and r.last_insert_id == 1
    assert run(my, "SELECT LAST_INSERT_ID()").rows == ((1,),)
    assert run(my, "SELECT id, note FROM USERS WHERE name = 'ann'").rows == ((1, "it's"),)  # case-insensitive
    assert run(my, "SELECT note FROM users WHERE id = 2").rows == (("a\nb\\",),)
    assert run(my, "SELECT name FROM users ORDER BY id LIMIT 1, 1").rows == (("Bo",),)
    assert run(my, "UPDATE users SET note = note WHERE id = 1").rowcount == 0  # MySQL counts changed rows
    assert run(my, "SELECT 7/2, 1e3, TRUE").rows == ((Decimal("3.5000"), 1000.0, 1),)
    assert run(my, "SHOW TABLES").rows == (("Users",),)
    assert run(my, "SHOW DATABASES").rows == (("app",),)
    assert run(my, "SHOW VARIABLES LIKE 'version%'").rows == (("version", "8.0.36-tpemu"),
                                                              ("version_comment", "tpemu emulator"))
    assert run(my, "DESCRIBE users").rows[0] == ("id", "int", "NO", "PRI", None, "auto_increment")
    e = error(my, "SELECT * FROM nope")
    assert (e.kind.mysql_errno, e.message) == (1146, "Table 'app.nope' doesn't exist")
    assert error(my, "INSERT INTO users (id, name) VALUES (1, 'dup')").kind.mysql_errno == 1062


def test_mysql_databases(my: SqlSession) -> None:
    my.database = None
    assert error(my, "SELECT * FROM t").kind.mysql_errno == 1046
    assert error(my, "USE other").kind.mysql_errno == 1049
    run(my, "CREATE DATABASE other; USE other")
    assert my.database == "other"
    run(my, "CREATE TABLE app.t (x int); INSERT INTO app.t VALUES (1)")
    assert run(my, "SELECT x FROM app.t").rows == ((1,),)
    assert "not supported" in error(my, "SELECT * FROM information_schema.tables").message


def test_null_ordering_differs_by_dialect(pg: SqlSession, my: SqlSession) -> None:
    for s in (pg, my):
        run(s, "CREATE TABLE n (x int); INSERT INTO n VALUES (2), (NULL), (1)")
    assert run(pg, "SELECT x FROM n ORDER BY x").rows == ((1,), (2,), (None,))
    assert run(my, "SELECT x FROM n ORDER BY x").rows == ((None,), (1,), (2,))
    assert run(pg, "SELECT x FROM n ORDER BY x DESC NULLS LAST").rows == ((2,), (1,), (None,))


def test_store_limits() -> None:
    engine = SqlEngine(Dialect.POSTGRES, "16", max_rows=3, max_tables=1, max_databases=2)
    engine.open_session("a", "db2")
    engine.open_session("a", "db")  # the second of two
    with pytest.raises(SqlError) as e:
        engine.open_session("a", "db3")
    assert e.value.kind is ErrorKind.LIMIT
    s = engine.open_session("a", "db")
    run(s, "CREATE TABLE t (x int)")
    assert error(s, "CREATE TABLE u (x int)").kind is ErrorKind.LIMIT
    run(s, "INSERT INTO t VALUES (1), (2), (3)")
    assert error(s, "INSERT INTO t VALUES (4)").kind is ErrorKind.LIMIT


def test_byte_budget_is_kept_across_changes() -> None:
    engine = SqlEngine(Dialect.MYSQL, "8", max_bytes=1000)
    s = engine.open_session("a", "db")
    run(s, "CREATE TABLE t (id int, v text)")
    run(s, f"INSERT INTO t VALUES (1, '{'x' * 400}'), (2, '{'y' * 400}')")
    assert engine.stored_bytes == 2 * (400 + 32)
    e = error(s, f"INSERT INTO t VALUES (3, '{'z' * 200}')")
    assert e.kind is ErrorKind.LIMIT and e.kind.mysql_errno == 1114
    assert engine.stored_bytes == 864 and run(s, "SELECT COUNT(*) FROM t").rows == ((2,),)
    assert error(s, f"UPDATE t SET v = '{'w' * 600}' WHERE id = 1").kind is ErrorKind.LIMIT
    assert engine.stored_bytes == 864
    run(s, "DELETE FROM t WHERE id = 2")
    assert engine.stored_bytes == 432
    run(s, "DROP TABLE t")
    assert engine.stored_bytes == 0


_WORDS = ["SELECT", "FROM", "WHERE", "INSERT", "INTO", "VALUES", "CREATE", "TABLE", "DELETE", "UPDATE", "SET",
          "ORDER", "BY", "LIMIT", "t", "x", "1", "'a'", "(", ")", ",", ";", "*", "=", "+", "-", "AND", "NOT", "NULL",
          "$1", "::", "int", "text", "count", "@@version", "`q`", '"q"', "1.5", "IS", "IN", "LIKE", "AS", "DESC"]


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(st.lists(st.sampled_from(_WORDS), max_size=14), st.sampled_from(list(Dialect)))
def test_fuzz_statements_only_raise_sql_errors(words: list[str], dialect: Dialect) -> None:
    engine = SqlEngine(dialect, "x")
    s = engine.open_session("u", "db")
    run(s, "CREATE TABLE t (x int, q text)")
    try:
        for stmt in s.parse_script(" ".join(words)):
            s.execute(stmt, (1,) * stmt.param_count)
    except SqlError:
        pass


@given(st.text(max_size=60), st.sampled_from(list(Dialect)))
def test_fuzz_any_text_parses_or_raises_sql_error(text: str, dialect: Dialect) -> None:
    s = SqlEngine(dialect, "x").open_session("u", "db")
    try:
        s.parse_script(text)
    except SqlError:
        pass
