"""Issue 16: one token join per multi-role agent, as Teleport does it.

Before the fix ``--roles node,db`` joined once per role, so a single-use ``node,db`` token could
never start it (the first join used it up). Teleport's process joins once as ``Instance`` with every
service's role (``RegisterUsingTokenRequest.SystemRoles``; the token must allow each:
``lib/auth/join`` ``checkTokenJoinRequestCommon``) and gets each service's certificate with that
identity (``lib/auth/auth_with_roles.go`` ``ServerWithRoles.GenerateHostCerts``: same host ID
only — "username mismatch" — and only roles the instance holds).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.test_agent_process import agent_config, makers
from tests.agent.test_tunnel import Echo, roundtrip, wait_for
from tpemu import authapi, authclient, pki
from tpemu import identity as ident
from tpemu.agent.process import AgentError, AgentOptions, AgentProcess
from tpemu.testkit import Cluster
from tpemu.wire import tunnel as tw


@pytest.mark.parametrize("via_proxy", [True, False], ids=["through-proxy", "direct"])
async def test_single_use_token_starts_a_node_db_agent(tmp_path: Path, via_proxy: bool) -> None:
    async with Cluster(tmp_path / "cluster", nodes=(), databases=()) as cluster:
        token = await cluster.token("Node", "Db", single_use=True)
        where = {"proxy_server": cluster.web} if via_proxy else {"auth_server": cluster.auth.addr}
        roles = ("node", "db") if via_proxy else ("node",)
        opts = AgentOptions(roles, token=token, ca_pins=(cluster.auth.ca_pin,), nodename="agent1", **where)
        agent = AgentProcess(agent_config(tmp_path / "agent"), opts, makers(Echo("ssh"), Echo("db")))
        await agent.start()
        try:
            if via_proxy:
                await agent.wait_connected()
                reg = cluster.proxy.tunnels
                await wait_for(lambda: len(reg.resources()) == 2)
                assert await roundtrip(await reg.dial(tw.DialRequest(name="pg", conn_type="db")), b"y\n") == b"db:y\n"
                assert {a.role for a, _ in reg.resources()} == {"Node", "Db"}
                instance = authclient.HostIdentity.load(tmp_path / "agent" / "instance")
                assert instance is not None
                held = ident.from_certificate(instance.cert)
                assert held.groups == ("Instance",) and set(held.system_roles) == {"Node", "Db"}
        finally:
            await agent.close()
        # The token was used once: another agent cannot join with it.
        again = AgentProcess(agent_config(tmp_path / "again"),
                             AgentOptions(("node", "db"), proxy_server=cluster.web, token=token,
                                          ca_pins=(cluster.auth.ca_pin,), nodename="agent2"),
                             makers(Echo("s"), Echo("d")))
        with pytest.raises(AgentError, match="already used"):
            await again.start()
        await again.close()


async def test_instance_certificates_only_for_its_own_host_and_roles(tmp_path: Path) -> None:
    async with Cluster(tmp_path / "cluster", nodes=(), databases=()) as cluster:
        token = await cluster.token("Node", "Db")
        assert cluster.auth.addr is not None
        instance = await authclient.join(cluster.auth.addr, token, "Instance", "host-a", "a",
                                         ca_pins=(cluster.auth.ca_pin,), system_roles=("Node", "Db"))
        files = instance.save(tmp_path / "instance")
        client = authclient.AuthClient.with_identity(cluster.auth.addr, instance.cluster_name, files)
        key = pki.generate_key()
        certs = await client.call("POST", "/v1/hosts/certs", authclient.host_certs_request(key, "Db", "host-a", "a"))
        assert certs["tls"]
        with pytest.raises(authapi.AccessDenied, match="roles do not match"):
            await client.call("POST", "/v1/hosts/certs", authclient.host_certs_request(key, "Kube", "host-a", "a"))
        with pytest.raises(authapi.AccessDenied, match="username mismatch"):
            await client.call("POST", "/v1/hosts/certs", authclient.host_certs_request(key, "Db", "host-b", "b"))
        # The token must allow every role the instance asks for.
        node_only = await cluster.token("Node")
        with pytest.raises(authapi.AccessDenied, match="does not allow role Db"):
            await authclient.join(cluster.auth.addr, node_only, "Instance", "host-c", "c",
                                  ca_pins=(cluster.auth.ca_pin,), system_roles=("Node", "Db"))
