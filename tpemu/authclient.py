"""Calling the Auth API, joining a cluster, keeping a host identity on disk (glue, shared).

Used by every process that talks to an Auth Service over the network, as Teleport's services
do: the proxy (its own join, forwarding logins and agent joins), agents (joining, heartbeats)
and the administration commands (``tpemu tokens``/``users`` with the admin identity).

* :class:`AuthClient` — HTTP/1.1 requests (h11) on a kept-alive TLS connection, JSON in and out;
  errors come back as the :mod:`tpemu.authapi` exception classes, and TLS refusals are translated:
  the Auth Service refusing our certificate (``tls: unknown certificate authority`` →
  ``certificate signed by unknown authority``, ``certificate expired``), our refusing its
  certificate, an unreachable address — each its own message.
* :func:`join` — Teleport's first-time join: fetch the host CA *without* verification, check it
  against the configured CA pins (``teleport.ca_pin``; without pins it is trust on first use,
  logged as a warning like Teleport's "Joining cluster without validating the identity of the
  Auth Server"), then register over a verified connection with a fresh key pair.
* :class:`HostIdentity` — the key, certificates and CA of a joined host, saved in a folder
  (0600 key) and loaded again at the next start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
from cryptography import x509

from tpemu import TELEPORT_VERSION, authapi, pki
from tpemu import identity as ident
from tpemu.config import Addr
from tpemu.errors import describe as describe_error
from tpemu.net import cert_probe, conn_upgrade, go_tls_errors
from tpemu.net.dial import DialError, open_stream
from tpemu.net.proxyenv import ProxySettings
from tpemu.net.tls import new_context
from tpemu.wire import alpn

log = logging.getLogger(__name__)

MAX_RESPONSE = 4 * 1024 * 1024
TIMEOUT = 15.0
#: Keep-alive. The servers (the Auth API, the proxy's web API: :func:`tpemu.net.http_server.serve_http`)
#: serve up to 1000 requests on a connection and close one idle for 30 s; a client keeps one idle
#: connection at most this long (the proxy's inventory poll comes every 5 s), for at most this many
#: requests and this many seconds from its handshake, so the server never closes it first and the
#: certificates are verified again, by a new handshake, at least once a minute.
KEEP_IDLE = 10.0
KEEP_REQUESTS = 100
KEEP_AGE = 60.0
#: Methods sent again on a new connection when a kept one turns out closed before any answer (as
#: Go's net/http does): repeating them changes nothing. Others fail as on a new connection.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class ClientCertRefused(authapi.AccessDenied):
    """The server refused our client certificate during the TLS handshake."""


class ServerCertUntrusted(authapi.Unavailable):
    """The server's certificate does not verify against the CA we trust."""


def _alert_message(exc: ssl.SSLError) -> str | None:
    reason = (exc.reason or "").upper()
    if "UNKNOWN_CA" in reason:
        return "certificate signed by unknown authority"
    if "CERTIFICATE_EXPIRED" in reason:
        return "certificate expired"
    if "BAD_CERTIFICATE" in reason or "CERTIFICATE_REQUIRED" in reason or "DECRYPT_ERROR" in reason:
        return "certificate refused"
    return None


