"""The schema of tpemu's teleport.yaml: every section and key as a frozen dataclass (pure).

Field metadata says how :mod:`tpemu.config` reads each key: ``key`` (the YAML name when it
differs from the field's), ``ignored`` (a Teleport key accepted but not emulated),
``default_port`` (for :class:`Addr` fields: a bare host gets this port), ``doc``. Section and key
names follow Teleport's ``lib/config/fileconf.go``; tpemu's own keys live under ``tpemu:``
(:class:`TpemuExtension`). The value types (:class:`Addr`, :class:`Duration`) and
:class:`ConfigError` are here too, so the schema stands alone; loading and validation are in
:mod:`tpemu.config`, which re-exports every name below.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
class PodPort:
    """``tpemu.kubernetes_service.pod_ports[]``: what emulated pods serve to ``kubectl port-forward``.

    An emulated pod runs no process, so a port of it is a real listener on the agent's host:
    ``port`` (the pod's port, as ``kubectl port-forward pod/x 8080:<port>`` names it) of the pods
    with all of ``pod_labels`` (every pod when empty) in ``namespace`` (every one when empty) is
    ``target``, which must be a loopback address (127.0.0.0/8). A port no entry serves is refused as
    a pod with nothing listening on it is (the kubelet's "connection refused" on the error stream).
    """

    port: int = 0
    target: Addr | None = None
    pod_labels: Mapping[str, str] = _f(factory=dict)
    namespace: str = ""


@dataclass(frozen=True)
class TpemuKube:
    """``tpemu.kubernetes_service`` — the Kubernetes Service's settings Teleport has no key for."""

    pod_ports: tuple[PodPort, ...] = ()


@dataclass(frozen=True)
class TpemuExtension:
    """``tpemu:`` — settings Teleport has no key for, kept in one top-level section so the rest
    of the file stays Teleport's (Teleport's ``lib/config/fileconf.go`` ``ReadConfig`` parses with
    ``yaml.UnmarshalStrict``: delete this one section and the file is a teleport.yaml).

    ``reject_old_clients``: the Auth API closes (TCP reset) a client whose ``version`` is below
    ``min_client_version``, as Teleport does with ``TELEPORT_UNSTABLE_REJECT_OLD_CLIENTS=yes``
    (``lib/auth/middleware.go`` ``ValidateClientVersion``); the environment variable works too.
    ``proxy_service``: see :class:`TpemuProxy`; ``kubernetes_service``: see :class:`TpemuKube`.
    """

    reject_old_clients: bool = False
    proxy_service: TpemuProxy = _f(factory=TpemuProxy)
    kubernetes_service: TpemuKube = _f(factory=TpemuKube)


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
