"""The embedded MongoDB engine: ``nx-27017``, a MongoDB wire-protocol server on SQLite (glue).

nx-27017 (PyPI, pure Python: the neosqlite project) answers OP_MSG as mongod does — indexes
(unique ones refuse duplicates with ``E11000``), aggregation pipelines, cursors — and stores one
SQLite file per database under ``--data-dir``. It is run with this Python as a supervised child
(:mod:`tpemu.agent.engines.supervisor`).

It has no unix socket and no authentication, so it listens on 127.0.0.1 with port 0 (the port it
got is read from its log line ``Listening on 127.0.0.1:<port>``); a local process could reach
it, which is acceptable for an emulator's scratch data and said here so nobody relies on it.
The Database Service still checks every caller's certificate before a byte reaches it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
from pathlib import Path

from tpemu.agent.engines import Endpoint, Engine
from tpemu.agent.engines.supervisor import EngineProcess

INSTALL_HINT = "pip install nx-27017"
_LISTENING = re.compile(rb"Listening on 127\.0\.0\.1:(\d+)")


def find(db_name: str, data_dir: Path) -> tuple[Engine | None, str]:
    if importlib.util.find_spec("nx_27017") is None:
        return None, f"no MongoDB engine: {INSTALL_HINT}"
    return MongoEngine(db_name, data_dir), ""


class MongoEngine(Engine):
    protocol = "mongodb"
    label = "MongoDB wire (nx-27017)"

    def __init__(self, db_name: str, data_dir: Path) -> None:
        super().__init__(db_name, data_dir)
        self.port = 0
        self.nx_log = data_dir / "nx-27017.log"

    def _argv(self) -> list[str]:
        self.port = 0
        self.nx_log.write_bytes(b"")  # the port line of this start only
        return [sys.executable, "-c", "import sys; from nx_27017.nx_27017 import main; sys.argv[0] = 'nx-27017'; "
                "sys.exit(main())", "--data-dir", str(self.data_dir / "data"), "--host", "127.0.0.1", "-p", "0",
                "--log-file", str(self.nx_log), "--pid-file", str(self.data_dir / "nx-27017.pid")]

    async def prepare(self) -> EngineProcess:
        self.own_dir(self.data_dir)
        (self.data_dir / "data").mkdir(exist_ok=True)
        return EngineProcess(f"{self.db_name} ({self.label})", self._argv, self._ready,
                             log_path=self.data_dir / "engine.log", cwd=self.data_dir, user=self.user)

    async def _ready(self) -> bool:
        if not self.port:
            m = _LISTENING.search(self.nx_log.read_bytes())
            if m is None:
                return False
            self.port = int(m.group(1))
        _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.close()
        return True

    async def wipe(self) -> None:
        import pymongo

        def drop() -> None:
            client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
                f"mongodb://127.0.0.1:{self.port}/?directConnection=true", serverSelectionTimeoutMS=5000)
            try:
                for name in client.list_database_names():
                    if name not in ("admin", "local", "config"):
                        client.drop_database(name)
            finally:
                client.close()

        await asyncio.to_thread(drop)

    def endpoint_now(self) -> Endpoint:
        return Endpoint(host="127.0.0.1", port=self.port)
