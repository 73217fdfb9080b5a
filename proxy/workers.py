"""``proxy_service.workers: N``: N proxy processes accepting on the same ports (glue).

Theory of operation. One event loop uses one core; a proxy with ``workers: N`` runs N processes,
every one with the same listeners bound with ``SO_REUSEPORT``, so the kernel spreads new
connections over them (by a hash of the 4-tuple) with no accept lock and no hand-off between
processes. Every worker is a whole proxy — the front door, every route, the SSH, database, kube
and app proxies, the reverse-tunnel server — with the one host identity of this proxy (joined once,
by the first worker, and read from ``<data_dir>/proxy`` by the others).

* **Start.** The ``tpemu start`` process is worker 0: it runs its roles as usual (Auth, agents
  …), its proxy binds first (so ``:0`` in the config becomes real ports), then it starts workers
  1..N-1 as child processes (the same command line, :data:`ENV` describing the worker: its
  index, the bound addresses, how to reach the Auth Service). A child runs the proxy role only.
  Each child's stdin is a pipe from worker 0: when worker 0 exits, however it exits, the children
  see EOF and stop. Worker 0 stops them (SIGTERM, then SIGKILL) when it shuts down.
* **Tunnels from any worker.** An agent's reverse tunnel lands on one worker; a client's
  connection on any. A *local equivalent* of proxy peering (:mod:`tpemu.proxy.peering`) joins
  them: every worker serves a Unix socket ``<data_dir>/proxy/workers/<i>.sock`` (directory mode
  0700: only this user reaches it; when that path is too long for a Unix socket address, a private
  ``mkdtemp`` folder that worker 0 makes and names to the others) with peering's exchange — one length-prefixed
  :class:`~tpemu.wire.tunnel.DialRequest`, one :class:`~tpemu.wire.tunnel.DialResponse`, then the
  bytes — and a dial that finds no local tunnel asks the other workers in turn before real peers.
  Why not peering itself: peering authenticates *other* proxies by their host certificates and
  finds them in the Auth Service's proxy list; the workers are one proxy (one identity, one
  record), so they find each other by index on the local filesystem instead, with no TLS on a
  socket only this user can open. A worker dials its own tunnels only for a sibling (no loops).
* **What is per worker.** Counters, caches and in-memory state (rate limiters, the connection
  upgrade's stats) are per process. Web sessions live in the Auth Service, so a login on one
  worker is valid on all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpemu.config import Addr
from tpemu.net.pipe import Pipe, park_streams
from tpemu.proxy.decide import ListenerKind
from tpemu.wire import tunnel as tw

if TYPE_CHECKING:
    from tpemu.proxy.service import ProxyService

log = logging.getLogger(__name__)

#: The environment variable that makes ``tpemu start`` a worker (JSON, :class:`WorkerSpec`).
ENV = "TPEMU_PROXY_WORKER"
HANDSHAKE_TIMEOUT = 10.0
#: How long worker 0 waits for a child to say it listens.
START_TIMEOUT = 60.0
READY = "tpemu-worker-ready"


@dataclass(frozen=True)
class WorkerSpec:
    """What a child worker needs from worker 0."""

    index: int
    count: int
    bound: dict[str, str]
    auth_addr: str | None
    ca_pins: tuple[str, ...]
    #: Where the workers' sockets are when ``<data_dir>/proxy/workers`` is too long for one.
    sock_dir: str | None = None

    def to_env(self) -> str:
        return json.dumps({"index": self.index, "count": self.count, "bound": self.bound,
                           "auth_addr": self.auth_addr, "ca_pins": list(self.ca_pins),
                           "sock_dir": self.sock_dir})

    @classmethod
    def from_env(cls, text: str) -> WorkerSpec:
        try:
            obj = json.loads(text)
            return cls(int(obj["index"]), int(obj["count"]), {str(k): str(v) for k, v in obj["bound"].items()},
                       obj.get("auth_addr"), tuple(str(p) for p in obj.get("ca_pins") or ()),
                       str(obj["sock_dir"]) if obj.get("sock_dir") else None)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{ENV} is not a worker description: {exc}") from None

    def listen_override(self) -> dict[ListenerKind, Addr]:
        return {ListenerKind(k): Addr.parse(v, default_port=0) for k, v in self.bound.items()}


def worker_from_env() -> WorkerSpec | None:
    text = os.environ.get(ENV)
    return WorkerSpec.from_env(text) if text else None


#: ``sun_path`` holds 108 bytes with the terminating NUL.
MAX_SOCKET_PATH = 107


def socket_dir(data_dir: Path) -> Path:
    return data_dir / "proxy" / "workers"


def fits_sun_path(directory: Path, count: int) -> bool:
    """Whether every worker's socket in ``directory`` fits a Unix socket address."""
    return len(os.fsencode(directory / f"{max(count - 1, 0)}.sock")) <= MAX_SOCKET_PATH


