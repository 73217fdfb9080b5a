"""Messages of the reverse tunnel between an agent and the proxy (pure, no I/O).

On the wire (``tpemu.net.teleport_ssh``) a dial request is the payload of Teleport's
``teleport-transport-dial`` channel request: ``sshutils.DialReq`` as JSON, parsed as
``lib/reversetunnel/transport.go`` ``parseDialReq`` does (a payload that is not a JSON object of
the right shape is the legacy form: the whole payload is the address), checked as
``DialReq.CheckAndSetDefaults`` (``conn_type`` defaults to ``node``; "serverID or address
required"). :func:`parse_dial_payload` adds a size limit (:data:`MAX_DIAL_PAYLOAD`). The framed
messages below are the earlier tpemu-only form, still used by tests of the frame codec.

Teleport's reverse tunnel (``lib/reversetunnel``, ``lib/sshutils``): an agent dials the proxy
and holds an SSH connection; the proxy opens a transport channel on it whenever a client needs
one of the agent's resources, and the first message on that channel is a dial request naming
the target (Teleport's ``teleport-transport-dial`` request carrying ``sshutils.DialReq`` as JSON;
a refusal comes back with the reason). The agent also sends heartbeats announcing what it
serves. tpemu keeps Teleport's JSON field names and special addresses, framed as
``uint32 big-endian length`` + UTF-8 JSON object, at most :data:`MAX_FRAME` bytes:

* :class:`DialRequest` — proxy → agent, first frame on a transport channel
  (``address``, ``server_id``, ``conn_type``, ``client_src_addr``, ``client_dst_addr`` as in
  ``DialReq``; tpemu adds ``name``, the database name for ``conn_type: db``, and ``identity``,
  the caller's verified identity for the agent to check again);
* :class:`DialResponse` — agent → proxy, ``{"ok": true}`` or ``{"ok": false, "error": …}``;
  after an ``ok`` the channel carries the client's bytes;
* :class:`Heartbeat` — agent → proxy on the heartbeat channel, every heartbeat interval: host
  id, hostname, version and the resources served (``kind``: ``node``/``db``, name, labels …).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from tpemu.wire.errors import LimitExceeded, WireError

MAX_FRAME = 64 * 1024

#: Teleport's names (``lib/reversetunnel``, ``api/constants``).
CHANNEL_TRANSPORT = "teleport-transport"
CHANNEL_HEARTBEAT = "teleport-heartbeat"
LOCAL_NODE = "@local-node"
REMOTE_AUTH_SERVER = "@remote-auth-server"
#: ``types.TunnelType`` values tpemu uses.
NODE = "node"
DATABASE = "db"
KUBE = "kube"
APP = "app"
CONN_TYPES = frozenset({NODE, DATABASE, APP, KUBE, "windows_desktop", "proxy"})


class TunnelProtocolError(WireError):
    """A malformed tunnel frame."""


#: Largest ``teleport-transport-dial`` payload accepted (a DialReq is well under 1 KiB; tpemu's
#: identity extension a few KiB).
MAX_DIAL_PAYLOAD = 64 * 1024
#: tpemu's own request on the ``teleport-heartbeat`` channel: the resources a tpemu agent serves,
#: as JSON. Teleport's proxy counts every request on that channel as a ping
#: (``local_cluster.go`` ``handleHeartbeat``), so the extra request is harmless to it.
REQ_RESOURCES = "resources@tpemu"
#: ``x/crypto/ssh``'s ``Request.Reply`` text for an accepted transport (ignored on channel replies).
CONNECTED = "Connected."


def encode_frame(obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise ValueError(f"tunnel frame of {len(data)} bytes exceeds {MAX_FRAME}")
    return len(data).to_bytes(4, "big") + data


def decode_frame(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], int] | None:
    """The JSON object at the start of ``data`` and the bytes it used, or ``None`` for more."""
    if len(data) < 4:
        return None
    length = int.from_bytes(data[:4], "big")
    if length > MAX_FRAME:
        raise LimitExceeded("tunnel frame", MAX_FRAME, length)
    if len(data) < 4 + length:
        return None
    try:
        obj = json.loads(bytes(data[4:4 + length]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TunnelProtocolError(f"tunnel frame is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise TunnelProtocolError("tunnel frame is not a JSON object")
    return obj, 4 + length


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise TunnelProtocolError(f"{key!r} must be a string")
    return value


@dataclass(frozen=True)
class DialRequest:
    address: str = ""
    server_id: str = ""
    conn_type: str = NODE
    client_src_addr: str = ""
    client_dst_addr: str = ""
    name: str = ""
    identity: dict[str, Any] | None = None

    def encode(self) -> bytes:
        fields = {k: v for k, v in asdict(self).items() if v not in ("", None)}
        return encode_frame(fields | {"conn_type": self.conn_type})

    def to_payload(self) -> bytes:
        """The ``teleport-transport-dial`` payload: DialReq's JSON (``omitempty`` fields left out)."""
        fields = {k: v for k, v in asdict(self).items() if v not in ("", None)}
        return json.dumps(fields | {"conn_type": self.conn_type}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> DialRequest:
        conn_type = _str(obj, "conn_type") or NODE
        if conn_type not in CONN_TYPES:
            raise TunnelProtocolError(f"unknown conn_type {conn_type!r}")
        identity = obj.get("identity")
        if identity is not None and not isinstance(identity, dict):
            raise TunnelProtocolError("'identity' must be an object")
        req = cls(_str(obj, "address"), _str(obj, "server_id"), conn_type, _str(obj, "client_src_addr"),
                  _str(obj, "client_dst_addr"), _str(obj, "name"), identity)
        if not (req.address or req.server_id or req.name):
            raise TunnelProtocolError("serverID or address required")  # Teleport's DialReq check
        return req


def parse_dial_payload(payload: bytes | bytearray | memoryview) -> DialRequest:
    """A ``teleport-transport-dial`` payload → :class:`DialRequest` (``parseDialReq`` + checks).

    Raises :class:`LimitExceeded` past :data:`MAX_DIAL_PAYLOAD`, :class:`TunnelProtocolError`
    for text that is not UTF-8 or names nothing ("serverID or address required").
    """
    if len(payload) > MAX_DIAL_PAYLOAD:
        raise LimitExceeded("teleport-transport-dial payload", MAX_DIAL_PAYLOAD, len(payload))
    data = bytes(payload)
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        obj = None
    if isinstance(obj, dict):
        try:
            return DialRequest.from_json(obj)
        except TunnelProtocolError as exc:
            if "required" in str(exc) or "unknown conn_type" in str(exc):
                raise
            # json.Unmarshal into DialReq fails on a wrong field type: Teleport then takes the
            # payload as a legacy address, which names nothing a tpemu agent serves.
    try:
        address = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TunnelProtocolError("teleport-transport-dial payload is neither JSON nor UTF-8 text") from None
    if not address.strip():
        raise TunnelProtocolError("serverID or address required")
    return DialRequest(address=address)


@dataclass(frozen=True)
class DialResponse:
    ok: bool
    error: str = ""

    def encode(self) -> bytes:
        return encode_frame({"ok": self.ok, "error": self.error} if self.error else {"ok": self.ok})

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> DialResponse:
        ok = obj.get("ok")
        if not isinstance(ok, bool):
            raise TunnelProtocolError("dial response needs a boolean 'ok'")
        return cls(ok, _str(obj, "error"))


@dataclass(frozen=True)
class Resource:
    """One thing an agent serves: ``kind`` ``node`` (SSH) or ``db``."""

    kind: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    protocol: str = ""
    description: str = ""
    addr: str = ""

    @classmethod
    def from_json(cls, obj: Any) -> Resource:
        if not isinstance(obj, dict):
            raise TunnelProtocolError("resource must be an object")
        labels = obj.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in labels.items()):
            raise TunnelProtocolError("resource labels must map strings to strings")
        kind = _str(obj, "kind")
        if kind not in CONN_TYPES:
            raise TunnelProtocolError(f"unknown resource kind {kind!r}")
        name = _str(obj, "name")
        if not name:
            raise TunnelProtocolError("resource without a name")
        return cls(kind, name, dict(labels), _str(obj, "protocol"), _str(obj, "description"), _str(obj, "addr"))


@dataclass(frozen=True)
class Heartbeat:
    host_id: str
    hostname: str
    version: str = ""
    resources: tuple[Resource, ...] = ()

    def encode(self) -> bytes:
        return encode_frame({"type": "heartbeat", "host_id": self.host_id, "hostname": self.hostname,
                             "version": self.version, "resources": [asdict(r) for r in self.resources]})

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Heartbeat:
        if obj.get("type") != "heartbeat":
            raise TunnelProtocolError(f"expected a heartbeat, got type {obj.get('type')!r}")
        resources = obj.get("resources") or []
        if not isinstance(resources, list) or len(resources) > 1000:
            raise TunnelProtocolError("heartbeat resources must be a list of at most 1000")
        host_id = _str(obj, "host_id")
        if not host_id:
            raise TunnelProtocolError("heartbeat without host_id")
        return cls(host_id, _str(obj, "hostname"), _str(obj, "version"),
                   tuple(Resource.from_json(r) for r in resources))
