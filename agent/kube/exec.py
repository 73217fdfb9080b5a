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
import functools
import json
import logging
import os
import pwd
import signal
import tempfile
from pathlib import Path
from typing import Any

from tpemu.agent.kube import websocket as ws

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
        extra["preexec_fn"] = functools.partial(_drop_to, *account)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if want_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(workdir), env=env,
            start_new_session=True, close_fds=True, **extra)
    except OSError as exc:
        message = (f"OCI runtime exec failed: exec failed: unable to start container process: exec: "
                   f"\"{argv[0]}\": {exc.strerror or exc}: unknown")
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
