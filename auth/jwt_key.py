"""The cluster's JWT signer for application access: RS256 tokens and their JWKS (pure + backend glue).

Teleport's ``lib/jwt`` (``Key.Sign``, ``MarshalJWK``): the Auth Service holds the cluster's JWT CA,
an RSA 2048 key; for every request it proxies, the Application Service asks Auth for a token
(``GenerateAppToken``) and sends it to the application in ``teleport-jwt-assertion``. The token is
a compact JWS, header ``{"alg":"RS256","typ":"JWT"}``, claims ``sub``/``username`` (the Teleport
user), ``roles``, ``traits``, ``iss`` (the cluster name), ``aud`` (the application's URI), ``nbf``
(ten seconds before now), ``iat`` and ``exp``. Applications verify it with the key the proxy
publishes at ``/.well-known/jwks.json`` (``{"keys": [{"kty":"RSA","alg":"RS256","use":"sig",
"kid":"","n":…,"e":…}]}``).

The key is kept in the backend under ``/authorities/jwt/<cluster>`` (created once; with several Auth
instances on one backend the first one wins).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tpemu.auth.backend import AlreadyExists, Backend, NotFound


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8 or 1, "big")


class JWTKey:
    def __init__(self, key: rsa.RSAPrivateKey, cluster: str) -> None:
        self.key = key
        self.cluster = cluster

    def sign(self, claims: dict[str, Any]) -> str:
        header = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}, separators=(",", ":")).encode())
        body = b64url(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{body}".encode("ascii")
        signature = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{header}.{body}.{b64url(signature)}"

    def app_token(self, username: str, roles: list[str], traits: dict[str, list[str]], uri: str,
                  expires: float, now: float | None = None) -> str:
        """``Key.Sign`` for an application request."""
        now = time.time() if now is None else now
        return self.sign({"aud": [uri], "exp": int(expires), "iat": int(now), "iss": self.cluster,
                          "nbf": int(now) - 10, "sub": username, "username": username, "roles": roles,
                          "traits": traits})

    def jwk(self) -> dict[str, str]:
        """``MarshalJWK``."""
        public = self.key.public_key().public_numbers()
        return {"kty": "RSA", "alg": "RS256", "n": b64url(_int_bytes(public.n)), "e": b64url(_int_bytes(public.e)),
                "use": "sig", "kid": ""}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk()]}


async def ensure_jwt_key(backend: Backend, cluster: str) -> JWTKey:
    path = f"/authorities/jwt/{cluster}"
    try:
        pem = json.loads((await backend.get(path)).value)["private_key_pem"].encode()
    except NotFound:
        key = await asyncio.to_thread(rsa.generate_private_key, public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            await backend.create(path, json.dumps({"private_key_pem": pem.decode()}).encode())
        except AlreadyExists:
            pem = json.loads((await backend.get(path)).value)["private_key_pem"].encode()
    loaded = serialization.load_pem_private_key(pem, None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError(f"the JWT key of cluster {cluster} is not an RSA key")
    return JWTKey(loaded, cluster)
