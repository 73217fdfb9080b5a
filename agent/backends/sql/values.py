"""Types, values and errors of the SQLite-backed fallback SQL engine (:mod:`tpemu.agent.backends.sql`).

SQLite stores what it is given (type affinity, not types), so the fidelity of stored values is
enforced here: every column the emulator creates carries ``CHECK (tpemu_check(col, type, p, s))``
(:func:`check_value`), which refuses what the real server would refuse (PostgreSQL's
``invalid input syntax for type integer``, ``value too long for type character varying(n)``,
``smallint out of range``; MySQL strict mode's 1366 / 1406 / 1264) and what SQLite could not keep
faithfully (a numeric value past 15 significant digits, a timestamp not in the canonical form
that keeps text comparison in time order). PostgreSQL's casts run through :func:`pg_cast`, which
converts as ``int4in`` / ``boolin`` / ``date_in`` do instead of SQLite's lenient ``CAST`` (where
``'abc'`` becomes 0).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeAlias

from tpemu.errors import PeerFault

Value: TypeAlias = bool | int | float | Decimal | str | datetime | date | None


class Dialect(enum.Enum):
    POSTGRES = "postgres"
    MYSQL = "mysql"


class SqlType(enum.Enum):
    """Column types; each protocol maps them to its own codes (OIDs, MYSQL_TYPE_*)."""

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


class ErrorKind(enum.Enum):
    """Error classes with (Postgres SQLSTATE, MySQL error number, MySQL SQL state)."""

    SYNTAX = ("42601", 1064, "42000")
    NOT_SUPPORTED = ("0A000", 1235, "42000")
    UNDEFINED_TABLE = ("42P01", 1146, "42S02")
    DUPLICATE_TABLE = ("42P07", 1050, "42S01")
    UNDEFINED_COLUMN = ("42703", 1054, "42S22")
    UNDEFINED_FUNCTION = ("42883", 1305, "42000")
    UNDEFINED_PARAMETER = ("42P02", 1064, "42000")
    UNDEFINED_SETTING = ("42704", 1193, "HY000")
    INVALID_TEXT = ("22P02", 1366, "HY000")
    DATATYPE_MISMATCH = ("42804", 1366, "HY000")
    OUT_OF_RANGE = ("22003", 1264, "22003")
    TOO_LONG = ("22001", 1406, "22001")
    DIVISION_BY_ZERO = ("22012", 1365, "22012")
    NOT_NULL = ("23502", 1048, "23000")
    UNIQUE = ("23505", 1062, "23000")
    FOREIGN_KEY = ("23503", 1452, "23000")
    CHECK = ("23514", 3819, "HY000")
    NO_DATABASE = ("3D000", 1046, "3D000")
    UNKNOWN_DATABASE = ("3D000", 1049, "42000")
    DUPLICATE_DATABASE = ("42P04", 1007, "HY000")
    ACTIVE_TRANSACTION = ("25001", 1179, "25000")
    FAILED_TRANSACTION = ("25P02", 1105, "HY000")
    NO_TRANSACTION = ("25P01", 1305, "42000")
    LOCKED = ("40001", 1213, "40001")
    TIMEOUT = ("57014", 3024, "HY000")
    LIMIT = ("53400", 1114, "HY000")
    INTERNAL = ("XX000", 1105, "HY000")

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


def unsupported(what: str) -> SqlError:
    return SqlError(ErrorKind.NOT_SUPPORTED, f"{what} is not supported by the tpemu emulator (its SQLite fallback "
                                             "refuses what it cannot run as the real server would; install the real "
                                             "engine: see the agent's start-up log)")


@dataclass
class Column:
    """A result column (``table`` is "" for computed ones)."""

    name: str
    type: SqlType
    type_modifier: int | None = None
    table: str = ""
    not_null: bool = False
    primary_key: bool = False
    auto_increment: bool = False


#: Declared type names (upper case, without modifiers) → type.
TYPES: dict[str, SqlType] = {
    "BOOLEAN": SqlType.BOOL, "BOOL": SqlType.BOOL, "TINYINT": SqlType.INT2, "SMALLINT": SqlType.INT2,
    "INT2": SqlType.INT2, "INT": SqlType.INT4, "INTEGER": SqlType.INT4, "INT4": SqlType.INT4,
    "MEDIUMINT": SqlType.INT4, "BIGINT": SqlType.INT8, "INT8": SqlType.INT8, "FLOAT": SqlType.FLOAT8,
    "REAL": SqlType.FLOAT4, "FLOAT4": SqlType.FLOAT4, "DOUBLE": SqlType.FLOAT8, "DOUBLE PRECISION": SqlType.FLOAT8,
    "FLOAT8": SqlType.FLOAT8, "DECIMAL": SqlType.NUMERIC, "NUMERIC": SqlType.NUMERIC, "TEXT": SqlType.TEXT,
    "VARCHAR": SqlType.VARCHAR, "CHARACTER VARYING": SqlType.VARCHAR, "CHAR": SqlType.CHAR,
    "CHARACTER": SqlType.CHAR, "BPCHAR": SqlType.CHAR, "NAME": SqlType.NAME, "TIMESTAMP": SqlType.TIMESTAMP,
    "DATETIME": SqlType.TIMESTAMP, "TIMESTAMPTZ": SqlType.TIMESTAMPTZ,
    "TIMESTAMP WITH TIME ZONE": SqlType.TIMESTAMPTZ, "TIMESTAMP WITHOUT TIME ZONE": SqlType.TIMESTAMP,
    "DATE": SqlType.DATE,
}
_INT_RANGES = {SqlType.INT2: 1 << 15, SqlType.INT4: 1 << 31, SqlType.INT8: 1 << 63}
_MYSQL_INT_RANGES = {"TINYINT": 1 << 7, "SMALLINT": 1 << 15, "MEDIUMINT": 1 << 23}


def parse_type(declared: str | None) -> tuple[SqlType | None, tuple[int, ...]]:
    """A declared type (``VARCHAR(10)``, ``NUMERIC(10, 2)``) → (type, modifiers); unknown → None."""
    if not declared:
        return None, ()
    m = re.fullmatch(r"\s*([A-Za-z][A-Za-z0-9 ]*?)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*(UNSIGNED)?\s*",
                     declared)
    if m is None:
        return None, ()
    mods = tuple(int(g) for g in m.group(2, 3) if g is not None)
    return TYPES.get(m.group(1).upper()), mods


def sql_type(declared: str | None) -> SqlType | None:
    return parse_type(declared)[0]


# -- values in and out ------------------------------------------------------------------------------------


def to_sqlite(v: Value) -> Any:
    """A client's (decoded) value as SQLite stores it: timestamps in the canonical text form."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, Decimal):
        if not v.is_finite():
            raise unsupported(f"the numeric value {v}")
        if v == v.to_integral_value() and abs(v) < 10 ** 15:
            return int(v)
        if len(v.normalize().as_tuple().digits) > 15:
            raise unsupported("a numeric value with more than 15 significant digits (SQLite keeps binary floating "
                              "point)")
        return float(v)
    if isinstance(v, datetime):
        return canonical_timestamp(v)
    if isinstance(v, date):
        return v.isoformat()
    return v


