"""The Anthropic Messages API upstream: ``POST {base}/v1/messages``.

Authentication is ``x-api-key``; every request carries ``anthropic-version``
(the provider's ``api_version``, default 2023-06-01) and whatever
``anthropic-beta`` the client sent. The call's body is already in Anthropic
format: translation happens before an adapter is reached.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from modelpool.config.spec import ProviderSpec
from modelpool.providers.base import Call, Dialect
from modelpool.upstream import HttpResponse, HttpTransport

API_VERSION = "2023-06-01"
FORWARDED = ("anthropic-beta",)
"""Client headers passed through to Anthropic upstreams."""


def api_root(spec: ProviderSpec) -> str:
    """The host part: the SDK's base_url (https://api.anthropic.com), without a trailing /v1."""
    base = spec.base_url.rstrip("/")
    return base.removesuffix("/v1")


def models_url(spec: ProviderSpec) -> str:
    return f"{api_root(spec)}/v1/models"


def auth_headers(spec: ProviderSpec) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept-Encoding": "identity",
        "anthropic-version": spec.api_version or API_VERSION,
    }
    if spec.api_key is not None:
        headers["x-api-key"] = spec.api_key.reveal()
    for name, value in spec.headers.items():
        headers[name] = value if isinstance(value, str) else value.reveal()
    return headers


class AnthropicProvider:
    dialect: Dialect = "anthropic"

    def __init__(self, spec: ProviderSpec, transport: HttpTransport) -> None:
        self.transport = transport
        self._headers: Mapping[str, str] = auth_headers(spec)
        self._url = f"{api_root(spec)}/v1/messages"

    async def send(self, call: Call) -> HttpResponse:
        headers = {**self._headers, **call.headers} if call.headers else self._headers
        return await self.transport.post(
            self._url, headers, orjson.dumps(call.body), call.timeouts, call.model
        )

    async def aclose(self) -> None:
        """The transport is shared and owned by ``Transports``; nothing of ours to close."""
