"""The SSH Service of an agent: an SSH server that runs commands and shells as sshd does (glue).

Teleport's node (``lib/srv/regular/sshserver.go``) in one module, on asyncssh:

* **Host identity.** The server presents the agent's key with the SSH host certificate the Auth
  Service issued at join (principals ``<host_id>.<cluster>``, ``<host_id>``,
  ``<nodename>.<cluster>``, ``<nodename>``, loopback names), so an OpenSSH client with
  ``@cert-authority *.<cluster> <host CA>`` in its known_hosts verifies it.
* **Users.** Only certificates signed by the cluster's *user* CA are accepted, for a login that
  is one of the certificate's principals (asyncssh checks principals and validity; logins that
  start with ``-`` — Teleport's ``-teleport-nologin-…`` placeholders — are never accepted).
  Plain keys and passwords are refused.
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
* **Forwarding.** Port forwarding is off unless ``ssh_service.port_forwarding`` is on *and* the
  certificate permits it; agent and X11 forwarding and subsystems (sftp) are refused.

Connections arrive on :meth:`SSHService.serve`, one parked transport each (a tunnel channel, or a
TCP connection): the agent's
reverse-tunnel client calls it for every ``DialRequest`` the proxy sends, and in direct-dial mode
the agent process calls it for every connection accepted on ``ssh_service.listen_addr`` (3022).
:func:`make_offers` is the ``node`` role for ``tpemu.agent.services``.

Theory of operation for a session: the child is started with ``subprocess.Popen`` in a new
session (``setsid``; with a pty also made its controlling terminal), its exit is watched with a
pidfd on the event loop, and its stdio file descriptors are pumped with ``add_reader`` /
``add_writer`` — the same code for a pty master and for pipes, on uvloop and plain asyncio.
Backpressure both ways: a full SSH window pauses reading the child's output, a child that does not
read its stdin pauses reading the channel.
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncssh

from tpemu import authclient
from tpemu.agent.child_signals import default_signals, exec_gives_default_signals
from tpemu.agent.tunnel import Offer
from tpemu.authclient import HostIdentity
from tpemu.errors import describe as describe_error
from tpemu.net.channel import OverTransport
from tpemu.net.sockets import format_addr
from tpemu.net.ssh_lean import ServerOptions
from tpemu.wire import tunnel as tw
from tpemu.wire.tunnel import DialRequest

if TYPE_CHECKING:
    from tpemu.agent.process import AgentContext

log = logging.getLogger(__name__)

#: What Teleport's SSH servers call themselves (``sshutils.SSHVersionPrefix``).
SERVER_VERSION = "Teleport"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: After SIGHUP, how long a session's processes get before SIGKILL.
KILL_GRACE = 2.0
READ_CHUNK = 64 * 1024
#: Stop reading the channel when this much client input waits for the child.
STDIN_HIGH_WATER = 256 * 1024
LOGIN_TIMEOUT = 30.0
#: Client ``env`` requests that are never passed on (they change how programs load or run).
_ENV_DENIED = re.compile(r"^(LD_|DYLD_|BASH_FUNC_|_RLD|LIBPATH$|IFS$|PATH$|SHELL$|HOME$|USER$|LOGNAME$|MAIL$)")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_LOGIN = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,255}$")


def refuse_login(login: str) -> str | None:
    """Why ``login`` can never be used on a node (``None`` if it may be, given a certificate).

    Teleport's placeholder principals (``-teleport-nologin-<uuid>``, ``-teleport-internal-join``)
    start with ``-``: never a Unix login.
    """
    if not _LOGIN.fullmatch(login):
        return f"{login[:64]!r} is not a valid login"
    return None


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


# -- the service ------------------------------------------------------------------------------------


class SSHService:
    """One agent's SSH Service: host identity, trusted user CA, sessions.

    ``user_ca_keys`` are the user CA's SSH public keys (``authorized_keys`` lines, as
    ``GET /v1/authorities/user`` returns them: :func:`tpemu.authclient.fetch_user_ca_ssh_keys`).
    """

    def __init__(self, identity: HostIdentity, user_ca_keys: Iterable[bytes | str], *, nodename: str,
                 labels: Mapping[str, str] | None = None, port_forwarding: bool = False,
                 login_timeout: float = LOGIN_TIMEOUT) -> None:
        if not identity.ssh_cert:
            raise ValueError(f"host {identity.host_id} has no SSH host certificate (join with a public SSH key)")
        self.identity = identity
        self.cluster_name = identity.cluster_name
        self.nodename = nodename
        self.labels = dict(labels or {})
        self.port_forwarding = port_forwarding
        self.login_timeout = login_timeout
        self.host_key = asyncssh.import_private_key(identity.key_pem)
        self.host_cert = asyncssh.import_certificate(identity.ssh_cert)
        self._user_cas: list[Any] = []
        self.set_user_ca_keys(user_ca_keys)
        self._conns: set[asyncssh.SSHServerConnection] = set()
        self._ssh_options: ServerOptions | None = None
        self._sessions: set[_Session] = set()

    def set_user_ca_keys(self, keys: Iterable[bytes | str]) -> None:
        """Trust these user CA keys from now on (CA rotation: the agent refetches them)."""
        cas = []
        for key in keys:
            try:
                cas.append(asyncssh.import_public_key(key))
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise ValueError(f"not an SSH public key for the user CA: {exc}") from None
        if not cas:
            raise ValueError("no user CA key: the SSH Service could not authenticate anyone")
        self._user_cas = cas

    def is_user_ca(self, key: Any) -> bool:
        return any(key.public_data == ca.public_data for ca in self._user_cas)

    # -- connections ---------------------------------------------------------------------------

    def _server_options(self) -> ServerOptions:
        # Built once for every connection (the host identity is fixed for the service's life).
        if self._ssh_options is None:
            self._ssh_options = ServerOptions(
                server_host_keys=[(self.host_key, self.host_cert)],
                server_version=SERVER_VERSION,
                encoding=None,  # sessions carry bytes
                line_editor=False,  # the remote shell or the pty does line editing, as with sshd
                allow_pty=True,
                x11_forwarding=False,
                agent_forwarding=False,
                sftp_factory=None,
                allow_scp=False,
                login_timeout=self.login_timeout,
                keepalive_interval=300,
            )
        return self._ssh_options

    async def serve(self, transport: asyncio.BaseTransport, request: DialRequest) -> None:
        """Serve one SSH connection on ``transport`` (a parked tunnel channel or TCP connection)
        until it ends.

        The reverse-tunnel client calls this for each dial request the proxy sends, with the
        channel itself: SSH runs on it directly (:class:`~tpemu.net.channel.OverTransport`, the
        server side over a transport that already exists). The client's address is
        ``request.client_src_addr`` (the transport's peer is the tunnel).
        """
        peer = request.client_src_addr or _peer_of(transport)
        try:
            conn = await self._server_options().accept(OverTransport(transport),
                                                       lambda: _NodeServer(self, request, peer))
        except (OSError, asyncssh.Error, TimeoutError, ValueError) as exc:
            # ValueError: asyncssh's PacketDecodeError, a peer that is not speaking SSH.
            log.info("ssh service: connection from %s ended before login: %s", peer, describe_error(exc))
            with contextlib.suppress(Exception):
                transport.close()
            return
        await self._run(conn)

    async def _run(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conns.add(conn)
        try:
            await conn.wait_closed()
        finally:
            self._conns.discard(conn)

    @property
    def server_id(self) -> str:
        return f"{self.identity.host_id}.{self.cluster_name}"

    async def close(self) -> None:
        """Close every connection and hang up every session (the agent is stopping)."""
        for conn in list(self._conns):
            conn.close()
        for session in list(self._sessions):
            session.hang_up("the SSH Service is stopping")
        waits = [s.finished.wait() for s in self._sessions]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), KILL_GRACE + 1)


async def make_offers(ctx: AgentContext) -> list[Offer]:
    """The ``node`` role of an agent (``tpemu.agent.services``): one SSH service, announced as a node.

    The user CA comes from the Auth Service (through the proxy for agents joined through it). The
    dial names the proxy may use for this node: its host ID, ``<host_id>.<cluster>`` and
    ``@local-node`` (Teleport's name for "the node this agent runs").
    """
    keys = await authclient.fetch_user_ca_ssh_keys(ctx.auth)
    ssh = ctx.cfg.ssh_service
    service = SSHService(ctx.identity, keys, nodename=ctx.nodename, labels=ctx.labels,
                         port_forwarding=ssh.port_forwarding)
    host_id = ctx.identity.host_id
    resource = tw.Resource(tw.NODE, ctx.nodename, dict(ctx.labels))
    return [Offer(resource, service, aliases=(host_id, service.server_id, tw.LOCAL_NODE))]


def _peer_of(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return format_addr(peer[:2]) if isinstance(peer, tuple) and len(peer) >= 2 else "?"


# -- one connection -------------------------------------------------------------------------------


class _NodeServer(asyncssh.SSHServer):
    """Authentication and channel policy for one client connection."""

    def __init__(self, service: SSHService, request: DialRequest | None, peer: str) -> None:
        self.service = service
        self.request = request
        self.peer = peer
        self.conn: asyncssh.SSHServerConnection | None = None
        self.login = ""
        self.offered_ca = False
        self.authenticated = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.authenticated and self.offered_ca:
            # asyncssh checked the certificate after we accepted its CA: the login is not one of
            # its principals, or it is not valid now.
            log.warning("ssh service: peer=%s login %r refused: the certificate (signed by the user CA) does not "
                        "allow this login, or has expired", self.peer, self.login)
        elif self.authenticated:
            log.info("ssh service: peer=%s login=%s disconnected%s", self.peer, self.login,
                     f" ({describe_error(exc)})" if exc else "")

    def begin_auth(self, username: str) -> bool:
        self.login = username
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: Any) -> bool:
        return False  # only certificates from the user CA

    def validate_ca_key(self, username: str, key: Any) -> bool:
        why = refuse_login(username)
        if why is not None:
            log.warning("ssh service: peer=%s refused: %s", self.peer, why)
            return False
        if not self.service.is_user_ca(key):
            log.warning("ssh service: peer=%s login %r refused: certificate not signed by the user CA of %s",
                        self.peer, username, self.service.cluster_name)
            return False
        self.offered_ca = True
        return True

    def auth_completed(self) -> None:
        self.authenticated = True
        log.info("ssh service: peer=%s logged in as %s", self.peer, self.login)

    def session_requested(self) -> _Session:
        assert self.conn is not None
        return _Session(self.service, self, self.conn)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        if not self.service.port_forwarding:
            log.info("ssh service: peer=%s port forwarding to %s:%d refused (ssh_service.port_forwarding is off)",
                     self.peer, dest_host, dest_port)
            return False
        return True  # asyncssh also checks the certificate's permit-port-forwarding

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return self.service.port_forwarding


# -- file descriptor pumps --------------------------------------------------------------------------


class _FdReader:
    """Reads a non-blocking fd on loop readiness into ``on_data``; ``on_eof`` once at the end.

    A pty master answers EIO once every slave descriptor is closed: that is its end of file.
    """

    def __init__(self, fd: int, on_data: Callable[[bytes], None], on_eof: Callable[[], None]) -> None:
        self.fd = fd
        self.on_data = on_data
        self.on_eof = on_eof
        self.loop = asyncio.get_running_loop()
        self.active = False
        self.done = False

    def start(self) -> None:
        if not self.done and not self.active:
            self.loop.add_reader(self.fd, self._readable)
            self.active = True

    def pause(self) -> None:
        if self.active:
            self.loop.remove_reader(self.fd)
            self.active = False

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # EIO from a pty master
        if data:
            self.on_data(data)
        else:
            self.finish()

    def drain(self) -> None:
        """Read what is queued now, without waiting (a pty after its process exited)."""
        while not self.done:
            try:
                data = os.read(self.fd, READ_CHUNK)
            except OSError:
                data = b""
            if not data:
                self.finish()
                return
            self.on_data(data)

    def finish(self) -> None:
        if not self.done:
            self.pause()
            self.done = True
            self.on_eof()


class _FdWriter:
    """Writes to a non-blocking fd, buffering what it cannot take yet."""

    def __init__(self, fd: int, on_low: Callable[[], None]) -> None:
        self.fd = fd
        self.on_low = on_low
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.waiting = False
        self.broken = False
        self.close_when_flushed = False
        self.closed = False

    def write(self, data: bytes) -> bool:
        """Queue ``data``; returns whether the buffer is above the high-water mark."""
        if self.broken or self.closed:
            return False
        if not self.buf:
            try:
                n = os.write(self.fd, data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self.broken = True  # the child closed its stdin: drop input, as sshd does
                return False
            data = data[n:]
        if data:
            self.buf += data
            if not self.waiting:
                self.loop.add_writer(self.fd, self._writable)
                self.waiting = True
        return len(self.buf) > STDIN_HIGH_WATER

    def _writable(self) -> None:
        try:
            n = os.write(self.fd, self.buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = len(self.buf)
            self.broken = True
        was_high = len(self.buf) > STDIN_HIGH_WATER
        del self.buf[:n]
        if not self.buf:
            self.loop.remove_writer(self.fd)
            self.waiting = False
            if self.close_when_flushed:
                self.close()
        if was_high and len(self.buf) <= STDIN_HIGH_WATER:
            self.on_low()

    def eof(self) -> None:
        """Close after the buffered bytes are written (the client sent EOF)."""
        if self.buf:
            self.close_when_flushed = True
        else:
            self.close()

    def close(self) -> None:
        if self.waiting:
            self.loop.remove_writer(self.fd)
            self.waiting = False
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                os.close(self.fd)


# -- one session channel ----------------------------------------------------------------------------


def _set_winsize(fd: int, width: int, height: int, pixwidth: int = 0, pixheight: int = 0) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, pixwidth, pixheight))


def _take_controlling_tty() -> None:  # pragma: no cover - runs in the child between fork and exec
    # After setsid (start_new_session) the pty slave on stdin becomes the controlling terminal, so
    # the line discipline's Ctrl-C reaches the foreground job and a closed master sends SIGHUP.
    default_signals()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _session_members(sid: int) -> list[int]:
    """Every process in session ``sid`` (what a hang-up must reach: jobs in other process groups
    too)."""
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


class _Session(asyncssh.SSHServerSession):  # type: ignore[type-arg]
    """A session channel: one exec or shell, with or without a pty."""

    def __init__(self, service: SSHService, server: _NodeServer, conn: asyncssh.SSHServerConnection) -> None:
        self.service = service
        self.server = server
        self.conn = conn
        self.chan: Any = None
        self.command: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.master: int | None = None
        self.stdin: _FdWriter | None = None
        self.readers: list[_FdReader] = []
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
            self.stdin = _FdWriter(os.dup(master), self._stdin_low)
            self.readers = [_FdReader(master, self._on_stdout, self._on_reader_eof)]
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
            self.stdin = _FdWriter(fds[0], self._stdin_low)
            self.readers = [_FdReader(fds[1], self._on_stdout, self._on_reader_eof),
                            _FdReader(fds[2], self._on_stderr, self._on_reader_eof)]
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


__all__ = ["Account", "SSHService", "make_offers", "refuse_login", "resolve_account"]

