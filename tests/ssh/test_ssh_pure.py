"""The pure parts of SSH access: subsystem names, node matching, targets, ping routes, ssh_config,
certificate fields."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import asyncssh
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpemu import sshcert
from tpemu.auth import authority
from tpemu.auth.authority import CAType
from tpemu.client import profile as profile_mod
from tpemu.client import ssh as ssh_mod
from tpemu.client.ssh import ProxyRoute, SSHError, Target
from tpemu.config import Addr
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
    text = ssh_mod.openssh_config(prof, executable="/usr/bin/tpemu")
    assert "Host *.tpemu.local proxy.example\n" in text
    assert "Host *.tpemu.local !proxy.example\n    Port 3022\n" in text
    assert (f'    ProxyCommand /usr/bin/tpemu proxy ssh --home="{tmp_path / "my home"}" --cluster=tpemu.local '
            "--proxy=proxy.example:3080 %r@%h:%p\n") in text
    assert f'    UserKnownHostsFile "{prof.known_hosts_path}"\n' in text
    assert f'    CertificateFile "{prof.ssh_cert_path}"\n' in text
    assert "    HostKeyAlgorithms ecdsa-sha2-nistp256-cert-v01@openssh.com,rsa-sha2-512" in text
    assert "    User " not in text
    assert '    User "root"' in ssh_mod.openssh_config(prof, executable="t", login="root", port=22)
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
