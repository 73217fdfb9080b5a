"""tpemu as a test fixture: a whole cluster in one call, for the tests of Teleport clients.

``tpemu.Cluster`` (async) and ``tpemu.SyncCluster`` (the same, served by a thread of its own,
for plain pytest/unittest) start the Auth Service, a proxy and agents (SSH nodes, the embedded
databases) on loopback port 0 in a temporary folder; ``cluster.user()`` creates a user and logs
it in, giving connection strings, local tunnels and an OpenSSH config. ``tpemu.testkit.pytest_plugin``
(installed as a ``pytest11`` entry point) wraps them in fixtures. The same pattern as moto's server
mode or testcontainers: real sockets, real TLS, unmodified clients.
"""

from tpemu.testkit.cluster import PASSWORD, Cluster
from tpemu.testkit.sync import SyncCluster, SyncUser
from tpemu.testkit.user import User

__all__ = ["PASSWORD", "Cluster", "SyncCluster", "SyncUser", "User"]