class _Kept:
    """One open connection of a client: its streams, its h11 state, its age and use."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.http = h11.Connection(h11.CLIENT)
        self.loop = asyncio.get_running_loop()
        self.opened = self.loop.time()
        self.requests = 0
        self.idle_timer: asyncio.TimerHandle | None = None

    def usable(self) -> bool:
        """Still open, on this loop, young enough and not used up: worth another request."""
        try:
            if asyncio.get_running_loop() is not self.loop:
                return False
        except RuntimeError:
            return False
        return (not self.writer.is_closing() and not self.reader.at_eof() and self.requests < KEEP_REQUESTS
                and self.loop.time() - self.opened < KEEP_AGE)

    def close(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if not self.loop.is_closed():
            self.writer.close()


class _ClosedBeforeAnswer(Exception):
    """The server closed (or reset) a reused connection before a byte of the answer; ``sent``:
    after the whole request was written."""

    def __init__(self, sent: bool) -> None:
        super().__init__("closed before answering")
        self.sent = sent


class AuthClient:
    """A client of one Auth API address (directly, or through the proxy with ALPN ``teleport-auth@``).

    One TLS context for the client's life, and one kept-alive connection (:data:`KEEP_IDLE`): a
    request finds it open, or opens one (concurrent requests each open their own; one is kept).
    Every request is still authorised by the server on its own, for the certificate the
    connection presented. :meth:`close` closes the kept connection.
    """

    def __init__(self, addr: Addr, ctx: ssl.SSLContext, server_hostname: str | None,
                 timeout: float = TIMEOUT, what: str = "the Auth Service", proxy: ProxySettings | None = None,
                 via_proxy: bool = False) -> None:
        self.addr = addr
        self.ctx = ctx
        self.server_hostname = server_hostname
        self.timeout = timeout
        self.what = what
        #: Through the proxy's TLS routing (ALPN ``teleport-auth@``): the connection upgrade applies.
        self.via_proxy = via_proxy
        #: HTTPS_PROXY/NO_PROXY settings: agents reach the proxy through an HTTP CONNECT proxy too.
        self.proxy = proxy
        #: Sent as the ``version`` header, which the Auth API checks against min_client_version.
        self.client_version = TELEPORT_VERSION
        self._kept: _Kept | None = None

    @classmethod
    def with_identity(cls, addr: Addr, cluster_name: str, files: pki.TLSFiles | None,
                      ca_pem: bytes | None = None, via_proxy: bool = False) -> AuthClient:
        """A client presenting ``files`` (cert + key; ``None``: no certificate) and trusting
        ``ca_pem`` (or ``files.ca``), checking the server's name against
        ``<hex(cluster)>.teleport.cluster.local`` as Teleport's clients do."""
        ctx = new_context(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if ca_pem is not None:
            ctx.load_verify_locations(cadata=ca_pem.decode())
        elif files is not None:
            ctx.load_verify_locations(cafile=str(files.ca))
        else:
            raise ValueError("a CA to trust is needed")
        if files is not None:
            ctx.load_cert_chain(files.cert, files.key)
        # api/client ConfigureALPN: teleport-auth@<hex(cluster)>.teleport.cluster.local first, then the
        # protocol spoken inside (HTTP/1.1 for tpemu's Auth API, as Go's gRPC appends h2 to
        # Teleport's list): the proxy routes on the first name it knows, and a layer-7 load
        # balancer in front of it negotiates http/1.1 with its own certificate (the seed's
        # "certificate is valid for …").
        ctx.set_alpn_protocols([alpn.auth_protocol(cluster_name), alpn.HTTP11])
        return cls(addr, ctx, ident.cluster_sni(cluster_name),
                   what="the Auth Service (through the proxy)" if via_proxy else "the Auth Service",
                   via_proxy=via_proxy)

    @classmethod
    def insecure(cls, addr: Addr, what: str = "the Auth Service") -> AuthClient:
        """No verification of the server (first contact, before the CA is known and pinned)."""
        ctx = new_context(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols([alpn.HTTP11])
        return cls(addr, ctx, None, what=what)

    async def call(self, method: str, path: str, body: Any = None, raw: bool = False) -> Any:
        """Send one request and return the decoded JSON answer (``raw``: the body's bytes);
        raises :class:`~tpemu.authapi.AuthAPIError`."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._call(method, path, body, raw)
        except TimeoutError:
            raise authapi.Unavailable(f"{self.what} at {self.addr} did not answer within {self.timeout:g}s") from None

    async def _call(self, method: str, path: str, body: Any, raw: bool = False) -> Any:
        data = b"" if body is None else json.dumps(body).encode()
        while True:
            kept = self._take_kept()
            reused = kept is not None
            if kept is None:
                kept = await self._connect()
            try:
                status, payload = await self._exchange(kept, method, path, data, reused)
            except _ClosedBeforeAnswer as exc:
                kept.close()
                if method in IDEMPOTENT or not exc.sent:
                    continue  # the server had closed the kept connection: once more on a new one
                raise authapi.Unavailable(f"connection to {self.what} at {self.addr} failed: "
                                          "closed before answering") from None
            except BaseException:
                kept.close()
                raise
            break
        if raw and status < 400:
            return payload
        try:
            decoded = json.loads(payload) if payload else None
        except ValueError:
            raise authapi.Unavailable(f"{self.what} answered {status} with something that is not JSON: "
                                      f"{payload[:120]!r}") from None
        if status >= 400:
            message = f"{self.what} answered {status}"
            if isinstance(decoded, dict):
                err = decoded.get("error")
                if isinstance(err, dict) and isinstance(err.get("message"), str):
                    message = err["message"]
            raise authapi.error_for_status(status, message)
        return decoded

    def _take_kept(self) -> _Kept | None:
        kept, self._kept = self._kept, None
        if kept is None:
            return None
        if kept.idle_timer is not None:
            kept.idle_timer.cancel()
            kept.idle_timer = None
        if not kept.usable():
            kept.close()
            return None
        return kept

    def _keep(self, kept: _Kept) -> None:
        """After a complete exchange: keep ``kept`` for the next request, or close it."""
        http = kept.http
        if (http.our_state is not h11.DONE or http.their_state is not h11.DONE or self._kept is not None
                or not kept.usable()):
            kept.close()
            return
        http.start_next_cycle()
        kept.idle_timer = kept.loop.call_later(KEEP_IDLE, self._expire, kept)
        self._kept = kept

    def _expire(self, kept: _Kept) -> None:
        kept.idle_timer = None
        if self._kept is kept:
            self._kept = None
        kept.close()

    def close(self) -> None:
        """Close the kept connection (the next request opens a new one)."""
        kept, self._kept = self._kept, None
        if kept is not None:
            kept.close()

    async def _connect(self) -> _Kept:
        try:
            if self.via_proxy and await conn_upgrade.upgrade_required(
                    self.addr.host, self.addr.port, conn_upgrade.outer_context_from(self.ctx), proxy=self.proxy):
                # Behind a layer-7 load balancer: ALPN teleport-auth@ inside the connection upgrade.
                reader, writer = await conn_upgrade.open_stream_upgraded(
                    self.addr.host, self.addr.port, outer=conn_upgrade.outer_context_from(self.ctx), inner=self.ctx,
                    server_hostname=self.server_hostname or self.addr.host, ping=False, proxy=self.proxy)
            elif self.proxy is not None and self.proxy.proxy_for(self.addr.host, self.addr.port) is not None:
                reader, writer = await open_stream(self.addr.host, self.addr.port, ssl_context=self.ctx,
                                                   server_hostname=self.server_hostname, proxy=self.proxy)
            else:
                reader, writer = await asyncio.open_connection(self.addr.host, self.addr.port, ssl=self.ctx,
                                                               server_hostname=self.server_hostname)
        except DialError as exc:
            raise authapi.Unavailable(f"cannot reach {self.what} at {self.addr}: {exc}") from None
        except ssl.SSLCertVerificationError as exc:
            # Teleport's words (Go's crypto/x509 + gRPC), as its troubleshooting guide quotes them.
            text = await cert_probe.explain(self.addr.host, self.addr.port, self.ctx, self.server_hostname,
                                            proxy=self.proxy, fallback=exc.verify_message)
            raise ServerCertUntrusted(f"cannot verify the certificate of {self.what} at {self.addr}: "
                                      f"{go_tls_errors.GRPC_PREFIX}{text}") from None
        except ssl.SSLError as exc:
            msg = _alert_message(exc)
            if msg:
                raise ClientCertRefused(f"{self.what} refused our certificate: {msg}") from None
            why = describe_error(exc)
            raise authapi.Unavailable(f"TLS handshake with {self.what} at {self.addr} failed: {why}") from None
        except OSError as exc:
            raise authapi.Unavailable(f"cannot reach {self.what} at {self.addr}: "
                                      f"{exc.strerror or exc}") from None
        return _Kept(reader, writer)

    async def _exchange(self, kept: _Kept, method: str, path: str, data: bytes, reused: bool) -> tuple[int, bytes]:
        """One request and its answer on ``kept`` (kept for the next one when it may be). On a
        ``reused`` connection the server closed: :class:`_ClosedBeforeAnswer`."""
        conn = kept.http
        kept.requests += 1
        sent = False
        try:
            headers = [("Host", self.server_hostname or str(self.addr)), ("Content-Length", str(len(data))),
                       ("Content-Type", "application/json"), ("Accept", "application/json"),
                       # What Teleport's clients put in gRPC metadata (api/metadata VersionKey).
                       ("version", self.client_version)]
            out = conn.send(h11.Request(method=method, target=path, headers=headers))
            out += conn.send(h11.Data(data=data)) if data else b""
            out += conn.send(h11.EndOfMessage())
            kept.writer.write(out)
            await kept.writer.drain()
            sent = True
            status, payload = await self._read_response(conn, kept.reader)
        except ssl.SSLError as exc:
            msg = _alert_message(exc)  # TLS 1.3: a refused client certificate shows up on first read
            if msg:
                raise ClientCertRefused(f"{self.what} refused our certificate: {msg}") from None
            raise authapi.Unavailable(f"TLS error talking to {self.what}: {exc}") from None
        except (OSError, h11.ProtocolError) as exc:
            if (reused and isinstance(exc, OSError) and conn.their_state is h11.SEND_RESPONSE
                    and not conn.trailing_data[0]):
                raise _ClosedBeforeAnswer(sent) from None  # closed or reset before a byte of the answer
            raise authapi.Unavailable(f"connection to {self.what} at {self.addr} failed: {exc}") from None
        self._keep(kept)
        return status, payload

    @staticmethod
    async def _read_response(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        status = 0
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                chunk = await reader.read(65536)
                conn.receive_data(chunk)
                if not chunk and conn.their_state is not h11.DONE:
                    if status:
                        continue
                    raise ConnectionError("closed before answering")
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_RESPONSE:
                    raise ConnectionError(f"answer larger than {MAX_RESPONSE} bytes")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, bytes(body)


# -- host identities ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostIdentity:
    """A joined host's credentials: key, TLS and SSH certificates, the host CA (TLS and SSH)."""

    host_id: str
    role: str
    cluster_name: str
    key_pem: bytes
    tls_cert_pem: bytes
    ssh_cert: bytes
    ca_pems: bytes
    ssh_ca_keys: tuple[bytes, ...] = ()

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.tls_cert_pem)

    def files(self, folder: Path) -> pki.TLSFiles:
        return pki.TLSFiles(folder / "host.crt", folder / "host.key", folder / "ca.crt")

    def save(self, folder: Path) -> pki.TLSFiles:
        """Write into ``folder`` (created 0700; key 0600); returns the TLS file paths."""
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        files = self.files(folder)
        pki.write_private(files.key, self.key_pem)
        pki.write_public(files.cert, self.tls_cert_pem)
        pki.write_public(files.ca, self.ca_pems)
        if self.ssh_cert:
            pki.write_public(folder / "host-cert.pub", self.ssh_cert)
        pki.write_public(folder / "ssh_ca.pub", b"".join(k.strip() + b"\n" for k in self.ssh_ca_keys))
        meta = {"host_id": self.host_id, "role": self.role, "cluster_name": self.cluster_name}
        pki.write_public(folder / "identity.json", json.dumps(meta, indent=2).encode() + b"\n")
        return files

    @classmethod
    def load(cls, folder: Path) -> HostIdentity | None:
        """The identity saved in ``folder``, or ``None`` if there is none (or it is unreadable)."""
        try:
            meta = json.loads((folder / "identity.json").read_text())
            ssh_path = folder / "host-cert.pub"
            return cls(meta["host_id"], meta["role"], meta["cluster_name"], (folder / "host.key").read_bytes(),
                       (folder / "host.crt").read_bytes(), ssh_path.read_bytes() if ssh_path.exists() else b"",
                       (folder / "ca.crt").read_bytes(),
                       tuple(line for line in (folder / "ssh_ca.pub").read_bytes().splitlines() if line.strip()))
        except (OSError, ValueError, KeyError):
            return None

    def usable(self, min_validity: float = 3600.0) -> str | None:
        """Why this identity cannot be used (expired, CA mismatch…), or ``None`` if it can."""
        import datetime as dt

        try:
            cert = self.cert
            cas = pki.load_certs(self.ca_pems)
            pki.verify_issued_by(cert, cas)
        except (ValueError, pki.CertificateError) as exc:
            return str(exc)
        left = (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()
        if left < min_validity:
            return f"certificate expires at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
        return None


async def fetch_host_ca(addr: Addr, ca_pins: Iterable[str] = ()) -> list[x509.Certificate]:
    """The host CA certificates of the Auth Service at ``addr``, checked against ``ca_pins``.

    Raises :class:`~tpemu.authapi.AccessDenied` if no certificate matches a pin.
    """
    pins = [p.strip() for p in ca_pins if p.strip()]
    data = await AuthClient.insecure(addr).call("GET", "/v1/authorities/host")
    try:
        certs = [x509.load_pem_x509_certificate(c.encode()) for c in data["tls_certs"]]
    except (KeyError, TypeError, ValueError):
        raise authapi.Unavailable(f"{addr} did not answer with a CA certificate") from None
    if pins:
        if not any(pki.ca_pin(c) in pins for c in certs):
            have = ", ".join(pki.ca_pin(c) for c in certs)
            raise authapi.AccessDenied(f"the Auth Service at {addr} presented a CA that matches none of the CA "
                                       f"pins ({have} is not in teleport.ca_pin)")
    else:
        log.warning("joining the cluster at %s without validating the identity of the Auth Service "
                    "(set teleport.ca_pin to %s)", addr, ", ".join(pki.ca_pin(c) for c in certs))
    return certs


async def join(addr: Addr, token: str, role: str, host_id: str, nodename: str, cluster_name: str = "",
               principals: Iterable[str] = (), dns_names: Iterable[str] = (), ca_pins: Iterable[str] = (),
               key_kind: str = "", system_roles: Iterable[str] = ()) -> HostIdentity:
    """Join the cluster whose Auth Service is at ``addr`` with ``token``, as ``role`` (``Instance``
    with ``system_roles`` for a process running several services)."""
    cas = await fetch_host_ca(addr, ca_pins)
    ca_pem = b"".join(pki.cert_pem(c) for c in cas)
    if not cluster_name:
        cluster_name = cas[0].subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value  # type: ignore[assignment]
    key = await asyncio.to_thread(pki.generate_key, key_kind or key_kind_of(cas[0]))
    body = register_request(key, token, role, host_id, nodename, principals, dns_names, system_roles)
    client = AuthClient.with_identity(addr, cluster_name, None, ca_pem)
    answer = await client.call("POST", "/v1/tokens/register", body)
    return identity_from_certs(answer, key, host_id, role, cluster_name)


def key_kind_of(ca: x509.Certificate) -> str:
    """The key type a host of this cluster generates: the CA's own (RSA for Teleport's
    ``legacy`` signature algorithm suite, ECDSA P-256 otherwise)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    return "rsa" if isinstance(ca.public_key(), rsa.RSAPublicKey) else "ecdsa"


def register_request(key: pki.PrivateKey, token: str, role: str, host_id: str, nodename: str,
                     principals: Iterable[str] = (), dns_names: Iterable[str] = (),
                     system_roles: Iterable[str] = ()) -> dict[str, Any]:
    """A ``RegisterUsingTokenRequest`` body for ``key`` (``system_roles``: for role ``Instance``)."""
    import asyncssh

    ssh_public = asyncssh.import_private_key(pki.key_pem(key)).export_public_key("openssh")
    body = {"hostID": host_id, "node_name": nodename, "role": role, "token": token,
            "additional_principals": list(principals), "dns_names": list(dns_names),
            "public_tls_key": authapi.b64(pki.public_key_pem(key)), "public_ssh_key": authapi.b64(ssh_public)}
    if system_roles:
        body["system_roles"] = list(system_roles)
    return body


def host_certs_request(key: pki.PrivateKey, role: str, host_id: str, nodename: str,
                       principals: Iterable[str] = (), dns_names: Iterable[str] = ()) -> dict[str, Any]:
    """A ``HostCertsRequest`` body (``POST /v1/hosts/certs`` with an Instance identity)."""
    body = register_request(key, "", role, host_id, nodename, principals, dns_names)
    del body["token"], body["hostID"]
    return {**body, "host_id": host_id}


def identity_from_certs(answer: Any, key: pki.PrivateKey, host_id: str, role: str, cluster_name: str) -> HostIdentity:
    """A :class:`HostIdentity` from a ``proto.Certs`` answer."""
    if not isinstance(answer, dict):
        raise authapi.Unavailable("the join answer is not a JSON object")
    tls = authapi.unb64(answer.get("tls"), "tls")
    ssh = authapi.unb64(answer.get("ssh") or "", "ssh")
    ca_pems = b"".join(authapi.unb64(c, "tls_ca_certs") for c in answer.get("tls_ca_certs") or [])
    ssh_cas = tuple(authapi.unb64(c, "ssh_ca_certs") for c in answer.get("ssh_ca_certs") or [])
    return HostIdentity(host_id, role, cluster_name, pki.key_pem(key), tls, ssh, ca_pems, ssh_cas)


async def fetch_user_ca_ssh_keys(client: AuthClient) -> list[bytes]:
    """The user CA's SSH public keys (``GET /v1/authorities/user``): what SSH servers of the cluster
    (nodes, the proxy's SSH listener) trust to sign user certificates."""
    data = await client.call("GET", "/v1/authorities/user")
    keys = data.get("ssh_public_keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise authapi.Unavailable("the Auth Service returned no SSH key for the user CA")
    return [k.encode() for k in keys]
