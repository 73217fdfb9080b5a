"""The Auth API's contract: error types and JSON shapes shared by server and clients (pure).

Teleport's Auth API is gRPC; tpemu's is HTTP/1.1 + JSON over mTLS with the paths of Teleport's
former HTTP API (``lib/auth/apiserver.go``: ``/v1/tokens/register`` …) and the JSON shapes of
Teleport's Go types, so byte fields (``[]byte`` in Go) are base64 strings and durations are
nanoseconds. The endpoints, who may call them, and their bodies are listed in
``tpemu.auth.api``. Errors travel as ``{"error": {"message": …}}`` with the HTTP status of
Teleport's ``trace`` error kinds (403 access denied, 400 bad parameter, 404 not found, 409
already exists), and clients turn them back into the same exception classes.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from tpemu.errors import PeerFault

#: Default lifetime of dynamic join tokens (``tctl tokens add``: 30 minutes).
DEFAULT_TOKEN_TTL = 30 * 60.0
#: Default lifetime of user certificates (``tsh login``: 12 hours) and the cap (a role's
#: default ``max_session_ttl``: 30 hours).
DEFAULT_CERT_TTL = 12 * 3600.0
MAX_CERT_TTL = 30 * 3600.0
#: How long a heartbeat keeps a server listed (``apidefaults.ServerAnnounceTTL``: 10 minutes).
SERVER_ANNOUNCE_TTL = 600.0
NS = 1_000_000_000


class AuthAPIError(PeerFault):
    """An error the Auth API answers with; ``status`` is the HTTP status."""

    status = 500
    kind = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AccessDenied(AuthAPIError):
    status = 403
    kind = "access-denied"


class BadParameter(AuthAPIError):
    status = 400
    kind = "bad-parameter"


class NotFound(AuthAPIError):
    status = 404
    kind = "not-found"


class AlreadyExists(AuthAPIError):
    status = 409
    kind = "already-exists"


class Unavailable(AuthAPIError):
    """The Auth Service could not be reached or answered 5xx (client side only)."""

    status = 503
    kind = "unavailable"


_BY_STATUS: dict[int, type[AuthAPIError]] = {c.status: c for c in (AccessDenied, BadParameter, NotFound,
                                                                      AlreadyExists)}


def error_for_status(status: int, message: str) -> AuthAPIError:
    """The exception for an error answer (``trace.ReadError``)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        err = AuthAPIError(message) if status < 500 else Unavailable(message)
        err.status = status
        return err
    return cls(message)


# -- value helpers ----------------------------------------------------------------------------------


def b64(data: bytes | str) -> str:
    """Go's JSON encoding of a ``[]byte``."""
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def unb64(value: object, what: str) -> bytes:
    """Decode a ``[]byte`` field; :class:`BadParameter` names the field when it is not base64."""
    if not isinstance(value, str):
        raise BadParameter(f"{what}: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise BadParameter(f"{what}: not valid base64") from None


def rfc3339(when: float | dt.datetime | None) -> str | None:
    if when is None:
        return None
    if not isinstance(when, dt.datetime):
        when = dt.datetime.fromtimestamp(when, dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: object, what: str) -> float | None:
    if value in (None, "", "0001-01-01T00:00:00Z"):
        return None
    if not isinstance(value, str):
        raise BadParameter(f"{what}: expected an RFC 3339 time")
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise BadParameter(f"{what}: {value!r} is not an RFC 3339 time") from None


def field_str(body: dict[str, Any], name: str, required: bool = False, max_len: int = 1024) -> str:
    value = body.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise BadParameter(f"{name}: expected a string")
    if required and not value:
        raise BadParameter(f"missing parameter {name}")
    if len(value) > max_len:
        raise BadParameter(f"{name}: longer than {max_len} characters")
    return value


def field_list(body: dict[str, Any], name: str, max_items: int = 256) -> tuple[str, ...]:
    value = body.get(name) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadParameter(f"{name}: expected a list of strings")
    if len(value) > max_items:
        raise BadParameter(f"{name}: more than {max_items} items")
    return tuple(v for v in value if v)


def duration_ns(body: dict[str, Any], name: str, default: float) -> float:
    """A Go ``time.Duration`` field (nanoseconds) as seconds; ``default`` when absent or zero."""
    value = body.get(name)
    if value in (None, 0):
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise BadParameter(f"{name}: expected a duration in nanoseconds")
    return float(value) / NS


def body_object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadParameter("request body must be a JSON object")
    return body
