"""Engine supervision and the Database Service's use of the embedded engines, on loopback.

* :class:`~tpemu.agent.engines.supervisor.EngineProcess` with a small Python child: ready probe,
  a crash restarted with backoff and logged, a child that ignores SIGTERM killed after the stop
  timeout, nothing left running.
* ``uri: embedded`` with no engine installed: one start-up line naming what to install, and the
  in-process emulator serves. MongoDB (no emulator): nx-27017 serves ``emulated`` and ``embedded``
  alike; without it, connections are refused in MongoDB's protocol naming what to install.
* A caller the RBAC refuses, or bytes that are not a StartupMessage, never start the engine (no
  byte reaches it unauthenticated); an allowed caller gets the real PostgreSQL, and closing the
  service leaves no engine process.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import pytest

from tests.helpers import parked
from tpemu import identity as ident
from tpemu.agent.db_service import DatabaseService
from tpemu.agent.engines import live_pids
from tpemu.agent.engines import postgres as pg_engine
from tpemu.agent.engines.mongo import MongoEngine
from tpemu.agent.engines.supervisor import EngineProcess, EngineUnavailable
from tpemu.config import Database
from tpemu.wire import mongo as mongo_wire
from tpemu.wire import postgres as pg
from tpemu.wire.tunnel import DialRequest

CHILD = ("import signal, sys, time; signal.signal(signal.SIGTERM, {handler}); open(sys.argv[1], 'w').close(); "
         "time.sleep(60)")


def child(tmp: Path, ignore_term: bool = False, **kw: float) -> tuple[EngineProcess, Path]:
    flag = tmp / "ready"

    def argv() -> list[str]:
        flag.unlink(missing_ok=True)
        handler = "signal.SIG_IGN" if ignore_term else "lambda *a: sys.exit(0)"
        return [sys.executable, "-c", CHILD.format(handler=handler), str(flag)]

    async def ready() -> bool:
        return flag.exists()

    return EngineProcess("child", argv, ready, log_path=tmp / "child.log", cwd=tmp, **kw), flag


async def test_supervisor_restarts_a_crash_and_stops_cleanly(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    proc, _ = child(tmp_path)
    await proc.ensure_running(10)
    first = proc.pid
    assert first is not None and live_pids()[first] == "child"
    with caplog.at_level(logging.WARNING, "tpemu.agent.engines.supervisor"):
        proc.kill_for_test(signal.SIGKILL)
        async with asyncio.timeout(10):
            while proc.pid in (None, first) or proc.starts < 2:
                await asyncio.sleep(0.02)
        await proc.ensure_running(10)
    assert proc.crashes == 1
    assert any("exited unexpectedly (status -9)" in r.message and "restarting in" in r.message
               for r in caplog.records), caplog.text
    second = proc.pid
    await proc.close()
    for pid in (first, second):
        assert pid not in live_pids()
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(EngineUnavailable, match="shutting down"):
        await proc.ensure_running(1)


async def test_supervisor_kills_a_child_that_ignores_the_stop_signal(tmp_path: Path) -> None:
    proc, _ = child(tmp_path, ignore_term=True, stop_timeout=0.3)
    await proc.ensure_running(10)
    pid = proc.pid
    assert pid is not None
    await proc.close()
    assert proc.proc is not None and proc.proc.returncode == -signal.SIGKILL
    assert pid not in live_pids()


async def test_supervisor_reports_a_child_that_exits_while_starting(tmp_path: Path) -> None:
    async def never() -> bool:
        return False

    proc = EngineProcess("broken", lambda: [sys.executable, "-c", "print('no config here'); raise SystemExit(3)"],
                         never, log_path=tmp_path / "b.log", cwd=tmp_path)
    with pytest.raises(EngineUnavailable, match=r"exited with status 3 while starting.*no config here"):
        await proc.ensure_running(10)
    await proc.close()
    assert proc.proc is not None and proc.proc.pid not in live_pids()


def test_unavailable_engine_falls_back_to_the_emulator_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(pg_engine, "bin_dir", lambda: (None, ""))
    with caplog.at_level(logging.WARNING, "tpemu.agent.db_service"):
        svc = DatabaseService([Database(name="pg", protocol="postgres")])
    lines = [r.message for r in caplog.records]
    assert len(lines) == 1 and "pip install pgserver" in lines[0] and "emulator serves it instead" in lines[0], lines
    assert svc.engine("pg") is None and svc.backend("pg") is not None


def alice(names: tuple[str, ...] = ("app",)) -> dict[str, object]:
    return ident.Identity("alice", database_users=("alice",), database_names=names,
                          route_to_database=ident.RouteToDatabase("pg", "postgres", "alice", "app")).to_json()


async def exchange(svc: DatabaseService, identity: dict[str, object], first: bytes, until: bytes = b"") -> bytes:
    """Serve one tunnelled connection that sends ``first``; what came back (until EOF or ``until``)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    loop = asyncio.get_running_loop()
    request = DialRequest(conn_type="db", name="pg", identity=identity)
    task = asyncio.ensure_future(svc.serve(await parked(theirs), request))
    await loop.sock_sendall(ours, first)
    data = b""
    try:
        async with asyncio.timeout(30):
            while chunk := await loop.sock_recv(ours, 65536):
                data += chunk
                if until and until in data:
                    await loop.sock_sendall(ours, pg.encode_message(b"X"))
    finally:
        ours.close()
        await task
    return data


