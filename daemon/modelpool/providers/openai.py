"""OpenAI-dialect upstreams: ``openai``, ``openai_compatible``, ``ollama``, ``azure_openai``.

They share the wire format and differ only in URLs and the auth header, so
one adapter serves all four; the differences are settled once, when the
routing table is compiled, and the hot path only formats a string.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from modelpool.config.spec import ProviderSpec
from modelpool.providers.base import Call, Dialect
from modelpool.upstream import HttpResponse, HttpTransport

PATHS = {"chat": "chat/completions", "completions": "completions", "embeddings": "embeddings"}
MAX_TOKENS_FIELD = {"openai": "max_completion_tokens", "azure_openai": "max_completion_tokens"}
"""Where OpenAI itself wants the output cap; other servers know only ``max_tokens``."""


def api_root(spec: ProviderSpec) -> str:
    """The URL that endpoint paths hang off."""
    base = spec.base_url.rstrip("/")
    if spec.type == "ollama" and not base.endswith("/v1"):
        return f"{base}/v1"  # Ollama's OpenAI-compatible API
    return base


def models_url(spec: ProviderSpec) -> str:
    """Where the provider lists its models: the health checks' free probe."""
    if spec.type == "azure_openai":
        return f"{api_root(spec)}/openai/models?api-version={spec.api_version}"
    return f"{api_root(spec)}/models"


def auth_headers(spec: ProviderSpec) -> dict[str, str]:
    # identity: bodies are relayed byte for byte (and streams parsed), never re-encoded
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    if spec.api_key is not None:
        if spec.type == "azure_openai":
            headers["api-key"] = spec.api_key.reveal()
        else:
            headers["Authorization"] = f"Bearer {spec.api_key.reveal()}"
    for name, value in spec.headers.items():
        headers[name] = value if isinstance(value, str) else value.reveal()
    return headers


class OpenAIProvider:
    """Sends OpenAI-format calls over a pooled HTTP transport."""

    dialect: Dialect = "openai"

    def __init__(self, spec: ProviderSpec, transport: HttpTransport) -> None:
        self.transport = transport
        self._headers: Mapping[str, str] = auth_headers(spec)
        self._azure = spec.type == "azure_openai"
        self._root = api_root(spec)
        self._query = f"?api-version={spec.api_version}" if self._azure else ""

    def url(self, call: Call) -> str:
        path = PATHS[call.endpoint]
        if self._azure:
            return f"{self._root}/openai/deployments/{call.body['model']}/{path}{self._query}"
        return f"{self._root}/{path}"

    async def send(self, call: Call) -> HttpResponse:
        body = orjson.dumps(call.body)
        return await self.transport.post(
            self.url(call), self._headers, body, call.timeouts, call.model
        )

    async def aclose(self) -> None:
        """The transport is shared and owned by ``Transports``; nothing of ours to close."""
