"""teleport.yaml-shaped configuration → frozen dataclasses (pure; reads a file only in ``load``).

This module loads and validates; the sections and their keys are :mod:`tpemu.config_schema`
(re-exported here, so ``tpemu.config.Addr`` and friends keep their names).

Section and key names are Teleport's own wherever they mean the same thing (``teleport:``,
``auth_service:``, ``proxy_service:``, ``ssh_service:``, ``db_service:``), so a real
teleport.yaml loads. Every key outside the one ``tpemu:`` section is one of Teleport's own
(``lib/config/fileconf.go``), so deleting ``tpemu:`` leaves a file Teleport's strict parser
(``yaml.UnmarshalStrict``) accepts. Unknown keys are errors that name the key path
(``proxy_service.web_listen_adr: unknown key``); keys Teleport has but tpemu does not emulate are
accepted and reported by :func:`ignored_keys`. tpemu-only keys written in a Teleport section (the
spelling before ``tpemu:`` existed) still load, moved, and are reported by :func:`moved_keys`.

Addresses default to loopback: a ``:3080`` address binds ``127.0.0.1``, never all interfaces,
unless the host is written out.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tpemu.config_schema import (
    MOVED_PROXY_KEYS,
    Addr,
    App,
    AppRewrite,
    AppService,
    Authentication,
    AuthService,
    Command,
    Config,
    ConfigError,
    Database,
    DatabaseTLS,
    DBService,
    Duration,
    KeyPairPaths,
    KubernetesService,
    LogConfig,
    LogFormat,
    PassthroughRule,
    PodPort,
    ProxyService,
    SSHService,
    Storage,
    TeleportSection,
    TpemuExtension,
    TpemuKube,
    TpemuProxy,
    parse_duration,
)

__all__ = [
    "MOVED_PROXY_KEYS",
    "Addr",
    "App",
    "AppRewrite",
    "AppService",
    "AuthService",
    "Authentication",
    "Command",
    "Config",
    "ConfigError",
    "DBService",
    "Database",
    "DatabaseTLS",
    "Duration",
    "KeyPairPaths",
    "KubernetesService",
    "LogConfig",
    "LogFormat",
    "PassthroughRule",
    "PodPort",
    "ProxyService",
    "SSHService",
    "Storage",
    "TeleportSection",
    "TpemuExtension",
    "TpemuKube",
    "TpemuProxy",
    "from_dict",
    "ignored_keys",
    "load",
    "loads",
    "moved_keys",
    "parse_duration",
]


# --------------------------------------------------------------------------------------------
# Loading

_BOOL_WORDS = {"yes": True, "no": False, "true": True, "false": False, "on": True, "off": False,
               "1": True, "0": False}
_MODES = ("multiplex", "separate")


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML config file; raises :class:`ConfigError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config {os.fspath(path)!r}: {exc.strerror}") from None
    return loads(text)


def loads(text: str) -> Config:
    """Validate a YAML config held in a string; raises :class:`ConfigError`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError("", f"invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    return from_dict(data)


def from_dict(data: object) -> Config:
    """Build a :class:`Config` from parsed YAML; raises :class:`ConfigError`."""
    cfg: Config = _build(Config, _move_tpemu_keys(data), "")
    _validate(cfg)
    return cfg


def moved_keys(data: object) -> list[tuple[str, str]]:
    """``(old path, new path)`` for each tpemu-only key ``data`` writes in a Teleport section."""
    if not isinstance(data, dict) or not isinstance(data.get("proxy_service"), dict):
        return []
    return [(f"proxy_service.{old}", f"tpemu.proxy_service.{new}")
            for old, new in MOVED_PROXY_KEYS.items() if old in data["proxy_service"]]


def _move_tpemu_keys(data: object) -> object:
    # A copy with the old spellings moved under tpemu.proxy_service (the caller's dict untouched).
    moves = moved_keys(data)
    if not moves:
        return data
    assert isinstance(data, dict)
    out = dict(data)
    proxy = dict(out["proxy_service"])
    ext = out.get("tpemu")
    if ext is None:
        ext = {}
    if not isinstance(ext, dict):
        raise ConfigError("tpemu", f"expected a mapping, got {_kind(ext)}")
    ext = dict(ext)
    section = ext.get("proxy_service")
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError("tpemu.proxy_service", f"expected a mapping, got {_kind(section)}")
    section = dict(section)
    for old_path, new_path in moves:
        old, new = old_path.rpartition(".")[2], new_path.rpartition(".")[2]
        if new in section:
            raise ConfigError(old_path, f"set twice: this tpemu-only key now lives at {new_path} only "
                                        "(Teleport refuses unknown keys in proxy_service); remove this one")
        section[new] = proxy.pop(old)
    ext["proxy_service"] = section
    out["proxy_service"], out["tpemu"] = proxy, ext
    return out


def ignored_keys(data: object, cls: type = Config, path: str = "") -> list[str]:
    """The key paths present in ``data`` that tpemu accepts but does not emulate."""
    out: list[str] = []
    if not isinstance(data, dict):
        return out
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f.metadata.get("key", f.name)
        if key not in data:
            continue
        sub = f"{path}.{key}" if path else key
        if f.metadata.get("ignored"):
            out.append(sub)
        elif dataclasses.is_dataclass(hints[f.name]):
            out.extend(ignored_keys(data[key], hints[f.name], sub))
    return out


def _build(cls: type, data: object, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{path}.{key}" if path else str(key), f"unknown key (known keys: {known})")
    kwargs: dict[str, Any] = {}
    for key, f in fields.items():
        if key not in data:
            continue
        sub = f"{path}.{key}" if path else key
        if f.metadata.get("ignored"):
            kwargs[f.name] = data[key]
            continue
        kwargs[f.name] = _convert(hints[f.name], data[key], sub, f.metadata)
    return cls(**kwargs)


def _convert(tp: Any, value: object, path: str, meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if (value is None or value == "") and type(None) in args:
            return None  # teleport.yaml writes unset addresses as
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path, meta)
    if tp is Addr:
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ConfigError(path, f"expected host:port, got {_kind(value)}")
        try:
            return Addr.parse(str(value), meta.get("default_port"))
        except ValueError as exc:
            raise ConfigError(path, str(exc)) from None
    if tp is Duration:
        try:
            return Duration(parse_duration(value))
        except ValueError as exc:
            raise ConfigError(path, str(exc)) from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str | int) and str(value).lower() in _BOOL_WORDS:
            return _BOOL_WORDS[str(value).lower()]
        raise ConfigError(path, f"expected yes/no (or on/off, true/false), got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {_kind(value)}")
        if value < 0:
            raise ConfigError(path, "must not be negative")
        return value
    if tp is str:
        if isinstance(value, bool) or value is None or isinstance(value, dict | list):
            raise ConfigError(path, f"expected a string, got {_kind(value)}")
        return str(value)
    if origin is tuple:
        item = args[0]
        if isinstance(value, str) or (item is Addr and isinstance(value, int)):
            value = [value]  # Teleport accepts a single value where a list is allowed
        if value is None or value == [""]:
            return ()
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {_kind(value)}")
        return tuple(_convert(item, v, f"{path}[{i}]", meta) for i, v in enumerate(value))
    if origin is Mapping:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {_kind(value)}")
        return {str(k): _convert(str, v, f"{path}.{k}", {}) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(typing.cast(type, tp), {} if value is None else value, path)
    raise ConfigError(path, f"unsupported config type {tp!r}")  # a bug in this module


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _validate(cfg: Config) -> None:
    if cfg.version not in ("v1", "v2", "v3"):
        raise ConfigError("version", f"unsupported config version {cfg.version!r} (v1, v2 or v3)")
    if cfg.auth_service.proxy_listener_mode not in _MODES:
        raise ConfigError("auth_service.proxy_listener_mode",
                          f"must be multiplex or separate, got {cfg.auth_service.proxy_listener_mode!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.auth_service.cluster_name):
        raise ConfigError("auth_service.cluster_name", "must be a DNS-like name")
    for i, rule in enumerate(cfg.tpemu.proxy_service.passthrough):
        p = f"tpemu.proxy_service.passthrough[{i}]"
        if rule.target is None:
            raise ConfigError(f"{p}.target", "required: the host:port to send matching connections to")
        if rule.protocol not in ("tls", "ssh", "http", "postgres"):
            raise ConfigError(f"{p}.protocol", f"must be tls, ssh, http or postgres, got {rule.protocol!r}")
        if rule.protocol == "tls" and not rule.alpn and not rule.sni:
            raise ConfigError(p, "a tls rule needs alpn and/or sni to match on")
        if rule.protocol != "tls" and (rule.alpn or rule.sni):
            raise ConfigError(p, f"alpn/sni only apply to tls rules, not {rule.protocol}")
        if rule.send_proxy not in ("", "v1", "v2"):
            raise ConfigError(f"{p}.send_proxy", f"must be v1 or v2, got {rule.send_proxy!r}")
        for j, pattern in enumerate(rule.sni):
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9._-]+", pattern):
                raise ConfigError(f"{p}.sni[{j}]", f"bad SNI pattern {pattern!r} (a name or *.suffix)")
    for i, db in enumerate(cfg.db_service.databases):
        p = f"db_service.databases[{i}]"
        if not db.name:
            raise ConfigError(f"{p}.name", "required")
        if db.protocol not in ("postgres", "mysql", "mongodb", "redis"):
            raise ConfigError(f"{p}.protocol", f"must be postgres, mysql, mongodb or redis, got {db.protocol!r}")
        if db.uri not in ("embedded", "emulated"):
            try:
                Addr.parse(db.uri.removeprefix(f"{db.protocol}://"))
            except ValueError as exc:
                raise ConfigError(f"{p}.uri", f"{exc} (use host:port, 'embedded' or 'emulated')") from None
    storage = cfg.teleport.storage
    if storage.type not in ("sqlite", "dir", "postgresql", "postgres"):
        raise ConfigError("teleport.storage.type", f"must be sqlite or postgresql, got {storage.type!r}")
    if storage.type in ("postgresql", "postgres") and not storage.conn_string:
        raise ConfigError("teleport.storage.conn_string", "required for type postgresql "
                          "(e.g. postgresql://user@127.0.0.1:5432/teleport)")
    if storage.sync.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ConfigError("teleport.storage.sync", f"must be OFF, NORMAL, FULL or EXTRA, got {storage.sync!r}")
    suite = cfg.auth_service.authentication.signature_algorithm_suite
    if suite not in ("", "legacy", "balanced-v1", "fips-v1", "hsm-v1"):
        raise ConfigError("auth_service.authentication.signature_algorithm_suite",
                          f"must be legacy, balanced-v1, fips-v1 or hsm-v1, got {suite!r}")
    for i, entry in enumerate(cfg.auth_service.tokens):
        roles, sep, value = entry.partition(":")
        if not sep or not value or not roles:
            raise ConfigError(f"auth_service.tokens[{i}]", "expected 'role[,role…]:token' (e.g. 'node,db:secret')")
    for i, pp in enumerate(cfg.tpemu.kubernetes_service.pod_ports):
        p = f"tpemu.kubernetes_service.pod_ports[{i}]"
        if not 0 < pp.port < 65536:
            raise ConfigError(f"{p}.port", f"must be a port number 1..65535, got {pp.port}")
        if pp.target is None:
            raise ConfigError(f"{p}.target", "required: the loopback host:port that serves this pod port")
        try:
            loopback = ipaddress.ip_address(pp.target.host) in ipaddress.ip_network("127.0.0.0/8")
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(f"{p}.target", f"must be an address in 127.0.0.0/8 (a listener on the agent's own "
                                             f"host), got {pp.target.host!r}")
    ext = cfg.tpemu.proxy_service
    if ext.web_certificate not in ("cluster", "self-signed"):
        raise ConfigError("tpemu.proxy_service.web_certificate",
                          f"must be cluster or self-signed, got {ext.web_certificate!r}")
    for i, pair in enumerate(cfg.proxy_service.https_keypairs):
        for name in ("key_file", "cert_file"):
            if not getattr(pair, name):
                raise ConfigError(f"proxy_service.https_keypairs[{i}].{name}", "required (a PEM file path)")
    version = cfg.proxy_service.mysql_server_version
    if version and not re.fullmatch(r"[\x21-\x7e]{1,64}", version):
        raise ConfigError("proxy_service.mysql_server_version", f"expected a version such as 8.0.36, got {version!r}")
    if bool(cfg.proxy_service.https_key_file) != bool(cfg.proxy_service.https_cert_file):
        raise ConfigError("proxy_service.https_key_file", "https_key_file and https_cert_file go together")
    for i, cidr in enumerate(ext.proxy_protocol_trusted_cidrs):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"tpemu.proxy_service.proxy_protocol_trusted_cidrs[{i}]",
                              f"expected an address or network such as 10.0.0.0/8, got {cidr!r}") from None
    if ext.sniff_timeout <= 0:
        raise ConfigError("tpemu.proxy_service.sniff_timeout", "must be positive")
    if not 1 <= ext.workers <= 64:
        raise ConfigError("tpemu.proxy_service.workers", "must be between 1 and 64 (processes accepting on the "
                          "same ports)")
    if not 1024 <= ext.max_client_hello <= 65536:
        raise ConfigError("tpemu.proxy_service.max_client_hello", "must be between 1024 and 65536 bytes")