def canonical_timestamp(v: datetime) -> str:
    """Timestamps are stored as ``YYYY-MM-DD HH:MM:SS[.ffffff]`` (``+00:00`` added when zoned, in
    UTC): the one form whose text order is time order."""
    if v.tzinfo is not None:
        v = v.astimezone(UTC)
    return v.isoformat(sep=" ")


def _significant_digits(f: float) -> int:
    """How many significant decimal digits the shortest exact text of ``f`` has."""
    return len(repr(abs(f)).split("e")[0].replace(".", "").strip("0")) or 1


def check_value(value: Any, declared: str, dialect: str, column: str) -> int:
    """The CHECK every emulator-made column carries: 1, or :class:`SqlError` naming what the real
    server says. ``declared`` is the column's declared type as written (``VARCHAR(10)``)."""
    if value is None:
        return 1
    t, mods = parse_type(declared)
    mysql = dialect == Dialect.MYSQL.value
    name = (t.value if t is not None else declared.lower())

    def bad(kind: ErrorKind, pg_text: str, my_text: str) -> SqlError:
        return SqlError(kind, my_text if mysql else pg_text)

    shown = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if t is None:
        raise unsupported(f"type {declared.lower()}")
    if t in _INT_RANGES or t is SqlType.BOOL:
        if t is SqlType.BOOL:  # TRUE / FALSE are SQLite's 1 / 0
            if isinstance(value, int) and value in (0, 1):
                return 1
            if isinstance(value, int | float):
                raise bad(ErrorKind.DATATYPE_MISMATCH, f'column "{column}" is of type boolean but expression is of '
                                                       "type integer", f"Incorrect integer value: '{shown}' for "
                                                                       f"column '{column}' at row 1")
        if not isinstance(value, int):
            if t is SqlType.BOOL:
                raise bad(ErrorKind.INVALID_TEXT, f'invalid input syntax for type boolean: "{shown}" (the SQLite '
                                                  "fallback takes TRUE/FALSE, not text)",
                          f"Incorrect integer value: '{shown}' for column '{column}' at row 1")
            raise bad(ErrorKind.INVALID_TEXT, f'invalid input syntax for type {name}: "{shown}"',
                      f"Incorrect integer value: '{shown}' for column '{column}' at row 1")
        limit = _MYSQL_INT_RANGES.get(declared.split("(", maxsplit=1)[0].strip().upper(), 0) if mysql else 0
        limit = limit or _INT_RANGES.get(t, 1 << 63)
        if not -limit <= value < limit:
            raise bad(ErrorKind.OUT_OF_RANGE, f"{name} out of range",
                      f"Out of range value for column '{column}' at row 1")
        return 1
    if t in (SqlType.FLOAT4, SqlType.FLOAT8, SqlType.NUMERIC):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad(ErrorKind.INVALID_TEXT, f'invalid input syntax for type {name}: "{shown}"',
                      f"Incorrect decimal value: '{shown}' for column '{column}' at row 1")
        if t is SqlType.NUMERIC:
            _check_numeric(value, mods, mysql, column)
        return 1
    if not isinstance(value, str):
        if t in (SqlType.TEXT, SqlType.VARCHAR, SqlType.CHAR, SqlType.NAME) and not mysql:
            # Postgres refuses an integer for a text column only in a typed context; SQLite has
            # already turned it into text through the column's affinity, so this is a blob.
            raise unsupported("binary values")
        if mysql and isinstance(value, int | float):
            return 1  # MySQL stores the number's text; SQLite's TEXT affinity did the same
        raise bad(ErrorKind.INVALID_TEXT, f'invalid input syntax for type {name}', f"Incorrect value for column "
                                                                                   f"'{column}' at row 1")
    if t in (SqlType.VARCHAR, SqlType.CHAR) and mods and len(value) > mods[0]:
        kind = "character varying" if t is SqlType.VARCHAR else "character"
        raise bad(ErrorKind.TOO_LONG, f"value too long for type {kind}({mods[0]})",
                  f"Data too long for column '{column}' at row 1")
    if t in (SqlType.TIMESTAMP, SqlType.TIMESTAMPTZ, SqlType.DATE):
        _check_time(value, t, mysql, column)
    return 1


