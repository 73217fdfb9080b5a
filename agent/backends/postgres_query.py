"""The query phase of the emulated PostgreSQL server: simple and extended protocol (glue).

Spec: PostgreSQL frontend/backend protocol 3.0, "Message Flow" §55.2.2 Simple Query (several
statements per string, EmptyQueryResponse, the implicit transaction of a query string) and
§55.2.3 Extended Query (Parse, Bind, Describe, Execute with row limits and PortalSuspended,
Close, Sync, Flush; text and binary formats; after an error, everything up to Sync is skipped);
"Message Formats" for RowDescription, DataRow, CommandComplete, ErrorResponse with SQLSTATE.

:class:`QueryPhase` is the part of a connection (``postgres._Connection``) that runs after
authentication, until Terminate or the end of the stream: the start-up, authentication and
the message reads with their size caps and deadlines are in :mod:`tpemu.agent.backends.postgres`.
SQL itself runs in :mod:`tpemu.agent.backends.sql`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tpemu.agent.backends.sql import (
    Column,
    Result,
    SqlError,
    SqlSession,
    SqlType,
    Statement,
    Value,
    coerce,
)
from tpemu.wire import postgres as pg
from tpemu.wire import postgres_values as pgv

_TYPE_OIDS = {
    SqlType.BOOL: pgv.OID_BOOL, SqlType.INT2: pgv.OID_INT2, SqlType.INT4: pgv.OID_INT4, SqlType.INT8: pgv.OID_INT8,
    SqlType.FLOAT4: pgv.OID_FLOAT4, SqlType.FLOAT8: pgv.OID_FLOAT8, SqlType.NUMERIC: pgv.OID_NUMERIC,
    SqlType.TEXT: pgv.OID_TEXT, SqlType.VARCHAR: pgv.OID_VARCHAR, SqlType.CHAR: pgv.OID_BPCHAR,
    SqlType.NAME: pgv.OID_NAME, SqlType.TIMESTAMP: pgv.OID_TIMESTAMP, SqlType.TIMESTAMPTZ: pgv.OID_TIMESTAMPTZ,
    SqlType.DATE: pgv.OID_DATE,
}
_OID_TYPES = {oid: t for t, oid in _TYPE_OIDS.items()}
#: Prepared statements (and, separately, portals) one connection may keep open.
MAX_STATEMENTS = 1000


class _Fatal(Exception):
    """End the connection after sending a FATAL ErrorResponse."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _StatementError(Exception):
    """A non-fatal ErrorResponse (the connection stays usable)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    @classmethod
    def from_sql(cls, err: SqlError) -> _StatementError:
        return cls(err.kind.pg_code, err.message)


@dataclass
class _Prepared:
    stmt: Statement
    params: tuple[SqlType, ...]
    columns: tuple[Column, ...] | None


@dataclass
class _Portal:
    prepared: _Prepared
    params: list[Value]
    formats: tuple[int, ...]
    result: Result | None = None
    sent: int = 0


class QueryPhase:
    """The query phase of one connection (a mixin of the connection class, which owns the state)."""

    sql: SqlSession | None
    statements: dict[str, _Prepared]
    portals: dict[str, _Portal]
    skip_to_sync: bool
    out_size: int
    log: logging.LoggerAdapter[Any]

    if TYPE_CHECKING:
        def send(self, data: bytes) -> None: ...
        async def flush(self) -> None: ...
        async def read_message(self, idle: bool, limit: int | None = None) -> pg.Message | None: ...

    async def serve(self) -> None:
        while True:
            msg = await self.read_message(idle=True)
            if msg is None:
                self.log.info("client closed the connection")
                return
            decoded = pg.decode_frontend(msg)
            if isinstance(decoded, pg.Terminate):
                self.log.debug("Terminate")
                return
            if isinstance(decoded, pg.Sync):
                self.skip_to_sync = False
                self.end_implicit()
                self.end_of_batch()
                self.send(pg.encode_ready_for_query(self.status()))
                await self.flush()
                continue
            if isinstance(decoded, pg.Flush):
                await self.flush()
                continue
            if isinstance(decoded, pg.Query):
                self.skip_to_sync = False
                await self.simple_query(decoded.sql)
                continue
            if self.skip_to_sync:
                continue
            try:
                if isinstance(decoded, pg.Parse):
                    self.parse(decoded)
                elif isinstance(decoded, pg.Bind):
                    self.bind(decoded)
                elif isinstance(decoded, pg.Describe):
                    self.describe(decoded)
                elif isinstance(decoded, pg.Execute):
                    self.execute(decoded)
                elif isinstance(decoded, pg.Close):
                    if decoded.kind == "S":
                        self.statements.pop(decoded.name, None)
                    else:
                        self.portals.pop(decoded.name, None)
                    self.send(pg.encode_close_complete())
                else:
                    self.unsupported_message(decoded)
            except _StatementError as e:
                self.error(e)
                self.skip_to_sync = True
            if self.out_size > 65536:
                await self.flush()

    def unsupported_message(self, msg: pg.OtherMessage) -> None:
        names = {b"F": "FunctionCall", b"d": "CopyData", b"c": "CopyDone", b"f": "CopyFail"}
        if msg.tag in names:
            raise _StatementError("0A000", f"{names[msg.tag]} is not supported by the tpemu emulator")
        raise _Fatal("08P01", f"invalid frontend message type {msg.tag[0]}")

    def status(self) -> str:
        return self.sql.transaction_status if self.sql else "I"

    def end_of_batch(self) -> None:
        # Portals live until the end of their transaction (an implicit one ends at Sync).
        if self.status() == "I":
            self.portals.clear()

    def error(self, e: _StatementError) -> None:
        assert self.sql is not None
        self.sql.mark_failed()
        self.log.debug("error %s: %s", e.code, e.message)
        self.send(pg.encode_error_response(e.message, e.code, "ERROR"))

    async def simple_query(self, text: str) -> None:
        assert self.sql is not None
        self.statements.pop("", None)
        self.portals.pop("", None)
        try:
            statements = self.sql.parse_script(text)
        except SqlError as e:
            self.error(_StatementError.from_sql(e))
            statements = None
        if statements is not None:
            if not statements:
                self.send(pg.encode_empty_query_response())
            for stmt in statements:
                try:
                    result = self.sql.execute(stmt)
                except SqlError as e:
                    self.error(_StatementError.from_sql(e))
                    break
                try:
                    self.send_result(result, (), 0, None)
                except _StatementError as e:
                    self.error(e)
                    break
                if self.out_size > 65536:
                    await self.flush()
        self.end_implicit()
        self.send(pg.encode_ready_for_query(self.status()))
        await self.flush()

    def end_implicit(self) -> None:
        """A query string or an extended-protocol batch ended: its implicit transaction commits
        (rolled back if one of its statements failed), as PostgreSQL's autocommit does."""
        if self.sql is None:
            return
        try:
            self.sql.end_batch()
        except SqlError as e:
            self.send(pg.encode_error_response(e.message, e.kind.pg_code, "ERROR"))

    def row_description(self, columns: tuple[Column, ...], formats: tuple[int, ...]) -> bytes:
        fields = []
        for i, c in enumerate(columns):
            oid = _TYPE_OIDS[c.type]
            typmod = c.type_modifier + 4 if c.type_modifier is not None and c.type in (
                SqlType.VARCHAR, SqlType.CHAR) else -1
            fields.append(pg.FieldDescription(c.name, oid, pgv.TYPE_SIZES[oid], typmod,
                                              formats[i] if i < len(formats) else 0))
        return pg.encode_row_description(fields)

    def send_result(self, result: Result, formats: tuple[int, ...], max_rows: int, portal: _Portal | None,
                    describe: bool = True) -> None:
        """RowDescription (simple protocol only), DataRows, CommandComplete or PortalSuspended."""
        if result.command == "":
            self.send(pg.encode_empty_query_response())
            return
        start = portal.sent if portal else 0
        rows = result.rows[start:]
        if result.columns is not None:
            if describe:
                self.send(self.row_description(result.columns, formats))
            oids = [_TYPE_OIDS[c.type] for c in result.columns]
            if max_rows and len(rows) > max_rows:
                rows = rows[:max_rows]
            fmts = [formats[i] if i < len(formats) else 0 for i in range(len(oids))]
            for row in rows:
                self.send(pg.encode_data_row([_encode_value(oids[i], fmts[i], v) for i, v in enumerate(row)]))
            if portal is not None:
                portal.sent += len(rows)
                if portal.sent < len(result.rows):
                    self.send(pg.encode_portal_suspended())
                    return
        if result.command == "SELECT" and portal is not None and start:
            self.send(pg.encode_command_complete(f"SELECT {len(rows)}"))
        else:
            self.send(pg.encode_command_complete(result.tag))

    # --- extended protocol
    def parse(self, msg: pg.Parse) -> None:
        assert self.sql is not None
        if msg.name and msg.name in self.statements:
            raise _StatementError("42P05", f'prepared statement "{msg.name}" already exists')
        if len(self.statements) >= MAX_STATEMENTS:
            raise _StatementError("53400", f"the tpemu emulator keeps at most {MAX_STATEMENTS} prepared statements "
                                           "per connection; close some first")
        declared: list[SqlType | None] = []
        for oid in msg.param_types:
            if oid in (0, pgv.OID_UNKNOWN):
                declared.append(None)
            elif oid in _OID_TYPES:
                declared.append(_OID_TYPES[oid])
            else:
                raise _StatementError("0A000", f"parameter type oid {oid} is not supported by the tpemu emulator")
        try:
            stmt = self.sql.parse(msg.query)
            if len(declared) > stmt.param_count:
                stmt = Statement(stmt.node, stmt.text, len(declared))
            desc = self.sql.describe(stmt, declared)
        except SqlError as e:
            raise _StatementError.from_sql(e) from None
        self.statements[msg.name] = _Prepared(stmt, desc.params, desc.columns)
        self.send(pg.encode_parse_complete())

    def bind(self, msg: pg.Bind) -> None:
        prepared = self.statements.get(msg.statement)
        if prepared is None:
            raise _StatementError("26000", f'prepared statement "{msg.statement}" does not exist')
        if len(msg.params) != len(prepared.params):
            raise _StatementError("08P01", f"bind message supplies {len(msg.params)} parameters, but prepared "
                                           f'statement "{msg.statement}" requires {len(prepared.params)}')
        values: list[Value] = []
        for i, (raw, t) in enumerate(zip(msg.params, prepared.params)):
            fmt = msg.param_formats[i] if len(msg.param_formats) > 1 else (
                msg.param_formats[0] if msg.param_formats else 0)
            values.append(_decode_param(raw, t, fmt, i))
        ncols = len(prepared.columns or ())
        if len(msg.result_formats) in (0, 1):
            formats = tuple(msg.result_formats[:1] * ncols) if msg.result_formats else (0,) * ncols
        elif len(msg.result_formats) == ncols:
            formats = msg.result_formats
        else:
            raise _StatementError("08P01", f"bind message has {len(msg.result_formats)} result formats but query "
                                           f"has {ncols} columns")
        if msg.portal and msg.portal in self.portals:
            raise _StatementError("42P03", f'cursor "{msg.portal}" already exists')
        if len(self.portals) >= MAX_STATEMENTS:
            raise _StatementError("53400", f"the tpemu emulator keeps at most {MAX_STATEMENTS} portals per "
                                           "connection; close some first")
        self.portals[msg.portal] = _Portal(prepared, values, formats)
        self.send(pg.encode_bind_complete())

    def describe(self, msg: pg.Describe) -> None:
        formats: tuple[int, ...] = ()  # a statement's columns are described as text
        if msg.kind == "S":
            prepared = self.statements.get(msg.name)
            if prepared is None:
                raise _StatementError("26000", f'prepared statement "{msg.name}" does not exist')
            self.send(pg.encode_parameter_description([_TYPE_OIDS[t] for t in prepared.params]))
            columns = prepared.columns
        else:
            portal = self.portals.get(msg.name)
            if portal is None:
                raise _StatementError("34000", f'portal "{msg.name}" does not exist')
            columns, formats = portal.prepared.columns, portal.formats
        if columns is None:
            self.send(pg.encode_no_data())
        else:
            self.send(self.row_description(columns, formats))

    def execute(self, msg: pg.Execute) -> None:
        assert self.sql is not None
        portal = self.portals.get(msg.portal)
        if portal is None:
            raise _StatementError("34000", f'portal "{msg.portal}" does not exist')
        prepared = portal.prepared
        if prepared.stmt.is_empty:
            self.send(pg.encode_empty_query_response())
            return
        if portal.result is None:
            try:
                portal.result = self.sql.execute(prepared.stmt, portal.params, prepared.params)
            except SqlError as e:
                raise _StatementError.from_sql(e) from None
        self.send_result(portal.result, portal.formats, msg.max_rows, portal, describe=False)


def _decode_param(raw: bytes | None, t: SqlType, fmt: int, index: int) -> Value:
    if raw is None:
        return None
    oid = _TYPE_OIDS[t]
    try:
        if fmt == 1:
            return coerce(pgv.decode_binary_value(oid, raw), t)
        return coerce(raw.decode("utf-8"), t)
    except pg.PostgresError as e:
        raise _StatementError("22P03", f"incorrect binary data format in bind parameter {index + 1}: {e}") from None
    except UnicodeDecodeError:
        raise _StatementError("22021", f"invalid byte sequence for encoding \"UTF8\" in parameter {index + 1}") \
            from None
    except SqlError as e:
        raise _StatementError(e.kind.pg_code, f"{e.message} (bind parameter {index + 1})") from None


def _encode_value(oid: int, fmt: int, value: Value) -> bytes | None:
    if value is None:
        return None
    try:
        if fmt == 1:
            return pgv.encode_binary_value(oid, value)
        return pgv.encode_text_value(oid, value)
    except (ValueError, OverflowError) as e:
        raise _StatementError("22P03", f"cannot encode {value!r} as type oid {oid}: {e}") from None