@pytest.mark.skipif(pg_engine.bin_dir()[0] is None, reason=f"no PostgreSQL engine: {pg_engine.INSTALL_HINT}")
async def test_nothing_reaches_the_engine_before_rbac_and_close_leaves_no_process(tmp_path: Path) -> None:
    svc = DatabaseService([Database(name="pg", protocol="postgres")], data_dir=tmp_path / "engines")
    engine = svc.engine("pg")
    assert engine is not None
    try:
        denied = await exchange(svc, alice(names=("other",)), pg.encode_startup({"user": "alice", "database": "app"}))
        assert denied[:1] == b"E" and b"access to db denied" in denied
        garbage = await exchange(svc, alice(), b"\x00\x00\x00\x10GET / HTTP/1.1\r\n\r\n")
        assert garbage[:1] == b"E" and b"expected a StartupMessage from the proxy" in garbage
        assert engine.process is None, "the engine was started for a refused connection"
        assert not (tmp_path / "engines").exists()
        # As another pytest session does to /tmp/pytest-of-<user> when it starts: the folders above the
        # data dir lose the traverse bit; the engine gets it back before it starts.
        tmp_path.chmod(0o700)
        ok = await exchange(svc, alice(), pg.encode_startup({"user": "alice", "database": "app"}),
                            until=b"Z\x00\x00\x00\x05I")
        assert ok.startswith(b"R\x00\x00\x00\x08\x00\x00\x00\x00") and b"server_version\x0016." in ok
        assert engine.process is not None and engine.process.pid in live_pids()
        # ... and again before a restart after a crash.
        tmp_path.chmod(0o700)
        engine.process.kill_for_test(signal.SIGKILL)
        async with asyncio.timeout(30):
            while engine.process.starts < 2 or engine.process.pid is None:
                await asyncio.sleep(0.02)
        again = await exchange(svc, alice(), pg.encode_startup({"user": "alice", "database": "app"}),
                               until=b"Z\x00\x00\x00\x05I")
        assert again.startswith(b"R\x00\x00\x00\x08\x00\x00\x00\x00"), again
        pid = engine.process.pid
    finally:
        await svc.close()
    assert pid is not None and pid not in live_pids()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="the engine runs as its own unprivileged user only when tpemu is root")