def _check_numeric(value: int | float, mods: tuple[int, ...], mysql: bool, column: str) -> None:
    if isinstance(value, float):
        d = Decimal(repr(value))
        if _significant_digits(value) > 15:
            raise unsupported("a numeric value with more than 15 significant digits (SQLite keeps binary floating "
                              "point)")
    else:
        d = Decimal(value)
        if abs(value) >= 10 ** 15:
            raise unsupported("a numeric value with more than 15 significant digits (SQLite keeps binary floating "
                              "point)")
    if mods:
        precision, scale = mods[0], mods[1] if len(mods) > 1 else 0
        exponent = d.as_tuple().exponent
        if isinstance(exponent, int) and -exponent > scale:
            raise unsupported(f"a value with more decimals than numeric({precision},{scale}) keeps (the real server "
                              "rounds it; the SQLite fallback does not round)")
        if abs(d) >= Decimal(10) ** (precision - scale):
            raise SqlError(ErrorKind.OUT_OF_RANGE, f"Out of range value for column '{column}' at row 1" if mysql
                           else f"numeric field overflow: a field with precision {precision}, scale {scale} must "
                                f"round to an absolute value less than 10^{precision - scale}")


def _check_time(value: str, t: SqlType, mysql: bool, column: str) -> None:
    try:
        if t is SqlType.DATE:
            ok = date.fromisoformat(value).isoformat() == value
        else:
            parsed = datetime.fromisoformat(value)
            ok = canonical_timestamp(parsed) == value and (parsed.tzinfo is not None) == (t is SqlType.TIMESTAMPTZ)
    except ValueError:
        raise SqlError(ErrorKind.INVALID_TEXT, f"Incorrect datetime value: '{value}' for column '{column}' at row 1"
                       if mysql else f'invalid input syntax for type {t.value}: "{value}"') from None
    if not ok:
        form = "YYYY-MM-DD" if t is SqlType.DATE else "YYYY-MM-DD HH:MM:SS[.ffffff]" + (
            "+00:00" if t is SqlType.TIMESTAMPTZ else "")
        raise unsupported(f"the {t.value} text {value!r} (the SQLite fallback keeps times as text: write them as "
                          f"'{form}' or send them as typed parameters)")


