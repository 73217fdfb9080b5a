"""teleport.yaml-shaped configuration → frozen dataclasses (pure; reads a file only in ``load``).

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tpemu.errors import LocalFault


class ConfigError(LocalFault, ValueError):
    """A configuration value is wrong; the message starts with the key path."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


# --------------------------------------------------------------------------------------------
# Value types


@dataclass(frozen=True, slots=True)
class Addr:
    """A ``host:port`` address; ``[v6]:port`` for IPv6."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, default_port: int | None = None, default_host: str = "127.0.0.1") -> Addr:
        """Parse ``host:port``, ``[v6]:port``, ``:port`` or (with ``default_port``) a bare host.

        A ``scheme://`` prefix (``tcp://``, ``https://``) is allowed and dropped, as Teleport does.
        """
        text = text.strip()
        if "://" in text:
            scheme, _, text = text.partition("://")
            if scheme not in ("tcp", "http", "https"):
                raise ValueError(f"unsupported scheme {scheme!r} in address")
            text = text.rstrip("/")
        host: str
        port_text: str | None
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep:
                raise ValueError(f"unterminated '[' in address {text!r}")
            port_text = rest[1:] if rest.startswith(":") else None
            if rest and not rest.startswith(":"):
                raise ValueError(f"junk after ']' in address {text!r}")
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        elif ":" in text:
            raise ValueError(f"IPv6 address {text!r} must be written as [addr]:port")
        else:
            host, port_text = text, None
        if not port_text:
            if default_port is None:
                raise ValueError(f"address {text!r} has no port")
            port = default_port
        else:
            if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
                raise ValueError(f"bad port {port_text!r} in address {text!r}")
            port = int(port_text)
        return cls(host or default_host, port)


def parse_duration(value: object) -> float:
    """Seconds from a Go-style duration (``30s``, ``1m30s``, ``500ms``, ``2h``) or a number."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s or 5m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("durations cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 30s or 5m")
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", value.strip())
    if not parts or "".join(n + u for n, u in parts) != value.strip():
        raise ValueError(f"bad duration {value!r} (use e.g. 30s, 5m, 1h30m, 500ms)")
    return sum(float(n) * units[u] for n, u in parts)


class Duration(float):
    """Seconds, written in YAML as a Go duration."""


# --------------------------------------------------------------------------------------------
# Sections. Field metadata: "key" (YAML name when it differs), "ignored" (Teleport key accepted
# but not emulated), "default_port" (for Addr fields: a bare host gets this port), "doc".


def _f(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None, **meta: Any) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _ignored() -> Any:
    return field(default=None, metadata={"ignored": True})


@dataclass(frozen=True)
class LogFormat:
    output: str = "text"
    extra_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogConfig:
    output: str = "stderr"
    severity: str = "INFO"
    format: LogFormat = _f(factory=LogFormat)


@dataclass(frozen=True)
class Storage:
    """``teleport.storage``: the Auth Service's backend.

    ``type: sqlite`` (default; Teleport's ``dir`` is the same) keeps one SQLite file at ``path``
    (default ``<data_dir>/backend/sqlite.db``); ``type: postgresql`` uses the server named by
    ``conn_string`` (needs ``pip install 'tpemu[postgres]'``). ``sync`` is SQLite's synchronous
    mode (tpemu's default FULL: a write that returned survives a crash).
    """

    type: str = "sqlite"
    path: str = ""
    conn_string: str = ""
    #: lib/backend/lite ``Config.Sync`` (Teleport's default FULL too).
    sync: str = "FULL"
    journal: object = _ignored()
    audit_events_uri: object = _ignored()
    audit_sessions_uri: object = _ignored()
    change_feed_conn_string: object = _ignored()
    auth_mode: object = _ignored()
    region: object = _ignored()
    table_name: object = _ignored()
    poll_stream_period: object = _ignored()


