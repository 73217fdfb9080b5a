"""``tpemu kube ls|login|logout``: the client side of Kubernetes access, as ``tsh kube`` (glue).

What ``tsh kube`` does (``tool/tsh/common/kube.go``, ``lib/kube/kubeconfig``):

* ``ls`` — the Kubernetes clusters the cluster knows (``GET /v1/kube_servers`` on the Auth API,
  through the proxy with ALPN ``teleport-auth@`` and the user's certificate);
* ``login NAME`` — a certificate for the profile's key whose identity routes to the cluster
  (``UserCertsRequest.KubernetesCluster``), saved where tsh keeps it
  (``keys/<proxy>/<user>-kube/<cluster>/<NAME>-x509.pem``), and a kubeconfig entry: cluster
  ``<teleport cluster>`` with the proxy's address (the web port with TLS routing, the Kubernetes
  listener in separate mode, both from ``/webapi/ping``'s ``proxy.kube``), the cluster's CA, and
  ``tls-server-name`` from ``GetKubeTLSServerName`` (``lib/client/api.go``):
  ``kube-teleport-proxy-alpn.<proxy host>``, or ``kube-teleport-proxy-alpn.teleport.cluster.local``
  when the proxy is addressed by IP or localhost; a user and a context ``<teleport cluster>-<NAME>``,
  made current. tsh writes an ``exec`` credential plugin; tpemu writes the certificate and key paths
  (what ``tsh kube login`` does not need a running tsh for), so kubectl and client libraries work
  unchanged.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from tpemu import authapi, pki
from tpemu.client import profile as profile_mod
from tpemu.client.db import auth_client
from tpemu.config import Addr
from tpemu.errors import PeerFault
from tpemu.wire import alpn

API_DOMAIN = alpn.INTERNAL_DOMAIN


class KubeError(PeerFault):
    """A kube command failed; the message is for the user."""


@dataclass(frozen=True)
class KubeCluster:
    name: str
    labels: dict[str, str]
    hosts: tuple[str, ...]
    last_heartbeat: str = ""


def current_profile(home: Path) -> profile_mod.Profile:
    prof = profile_mod.current(home)
    if prof is None:
        raise KubeError("not logged in: run 'tpemu login --proxy HOST:PORT --user NAME' first")
    return prof


async def list_clusters(prof: profile_mod.Profile) -> list[KubeCluster]:
    try:
        data = await auth_client(prof).call("GET", "/v1/kube_servers")
    except authapi.AuthAPIError as exc:
        raise KubeError(f"cannot list Kubernetes clusters: {exc.message}") from None
    found: dict[str, KubeCluster] = {}
    for item in data.get("items", []) if isinstance(data, dict) else []:
        meta = item.get("metadata") or {}
        spec = item.get("spec") or {}
        name = str(meta.get("name") or "")
        if not name:
            continue
        old = found.get(name)
        host = str(spec.get("hostname") or spec.get("host_id") or "")
        status = item.get("status") if isinstance(item.get("status"), dict) else {}
        found[name] = KubeCluster(name, dict(meta.get("labels") or {}),
                                  (*(old.hosts if old else ()), host) if host else (old.hosts if old else ()),
                                  max(str(status.get("last_heartbeat") or ""), old.last_heartbeat if old else ""))
    return [found[k] for k in sorted(found)]


def tls_server_name(host: str) -> str:
    """``GetKubeTLSServerName`` of ``lib/client/api.go``."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        is_ip = True
    except ValueError:
        is_ip = False
    if not host or host == "localhost" or is_ip:
        return alpn.KUBE_SNI_PREFIX + API_DOMAIN
    return alpn.KUBE_SNI_PREFIX + host


def kube_address(prof: profile_mod.Profile, ping: dict[str, Any]) -> str:
    """Where kubectl connects: the web port with TLS routing, else ``proxy.kube``'s address."""
    web = Addr.parse(prof.web_proxy_addr, default_port=3080)
    proxy = ping.get("proxy") or {}
    if proxy.get("tls_routing_enabled"):
        return str(web)
    kube = proxy.get("kube") or {}
    if not kube.get("enabled"):
        raise KubeError("this cluster's proxy does not serve Kubernetes (no proxy.kube in /webapi/ping)")
    addr = Addr.parse(kube.get("public_addr") or kube.get("listen_addr") or "", default_port=3026)
    host = web.host if addr.host in ("0.0.0.0", "::", "") else addr.host
    return str(Addr(host, addr.port))


