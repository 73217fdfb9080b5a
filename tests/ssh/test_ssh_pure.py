"""The pure parts of SSH access: subsystem names, node matching, targets, ping routes, ssh_config,
certificate fields."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpemu import sshcert
from tpemu.auth import authority
from tpemu.auth.authority import CAType
from tpemu.client import profile as profile_mod
from tpemu.client import ssh as ssh_mod
from tpemu.client.openssh_config import openssh_config
from tpemu.client.ssh import ProxyRoute, SSHError, Target
from tpemu.config import Addr
from tpemu.proxy.nodes import NodeDirectory, NodeLookupError
from tpemu.proxy.ssh_proxy import NodeRecord, ProxyTarget, ProxyTargetError, match_nodes, parse_proxy_subsystem

# -- proxy:host:port@cluster (lib/srv/regular/proxy.go's forms) ---------------------------------------


@pytest.mark.parametrize(("name", "want"), [
    ("proxy:node1:3022@tpemu.local", ProxyTarget("node1", 3022, "tpemu.local")),
    ("proxy:node1:3022", ProxyTarget("node1", 3022, "")),
    ("proxy:node1", ProxyTarget("node1", 0, "")),
    ("proxy:10.0.0.5:22@c", ProxyTarget("10.0.0.5", 22, "c")),
    ("proxy:[::1]:3022@c", ProxyTarget("::1", 3022, "c")),
    ("proxy:host:22@default@c", ProxyTarget("host", 22, "c")),  # the old namespace form
    ("proxy:node1.tpemu.local:3022@tpemu.local", ProxyTarget("node1.tpemu.local", 3022, "tpemu.local")),
])
def test_parse_proxy_subsystem(name: str, want: ProxyTarget) -> None:
    assert parse_proxy_subsystem(name) == want


@pytest.mark.parametrize("name", ["proxy:", "sftp", "proxy::22", "proxy:host:port", "proxy:host:99999",
                                  "proxy:[::1", "proxy:a b:22", "proxy:" + "x" * 2000])
def test_parse_proxy_subsystem_refuses(name: str) -> None:
    with pytest.raises(ProxyTargetError, match="invalid format for proxy request"):
        parse_proxy_subsystem(name)


@given(st.text(max_size=80))
def test_parse_proxy_subsystem_fuzz(text: str) -> None:
    try:
        got = parse_proxy_subsystem("proxy:" + text)
    except ProxyTargetError:
        return
    assert got.host and 0 <= got.port <= 65535


# -- which node a name means (lib/proxy/router.go) -----------------------------------------------------

NODES = [NodeRecord("uuid-a", "web", "", True), NodeRecord("uuid-b", "db", "10.0.0.7:3022", False),
         NodeRecord("uuid-c", "dup", "", True), NodeRecord("uuid-d", "dup", "", True),
         NodeRecord("web", "other", "", True)]


def test_match_nodes() -> None:
    assert [n.host_id for n in match_nodes(NODES, "uuid-a", 0)] == ["uuid-a"]
    assert [n.host_id for n in match_nodes(NODES, "db", 3022)] == ["uuid-b"]
    assert [n.host_id for n in match_nodes(NODES, "10.0.0.7", 3022)] == ["uuid-b"]
    assert [n.host_id for n in match_nodes(NODES, "10.0.0.7", 0)] == ["uuid-b"]
    assert match_nodes(NODES, "10.0.0.7", 2222) == []  # by address, the port must match
    assert [n.host_id for n in match_nodes(NODES, "dup", 0)] == ["uuid-c", "uuid-d"]  # ambiguous
    assert [n.host_id for n in match_nodes(NODES, "web", 0)] == ["web"]  # an exact host ID wins
    assert match_nodes(NODES, "nope", 0) == []


def test_node_record_from_resource_and_web_shape() -> None:
    resource = {"kind": "node", "metadata": {"name": "h1", "labels": {"env": "x"}},
                "spec": {"hostname": "n1", "addr": "", "use_tunnel": True},
                "status": {"last_heartbeat": "2026-11-24T18:00:00Z"}}
    node = NodeRecord.from_resource(resource)
    assert node == NodeRecord("h1", "n1", "", True, {"env": "x"}, "2026-11-24T18:00:00Z")
    assert node.web("c") == {"kind": "node", "tunnel": True, "subKind": "teleport", "id": "h1", "siteId": "c",
                             "hostname": "n1", "addr": "", "tags": [{"name": "env", "value": "x"}], "sshLogins": [],
                             "lastHeartbeat": "2026-11-24T18:00:00Z"}
    for bad in (None, [], {"metadata": {}}, {"metadata": {"name": 3}, "spec": {}}):
        assert NodeRecord.from_resource(bad) is None


class _Inventory:
    """What :class:`NodeDirectory` reads of the tunnel registry; ``auth`` is what the Auth Service
    lists now, ``live`` the host IDs with a connected tunnel."""

    def __init__(self, auth: list[dict[str, Any]], live: set[str]) -> None:
        self.auth, self.live, self.fetches = auth, live, 0
        self.items, self.at = list(auth), time.monotonic()

    async def node_inventory(self, fresh: bool = False) -> dict[str, Any]:
        self.fetches += 1
        self.items, self.at = list(self.auth), time.monotonic()
        return {"items": self.items}

    def kept_nodes(self) -> tuple[list[Any], float]:
        return self.items, self.at

    def tunnel_serves_node(self, host_id: str) -> bool:
        return host_id in self.live

    def poll_interval(self) -> float:
        return 5.0


def _node(host_id: str, hostname: str, tunnel: bool = True) -> dict[str, Any]:
    return {"kind": "node", "metadata": {"name": host_id},
            "spec": {"hostname": hostname, "addr": "" if tunnel else "10.0.0.9:3022", "use_tunnel": tunnel}}


async def test_node_directory_waits_for_the_auth_service_unless_a_live_tunnel_vouches() -> None:
    tunnelled, direct = _node("h1", "web"), _node("h2", "db", tunnel=False)
    inv = _Inventory([tunnelled, direct], live={"h1"})
    directory = NodeDirectory(inv, ttl=1.0)
    assert (await directory.resolve("web", 0)).host_id == "h1" and inv.fetches == 0  # within its second
    inv.at -= 3  # past the second: a node behind a connected tunnel is answered at once
    assert (await directory.resolve("web", 0)).host_id == "h1" and inv.fetches == 0
    assert directory.stats == {"kept": 1, "refreshed_behind": 0}  # (the poll refreshes it every 5 s)
    inv.at -= 4  # the poll is late: the inventory is refreshed behind the answer
    assert (await directory.resolve("web", 0)).host_id == "h1" and inv.fetches == 0
    assert directory.stats == {"kept": 2, "refreshed_behind": 1}
    assert directory._behind is not None
    await directory._behind
    assert inv.fetches == 1 and time.monotonic() - inv.at < 1
    # A directly joined node removed from the Auth Service: the stale entry does not let it through.
    inv.auth, inv.at = [tunnelled], inv.at - 3
    with pytest.raises(NodeLookupError, match="node 'db' not found"):
        await directory.resolve("db", 0)
    assert inv.fetches == 3 and directory.stats["kept"] == 2  # asked, then asked fresh (it may have joined)
    # A tunnelled node whose tunnel is gone and that the Auth Service no longer lists: not found either.
    inv.live.clear()
    inv.auth, inv.at = [], inv.at - 3
    with pytest.raises(NodeLookupError, match="node 'web' not found"):
        await directory.resolve("web", 0)
    assert directory.stats["kept"] == 2
    # A second node of the same name joined: past the second an ambiguous name always asks again.
    inv.live, inv.auth = {"h1", "h3"}, [tunnelled, _node("h3", "web")]
    await directory.nodes(fresh=True)
    inv.auth, inv.at = [tunnelled], inv.at - 3  # h3 left meanwhile
    assert (await directory.resolve("web", 0)).host_id == "h1" and directory.stats["kept"] == 2
    # Older than three polls (the Auth Service unreachable for that long): the lookup waits.
    inv.at -= 16
    fetches = inv.fetches
    assert (await directory.resolve("web", 0)).host_id == "h1"
    assert inv.fetches == fetches + 1 and directory.stats["kept"] == 2
    await directory.close()


# -- the client: targets, routes, config ----------------------------------------------------------------


@pytest.mark.parametrize(("text", "want"), [
    ("alice@node1", Target("alice", "node1", 0)),
    ("alice@node1.tpemu.local", Target("alice", "node1", 0)),
    ("alice@node1.tpemu.local:3022", Target("alice", "node1", 3022)),
    ("root@10.1.2.3:22", Target("root", "10.1.2.3", 22)),
    ("bob@[::1]:3022", Target("bob", "::1", 3022)),
    ("a@b@node1", Target("a@b", "node1", 0)),
])
def test_parse_target(text: str, want: Target) -> None:
    assert ssh_mod.parse_target(text, "tpemu.local") == want


def test_parse_target_defaults() -> None:
    assert ssh_mod.parse_target("node1", "c", login="carol", port=2022) == Target("carol", "node1", 2022)
    assert ssh_mod.parse_target("tpemu.local", "tpemu.local", login="x").host == "tpemu.local"  # not emptied
    with pytest.raises(SSHError, match="no host"):
        ssh_mod.parse_target("alice@", "c")


def test_route_from_ping() -> None:
    web = Addr("proxy.example", 3080)
    assert ssh_mod.route_from_ping({"proxy": {"tls_routing_enabled": True}}, web) == ProxyRoute("proxy.example",
                                                                                                  3080, True)
    ping = {"proxy": {"tls_routing_enabled": False, "ssh": {"listen_addr": "0.0.0.0:3023"}}}
    assert ssh_mod.route_from_ping(ping, web) == ProxyRoute("proxy.example", 3023, False)
    ping["proxy"]["ssh"]["ssh_public_addr"] = "ssh.example:443"  # type: ignore[index]
    assert ssh_mod.route_from_ping(ping, web) == ProxyRoute("ssh.example", 443, False)
    with pytest.raises(SSHError, match="no SSH listener"):
        ssh_mod.route_from_ping({"proxy": {"ssh": {}}}, web)
    with pytest.raises(SSHError, match="no proxy settings"):
        ssh_mod.route_from_ping([], web)


def test_subsystem_name() -> None:
    assert ssh_mod.subsystem_name("node1", 0, "c") == "proxy:node1:3022@c"
    assert ssh_mod.subsystem_name("::1", 22, "c") == "proxy:[::1]:22@c"
    assert parse_proxy_subsystem(ssh_mod.subsystem_name("::1", 22, "c")) == ProxyTarget("::1", 22, "c")


def _profile(tmp: Path) -> profile_mod.Profile:
    host = authority.new_authority(CAType.HOST, "tpemu.local")
    return profile_mod.save(tmp, "proxy.example", "proxy.example:3080", "alice", "tpemu.local", b"key", b"ssh-pub",
                            b"tls", b"", host.tls_cert_pem, [host.ssh_public])


def test_openssh_config_is_tsh_config_shaped(tmp_path: Path) -> None:
    prof = _profile(tmp_path / "my home")
    text = openssh_config(prof, executable="/usr/bin/tpemu")
    assert "Host *.tpemu.local proxy.example\n" in text
    assert "Host *.tpemu.local !proxy.example\n    Port 3022\n" in text
    assert (f'    ProxyCommand /usr/bin/tpemu proxy ssh --home="{tmp_path / "my home"}" --cluster=tpemu.local '
            "--proxy=proxy.example:3080 %r@%h:%p\n") in text
    assert f'    UserKnownHostsFile "{prof.known_hosts_path}"\n' in text
    assert f'    CertificateFile "{prof.ssh_cert_path}"\n' in text
    assert "    HostKeyAlgorithms ecdsa-sha2-nistp256-cert-v01@openssh.com,rsa-sha2-512" in text
    assert "    User " not in text
    assert '    User "root"' in openssh_config(prof, executable="t", login="root", port=22)
    known = prof.known_hosts_path.read_text()
    assert known.startswith("@cert-authority *.tpemu.local,tpemu.local ecdsa-sha2-nistp256 ")
    assert len(ssh_mod.host_ca_keys(prof)) == 1


def test_format_nodes() -> None:
    items = [{"hostname": "a", "id": "1", "tunnel": True, "tags": []},
             {"hostname": "bbbb", "id": "2", "addr": "10.0.0.1:3022", "tags": [{"name": "k", "value": "v"}]}]
    assert ssh_mod.format_nodes(items).splitlines() == [
        "Node Name Address       Labels Last heartbeat",
        "--------- ------------- ------ --------------",
        "a         ⟵ Tunnel             -",
        "bbbb      10.0.0.1:3022 k=v    -",
    ]
    assert ssh_mod.format_nodes([], verbose=True).splitlines()[0] == "Node Name Node ID Address Labels Last heartbeat"
    import datetime as dt

    now = dt.datetime(2026, 11, 24, 18, 0, 10, tzinfo=dt.UTC)
    assert ssh_mod.heartbeat_age("2026-11-24T18:00:00Z", now) == "10s ago"
    assert ssh_mod.heartbeat_age("2026-11-24T17:50:00Z", now) == "10m ago"
    assert ssh_mod.heartbeat_age("", now) == "-"


# -- certificate fields asyncssh does not expose -----------------------------------------------------------


def test_certificate_info_of_a_user_certificate() -> None:
    ca = authority.new_authority(CAType.USER, "tpemu.local")
    key = asyncssh.generate_private_key("ssh-ed25519")
    now = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    line = authority.issue_user_ssh(ca, key.export_public_key(), "alice", ["root"], ["access"], {"logins": ["root"]},
                                    "tpemu.local", now + dt.timedelta(hours=1), now)
    info = sshcert.certificate_info(line)
    assert (info.cert_type, info.key_id, info.principals) == (sshcert.USER_CERT, "alice", ("root",))
    assert info.valid_before == int((now + dt.timedelta(hours=1)).timestamp())
    assert info.valid_after < int(now.timestamp())  # back-dated for clock skew
    assert info.extensions["teleport-roles"] == '{"version":"v1","roles":["access"]}'
    assert "permit-pty" in info.extensions and sshcert.extensions_of(line) == info.extensions
    nologin = sshcert.certificate_info(authority.issue_user_ssh(ca, key.export_public_key(), "bob", [], [], {}, "",
                                                                now + dt.timedelta(hours=1), now))
    assert len(nologin.principals) == 1 and nologin.principals[0].startswith("-teleport-nologin-")
    with pytest.raises(ValueError):
        sshcert.certificate_info(b"ssh-ed25519 AAAA")
