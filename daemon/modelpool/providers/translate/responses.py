"""Non-streaming response translation: Anthropic message ⇄ OpenAI chat.completion."""

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


def anthropic_message_to_openai(
    message: Mapping[str, Any], *, created: int | None = None
) -> dict[str, Any]:
    """An Anthropic ``Message`` as an OpenAI ``chat.completion`` (id and model kept)."""
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
    raise :class:`TranslationError`).
    """
    choices = completion.get("choices") or []
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