@dataclass(frozen=True)
class TeleportSection:
    nodename: str = ""
    data_dir: str = ""
    auth_token: str = ""
    proxy_server: Addr | None = _f(None, default_port=3080)
    auth_server: Addr | None = _f(None, default_port=3025)
    auth_servers: tuple[Addr, ...] = _f((), default_port=3025)
    ca_pin: tuple[str, ...] = ()
    log: LogConfig = _f(factory=LogConfig)
    diag_addr: Addr | None = None
    advertise_ip: str = ""
    join_params: object = _ignored()
    connection_limits: object = _ignored()
    cache: object = _ignored()
    storage: Storage = _f(factory=Storage)
    pid_file: object = _ignored()
    #: lib/config/fileconf.go ``Global``: TLS cipher suites and SSH algorithm lists; tpemu uses
    #: Python's/OpenSSL's and asyncssh's own lists (reported as not emulated).
    ciphersuites: object = _ignored()
    kex_algos: object = _ignored()
    mac_algos: object = _ignored()
    ciphers: object = _ignored()
    ca_signature_algo: object = _ignored()


@dataclass(frozen=True)
class Authentication:
    """``auth_service.authentication``: only the key algorithms are emulated.

    ``signature_algorithm_suite``: ``legacy`` gives RSA 2048 keys; ``balanced-v1`` (and the
    default) ECDSA P-256 — Teleport 17's suites, applied when the cluster's CAs are first made.
    """

    signature_algorithm_suite: str = ""
    type: object = _ignored()
    second_factor: object = _ignored()
    webauthn: object = _ignored()
    u2f: object = _ignored()
    connector_name: object = _ignored()
    local_auth: object = _ignored()
    require_session_mfa: object = _ignored()
    device_trust: object = _ignored()
    locking_mode: object = _ignored()
    passwordless: object = _ignored()
    headless: object = _ignored()
    default_session_ttl: object = _ignored()
    second_factors: object = _ignored()
    piv_slot: object = _ignored()
    hardware_key: object = _ignored()
    stable_unix_user_config: object = _ignored()


@dataclass(frozen=True)
class AuthService:
    enabled: bool = True
    listen_addr: Addr = _f(Addr("127.0.0.1", 3025), default_port=3025)
    public_addr: tuple[str, ...] = ()
    cluster_name: str = "tpemu.local"
    proxy_listener_mode: str = "multiplex"
    tokens: tuple[str, ...] = ()
    authentication: Authentication = _f(factory=Authentication)
    session_recording: object = _ignored()
    license_file: object = _ignored()
    message_of_the_day: object = _ignored()
    client_idle_timeout: object = _ignored()
    disconnect_expired_cert: object = _ignored()
    #: Reverse-tunnel heartbeat period and how many heartbeats may be missed before an agent is
    #: dropped. Teleport's defaults: ``lib/defaults`` ``KeepAliveInterval`` = 5 minutes and
    #: ``KeepAliveCountMax`` = 3 (the cluster networking config; agents ping every interval,
    #: ``lib/reversetunnel/agent.go``).
    keep_alive_interval: Duration = Duration(300.0)
    keep_alive_count_max: int = 3
    routing_strategy: object = _ignored()
    tunnel_strategy: object = _ignored()
    proxy_ping_interval: object = _ignored()
    case_insensitive_routing: object = _ignored()
    #: lib/config/fileconf.go ``Auth``: the Auth Service's own PROXY-protocol switch, idle and dial
    #: timeouts, host-key checks at the proxy (accepted, not emulated).
    proxy_protocol: object = _ignored()
    web_idle_timeout: object = _ignored()
    ssh_dial_timeout: object = _ignored()
    session_control_timeout: object = _ignored()
    proxy_checks_host_keys: object = _ignored()
    reverse_tunnels: object = _ignored()
    kubeconfig_file: object = _ignored()
    client_idle_timeout_message: object = _ignored()
    ca_key_params: object = _ignored()
    load_all_cas: object = _ignored()
    hosted_plugins: object = _ignored()
    access_monitoring: object = _ignored()


