"""tpemu's pytest plugin (the ``pytest11`` entry point ``tpemu``): a cluster and users as fixtures.

Fixtures:

* ``tpemu_cluster`` — a :class:`tpemu.SyncCluster`: one shared by the whole session (started on
  first use, :meth:`~tpemu.testkit.cluster.Cluster.reset` after every test), or a test's own when
  it is marked ``@pytest.mark.tpemu_cluster(**options)`` (the options of :class:`tpemu.Cluster`);
* ``tpemu_user`` — a :class:`tpemu.testkit.SyncUser` logged in to ``tpemu_cluster``: ``alice``
  unless the test is marked ``@pytest.mark.tpemu_user(name, logins=…, db_users=…, db_names=…)``;
* ``tpemu_async_cluster`` — an async :class:`tpemu.Cluster` of the test's own, on the test's event
  loop (needs pytest-asyncio; options from the ``tpemu_cluster`` marker too).

Importing this module is cheap (pytest loads it in every session where tpemu is installed): the
cluster code is imported when a fixture is first used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tpemu.testkit import Cluster, SyncCluster, SyncUser


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tpemu_cluster(**options): give this test a tpemu cluster of its own, "
                            "made with tpemu.Cluster(**options) (nodes=, databases=, mode=, proxy=, auth=)")
    config.addinivalue_line("markers", "tpemu_user(name='alice', **options): the user the tpemu_user fixture "
                            "creates and logs in (logins=, db_users=, db_names=, roles=)")


def _options(request: pytest.FixtureRequest, name: str) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    marker = request.node.get_closest_marker(name)
    return None if marker is None else (tuple(marker.args), dict(marker.kwargs))


@pytest.fixture(scope="session")
def tpemu_shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncCluster]:
    """The session's shared cluster (prefer ``tpemu_cluster``, which resets it after each test)."""
    from tpemu.testkit import SyncCluster

    with SyncCluster(tmp_path_factory.mktemp("tpemu")) as cluster:
        yield cluster


@pytest.fixture
def tpemu_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncCluster]:
    """A running cluster: the shared one (reset afterwards) or, with the marker, the test's own."""
    from tpemu.testkit import SyncCluster

    opts = _options(request, "tpemu_cluster")
    if opts is not None:
        with SyncCluster(tmp_path_factory.mktemp("tpemu"), **opts[1]) as own:
            yield own
        return
    shared: SyncCluster = request.getfixturevalue("tpemu_shared_cluster")
    try:
        yield shared
    finally:
        shared.reset()


@pytest.fixture
def tpemu_user(request: pytest.FixtureRequest, tpemu_cluster: SyncCluster) -> SyncUser:
    """A user logged in to ``tpemu_cluster`` (see the ``tpemu_user`` marker)."""
    args, kwargs = _options(request, "tpemu_user") or ((), {})
    return tpemu_cluster.user(*args, **kwargs)


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the async fixture needs pytest-asyncio
    pass
else:
    @pytest_asyncio.fixture
    async def tpemu_async_cluster(request: pytest.FixtureRequest,
                                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
        """An async cluster of this test's own, on its event loop."""
        from tpemu.testkit import Cluster

        _, kwargs = _options(request, "tpemu_cluster") or ((), {})
        async with Cluster(tmp_path_factory.mktemp("tpemu"), **kwargs) as cluster:
            yield cluster
