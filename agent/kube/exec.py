"""``kubectl exec`` on an emulated pod: the command runs on the agent's host, sandboxed (glue).

The streaming side is ``tpemu.agent.kube.websocket`` (the channel protocol client-go speaks). The
command is the request's ``command`` arguments run directly (no shell, as a container runtime does),
in a new session, with a small environment (``HOSTNAME`` = the pod, ``KUBERNETES_*`` unset), in a
per-pod working directory under the system temp dir, and — when the agent runs as root — as the
unprivileged ``nobody`` account, as the SSH service drops to the login's account. Its stdio is
pumped to the stdout/stderr channels; stdin (when asked) from channel 0 until the client closes it
(v5's close channel, or the end of the socket). At the end the error channel carries the
``Status`` kubectl turns into its exit code: ``Success``, or ``Failure`` with reason
``NonZeroExitCode`` and the exit code in ``details.causes`` (``remotecommand``'s
``errorDecoderV4``). An idle session with no output ends after :data:`MAX_SESSION` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import os
import pwd
import signal
import struct
import subprocess
import tempfile
import termios
from pathlib import Path
from typing import Any

from tpemu.agent.child_signals import default_signals, exec_gives_default_signals
from tpemu.agent.kube import websocket as ws
from tpemu.errors import describe as describe_error

log = logging.getLogger(__name__)

MAX_SESSION = 3600.0
READ_TIMEOUT = 3600.0


def _account() -> tuple[int, int] | None:
    """``nobody``'s uid and gid when this agent runs as root (the command then runs as nobody)."""
    if os.geteuid() != 0:
        return None
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return nobody.pw_uid, nobody.pw_gid


def _child(account: tuple[int, int] | None) -> None:  # pragma: no cover - runs in the child
    # As a pod's process starts (and an SSH session's): no signal ignored or blocked (libuv resets
    # 1-31 itself, not the real-time ones), then the unprivileged account.
    default_signals()
    if account is not None:
        _drop_to(*account)


def _drop_to(uid: int, gid: int) -> None:
    # Runs in the child between fork and exec (uvloop's subprocess_exec has no user=/group=).
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def pod_workdir(cluster: str, namespace: str, pod: str) -> Path:
    """A pod's working directory: under the system temp dir, where ``nobody`` can reach it (the
    agent's data dir is private to the agent)."""
    return Path(tempfile.gettempdir()) / f"tpemu-kube-{os.geteuid()}" / cluster / namespace / pod


def _make_workdir(workdir: Path) -> None:
    base = workdir.parents[2]
    base.mkdir(mode=0o711, parents=True, exist_ok=True)
    for part in (workdir.parents[1], workdir.parent):
        part.mkdir(mode=0o711, exist_ok=True)
    workdir.mkdir(mode=0o700, exist_ok=True)


