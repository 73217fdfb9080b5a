"""Shared fixtures: a running proxy on loopback port 0, real-binary skips."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tpemu import config
from tpemu.net.transport_registry import new_uvloop
from tpemu.proxy.decide import ListenerKind
from tpemu.proxy.service import ProxyService


def _own_temproot() -> None:
    """This checkout's tests keep their temporary folders under their own root.

    pytest makes ``<temproot>/pytest-of-<user>`` 0700 again whenever a session starts
    (``_pytest/tmpdir.py`` getbasetemp), and the embedded engines run as an unprivileged user who
    needs the traverse bit on every folder down to its data and socket: another checkout's pytest
    starting on the same machine took it away between the engine's grant and PostgreSQL opening
    its socket lock ("could not open lock file ... .s.PGSQL.5432.lock: Permission denied"). With
    one root per checkout only this checkout's own sessions share it (a short name: Unix socket
    paths under it must fit 107 bytes). An explicit
    ``PYTEST_DEBUG_TEMPROOT`` or ``--basetemp`` still wins."""
    import hashlib
    import tempfile

    checkout = str(Path(__file__).resolve().parent.parent)
    root = Path(tempfile.gettempdir()) / f"tpt-{hashlib.sha256(checkout.encode()).hexdigest()[:10]}"
    root.mkdir(mode=0o755, exist_ok=True)
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(root))


_own_temproot()


def _no_engine_left(session: pytest.Session) -> None:
    """No embedded database engine may outlive the tests (every cluster stops its own): one that
    did is stopped here, by its PID, and fails the run."""
    import signal

    from tpemu.agent.engines import live_pids

    left = live_pids()
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        print(f"\ntpemu: embedded engine processes left running after the tests (killed): {left}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Async tests run on uvloop as ``tpemu start`` makes it (lean transport registry:
    tpemu.net.transport_registry); those marked ``both_loops`` on plain asyncio as well."""
    if item.get_closest_marker("both_loops") is not None:
        return {"uvloop": new_uvloop, "asyncio": asyncio.new_event_loop}
    return {"uvloop": new_uvloop}


ProxyFactory = Callable[..., Awaitable[ProxyService]]


def base_config(**proxy: Any) -> dict[str, Any]:
    """A config dict with every listener on 127.0.0.1:0; tpemu-only keys (``sniff_timeout``,
    ``passthrough``, ``tpemu_proxy_protocol_trusted_cidrs`` …) go under ``tpemu.proxy_service``."""
    moved = {config.MOVED_PROXY_KEYS[k]: proxy.pop(k) for k in list(proxy) if k in config.MOVED_PROXY_KEYS}
    data: dict[str, Any] = {"proxy_service": {"web_listen_addr": "127.0.0.1:0", **proxy}}
    if moved:
        data["tpemu"] = {"proxy_service": moved}
    return data


@pytest.fixture
async def proxy_factory(tmp_path: Path) -> AsyncIterator[ProxyFactory]:
    started: list[ProxyService] = []

    async def make(cfg: dict[str, Any] | None = None, **proxy: Any) -> ProxyService:
        data = cfg if cfg is not None else base_config(**proxy)
        data.setdefault("teleport", {})["data_dir"] = str(tmp_path / f"data{len(started)}")
        svc = ProxyService(config.from_dict(data))
        await svc.start()
        started.append(svc)
        return svc

    yield make
    for svc in started:
        await svc.close()


def web_port(svc: ProxyService) -> int:
    return svc.info.bound[ListenerKind.WEB].port


def need(binary: str) -> str:
    """The path of a real third-party binary, or skip the test saying which is missing."""
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if path is None:
        pytest.skip(f"{binary} is not installed (make test installs it on Debian as root)")
    return path


async def wait_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Read until EOF (bounded) and return everything read."""
    out = bytearray()
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            out += chunk
    return bytes(out)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds (a deadline, never a fixed sleep waiting for someone else)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g}s")
        await asyncio.sleep(0.01)


# -- no stray files ---------------------------------------------------------------------------------
# A debug log of sslh-select ("log", 742 lines) was once committed at the repo root: some run left it
# in the working directory. Today every third-party server runs in its own temporary folder (bench/
# peers.py: cwd=pdir, output.log there); this guard fails the session if any test leaves a new
# visible file in the directory pytest was started from, naming it.
_STARTED_WITH: set[str] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    _STARTED_WITH.update(os.listdir(os.getcwd()))
    from tests import realservers

    for line in realservers.reap_orphans():
        print(f"\ntpemu: stopped the servers of a killed test run: {line}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _no_engine_left(session)
    stray = sorted(n for n in set(os.listdir(os.getcwd())) - _STARTED_WITH if not n.startswith("."))
    if stray:
        print(f"\nERROR: the tests left new files in {os.getcwd()}: {', '.join(stray)} (write to tmp_path)")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