def kubeconfig_path(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("KUBECONFIG", "")
    if env:
        return Path(env.split(os.pathsep)[0]).expanduser()
    return Path.home() / ".kube" / "config"


def _upsert(items: list[Any], name: str, entry: dict[str, Any]) -> list[Any]:
    out = [i for i in items if not (isinstance(i, dict) and i.get("name") == name)]
    out.append({"name": name, **entry})
    return out


def write_kubeconfig(path: Path, cluster: str, server: str, sni: str, ca_pem: bytes, cert: Path, key: Path,
                     kube_cluster: str, user: str) -> str:
    """Merge the entries of one kube login into ``path``; returns the context name."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None
    except (OSError, yaml.YAMLError) as exc:
        raise KubeError(f"cannot read the kubeconfig {path}: {exc}") from None
    if not isinstance(data, dict):
        data = {"apiVersion": "v1", "kind": "Config", "preferences": {}}
    context = f"{cluster}-{kube_cluster}"
    auth_name = f"{cluster}-{kube_cluster}"
    data["clusters"] = _upsert(data.get("clusters") or [], cluster, {"cluster": {
        "server": f"https://{server}", "tls-server-name": sni,
        "certificate-authority-data": base64.b64encode(ca_pem).decode()}})
    data["users"] = _upsert(data.get("users") or [], auth_name, {"user": {
        "client-certificate": str(cert), "client-key": str(key)}})
    data["contexts"] = _upsert(data.get("contexts") or [], context, {"context": {"cluster": cluster,
                                                                              "user": auth_name}})
    data["current-context"] = context
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tpemu-tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return context


async def kube_login(prof: profile_mod.Profile, name: str, kubeconfig: Path) -> tuple[str, Path]:
    """Get a certificate routed to Kubernetes cluster ``name`` and write the kubeconfig entry."""
    from tpemu.client.ssh import SSHError, web_get

    clusters = {c.name: c for c in await list_clusters(prof)}
    if name not in clusters:
        raise KubeError(f"kubernetes cluster {name!r} not found (clusters: {', '.join(sorted(clusters)) or 'none'})")
    identity = prof.identity()
    if not identity.kubernetes_groups and not identity.kubernetes_users:
        # tsh's checkIfCertsAreAllowedToAccessCluster: the same words, before any request is sent.
        raise KubeError("Your user's Teleport role does not allow Kubernetes access. Please ask cluster administrator "
                        "to ensure your role has appropriate kubernetes_groups and kubernetes_users set.")
    try:
        ping = await web_get(prof, "/webapi/ping")
    except SSHError as exc:
        raise KubeError(f"cannot reach the proxy: {exc}") from None
    server = kube_address(prof, ping if isinstance(ping, dict) else {})
    key = pki.load_key(prof.key_path.read_bytes())
    body = {"tls_public_key": authapi.b64(pki.public_key_pem(key)), "kubernetes_cluster": name}
    try:
        answer = await auth_client(prof).call("POST", f"/v1/users/{quote(prof.username, safe='')}/certs", body)
    except authapi.AuthAPIError as exc:
        raise KubeError(f"cannot get a certificate for Kubernetes cluster {name!r}: {exc.message}") from None
    cert = authapi.unb64(answer.get("tls") if isinstance(answer, dict) else None, "tls")
    folder = prof.key_dir / f"{prof.username}-kube" / prof.cluster
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path = folder / f"{name}-x509.pem"
    pki.write_public(cert_path, cert)
    host = Addr.parse(server, default_port=3080).host
    context = write_kubeconfig(kubeconfig, prof.cluster, server, tls_server_name(host), prof.ca_path.read_bytes(),
                               cert_path, prof.key_path, name, prof.username)
    return context, cert_path
