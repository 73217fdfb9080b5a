"""PostgreSQL's text and binary value formats of the built-in types tpemu's emulated server sends (pure).

Spec: the type output/receive functions of PostgreSQL's src/backend/utils/adt (text forms in
"Data Types"; binary forms are the ``*send``/``*recv`` functions, all big-endian): bool,
int2/4/8, float4/8, numeric, text, varchar, bpchar, name, date, timestamp, timestamptz. The
messages that carry them (RowDescription, DataRow, Bind) are framed by :mod:`tpemu.wire.postgres`.
"""

import math
import struct
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation, localcontext

from tpemu.wire.postgres import PostgresError

OID_BOOL = 16
OID_NAME = 19
OID_INT8 = 20
OID_INT2 = 21
OID_INT4 = 23
OID_TEXT = 25
OID_FLOAT4 = 700
OID_FLOAT8 = 701
OID_UNKNOWN = 705
OID_BPCHAR = 1042
OID_VARCHAR = 1043
OID_DATE = 1082
OID_TIMESTAMP = 1114
OID_TIMESTAMPTZ = 1184
OID_NUMERIC = 1700

#: typlen of each supported type (RowDescription's type size; -1 = variable length).
TYPE_SIZES = {OID_BOOL: 1, OID_NAME: 64, OID_INT8: 8, OID_INT2: 2, OID_INT4: 4, OID_TEXT: -1, OID_FLOAT4: 4,
              OID_FLOAT8: 8, OID_UNKNOWN: -2, OID_BPCHAR: -1, OID_VARCHAR: -1, OID_DATE: 4, OID_TIMESTAMP: 8,
              OID_TIMESTAMPTZ: 8, OID_NUMERIC: -1}

_PG_EPOCH = datetime(2000, 1, 1)
_PG_EPOCH_TZ = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_DATE = date(2000, 1, 1)
_TEXT_OIDS = (OID_TEXT, OID_VARCHAR, OID_BPCHAR, OID_NAME, OID_UNKNOWN)
_INT_RANGES = {OID_INT2: 16, OID_INT4: 32, OID_INT8: 64}

PgValue = bool | int | float | Decimal | str | datetime | date | None


