"""Non-streaming response translation: Anthropic message ⇄ OpenAI chat.completion.

Error bodies translate too (``{"type": "error", "error": {...}}`` ⇄
``{"error": {...}}``); the HTTP status is the caller's business.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from modelpool.providers.translate.content import (
    THINKING_TYPES,
    carry_thinking,
    thinking_blocks,
    tool_call_to_tool_use,
    tool_use_to_tool_call,
)
from modelpool.providers.translate.errors import TranslationError
from modelpool.providers.translate.reasons import anthropic_stop_reason, openai_finish_reason
from modelpool.providers.translate.usage import (
    usage_from_anthropic,
    usage_from_openai,
    usage_to_anthropic,
    usage_to_openai,
)

ANTHROPIC_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "billing_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "timeout_error",
        "api_error",
        "overloaded_error",
    }
)
# OpenAI error ``code`` and ``type`` values → Anthropic error types (code first).
_OPENAI_ERROR_CODES = {
    "rate_limit_exceeded": "rate_limit_error",
    "insufficient_quota": "billing_error",
    "invalid_api_key": "authentication_error",
    "model_not_found": "not_found_error",
}
_OPENAI_ERROR_TYPES = {
    "requests": "rate_limit_error",
    "tokens": "rate_limit_error",
    "insufficient_quota": "billing_error",
    "server_error": "api_error",
}


def anthropic_error_to_openai(body: Mapping[str, Any]) -> dict[str, Any]:
    """An Anthropic error body (or stream ``error`` event) as an OpenAI error body.

    The Anthropic error type is kept as the OpenAI ``type`` (clients switch on
    the HTTP status; the type stays informative); ``request_id`` is dropped.
    """
    error = body.get("error")
    if not isinstance(error, Mapping):
        error = {"message": "" if error is None else str(error)}
    payload = {"message": error.get("message") or "", "type": error.get("type") or "api_error"}
    return {"error": payload | {"param": None, "code": None}}


def openai_error_to_anthropic(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI error body (or a stream's error payload) as an Anthropic error body.

    OpenAI's ``code`` decides first (``invalid_request_error`` with code
    ``invalid_api_key`` is an authentication error), then an Anthropic error
    type passes through, then OpenAI's ``type`` maps to the nearest Anthropic
    type; anything else is ``api_error``.
    """
    error = body.get("error")
    if not isinstance(error, Mapping):
        error = {"message": "" if error is None else str(error)}
    kind = _OPENAI_ERROR_CODES.get(str(error.get("code")))
    if kind is None:
        kind = error.get("type")
        if kind not in ANTHROPIC_ERROR_TYPES:
            kind = _OPENAI_ERROR_TYPES.get(str(kind), "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.get("message") or ""}}


def anthropic_message_to_openai(
    message: Mapping[str, Any], *, created: int | None = None
) -> dict[str, Any]:
    """An Anthropic ``Message`` as an OpenAI ``chat.completion`` (id and model kept).

    An Anthropic error body comes back as an OpenAI error body.
    """
    if message.get("type") == "error":
        return anthropic_error_to_openai(message)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking: list[Mapping[str, Any]] = []
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append(tool_use_to_tool_call(block))
        elif kind in THINKING_TYPES:
            thinking.append(block)
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    reply["refusal"] = None
    if calls:
        reply["tool_calls"] = calls
    carry_thinking(reply, thinking)
    finish = openai_finish_reason(message.get("stop_reason"), has_tool_calls=bool(calls))
    return {
        "id": message.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": message.get("model", ""),
        "choices": [{"index": 0, "message": reply, "finish_reason": finish, "logprobs": None}],
        "usage": usage_to_openai(usage_from_anthropic(message.get("usage"))),
    }


def openai_completion_to_anthropic(completion: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as an Anthropic ``Message`` (id and model kept).

    Only the first choice is translated. A refusal becomes text with
    ``stop_reason: refusal``; tool calls become ``tool_use`` blocks whose
    ``input`` is the parsed arguments (arguments that are not a JSON object
    raise :class:`TranslationError`). An OpenAI error body comes back as an
    Anthropic error body.
    """
    choices = completion.get("choices") or []
    if not choices and completion.get("error") is not None:
        return openai_error_to_anthropic(completion)
    if not choices:
        raise TranslationError("the completion has no choices", "choices")
    choice = choices[0]
    reply = choice.get("message") or {}
    blocks = thinking_blocks(reply, "choices[0].message")
    if reply.get("content"):
        blocks.append({"type": "text", "text": reply["content"]})
    if reply.get("refusal"):
        blocks.append({"type": "text", "text": reply["refusal"]})
    calls = reply.get("tool_calls") or []
    for j, call in enumerate(calls):
        blocks.append(tool_call_to_tool_use(call, f"choices[0].message.tool_calls[{j}]"))
    finish = "content_filter" if reply.get("refusal") else choice.get("finish_reason")
    return {
        "id": completion.get("id", ""),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model", ""),
        "content": blocks,
        "stop_reason": anthropic_stop_reason(finish, has_tool_calls=bool(calls)),
        "stop_sequence": None,
        "usage": usage_to_anthropic(usage_from_openai(completion.get("usage"))),
    }
