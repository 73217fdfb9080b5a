"""Kubernetes ``Status`` errors (``k8s.io/apimachinery/pkg/api/errors``), as JSON replies (pure; shared
by the emulated API, the Kubernetes Service and the proxy).

Every failure of the emulated API — and of the Kubernetes Service in front of it — is answered the
way kubectl and client libraries expect: ``{"kind":"Status","apiVersion":"v1","status":"Failure",
"message":…,"reason":…,"details":…,"code":…}`` with the HTTP status equal to ``code``; kubectl prints
``Error from server (<reason>): <message>``.
"""

from __future__ import annotations

import json
from typing import Any

from tpemu.errors import PeerFault

REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
           406: "NotAcceptable", 409: "Conflict", 410: "Expired", 413: "RequestEntityTooLarge",
           415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
           503: "ServiceUnavailable", 504: "Timeout"}


class StatusError(PeerFault):
    """A request that ends in a ``Status`` reply."""

    def __init__(self, code: int, message: str, reason: str | None = "",
                 details: dict[str, Any] | None = None) -> None:
        """``reason`` ``""``: the usual one of ``code``; ``None``: none (``StatusReasonUnknown``, what the
        API server answers for an error that is not a Status: kubectl prints ``Error from server: …``)."""
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = "" if reason is None else reason or REASONS.get(code, "Unknown")
        self.details = details

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                               "message": self.message}
        if self.reason:
            out["reason"] = self.reason
        if self.details:
            out["details"] = self.details
        out["code"] = self.code
        return out

    def body(self) -> bytes:
        return json.dumps(self.to_json()).encode()


def not_found(plural: str, name: str, group: str = "") -> StatusError:
    what = f"{plural}.{group}" if group else plural
    return StatusError(404, f'{what} "{name}" not found', "NotFound",
                       {"name": name, **({"group": group} if group else {}), "kind": plural})


def already_exists(plural: str, name: str, group: str = "") -> StatusError:
    what = f"{plural}.{group}" if group else plural
    return StatusError(409, f'{what} "{name}" already exists', "AlreadyExists",
                       {"name": name, **({"group": group} if group else {}), "kind": plural})


def conflict(plural: str, name: str, group: str = "") -> StatusError:
    what = f"{plural}.{group}" if group else plural
    return StatusError(409, f'Operation cannot be fulfilled on {what} "{name}": the object has been modified; '
                       "please apply your changes to the latest version and try again", "Conflict",
                       {"name": name, **({"group": group} if group else {}), "kind": plural})


def invalid(kind: str, name: str, causes: list[tuple[str, str, str]], group: str = "") -> StatusError:
    """``causes``: ``(field, reason, message)`` — reason ``FieldValueRequired``, ``FieldValueInvalid`` …"""
    text = "; ".join(f"{f}: {m}" for f, _, m in causes)
    if len(causes) > 1:
        text = "[" + ", ".join(f"{f}: {m}" for f, _, m in causes) + "]"
    return StatusError(422, f'{kind} "{name}" is invalid: {text}', "Invalid",
                       {"name": name, **({"group": group} if group else {}), "kind": kind,
                        "causes": [{"reason": r, "message": m, "field": f} for f, r, m in causes]})


def forbidden(user: str, verb: str, plural: str, group: str, namespace: str, name: str = "",
              sub: str = "", why: str = "") -> StatusError:
    """The message of ``k8s.io/apiserver/pkg/endpoints/handlers/responsewriters.forbiddenMessage``."""
    resource = f"{plural}/{sub}" if sub else plural
    what = f'{plural}.{group}' if group else plural
    subject = f'{what} "{name}"' if name else what
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    message = (f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" in API group '
               f'"{group}" {scope}')
    if why:
        message += f": {why}"
    return StatusError(403, message, "Forbidden", {"name": name, **({"group": group} if group else {}),
                                                   "kind": plural} if name else {
        **({"group": group} if group else {}), "kind": plural})
