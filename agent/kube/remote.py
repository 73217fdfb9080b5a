"""A real Kubernetes cluster behind the Kubernetes Service (``kubernetes_service.kubeconfig_file``).

Teleport's forwarder (``lib/kube/proxy/forwarder.go``: ``setupImpersonationHeaders``, the
``kubeCreds`` built from the kubeconfig in ``lib/kube/proxy/kube_creds.go``) sends each user's
request to the cluster the kubeconfig names, authenticated as the Kubernetes Service's own
credentials (client certificate and/or bearer token), with ``Impersonate-User`` and one
``Impersonate-Group`` per group saying who the request is for; the API server checks that the
service may impersonate and then authorises the impersonated user. This module is that hop:

* :func:`load_kubeconfig` reads the kubeconfig's current context (or the context named like the
  cluster): ``server``, ``certificate-authority``/``-data``, ``insecure-skip-tls-verify``,
  ``tls-server-name``, ``client-certificate``/``client-key`` (``-data`` too) and ``token``; any
  other way to authenticate (exec plugins, auth providers) is refused by name;
* :class:`~tpemu.net.kube_forward.RemoteAPI` (shared with the proxy's hop to a directly joined
  Kubernetes Service) forwards one HTTP request, the impersonation headers already set by
  :mod:`tpemu.agent.kube.service`.
"""

from __future__ import annotations

import base64
import ssl
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tpemu.errors import LocalFault
from tpemu.net.kube_forward import RemoteAPI, Upstream

__all__ = ["KubeconfigError", "RemoteAPI", "Upstream", "load_kubeconfig"]

MAX_KUBECONFIG = 1 << 20


class KubeconfigError(LocalFault):
    """kubernetes_service.kubeconfig_file cannot be used (unreadable, a missing context, an exec
    plugin); the message says which and why."""


def _blob(entry: dict[str, Any], key: str, base: Path) -> bytes | None:
    if entry.get(f"{key}-data"):
        try:
            return base64.b64decode(str(entry[f"{key}-data"]), validate=True)
        except ValueError as exc:
            raise KubeconfigError(f"{key}-data is not base64: {exc}") from None
    if entry.get(key):
        path = base / str(entry[key])
        try:
            return path.read_bytes()[:MAX_KUBECONFIG]
        except OSError as exc:
            raise KubeconfigError(f"{key} {path}: {exc.strerror or exc}") from None
    return None


def _named(doc: dict[str, Any], section: str, name: str) -> dict[str, Any]:
    for item in doc.get(section) or []:
        if isinstance(item, dict) and item.get("name") == name:
            inner = item.get(section[:-1])
            if isinstance(inner, dict):
                return inner
    raise KubeconfigError(f"{section[:-1]} {name!r} not found in the kubeconfig")


def load_kubeconfig(path: Path, context: str = "") -> Upstream:
    """The cluster and credentials of ``context`` (default: the current context)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KUBECONFIG:
        raise KubeconfigError(f"kubeconfig {path} is larger than {MAX_KUBECONFIG} bytes")
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"kubeconfig {path} is not YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise KubeconfigError(f"kubeconfig {path} is not a mapping")
    name = context or str(doc.get("current-context") or "")
    if not name:
        raise KubeconfigError(f"kubeconfig {path} has no current-context")
    ctx = _named(doc, "contexts", name)
    cluster = _named(doc, "clusters", str(ctx.get("cluster", "")))
    user = _named(doc, "users", str(ctx.get("user", ""))) if ctx.get("user") else {}
    for unsupported in ("exec", "auth-provider", "username", "password", "tokenFile"):
        if user.get(unsupported):
            raise KubeconfigError(f"kubeconfig user {ctx.get('user')!r}: {unsupported} is not supported "
                                  "(use a client certificate or a token)")
    url = urlsplit(str(cluster.get("server") or ""))
    if url.scheme not in ("https", "http") or not url.hostname:
        raise KubeconfigError(f"cluster {ctx.get('cluster')!r}: server must be an http(s) URL, "
                              f"got {cluster.get('server')!r}")
    base = path.parent
    tls: ssl.SSLContext | None = None
    if url.scheme == "https":
        tls = ssl.create_default_context()
        tls.set_alpn_protocols(["http/1.1"])
        if cluster.get("insecure-skip-tls-verify"):
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        ca = _blob(cluster, "certificate-authority", base)
        if ca is not None:
            try:
                tls.load_verify_locations(cadata=ca.decode("ascii", "replace"))
            except ssl.SSLError as exc:
                raise KubeconfigError(f"certificate-authority: {exc}") from None
        cert, key = _blob(user, "client-certificate", base), _blob(user, "client-key", base)
        if (cert is None) != (key is None):
            raise KubeconfigError("client-certificate and client-key go together")
        if cert is not None and key is not None:
            with tempfile.TemporaryDirectory() as tmp:  # ssl loads chains from files only
                cpath, kpath = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
                cpath.write_bytes(cert)
                kpath.write_bytes(key)
                kpath.chmod(0o600)
                try:
                    tls.load_cert_chain(str(cpath), str(kpath))
                except ssl.SSLError as exc:
                    raise KubeconfigError(f"client-certificate/client-key: {exc}") from None
    port = url.port or (443 if url.scheme == "https" else 80)
    return Upstream(url.hostname, port, str(cluster.get("tls-server-name") or url.hostname), tls,
                    str(user.get("token") or ""))
