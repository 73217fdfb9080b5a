"""Role checks on the agent, per connection / request (Teleport's ``lib/authz`` ``Authorize`` then
``AccessChecker.CheckAccess`` in ``lib/srv/app`` and ``lib/kube/proxy`` ``authorize``).

A certificate names its holder's roles; the agent reads those roles from the Auth Service (as
Teleport agents read them from their cached access point), keeps them :data:`TTL` seconds, and
checks the resource's labels with :func:`tpemu.roles.check_access`. So an app or cluster a
role no longer allows (the role, or the labels, changed after the certificate was issued) is
refused within :data:`TTL`. An unknown role grants nothing; an Auth Service that cannot be reached
denies (fail closed), with the reason logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from tpemu import authapi
from tpemu.roles import Role, check_access

log = logging.getLogger(__name__)

#: Seconds a role read from the Auth Service is reused.
TTL = 10.0


class RoleCache:
    def __init__(self, auth: Any) -> None:
        self.auth = auth
        self._roles: dict[str, tuple[Role | None, float]] = {}

    async def _role(self, name: str) -> Role | None:
        cached = self._roles.get(name)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            role: Role | None = Role.from_resource(await self.auth.call("GET", f"/v1/roles/{name}"))
        except authapi.NotFound:
            role = None
        self._roles[name] = (role, now + TTL)
        return role

    async def check(self, role_names: Iterable[str], kind: str, labels: Mapping[str, str]) -> str:
        """Empty when allowed, else the reason."""
        roles = []
        try:
            for name in role_names:
                role = await self._role(name)
                if role is not None:
                    roles.append(role)
        except authapi.AuthAPIError as exc:
            return f"cannot read roles from the Auth Service: {exc.message}"
        return check_access(roles, kind, labels)
