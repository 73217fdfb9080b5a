"""``tpemu tokens`` and ``tpemu users``: cluster administration over the Auth API (glue).

Like ``tctl`` on an Auth Service host, these commands use the admin identity the running Auth
Service wrote into ``<data_dir>/auth/`` (``admin.crt``/``admin.key``, role Admin, and
``admin.json`` with the address the API bound), and call the Auth API over mutual TLS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tpemu import authapi, authclient, pki
from tpemu.config import Addr
from tpemu.errors import LocalFault


class AdminError(LocalFault):
    """The command cannot run (no admin identity, bad address); the message is for the user."""


def admin_client(data_dir: Path, auth_server: str | None = None) -> authclient.AuthClient:
    """A client of the local Auth Service with its admin identity."""
    folder = data_dir / "auth"
    try:
        info = json.loads((folder / "admin.json").read_text())
        addr_text, cluster = str(info["auth_addr"]), str(info["cluster_name"])
    except (OSError, ValueError, KeyError):
        raise AdminError(f"no admin identity in {folder} (is the Auth Service running with this data dir? "
                         "start it with: tpemu start, or pass --data-dir)") from None
    try:
        addr = Addr.parse(auth_server or addr_text, default_port=3025)
    except ValueError as exc:
        raise AdminError(f"--auth-server: {exc}") from None
    files = pki.TLSFiles(folder / "admin.crt", folder / "admin.key", folder / "ca.crt")
    return authclient.AuthClient.with_identity(addr, cluster, files)


async def tokens_add(client: authclient.AuthClient, roles: list[str], ttl: float, single_use: bool,
                     value: str = "") -> dict[str, Any]:
    body: dict[str, Any] = {"roles": roles, "ttl": int(ttl * authapi.NS), "single_use": single_use}
    if value:
        body["token"] = value
    result: dict[str, Any] = await client.call("POST", "/v1/tokens", body)
    return result


async def users_add(client: authclient.AuthClient, name: str, roles: list[str], traits: dict[str, list[str]],
                    password: str) -> dict[str, Any]:
    user = {"kind": "user", "version": "v2", "metadata": {"name": name},
            "spec": {"roles": roles, "traits": {k: v for k, v in traits.items() if v}}}
    result: dict[str, Any] = await client.call("POST", "/v1/users", {"user": user, "password": password})
    return result
