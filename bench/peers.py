"""The routers the end-to-end benchmark measures: tpemu and its peers, as processes (glue).

Every peer listens on a free loopback port and routes a TLS connection, from its ClientHello and
without terminating TLS, to a backend port: first by exact SNI, then by any offered ALPN name
(:class:`Routes`). The configs are templates in ``bench/peers/`` with ``@NAME@`` placeholders.

* ``tpemu-uvloop`` / ``tpemu-asyncio``: ``tpemu start`` from the venv that runs the benchmark
  (derived from ``sys.executable``) with pass-through rules, one process, one event loop;
* ``haproxy``: ``mode tcp``, ``req.ssl_sni``/``req.ssl_alpn``, ``nbthread 1``, one process
  (``processes=K``: K such processes on one port; HAProxy binds with ``SO_REUSEPORT`` unless
  told ``noreuseport``, so the kernel spreads connections over them as over tpemu's workers);
* ``nginx``: the stream module with ``ssl_preread`` and a ``map`` on SNI then ALPN; a master
  and ``worker_processes 1`` (RSS and CPU are summed over both);
* ``sslh``: ``sslh-ev`` or ``sslh-select`` (single process; the forking ``sslh`` is not used).

:func:`start_peer` returns ``(None, reason)`` when the peer's binary is missing, and raises
:class:`PeerError` when it is there but does not start or route. A peer is ready when its port
accepts *and* a probe ClientHello gets a byte back from the backend, so every start also checks
that the config routes.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tpemu.errors import LocalFault

CONFIG_DIR = Path(__file__).with_name("peers")
PEERS = ("tpemu-uvloop", "tpemu-asyncio", "tpemu-2workers", "haproxy", "nginx", "sslh")
NGINX_MODULE_DIRS = (Path("/usr/lib/nginx/modules"), Path("/usr/share/nginx/modules"), Path("/usr/lib64/nginx/modules"))
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class PeerError(LocalFault, RuntimeError):
    """A peer whose binary exists did not start, or started but did not route the probe."""


def make_client_hello(sni: str, alpn: list[str]) -> bytes:
    """A real TLS 1.3 ClientHello from Python's ``ssl`` (OpenSSL) with this SNI and ALPN list.

    Returns the bytes OpenSSL writes first: one or more TLS records holding the ClientHello.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@dataclass(frozen=True)
class Routes:
    """Where a peer sends connections: by exact SNI first, then by any offered ALPN name."""

    sni: Mapping[str, int] = field(default_factory=dict)
    alpn: Mapping[str, int] = field(default_factory=dict)
    backend_host: str = "127.0.0.1"

    def backend(self, port: int) -> str:
        return hostport(self.backend_host, port)


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- processes -------------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def process_tree(pids: list[int]) -> list[int]:
    """``pids`` and all their descendants that are still alive."""
    kids = _children()
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in out or not os.path.exists(f"/proc/{pid}"):
            continue
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def rss_kib(pids: list[int]) -> int:
    """The sum of VmRSS (KiB) over ``pids`` (gone processes count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time (seconds) over ``pids``, including reaped children."""
    return sum(cpu_user_system(pids))