def exit_status(code: int) -> dict[str, Any]:
    """The ``Status`` on the error channel for an exit code (client-go's ``errorDecoderV4`` reads it)."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure", "message": f"command terminated with non-zero exit code: "
            f"error executing command, exit status {code}", "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


async def run(stream: ws.ChannelStream, argv: list[str], pod: str, workdir: Path, want_stdin: bool,
              want_stdout: bool, want_stderr: bool) -> int:
    """Run ``argv`` for one exec session; returns the exit code (127 when it cannot start)."""
    await asyncio.to_thread(_make_workdir, workdir)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME": pod,
           "HOME": str(workdir), "TERM": "xterm"}
    account = _account()
    extra: dict[str, Any] = {}
    if account is not None:
        with contextlib.suppress(OSError):
            os.chown(workdir, *account)
    if account is not None or not exec_gives_default_signals():
        extra["preexec_fn"] = functools.partial(_child, account)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if want_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(workdir), env=env,
            start_new_session=True, close_fds=True, **extra)
    except (OSError, subprocess.SubprocessError) as exc:
        message = (f"OCI runtime exec failed: exec failed: unable to start container process: exec: "
                   f"\"{argv[0]}\": {describe_error(exc)}: unknown")
        await stream.write(ws.ERROR, json.dumps({"metadata": {}, "status": "Failure", "message": message,
                                                 "reason": "InternalError",
                                                 "details": {"causes": [{"message": message}]},
                                                 "code": 500}).encode())
        await stream.close()
        return 127
    log.info("kube exec: pod %s pid %d: %s", pod, proc.pid, " ".join(argv)[:200])

    async def pump(src: asyncio.StreamReader | None, channel: int, wanted: bool) -> None:
        if src is None:
            return
        while chunk := await src.read(32 * 1024):
            if wanted:
                await stream.write(channel, chunk)

    async def feed() -> None:
        stdin = proc.stdin
        try:
            while True:
                message = await stream.read_message(READ_TIMEOUT)
                if message is None:
                    break
                channel, data = message
                if channel == ws.STDIN and stdin is not None:
                    stdin.write(data)
                    await stdin.drain()
                elif channel == ws.CLOSE and data[:1] == bytes([ws.STDIN]) and stdin is not None:
                    stdin.close()
                    stdin = None
                # resize (4) has no meaning without a terminal
        except (TimeoutError, ws.WebSocketError, ConnectionError, OSError) as exc:
            log.debug("kube exec: pod %s: client stream ended: %s", pod, exc)
        finally:
            if stdin is not None:
                stdin.close()
        # The client went away: the session ends with it.
        if proc.returncode is None and stream.closed:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGHUP)

    feeder = asyncio.get_running_loop().create_task(feed())
    try:
        async with asyncio.timeout(MAX_SESSION):
            await asyncio.gather(pump(proc.stdout, ws.STDOUT, want_stdout), pump(proc.stderr, ws.STDERR, want_stderr))
            code = await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = await proc.wait()
    except (ConnectionError, OSError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = await proc.wait()
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
    code = code if code >= 0 else 128 - code
    with contextlib.suppress(ConnectionError, OSError):
        await stream.write(ws.ERROR, json.dumps(exit_status(code)).encode())
        await stream.close()
    return code


# -- with a terminal (kubectl exec -t) --------------------------------------------------------------------


def _set_winsize(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", max(1, min(height, 1000)), max(1, min(width, 1000)),
                                                    0, 0))


def _tty_child(tty_path: str, account: tuple[int, int] | None) -> None:
    # In the child, before exec: a new session whose controlling terminal is the pty. Opening the
    # terminal by name as a session leader makes it the controlling one (Linux), whichever order
    # the loop's spawn (uvloop/libuv or asyncio) sets up stdio and calls this hook in.
    with contextlib.suppress(OSError):
        os.setsid()
    fd = os.open(tty_path, os.O_RDWR)
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
    os.close(fd)
    _child(account)


async def run_tty(stream: ws.ChannelStream, argv: list[str], pod: str, workdir: Path) -> int:
    """``argv`` on a pseudo-terminal: stdin and resizes (channel 4, ``{"Width": …, "Height": …}``)
    in, the terminal's output on stdout (a terminal has no separate stderr)."""
    await asyncio.to_thread(_make_workdir, workdir)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME": pod,
           "HOME": str(workdir), "TERM": "xterm"}
    account = _account()
    if account is not None:
        with contextlib.suppress(OSError):
            os.chown(workdir, *account)
    master, slave = os.openpty()
    _set_winsize(slave, 80, 24)
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=slave, stdout=slave, stderr=slave, cwd=str(workdir),
                                                    env=env, close_fds=True,
                                                    preexec_fn=functools.partial(_tty_child, os.ttyname(slave),
                                                                                 account))
    except (OSError, subprocess.SubprocessError) as exc:
        os.close(master)
        os.close(slave)
        await stream.write(ws.ERROR, json.dumps(exit_status(127) | {"message": f"exec: \"{argv[0]}\": "
                                                                     f"{describe_error(exc)}"}).encode())
        await stream.close()
        return 127
    os.close(slave)
    os.set_blocking(master, False)
    log.info("kube exec: pod %s pid %d (tty): %s", pod, proc.pid, " ".join(argv)[:200])
    loop = asyncio.get_running_loop()
    output: asyncio.Queue[bytes | None] = asyncio.Queue()
    reading = True

    def readable() -> None:
        nonlocal reading
        try:
            data = os.read(master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: every holder of the terminal's other side has gone
            data = b""
        if not data:
            loop.remove_reader(master)
            reading = False
            output.put_nowait(None)
            return
        output.put_nowait(data)
        if output.qsize() > 64:  # the client is slow: stop reading the terminal for a while
            loop.remove_reader(master)
            reading = False

    loop.add_reader(master, readable)

    async def feed() -> None:
        try:
            while (message := await stream.read_message(READ_TIMEOUT)) is not None:
                channel, data = message
                if channel == ws.STDIN:
                    view = memoryview(data)
                    for _ in range(1000):
                        if not view:
                            break
                        try:
                            view = view[os.write(master, view):]
                        except BlockingIOError:
                            await asyncio.sleep(0.01)
                elif channel == ws.RESIZE:
                    size = json.loads(data or b"{}")
                    if isinstance(size, dict):
                        _set_winsize(master, int(size.get("Width") or 80), int(size.get("Height") or 24))
                elif channel == ws.CLOSE and data[:1] == bytes([ws.STDIN]):
                    os.write(master, b"\x04")  # end of input on a terminal: ^D
        except (TimeoutError, ws.WebSocketError, ConnectionError, OSError, ValueError) as exc:
            log.debug("kube exec: pod %s: client stream ended: %s", pod, exc)
        if proc.returncode is None and stream.closed:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGHUP)

    feeder = loop.create_task(feed())
    try:
        async with asyncio.timeout(MAX_SESSION):
            while (chunk := await output.get()) is not None:
                await stream.write(ws.STDOUT, chunk)
                if not reading and output.qsize() < 8:
                    reading = True
                    loop.add_reader(master, readable)
            code = await proc.wait()
    except (TimeoutError, ConnectionError, OSError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = await proc.wait()
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(master)
        os.close(master)
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
    code = code if code >= 0 else 128 - code
    with contextlib.suppress(ConnectionError, OSError):
        await stream.write(ws.ERROR, json.dumps(exit_status(code)).encode())
        await stream.close()
    return code
