"""Config loading: teleport.yaml keys, key paths in errors, unknown keys, defaults, the example."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpemu import config
from tpemu.config import Addr, ConfigError
from tpemu.config_example import EXAMPLE_CONFIG

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_loads_and_matches_file() -> None:
    cfg = config.loads(EXAMPLE_CONFIG)
    assert cfg.proxy_service.web_listen_addr == Addr("127.0.0.1", 3080)
    assert cfg.multiplex and not cfg.proxy_service.proxy_protocol
    assert (ROOT / "tpemu.example.yaml").read_text() == EXAMPLE_CONFIG


def test_real_teleport_yaml_mostly_loads() -> None:
    # Shaped like `teleport configure` output (v3), with keys tpemu does not emulate.
    cfg = config.loads("""
version: v3
teleport:
  nodename: node1
  data_dir: /var/lib/teleport
  log: {output: stderr, severity: INFO, format: {output: text}}
  ca_pin: ""
  diag_addr: ""
auth_service:
  enabled: "yes"
  listen_addr: 0.0.0.0:3025
  cluster_name: example.teleport.sh
  proxy_listener_mode: multiplex
  authentication: {type: local, second_factor: "off"}
ssh_service:
  enabled: "yes"
  commands: [{name: hostname, command: [hostname], period: 1m0s}]
proxy_service:
  enabled: "yes"
  web_listen_addr: 0.0.0.0:443
  public_addr: example.teleport.sh:443
  https_keypairs: []
  https_keypairs_reload_interval: 0s
  acme: {}
""")
    assert cfg.auth_service.cluster_name == "example.teleport.sh"
    assert cfg.proxy_service.web_listen_addr == Addr("0.0.0.0", 443)
    assert cfg.proxy_service.public_addr == ("example.teleport.sh:443",)
    assert cfg.ssh_service.commands[0].period == 60.0
    assert cfg.auth_service.enabled is True


@pytest.mark.parametrize("text,path,message", [
    ("proxy_service: {web_listen_adr: ':1'}", "proxy_service.web_listen_adr", "unknown key"),
    ("bogus: 1", "bogus", "unknown key"),
    ("proxy_service: {web_listen_addr: 'x:99999'}", "proxy_service.web_listen_addr", "bad port"),
    ("proxy_service: {proxy_protocol: maybe}", "proxy_service.proxy_protocol", "expected yes/no"),
    ("auth_service: {proxy_listener_mode: both}", "auth_service.proxy_listener_mode", "multiplex or separate"),
    ("tpemu: {proxy_service: {sniff_timeout: 5 minutes}}", "tpemu.proxy_service.sniff_timeout", "bad duration"),
    ("tpemu: {proxy_service: {workers: 0}}", "tpemu.proxy_service.workers", "between 1 and 64"),
    ("tpemu: {proxy_service: {workers: 65}}", "tpemu.proxy_service.workers", "between 1 and 64"),
    ("tpemu: {proxy_service: {passthrough: [{name: a}]}}", "tpemu.proxy_service.passthrough[0].target", "required"),
    ("tpemu: {proxy_service: {passthrough: [{target: ':1'}]}}", "tpemu.proxy_service.passthrough[0]",
     "needs alpn and/or sni"),
    ("tpemu: {proxy_service: {passthrough: [{target: ':1', sni: ['a b']}]}}",
     "tpemu.proxy_service.passthrough[0].sni[0]", "bad SNI pattern"),
    # The old spelling (inside proxy_service) still loads, so its errors name where it was moved.
    ("proxy_service: {sniff_timeout: 5 minutes}", "tpemu.proxy_service.sniff_timeout", "bad duration"),
    ("db_service: {databases: [{name: x, protocol: oracle}]}", "db_service.databases[0].protocol", "must be"),
    ("teleport: [1]", "teleport", "expected a mapping"),
    ("proxy_service:\n  web_listen_addr: [\n", "", "invalid YAML at line"),
])
def test_errors_name_the_key_path(text: str, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.loads(text)
    assert info.value.path == path
    assert message in str(info.value) and str(info.value).startswith(path)


def test_public_addr_single_or_list_and_addr_forms() -> None:
    cfg = config.loads("proxy_service: {public_addr: [a.example:443, b.example]}")
    assert cfg.proxy_service.public_addr == ("a.example:443", "b.example")
    assert Addr.parse(":3080") == Addr("127.0.0.1", 3080)
    assert Addr.parse("[::1]:3080") == Addr("::1", 3080) and str(Addr("::1", 1)) == "[::1]:1"
    assert Addr.parse("https://proxy.example:443/") == Addr("proxy.example", 443)
    assert Addr.parse("proxy.example", default_port=3080) == Addr("proxy.example", 3080)
    with pytest.raises(ValueError):
        Addr.parse("::1:80")


def test_durations() -> None:
    assert config.parse_duration("1h30m") == 5400 and config.parse_duration("500ms") == 0.5
    assert config.parse_duration(3) == 3.0
    for bad in ("", "5", "5x", True, -1):
        with pytest.raises(ValueError):
            config.parse_duration(bad)


def test_ignored_keys_reported() -> None:
    import yaml

    raw = yaml.safe_load("proxy_service: {acme: {}, web_listen_addr: ':1'}\nwindows_desktop_service: {}")
    assert config.ignored_keys(raw) == ["proxy_service.acme", "windows_desktop_service"]


def test_pod_ports_are_loopback_listeners() -> None:
    cfg = config.loads("tpemu:\n  kubernetes_service:\n    pod_ports:\n"
                       "      - {port: 80, target: 127.0.0.1:8080, pod_labels: {app: web}, namespace: prod}\n")
    (entry,) = cfg.tpemu.kubernetes_service.pod_ports
    assert (entry.port, entry.target, dict(entry.pod_labels), entry.namespace) == (
        80, Addr("127.0.0.1", 8080), {"app": "web"}, "prod")
    for text, message in (("{port: 0, target: 127.0.0.1:1}", "port number"), ("{port: 80}", "required"),
                          ("{port: 80, target: 10.0.0.1:80}", "127.0.0.0/8"),
                          ("{port: 80, target: 'localhost:80'}", "127.0.0.0/8"),
                          ("{port: 80, target: '[::1]:80'}", "127.0.0.0/8")):
        with pytest.raises(ConfigError, match=message) as info:
            config.loads(f"tpemu: {{kubernetes_service: {{pod_ports: [{text}]}}}}")
        assert info.value.path.startswith("tpemu.kubernetes_service.pod_ports[0].")
