"""The pods' connect subresources on the emulated API: ``exec`` and ``portforward`` (glue).

What the API server's pod registry answers (``pkg/registry/core/pod/rest/subresources.go``: ``ExecREST``
and ``PortForwardREST`` are ``rest.Connecter``s that hand the upgraded connection to the kubelet):
the pod must exist and be ``Running``, the container must be one of its own, ``exec`` needs a
command and a WebSocket upgrade with a sub-protocol this emulation speaks
(:mod:`tpemu.agent.kube.websocket`), and the processes themselves run on the agent's host
(:mod:`tpemu.agent.kube.exec`) or dial what the pod serves (:mod:`tpemu.agent.kube.portforward`).
Each emulated cluster bounds how many of each run at once (``429 TooManyRequests`` past it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tpemu.agent.kube import exec as kexec
from tpemu.agent.kube import websocket as ws
from tpemu.net.kube_http import Reply, Request, Upgraded, switch_protocols
from tpemu.net.kube_status import StatusError, not_found

if TYPE_CHECKING:
    from tpemu.agent.kube.api import EmulatedAPI

log = logging.getLogger(__name__)

Obj = dict[str, Any]
#: Concurrent ``exec`` processes per emulated cluster (each one is a process on the agent's host).
MAX_EXEC_SESSIONS = 64
#: Upgraded port-forward connections per emulated cluster at once (each carries many TCP connections).
MAX_PORTFORWARD_SESSIONS = 128


class PodConnect:
    """``exec`` and ``portforward`` on the pods of one emulated cluster."""

    def __init__(self, api: EmulatedAPI) -> None:
        self.api = api

    def _running_pod(self, ns: str, name: str) -> Obj:
        """The pod, which must be ``Running`` (``404 NotFound`` / ``400 BadRequest`` otherwise)."""
        pod = self.api.store.get("pods", ns, name)
        if pod is None:
            raise not_found("pods", name, "")
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if phase != "Running":
            raise StatusError(400, f"pod {name} is not running (phase {phase})", "BadRequest")
        return pod

    # -- exec ---------------------------------------------------------------------------------------

    async def exec(self, request: Request, ns: str, name: str) -> Reply | Upgraded:
        pod = self._running_pod(ns, name)
        containers = [c.get("name", "") for c in (pod.get("spec") or {}).get("containers") or []]
        container = request.arg("container") or (containers[0] if containers else "")
        if container not in containers:
            raise StatusError(400, f"container {container} is not valid for pod {name}", "BadRequest")
        argv = request.query.get("command") or []
        if not argv:
            raise StatusError(400, "you must specify at least one command for the container", "BadRequest")
        upgrade = request.headers.get("upgrade", "").lower()
        if upgrade != "websocket":
            raise StatusError(400, f"Upgrade request required (this emulation speaks the WebSocket protocols "
                              f"{', '.join(ws.PROTOCOLS)}, not {upgrade or 'plain HTTP'})", "BadRequest")
        protocol = ws.choose_protocol(request.headers.get("sec-websocket-protocol", ""))
        key = request.headers.get("sec-websocket-key", "")
        if protocol is None or not key:
            raise StatusError(400, f"unable to upgrade: no supported sub-protocol (offered "
                              f"{request.headers.get('sec-websocket-protocol', '')!r}; supported "
                              f"{', '.join(ws.PROTOCOLS)})", "BadRequest")
        assert request.reader is not None and request.writer is not None
        if self.api.exec_sessions >= MAX_EXEC_SESSIONS:
            raise StatusError(429, f"too many exec sessions on this emulated cluster (at most {MAX_EXEC_SESSIONS} "
                              "at once)", "TooManyRequests")
        self.api.exec_sessions += 1
        try:
            return await self._exec_upgraded(request, ns, name, argv, protocol, key)
        finally:
            self.api.exec_sessions -= 1

    async def _exec_upgraded(self, request: Request, ns: str, name: str, argv: Sequence[str], protocol: str,
                             key: str) -> Upgraded:
        assert request.reader is not None and request.writer is not None
        await switch_protocols(request, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                         ("Sec-WebSocket-Accept", ws.accept_key(key)),
                                         ("Sec-WebSocket-Protocol", protocol)])
        stream = ws.ChannelStream(request.reader, request.writer, request.leftover)
        if request.flag("tty"):
            await kexec.run_tty(stream, list(argv), name, self.api.workdir(ns, name))
            return Upgraded()
        await kexec.run(stream, list(argv), name, self.api.workdir(ns, name), request.flag("stdin"),
                        request.flag("stdout") or "stdout" not in request.query, request.flag("stderr"))
        return Upgraded()

    # -- port-forward ---------------------------------------------------------------------------------

    async def portforward(self, request: Request, user: str, ns: str, name: str) -> Reply | Upgraded:
        from tpemu.agent.kube import portforward as pf

        pod = self._running_pod(ns, name)
        try:
            tunnelled, headers = pf.negotiate(request)
        except pf.UpgradeRefused as exc:
            log.info("kube port-forward %s/%s: upgrade refused: %s", ns, name, exc)
            return exc.reply
        if self.api.portforward_sessions >= MAX_PORTFORWARD_SESSIONS:
            raise StatusError(429, f"too many port-forward sessions on this emulated cluster (at most "
                              f"{MAX_PORTFORWARD_SESSIONS} at once)", "TooManyRequests")
        self.api.portforward_sessions += 1
        try:
            return await pf.PortForward(pod, self.api.pod_ports, user,
                                        request.headers.get("x-forwarded-for", "")).serve(request, tunnelled, headers)
        finally:
            self.api.portforward_sessions -= 1


__all__ = ["MAX_EXEC_SESSIONS", "MAX_PORTFORWARD_SESSIONS", "PodConnect"]
