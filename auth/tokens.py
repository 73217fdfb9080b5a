"""Join tokens: dynamic ones in the backend, static ones from ``auth_service.tokens`` (logic).

Teleport's provision tokens (``tctl tokens add --type=node,db --ttl=30m``): a random 32-hex-digit
name, the system roles it lets a host join as, an expiry (default 30 minutes); reusable until it
expires. tpemu adds single-use tokens (``--single-use``): the first successful join marks the token
used, atomically (compare-and-swap), and every later attempt is refused. Static tokens
(``auth_service.tokens: ["node,db:<secret>"]``) never expire.

Refusals are specific (and logged by the caller): ``token "1a2b3c…" expired at …``, ``… was
already used at … (single-use)``, ``… does not allow role Proxy (it allows Node, Db)``, ``…
not found``. Token values never appear whole in messages or logs, only their first characters,
as Teleport masks them. Expired tokens stay in the backend for :data:`KEEP_EXPIRED` so that a late
join attempt is told "expired", not "not found"; the backend sweeps them after that.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from tpemu import authapi
from tpemu import identity as ident
from tpemu.auth.backend import AlreadyExists, Backend, CompareFailed, NotFound

log = logging.getLogger(__name__)

PREFIX = "/tokens/"
KEEP_EXPIRED = 24 * 3600.0
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def mask(name: str) -> str:
    """A token for messages: its first six characters (all of a short one is never shown)."""
    shown = name[:6] if len(name) >= 12 else name[: max(1, len(name) // 3)]
    return f"{shown}…"


@dataclass(frozen=True)
class ProvisionToken:
    name: str
    roles: tuple[str, ...]
    expires: float | None = None
    single_use: bool = False
    used_at: float | None = None
    used_by: str = ""
    static: bool = False
    created: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps({"name": self.name, "roles": list(self.roles), "expires": self.expires,
                           "single_use": self.single_use, "used_at": self.used_at, "used_by": self.used_by,
                           "created": self.created}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ProvisionToken:
        d = json.loads(raw)
        return cls(d["name"], tuple(d["roles"]), d.get("expires"), bool(d.get("single_use")), d.get("used_at"),
                   d.get("used_by", ""), False, float(d.get("created", 0.0)))

    def resource(self, reveal: bool = True) -> dict[str, Any]:
        """Teleport's ``ProvisionTokenV2`` JSON (plus tpemu's ``single_use``/``used_at``)."""
        return {
            "kind": "token", "version": "v2",
            "metadata": {"name": self.name if reveal else mask(self.name),
                         **({"expires": authapi.rfc3339(self.expires)} if self.expires else {})},
            "spec": {"roles": list(self.roles), "join_method": "token", "single_use": self.single_use},
            "status": {"static": self.static, **({"used_at": authapi.rfc3339(self.used_at),
                                                  "used_by": self.used_by} if self.used_at else {})},
        }


def parse_static_tokens(entries: Iterable[str]) -> list[ProvisionToken]:
    """``auth_service.tokens`` entries (``"node,db:secret"``); raises :class:`ValueError`."""
    out = []
    for i, entry in enumerate(entries):
        roles_text, sep, value = entry.partition(":")
        if not sep or not value:
            raise ValueError(f"auth_service.tokens[{i}]: expected 'role[,role…]:token', got {mask(entry)!r}")
        try:
            roles = ident.parse_system_roles(roles_text)
        except ValueError as exc:
            raise ValueError(f"auth_service.tokens[{i}]: {exc}") from None
        out.append(ProvisionToken(value, roles, static=True))
    return out


class TokenStore:
    """Create, list, delete and use join tokens."""

    def __init__(self, backend: Backend, static: Iterable[ProvisionToken] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.static = list(static)
        self.clock = clock

    async def create(self, roles: Iterable[str], ttl: float = authapi.DEFAULT_TOKEN_TTL, single_use: bool = False,
                     name: str = "") -> ProvisionToken:
        roles = tuple(roles)
        if not roles:
            raise authapi.BadParameter("a token needs at least one role")
        if ttl <= 0:
            raise authapi.BadParameter("token ttl must be positive")
        if name:
            if len(name) < 8 or len(name) > 256 or not set(name) <= _NAME_CHARS:
                raise authapi.BadParameter("token values are 8 to 256 characters of letters, digits, '-', '_', '.'")
        else:
            name = secrets.token_hex(16)  # Teleport: utils.CryptoRandomHex(TokenLenBytes=16)
        now = self.clock()
        token = ProvisionToken(name, roles, now + ttl, single_use, created=now)
        try:
            await self.backend.create(PREFIX + name, token.to_json(), expires=now + ttl + KEEP_EXPIRED)
        except AlreadyExists:
            raise authapi.AlreadyExists(f'token "{mask(name)}" already exists') from None
        log.info("token %s created: roles %s, expires %s%s", mask(name), ",".join(roles),
                 authapi.rfc3339(token.expires), ", single-use" if single_use else "")
        return token

    async def list(self) -> list[ProvisionToken]:
        items = await self.backend.get_range(PREFIX)
        return [*self.static, *(ProvisionToken.from_json(i.value) for i in items)]

    async def delete(self, name: str) -> None:
        try:
            await self.backend.delete(PREFIX + name)
        except NotFound:
            raise authapi.NotFound(f'token "{mask(name)}" not found') from None

    async def use(self, name: str, role: str, who: str = "", system_roles: tuple[str, ...] = ()) -> ProvisionToken:
        """Check that ``name`` lets a host join as ``role`` and, if single-use, mark it used.

        For ``Instance`` the token must allow every one of ``system_roles`` (Teleport's
        ``checkTokenJoinRequestCommon``): one join, one use, for all the services of a process.
        Raises :class:`~tpemu.authapi.AccessDenied` with the specific reason.
        """
        if system_roles:
            checked = system_roles
        else:
            checked = (role,)
        if not name:
            raise authapi.AccessDenied("missing join token")
        for token in self.static:
            if hmac.compare_digest(token.name.encode(), name.encode()):
                for r in checked:
                    self._check_role(token, r)
                return token
        key = PREFIX + name
        now = self.clock()
        for _ in range(5):  # compare-and-swap retries when another join races on the same token
            try:
                item = await self.backend.get(key)
            except NotFound:
                raise authapi.AccessDenied(f'token "{mask(name)}" not found (never issued, deleted, '
                                           "or expired more than a day ago)") from None
            token = ProvisionToken.from_json(item.value)
            if token.expires is not None and token.expires <= now:
                raise authapi.AccessDenied(f'token "{mask(name)}" expired at {authapi.rfc3339(token.expires)}')
            for r in checked:
                self._check_role(token, r)
            if not token.single_use:
                return token
            if token.used_at is not None:
                raise authapi.AccessDenied(f'token "{mask(name)}" was already used at '
                                           f"{authapi.rfc3339(token.used_at)} (single-use)")
            used = replace(token, used_at=now, used_by=who)
            try:
                await self.backend.compare_and_swap(key, item.value, used.to_json(), item.expires)
            except (CompareFailed, NotFound):
                continue
            return used
        raise authapi.AccessDenied(f'token "{mask(name)}" was already used (single-use)')

    @staticmethod
    def _check_role(token: ProvisionToken, role: str) -> None:
        if role not in token.roles:
            raise authapi.AccessDenied(f'token "{mask(token.name)}" does not allow role {role} '
                                       f"(it allows {', '.join(token.roles)})")