class WorkerLink:
    """One worker's end of the local link: serve its tunnels to siblings, dial theirs."""

    def __init__(self, proxy: ProxyService, index: int, count: int, sock_dir: str | None = None) -> None:
        self.proxy = proxy
        self.index = index
        self.count = count
        self.dir = Path(sock_dir) if sock_dir else socket_dir(proxy.data_dir)
        #: Worker 0 made :attr:`dir` in the temporary folder (and removes it at close).
        self._own_short_dir = False
        self._server: asyncio.AbstractServer | None = None
        #: Dials served for siblings and made through them (for logs and tests).
        self.served = 0
        self.forwarded = 0

    def path(self, index: int) -> Path:
        return self.dir / f"{index}.sock"

    async def start(self) -> None:
        """Listen on this worker's socket and chain the tunnel registry's fallback through siblings."""
        if self.index == 0 and not fits_sun_path(self.dir, self.count):
            # A deep data dir (a test's tmp_path, a long home) makes the path longer than a Unix
            # socket address can be: worker 0 makes a private folder (mkdtemp: 0700, ours, unique)
            # in the temporary folder and tells the others (WorkerSpec.sock_dir).
            longer = self.dir
            self.dir = Path(tempfile.mkdtemp(prefix="tpemu-workers-"))
            self._own_short_dir = True
            log.info("proxy workers: sockets in %s (%s is too long for a Unix socket address)", self.dir, longer)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        path = self.path(self.index)
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise OSError(f"proxy worker {self.index}: socket path {path} is longer than a Unix socket "
                          f"address ({MAX_SOCKET_PATH} bytes)")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, str(path))
        tunnels = self.proxy.tunnels
        after = tunnels.peer_dial  # real peers (peering), if configured: asked after the siblings

        async def dial(req: tw.DialRequest, timeout: float) -> asyncio.Transport:
            from tpemu.proxy.tunnels import TunnelError

            try:
                return await self.dial(req, timeout)
            except TunnelError as exc:
                if after is None:
                    raise
                try:
                    return await after(req, timeout)
                except TunnelError as peer_exc:
                    raise TunnelError(f"{exc}; {peer_exc}") from None

        tunnels.peer_dial = dial

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path(self.index).unlink()
        if self._own_short_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- serving a sibling -----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from tpemu.proxy.peering import Peering
        from tpemu.proxy.tunnels import TunnelError

        try:
            req = await Peering._read_request(reader)
        except (tw.TunnelProtocolError, asyncio.IncompleteReadError, TimeoutError, OSError, ValueError) as exc:
            log.warning("worker %d: bad dial request from a sibling: %s", self.index, exc)
            writer.close()
            return
        try:
            target = await self.proxy.tunnels.dial(req, local_only=True)
        except TunnelError as exc:
            writer.write(tw.DialResponse(False, str(exc)).encode())
            writer.close()
            return
        writer.write(tw.DialResponse(True).encode())
        self.served += 1
        Pipe.join(park_streams(reader, writer), target, name=f"worker {self.index} for a sibling")

    # -- dialling through a sibling ------------------------------------------------------------------

    async def dial(self, req: tw.DialRequest, timeout: float) -> asyncio.Transport:
        """The stream to the first sibling that holds a tunnel for ``req`` (a parked transport)."""
        from tpemu.proxy.tunnels import TunnelError

        errors: list[str] = []
        for i in range(self.count):
            if i == self.index:
                continue
            try:
                transport = await self._dial_one(i, req, timeout)
            except ConnectionError as exc:
                errors.append(f"worker {i}: {exc}")
                continue
            self.forwarded += 1
            if self.forwarded == 1:
                log.info("worker %d: a tunnel held by worker %d serves %s (the first dial through a sibling; "
                         "the next ones are logged at DEBUG)", self.index, i, req.server_id or req.address or req.name)
            else:
                log.debug("dial %s through worker %d", req.server_id or req.address or req.name, i)
            return transport
        raise TunnelError("; ".join(errors) or "no other worker")

    async def _dial_one(self, index: int, req: tw.DialRequest, timeout: float) -> asyncio.Transport:
        try:
            async with asyncio.timeout(min(timeout, HANDSHAKE_TIMEOUT)):
                reader, writer = await asyncio.open_unix_connection(str(self.path(index)))
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"unreachable: {exc or 'timed out'}") from None
        ok = False
        try:
            writer.write(req.encode())
            try:
                async with asyncio.timeout(timeout):
                    head = await reader.readexactly(4)
                    length = int.from_bytes(head, "big")
                    if length > tw.MAX_FRAME:
                        raise ConnectionError(f"answer of {length} bytes exceeds {tw.MAX_FRAME}")
                    frame = tw.decode_frame(head + await reader.readexactly(length))
            except (asyncio.IncompleteReadError, OSError, TimeoutError) as exc:
                raise ConnectionError(f"no answer: {exc or 'timed out'}") from None
            except tw.TunnelProtocolError as exc:
                raise ConnectionError(f"answered garbage: {exc}") from None
            assert frame is not None
            answer = tw.DialResponse.from_json(frame[0])
            if not answer.ok:
                # The sibling's own words ("… not found in cluster …"): the last one is the client's.
                raise ConnectionError(answer.error or "refused")
            ok = True
        finally:
            if not ok:
                writer.close()
        return park_streams(reader, writer)


