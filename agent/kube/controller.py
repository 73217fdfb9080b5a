"""What the emulated cluster's controllers and kubelet do to stored objects (glue over the store).

* **kubelet**: a new pod is ``Pending`` (``ContainerCreating``) and becomes ``Running`` with ready
  containers a moment later (:data:`START_DELAY`), so ``kubectl get pods -w`` sees the change, as
  on a real cluster; its "logs" are the lines this emulation writes for it (container started).
* **deployment controller**: a deployment owns ``spec.replicas`` pods named
  ``<deployment>-<template hash>-<suffix>`` (the ReplicaSet level is folded in: the pods carry the
  ``pod-template-hash`` label and an owner reference to the deployment); a changed template replaces
  them, a changed replica count adds or removes pods; ``status`` counts ready and updated replicas.
* **garbage collection**: deleting a deployment deletes its pods; deleting a namespace deletes
  everything in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import secrets
import uuid
from typing import Any

from tpemu.agent.kube.resources import BY_KEY
from tpemu.agent.kube.store import Store

log = logging.getLogger(__name__)

START_DELAY = 0.3
Obj = dict[str, Any]
_ALPHANUM = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' utilrand alphabet (no vowels, no 0/1/3)


def now_stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(n: int = 5) -> str:
    return "".join(secrets.choice(_ALPHANUM) for _ in range(n))


def template_hash(template: Any) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(_ALPHANUM[b % len(_ALPHANUM)] for b in digest[:10])


class Controller:
    def __init__(self, store: Store, node_name: str) -> None:
        self.store = store
        self.node_name = node_name
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for task in list(self._tasks):
            task.cancel()

    def _later(self, delay: float, fn: Any, *args: Any) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            if not self.closed:
                try:
                    fn(*args)
                except Exception:
                    log.exception("kube controller step failed")

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def resume(self) -> None:
        """After a restart: pods left Pending start, deployments are reconciled."""
        for pod in self.store.list("pods"):
            if (pod.get("status") or {}).get("phase") == "Pending":
                self._later(START_DELAY, self._start_pod, pod["metadata"]["namespace"], pod["metadata"]["name"])
        for dep in self.store.list("deployments.apps"):
            self.reconcile(dep)

    # -- pods ---------------------------------------------------------------------------------------

    def pod_created(self, pod: Obj) -> None:
        self._later(START_DELAY, self._start_pod, pod["metadata"]["namespace"], pod["metadata"]["name"])

    def _start_pod(self, namespace: str, name: str) -> None:
        pod = self.store.get("pods", namespace, name)
        if pod is None or (pod.get("status") or {}).get("phase") != "Pending":
            return
        stamp = now_stamp()
        containers = (pod.get("spec") or {}).get("containers") or []
        pod["status"] = {
            "phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": (pod.get("status") or {}).get("startTime", stamp), "qosClass": "BestEffort",
            "conditions": [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": stamp}
                           for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                                     "PodScheduled")],
            "containerStatuses": [{"name": c.get("name", ""), "image": c.get("image", ""), "imageID": "",
                                   "ready": True, "started": True, "restartCount": 0,
                                   "containerID": f"tpemu://{uuid.uuid4().hex}",
                                   "state": {"running": {"startedAt": stamp}}} for c in containers]}
        self.store.put("pods", pod, "MODIFIED")
        owner = _owner(pod)
        if owner:
            dep = self.store.get("deployments.apps", namespace, owner)
            if dep is not None:
                self._deployment_status(dep)

    @staticmethod
    def pending_status(pod: Obj) -> Obj:
        containers = (pod.get("spec") or {}).get("containers") or []
        return {"phase": "Pending", "qosClass": "BestEffort", "startTime": now_stamp(), "hostIP": "127.0.0.1",
                "conditions": [{"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                                "lastTransitionTime": now_stamp()}],
                "containerStatuses": [{"name": c.get("name", ""), "image": c.get("image", ""), "imageID": "",
                                       "ready": False, "started": False, "restartCount": 0,
                                       "state": {"waiting": {"reason": "ContainerCreating"}}} for c in containers]}

    def logs(self, pod: Obj, container: str) -> list[str]:
        status = pod.get("status") or {}
        started = next((s for s in status.get("containerStatuses") or [] if s.get("name") == container), None)
        spec: Obj = next((c for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name") == container), {})
        meta = pod["metadata"]
        lines = [f"tpemu: pod {meta['namespace']}/{meta['name']} scheduled on node {self.node_name}",
                 f"tpemu: container {container!r} image {spec.get('image', '')!r} created"]
        running = ((started or {}).get("state") or {}).get("running")
        if running:
            lines.append(f"tpemu: container {container!r} started at {running.get('startedAt', '')} "
                         f"(command: {' '.join(spec.get('command') or []) or '<image default>'})")
        return lines

    # -- deployments ----------------------------------------------------------------------------------

    def reconcile(self, dep: Obj) -> None:
        meta = dep["metadata"]
        ns, name = meta["namespace"], meta["name"]
        spec = dep.get("spec") or {}
        want = int(spec.get("replicas", 1))
        template = spec.get("template") or {}
        thash = template_hash(template)
        pods = [p for p in self.store.list("pods", ns) if _owner(p) == name]
        keep = [p for p in pods if (p["metadata"].get("labels") or {}).get("pod-template-hash") == thash]
        for pod in pods:
            if pod not in keep:
                self.store.delete("pods", ns, pod["metadata"]["name"])
        for pod in keep[want:]:
            self.store.delete("pods", ns, pod["metadata"]["name"])
        for _ in range(max(0, want - len(keep))):
            self._new_pod(dep, template, thash)
        self._deployment_status(dep)

    def _new_pod(self, dep: Obj, template: Obj, thash: str) -> None:
        meta = dep["metadata"]
        tmeta = template.get("metadata") or {}
        for _ in range(10):
            name = f"{meta['name']}-{thash}-{random_suffix()}"
            if self.store.get("pods", meta["namespace"], name) is None:
                break
        pod: Obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": name, "namespace": meta["namespace"], "uid": str(uuid.uuid4()),
            "creationTimestamp": now_stamp(), "generateName": f"{meta['name']}-{thash}-",
            "labels": {**(tmeta.get("labels") or {}), "pod-template-hash": thash},
            **({"annotations": tmeta["annotations"]} if tmeta.get("annotations") else {}),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"],
                                 "uid": meta.get("uid", ""), "controller": True, "blockOwnerDeletion": True}]},
            "spec": {**(template.get("spec") or {}), "nodeName": self.node_name}}
        pod["spec"].setdefault("restartPolicy", "Always")
        pod["status"] = self.pending_status(pod)
        self.store.put("pods", pod, "ADDED")
        self.pod_created(pod)

    def _deployment_status(self, dep: Obj) -> None:
        meta = dep["metadata"]
        current = self.store.get("deployments.apps", meta["namespace"], meta["name"])
        if current is None:
            return
        spec = current.get("spec") or {}
        thash = template_hash(spec.get("template") or {})
        pods = [p for p in self.store.list("pods", meta["namespace"]) if _owner(p) == meta["name"]]
        ready = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running")
        updated = sum(1 for p in pods if (p["metadata"].get("labels") or {}).get("pod-template-hash") == thash)
        want = int(spec.get("replicas", 1))
        stamp = now_stamp()
        status: Obj = {"observedGeneration": current["metadata"].get("generation", 1), "replicas": len(pods),
                       "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": ready,
                       "conditions": [
                           {"type": "Available", "status": "True" if ready >= want else "False",
                            "reason": "MinimumReplicasAvailable" if ready >= want else "MinimumReplicasUnavailable",
                            "message": "Deployment has minimum availability." if ready >= want else
                            "Deployment does not have minimum availability.",
                            "lastUpdateTime": stamp, "lastTransitionTime": stamp},
                           {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"
                            if ready >= want else "ReplicaSetUpdated",
                            "message": f'ReplicaSet "{meta["name"]}-{thash}" has successfully progressed.',
                            "lastUpdateTime": stamp, "lastTransitionTime": stamp}]}
        if ready < want:
            status["unavailableReplicas"] = want - ready
        if not ready:
            for k in ("readyReplicas", "availableReplicas"):
                status.pop(k)
        old = {k: v for k, v in (current.get("status") or {}).items() if k != "conditions"}
        if old == {k: v for k, v in status.items() if k != "conditions"}:
            return
        current["status"] = status
        self.store.put("deployments.apps", current, "MODIFIED")

    def deployment_deleted(self, dep: Obj) -> None:
        meta = dep["metadata"]
        for pod in self.store.list("pods", meta["namespace"]):
            if _owner(pod) == meta["name"]:
                self.store.delete("pods", meta["namespace"], pod["metadata"]["name"])

    def pod_deleted(self, pod: Obj) -> None:
        owner = _owner(pod)
        if owner:
            dep = self.store.get("deployments.apps", pod["metadata"]["namespace"], owner)
            if dep is not None:
                # The controller replaces a deleted pod, as a ReplicaSet does.
                self._later(0, self.reconcile, dep)

    def namespace_deleted(self, name: str) -> None:
        for key, rt in BY_KEY.items():
            if rt.namespaced:
                for obj in self.store.list(key, name):
                    with contextlib.suppress(KeyError):
                        self.store.delete(key, name, obj["metadata"]["name"])


def _owner(obj: Obj) -> str:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "Deployment" and ref.get("controller"):
            return str(ref.get("name", ""))
    return ""
