"""A teleport.yaml with Teleport's keys loads; keys tpemu does not emulate are reported; every
key outside the one ``tpemu:`` section is one of Teleport's own.

Follows ``lib/config/fileconf.go`` (``FileConfig``, ``Global``, ``Auth``, ``AuthenticationConfig``,
``Proxy``, ``SSH``, ``Databases``/``Database``/``DatabaseTLS``, ``Apps``/``App``, ``Kube``,
``Log``/``LogFormat``; ``storage`` is ``backend.Config``, whose parameters are the backend's own:
``lib/backend/lite`` ``Config`` has ``path``, ``sync``, ``journal``, ``poll_stream_period``).
Teleport parses with ``yaml.UnmarshalStrict`` (``ReadConfig``), so one key tpemu adds to a
Teleport section makes Teleport refuse the whole file: tpemu's own settings live under the one
top-level ``tpemu:`` key a user deletes to hand the file to Teleport.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

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
  connection_limits: {max_connections: 1000}
auth_service:
  enabled: true
  cluster_name: example.teleport.sh
  proxy_protocol: on
  keep_alive_count_max: 3
  ca_key_params: {}
ssh_service:
  enabled: true
  ssh_file_copy: false
  port_forwarding: false
proxy_service:
  enabled: true
  https_keypairs_reload_interval: 1h
  mysql_server_version: 8.0.30
metrics_service:
  enabled: false
"""

#: The YAML keys of each ``lib/config/fileconf.go`` struct tpemu models (names only: the contract).
TELEPORT_KEYS: dict[str, set[str]] = {
    "Config": {"version", "teleport", "auth_service", "ssh_service", "proxy_service", "kubernetes_service",
               "app_service", "db_service", "metrics_service", "debug_service", "windows_desktop_service",
               "tracing_service", "discovery_service", "okta_service", "jamf_service", "plugin_service",
               "access_graph"},
    "TeleportSection": {"nodename", "data_dir", "pid_file", "join_params", "auth_servers", "auth_token",
                        "auth_server", "proxy_server", "connection_limits", "log", "storage", "advertise_ip",
                        "cache", "ciphersuites", "ciphers", "kex_algos", "mac_algos", "ca_signature_algo",
                        "ca_pin", "diag_addr"},
    "LogConfig": {"output", "severity", "format"},
    "LogFormat": {"output", "extra_fields"},
    # backend.Config: type + the backend's parameters (lite: path, sync, journal, poll_stream_period;
    # pgbk: conn_string, change_feed_conn_string, auth_mode; dynamo: region, table_name; audit URIs).
    "Storage": {"type", "path", "sync", "journal", "poll_stream_period", "conn_string", "change_feed_conn_string",
                "auth_mode", "region", "table_name", "audit_events_uri", "audit_sessions_uri"},
    "AuthService": {"enabled", "listen_addr", "proxy_protocol", "cluster_name", "tokens", "authentication",
                    "session_recording", "proxy_checks_host_keys", "license_file", "reverse_tunnels", "public_addr",
                    "client_idle_timeout", "disconnect_expired_cert", "session_control_timeout", "kubeconfig_file",
                    "keep_alive_interval", "keep_alive_count_max", "client_idle_timeout_message",
                    "message_of_the_day", "web_idle_timeout", "ca_key_params", "proxy_listener_mode",
                    "routing_strategy", "tunnel_strategy", "proxy_ping_interval", "case_insensitive_routing",
                    "ssh_dial_timeout", "load_all_cas", "hosted_plugins", "access_monitoring"},
    "Authentication": {"type", "second_factor", "second_factors", "connector_name", "u2f", "webauthn",
                       "require_session_mfa", "locking_mode", "local_auth", "passwordless", "headless",
                       "device_trust", "default_session_ttl", "piv_slot", "hardware_key",
                       "signature_algorithm_suite", "stable_unix_user_config"},
    "ProxyService": {"enabled", "listen_addr", "web_listen_addr", "tunnel_listen_addr", "peer_listen_addr",
                     "peer_public_addr", "https_key_file", "https_cert_file", "proxy_protocol",
                     "proxy_protocol_allow_downgrade", "kubernetes", "kube_listen_addr", "kube_public_addr",
                     "public_addr", "ssh_public_addr", "tunnel_public_addr", "https_keypairs",
                     "https_keypairs_reload_interval", "acme", "mysql_listen_addr", "mysql_public_addr",
                     "mysql_server_version", "postgres_listen_addr", "postgres_public_addr", "mongo_listen_addr",
                     "mongo_public_addr", "idp", "ui", "trust_x_forwarded_for", "automatic_upgrades_channels"},
    "KeyPairPaths": {"key_file", "cert_file"},
    "SSHService": {"enabled", "listen_addr", "namespace", "labels", "commands", "permit_user_env", "pam",
                   "public_addr", "enhanced_recording", "restricted_session", "port_forwarding", "x11",
                   "ssh_file_copy", "disable_create_host_user", "force_listen"},
    "Command": {"name", "command", "period"},
    "DBService": {"enabled", "listen_addr", "databases", "resources", "aws", "azure"},
    "Database": {"name", "description", "protocol", "uri", "ca_cert_file", "tls", "mysql", "static_labels",
                 "dynamic_labels", "aws", "gcp", "ad", "azure", "admin_user", "oracle"},
    "DatabaseTLS": {"mode", "server_name", "ca_cert_file", "trust_system_cert_pool"},
    # lib/config/fileconf.go Rewrite (an app's rewrite block).
    "AppRewrite": {"redirect", "headers", "jwt_claims"},
    "AppService": {"enabled", "listen_addr", "debug_app", "apps", "resources"},
    "App": {"name", "description", "uri", "public_addr", "labels", "commands", "insecure_skip_verify", "rewrite",
            "aws", "cloud", "required_apps", "use_any_proxy_public_addr", "cors", "tcp_ports", "mcp"},
    "KubernetesService": {"enabled", "listen_addr", "public_addr", "kubeconfig_file", "kube_cluster_name",
                          "labels", "commands", "resources"},
}