@dataclass(frozen=True)
class PassthroughRule:
    """tpemu: send matching connections, untouched from byte 0, to ``target`` (like sslh/HAProxy).

    A TLS rule matches on ``alpn`` (any offered name) and/or ``sni`` (exact, or ``*.suffix``);
    ``protocol: ssh|http|postgres`` matches those plain protocols. ``send_proxy: v1|v2`` puts a
    PROXY header with the client's address in front of the bytes.
    """

    name: str = ""
    target: Addr | None = None
    alpn: tuple[str, ...] = ()
    sni: tuple[str, ...] = ()
    protocol: str = "tls"
    send_proxy: str = ""


@dataclass(frozen=True)
class KeyPairPaths:
    """One ``proxy_service.https_keypairs`` entry (fileconf.go ``KeyPair``)."""

    key_file: str = ""
    cert_file: str = ""


@dataclass(frozen=True)
class ProxyService:
    enabled: bool = True
    web_listen_addr: Addr = _f(Addr("127.0.0.1", 3080), default_port=3080)
    public_addr: tuple[str, ...] = ()
    listen_addr: Addr | None = _f(None, default_port=3023)
    ssh_public_addr: tuple[str, ...] = ()
    tunnel_listen_addr: Addr | None = _f(None, default_port=3024)
    tunnel_public_addr: tuple[str, ...] = ()
    peer_listen_addr: Addr | None = _f(None, default_port=3021)
    peer_public_addr: tuple[str, ...] = ()
    postgres_listen_addr: Addr | None = _f(None, default_port=5432)
    postgres_public_addr: tuple[str, ...] = ()
    mysql_listen_addr: Addr | None = _f(None, default_port=3036)
    mysql_public_addr: tuple[str, ...] = ()
    mongo_listen_addr: Addr | None = _f(None, default_port=27017)
    mongo_public_addr: tuple[str, ...] = ()
    kube_listen_addr: Addr | None = _f(None, default_port=3026)
    kube_public_addr: tuple[str, ...] = ()
    #: Teleport's tri-state: ``on`` (a PROXY header is required), ``off`` (refused), unset (one
    #: header accepted, source port marked 0: ``lib/multiplexer`` ``PROXYProtocolUnspecified``).
    proxy_protocol: bool | None = None
    trust_x_forwarded_for: bool = False
    #: What the web routes present (``tpemu.proxy.webcert``); the reload interval is not emulated.
    https_keypairs: tuple[KeyPairPaths, ...] = ()
    https_keypairs_reload_interval: object = _ignored()
    acme: object = _ignored()
    kubernetes: object = _ignored()
    ui: object = _ignored()
    idp: object = _ignored()
    proxy_protocol_allow_downgrade: object = _ignored()
    #: The legacy single pair, appended to ``https_keypairs`` as Teleport does.
    https_key_file: str = ""
    https_cert_file: str = ""
    #: The version the MySQL listener's greeting announces (default Teleport's ``8.0.0-Teleport``).
    mysql_server_version: str = ""
    automatic_upgrades_channels: object = _ignored()


@dataclass(frozen=True)
class Command:
    name: str = ""
    command: tuple[str, ...] = ()
    period: Duration = Duration(60.0)


@dataclass(frozen=True)
class SSHService:
    enabled: bool = True
    listen_addr: Addr = _f(Addr("127.0.0.1", 3022), default_port=3022)
    public_addr: tuple[str, ...] = ()
    labels: Mapping[str, str] = _f(factory=dict)
    commands: tuple[Command, ...] = ()
    port_forwarding: bool = False
    enhanced_recording: object = _ignored()
    pam: object = _ignored()
    x11: object = _ignored()
    permit_user_env: object = _ignored()
    disable_create_host_user: object = _ignored()
    #: lib/config/fileconf.go ``SSH``: scp/sftp switch, restricted sessions, direct listening
    #: behind a tunnel, namespace (accepted, not emulated; TCP forwarding is ``port_forwarding``).
    ssh_file_copy: object = _ignored()
    restricted_session: object = _ignored()
    force_listen: object = _ignored()
    namespace: object = _ignored()


