"""A teleport.yaml with Teleport's keys loads; keys tpemu does not emulate are reported.

Follows ``lib/config/fileconf.go`` (``Global``: ``ciphersuites``, ``kex_algos``, ``mac_algos``,
``ciphers``, ``ca_signature_algo``; ``Auth``: ``proxy_protocol``, ``keep_alive_interval``
(default ``lib/defaults`` ``KeepAliveInterval`` = 5 minutes), ``keep_alive_count_max`` (3);
``SSH``: ``ssh_file_copy``, ``allow_tcp_forwarding``). Teleport parses with
``yaml.UnmarshalStrict`` (``ReadConfig``), so tpemu's own settings live under the one top-level
``tpemu:`` key a user deletes to hand the file to Teleport.
"""

from __future__ import annotations

import pytest

from tpemu import config

TELEPORT_YAML = """
version: v3
teleport:
  nodename: node-a
  data_dir: /var/lib/teleport
  ciphersuites: [tls-ecdhe-ecdsa-with-aes-128-gcm-sha256, tls-ecdhe-rsa-with-aes-128-gcm-sha256]
  kex_algos: [curve25519-sha256@libssh.org, ecdh-sha2-nistp256]
  mac_algos: [hmac-sha2-256-etm@openssh.com]
  ciphers: [aes128-gcm@openssh.com, chacha20-poly1305@openssh.com]
  ca_signature_algo: rsa-sha2-512
auth_service:
  enabled: true
  cluster_name: example.teleport.sh
  proxy_protocol: on
  keep_alive_count_max: 3
ssh_service:
  enabled: true
  ssh_file_copy: false
  allow_tcp_forwarding: local
proxy_service:
  enabled: true
"""


def test_teleport_keys_load_and_are_reported_as_not_emulated() -> None:
    cfg = config.loads(TELEPORT_YAML)
    assert cfg.auth_service.cluster_name == "example.teleport.sh"
    import yaml

    ignored = config.ignored_keys(yaml.safe_load(TELEPORT_YAML))
    for key in ("teleport.ciphersuites", "teleport.kex_algos", "teleport.mac_algos", "teleport.ciphers",
                "teleport.ca_signature_algo", "auth_service.proxy_protocol", "ssh_service.ssh_file_copy",
                "ssh_service.allow_tcp_forwarding"):
        assert key in ignored, key


def test_keep_alive_defaults_are_teleports() -> None:
    cfg = config.Config()
    assert cfg.auth_service.keep_alive_interval == 300.0  # lib/defaults KeepAliveInterval: 5 minutes
    assert cfg.auth_service.keep_alive_count_max == 3


def test_tpemu_settings_live_under_one_extension_key() -> None:
    cfg = config.loads(TELEPORT_YAML + "tpemu:\n  reject_old_clients: true\n")
    assert cfg.tpemu.reject_old_clients is True
    with pytest.raises(config.ConfigError, match="tpemu.nope"):
        config.loads(TELEPORT_YAML + "tpemu:\n  nope: 1\n")
    # A typo in a Teleport section is still an error naming the key path.
    with pytest.raises(config.ConfigError, match="teleport.kex_algoz"):
        config.loads(TELEPORT_YAML.replace("kex_algos", "kex_algoz"))
