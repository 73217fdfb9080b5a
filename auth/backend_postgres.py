"""The PostgreSQL backend: the same interface on a real server, for several Auth instances (glue).

Teleport's ``storage: type: postgresql`` keeps its key-value items in PostgreSQL too (it reads
changes through logical replication with wal2json). tpemu's own choices: one table
``tpemu_kv`` (key ``COLLATE "C"`` so that range scans follow byte order), revisions from a
sequence, and change events through ``LISTEN``/``NOTIFY``: every write transaction notifies
channel ``tpemu_kv``, and every Auth instance — the writer included — turns the notifications
into watch events, so all of them see every change, in commit order.

The driver is psycopg 3 (async), an optional dependency: ``pip install 'tpemu[postgres]'``.
Operations on the shared connection are serialised by a lock (a transaction must not interleave
with another coroutine's); a lost connection is re-opened on the next operation, and watchers are
closed (they must re-read, as after Teleport's ``OpInit``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tpemu.auth.backend import (
    AlreadyExists,
    Backend,
    BackendError,
    CompareFailed,
    Item,
    NotFound,
    check_key,
    check_value,
    range_end,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
CHANNEL = "tpemu_kv"
#: NOTIFY payloads are limited to 8000 bytes; larger values are re-read by the listener.
_INLINE_VALUE = 5000

_SCHEMA = [
    'CREATE TABLE IF NOT EXISTS tpemu_kv (key TEXT COLLATE "C" PRIMARY KEY, value BYTEA NOT NULL, '
    "expires DOUBLE PRECISION, revision BIGINT NOT NULL)",
    "CREATE SEQUENCE IF NOT EXISTS tpemu_kv_revision",
    "CREATE INDEX IF NOT EXISTS tpemu_kv_expires ON tpemu_kv (expires) WHERE expires IS NOT NULL",
]
_LIVE = "(expires IS NULL OR expires > %s)"


class PostgresBackend(Backend):
    """A :class:`~tpemu.auth.backend.Backend` in a PostgreSQL database."""

    def __init__(self, conn_string: str) -> None:
        super().__init__()
        self.conn_string = conn_string
        self._conn: Any = None
        self._listen_conn: Any = None
        self._listener: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closing = False

    @classmethod
    async def open(cls, conn_string: str) -> PostgresBackend:
        """Connect, create the schema if needed, start listening for changes."""
        backend = cls(conn_string)
        await backend._connect()
        async with backend._lock:
            for statement in _SCHEMA:
                # Concurrent first starts of several Auth instances may race on CREATE … IF NOT EXISTS.
                try:
                    async with backend._conn.transaction():
                        await backend._conn.execute(statement)
                except Exception as exc:
                    if "already exists" not in str(exc):
                        raise
        await backend._start_listener()
        return backend

    async def _connect(self) -> None:
        try:
            import psycopg
        except ImportError:
            raise BackendError("the PostgreSQL backend needs psycopg 3: pip install 'tpemu[postgres]'") from None
        try:
            self._conn = await psycopg.AsyncConnection.connect(self.conn_string, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise BackendError(f"cannot connect to PostgreSQL ({_redact(self.conn_string)}): {exc}") from None

    async def _start_listener(self) -> None:
        import psycopg

        self._listen_conn = await psycopg.AsyncConnection.connect(self.conn_string, autocommit=True,
                                                                  connect_timeout=10)
        await self._listen_conn.execute(f"LISTEN {CHANNEL}")
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        import psycopg

        delay = 0.5
        while True:
            reason = "connection closed"
            try:
                async for note in self._listen_conn.notifies():
                    delay = 0.5
                    await self._on_notify(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = str(exc) or type(exc).__name__
            if self._closing:
                return
            # Events may have been missed: watchers must start over (Teleport's OpInit again).
            log.warning("backend: lost the PostgreSQL change feed (%s); closing watchers, reconnecting", reason)
            self.fanout.close_all("backend change feed lost")
            while not self._closing:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                with contextlib.suppress(Exception):
                    await self._listen_conn.close()
                try:
                    self._listen_conn = await psycopg.AsyncConnection.connect(self.conn_string, autocommit=True,
                                                                              connect_timeout=10)
                    await self._listen_conn.execute(f"LISTEN {CHANNEL}")
                    log.info("backend: PostgreSQL change feed re-established")
                    break
                except psycopg.Error as exc:
                    log.warning("backend: cannot reconnect the change feed yet: %s", exc)

    async def _on_notify(self, payload: str) -> None:
        try:
            data = json.loads(payload)
            key, rev = str(data["key"]), int(data["rev"])
        except (ValueError, KeyError, TypeError):
            log.warning("backend: ignoring a malformed change notification")
            return
        if data.get("op") == "delete":
            self._deleted(Item(key, b"", None, rev))
            return
        if "value" in data:
            self._written(Item(key, base64.b64decode(data["value"]), data.get("expires"), rev))
            return
        try:
            self._written(await self.get(key))
        except NotFound:
            pass  # deleted again meanwhile; its delete notification follows

    async def _op(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        import psycopg

        async with self._lock:
            if self._conn is None or self._conn.closed:
                await self._connect()
            try:
                return await fn(self._conn)
            except psycopg.OperationalError as exc:
                with contextlib.suppress(Exception):
                    await self._conn.close()
                raise BackendError(f"PostgreSQL backend: {exc}") from None

    async def _notify(self, conn: Any, op: str, item: Item) -> None:
        data: dict[str, Any] = {"op": op, "key": item.key, "rev": item.revision}
        if op == "put":
            data["expires"] = item.expires
            if len(item.value) <= _INLINE_VALUE:
                data["value"] = base64.b64encode(item.value).decode()
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps(data)))

    # -- operations --------------------------------------------------------------------------

    async def get(self, key: str) -> Item:
        now = self.clock()

        async def op(conn: Any) -> Item:
            cur = await conn.execute(f"SELECT key, value, expires, revision FROM tpemu_kv WHERE key = %s AND {_LIVE}",
                                     (key, now))
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"key {key!r} is not found")
            return Item(row[0], bytes(row[1]), row[2], row[3])

        return await self._op(op)

    async def _write(self, key: str, value: bytes, expires: float | None, mode: str,
                     expected: bytes | None = None) -> Item:
        check_key(key)
        check_value(value)
        now = self.clock()

        async def op(conn: Any) -> Item:
            async with conn.transaction():
                if mode in ("update", "cas"):
                    cur = await conn.execute(f"SELECT value FROM tpemu_kv WHERE key = %s AND {_LIVE} FOR UPDATE",
                                             (key, now))
                    row = await cur.fetchone()
                    if row is None:
                        raise NotFound(f"key {key!r} is not found")
                    if mode == "cas" and bytes(row[0]) != expected:
                        raise CompareFailed(f"key {key!r}: the value has changed")
                cur = await conn.execute("SELECT nextval('tpemu_kv_revision')")
                rev = (await cur.fetchone())[0]
                sql = ("INSERT INTO tpemu_kv (key, value, expires, revision) VALUES (%s, %s, %s, %s) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires, "
                       "revision = excluded.revision")
                args: tuple[Any, ...] = (key, value, expires, rev)
                if mode == "create":
                    sql += " WHERE tpemu_kv.expires IS NOT NULL AND tpemu_kv.expires <= %s"
                    args += (now,)
                cur = await conn.execute(sql, args)
                if cur.rowcount == 0:
                    raise AlreadyExists(f"key {key!r} already exists")
                item = Item(key, value, expires, rev)
                await self._notify(conn, "put", item)
                return item

        return await self._op(op)

    async def create(self, key: str, value: bytes, expires: float | None = None) -> Item:
        return await self._write(key, value, expires, "create")

    async def put(self, key: str, value: bytes, expires: float | None = None) -> Item:
        return await self._write(key, value, expires, "put")

    async def update(self, key: str, value: bytes, expires: float | None = None) -> Item:
        return await self._write(key, value, expires, "update")

    async def compare_and_swap(self, key: str, expected: bytes, value: bytes,
                               expires: float | None = None) -> Item:
        return await self._write(key, value, expires, "cas", expected)

    async def _delete_where(self, where: str, args: tuple[Any, ...]) -> list[Item]:
        async def op(conn: Any) -> list[Item]:
            async with conn.transaction():
                cur = await conn.execute(f"DELETE FROM tpemu_kv WHERE {where} RETURNING key, value, expires, revision",
                                         args)
                gone = [Item(r[0], bytes(r[1]), r[2], r[3]) for r in await cur.fetchall()]
                for item in gone:
                    await self._notify(conn, "delete", item)
                return gone

        return await self._op(op)

    async def delete(self, key: str) -> None:
        if not await self._delete_where(f"key = %s AND {_LIVE}", (key, self.clock())):
            raise NotFound(f"key {key!r} is not found")

    async def get_range(self, prefix: str, limit: int = 0) -> list[Item]:
        now = self.clock()

        async def op(conn: Any) -> list[Item]:
            cur = await conn.execute(
                f"SELECT key, value, expires, revision FROM tpemu_kv WHERE key >= %s AND key < %s AND {_LIVE} "
                "ORDER BY key" + (" LIMIT %s" if limit > 0 else ""),
                (prefix, range_end(prefix), now, *((limit,) if limit > 0 else ())))
            return [Item(r[0], bytes(r[1]), r[2], r[3]) for r in await cur.fetchall()]

        return await self._op(op)

    async def delete_range(self, prefix: str) -> int:
        gone = await self._delete_where(f"key >= %s AND key < %s AND {_LIVE}",
                                        (prefix, range_end(prefix), self.clock()))
        return len(gone)

    async def sweep(self) -> int:
        # Events come from the notifications, not from the return value (see _sweep).
        return len(await self._sweep(self.clock()))

    async def _sweep(self, now: float) -> list[Item]:
        return await self._delete_where("expires IS NOT NULL AND expires <= %s", (now,))

    async def _close(self) -> None:
        self._closing = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        for conn in (self._conn, self._listen_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()


def _redact(conn_string: str) -> str:
    """A connection string without its password, for messages."""
    import re

    text = re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", conn_string)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", text)
