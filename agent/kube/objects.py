"""REST verbs on stored objects: get, list, watch, create, update, patch, apply, delete, logs (glue).

The semantics are the API server's (``k8s.io/apiserver/pkg/endpoints/handlers``, ``api-conventions.md``):
``resourceVersion`` optimistic concurrency on update (``409 Conflict``), ``AlreadyExists`` on create,
``metadata.generateName``, ``dryRun=All``, label and field selectors on lists, watches as a stream of
``{"type": …, "object": …}`` lines (``ADDED`` for the existing objects first when no version is
given), server-side printing as a ``Table`` when the client asks for one, and the four patch types
(:mod:`tpemu.agent.kube.patch`). Bodies are JSON (server-side apply also YAML); a body that does not
parse, names another kind or namespace, or has an invalid name is answered with the Status the API
server gives. Selectors are :mod:`tpemu.agent.kube.selectors`; a pod's ``exec`` and ``portforward``
(connect subresources) are :mod:`tpemu.agent.kube.pod_connect`.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import yaml

from tpemu.agent.kube import managed, schema
from tpemu.agent.kube import patch as kpatch
from tpemu.agent.kube import protobuf as kproto
from tpemu.agent.kube import resources as res
from tpemu.agent.kube import validation as kvalid
from tpemu.agent.kube.controller import now_stamp, random_suffix
from tpemu.agent.kube.pod_connect import PodConnect
from tpemu.agent.kube.selectors import fields_match, labels_match
from tpemu.agent.kube.store import Store, TooOld
from tpemu.net.kube_http import Reply, Request, Streamed, Upgraded
from tpemu.net.kube_status import StatusError, already_exists, conflict, invalid, not_found

if TYPE_CHECKING:
    from tpemu.agent.kube.api import EmulatedAPI, Target, User

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Headers = list[tuple[str, str]]
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
MAX_WATCH = 3600.0


def _json(obj: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(obj, separators=(",", ":")).encode())


def _wants_table(request: Request) -> bool:
    return "as=Table" in request.headers.get("accept", "")


class Objects:
    def __init__(self, api: EmulatedAPI) -> None:
        self.api = api
        self.store: Store = api.store
        self.pods = PodConnect(api)

    def bootstrap(self) -> None:
        for name in DEFAULT_NAMESPACES:
            if self.store.get("namespaces", "", name) is None:
                self.store.put("namespaces", self._new_meta({"apiVersion": "v1", "kind": "Namespace", "metadata": {
                    "name": name, "labels": {"kubernetes.io/metadata.name": name}},
                    "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}, ""), "ADDED")

    @staticmethod
    def _new_meta(obj: Obj, namespace: str) -> Obj:
        meta = obj.setdefault("metadata", {})
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_stamp()
        if namespace:
            meta["namespace"] = namespace
        return obj

    # -- dispatch -------------------------------------------------------------------------------------

    async def serve(self, request: Request, user: User, target: Target, method: str) -> Reply | Streamed | Upgraded:
        from tpemu.agent.kube.api import authorize

        rt, ns, name, sub = target.rt, target.namespace, target.name, target.sub
        if sub == "exec":
            authorize(user, "create", rt, ns, name, sub)
            return await self.pods.exec(request, ns, name)
        if sub == "portforward":
            # A WebSocket is a GET (verb get), the SPDY upgrade a POST (create).
            authorize(user, "get" if method == "GET" else "create", rt, ns, name, sub)
            return await self.pods.portforward(request, user.name, ns, name)
        if method == "GET":
            verb = "get" if name else ("watch" if request.flag("watch") else "list")
            authorize(user, verb, rt, ns, name, sub)
            if sub == "log":
                return await self.logs(request, ns, name)
            if name:
                return self._one(request, rt, self._get(rt, ns, name))
            if verb == "watch":
                return self.watch(request, rt, ns)
            return self.list(request, rt, ns)
        if method == "POST" and not name:
            authorize(user, "create", rt, ns)
            return self.create(request, rt, ns)
        if method == "PUT" and name:
            authorize(user, "update", rt, ns, name, sub)
            return self.update(request, rt, ns, name, sub)
        if method == "PATCH" and name:
            authorize(user, "patch", rt, ns, name, sub)
            return self.patch(request, rt, ns, name, sub, user)
        if method == "DELETE":
            authorize(user, "delete" if name else "deletecollection", rt, ns, name)
            return self.delete(request, rt, ns, name)
        raise StatusError(405, f"the server does not allow this method on the requested resource ({method})",
                          "MethodNotAllowed")

    def _get(self, rt: res.ResourceType, ns: str, name: str) -> Obj:
        obj = self.store.get(rt.key, ns, name)
        if obj is None:
            raise not_found(rt.plural, name, rt.group)
        return obj

    def _one(self, request: Request, rt: res.ResourceType, obj: Obj, status: int = 200) -> Reply:
        if _wants_table(request):
            return _json(res.table(rt, [obj], dt.datetime.now(dt.UTC), obj["metadata"]["resourceVersion"],
                                   request.arg("includeObject", "Metadata")), status)
        return _json(obj, status)

    # -- reads ----------------------------------------------------------------------------------------

    def _selected(self, request: Request, rt: res.ResourceType, ns: str) -> list[Obj]:
        items = self.store.list(rt.key, ns)
        labels, fields = request.arg("labelSelector"), request.arg("fieldSelector")
        if labels:
            items = [o for o in items if labels_match(labels, (o.get("metadata") or {}).get("labels") or {})]
        if fields:
            items = [o for o in items if fields_match(fields, o)]
        return items

    def list(self, request: Request, rt: res.ResourceType, ns: str) -> Reply:
        items = self._selected(request, rt, ns)
        rv = str(self.store.rv)
        if _wants_table(request):
            return _json(res.table(rt, items, dt.datetime.now(dt.UTC), rv, request.arg("includeObject", "Metadata")))
        for item in items:
            item.setdefault("apiVersion", rt.group_version)
            item.setdefault("kind", rt.kind)
        return _json({"kind": f"{rt.kind}List", "apiVersion": rt.group_version,
                      "metadata": {"resourceVersion": rv}, "items": items})

    def watch(self, request: Request, rt: res.ResourceType, ns: str) -> Streamed:
        since_text = request.arg("resourceVersion")
        if since_text and not since_text.isdigit():
            raise StatusError(400, f"invalid resource version: {since_text[:64]}", "BadRequest")
        since = int(since_text) if since_text and since_text != "0" else None
        initial = self._selected(request, rt, ns) if since is None else []
        try:
            watch = self.store.watch(rt.key, ns, since)
        except TooOld as exc:
            raise StatusError(410, str(exc), "Expired") from None
        table = _wants_table(request)
        labels, fields = request.arg("labelSelector"), request.arg("fieldSelector")
        timeout_text = request.arg("timeoutSeconds")
        timeout = min(float(timeout_text), MAX_WATCH) if timeout_text.isdigit() else MAX_WATCH
        include = request.arg("includeObject", "Metadata")

        def line(kind: str, obj: Obj, first: bool) -> bytes:
            if table:
                out: Obj = res.table(rt, [obj], dt.datetime.now(dt.UTC), obj["metadata"]["resourceVersion"], include,
                                     with_columns=first)
            else:
                out = obj
                out.setdefault("apiVersion", rt.group_version)
                out.setdefault("kind", rt.kind)
            return json.dumps({"type": kind, "object": out}, separators=(",", ":")).encode() + b"\n"

        def selected(obj: Obj) -> bool:
            if labels and not labels_match(labels, (obj.get("metadata") or {}).get("labels") or {}):
                return False
            return not fields or fields_match(fields, obj)

        async def events() -> AsyncIterator[bytes]:
            first = True
            try:
                for obj in initial:
                    yield line("ADDED", obj, first)
                    first = False
                loop = asyncio.get_running_loop()
                end = loop.time() + timeout
                while True:
                    left = end - loop.time()
                    if left <= 0:
                        return
                    try:
                        event = await asyncio.wait_for(watch.queue.get(), left)
                    except TimeoutError:
                        return
                    if event is None:
                        return
                    if selected(event.obj):
                        yield line(event.type, copy.deepcopy(event.obj), first)
                        first = False
            finally:
                watch.close()

        return Streamed(200, events())

    async def logs(self, request: Request, ns: str, name: str) -> Reply | Streamed:
        rt = res.BY_KEY["pods"]
        pod = self._get(rt, ns, name)
        containers = [c.get("name", "") for c in (pod.get("spec") or {}).get("containers") or []]
        container = request.arg("container") or (containers[0] if len(containers) == 1 else "")
        if not container:
            raise StatusError(400, f"a container name must be specified for pod {name}, choose one of: "
                              f"[{' '.join(containers)}]", "BadRequest")
        if container not in containers:
            raise StatusError(400, f"container {container} is not valid for pod {name}", "BadRequest")
        lines = self.api.controller.logs(pod, container)
        tail = request.arg("tailLines")
        if tail.isdigit():
            lines = lines[-int(tail):] if int(tail) else []
        if request.flag("timestamps"):
            stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
            lines = [f"{stamp} {line}" for line in lines]
        text = "".join(f"{line}\n" for line in lines).encode()
        if not request.flag("follow"):
            return Reply(200, text, "text/plain")
        watch = self.store.watch("pods", ns, None)

        async def follow() -> AsyncIterator[bytes]:
            try:
                yield text
                while True:
                    event = await asyncio.wait_for(watch.queue.get(), MAX_WATCH)
                    if event is None or (event.type == "DELETED" and event.obj["metadata"]["name"] == name):
                        return
            except TimeoutError:
                return
            finally:
                watch.close()

        return Streamed(200, follow(), "text/plain")

    # -- writes ---------------------------------------------------------------------------------------

    def _body(self, request: Request, rt: res.ResourceType, yaml_ok: bool = False) -> Obj:
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
        try:
            if "protobuf" in ctype:
                body = kproto.decode(request.body)
            elif yaml_ok or ctype in ("application/yaml", "application/apply-patch+yaml"):
                body = yaml.safe_load(request.body.decode("utf-8"))
            else:
                body = json.loads(request.body)
        except kproto.ProtobufError as exc:
            raise StatusError(415, f"the body of the request was in an unknown format - accepted media types "
                              f"include: application/json, application/yaml ({exc}; send JSON)",
                              "UnsupportedMediaType") from None
        except (ValueError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise StatusError(400, f"couldn't get version/kind; json parse error: {str(exc)[:200]}",
                              "BadRequest") from None
        if not isinstance(body, dict):
            raise StatusError(400, "the request body must be an object", "BadRequest")
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if kind is not None and kind != rt.kind:
            raise StatusError(400, f"the API version in the data ({api_version}) does not match the expected API "
                              f"version ({rt.group_version})" if api_version != rt.group_version else
                              f'{kind} in version "{rt.version}" cannot be handled as a {rt.kind}: no kind '
                              f'"{kind}" is registered for version "{rt.group_version}"', "BadRequest")
        if api_version is not None and api_version != rt.group_version:
            raise StatusError(400, f"the API version in the data ({api_version}) does not match the expected API "
                              f"version ({rt.group_version})", "BadRequest")
        meta = body.get("metadata", {})
        if not isinstance(meta, dict):
            raise StatusError(400, "metadata must be an object", "BadRequest")
        body["metadata"] = meta
        body["apiVersion"], body["kind"] = rt.group_version, rt.kind
        return body

    def _prepare(self, rt: res.ResourceType, obj: Obj, ns: str) -> Obj:
        """Defaults of a new object (``metadata``, secrets' ``stringData``, pods' status)."""
        meta = obj["metadata"]
        self._new_meta(obj, ns if rt.namespaced else "")
        if not rt.namespaced:
            meta.pop("namespace", None)
        if rt.kind == "Deployment":
            meta["generation"] = 1
            obj["spec"].setdefault("replicas", 1)
            obj["spec"].setdefault("strategy", {"type": "RollingUpdate",
                                                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
            obj.setdefault("status", {})
        elif rt.kind == "Pod":
            obj["spec"].setdefault("nodeName", self.api.controller.node_name)
            obj["spec"].setdefault("restartPolicy", "Always")
            obj["status"] = self.api.controller.pending_status(obj)
        elif rt.kind == "Namespace":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        elif rt.kind == "Secret":
            kvalid.fold_string_data(obj)
            obj.setdefault("type", "Opaque")
        elif rt.kind == "Service":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("clusterIP", "10.96.0." + str(1 + self.store.rv % 250))
        return obj

    def _check_namespace(self, rt: res.ResourceType, obj: Obj, ns: str) -> None:
        body_ns = obj["metadata"].get("namespace")
        if rt.namespaced and body_ns and body_ns != ns:
            raise StatusError(400, "the namespace of the provided object does not match the namespace sent on "
                              "the request", "BadRequest")
        if rt.namespaced and self.store.get("namespaces", "", ns) is None:
            raise not_found("namespaces", ns)

    def create(self, request: Request, rt: res.ResourceType, ns: str) -> Reply:
        obj = self._body(request, rt)
        warnings = self._field_validation(request, rt, obj, "CreateOptions")
        reply = self._create(request, rt, ns, obj, record=True)
        reply.headers += warnings
        return reply

    def _create(self, request: Request, rt: res.ResourceType, ns: str, obj: Obj, record: bool) -> Reply:
        self._check_namespace(rt, obj, ns)
        meta = obj["metadata"]
        if not meta.get("name") and isinstance(meta.get("generateName"), str) and meta["generateName"]:
            meta["name"] = meta["generateName"] + random_suffix()
        if rt.kind in ("Pod", "Deployment") and not isinstance(obj.get("spec"), dict):
            obj["spec"] = {}
        kvalid.validate(rt, obj, ns)
        if self.store.get(rt.key, ns if rt.namespaced else "", meta["name"]) is not None:
            raise already_exists(rt.plural, meta["name"], rt.group)
        obj = self._prepare(rt, obj, ns)
        if record:
            managed.record_update(None, obj, _manager(request), rt.group_version, now_stamp())
        if request.arg("dryRun") == "All":
            return self._one(request, rt, obj, 201)
        self.store.put(rt.key, obj, "ADDED")
        self._after_write(rt, obj, created=True)
        return self._one(request, rt, obj, 201)

    @staticmethod
    def _field_validation(request: Request, rt: res.ResourceType, obj: Obj, options_kind: str) -> Headers:
        """Field validation of a create or update body (``create.go``/``update.go``): the fields the type
        does not declare are dropped; Strict refuses them, Warn (the default) names them in warnings."""
        mode = schema.directive(request.arg("fieldValidation"), options_kind)
        if "protobuf" in request.headers.get("content-type", ""):
            return []  # the generators' protobuf bodies hold declared fields only
        unknown = schema.unknown_fields(rt.kind, obj)
        if unknown and mode == "Strict":
            raise StatusError(400, f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                              f"{schema.strict_message(unknown)}", "BadRequest")
        return schema.warning_headers(unknown) if mode == "Warn" else []

    def _after_write(self, rt: res.ResourceType, obj: Obj, created: bool) -> None:
        if rt.kind == "Pod" and created:
            self.api.controller.pod_created(obj)
        elif rt.kind == "Deployment":
            self.api.controller.reconcile(obj)

    def _replace(self, rt: res.ResourceType, current: Obj, new: Obj, sub: str, dry_run: bool,
                 request: Request, record: bool = True) -> Reply:
        """Store ``new`` in place of ``current``, keeping what the server owns."""
        meta = new.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise StatusError(400, "metadata must be an object", "BadRequest")
        old = current["metadata"]
        if meta.get("name", old["name"]) != old["name"]:
            raise StatusError(400, f'the name of the object ({meta.get("name")}) does not match the name on the URL '
                              f'({old["name"]})', "BadRequest")
        for key in ("name", "namespace", "uid", "creationTimestamp", "generation", "generateName"):
            if key in old:
                meta[key] = old[key]
            else:
                meta.pop(key, None)
        meta.pop("resourceVersion", None)
        new["apiVersion"], new["kind"] = rt.group_version, rt.kind
        if sub == "status":
            new = {**current, "status": new.get("status", current.get("status"))}
        elif sub == "scale":
            replicas = ((new.get("spec") or {}).get("replicas"))
            if not isinstance(replicas, int) or replicas < 0:
                raise invalid("Scale", old["name"], [("spec.replicas", "FieldValueInvalid",
                                                      f"Invalid value: {replicas!r}: must be greater than or "
                                                      "equal to 0")], "autoscaling")
            new = copy.deepcopy(current)
            new["spec"]["replicas"] = replicas
        # The main resource does not change the status (the /status subresource does).
        elif "status" in current and rt.kind in ("Pod", "Deployment", "Namespace"):
            new["status"] = current["status"]
        if rt.kind == "Secret":
            kvalid.fold_string_data(new)
        kvalid.validate(rt, new, old.get("namespace", ""))
        if record and not sub:
            managed.record_update(current, new, _manager(request), rt.group_version, now_stamp())
        if rt.kind == "Deployment" and new.get("spec") != current.get("spec"):
            new["metadata"]["generation"] = int(old.get("generation", 1)) + 1
        if dry_run:
            new["metadata"]["resourceVersion"] = old.get("resourceVersion", "")
            return self._scale_or_one(request, rt, new, sub)
        if _same(new, current):
            return self._scale_or_one(request, rt, current, sub)  # no change: no new version, no event
        self.store.put(rt.key, new, "MODIFIED")
        self._after_write(rt, new, created=False)
        return self._scale_or_one(request, rt, new, sub)

    def _scale_or_one(self, request: Request, rt: res.ResourceType, obj: Obj, sub: str) -> Reply:
        if sub != "scale":
            return self._one(request, rt, obj)
        meta = obj["metadata"]
        return _json({"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": {
            "name": meta["name"], "namespace": meta.get("namespace", ""), "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""), "creationTimestamp": meta.get("creationTimestamp")},
            "spec": {"replicas": obj["spec"].get("replicas", 1)},
            "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                       "selector": ",".join(f"{k}={v}" for k, v in ((obj["spec"].get("selector") or {}).get(
                           "matchLabels") or {}).items())}})

    def update(self, request: Request, rt: res.ResourceType, ns: str, name: str, sub: str) -> Reply:
        current = self._get(rt, ns, name)
        warnings: Headers = []
        if sub == "scale":
            try:
                new = json.loads(request.body)
            except ValueError as exc:
                raise StatusError(400, f"json parse error: {exc}", "BadRequest") from None
            if not isinstance(new, dict):
                raise StatusError(400, "the request body must be an object", "BadRequest")
            want_rv = (new.get("metadata") or {}).get("resourceVersion")
        else:
            new = self._body(request, rt)
            warnings = self._field_validation(request, rt, new, "UpdateOptions")
            want_rv = new["metadata"].get("resourceVersion")
        if want_rv and want_rv != current["metadata"]["resourceVersion"]:
            raise conflict(rt.plural, name, rt.group)
        reply = self._replace(rt, current, new, sub, request.arg("dryRun") == "All", request)
        reply.headers += warnings if sub != "scale" else []
        return reply

    def patch(self, request: Request, rt: res.ResourceType, ns: str, name: str, sub: str, user: User) -> Reply:
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        current = self.store.get(rt.key, ns, name)
        mode = schema.directive(request.arg("fieldValidation"), "PatchOptions")
        if ctype == "application/apply-patch+yaml":
            return self._apply(request, rt, ns, name, sub, current)
        if request.arg("force"):
            raise StatusError(422, 'PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: may not be specified '
                              "for non-apply patch", "Invalid")
        if current is None:
            raise not_found(rt.plural, name, rt.group)
        try:
            body = json.loads(request.body)
        except ValueError as exc:
            raise StatusError(400, f"error decoding patch: {str(exc)[:200]}", "BadRequest") from None
        try:
            if ctype == "application/json-patch+json":
                new = kpatch.json_patch(current, body)
            elif ctype == "application/merge-patch+json":
                new = kpatch.merge_patch(current, body)
            elif ctype == "application/strategic-merge-patch+json":
                new = kpatch.strategic_merge(current, body)
            else:
                raise StatusError(415, "the body of the request was in an unknown format - accepted media "
                                  "types include: application/json-patch+json, application/merge-patch+json, "
                                  "application/apply-patch+yaml, application/strategic-merge-patch+json",
                                  "UnsupportedMediaType")
        except kpatch.PatchError as exc:
            raise StatusError(422, str(exc), "Invalid") from None
        if not isinstance(new, dict):
            raise StatusError(422, "the patch does not produce an object", "Invalid")
        warnings: Headers = []
        if sub != "scale":
            # patch.go: the patched object decoded into the type; its undeclared fields are a strict
            # decoding error reported on the field "patch" (the patch map, or the patched JSON).
            shown = schema.go_value(body) if ctype == "application/strategic-merge-patch+json" else \
                json.dumps(new, separators=(",", ":"))
            unknown = schema.unknown_fields(rt.kind, new)
            if unknown and mode == "Strict":
                raise schema.patch_invalid(shown, schema.strict_message(unknown))
            warnings = schema.warning_headers(unknown) if mode == "Warn" else []
        want_rv = (new.get("metadata") or {}).get("resourceVersion")
        if want_rv and want_rv != current["metadata"]["resourceVersion"]:
            raise conflict(rt.plural, name, rt.group)
        reply = self._replace(rt, current, new, sub, request.arg("dryRun") == "All", request)
        reply.headers += warnings
        return reply

    def _apply(self, request: Request, rt: res.ResourceType, ns: str, name: str, sub: str,
               current: Obj | None) -> Reply:
        """Server-side apply (``application/apply-patch+yaml``), with field ownership
        (:mod:`tpemu.agent.kube.managed`)."""
        applied = self._body(request, rt, yaml_ok=True)
        manager = request.arg("fieldManager")
        if not manager:
            raise StatusError(422, 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is '
                              "required for apply patch", "Invalid")
        unknown = schema.unknown_fields(rt.kind, applied, prune=False)
        if unknown:
            raise schema.apply_error(rt, ns, name, applied, unknown)
        if applied["metadata"].get("name", name) != name:
            raise StatusError(400, f'the name of the object ({applied["metadata"].get("name")}) does not match the '
                              f"name on the URL ({name})", "BadRequest")
        applied["metadata"]["name"] = name
        force = request.flag("force")
        if current is None:
            obj = managed.apply({}, applied, manager, rt.group_version, force, now_stamp())
            obj["metadata"].setdefault("name", name)
            return self._create(request, rt, ns, obj, record=False)
        new = managed.apply(current, applied, manager, rt.group_version, force, now_stamp())
        want_rv = (applied.get("metadata") or {}).get("resourceVersion")
        if want_rv and want_rv != current["metadata"]["resourceVersion"]:
            raise conflict(rt.plural, name, rt.group)
        return self._replace(rt, current, new, sub, request.arg("dryRun") == "All", request, record=False)

    def delete(self, request: Request, rt: res.ResourceType, ns: str, name: str) -> Reply:
        if not name:
            items = self._selected(request, rt, ns)
            for obj in items:
                self._delete_one(rt, obj)
            return _json({"kind": f"{rt.kind}List", "apiVersion": rt.group_version,
                          "metadata": {"resourceVersion": str(self.store.rv)}, "items": items})
        obj = self._get(rt, ns, name)
        if request.arg("dryRun") == "All":
            return _json(obj)
        self._delete_one(rt, obj)
        if rt.kind == "Namespace":
            obj["status"] = {"phase": "Terminating"}
        return _json(obj)

    def _delete_one(self, rt: res.ResourceType, obj: Obj) -> None:
        meta = obj["metadata"]
        self.store.delete(rt.key, meta.get("namespace", ""), meta["name"])
        controller = self.api.controller
        if rt.kind == "Deployment":
            controller.deployment_deleted(obj)
        elif rt.kind == "Pod":
            controller.pod_deleted(obj)
        elif rt.kind == "Namespace":
            controller.namespace_deleted(meta["name"])


def _same(a: Obj, b: Obj) -> bool:
    """Equal apart from ``metadata.resourceVersion``."""
    def strip(o: Obj) -> str:
        meta = {k: v for k, v in (o.get("metadata") or {}).items() if k != "resourceVersion"}
        return json.dumps({**o, "metadata": meta}, sort_keys=True)
    return strip(a) == strip(b)


def _manager(request: Request) -> str:
    return managed.manager_of(request.arg("fieldManager"), request.headers.get("user-agent", ""))
