"""The terminal side of ``tpemu ssh``: our stdin, stdout and stderr on a session channel (glue).

What OpenSSH's ``ssh`` does with its stdio once the channel is open (``clientloop.c``; ``tsh``'s
``lib/client/session.go``), on asyncssh: a pseudo-terminal for a shell on a terminal (``-t`` forces
one, ``-T`` refuses it, RFC 4254 §6.2 ``pty-req``), the local terminal in raw mode for its span, the
window size sent again on SIGWINCH (§6.7 ``window-change``), ``LANG``/``LC_*`` passed as ``env``
requests (§6.4), stdin read on loop readiness (a thread for a regular file, which cannot be polled)
with backpressure from the SSH window, channel data written to stdout and extended data to stderr.
:func:`tpemu.client.ssh.ssh` dials the proxy and the node and hands the node connection to
:func:`run_session`; ``tpemu proxy ssh`` uses :class:`StdioSession` alone (a ProxyCommand).

Exit codes: the remote command's status; 255 when the SSH connection itself failed (or the remote
side was killed by a signal), as OpenSSH's ``ssh`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import asyncssh

#: The exit code when the SSH connection itself fails (OpenSSH's).
EXIT_CONNECTION = 255
#: What we advertise for channels we receive bulk data on: bigger packets than the 32 KiB minimum
#: (RFC 4254 §5.1 lets the receiver choose) mean fewer packets for every SSH layer to handle.
CHANNEL_SIZES: dict[str, Any] = {"window": 8 * 1024 * 1024, "max_pktsize": 256 * 1024}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)  # a terminal shared with a non-blocking stdin
            continue
        except BrokenPipeError:
            return
        view = view[n:]


class StdinPump:
    """Reads stdin into ``on_data`` (loop readiness for pipes and terminals, a thread for files)."""

    def __init__(self, on_data: Callable[[bytes], None], on_eof: Callable[[], None], fd: int = 0) -> None:
        self.on_data, self.on_eof, self.fd = on_data, on_eof, fd
        self.loop = asyncio.get_running_loop()
        self.reading = False
        self.threaded = False
        self.done = False
        self._resume = threading.Event()
        self._resume.set()

    def start(self) -> None:
        try:
            self.loop.add_reader(self.fd, self._readable)
            self.reading = True
        except (OSError, ValueError):
            # A regular file (or /dev/null) cannot be polled: read it in a thread.
            self.threaded = True
            threading.Thread(target=self._thread, name="tpemu-stdin", daemon=True).start()

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self.on_data(data)
        else:
            self.stop()
            self.done = True
            self.on_eof()

    def _thread(self) -> None:
        while not self.done:
            self._resume.wait()
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                data = b""
            if self._stopped():
                return
            if data:
                self.loop.call_soon_threadsafe(self.on_data, data)
            else:
                self.done = True
                self.loop.call_soon_threadsafe(self.on_eof)

    def _stopped(self) -> bool:
        return self.done

    def pause(self) -> None:
        if self.threaded:
            self._resume.clear()
        elif self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def resume(self) -> None:
        if self.threaded:
            self._resume.set()
        elif not self.reading and not self.done:
            self.loop.add_reader(self.fd, self._readable)
            self.reading = True

    def stop(self) -> None:
        self.pause()
        self.done = True
        self._resume.set()


class StdioSession(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    """Channel output to our stdout/stderr, our stdin to the channel."""

    def __init__(self, stdin: bool = True) -> None:
        self.chan: Any = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.use_stdin = stdin
        self.pump: StdinPump | None = None

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def session_started(self) -> None:
        if self.use_stdin:
            self.pump = StdinPump(self._stdin_data, self._stdin_eof)
            self.pump.start()

    def _stdin_data(self, data: bytes) -> None:
        if not self.closed.done():
            self.chan.write(data)

    def _stdin_eof(self) -> None:
        if not self.closed.done():
            with contextlib.suppress(OSError, asyncssh.Error):
                self.chan.write_eof()

    def data_received(self, data: bytes, datatype: Any) -> None:
        _write_all(2 if datatype == asyncssh.EXTENDED_DATA_STDERR else 1, data)

    def eof_received(self) -> bool:
        return True

    def pause_writing(self) -> None:
        if self.pump is not None:
            self.pump.pause()

    def resume_writing(self) -> None:
        if self.pump is not None:
            self.pump.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pump is not None:
            self.pump.stop()
        if not self.closed.done():
            self.closed.set_result(None)


def _exit_code(chan: Any) -> int:
    status = chan.get_exit_status()
    if status is None or status < 0:
        return EXIT_CONNECTION  # no status, or killed by a signal (OpenSSH's convention)
    return int(status)


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Any:
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run_session(node: asyncssh.SSHClientConnection, command: str | None, pty: bool | None = None) -> int:
    """Run ``command`` (or a shell) with our stdio; returns its exit code.

    ``pty``: ``None`` → a pseudo-terminal for a shell on a terminal (ssh's default), ``True``
    forces one (``-t``), ``False`` refuses it (``-T``).
    """
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    want_pty = pty if pty is not None else (command is None and interactive)
    kwargs: dict[str, Any] = {"encoding": None}
    if want_pty:
        try:
            cols, rows = os.get_terminal_size(sys.stdout.fileno())
        except OSError:
            cols, rows = 80, 24
        kwargs.update(term_type=os.environ.get("TERM", "xterm"), term_size=(cols, rows))
    env = {k: v for k, v in os.environ.items() if k == "LANG" or k.startswith("LC_")}
    if env:
        kwargs["env"] = env
    session = StdioSession()
    chan, _ = await node.create_session(lambda: session, command, **kwargs, **CHANNEL_SIZES)
    loop = asyncio.get_running_loop()
    resize = None
    if want_pty and interactive:

        def resize() -> None:
            with contextlib.suppress(OSError):
                cols, rows = os.get_terminal_size(sys.stdout.fileno())
                chan.change_terminal_size(cols, rows)

        loop.add_signal_handler(signal.SIGWINCH, resize)
    try:
        if want_pty and interactive:
            with _raw_terminal(sys.stdin.fileno()):
                await session.closed
        else:
            await session.closed
    finally:
        if resize is not None:
            loop.remove_signal_handler(signal.SIGWINCH)
    await chan.wait_closed()
    return _exit_code(chan)


__all__ = ["CHANNEL_SIZES", "EXIT_CONNECTION", "StdinPump", "StdioSession", "run_session"]
