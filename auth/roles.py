"""The Auth Service's role store: roles as Teleport stores them, at ``/roles/<name>/params``.

The rules and their matching (Teleport's ``RoleV6`` ``app_labels`` / ``kubernetes_labels``,
``lib/services/role.go``) are :mod:`tpemu.roles`, shared with the agents; the names are
re-exported here for the Auth Service's callers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tpemu import authapi
from tpemu.auth.backend import Backend, NotFound
from tpemu.roles import KINDS, PRESETS, WILDCARD, Role, Selector, check_access, selector_matches

__all__ = ["KINDS", "PREFIX", "PRESETS", "WILDCARD", "Role", "Roles", "Selector", "check_access", "selector_matches"]

PREFIX = "/roles/"


class Roles:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def get(self, name: str) -> Role:
        try:
            item = await self.backend.get(f"{PREFIX}{name}/params")
        except NotFound:
            if name in PRESETS:
                return PRESETS[name]
            raise authapi.NotFound(f"role {name!r} is not found") from None
        return Role.from_resource(json.loads(item.value))

    async def upsert(self, body: object) -> Role:
        role = Role.from_resource(body)
        await self.backend.put(f"{PREFIX}{role.name}/params", json.dumps(role.resource(), sort_keys=True).encode())
        return role

    async def resolve(self, names: Iterable[str]) -> list[Role]:
        """The roles behind ``names``; an unknown name grants nothing (it is skipped)."""
        out = []
        for name in names:
            try:
                out.append(await self.get(name))
            except authapi.NotFound:
                continue
        return out
