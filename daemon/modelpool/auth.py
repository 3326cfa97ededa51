"""Client authentication: keys are known only by their SHA-256.

With no ``clients:`` section the daemon is open (and, by the loopback rule,
reachable only from this host). With clients, every proxy request must carry
a key — ``Authorization: Bearer <key>`` (OpenAI style) or ``x-api-key``
(Anthropic style) — whose hash names a client, and may use only that
client's pools.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from modelpool.config.spec import ClientSpec
from modelpool.errors import Forbidden, Unauthorized


def key_of(headers: Mapping[str, str]) -> str | None:
    """The client's key: a Bearer token, else ``x-api-key``.

    An ``Authorization`` header of another scheme (Basic, say, added by a proxy
    on the way) is not a modelpool key and must not hide the ``x-api-key`` an
    Anthropic-style client sent beside it.
    """
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


class Authenticator:
    """Compiled once per routing table: a lookup from key hash to client."""

    __slots__ = ("_by_hash",)

    def __init__(self, clients: Mapping[str, ClientSpec]) -> None:
        self._by_hash = {client.key_sha256: client for client in clients.values()}

    @property
    def open(self) -> bool:
        return not self._by_hash

    def authenticate(self, headers: Mapping[str, str]) -> ClientSpec | None:
        """The calling client, or None when the daemon is open; raise 401 otherwise."""
        if not self._by_hash:
            return None
        key = key_of(headers)
        if key is None:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' or 'x-api-key'")
        client = self._by_hash.get(hashlib.sha256(key.encode()).hexdigest())
        if client is None:
            raise Unauthorized("invalid API key")
        return client


def authorize(client: ClientSpec | None, route: str) -> None:
    """Raise 403 unless ``client`` may use ``route`` (a pool or model name)."""
    if client is not None and client.pools is not None and route not in client.pools:
        allowed = ", ".join(sorted(client.pools)) or "none"
        raise Forbidden(
            f"client {client.name!r} may not use {route!r}; allowed: {allowed}", param="model"
        )


def may_use(client: ClientSpec | None, route: str) -> bool:
    return client is None or client.pools is None or route in client.pools