def cpu_user_system(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU time (seconds) over ``pids``, each including reaped children's."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14-17.
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return user / _CLK_TCK, system / _CLK_TCK


@dataclass
class Peer:
    """A running peer: its listening address, processes, version line and notes."""

    name: str
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    version: str
    notes: str
    log_path: Path
    _log: IO[bytes] | None = None
    #: Routed connections the peer can hold at once, when it has a hard limit, and why.
    max_connections: int | None = None
    limit_reason: str = ""
    #: More processes of the same peer on the same port (``processes=K`` for HAProxy).
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def target(self) -> str:
        return hostport(self.host, self.port)

    def pids(self) -> list[int]:
        return process_tree([self.proc.pid, *(p.pid for p in self.extra)])

    def accepting_pids(self) -> list[int]:
        """The peer's processes that hold a listening socket on its port (its workers), by pid."""
        inodes = listening_inodes(self.port)
        return sorted(pid for pid in self.pids() if socket_inodes(pid) & inodes)

    def rss_kib(self) -> int:
        return rss_kib(self.pids())

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pids())

    def cpu_user_system(self) -> tuple[float, float]:
        return cpu_user_system(self.pids())

    def alive(self) -> bool:
        return all(p.poll() is None for p in (self.proc, *self.extra))

    def log_tail(self, lines: int = 8) -> str:
        return _tail(self.log_path, lines)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds, to every process started; idempotent."""
        stop_processes((self.proc, *self.extra), timeout)
        if self._log is not None:
            self._log.close()
            self._log = None


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 5.0) -> None:
    """SIGTERM to each of ``procs`` still running, then SIGKILL to any that outlives ``timeout``
    seconds; every one is reaped (by its PID, as everything the bench starts)."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        p.terminate()
    for p in running:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def listening_inodes(port: int) -> set[int]:
    """Socket inodes of every TCP socket listening on ``port`` (any address, IPv4 and IPv6)."""
    out: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            # local_address is ADDR:PORT in hex; st 0A is TCP_LISTEN; the inode is field 10.
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                out.add(int(f[9]))
    return out


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds (empty when it is gone)."""
    out: set[int] = set()
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in entries:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def open_fds(pid: int) -> int:
    """How many descriptors process ``pid`` holds (0 when it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


#: Bit of CAP_SYS_RESOURCE in /proc/self/status CapEff (linux/capability.h).
CAP_SYS_RESOURCE = 24


def has_sys_resource() -> bool:
    """Whether this process may raise its hard ``RLIMIT_NOFILE`` (root alone is not enough: a
    container may drop ``CAP_SYS_RESOURCE`` from the bounding set)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError):
        pass
    return False


def nr_open() -> int:
    """The kernel's ceiling for any process's descriptor limit (``/proc/sys/fs/nr_open``)."""
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return 1 << 20


def raise_nofile(want: int = 0) -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (the peers inherit it); returns it.

    With ``want`` above the hard limit and ``CAP_SYS_RESOURCE``, the hard limit itself is raised
    (up to ``nr_open``) first; without the capability the hard limit stays and the caller
    measures what fits.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if want > hard and has_sys_resource():
        new = min(want, nr_open())
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, new))
            soft, hard = new, new
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the peer's own bind may still race another process)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _fill(template: str, values: Mapping[str, str]) -> str:
    text = (CONFIG_DIR / template).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z_]+@", text)
    assert not left, f"{template}: placeholders left unfilled: {left}"
    return text


def _version(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    out = (proc.stdout + proc.stderr).strip().splitlines()
    return out[0].strip() if out else "unknown"


# -- one function per peer: (argv, workdir config, version, notes) or a reason to skip ------------------------


@dataclass
class _Plan:
    argv: list[str]
    version: str
    notes: str
    env: dict[str, str] | None = None
    max_connections: int | None = None
    limit_reason: str = ""


def _venv_tpemu() -> Path:
    return Path(sys.executable).parent / "tpemu"


def _plan_tpemu(loop: str, routes: Routes, listen: str, workdir: Path, data_dir: Path, workers: int = 1) -> _Plan | str:
    exe = _venv_tpemu()
    if not exe.exists():
        return f"no tpemu entry point next to {sys.executable} (run `make install`)"
    if loop == "uvloop":
        try:
            loop_version = f"uvloop {importlib.metadata.version('uvloop')}"
        except importlib.metadata.PackageNotFoundError:
            return "uvloop is not installed in this venv"
    else:
        loop_version = "asyncio (selector event loop)"
    rules = []
    for i, (sni, port) in enumerate(routes.sni.items()):
        rules.append(f'      - {{name: sni-{i}, sni: ["{sni}"], target: "{routes.backend(port)}"}}')
    for i, (name, port) in enumerate(routes.alpn.items()):
        rules.append(f'      - {{name: alpn-{i}, alpn: ["{name}"], target: "{routes.backend(port)}"}}')
    conf = workdir / "tpemu.yaml"
    conf.write_text(_fill("tpemu.yaml", {"DIR": str(data_dir), "LISTEN": listen, "RULES": "\n".join(rules),
                                         "WORKERS": str(workers)}),
                    encoding="utf-8")
    version = f"{_version([str(exe), '--version'])}, Python {sys.version.split()[0]}, {loop_version}"
    argv = [str(exe), "start", "--config", str(conf), "--data-dir", str(data_dir), "--loop", loop,
            "--log-level", "WARN"]
    if workers > 1:
        return _Plan(argv, version, f"{workers} worker processes (tpemu.proxy_service.workers, SO_REUSEPORT), one "
                     f"event loop ({loop}) each; pass-through rules, logging at WARN")
    return _Plan(argv, version, f"one process, one event loop ({loop}); pass-through rules, logging at WARN")


def _plan_haproxy(routes: Routes, listen: str, workdir: Path, processes: int = 1) -> _Plan | str:
    exe = shutil.which("haproxy")
    if exe is None:
        return "haproxy is not installed (no `haproxy` on PATH)"
    use, backends = [], []
    ports = sorted({*routes.sni.values(), *routes.alpn.values()})
    for port in ports:
        backends.append(f"backend b{port}\n    server s{port} {routes.backend(port)}\n")
    for sni, port in routes.sni.items():
        use.append(f"    use_backend b{port} if {{ req.ssl_sni -i {sni} }}")
    for name, port in routes.alpn.items():
        use.append(f"    use_backend b{port} if {{ req.ssl_alpn {name} }}")
    conf = workdir / "haproxy.cfg"
    maxconn = (resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 100) // 2
    conf.write_text(_fill("haproxy.cfg", {"LISTEN": listen, "MAXCONN": str(maxconn), "USE_BACKENDS": "\n".join(use),
                                          "BACKENDS": "\n".join(backends)}), encoding="utf-8")
    if processes > 1:
        return _Plan([exe, "-db", "-f", str(conf)], _version([exe, "-v"]),
                     f"{processes} processes (haproxy -db each, nbthread 1) on one port with SO_REUSEPORT (HAProxy's "
                     "default; 2.6 has no nbproc); mode tcp, req.ssl_sni/req.ssl_alpn")
    return _Plan([exe, "-db", "-f", str(conf)], _version([exe, "-v"]),
                 "one process, nbthread 1 (haproxy -db); mode tcp, req.ssl_sni/req.ssl_alpn")


def nginx_stream_module() -> Path | str | None:
    """The ``load_module`` path of the stream module; None when it is built in; a str when missing."""
    exe = shutil.which("nginx")
    if exe is None:
        return "nginx is not installed (no `nginx` on PATH)"
    try:
        flags = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=10, check=False).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nginx -V failed: {exc}"
    if "--with-stream_ssl_preread_module" not in flags:
        return "nginx is built without the stream ssl_preread module"
    if "--with-stream=dynamic" not in flags:
        return None if "--with-stream" in flags else "nginx is built without the stream module"
    for d in NGINX_MODULE_DIRS:
        if (d / "ngx_stream_module.so").exists():
            return d / "ngx_stream_module.so"
    return "nginx's stream module is dynamic but ngx_stream_module.so is not installed (libnginx-mod-stream)"


def _plan_nginx(routes: Routes, listen: str, workdir: Path, workers: str) -> _Plan | str:
    exe = shutil.which("nginx")
    module = nginx_stream_module()
    if exe is None or isinstance(module, str):
        return module if isinstance(module, str) else "nginx is not installed"
    sni_map = "\n".join(f'        "{sni}" "{routes.backend(port)}";' for sni, port in routes.sni.items())
    alpn_map = "\n".join(f'        "~(^|,){re.escape(name)}(,|$)" "{routes.backend(port)}";'
                         for name, port in routes.alpn.items())
    conf = workdir / "nginx.conf"
    conf.write_text(_fill("nginx.conf", {
        "LOAD_MODULE": f"load_module {module};" if module else "# the stream module is built in",
        "WORKERS": workers, "DIR": str(workdir), "LISTEN": listen, "SNI_MAP": sni_map, "ALPN_MAP": alpn_map,
    }), encoding="utf-8")
    argv = [exe, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log"), "-g", "daemon off;"]
    return _Plan(argv, _version([exe, "-v"]),
                 f"master + worker_processes {workers} (RSS and CPU summed over all); stream + ssl_preread + map")


def sslh_binary() -> str | None:
    """``sslh-ev`` or ``sslh-select`` (single-process variants), or None."""
    for name in ("sslh-ev", "sslh-select"):
        exe = shutil.which(name)
        if exe is not None:
            return exe
    return None


def _plan_sslh(routes: Routes, host: str, port: int, workdir: Path) -> _Plan | str:
    exe = sslh_binary()
    if exe is None:
        if shutil.which("sslh"):
            return "only the forking sslh is installed (one process per connection); sslh-ev/sslh-select missing"
        return "sslh is not installed (no sslh-ev or sslh-select on PATH)"
    protocols = []
    for sni, p in routes.sni.items():
        protocols.append(f'    {{ name: "tls"; host: "{routes.backend_host}"; port: "{p}"; '
                         f'sni_hostnames: [ "{sni}" ]; log_level: 0; }}')
    for name, p in routes.alpn.items():
        protocols.append(f'    {{ name: "tls"; host: "{routes.backend_host}"; port: "{p}"; '
                         f'alpn_protocols: [ "{name}" ]; log_level: 0; }}')
    conf = workdir / "sslh.cfg"
    conf.write_text(_fill("sslh.cfg", {"HOST": host, "PORT": str(port), "PROTOCOLS": ",\n".join(protocols)}),
                    encoding="utf-8")
    plan = _Plan([exe, f"-F{conf}"], _version([exe, "-V"]), f"{Path(exe).name}: one process")
    if exe.endswith("select"):
        # select() watches at most FD_SETSIZE (1024) descriptors, two per routed connection;
        # sslh-select 1.20 aborts ("bit out of range 0 - FD_SETSIZE on fd_set") past ~510.
        plan.max_connections = 500
        plan.limit_reason = ("sslh-select uses select(): past ~510 routed connections (FD_SETSIZE=1024) "
                             "it aborts with 'bit out of range 0 - FD_SETSIZE on fd_set'")
        plan.notes += "; select() loop, aborts past ~510 routed connections (FD_SETSIZE)"
    return plan


# -- start --------------------------------------------------------------------------------------------


def start_peer(name: str, routes: Routes, workdir: Path, *, probe: bytes, host: str = "127.0.0.1",
               ready_timeout: float = 20.0, nginx_workers: str = "1",
               processes: int = 1) -> tuple[Peer | None, str | None]:
    """Start peer ``name`` (one of :data:`PEERS`) in ``workdir`` and wait until it routes.

    ``probe`` is a ClientHello that the routes send to a backend that answers with a byte.
    ``processes`` > 1 (``tpemu-uvloop``/``tpemu-asyncio``: ``proxy_service.workers``; ``haproxy``:
    that many processes on one port) also waits until that many processes listen on the port.
    Returns ``(peer, None)``, or ``(None, reason)`` when the peer's binary is missing. Raises
    :class:`PeerError` when it fails to start or to route the probe within ``ready_timeout``.
    """
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; expected one of {', '.join(PEERS)}")
    if processes < 1 or (processes > 1 and name not in ("tpemu-uvloop", "tpemu-asyncio", "haproxy")):
        raise ValueError(f"{name}: processes={processes}: only tpemu-uvloop, tpemu-asyncio and haproxy run split")
    raise_nofile()
    error: PeerError | None = None
    for _attempt in range(3):  # the free port may be taken between our check and the peer's bind
        port = free_port(host)
        pdir = workdir / f"{name}-{port}"
        pdir.mkdir(parents=True, exist_ok=True)
        listen = hostport(host, port)
        if name == "tpemu-2workers":
            plan = _plan_tpemu("uvloop", routes, listen, pdir, workdir / "tpemu-data-2w", workers=2)
        elif name.startswith("tpemu-"):
            plan = _plan_tpemu(name.removeprefix("tpemu-"), routes, listen, pdir, workdir / "tpemu-data",
                               workers=processes)
        elif name == "haproxy":
            plan = _plan_haproxy(routes, listen, pdir, processes)
        elif name == "nginx":
            plan = _plan_nginx(routes, listen, pdir, nginx_workers)
        else:
            plan = _plan_sslh(routes, host, port, pdir)
        if isinstance(plan, str):
            return None, plan
        log_path = pdir / "output.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 - owned by the Peer, closed in stop()
        try:
            proc = _spawn(plan, pdir, log_file)
        except OSError as exc:
            log_file.close()
            raise PeerError(f"{name}: cannot run {plan.argv[0]}: {exc}") from None
        peer = Peer(name, host, port, proc, pdir, plan.version, plan.notes, log_path, log_file, plan.max_connections,
                    plan.limit_reason)
        try:
            if name == "haproxy":
                for _ in range(processes - 1):  # the same config: every process binds the port (SO_REUSEPORT)
                    peer.extra.append(_spawn(plan, pdir, log_file))
            _wait_ready(peer, probe, ready_timeout)
            if processes > 1:
                _wait_listeners(peer, processes, ready_timeout)
            return peer, None
        except PeerError as exc:
            peer.stop()
            error = exc
            if "in use" not in str(exc).lower():
                raise
        except BaseException:  # a later process that cannot start, an interrupt: none left behind
            peer.stop()
            raise
    assert error is not None
    raise error


def _spawn(plan: _Plan, pdir: Path, log_file: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(plan.argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=pdir,
                            env=plan.env)


def _wait_listeners(peer: Peer, processes: int, timeout: float) -> None:
    """Until ``processes`` of the peer's processes listen on its port (a worker starts after the first
    answers, and connections opened before it listens would all land on the others)."""
    deadline = time.monotonic() + timeout
    pids: list[int] = []
    while time.monotonic() < deadline:
        if not peer.alive():
            raise PeerError(f"{peer.name}: a process exited while its workers started: "
                            f"{peer.log_tail() or 'no output'}")
        pids = peer.accepting_pids()
        if len(pids) >= processes:
            return
        time.sleep(0.05)
    raise PeerError(f"{peer.name}: {len(pids)} of {processes} processes listen on port {peer.port} after {timeout:g}s "
                    f"(pids {pids}); log: {peer.log_tail() or 'empty'}")


def _wait_ready(peer: Peer, probe: bytes, timeout: float) -> None:
    """Until the port accepts and the probe gets a byte back; raises PeerError with the log tail."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if not peer.alive():
            raise PeerError(f"{peer.name} exited with status {peer.proc.returncode}: {peer.log_tail() or 'no output'}")
        try:
            with socket.create_connection((peer.host, peer.port), timeout=2) as s:
                s.sendall(probe)
                if s.recv(1):
                    return
                last = "the connection closed without an answer from the backend"
        except OSError as exc:
            last = exc.strerror or str(exc)
        time.sleep(0.02)
    raise PeerError(f"{peer.name} did not route the probe within {timeout:g}s (last: {last}); "
                    f"log: {peer.log_tail() or 'empty'}")