class WorkerPool:
    """Worker 0's children: start them, stop them."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, proxy: ProxyService, auth_addr: Addr | None, ca_pins: tuple[str, ...],
                    sock_dir: Path | None = None) -> None:
        """Start workers 1..count-1 with ``proxy``'s bound addresses (and worker 0's socket folder,
        :attr:`WorkerLink.dir`); wait until each listens."""
        bound = {kind.value: str(addr) for kind, addr in proxy.info.bound.items()}
        argv = [sys.executable, "-m", "tpemu", *sys.argv[1:]]
        for i in range(1, self.count):
            spec = WorkerSpec(i, self.count, bound, str(auth_addr) if auth_addr else None, ca_pins,
                              str(sock_dir) if sock_dir is not None else None)
            env = {**os.environ, ENV: spec.to_env()}
            # stdin: a pipe that only closes when this process goes (the children's stop signal).
            proc = await asyncio.create_subprocess_exec(*argv, env=env, stdin=asyncio.subprocess.PIPE,
                                                        stdout=asyncio.subprocess.PIPE)
            self.procs.append(proc)
        for i, proc in enumerate(self.procs, start=1):
            await asyncio.wait_for(self._wait_ready(proc, i), START_TIMEOUT)
        log.info("proxy workers: %d processes accept on %s (SO_REUSEPORT); pids %s", self.count,
                 ", ".join(sorted(bound.values())), ", ".join(str(p) for p in [os.getpid(), *self.pids()]))

    @staticmethod
    async def _wait_ready(proc: asyncio.subprocess.Process, index: int) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            if line.strip() == READY.encode():
                return  # nothing more comes on this pipe: the child's stdout is its stderr from now on
        raise RuntimeError(f"proxy worker {index} exited with status {await proc.wait()} before listening "
                           "(its reason is in the log above)")

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def close(self, timeout: float = 5.0) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            if proc.stdin is not None:
                proc.stdin.close()


def watch_parent(stop: asyncio.Event) -> None:
    """In a child worker: set ``stop`` when worker 0 goes (its pipe on our stdin reaches EOF)."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            log.info("proxy worker: worker 0 is gone; stopping")
            stop.set()

    loop.add_reader(fd, readable)


def describe(link: WorkerLink | None, pool: WorkerPool | None) -> dict[str, Any]:
    return {"index": link.index if link else 0, "count": link.count if link else 1,
            "served_for_siblings": link.served if link else 0,
            "forwarded_to_siblings": link.forwarded if link else 0, "children": pool.pids() if pool else []}
