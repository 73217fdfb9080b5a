"""The workers' local link (:mod:`tpemu.proxy.workers`): the worker description it passes to its
children, and its Unix sockets when the data dir is too deep for a socket address (a test's
``tmp_path``, a long home): worker 0 makes a private short folder, names it to the others, and
removes it at close."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tpemu.proxy import workers
from tpemu.proxy.tunnels import TunnelError
from tpemu.wire import tunnel as tw


class _Tunnels:
    """The part of the tunnel registry the link uses: no tunnel held here."""

    peer_dial: Any = None

    async def dial(self, req: tw.DialRequest, local_only: bool = False) -> Any:
        raise TunnelError(f"no tunnel for {req.server_id} here")


class _Proxy:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.tunnels = _Tunnels()


def test_worker_spec_round_trip() -> None:
    spec = workers.WorkerSpec(1, 3, {"web": "127.0.0.1:3080"}, "127.0.0.1:3025", ("sha256:ab",), "/tmp/x")
    assert workers.WorkerSpec.from_env(spec.to_env()) == spec
    older = '{"index": 2, "count": 3, "bound": {}, "auth_addr": null, "ca_pins": []}'
    assert workers.WorkerSpec.from_env(older).sock_dir is None
    with pytest.raises(ValueError, match="TPEMU_PROXY_WORKER is not a worker description"):
        workers.WorkerSpec.from_env('{"index": "x"}')


def test_fits_sun_path_counts_the_largest_index() -> None:
    base = Path("/" + "d" * (workers.MAX_SOCKET_PATH - len("/9.sock") - 1))
    assert workers.fits_sun_path(base, 10)  # "/ddd…/9.sock" is exactly 107 bytes
    assert not workers.fits_sun_path(base, 11)  # "10.sock" is one byte more
    assert not workers.fits_sun_path(base / "x", 2)


@pytest.mark.parametrize("deep", [False, True], ids=["data-dir", "too-long-for-sun-path"])
async def test_siblings_reach_each_other(tmp_path: Path, deep: bool) -> None:
    # pytest's tmp_path alone may be too deep already: the short case gets its own short folder.
    base = tmp_path / ("d" * 120) if deep else Path(tempfile.mkdtemp(prefix="wl-"))
    try:
        await _siblings(base, deep)
    finally:
        if not deep:
            shutil.rmtree(base)


async def _siblings(base: Path, deep: bool) -> None:
    data_dir = base / "data"
    data_dir.mkdir(parents=True)
    proxy = _Proxy(data_dir)
    first = workers.WorkerLink(proxy, 0, 2)  # type: ignore[arg-type]
    await first.start()
    try:
        if deep:
            assert not str(first.dir).startswith(str(base))
        else:
            assert first.dir == workers.socket_dir(data_dir)
        assert stat.S_IMODE(os.stat(first.dir).st_mode) == 0o700
        # The child gets the folder through its WorkerSpec, as WorkerPool.start passes it.
        second = workers.WorkerLink(proxy, 1, 2, str(first.dir))  # type: ignore[arg-type]
        await second.start()
        try:
            with pytest.raises(TunnelError, match=r"worker 0: .*no tunnel for node-1 here"):
                await second.dial(tw.DialRequest(server_id="node-1"), 5.0)
            assert first.served == 0 and second.forwarded == 0
        finally:
            await second.close()
    finally:
        await first.close()
    assert first.dir.exists() is not deep  # worker 0's own short folder is removed at close
