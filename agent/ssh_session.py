"""One session channel of the SSH Service: an exec or a shell, as sshd runs it (glue).

Teleport's server context and session (``lib/srv/ctx.go``, ``lib/srv/sess.go``, ``lib/srv/reexec.go``)
for the channels :mod:`tpemu.agent.ssh_service` accepts:

* **Sessions.** ``exec`` and ``shell`` run through the login's shell (``$SHELL -c COMMAND``, or a
  login shell ``-bash``), with a pseudo-terminal when the client asked for one (``pty-req``;
  ``window-change`` resizes it, the kernel sends SIGWINCH), stdout and stderr on their own
  streams without one, client ``env`` requests (minus ``LD_*`` and the like), ``signal``
  requests, and the exit status or signal sent back as sshd sends it.
* **Which account.** When the login is a local account and this process may switch to it (root),
  the command runs as that account, as sshd does. Otherwise — the usual case for an emulated node
  run by an unprivileged user, or a login with no local account — it runs as the agent's own user
  with ``USER``/``LOGNAME`` set to the login and ``/bin/sh`` as its shell (tpemu's emulation;
  Teleport would refuse a login with no account unless it creates host users).
* **Hang-ups.** When the client goes away (or the agent stops) every process of the session gets
  SIGHUP, then SIGKILL two seconds later: nothing is left running (processes that called
  ``setsid`` themselves escape, as with sshd).

Theory of operation: the child is started with ``subprocess.Popen`` in a new
session (``setsid``; with a pty also made its controlling terminal), its exit is watched with a
pidfd on the event loop, and its stdio file descriptors are pumped with ``add_reader`` /
``add_writer`` (:mod:`tpemu.agent.fd_pumps`) — the same code for a pty master and for pipes, on
uvloop and plain asyncio. Backpressure both ways: a full SSH window pauses reading the child's
output, a child that does not read its stdin pauses reading the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pwd
import re
import signal
import struct
import subprocess
import termios
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncssh

from tpemu.agent.child_signals import default_signals, exec_gives_default_signals
from tpemu.agent.fd_pumps import FdReader, FdWriter
from tpemu.errors import describe as describe_error

if TYPE_CHECKING:
    from tpemu.agent.ssh_service import NodeServer, SSHService

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: After SIGHUP, how long a session's processes get before SIGKILL.
KILL_GRACE = 2.0
#: Client ``env`` requests that are never passed on (they change how programs load or run).
_ENV_DENIED = re.compile(r"^(LD_|DYLD_|BASH_FUNC_|_RLD|LIBPATH$|IFS$|PATH$|SHELL$|HOME$|USER$|LOGNAME$|MAIL$)")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


@dataclass(frozen=True)
class Account:
    """Who a session runs as: the login's local account, or the agent's own user (emulated)."""

    login: str
    uid: int | None  # None: do not switch (run as this process's user)
    gid: int | None
    groups: tuple[int, ...]
    home: str
    shell: str
    emulated: bool


def resolve_account(login: str) -> Account:
    """The account ``login`` runs as on this machine (see the module docstring)."""
    me = os.getuid()
    try:
        entry = pwd.getpwnam(login)
    except KeyError:
        entry = None
    if entry is not None and me in (0, entry.pw_uid):
        shell = entry.pw_shell if entry.pw_shell and os.path.exists(entry.pw_shell) else "/bin/sh"
        if entry.pw_uid == me:
            return Account(login, None, None, (), entry.pw_dir or "/", shell, emulated=False)
        try:
            groups = tuple(os.getgrouplist(login, entry.pw_gid))
        except OSError:
            groups = (entry.pw_gid,)
        return Account(login, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir or "/", shell, emulated=False)
    # No local account (or no right to switch to it): run as this process's user. The login has no
    # shell of its own: /bin/sh, what sshd uses for an account with an empty shell field.
    own = pwd.getpwuid(me)
    return Account(login, None, None, (), own.pw_dir or "/", "/bin/sh", emulated=True)


# -- the session's processes ----------------------------------------------------------------------


def _set_winsize(fd: int, width: int, height: int, pixwidth: int = 0, pixheight: int = 0) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, pixwidth, pixheight))


def _take_controlling_tty() -> None:  # pragma: no cover - runs in the child between fork and exec
    # After setsid (start_new_session) the pty slave on stdin becomes the controlling terminal, so
    # the line discipline's Ctrl-C reaches the foreground job and a closed master sends SIGHUP.
    default_signals()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


#: A descriptor of our own for :func:`_number_in_use` (opened once per process, close-on-exec).
_owner_probe: int | None = None


def _number_in_use(pid: int) -> bool:
    """Whether the number ``pid`` is still taken in this pid namespace: by a process (alive or a
    zombie), or as the process group or session id of one. ``False`` proves session ``pid`` has
    no process left.

    The kernel frees a pid number only when no process uses it as its id, its process group *or*
    its session (``__change_pid``/``free_pid`` in ``kernel/pid.c``), and ``F_SETOWN`` looks the
    number up (``find_vpid``) without asking which use it has: ``ESRCH`` exactly when it is free
    (``f_setown`` in ``fs/fcntl.c``, Linux 4.15 and later; an older kernel answers 0, "in use": the
    caller then scans, as it did before). The owner is reset at once, so no pid is held. One
    system call pair (~2 µs) instead of a ``getsid`` per process on the machine.
    """
    global _owner_probe
    try:
        if _owner_probe is None:
            _owner_probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        fcntl.fcntl(_owner_probe, fcntl.F_SETOWN, pid)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # cannot tell: scan
    with contextlib.suppress(OSError):
        fcntl.fcntl(_owner_probe, fcntl.F_SETOWN, 0)
    return True


def _session_members(sid: int) -> list[int]:
    """Every process in session ``sid`` (what a hang-up must reach: jobs in other process groups
    too).

    Processes do not list a session's members; only scanning ``/proc`` finds them (a ``getsid`` per
    process). Most sessions end with none left (the leader exited and was reaped, nothing in the
    background): :func:`_number_in_use` proves that first, and only a session that may have left
    processes behind is scanned.
    """
    if not _number_in_use(sid):
        return []
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            pid = int(name)
            try:
                if os.getsid(pid) == sid:
                    pids.append(pid)
            except OSError:
                continue
    return pids


def _signal_session(sid: int, sig: int) -> None:
    for pid in _session_members(sid):
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


class Session(asyncssh.SSHServerSession):  # type: ignore[type-arg]
    """A session channel: one exec or shell, with or without a pty."""

    def __init__(self, service: SSHService, server: NodeServer, conn: asyncssh.SSHServerConnection) -> None:
        self.service = service
        self.server = server
        self.conn = conn
        self.chan: Any = None
        self.command: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.master: int | None = None
        self.stdin: FdWriter | None = None
        self.readers: list[FdReader] = []
        self.pending: list[bytes] = []
        self.pending_eof = False
        self.exited = False
        self.closed = False
        self.pidfd: int | None = None
        self.poll_timer: asyncio.TimerHandle | None = None
        self.kill_timer: asyncio.TimerHandle | None = None
        self.hung_up = False
        self.finished = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        service._sessions.add(self)

    # -- requests ------------------------------------------------------------------------------

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any) -> bool:
        return True  # asyncssh refuses it already when the certificate lacks permit-pty

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self.command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        log.info("ssh service: peer=%s subsystem %r refused (not emulated)", self.server.peer, subsystem)
        return False

    def session_started(self) -> None:
        try:
            self._start()
        except OSError as exc:
            # What sshd's child prints when it cannot run the shell, then exit status 1.
            log.warning("ssh service: peer=%s login=%s: cannot start %s: %s", self.server.peer, self.server.login,
                        "shell" if self.command is None else "command", exc)
            self.chan.write_stderr(f"Failed to launch: {exc.strerror or exc}\r\n".encode())
            self.chan.exit(1)
            self._cleanup()

    # -- starting the child --------------------------------------------------------------------

    def _environment(self, account: Account, term: str | None) -> dict[str, str]:
        server = self.server
        env: dict[str, str] = {}
        for name, value in (self.chan.get_environment() or {}).items():
            key = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
            val = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            if _ENV_NAME.fullmatch(key) and not _ENV_DENIED.match(key):
                env[key] = val
        env.update(USER=account.login, LOGNAME=account.login, HOME=account.home, SHELL=account.shell,
                   PATH=DEFAULT_PATH)
        client_host, _, client_port = server.peer.rpartition(":")
        local = self.chan.get_extra_info("sockname")
        local_host, local_port = (local[0], local[1]) if isinstance(local, tuple) and len(local) > 1 else ("", 0)
        if server.request is not None and server.request.client_dst_addr:
            local_host, _, port_text = server.request.client_dst_addr.rpartition(":")
            local_port = int(port_text) if port_text.isdigit() else 0
        if client_port:
            env["SSH_CLIENT"] = f"{client_host.strip('[]')} {client_port} {local_port}"
            env["SSH_CONNECTION"] = f"{client_host.strip('[]')} {client_port} {local_host} {local_port}"
        if term is not None:
            env["TERM"] = term or "xterm"
        # Teleport's own variables (lib/srv/ctx.go).
        env["SSH_TELEPORT_HOST_UUID"] = self.service.identity.host_id
        env["SSH_TELEPORT_CLUSTER_NAME"] = self.service.cluster_name
        identity = server.request.identity if server.request is not None else None
        if identity and isinstance(identity.get("username"), str):
            env["SSH_TELEPORT_USER"] = identity["username"]
        return env

    def _start(self) -> None:
        chan = self.chan
        account = resolve_account(self.server.login)
        if account.emulated:
            log.debug("ssh service: login %s runs as this process's user (no local account, or not root)",
                      account.login)
        term = chan.get_terminal_type()
        env = self._environment(account, term)
        shell = account.shell
        if self.command is None:
            args = ["-" + os.path.basename(shell)]  # a login shell, as sshd starts it
        else:
            args = [os.path.basename(shell), "-c", self.command]
        cwd = account.home if os.path.isdir(account.home) else "/"
        common: dict[str, Any] = {"executable": shell, "cwd": cwd, "env": env, "start_new_session": True,
                                  "close_fds": True}
        if account.uid is not None:
            common.update(user=account.uid, group=account.gid, extra_groups=list(account.groups))
        if term is not None:
            master, slave = os.openpty()
            width, height, pixw, pixh = chan.get_terminal_size()
            _set_winsize(slave, width or 80, height or 24, pixw, pixh)
            try:
                # The hook only makes system calls (sigaction, sigprocmask, one ioctl): it takes no
                # lock a thread of this process may hold.
                self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave,
                                             preexec_fn=_take_controlling_tty, **common)  # noqa: PLW1509
            except OSError:
                os.close(master)
                raise
            finally:
                os.close(slave)
            os.set_blocking(master, False)
            self.master = master
            self.stdin = FdWriter(os.dup(master), self._stdin_low)
            self.readers = [FdReader(master, self._on_stdout, self._on_reader_eof)]
        else:
            # Without the hook when it has nothing to do (the usual case): vfork instead of fork.
            hook = None if exec_gives_default_signals() else default_signals
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         preexec_fn=hook, **common)  # noqa: PLW1509
            assert self.proc.stdin and self.proc.stdout and self.proc.stderr
            fds = [os.dup(f.fileno()) for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr)]
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                f.close()
            for fd in fds:
                os.set_blocking(fd, False)
            self.stdin = FdWriter(fds[0], self._stdin_low)
            self.readers = [FdReader(fds[1], self._on_stdout, self._on_reader_eof),
                            FdReader(fds[2], self._on_stderr, self._on_reader_eof)]
        log.info("ssh service: peer=%s login=%s %s%s pid=%d", self.server.peer, account.login,
                 "shell" if self.command is None else f"exec {self.command[:200]!r}",
                 " with pty" if term is not None else "", self.proc.pid)
        self._watch_exit()
        for data in self.pending:
            self._to_stdin(data)
        self.pending.clear()
        if self.pending_eof:
            self.eof_received()
        for reader in self.readers:
            reader.start()

    def _watch_exit(self) -> None:
        assert self.proc is not None
        try:
            self.pidfd = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):
            self.pidfd = None  # no pidfd (old kernel): poll
        if self.pidfd is not None:
            self.loop.add_reader(self.pidfd, self._check_exit)
        else:
            self.poll_timer = self.loop.call_later(0.05, self._check_exit)

    def _check_exit(self) -> None:
        if self.proc is None or self.proc.poll() is None:
            if self.pidfd is None and not self.exited:
                self.poll_timer = self.loop.call_later(0.05, self._check_exit)
            return
        if self.pidfd is not None:
            self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None
        self.exited = True
        if self.master is not None:
            # Output written just before the exit is still queued in the pty; background jobs may
            # keep the slave open forever, so do not wait for its end of file.
            for reader in self.readers:
                reader.drain()
        self._maybe_finish()

    # -- data ----------------------------------------------------------------------------------

    def _on_stdout(self, data: bytes) -> None:
        self._to_channel(data, self.chan.write)

    def _on_stderr(self, data: bytes) -> None:
        self._to_channel(data, self.chan.write_stderr)

    def _to_channel(self, data: bytes, write: Callable[[bytes], None]) -> None:
        # After a hang-up nobody reads: what the child prints on its way out (drained from the pty
        # at its exit) is dropped. The channel can also close before we hear of it; a write then
        # raises BrokenPipeError, which must not end the exit callback (the session would never
        # finish: issue 16's flaky test_disconnect_mid_session_leaves_nothing_running).
        if self.closed or self.hung_up:
            return
        try:
            write(data)
        except BrokenPipeError:
            self.hang_up("the channel closed")

    def _on_reader_eof(self) -> None:
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        hung_up = self.hung_up
        if self.closed or not self.exited or (not hung_up and not all(r.done for r in self.readers)):
            return
        assert self.proc is not None
        code = self.proc.returncode
        if not hung_up:  # after a hang-up there is nobody to tell
            if code is not None and code < 0:
                try:
                    name = signal.Signals(-code).name.removeprefix("SIG")
                except ValueError:
                    name = str(-code)
                self.chan.exit_with_signal(name, False, "", "en-US")
            else:
                self.chan.exit(code or 0)
        log.info("ssh service: peer=%s login=%s pid=%d exited with %s", self.server.peer, self.server.login,
                 self.proc.pid, f"signal {-code}" if code is not None and code < 0 else f"status {code}")
        self._cleanup()

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self.proc is None:
            self.pending.append(data)
            return
        self._to_stdin(data)

    def _to_stdin(self, data: bytes) -> None:
        if self.stdin is not None and self.stdin.write(data):
            self.chan.pause_reading()

    def _stdin_low(self) -> None:
        if not self.closed:
            self.chan.resume_reading()

    def eof_received(self) -> bool:
        if self.proc is None:
            self.pending_eof = True
        elif self.master is None and self.stdin is not None:
            self.stdin.eof()  # a pty has no half-close: sshd ignores EOF there too
        return True  # keep sending output and the exit status

    def pause_writing(self) -> None:
        for reader in self.readers:
            reader.pause()

    def resume_writing(self) -> None:
        for reader in self.readers:
            reader.start()

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self.master is not None:
            _set_winsize(self.master, width, height, pixwidth, pixheight)  # the kernel sends SIGWINCH

    def signal_received(self, signame: str) -> None:
        sig = getattr(signal, "SIG" + signame, None)
        if self.proc is not None and not self.exited and isinstance(sig, signal.Signals):
            _signal_session(self.proc.pid, sig)

    # -- endings -------------------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        self.hang_up("the client went away" if exc is None else f"the connection was lost ({describe_error(exc)})")

    def hang_up(self, why: str) -> None:
        """SIGHUP to every process of the session, SIGKILL after :data:`KILL_GRACE` seconds.

        Also after the shell itself exited: background jobs holding its output open are part of
        the session too.
        """
        if self.proc is None:
            self._cleanup()
            return
        sid = self.proc.pid
        if self.hung_up:
            return
        if self.exited and not _session_members(sid):
            self._cleanup()
            return
        log.info("ssh service: peer=%s login=%s pid=%d hung up: %s", self.server.peer, self.server.login, sid, why)
        self.hung_up = True
        _signal_session(sid, signal.SIGHUP)
        _signal_session(sid, signal.SIGCONT)
        self.kill_timer = self.loop.call_later(KILL_GRACE, self._final_kill, sid)
        for reader in self.readers:
            reader.pause()
        if self.stdin is not None:
            self.stdin.close()
        if self.exited:
            self._cleanup()  # the leader is gone: nothing else will end this session

    def _cleanup(self) -> None:
        if self.closed:
            return
        self.closed = True
        for reader in self.readers:
            reader.pause()
            with contextlib.suppress(OSError):
                os.close(reader.fd)
        if self.stdin is not None:
            self.stdin.close()
        if self.pidfd is not None:
            self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None
        if self.poll_timer is not None:
            self.poll_timer.cancel()
        if self.kill_timer is not None and self.proc is not None and _session_members(self.proc.pid):
            return  # processes that ignored SIGHUP outlive their leader: the armed SIGKILL ends them
        if self.kill_timer is not None:
            self.kill_timer.cancel()
        self._finished()

    def _final_kill(self, sid: int) -> None:
        self.kill_timer = None
        _signal_session(sid, signal.SIGKILL)
        if self.closed:
            self._finished()

    def _finished(self) -> None:
        self.service._sessions.discard(self)
        self.finished.set()


__all__ = ["KILL_GRACE", "Account", "Session", "resolve_account"]
