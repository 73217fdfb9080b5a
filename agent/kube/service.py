"""The agent's Kubernetes Service: Teleport's kube forwarder in front of the emulated API (glue).

Connections arrive through the reverse tunnel (``conn_type: kube``, the kube cluster's name, and
the caller's identity as the proxy verified it from the client certificate) or, for a service
joined directly to the Auth Service, on its own ``kubernetes_service.listen_addr`` (3026) as
Teleport 17's proxy reaches it: mTLS with the *proxy's* host certificate, and on every request the
user's identity in ``Teleport-Impersonate-User`` (JSON) and the client's address in
``Teleport-Impersonate-IP`` (``lib/kube/proxy/transport.go`` ``newLocalClusterTransport``,
``lib/kube/internal/http.go`` ``ImpersonatorRoundTripper``), accepted only from a Proxy
(``lib/authz/middleware.go`` ``Middleware.ServeHTTP``: "Credentials forwarding is only permitted for Proxy") and
removed before anything goes on. Each HTTP request then goes through what Teleport's forwarder
does (``lib/kube/proxy/forwarder.go``):

* **who**: ``setupContext`` takes the Kubernetes users and groups from the identity
  (``kubernetes_users``/``kubernetes_groups``, the user's traits); with neither the request is
  refused with Teleport's own message, "Your user's Teleport role does not allow Kubernetes
  access. …" (``NotFound``); ``fillDefaultKubePrincipalDetails`` makes the Teleport user name the
  Kubernetes user when no ``kubernetes_users`` is set, and adds ``system:authenticated``;
* **impersonation**: a client may itself send ``Impersonate-User``/``Impersonate-Group``
  (``kubectl --as``/``--as-group``) only to pick among its allowed values (``computeImpersonatedPrincipals``),
  else ``Forbidden``; several ``kubernetes_users`` and no choice is refused ("please select a user
  to impersonate …");
* **toward the cluster**: the request is forwarded with ``Impersonate-User`` and one
  ``Impersonate-Group`` per group (``setupImpersonationHeaders``); the emulated API trusts exactly
  those headers, as a real API server trusts them from the Kubernetes Service's service account.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tpemu import identity as ident
from tpemu.agent.access import RoleCache
from tpemu.agent.kube import remote
from tpemu.agent.kube.api import EmulatedAPI, status_reply
from tpemu.net import kube_http as khttp
from tpemu.net.channel import open_streams
from tpemu.net.kube_forward import FORWARDED_IP, FORWARDED_USER
from tpemu.net.kube_status import StatusError
from tpemu.wire.tunnel import DialRequest, Resource

if TYPE_CHECKING:
    from tpemu.agent.process import AgentContext
    from tpemu.agent.tunnel import Offer

log = logging.getLogger(__name__)

KUBE = "kube"
NO_ACCESS = ("Your user's Teleport role does not allow Kubernetes access. Please ask cluster administrator to "
             "ensure your role has appropriate kubernetes_groups and kubernetes_users set.")
AUTHENTICATED = "system:authenticated"
_IMPERSONATION = ("impersonate-user", "impersonate-group", "impersonate-uid")
#: What serves a cluster's requests: the emulated API, or a real cluster's (kubeconfig_file).
Cluster = EmulatedAPI | remote.RemoteAPI


def principals(identity: ident.Identity, request: khttp.Request) -> tuple[str, tuple[str, ...]]:
    """The Kubernetes user and groups for one request of ``identity`` (raises :class:`StatusError`)."""
    users, groups = list(dict.fromkeys(identity.kubernetes_users)), list(dict.fromkeys(identity.kubernetes_groups))
    if not users and not groups:
        raise StatusError(404, NO_ACCESS, "NotFound")
    if not users:
        users = [identity.username]  # fillDefaultKubePrincipalDetails
    if AUTHENTICATED not in groups:
        groups.append(AUTHENTICATED)
    asked_user = request.headers.get("impersonate-user", "")
    asked_groups = request.multi.get("impersonate-group", [])
    if asked_user:
        if asked_user not in users:
            raise StatusError(403, f"impersonation request has been denied, user {asked_user!r} is not allowed "
                              f"(allowed: {', '.join(users)})", "Forbidden")
        user = asked_user
    elif len(users) > 1:
        raise StatusError(403, f"please select a user to impersonate, refusing to select a user due to several "
                          f"kubernetes_users set up for this user: {', '.join(users)}", "Forbidden")
    else:
        user = users[0]
    if asked_groups:
        bad = [g for g in asked_groups if g not in groups]
        if bad:
            raise StatusError(403, f"impersonation request has been denied, group {bad[0]!r} is not allowed "
                              f"(allowed: {', '.join(groups)})", "Forbidden")
        chosen = tuple(dict.fromkeys([*asked_groups, AUTHENTICATED]))
    else:
        chosen = tuple(groups)
    return user, chosen


def forwarded_identity(raw: str, forwarder: ident.Identity | None) -> ident.Identity:
    """The user a proxy forwards in ``Teleport-Impersonate-User``, as ``lib/authz/middleware.go`` ``Middleware``
    ``ServeHTTP`` and ``extractIdentityFromImpersonationHeader`` decide; raises :class:`StatusError`.

    ``forwarder``: the TLS peer, whose certificate the listener verified against this cluster's
    host CA (so its cluster is the local one). The header's JSON is tpemu's identity JSON
    (:meth:`tpemu.identity.Identity.to_json`), not Go's ``tlsca.Identity`` field names: both ends
    of this hop are tpemu."""
    if forwarder is None or not forwarder.is_system(ident.ROLE_PROXY):
        name = forwarder.username if forwarder is not None else "-"
        if raw:
            raise StatusError(403, "Credentials forwarding is only permitted for Proxy", "Forbidden")
        # Teleport would serve the certificate's own identity; a host identity has no Kubernetes
        # principals, so the forwarder would refuse it anyway.
        raise StatusError(403, f"access denied: {name} is not a Proxy, and only a Proxy may forward users "
                          "to this Kubernetes Service", "Forbidden")
    if not raw:
        raise StatusError(401, "Unauthorized: the proxy forwarded no user (Teleport-Impersonate-User)", "Unauthorized")
    try:
        who = ident.Identity.from_json(json.loads(raw))
    except (ValueError, ident.IdentityError) as exc:
        raise StatusError(400, f"invalid Teleport-Impersonate-User header: {exc}", "BadRequest") from None
    if who.system_roles or any(g in ident.SYSTEM_ROLES for g in who.groups):
        raise StatusError(403, "can not impersonate a system role", "Forbidden")
    if who.teleport_cluster and forwarder.teleport_cluster and who.teleport_cluster != forwarder.teleport_cluster:
        # Teleport serves such a user as a RemoteUser of a trusted cluster; tpemu has none.
        raise StatusError(403, f"can not impersonate users of cluster {who.teleport_cluster!r}: trusted clusters "
                          "are not emulated", "Forbidden")
    return who


class KubeService:
    """Serves the kube clusters of one agent (one emulated cluster per name)."""

    def __init__(self, clusters: Sequence[Cluster], labels: dict[str, str] | None = None,
                 real: bool = False, access: RoleCache | None = None) -> None:
        self.access = access
        self.clusters = {c.name: c for c in clusters}
        self.labels = labels or {}
        self.description = "Kubernetes cluster (kubeconfig)" if real else "emulated Kubernetes API"
        self._tls: ssl.SSLContext | None = None
        self._listener: asyncio.Server | None = None

    def resources(self) -> tuple[Resource, ...]:
        return tuple(Resource(KUBE, name, dict(self.labels), protocol="kubernetes",
                              description=self.description) for name in self.clusters)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for cluster in self.clusters.values():
            cluster.close()

    def _cluster(self, name: str) -> Cluster:
        cluster = self.clusters.get(name) or (next(iter(self.clusters.values())) if not name and
                                              len(self.clusters) == 1 else None)
        if cluster is None:
            raise StatusError(404, f'kubernetes cluster "{name}" not found', "NotFound")
        return cluster

    async def serve(self, transport: asyncio.Transport, request: DialRequest) -> None:
        """A connection through the reverse tunnel (its channel, a parked transport): plain HTTP,
        the identity in the dial request."""
        try:
            identity = ident.Identity.from_json(request.identity or {})
        except ident.IdentityError as exc:
            log.warning("kube service: dial without a valid identity: %s", exc)
            transport.close()
            return
        reader, writer = await open_streams(transport)
        await self.serve_http(reader, writer, identity, request.name or request.address,
                              request.client_src_addr)

    async def serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         identity: ident.Identity | None, cluster_name: str, peer: str,
                         forwarder: ident.Identity | None = None) -> None:
        """Serve one connection's requests: as ``identity`` (the tunnel's dial request), or, with
        ``identity=None``, as the identity ``forwarder`` (the TLS peer) forwards on each request."""
        async def handle(request: khttp.Request) -> khttp.Reply | khttp.Streamed | khttp.Upgraded:
            # Never passed on, whoever sent them (through the tunnel a client could).
            raw = request.headers.pop(FORWARDED_USER, "")
            client = request.headers.pop(FORWARDED_IP, "")
            request.multi.pop(FORWARDED_USER, None)
            request.multi.pop(FORWARDED_IP, None)
            who: ident.Identity | None = identity
            try:
                if who is None:
                    who = forwarded_identity(raw, forwarder)
                cluster = self._cluster(cluster_name or who.kubernetes_cluster)
                if self.access is not None:
                    # lib/kube/proxy forwarder authorize: the roles' kubernetes_labels, per request.
                    reason = await self.access.check(who.groups, "kubernetes_labels", self.labels)
                    if reason:
                        raise StatusError(403, f"access denied to kubernetes cluster {cluster.name!r}: {reason}",
                                          "Forbidden")
                user, groups = principals(who, request)
            except StatusError as exc:
                log.info("kube service: %s %s %s refused: %s", who.username if who is not None else "-",
                         request.method, request.path, exc.message)
                return status_reply(exc)
            for name in _IMPERSONATION:
                request.headers.pop(name, None)
                request.multi.pop(name, None)
            # setupImpersonationHeaders: what Teleport sends toward the cluster.
            request.headers["impersonate-user"] = user
            request.multi["impersonate-group"] = list(groups)
            # setupForwardingHeaders: the client's address travels on in X-Forwarded-For.
            request.headers["x-forwarded-for"] = client or peer
            log.debug("kube service: %s%s as %s %s: %s %s", who.username, f" (from {client})" if client else "", user,
                      ",".join(groups), request.method, request.target[:200])
            return await cluster.handle(request)

        await khttp.serve(reader, writer, handle, lambda code, message: status_reply(StatusError(code, message)),
                          peer=peer)

    # -- kubernetes_service.listen_addr (3026) ---------------------------------------------------------

    async def listen(self, host: str, port: int, tls: ssl.SSLContext) -> tuple[str, int]:
        """Serve the proxy directly (a Kubernetes Service joined to the Auth Service, no tunnel).

        TLS with a client certificate of this cluster's host CA (the context verifies it); each
        request then names its user in ``Teleport-Impersonate-User``, which only a *Proxy*
        certificate may send (see the module docstring and :func:`forwarded_identity`). The
        cluster is the one the user's identity names (``KubernetesCluster``), as in Teleport.
        """
        self._tls = tls

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")
            try:
                caller = ident.from_der(writer.get_extra_info("ssl_object").getpeercert(binary_form=True) or b"")
            except (ident.IdentityError, ValueError, OSError) as exc:
                log.warning("kube service: direct connection from %s refused: %s", peer, exc)
                writer.close()
                return
            await self.serve_http(reader, writer, None, "", str(peer), forwarder=caller)

        self._listener = await asyncio.start_server(on_client, host, port, ssl=tls, ssl_handshake_timeout=10.0)
        bound = self._listener.sockets[0].getsockname()
        return bound[0], bound[1]


async def make_offers(ctx: AgentContext) -> list[Offer]:
    """The agent's ``kube`` role: the clusters of ``kubernetes_service`` (one emulated cluster)."""
    from tpemu.agent.tunnel import Offer

    ks = ctx.cfg.kubernetes_service
    name = ks.kube_cluster_name or DEFAULT_CLUSTER
    cluster: Cluster
    if ks.kubeconfig_file:
        # A real cluster: the kubeconfig's current context (lib/kube/proxy/kube_creds.go).
        try:
            upstream = remote.load_kubeconfig(Path(ks.kubeconfig_file))
        except remote.KubeconfigError as exc:
            raise ValueError(f"kubernetes_service.kubeconfig_file: {exc}") from None
        cluster = remote.RemoteAPI(name, upstream)
        log.info("kubernetes service: cluster %s → %s:%d (kubeconfig %s)", name, upstream.host, upstream.port,
                 ks.kubeconfig_file)
    else:
        cluster = EmulatedAPI(name, ctx.data_dir, node_name=ctx.nodename,
                              pod_ports=ctx.cfg.tpemu.kubernetes_service.pod_ports)
        log.info("kubernetes service: cluster %s (emulated Kubernetes API, objects in %s)", name,
                 ctx.data_dir / "kube" / f"{name}.sqlite")
    service = KubeService([cluster], dict(ks.labels), real=bool(ks.kubeconfig_file), access=RoleCache(ctx.auth))
    return [Offer(r, service) for r in service.resources()]


#: The cluster name of ``make run``'s all-in-one agent.
DEFAULT_CLUSTER = "emu"
