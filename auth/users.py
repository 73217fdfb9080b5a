"""Local users and their passwords (logic over the backend).

A user is Teleport's ``UserV2``: a name, roles, and traits — ``logins``, ``db_users``,
``db_names`` (``kubernetes_users``/``kubernetes_groups`` too) — that become the principals and
database fields of the user's certificates. Stored as in Teleport: the resource at
``/web/users/<name>/params``, the password hash beside it at ``/web/users/<name>/pwd``.

Passwords are hashed with scrypt from the standard library (``hashlib.scrypt``, OpenSSL's
implementation: no extra dependency, memory-hard). Teleport uses bcrypt; scrypt with N=2^15,
r=8, p=1 (32 MiB, about 0.1 s here) is at least as strong and needs nothing outside the stdlib.
Hashes are PHC strings (``$scrypt$ln=15,r=8,p=1$<salt>$<hash>``) so the cost can change later.
A login for an unknown user still computes a hash, so timing does not tell which names exist, and
every failure has the same message: ``invalid username or password``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tpemu import authapi
from tpemu.auth.backend import AlreadyExists, Backend, NotFound

PREFIX = "/web/users/"
SCRYPT_LN, SCRYPT_R, SCRYPT_P = 15, 8, 1
MIN_PASSWORD, MAX_PASSWORD = 6, 128
INVALID_LOGIN = "invalid username or password"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._+-]{0,127}")
#: The traits tpemu knows; they map to certificate fields (logins → principals …).
TRAITS = ("logins", "db_users", "db_names", "kubernetes_users", "kubernetes_groups")
#: Teleport's preset role for ordinary users.
DEFAULT_ROLES = ("access",)


def hash_password(password: str, ln: int = SCRYPT_LN) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, ln, SCRYPT_R, SCRYPT_P)
    return f"$scrypt$ln={ln},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (constant-time comparison)."""
    try:
        _, scheme, params, salt_text, digest_text = encoded.split("$")
        values = dict(p.split("=") for p in params.split(","))
        ln, r, p = int(values["ln"]), int(values["r"]), int(values["p"])
        salt, digest = _unb64(salt_text), _unb64(digest_text)
    except (ValueError, KeyError):
        return False
    if scheme != "scrypt" or not (10 <= ln <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        return False
    return hmac.compare_digest(_scrypt(password, salt, ln, r, p), digest)


def _scrypt(password: str, salt: bytes, ln: int, r: int, p: int) -> bytes:
    n = 1 << ln
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32,
                          maxmem=256 * n * r * p + (1 << 20))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


#: Hash of a random password, checked when the user does not exist (equal timing).
_DUMMY_HASH = ""


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise authapi.BadParameter(f"invalid user name {name[:64]!r}: use letters, digits and @ . _ + - "
                                   "(at most 128 characters, starting with a letter or digit)")
    return name


def check_password_policy(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise authapi.BadParameter(f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long")


@dataclass(frozen=True)
class User:
    name: str
    roles: tuple[str, ...] = DEFAULT_ROLES
    traits: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    created: float = 0.0

    __hash__ = None  # type: ignore[assignment]

    def trait(self, name: str) -> tuple[str, ...]:
        return tuple(self.traits.get(name, ()))

    def resource(self) -> dict[str, Any]:
        """Teleport's ``UserV2`` JSON (no secrets)."""
        return {"kind": "user", "version": "v2", "metadata": {"name": self.name},
                "spec": {"roles": list(self.roles), "traits": {k: list(v) for k, v in self.traits.items()},
                         "created_by": {"time": authapi.rfc3339(self.created)}}}

    def to_json(self) -> bytes:
        return json.dumps(self.resource(), sort_keys=True).encode()

    @classmethod
    def from_resource(cls, data: object) -> User:
        """A user from ``UserV2`` JSON; raises :class:`~tpemu.authapi.BadParameter`."""
        body = authapi.body_object(data)
        meta = authapi.body_object(body.get("metadata") or {})
        spec = authapi.body_object(body.get("spec") or {})
        name = check_name(authapi.field_str(meta, "name", required=True))
        roles = authapi.field_list(spec, "roles") or DEFAULT_ROLES
        raw_traits = authapi.body_object(spec.get("traits") or {})
        traits = {k: authapi.field_list(raw_traits, k) for k in raw_traits}
        created = authapi.parse_rfc3339((spec.get("created_by") or {}).get("time"), "created_by.time") or 0.0
        return cls(name, roles, {k: v for k, v in traits.items() if v}, created)


class UserStore:
    def __init__(self, backend: Backend, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.clock = clock

    async def create(self, user: User, password: str, upsert: bool = False) -> User:
        import asyncio

        check_name(user.name)
        check_password_policy(password)
        user = User(user.name, user.roles, user.traits, user.created or self.clock())
        pwd = await asyncio.to_thread(hash_password, password)
        params = PREFIX + user.name + "/params"
        if upsert:
            await self.backend.put(params, user.to_json())
        else:
            try:
                await self.backend.create(params, user.to_json())
            except AlreadyExists:
                raise authapi.AlreadyExists(f"user {user.name!r} already exists") from None
        await self.backend.put(PREFIX + user.name + "/pwd", pwd.encode())
        return user

    async def get(self, name: str) -> User:
        try:
            item = await self.backend.get(PREFIX + name + "/params")
        except NotFound:
            raise authapi.NotFound(f"user {name!r} not found") from None
        return User.from_resource(json.loads(item.value))

    async def list(self) -> list[User]:
        items = await self.backend.get_range(PREFIX)
        return [User.from_resource(json.loads(i.value)) for i in items if i.key.endswith("/params")]

    async def delete(self, name: str) -> None:
        if not await self.backend.delete_range(PREFIX + name + "/"):
            raise authapi.NotFound(f"user {name!r} not found")

    async def set_password(self, name: str, password: str) -> None:
        import asyncio

        await self.get(name)
        check_password_policy(password)
        await self.backend.put(PREFIX + name + "/pwd", (await asyncio.to_thread(hash_password, password)).encode())

    async def check_password(self, name: str, password: str) -> User:
        """The user if ``password`` is theirs; :class:`~tpemu.authapi.AccessDenied` otherwise."""
        import asyncio

        global _DUMMY_HASH
        encoded = ""
        user: User | None = None
        if _NAME.fullmatch(name) and len(password) <= MAX_PASSWORD:
            try:
                user = await self.get(name)
                encoded = (await self.backend.get(PREFIX + name + "/pwd")).value.decode()
            except (authapi.NotFound, NotFound):
                user = None
        if not encoded:
            if not _DUMMY_HASH:
                _DUMMY_HASH = await asyncio.to_thread(hash_password, secrets.token_hex(8))
            encoded = _DUMMY_HASH
        ok = await asyncio.to_thread(verify_password, password[:MAX_PASSWORD], encoded)
        if not ok or user is None:
            raise authapi.AccessDenied(INVALID_LOGIN)
        return user


def traits_from(values: Mapping[str, Iterable[str]]) -> dict[str, tuple[str, ...]]:
    """Keep the non-empty traits, as tuples."""
    return {k: tuple(v) for k, v in values.items() if tuple(v)}