def _schema_keys(cls: type, path: str) -> list[tuple[str, str, str]]:
    """(struct name, key, path) for every YAML key tpemu's schema accepts, outside ``tpemu:``."""
    out: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f.metadata.get("key", f.name)
        if cls is config.Config and key == "tpemu":
            continue
        sub = f"{path}.{key}" if path else key
        out.append((cls.__name__, key, sub))
        tp = hints[f.name]
        for inner in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(inner) and isinstance(inner, type) and inner is not config.Addr:
                out.extend(_schema_keys(inner, sub))
    return out


def test_every_key_outside_the_extension_is_teleports() -> None:
    # Fails as soon as someone adds a tpemu-only key to a Teleport section (Teleport's
    # UnmarshalStrict would then refuse every tpemu config that uses it).
    foreign = [p for struct, key, p in _schema_keys(config.Config, "") if key not in TELEPORT_KEYS[struct]]
    assert foreign == []


def test_every_teleport_key_loads() -> None:
    # The other direction: a real teleport.yaml using any key of these structs loads in tpemu.
    accepted: dict[str, set[str]] = {}
    for struct, key, _ in _schema_keys(config.Config, ""):
        accepted.setdefault(struct, set()).add(key)
    accepted["Config"].add("tpemu")
    missing = {s: sorted(keys - accepted.get(s, set())) for s, keys in TELEPORT_KEYS.items()
               if s != "Storage" and keys - accepted.get(s, set())}
    assert missing == {}


def test_teleport_keys_load_and_are_reported_as_not_emulated() -> None:
    cfg = config.loads(TELEPORT_YAML)
    assert cfg.auth_service.cluster_name == "example.teleport.sh"
    ignored = config.ignored_keys(yaml.safe_load(TELEPORT_YAML))
    for key in ("teleport.ciphersuites", "teleport.kex_algos", "teleport.mac_algos", "teleport.ciphers",
                "teleport.ca_signature_algo", "teleport.connection_limits", "auth_service.proxy_protocol",
                "auth_service.ca_key_params", "ssh_service.ssh_file_copy",
                "proxy_service.https_keypairs_reload_interval", "metrics_service"):
        assert key in ignored, key


@pytest.mark.parametrize("text,path", [
    # Not Teleport keys (fileconf.go: Global has connection_limits, SSH has port_forwarding and
    # enhanced_recording), so Teleport refuses them and so does tpemu.
    ("teleport: {limits: {}}", "teleport.limits"),
    ("ssh_service: {allow_tcp_forwarding: true}", "ssh_service.allow_tcp_forwarding"),
    ("ssh_service: {bpf: {}}", "ssh_service.bpf"),
    ("proxy_service: {trust_x_forwarded_for_header: X-Real-IP}", "proxy_service.trust_x_forwarded_for_header"),
])
def test_keys_teleport_does_not_have_are_refused(text: str, path: str) -> None:
    with pytest.raises(config.ConfigError, match="unknown key") as info:
        config.loads(text)
    assert info.value.path == path


def test_keep_alive_defaults_are_teleports() -> None:
    cfg = config.Config()
    assert cfg.auth_service.keep_alive_interval == 300.0  # lib/defaults KeepAliveInterval: 5 minutes
    assert cfg.auth_service.keep_alive_count_max == 3