@dataclass(frozen=True)
class DatabaseTLS:
    mode: str = "verify-full"
    ca_cert_file: str = ""
    server_name: str = ""
    trust_system_cert_pool: object = _ignored()


@dataclass(frozen=True)
class Database:
    name: str = ""
    protocol: str = ""
    #: ``embedded`` (default): a real engine the agent starts and supervises (PostgreSQL, Redis,
    #: nx-27017, MariaDB; see ``tpemu.agent.engines``); ``emulated``: tpemu's in-process emulator
    #: (Postgres, MySQL, Redis; MongoDB has none, nx-27017 serves it); ``host:port``: your own server.
    uri: str = "embedded"
    description: str = ""
    static_labels: Mapping[str, str] = _f(factory=dict)
    tls: DatabaseTLS = _f(factory=DatabaseTLS)
    admin_user: object = _ignored()
    dynamic_labels: object = _ignored()
    aws: object = _ignored()
    gcp: object = _ignored()
    azure: object = _ignored()
    ad: object = _ignored()
    mysql: object = _ignored()
    ca_cert_file: object = _ignored()
    oracle: object = _ignored()


@dataclass(frozen=True)
class DBService:
    enabled: bool = False
    listen_addr: object = _ignored()
    databases: tuple[Database, ...] = ()
    resources: object = _ignored()
    aws: object = _ignored()
    azure: object = _ignored()


@dataclass(frozen=True)
class TpemuProxy:
    """``tpemu.proxy_service`` — the proxy's settings Teleport has no key for.

    ``sniff_timeout``, ``max_client_hello``, ``max_pending``: the deadline and size caps of
    first-bytes detection (Teleport's multiplexer has fixed ones). ``passthrough``: connections
    spliced untouched to another server. ``redis_listen_addr``: a Redis listener (Teleport has
    none; the seed's port table lists 6379). ``proxy_protocol_trusted_cidrs``: only these networks
    (the load balancers) may send a PROXY header naming a client; empty = any peer (Teleport's
    behaviour). ``web_certificate``: without ``https_keypairs``, ``cluster`` (default) presents the
    proxy's Auth-issued certificate on the web routes (tpemu's clients verify it with the cluster
    CA); ``self-signed`` makes and presents Teleport's self-signed ``webproxy_cert.pem``.
    ``workers``: processes accepting on the same ports with ``SO_REUSEPORT``, every route served by
    every one (:mod:`tpemu.proxy.workers`).
    """

    web_certificate: str = "cluster"
    workers: int = 1
    sniff_timeout: Duration = Duration(5.0)
    max_client_hello: int = 16384
    max_pending: int = 4096
    passthrough: tuple[PassthroughRule, ...] = ()
    redis_listen_addr: Addr | None = _f(None, default_port=6379)
    proxy_protocol_trusted_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class TpemuExtension:
    """``tpemu:`` — settings Teleport has no key for, kept in one top-level section so the rest
    of the file stays Teleport's (Teleport's ``lib/config/fileconf.go`` ``ReadConfig`` parses with
    ``yaml.UnmarshalStrict``: delete this one section and the file is a teleport.yaml).

    ``reject_old_clients``: the Auth API closes (TCP reset) a client whose ``version`` is below
    ``min_client_version``, as Teleport does with ``TELEPORT_UNSTABLE_REJECT_OLD_CLIENTS=yes``
    (``lib/auth/middleware.go`` ``ValidateClientVersion``); the environment variable works too.
    ``proxy_service``: see :class:`TpemuProxy`.
    """

    reject_old_clients: bool = False
    proxy_service: TpemuProxy = _f(factory=TpemuProxy)


