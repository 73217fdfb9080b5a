"""The embedded backend: one SQLite file in ``data_dir`` (glue over the stdlib ``sqlite3``).

Teleport's default backend for a single Auth Service is also SQLite (``storage: type: sqlite``,
file ``<data_dir>/backend/sqlite.db``). Durability: WAL journal with ``synchronous=FULL``, every
write one ``BEGIN IMMEDIATE`` transaction, so a write that returned survives a crash of the
process (and of the machine), and a crash mid-write rolls back. SQLite calls block, so they run
on one dedicated thread, in the order they were made; the event loop only waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from tpemu.auth.backend import (
    AlreadyExists,
    Backend,
    CompareFailed,
    Item,
    NotFound,
    check_key,
    check_value,
    range_end,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires REAL,
    revision INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0);
"""
_LIVE = "(expires IS NULL OR expires > ?)"


class SQLiteBackend(Backend):
    """A :class:`~tpemu.auth.backend.Backend` in one SQLite database file."""

    def __init__(self, path: Path, sync: str = "FULL") -> None:
        super().__init__()
        if sync.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"storage.sync must be OFF, NORMAL, FULL or EXTRA, got {sync!r}")
        self.path = path
        self._sync = sync.upper()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tpemu-sqlite")
        self._db: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: Path, sync: str = "FULL") -> SQLiteBackend:
        """Open (creating if needed) the database at ``path``."""
        backend = cls(path, sync)
        await backend._run(backend._open)
        return backend

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The file holds the CAs' private keys: 0600 from its first byte (sqlite3 would create it
        # with the umask, 0644), and tightened if an older tpemu left it wider. SQLite gives its
        # -wal and -shm files the database file's mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{self.path}{suffix}", 0o600)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._sync}")
        db.executescript(_SCHEMA)
        self._db = db

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        if db is None:
            raise RuntimeError("the SQLite backend is closed")
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    @staticmethod
    def _next_revision(db: sqlite3.Connection) -> int:
        row = db.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value").fetchone()
        return int(row[0])

    # -- operations --------------------------------------------------------------------------

    async def get(self, key: str) -> Item:
        now = self.clock()

        def op() -> Item:
            assert self._db is not None
            row = self._db.execute(f"SELECT key, value, expires, revision FROM kv WHERE key = ? AND {_LIVE}",
                                   (key, now)).fetchone()
            if row is None:
                raise NotFound(f"key {key!r} is not found")
            return Item(row[0], bytes(row[1]), row[2], row[3])

        return await self._run(op)

    async def create(self, key: str, value: bytes, expires: float | None = None) -> Item:
        check_key(key)
        check_value(value)
        now = self.clock()

        def op(db: sqlite3.Connection) -> Item:
            rev = self._next_revision(db)
            cur = db.execute(
                "INSERT INTO kv (key, value, expires, revision) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires, "
                "revision = excluded.revision WHERE kv.expires IS NOT NULL AND kv.expires <= ?",
                (key, value, expires, rev, now))
            if cur.rowcount == 0:
                raise AlreadyExists(f"key {key!r} already exists")
            return Item(key, value, expires, rev)

        item = await self._run(lambda: self._tx(op))
        self._written(item)
        return item

    async def put(self, key: str, value: bytes, expires: float | None = None) -> Item:
        check_key(key)
        check_value(value)

        def op(db: sqlite3.Connection) -> Item:
            rev = self._next_revision(db)
            db.execute("INSERT INTO kv (key, value, expires, revision) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires, "
                       "revision = excluded.revision", (key, value, expires, rev))
            return Item(key, value, expires, rev)

        item = await self._run(lambda: self._tx(op))
        self._written(item)
        return item

    async def update(self, key: str, value: bytes, expires: float | None = None) -> Item:
        check_value(value)
        now = self.clock()

        def op(db: sqlite3.Connection) -> Item:
            rev = self._next_revision(db)
            cur = db.execute(f"UPDATE kv SET value = ?, expires = ?, revision = ? WHERE key = ? AND {_LIVE}",
                             (value, expires, rev, key, now))
            if cur.rowcount == 0:
                raise NotFound(f"key {key!r} is not found")
            return Item(key, value, expires, rev)

        item = await self._run(lambda: self._tx(op))
        self._written(item)
        return item

    async def compare_and_swap(self, key: str, expected: bytes, value: bytes,
                               expires: float | None = None) -> Item:
        check_value(value)
        now = self.clock()

        def op(db: sqlite3.Connection) -> Item:
            row = db.execute(f"SELECT value FROM kv WHERE key = ? AND {_LIVE}", (key, now)).fetchone()
            if row is None:
                raise NotFound(f"key {key!r} is not found")
            if bytes(row[0]) != expected:
                raise CompareFailed(f"key {key!r}: the value has changed")
            rev = self._next_revision(db)
            db.execute("UPDATE kv SET value = ?, expires = ?, revision = ? WHERE key = ?", (value, expires, rev, key))
            return Item(key, value, expires, rev)

        item = await self._run(lambda: self._tx(op))
        self._written(item)
        return item

    async def delete(self, key: str) -> None:
        now = self.clock()

        def op(db: sqlite3.Connection) -> Item:
            row = db.execute(f"DELETE FROM kv WHERE key = ? AND {_LIVE} RETURNING revision", (key, now)).fetchone()
            if row is None:
                raise NotFound(f"key {key!r} is not found")
            return Item(key, b"", None, row[0])

        self._deleted(await self._run(lambda: self._tx(op)))

    async def get_range(self, prefix: str, limit: int = 0) -> list[Item]:
        now = self.clock()

        def op() -> list[Item]:
            assert self._db is not None
            rows = self._db.execute(
                f"SELECT key, value, expires, revision FROM kv WHERE key >= ? AND key < ? AND {_LIVE} "
                "ORDER BY key LIMIT ?", (prefix, range_end(prefix), now, limit if limit > 0 else -1)).fetchall()
            return [Item(r[0], bytes(r[1]), r[2], r[3]) for r in rows]

        return await self._run(op)

    async def delete_range(self, prefix: str) -> int:
        now = self.clock()

        def op(db: sqlite3.Connection) -> list[Item]:
            rows = db.execute(f"DELETE FROM kv WHERE key >= ? AND key < ? AND {_LIVE} RETURNING key, revision",
                              (prefix, range_end(prefix), now)).fetchall()
            return [Item(r[0], b"", None, r[1]) for r in rows]

        gone = await self._run(lambda: self._tx(op))
        for item in gone:
            self._deleted(item)
        return len(gone)

    async def _sweep(self, now: float) -> list[Item]:
        def op(db: sqlite3.Connection) -> list[Item]:
            rows = db.execute("DELETE FROM kv WHERE expires IS NOT NULL AND expires <= ? "
                              "RETURNING key, value, expires, revision", (now,)).fetchall()
            return [Item(r[0], bytes(r[1]), r[2], r[3]) for r in rows]

        return await self._run(lambda: self._tx(op))

    async def _close(self) -> None:
        def op() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(op)
        self._pool.shutdown(wait=True)