@pytest.mark.skipif(pg_engine.bin_dir()[1] != "pgserver", reason=f"no pgserver wheel: {pg_engine.INSTALL_HINT}")
async def test_engine_binaries_inside_a_private_folder_are_reachable(tmp_path: Path) -> None:
    # A fresh clone made with `mktemp -d` is a 0700 folder, and the pgserver wheel sits in its venv:
    # PostgreSQL refuses root, and its user could not even run initdb ("Permission denied") until the
    # engine added the traverse bit to the folders above its binaries.
    where, _ = pg_engine.bin_dir()
    assert where is not None
    private = tmp_path / "clone"
    private.mkdir(mode=0o700)
    site = private / "venv" / "site-packages"
    for name in ("pgserver", "pgserver.libs"):  # initdb's RPATH is $ORIGIN/../../../pgserver.libs
        await asyncio.to_thread(shutil.copytree, where.parents[2] / name, site / name, symlinks=True)
    private.chmod(0o700)
    engine = pg_engine.PostgresEngine("pg", tmp_path / "data", site / "pgserver" / "pginstall" / "bin",
                                      "a copy of pgserver's")
    try:
        endpoint = await engine.ensure_access("alice", "app", timeout=60)
        assert private.stat().st_mode & 0o777 == 0o701  # search only: the clone stays unreadable
        assert "alice" in await engine.psql("SELECT rolname FROM pg_roles WHERE rolname = 'alice'")
        assert endpoint.unix
    finally:
        await engine.close()


def mongo_alice() -> dict[str, object]:
    return ident.Identity("alice", database_users=("alice",), database_names=("app",),
                          route_to_database=ident.RouteToDatabase("mongo", "mongodb", "alice", "app")).to_json()


async def mongo_exchange(svc: DatabaseService, body: dict[str, object]) -> mongo_wire.OpMsg:
    """One OP_MSG through a tunnelled connection to database ``mongo``; the reply."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(svc.serve(await parked(theirs), DialRequest(conn_type="db", name="mongo",
                                                                              identity=mongo_alice())))
    await loop.sock_sendall(ours, mongo_wire.encode_op_msg(7, 0, body))
    data = b""
    try:
        async with asyncio.timeout(30):
            while (parsed := mongo_wire.parse_message(data)) is None:
                chunk = await loop.sock_recv(ours, 65536)
                assert chunk, f"closed after {data!r}"
                data += chunk
    finally:
        ours.close()
        await task
    reply = parsed[0]
    assert isinstance(reply, mongo_wire.OpMsg) and reply.header.response_to == 7
    return reply


@pytest.mark.parametrize("uri", ["emulated", "embedded"])
async def test_mongodb_is_served_by_nx27017_for_emulated_and_embedded(tmp_path: Path, uri: str) -> None:
    # tpemu has no in-process MongoDB emulator: `uri: emulated` means the nx-27017 engine too.
    svc = DatabaseService([Database(name="mongo", protocol="mongodb", uri=uri)], data_dir=tmp_path / "engines")
    engine = svc.engine("mongo")
    try:
        assert isinstance(engine, MongoEngine) and svc.backend("mongo") is None and engine.process is None
        reply = await mongo_exchange(svc, {"insert": "t", "documents": [{"_id": 1}], "$db": "app"})
        assert reply.body["n"] == 1 and reply.body["ok"] == 1
        found = await mongo_exchange(svc, {"find": "t", "filter": {}, "$db": "app"})
        assert found.body["cursor"]["firstBatch"] == [{"_id": 1}]
        assert engine.process is not None and engine.process.pid in live_pids()
    finally:
        await svc.close()


async def test_mongodb_without_nx27017_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    # Only a broken install lacks nx-27017 (a dependency of tpemu): one line at start-up, and each
    # connection gets MongoDB's own error naming what to install; the other databases still work.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nx_27017" else real_find_spec(name, *a))
    with caplog.at_level(logging.WARNING, "tpemu.agent.db_service"):
        svc = DatabaseService([Database(name="mongo", protocol="mongodb", uri="emulated"),
                               Database(name="pg", protocol="postgres", uri="emulated")])
    lines = [r.message for r in caplog.records]
    assert len(lines) == 1 and "pip install nx-27017" in lines[0] and "no in-process MongoDB emulator" in lines[0]
    try:
        assert svc.engine("mongo") is None and svc.backend("mongo") is None
        reply = await mongo_exchange(svc, {"ping": 1, "$db": "app"})
        assert reply.body["ok"] == 0
        assert "is unavailable: no MongoDB engine: pip install nx-27017" in reply.body["errmsg"]
        assert svc.stats["unavailable"] == 1
    finally:
        await svc.close()