TPEMU_SECTION = """tpemu:
  reject_old_clients: true
  proxy_service:
    sniff_timeout: 2s
    max_client_hello: 4096
    max_pending: 10
    redis_listen_addr: ":6380"
    proxy_protocol_trusted_cidrs: [10.0.0.0/8]
    passthrough:
      - {name: app, sni: [app.example.com], target: "127.0.0.1:8443"}
"""


def test_tpemu_settings_live_under_one_extension_key() -> None:
    cfg = config.loads(TELEPORT_YAML + TPEMU_SECTION)
    ext = cfg.tpemu.proxy_service
    assert cfg.tpemu.reject_old_clients is True
    assert (ext.sniff_timeout, ext.max_client_hello, ext.max_pending) == (2.0, 4096, 10)
    assert ext.redis_listen_addr == config.Addr("127.0.0.1", 6380)
    assert ext.proxy_protocol_trusted_cidrs == ("10.0.0.0/8",)
    assert [r.name for r in ext.passthrough] == ["app"]
    # Deleting the one section leaves only Teleport's keys.
    data = yaml.safe_load(TELEPORT_YAML + TPEMU_SECTION)
    del data["tpemu"]
    assert config.moved_keys(data) == [] and config.from_dict(data).tpemu == config.TpemuExtension()
    with pytest.raises(config.ConfigError, match="tpemu.nope"):
        config.loads(TELEPORT_YAML + "tpemu:\n  nope: 1\n")
    with pytest.raises(config.ConfigError, match="tpemu.proxy_service.nope"):
        config.loads("tpemu:\n  proxy_service:\n    nope: 1\n")
    # A typo in a Teleport section is still an error naming the key path.
    with pytest.raises(config.ConfigError, match="teleport.kex_algoz"):
        config.loads(TELEPORT_YAML.replace("kex_algos", "kex_algoz"))


OLD_SPELLING = """proxy_service:
  web_listen_addr: ":3080"
  sniff_timeout: 3s
  max_pending: 7
  redis_listen_addr: ":6381"
  tpemu_proxy_protocol_trusted_cidrs: [192.0.2.0/24]
  passthrough:
    - {name: old, alpn: [h2], target: "127.0.0.1:9443"}
"""


def test_old_spelling_still_loads_moved_and_is_reported() -> None:
    data = yaml.safe_load(OLD_SPELLING)
    cfg = config.from_dict(data)
    ext = cfg.tpemu.proxy_service
    assert (ext.sniff_timeout, ext.max_pending, ext.redis_listen_addr) == (3.0, 7, config.Addr("127.0.0.1", 6381))
    assert ext.proxy_protocol_trusted_cidrs == ("192.0.2.0/24",) and ext.passthrough[0].name == "old"
    assert "sniff_timeout" in data["proxy_service"]  # the caller's dict is not changed
    assert config.moved_keys(data) == [
        ("proxy_service.sniff_timeout", "tpemu.proxy_service.sniff_timeout"),
        ("proxy_service.max_pending", "tpemu.proxy_service.max_pending"),
        ("proxy_service.passthrough", "tpemu.proxy_service.passthrough"),
        ("proxy_service.redis_listen_addr", "tpemu.proxy_service.redis_listen_addr"),
        ("proxy_service.tpemu_proxy_protocol_trusted_cidrs", "tpemu.proxy_service.proxy_protocol_trusted_cidrs"),
    ]
    # Both spellings at once: which one wins would be a guess, so it is an error naming both.
    with pytest.raises(config.ConfigError, match="tpemu.proxy_service.sniff_timeout only") as info:
        config.loads(OLD_SPELLING + "tpemu:\n  proxy_service:\n    sniff_timeout: 1s\n")
    assert info.value.path == "proxy_service.sniff_timeout"


def test_old_spelling_is_reported_at_start_up(tmp_path: Path) -> None:
    from tpemu.cli.common import load_config

    path = tmp_path / "old.yaml"
    path.write_text(OLD_SPELLING)
    _, warnings = load_config(str(path), None)
    assert ("config key proxy_service.tpemu_proxy_protocol_trusted_cidrs is deprecated: tpemu-only keys live "
            "under tpemu: now, write it as tpemu.proxy_service.proxy_protocol_trusted_cidrs (Teleport refuses "
            "unknown keys in its own sections)") in warnings


def test_example_config_is_a_teleport_yaml_plus_the_extension() -> None:
    from tpemu.config_example import EXAMPLE_CONFIG

    data = yaml.safe_load(EXAMPLE_CONFIG)
    assert config.moved_keys(data) == [] and "tpemu" in data
    config.from_dict(data)