def pg_cast(value: Any, declared: str) -> Any:
    """``value::declared`` as PostgreSQL converts it (``int4in``, ``boolin``, ``float8in``, ``date_in``,
    ``varchar`` truncation on an explicit cast), as a SQLite value; raises :class:`SqlError`."""
    if value is None:
        return None
    t, mods = parse_type(declared)
    if t is None:
        raise unsupported(f"type {declared.lower()}")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if t in _INT_RANGES:
        if isinstance(value, float):
            value = round(value)  # float8 → int4 rounds half to even (rint)
        elif isinstance(value, str):
            text = value.strip()
            if not re.fullmatch(r"[+-]?\d+", text):
                raise SqlError(ErrorKind.INVALID_TEXT, f'invalid input syntax for type {t.value}: "{value}"')
            value = int(text)
        if not -_INT_RANGES[t] <= value < _INT_RANGES[t]:
            raise SqlError(ErrorKind.OUT_OF_RANGE, f"{t.value} out of range")
        return value
    if t is SqlType.BOOL:
        if isinstance(value, int):
            return int(value != 0)
        low = value.strip().lower()
        if low in ("t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"):
            return 1
        if low in ("f", "fa", "fal", "fals", "false", "n", "no", "of", "off", "0"):
            return 0
        raise SqlError(ErrorKind.INVALID_TEXT, f'invalid input syntax for type boolean: "{value}"')
    if t in (SqlType.FLOAT4, SqlType.FLOAT8, SqlType.NUMERIC):
        if isinstance(value, str):
            try:
                number = Decimal(value.strip())
            except InvalidOperation:
                raise SqlError(ErrorKind.INVALID_TEXT, f'invalid input syntax for type {t.value}: "{value}"') from None
            if t is SqlType.NUMERIC:
                return str(number)  # exact; arithmetic on it is refused (binary floating point)
            return float(number)
        return float(value) if t is not SqlType.NUMERIC else value
    if t in (SqlType.TIMESTAMP, SqlType.TIMESTAMPTZ, SqlType.DATE):
        text = str(value).strip()
        try:
            if t is SqlType.DATE:
                return date.fromisoformat(text[:10]).isoformat()
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise SqlError(ErrorKind.INVALID_TEXT, f'invalid input syntax for type {t.value}: "{value}"') from None
        if t is SqlType.TIMESTAMPTZ and parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)  # the session's TimeZone is UTC
        if t is SqlType.TIMESTAMP:
            parsed = parsed.replace(tzinfo=None)
        return canonical_timestamp(parsed)
    text = value if isinstance(value, str) else ("true" if value is True else str(value))
    if t in (SqlType.VARCHAR, SqlType.CHAR) and mods:
        text = text[: mods[0]]  # an explicit cast truncates (PostgreSQL's varchar())
    return text


def coerce(value: Any, t: SqlType, dialect: Dialect = Dialect.POSTGRES) -> Value:
    """``value`` (from SQLite or a client) as a Python value of column type ``t``; raises
    :class:`SqlError` (INVALID_TEXT) when it is not one."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    try:
        if t is SqlType.BOOL:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("t", "true", "1", "yes", "on", "y"):
                    return True
                if low in ("f", "false", "0", "no", "off", "n"):
                    return False
                raise ValueError(value)
            return bool(value)
        if t in (SqlType.INT2, SqlType.INT4, SqlType.INT8):
            if isinstance(value, float) and not value.is_integer():
                return value  # SQLite's arithmetic gave a fraction: say so rather than truncate
            if isinstance(value, str) and not re.fullmatch(r"\s*[+-]?\d+\s*", value):
                raise ValueError(value)
            number = int(value)
            if not -_INT_RANGES[t] <= number < _INT_RANGES[t]:
                raise SqlError(ErrorKind.OUT_OF_RANGE, f"{t.value} out of range")
            return number
        if t in (SqlType.FLOAT4, SqlType.FLOAT8):
            return float(value)
        if t is SqlType.NUMERIC:
            return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value).strip())
        if t is SqlType.TIMESTAMP or t is SqlType.TIMESTAMPTZ:
            if isinstance(value, datetime):
                return value
            parsed = datetime.fromisoformat(str(value))
            return parsed.replace(tzinfo=UTC) if t is SqlType.TIMESTAMPTZ and parsed.tzinfo is None else parsed
        if t is SqlType.DATE:
            return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
    except (ValueError, TypeError, InvalidOperation, OverflowError):
        kind = "boolean" if t is SqlType.BOOL else t.value
        raise SqlError(ErrorKind.INVALID_TEXT, f'invalid input syntax for type {kind}: "{value}"') from None
    if isinstance(value, bool):
        return ("1" if value else "0") if dialect is Dialect.MYSQL else ("true" if value else "false")
    return str(value) if not isinstance(value, str) else value


def value_type(values: list[Any]) -> SqlType:
    kinds = {type(v) for v in values if v is not None}
    if kinds and kinds <= {int}:
        return SqlType.INT8
    if kinds and kinds <= {int, float}:
        return SqlType.FLOAT8
    return SqlType.TEXT
