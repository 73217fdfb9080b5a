"""Supervise one database engine process: start, readiness, crash restart with backoff, stop (glue).

Theory of operation. An engine (postgres, redis-server, nx-27017, mariadbd) is a child process of
the agent, started with :class:`subprocess.Popen` from the event loop's thread so that the
kernel's parent-death signal (``PR_SET_PDEATHSIG``, set in the child *after* the switch to the
engine's user, which would clear it) stops the engine if the agent dies without cleaning up.
Its own session (``start_new_session``) keeps a terminal's Ctrl-C away from it: the agent stops
its engines itself, in order. The exit of the child is watched through a ``pidfd`` registered
with the loop (no thread, no SIGCHLD handler shared with the loop's own child watcher); where
``pidfd_open`` is missing, a bounded poll does the same.

An exit the agent did not ask for is a crash: it is logged at WARNING with the exit status and
the engine's log file, and the engine is started again after a backoff that doubles from
:data:`BACKOFF_FIRST` up to :data:`BACKOFF_MAX` (reset after :data:`STABLE_AFTER` seconds of
uptime). Connections that arrive meanwhile wait for the restart, bounded by their own deadline.

Every PID this module started and has not yet reaped is in :func:`live_pids` (tests check that
none is left).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from tpemu.errors import LocalFault

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.25
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0
_PR_SET_PDEATHSIG = 1
_LIVE: dict[int, str] = {}


def live_pids() -> dict[int, str]:
    """PID → engine name for every engine process started here and not yet reaped."""
    return dict(_LIVE)


class EngineUnavailable(LocalFault):
    """The engine cannot be started or did not become ready; the message says why (a local fault:
    a missing binary, a data dir, this machine's resources)."""


def _pdeathsig() -> Callable[[], None] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def child() -> None:  # runs in the forked child, after setuid
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return child


_PREEXEC = _pdeathsig()


class EngineProcess:
    """One supervised engine process.

    ``argv`` is called for each (re)start, ``ready`` is polled until it returns true (it may
    raise ``OSError`` while the engine comes up), ``stop_signal`` asks the engine for a clean
    shutdown (``SIGINT`` is PostgreSQL's "fast" mode).
    """

    def __init__(self, name: str, argv: Callable[[], Sequence[str]], ready: Callable[[], Awaitable[bool]], *,
                 log_path: Path, cwd: Path, user: str | None = None, env: dict[str, str] | None = None,
                 stop_signal: int = signal.SIGTERM, start_timeout: float = 30.0, stop_timeout: float = 10.0,
                 before_start: Callable[[], None] | None = None) -> None:
        self.name = name
        self._argv = argv
        self._ready = ready
        self.log_path = log_path
        self.cwd = cwd
        self.user = user
        self.env = env
        self.stop_signal = stop_signal
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.before_start = before_start
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.crashes = 0
        self.last_start_seconds = 0.0
        self._closing = False
        self._ready_event = asyncio.Event()
        self._lock = asyncio.Lock()
        self._exited: asyncio.Future[int] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._backoff = BACKOFF_FIRST
        self._failure: str | None = None
        self._t0 = 0.0

    def stopping(self) -> bool:
        """Whether :meth:`close` was called (a method: it changes while the supervisor awaits)."""
        return self._closing

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    async def ensure_running(self, timeout: float | None = None) -> None:
        """Start the engine if it is not running and wait until it is ready; raises
        :class:`EngineUnavailable`."""
        if self._closing:
            raise EngineUnavailable(f"{self.name} is shutting down")
        if self._ready_event.is_set():
            return
        async with self._lock:
            if self._watch is None:
                await self._start()
                self._watch = asyncio.get_running_loop().create_task(self._supervise())
        try:
            async with asyncio.timeout(timeout or self.start_timeout):
                while not self._ready_event.is_set():
                    if self._failure is not None and self._watch is None:
                        raise EngineUnavailable(self._failure)
                    waiter = asyncio.ensure_future(self._ready_event.wait())
                    try:
                        await asyncio.wait({waiter}, timeout=0.5)
                    finally:
                        waiter.cancel()
        except TimeoutError:
            raise EngineUnavailable(f"{self.name} is not ready ({self._failure or 'still starting'}; "
                                    f"log: {self.log_path})") from None

    async def _start(self) -> None:
        """Spawn the process and wait until it is ready (or raise after the start timeout)."""
        self._ready_event.clear()
        argv = list(self._argv())
        if self.before_start is not None:
            self.before_start()
        started = self._t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            try:
                # Popen here, in the loop's thread, on purpose: PR_SET_PDEATHSIG fires when the thread
                # that forked exits, so a worker thread would stop the engine with it. The preexec
                # hook only calls prctl(2) (no lock, no allocation) and so is safe with threads.
                self.proc = subprocess.Popen(  # noqa: ASYNC220
                    argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                             cwd=self.cwd, env=self.env, start_new_session=True, user=self.user,
                                             group=_group_of(self.user), extra_groups=[] if self.user else None,
                                             preexec_fn=_PREEXEC, close_fds=True)  # noqa: PLW1509
            except OSError as exc:
                raise EngineUnavailable(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        self.starts += 1
        pid = self.proc.pid
        _LIVE[pid] = self.name
        self._exited = loop.create_future()
        self._watch_exit(self.proc, self._exited)
        try:
            async with asyncio.timeout(self.start_timeout):
                while True:
                    if self._exited.done():
                        raise EngineUnavailable(f"{self.name} exited with status {self._exited.result()} while "
                                                f"starting (log: {self.log_path}){_tail(self.log_path)}")
                    with contextlib.suppress(OSError, EOFError, asyncio.IncompleteReadError):
                        if await self._ready():
                            break
                    await asyncio.wait({self._exited}, timeout=0.02)
        except TimeoutError:
            await self._terminate()
            raise EngineUnavailable(f"{self.name} was not ready after {self.start_timeout:g}s "
                                    f"(log: {self.log_path}){_tail(self.log_path)}") from None
        except EngineUnavailable:
            await self._terminate()
            raise
        self.last_start_seconds = time.monotonic() - started
        log.info("engine %s: ready in %.2fs (pid %d, log %s)", self.name, self.last_start_seconds, pid, self.log_path)
        self._failure = None
        self._ready_event.set()

    def _watch_exit(self, proc: subprocess.Popen[bytes], fut: asyncio.Future[int]) -> None:
        loop = asyncio.get_running_loop()

        def reap() -> bool:
            code = proc.poll()
            if code is None:
                return False
            _LIVE.pop(proc.pid, None)
            if not fut.done():
                fut.set_result(code)
            return True

        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            async def poll() -> None:
                while not reap():
                    await asyncio.sleep(0.1)

            task = loop.create_task(poll())
            fut.add_done_callback(lambda _: task.cancel())
            return

        def readable() -> None:
            if reap():
                loop.remove_reader(pidfd)
                os.close(pidfd)

        loop.add_reader(pidfd, readable)

    async def _supervise(self) -> None:
        """Restart the engine after every exit nobody asked for."""
        while not self._closing:
            assert self._exited is not None
            code = await asyncio.shield(self._exited)
            self._ready_event.clear()
            if self.stopping():
                return
            self.crashes += 1
            uptime = time.monotonic() - self._t0
            if uptime > STABLE_AFTER:
                self._backoff = BACKOFF_FIRST
            log.warning("engine %s: exited unexpectedly (status %s) after %.1fs; restarting in %.2gs (log: %s)%s",
                        self.name, code, uptime, self._backoff, self.log_path, _tail(self.log_path))
            while not self._closing:
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
                if self.stopping():
                    return
                try:
                    async with self._lock:
                        await self._start()
                    break
                except EngineUnavailable as exc:
                    self._failure = str(exc)
                    log.warning("engine %s: restart failed: %s; next try in %.2gs", self.name, exc, self._backoff)

    async def _terminate(self) -> None:
        """Ask the process to stop, then kill it after :attr:`stop_timeout`; reaps it."""
        proc, fut = self.proc, self._exited
        if proc is None or fut is None:
            return
        if not fut.done():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                await asyncio.wait_for(asyncio.shield(fut), self.stop_timeout)
            except TimeoutError:
                log.warning("engine %s: did not stop within %gs after signal %d; killing pid %d", self.name,
                            self.stop_timeout, self.stop_signal, proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.wait_for(asyncio.shield(fut), self.stop_timeout)

    def kill_for_test(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to the engine (tests and benches simulate a crash); returns the PID."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.pid

    async def close(self) -> None:
        """Stop the engine (clean shutdown signal, then SIGKILL after the stop timeout)."""
        self._closing = True
        async with self._lock:
            await self._terminate()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        self._ready_event.clear()


def _group_of(user: str | None) -> int | None:
    if not user:
        return None
    import pwd

    return pwd.getpwnam(user).pw_gid


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_bytes()[-2000:].decode("utf-8", "replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return ("; last log lines: " + " | ".join(line.strip() for line in text)) if text else ""
