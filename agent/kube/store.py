"""The emulated Kubernetes API's object store: SQLite rows, one resourceVersion counter, watches.

What etcd gives the real API server (``k8s.io/apiserver/pkg/storage``), at the scale of one agent:

* every write gets the next cluster-wide ``resourceVersion`` (an integer, sent as a string);
* objects are kept in ``<data_dir>/kube/<cluster>.sqlite`` (one row per object, the JSON body), so
  they survive an agent restart, as the issue asks;
* a watch (``?watch=true&resourceVersion=N``) gets every change after ``N``: changes are also kept in
  a bounded in-memory window; a version older than the window is answered ``410 Gone``
  (``Expired``, "too old resource version"), as the watch cache does, and the client relists.

Writes are small synchronous SQLite statements (WAL, ``synchronous=NORMAL``) on the event loop's
thread: one agent's objects are few, and each statement takes microseconds.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpemu.errors import PeerFault

Obj = dict[str, Any]

#: How many past changes a watch can resume from.
WINDOW = 2000
#: Changes queued for one slow watcher before it is ended (the client relists and watches again).
MAX_QUEUED = 1000


@dataclass(frozen=True)
class Event:
    type: str  # ADDED | MODIFIED | DELETED
    key: str  # resource type key (pods, deployments.apps)
    namespace: str
    rv: int
    obj: Obj


class TooOld(PeerFault):
    """The resourceVersion a watch asked for is older than the change window."""


class Watch:
    """One watcher's queue of events (``None`` ends it: the store closed, or it fell behind)."""

    def __init__(self, store: Store, key: str, namespace: str) -> None:
        self.store, self.key, self.namespace = store, key, namespace
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def wants(self, event: Event) -> bool:
        return event.key == self.key and (not self.namespace or event.namespace == self.namespace)

    def close(self) -> None:
        self.store.watches.discard(self)


class Store:
    def __init__(self, path: Path | None) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path) if path is not None else ":memory:", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS objects (key TEXT NOT NULL, namespace TEXT NOT NULL, "
                        "name TEXT NOT NULL, rv INTEGER NOT NULL, body TEXT NOT NULL, "
                        "PRIMARY KEY (key, namespace, name))")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
        row = self.db.execute("SELECT v FROM meta WHERE k = 'rv'").fetchone()
        self.rv = int(row[0]) if row else 0
        self.events: collections.deque[Event] = collections.deque(maxlen=WINDOW)
        #: The oldest version a watch can start from without missing a change.
        self.window_start = self.rv
        self.watches: set[Watch] = set()

    def close(self) -> None:
        for w in list(self.watches):
            w.queue.put_nowait(None)
        self.watches.clear()
        self.db.close()

    # -- reads ------------------------------------------------------------------------------------

    def get(self, key: str, namespace: str, name: str) -> Obj | None:
        row = self.db.execute("SELECT body FROM objects WHERE key=? AND namespace=? AND name=?",
                              (key, namespace, name)).fetchone()
        return json.loads(row[0]) if row else None

    def list(self, key: str, namespace: str = "") -> list[Obj]:
        if namespace:
            rows = self.db.execute("SELECT body FROM objects WHERE key=? AND namespace=? ORDER BY namespace, name",
                                   (key, namespace))
        else:
            rows = self.db.execute("SELECT body FROM objects WHERE key=? ORDER BY namespace, name", (key,))
        return [json.loads(r[0]) for r in rows]

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM objects").fetchone()[0])

    # -- writes -----------------------------------------------------------------------------------

    def _next_rv(self) -> int:
        self.rv += 1
        self.db.execute("INSERT INTO meta (k, v) VALUES ('rv', ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                        (self.rv,))
        return self.rv

    def put(self, key: str, obj: Obj, event_type: str) -> Obj:
        """Store ``obj`` (create or replace) with the next resourceVersion and tell the watchers."""
        meta = obj["metadata"]
        namespace = meta.get("namespace", "")
        self.db.execute("BEGIN")
        try:
            rv = self._next_rv()
            meta["resourceVersion"] = str(rv)
            self.db.execute("INSERT INTO objects (key, namespace, name, rv, body) VALUES (?, ?, ?, ?, ?) "
                            "ON CONFLICT(key, namespace, name) DO UPDATE SET rv = excluded.rv, body = excluded.body",
                            (key, namespace, meta["name"], rv, json.dumps(obj, separators=(",", ":"))))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            self.rv -= 1
            raise
        self._publish(Event(event_type, key, namespace, rv, obj))
        return obj

    def delete(self, key: str, namespace: str, name: str) -> Obj | None:
        obj = self.get(key, namespace, name)
        if obj is None:
            return None
        self.db.execute("BEGIN")
        try:
            rv = self._next_rv()
            self.db.execute("DELETE FROM objects WHERE key=? AND namespace=? AND name=?", (key, namespace, name))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            self.rv -= 1
            raise
        obj["metadata"]["resourceVersion"] = str(rv)
        self._publish(Event("DELETED", key, namespace, rv, obj))
        return obj

    def _publish(self, event: Event) -> None:
        if len(self.events) == self.events.maxlen:
            self.window_start = self.events[0].rv
        self.events.append(event)
        for w in list(self.watches):
            if w.wants(event):
                if w.queue.qsize() >= MAX_QUEUED:
                    self.watches.discard(w)
                    w.queue.put_nowait(None)
                else:
                    w.queue.put_nowait(event)

    # -- watches ----------------------------------------------------------------------------------

    def watch(self, key: str, namespace: str, since: int | None) -> Watch:
        """A watch of ``key`` (in ``namespace``; all when empty) from after version ``since``
        (``None``: from now). Raises :class:`TooOld`."""
        w = Watch(self, key, namespace)
        if since is not None and since < self.rv:
            if since < self.window_start:
                raise TooOld(f"too old resource version: {since} ({self.window_start})")
            for event in self._since(since):
                if w.wants(event):
                    w.queue.put_nowait(event)
        self.watches.add(w)
        return w

    def _since(self, rv: int) -> Iterator[Event]:
        return (e for e in self.events if e.rv > rv)
