"""The C load generator of the end-to-end benchmark: build it on demand, run its subcommands (glue).

``loadgen.c`` (its header documents the command line) is compiled with ``gcc -O2`` into
``bench/loadgen/loadgen`` (git-ignored) the first time it is needed and again whenever the source
is newer. Each wrapper here runs one subcommand with a bounded wait and returns its JSON result.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

from tpemu.errors import LocalFault

SOURCE = Path(__file__).with_name("loadgen.c")
BINARY = Path(__file__).with_name("loadgen")
#: Seconds a run may take beyond its own duration before it is killed.
GRACE = 20.0


class LoadgenError(LocalFault, RuntimeError):
    """The load generator could not be built, or a run failed or did not answer in time."""


def build(force: bool = False) -> Path:
    """The path of the compiled load generator, compiling it first if missing or older than the source."""
    if not force and BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise LoadgenError(f"no C compiler (gcc) on PATH: cannot build {SOURCE}")
    # Compile to a private name and rename, so that concurrent builds never expose half a binary.
    tmp = BINARY.with_name(f".loadgen.{os.getpid()}.tmp")
    try:
        proc = subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-o", str(tmp), str(SOURCE)], capture_output=True,
                              text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LoadgenError(f"cannot run {cc}: {exc}") from None
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise LoadgenError(f"{cc} failed to build {SOURCE}:\n{proc.stderr.strip()}")
    os.replace(tmp, BINARY)
    return BINARY


def _run(args: list[str], timeout: float) -> dict[str, Any]:
    argv = [str(build()), *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              check=False)
    except subprocess.TimeoutExpired:
        raise LoadgenError(f"loadgen {args[0]} did not finish within {timeout:g}s") from None
    if proc.returncode != 0:
        raise LoadgenError(f"loadgen {args[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise LoadgenError(f"loadgen {args[0]} printed nothing; stderr: {proc.stderr.strip()}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def connrate(target: str, *, concurrency: int, duration: float, payload: Path, warmup: float = 0.0,
             timeout: float = 5.0, max_conns: int | None = None, bind: str | None = None) -> dict[str, Any]:
    """New connections per second (send ``payload``, wait for a byte) against ``target``.

    Returns loadgen's JSON: connections, errors, error_kinds, duration_s, conn_per_s, p50_us,
    p99_us, mean_us.
    """
    args = ["connrate", "--target", target, "--concurrency", str(concurrency), "--duration", f"{duration:g}",
            "--payload", str(payload), "--warmup", f"{warmup:g}", "--timeout", f"{timeout:g}"]
    if max_conns is not None:
        args += ["--max-conns", str(max_conns)]
    if bind is not None:
        args += ["--bind", bind]
    return _run(args, duration + warmup + timeout + GRACE)


def throughput(target: str, *, streams: int, duration: float, payload: Path, warmup: float = 0.0) -> dict[str, Any]:
    """MB/s (10^6 bytes) read from ``streams`` long-lived connections after sending ``payload``.

    Returns loadgen's JSON: streams, bytes, duration_s, mb_per_s, errors.
    """
    args = ["throughput", "--target", target, "--streams", str(streams), "--duration", f"{duration:g}",
            "--payload", str(payload), "--warmup", f"{warmup:g}"]
    return _run(args, duration + warmup + GRACE)


def _readline(proc: subprocess.Popen[str], timeout: float, what: str) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        err = ""
        if proc.poll() is not None and proc.stderr is not None:
            err = proc.stderr.read().strip()
        raise LoadgenError(f"loadgen {what}: no answer within {timeout:g}s {err}".rstrip())
    result: dict[str, Any] = json.loads(line)
    return result


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None and not proc.stdin.closed:
        try:
            proc.stdin.close()
        except OSError:
            pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


class Backend:
    """``loadgen serve`` in ``reply`` or ``source`` mode on a free loopback port; a context manager.

    It exits when :meth:`close` closes its stdin (or when this process dies).
    """

    def __init__(self, mode: str, host: str = "127.0.0.1") -> None:
        self.mode = mode
        self.host = host
        listen = f"[{host}]:0" if ":" in host else f"{host}:0"
        self.proc = subprocess.Popen([str(build()), "serve", "--listen", listen, "--mode", mode],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.port = int(_readline(self.proc, 10, "serve")["port"])
        except BaseException:
            _stop(self.proc)
            raise

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def close(self) -> None:
        _stop(self.proc)

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class IdleConnections:
    """``loadgen idle``: ``count`` routed connections held open until :meth:`close`; a context manager.

    ``ready`` is loadgen's first JSON line (ready, errors, error_kinds, open_s); after
    :meth:`close`, ``final`` is its last (held, dropped).
    """

    def __init__(self, target: str, *, count: int, payload: Path, hold: float = 120.0, concurrency: int = 64,
                 open_timeout: float = 60.0, bind: str | None = None) -> None:
        argv = [str(build()), "idle", "--target", target, "--count", str(count), "--payload", str(payload),
                "--hold", f"{hold:g}", "--concurrency", str(concurrency), "--open-timeout", f"{open_timeout:g}"]
        if bind is not None:
            argv += ["--bind", bind]  # the local source address (several spread the ephemeral ports)
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.final: dict[str, Any] = {}
        try:
            self.ready = _readline(self.proc, open_timeout + GRACE, "idle")
        except BaseException:
            _stop(self.proc)
            raise

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.final = _readline(self.proc, 10, "idle (closing)")
        except (LoadgenError, ValueError):
            self.final = {}
        _stop(self.proc)

    def __enter__(self) -> IdleConnections:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