def format_float(v: float) -> str:
    """float8out with extra_float_digits >= 1 (the default since PG 12): shortest round-trip."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    s = repr(v)
    return s[:-2] if s.endswith(".0") else s


def encode_text_value(oid: int, value: PgValue) -> bytes:
    """The text output form of ``value`` as type ``oid`` (TimeZone UTC, DateStyle ISO)."""
    if value is None:
        raise ValueError("NULL has no text form (send it as a NULL field)")
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, float):
        return format_float(value).encode()
    if isinstance(value, datetime):
        if oid == OID_TIMESTAMPTZ and value.tzinfo is not None:
            value = value.astimezone(UTC)
        s = value.strftime("%Y-%m-%d %H:%M:%S")
        if value.microsecond:
            s += f".{value.microsecond:06d}".rstrip("0")
        if oid == OID_TIMESTAMPTZ:
            s += "+00"
        return s.encode()
    if isinstance(value, date):
        return value.isoformat().encode()
    if isinstance(value, Decimal):
        return format(value, "f").encode()  # never exponent notation (str(Decimal("1E+3")) is "1E+3")
    return str(value).encode("utf-8")


def encode_binary_value(oid: int, value: PgValue) -> bytes:
    """The binary (``*send``) form of ``value`` as type ``oid``; ``ValueError`` if it does not fit."""
    if value is None:
        raise ValueError("NULL has no binary form (send it as a NULL field)")
    if oid == OID_BOOL:
        return b"\x01" if value else b"\x00"
    if oid in _INT_RANGES:
        if not isinstance(value, int | Decimal | float):
            raise ValueError(f"{value!r} is not an integer")
        return int(value).to_bytes(_INT_RANGES[oid] // 8, "big", signed=True)
    if oid == OID_FLOAT8:
        return struct.pack(">d", float(value))  # type: ignore[arg-type]
    if oid == OID_FLOAT4:
        return struct.pack(">f", float(value))  # type: ignore[arg-type]
    if oid == OID_NUMERIC:
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise ValueError(f"{value!r} is not a number")
        return _numeric_send(Decimal(value) if not isinstance(value, float) else Decimal(repr(value)))
    if oid in (OID_TIMESTAMP, OID_TIMESTAMPTZ):
        if not isinstance(value, datetime):
            raise ValueError(f"{value!r} is not a timestamp")
        if oid == OID_TIMESTAMPTZ:
            aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
            delta = aware - _PG_EPOCH_TZ
        else:
            delta = value.replace(tzinfo=None) - _PG_EPOCH
        micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
        return micros.to_bytes(8, "big", signed=True)
    if oid == OID_DATE:
        if not isinstance(value, date):
            raise ValueError(f"{value!r} is not a date")
        d = value.date() if isinstance(value, datetime) else value
        return (d - _PG_EPOCH_DATE).days.to_bytes(4, "big", signed=True)
    return encode_text_value(oid, value)  # text-like types: binary form = UTF-8 bytes


def decode_binary_value(oid: int, data: bytes) -> PgValue:
    """Decode a binary-format parameter; raises :class:`PostgresError` if malformed."""
    n = len(data)
    if oid == OID_BOOL:
        if n != 1:
            raise PostgresError(f"binary bool has {n} bytes")
        return data != b"\x00"
    if oid in _INT_RANGES:
        if n != _INT_RANGES[oid] // 8:
            raise PostgresError(f"binary int{_INT_RANGES[oid] // 8} has {n} bytes")
        return int.from_bytes(data, "big", signed=True)
    if oid in (OID_FLOAT8, OID_FLOAT4):
        want = 8 if oid == OID_FLOAT8 else 4
        if n != want:
            raise PostgresError(f"binary float{want} has {n} bytes")
        return float(struct.unpack(">d" if want == 8 else ">f", data)[0])
    if oid == OID_NUMERIC:
        return _numeric_recv(data)
    if oid in (OID_TIMESTAMP, OID_TIMESTAMPTZ):
        if n != 8:
            raise PostgresError(f"binary timestamp has {n} bytes")
        micros = int.from_bytes(data, "big", signed=True)
        try:
            base = _PG_EPOCH_TZ if oid == OID_TIMESTAMPTZ else _PG_EPOCH
            return base + timedelta(microseconds=micros)
        except OverflowError:
            raise PostgresError("binary timestamp is out of range") from None
    if oid == OID_DATE:
        if n != 4:
            raise PostgresError(f"binary date has {n} bytes")
        try:
            return _PG_EPOCH_DATE + timedelta(days=int.from_bytes(data, "big", signed=True))
        except OverflowError:
            raise PostgresError("binary date is out of range") from None
    if oid in _TEXT_OIDS or oid == 0:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise PostgresError("binary text parameter is not valid UTF-8") from None
    raise PostgresError(f"binary format for type oid {oid} is not supported")


_NUMERIC_POS, _NUMERIC_NEG, _NUMERIC_NAN = 0x0000, 0x4000, 0xC000
_NUMERIC_PINF, _NUMERIC_NINF = 0xD000, 0xF000
#: numeric_recv refuses more digits than NUMERIC_MAX_PRECISION allows; so do we.
_NUMERIC_MAX_DIGITS = 4096


def _numeric_send(d: Decimal) -> bytes:
    """numeric_send: ndigits, weight, sign, dscale (int16 each), then base-10000 digits."""
    if d.is_nan():
        return struct.pack(">hhHh", 0, 0, _NUMERIC_NAN, 0)
    if d.is_infinite():
        return struct.pack(">hhHh", 0, 0, _NUMERIC_PINF if d > 0 else _NUMERIC_NINF, 0)
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    s = "".join(map(str, digits))
    dscale = max(0, -exp)
    if exp >= 0:
        int_part, frac_part = s + "0" * exp, ""
    elif len(s) > -exp:
        int_part, frac_part = s[:exp], s[exp:]
    else:
        int_part, frac_part = "", "0" * (-exp - len(s)) + s
    int_part = int_part.lstrip("0")
    int_part = "0" * (-len(int_part) % 4) + int_part
    frac_part += "0" * (-len(frac_part) % 4)
    groups = [int(int_part[i : i + 4]) for i in range(0, len(int_part), 4)]
    groups += [int(frac_part[i : i + 4]) for i in range(0, len(frac_part), 4)]
    weight = len(int_part) // 4 - 1
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    head = struct.pack(">hhHh", len(groups), weight, _NUMERIC_NEG if sign else _NUMERIC_POS, dscale)
    return head + struct.pack(f">{len(groups)}H", *groups)


def _numeric_recv(data: bytes) -> Decimal:
    if len(data) < 8:
        raise PostgresError("binary numeric is shorter than its header")
    ndigits, weight, sign, dscale = struct.unpack(">hhHh", data[:8])
    if ndigits < 0 or ndigits > _NUMERIC_MAX_DIGITS or len(data) != 8 + 2 * ndigits or dscale < 0:
        raise PostgresError("binary numeric has an invalid header")
    if sign == _NUMERIC_NAN:
        return Decimal("NaN")
    if sign in (_NUMERIC_PINF, _NUMERIC_NINF):
        return Decimal("Infinity") if sign == _NUMERIC_PINF else Decimal("-Infinity")
    if sign not in (_NUMERIC_POS, _NUMERIC_NEG):
        raise PostgresError(f"binary numeric has invalid sign {sign:#x}")
    groups = struct.unpack(f">{ndigits}H", data[8:])
    if any(g > 9999 for g in groups):
        raise PostgresError("binary numeric has a digit above 9999")
    n = 0
    for g in groups:
        n = n * 10000 + g
    exp = 4 * (weight - ndigits + 1)
    with localcontext() as ctx:
        ctx.prec = 4 * _NUMERIC_MAX_DIGITS + 100
        ctx.Emax, ctx.Emin = 1_000_000, -1_000_000
        value = Decimal(-n if sign == _NUMERIC_NEG else n).scaleb(exp)
        try:
            return value.quantize(Decimal(1).scaleb(-dscale))
        except InvalidOperation:
            raise PostgresError("binary numeric does not fit its scale") from None
