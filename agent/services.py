"""Which service serves which agent role: ``node`` → the SSH service, ``db`` → the Database Service.

Each role's module (``tpemu.agent.ssh_service``, ``tpemu.agent.db_service``) provides
``async def make_offers(ctx: AgentContext) -> list[Offer]``, building the resources it announces
and the service that serves them from the agent's identity and config.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import cast

from tpemu.agent.process import AgentContext, AgentError, ServiceMaker
from tpemu.agent.tunnel import Offer

_MODULES = {"node": ("ssh_service", "SSH service"), "db": ("db_service", "Database Service"),
            "kube": ("kube.service", "Kubernetes Service"), "app": ("app_service", "Application Service")}


def _maker(role: str) -> ServiceMaker:
    module, what = _MODULES[role]

    async def make(ctx: AgentContext) -> list[Offer]:
        try:
            mod = importlib.import_module(f"tpemu.agent.{module}")
        except ImportError:
            raise AgentError(f"this build has no {what} (tpemu.agent.{module})") from None
        make_offers = cast(Callable[[AgentContext], Awaitable[list[Offer]]], mod.make_offers)
        return await make_offers(ctx)

    return make


MAKERS: dict[str, ServiceMaker] = {role: _maker(role) for role in _MODULES}
