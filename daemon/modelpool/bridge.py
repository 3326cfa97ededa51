"""Between the client's API and the upstream's: one bridge per (ingress API, upstream dialect).

A bridge turns the client's request into the upstream's call, the upstream's
whole answer into the client's, and makes the relay for a stream. Same-API
bridges change only what they must (the model name, the usage modelpool
asks for); cross-API bridges translate with ``modelpool.providers.translate``.
Bridges are stateless; a relay holds one stream's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import orjson

from modelpool.config.spec import Timeouts
from modelpool.errors import UpstreamStatusError
from modelpool.providers.base import Call
from modelpool.providers.openai import MAX_TOKENS_FIELD
from modelpool.providers.translate import (
    DEFAULT_MAX_TOKENS,
    REASONING_KEY,
    THINKING_KEY,
    TranslationError,
    Usage,
    anthropic_message_to_openai,
    anthropic_to_openai_chat,
    openai_chat_to_anthropic,
    openai_completion_to_anthropic,
    strip_modelpool_extensions,
    usage_from_anthropic,
    usage_from_openai,
)
from modelpool.relays import (
    AnthropicPassthrough,
    AnthropicToOpenAI,
    OpenAIPassthrough,
    OpenAIToAnthropic,
    StreamRelay,
)
from modelpool.request import Api, ProxyRequest
from modelpool.table import Model


class Bridge(Protocol):
    def call(self, request: ProxyRequest, model: Model, timeouts: Timeouts) -> Call:
        """The upstream call; raises TranslationError when the model cannot take the request."""
        ...

    def answer(self, data: Mapping[str, Any], raw: bytes, model: Model) -> tuple[bytes, Usage]:
        """The client's body for a whole upstream answer, and the usage it reports."""
        ...

    def relay(self, request: ProxyRequest, model: Model) -> StreamRelay: ...


def _asks_usage_for_client(request: ProxyRequest) -> bool:
    return request.stream and request.endpoint != "embeddings" and not request.include_usage


class OpenAISame:
    """OpenAI client, OpenAI-format upstream."""

    def call(self, request: ProxyRequest, model: Model, timeouts: Timeouts) -> Call:
        body = {**request.body, "model": model.spec.upstream_model}
        if request.endpoint == "chat" and _carries_extensions(body):
            body = strip_modelpool_extensions(body)
        if _asks_usage_for_client(request):
            options = request.body.get("stream_options")
            extra = dict(options) if isinstance(options, Mapping) else {}
            body["stream_options"] = {**extra, "include_usage": True}
        return Call(request.endpoint, body, request.stream, timeouts, model.name)

    def answer(self, data: Mapping[str, Any], raw: bytes, model: Model) -> tuple[bytes, Usage]:
        usage = data.get("usage")
        return raw, usage_from_openai(usage if isinstance(usage, Mapping) else None)

    def relay(self, request: ProxyRequest, model: Model) -> StreamRelay:
        return OpenAIPassthrough(model.name, strip_usage=_asks_usage_for_client(request))


def _carries_extensions(body: Mapping[str, Any]) -> bool:
    messages = body.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict) and (THINKING_KEY in m or REASONING_KEY in m) for m in messages
    )


class AnthropicSame:
    """Anthropic client, Anthropic-format upstream."""

    def call(self, request: ProxyRequest, model: Model, timeouts: Timeouts) -> Call:
        body = {**request.body, "model": model.spec.upstream_model}
        return Call("messages", body, request.stream, timeouts, model.name, request.headers)

    def answer(self, data: Mapping[str, Any], raw: bytes, model: Model) -> tuple[bytes, Usage]:
        usage = data.get("usage")
        return raw, usage_from_anthropic(usage if isinstance(usage, Mapping) else None)

    def relay(self, request: ProxyRequest, model: Model) -> StreamRelay:
        return AnthropicPassthrough(model.name)


class OpenAIToAnthropicUpstream:
    """OpenAI client, Anthropic upstream: chat completions become messages."""

    def call(self, request: ProxyRequest, model: Model, timeouts: Timeouts) -> Call:
        if request.endpoint != "chat":
            raise TranslationError(f"an Anthropic model cannot serve /v1/{request.endpoint}")
        default = model.spec.max_output_tokens or DEFAULT_MAX_TOKENS
        body = openai_chat_to_anthropic(request.body, default_max_tokens=default)
        body["model"] = model.spec.upstream_model
        return Call("messages", body, request.stream, timeouts, model.name, request.headers)

    def answer(self, data: Mapping[str, Any], raw: bytes, model: Model) -> tuple[bytes, Usage]:
        usage = usage_from_anthropic(data.get("usage"))
        return _translated(anthropic_message_to_openai, data, model), usage

    def relay(self, request: ProxyRequest, model: Model) -> StreamRelay:
        return AnthropicToOpenAI(model.name, include_usage=request.include_usage)


class AnthropicToOpenAIUpstream:
    """Anthropic client, OpenAI-format upstream: messages become chat completions."""

    def call(self, request: ProxyRequest, model: Model, timeouts: Timeouts) -> Call:
        field = MAX_TOKENS_FIELD.get(model.provider.type, "max_tokens")
        body = anthropic_to_openai_chat(request.body, max_tokens_field=field)  # type: ignore[arg-type]
        if _carries_extensions(body):  # earlier thinking: no OpenAI field can carry it
            body = strip_modelpool_extensions(body)
        body["model"] = model.spec.upstream_model
        return Call("chat", body, request.stream, timeouts, model.name)

    def answer(self, data: Mapping[str, Any], raw: bytes, model: Model) -> tuple[bytes, Usage]:
        usage = usage_from_openai(data.get("usage"))
        return _translated(openai_completion_to_anthropic, data, model), usage

    def relay(self, request: ProxyRequest, model: Model) -> StreamRelay:
        return OpenAIToAnthropic(model.name, input_tokens=request.prompt_tokens)


def _translated(translate: Any, data: Mapping[str, Any], model: Model) -> bytes:
    """A translated answer; one that cannot be translated is the upstream's garbage (502)."""
    try:
        return orjson.dumps(translate(data))
    except (TranslationError, AttributeError, TypeError) as exc:
        message = f"{model.name}: the upstream's answer cannot be translated: {exc}"
        raise UpstreamStatusError(message, status=502, model=model.name) from None


BRIDGES: dict[tuple[Api, str], Bridge] = {
    ("openai", "openai"): OpenAISame(),
    ("openai", "any"): OpenAISame(),
    ("openai", "anthropic"): OpenAIToAnthropicUpstream(),
    ("anthropic", "anthropic"): AnthropicSame(),
    ("anthropic", "any"): AnthropicSame(),
    ("anthropic", "openai"): AnthropicToOpenAIUpstream(),
}


def bridge_for(request: ProxyRequest, model: Model) -> Bridge:
    return BRIDGES[request.api, model.adapter.dialect]