#: tpemu-only keys that were once written inside Teleport's ``proxy_service`` section: the old
#: name there → the name under ``tpemu.proxy_service``. The old spelling still loads (moved, with
#: a warning from :func:`moved_keys`), so existing files keep working; Teleport would refuse it.
MOVED_PROXY_KEYS = {
    "sniff_timeout": "sniff_timeout",
    "max_client_hello": "max_client_hello",
    "max_pending": "max_pending",
    "passthrough": "passthrough",
    "redis_listen_addr": "redis_listen_addr",
    "tpemu_proxy_protocol_trusted_cidrs": "proxy_protocol_trusted_cidrs",
}


@dataclass(frozen=True)
class KubernetesService:
    """``kubernetes_service``: an emulated cluster named ``kube_cluster_name``, or, with
    ``kubeconfig_file``, the real cluster of that kubeconfig's current context (forwarded with
    Teleport's impersonation headers, :mod:`tpemu.agent.kube.remote`)."""

    enabled: bool = False
    listen_addr: Addr | None = _f(None, default_port=3026)
    public_addr: tuple[str, ...] = ()
    kube_cluster_name: str = ""
    labels: Mapping[str, str] = _f(factory=dict)
    kubeconfig_file: str = ""
    resources: object = _ignored()
    commands: object = _ignored()


@dataclass(frozen=True)
class AppRewrite:
    """``lib/config/fileconf.go`` ``Rewrite`` (applied by ``tpemu.agent.app_rewrite``)."""
    #: Hosts whose redirects (``3xx`` ``Location``) are sent to the app's public address.
    redirect: tuple[str, ...] = ()
    #: ``"Name: value"`` request headers; the value may use ``{{internal.X}}``/``{{external.X}}``.
    headers: tuple[str, ...] = ()
    jwt_claims: object = _ignored()


@dataclass(frozen=True)
class App:
    name: str = ""
    #: ``http://host:port``, ``https://…``, ``tcp://host:port``, or ``emulated-echo`` (tpemu's echo app).
    uri: str = ""
    public_addr: str = ""
    description: str = ""
    labels: Mapping[str, str] = _f(factory=dict)
    insecure_skip_verify: bool = False
    rewrite: AppRewrite = _f(factory=AppRewrite)
    commands: object = _ignored()
    aws: object = _ignored()
    cloud: object = _ignored()
    required_apps: object = _ignored()
    use_any_proxy_public_addr: object = _ignored()
    cors: object = _ignored()
    tcp_ports: object = _ignored()
    mcp: object = _ignored()


@dataclass(frozen=True)
class AppService:
    enabled: bool = False
    listen_addr: object = _ignored()
    apps: tuple[App, ...] = ()
    #: Teleport's ``debug_app``: a ``dumper`` app that shows each request it gets.
    debug_app: bool = False
    resources: object = _ignored()


@dataclass(frozen=True)
class Config:
    version: str = "v3"
    teleport: TeleportSection = _f(factory=TeleportSection)
    auth_service: AuthService = _f(factory=AuthService)
    proxy_service: ProxyService = _f(factory=ProxyService)
    ssh_service: SSHService = _f(factory=SSHService)
    db_service: DBService = _f(factory=DBService)
    app_service: AppService = _f(factory=AppService)
    kubernetes_service: KubernetesService = _f(factory=KubernetesService)
    windows_desktop_service: object = _ignored()
    discovery_service: object = _ignored()
    jamf_service: object = _ignored()
    okta_service: object = _ignored()
    debug_service: object = _ignored()
    tracing_service: object = _ignored()
    metrics_service: object = _ignored()
    plugin_service: object = _ignored()
    access_graph: object = _ignored()
    tpemu: TpemuExtension = _f(factory=TpemuExtension)

    @property
    def multiplex(self) -> bool:
        """Whether every proxy protocol shares the web port (TLS routing)."""
        return self.auth_service.proxy_listener_mode == "multiplex"

    def data_dir(self) -> Path:
        """``teleport.data_dir``, or ``$TPEMU_DATA_DIR``, or ``~/.local/share/tpemu``."""
        text = self.teleport.data_dir or os.environ.get("TPEMU_DATA_DIR", "")
        return Path(text).expanduser() if text else Path.home() / ".local" / "share" / "tpemu"


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
