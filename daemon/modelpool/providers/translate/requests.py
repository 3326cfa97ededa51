"""Request translation: OpenAI chat completions ⇄ Anthropic messages."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from modelpool.providers.translate.content import (
    THINKING_KEY,
    THINKING_TYPES,
    carry_thinking,
    text_of_parts,
    thinking_blocks,
    tool_call_to_tool_use,
    tool_use_to_tool_call,
    user_block_to_part,
    user_part_to_block,
)
from modelpool.providers.translate.errors import TranslationError

DEFAULT_MAX_TOKENS = 4096

# OpenAI parameters with no Anthropic counterpart that change nothing a client
# can rely on; they are dropped. Anything else unknown is dropped as well, but
# the ones below raise because honouring them is part of the answer's shape.
_OPENAI_REJECTED = ("audio", "functions", "function_call", "prediction")
_OPENAI_SYSTEM_ROLES = ("system", "developer")
_ANTHROPIC_TOOL_CHOICE = {"auto": "auto", "none": "none", "required": "any"}
_OPENAI_TOOL_CHOICE = {v: k for k, v in _ANTHROPIC_TOOL_CHOICE.items()}


def _expect_list(value: Any, param: str) -> Sequence[Any]:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise TranslationError("must be a list", param)
    return value


def _copy_common(src: Mapping[str, Any], out: dict[str, Any], keys: Sequence[str]) -> None:
    for key in keys:
        if src.get(key) is not None:
            out[key] = src[key]


# --------------------------------------------------------------- OpenAI → Anthropic


def openai_chat_to_anthropic(
    body: Mapping[str, Any], *, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> dict[str, Any]:
    """An OpenAI ``/v1/chat/completions`` body as an Anthropic ``/v1/messages`` body."""
    _reject_openai_features(body)
    system, messages = _openai_messages(_expect_list(body.get("messages"), "messages"))
    out: dict[str, Any] = {"model": body.get("model", "")}
    if system is not None:
        out["system"] = system
    out["messages"] = messages
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    out["max_tokens"] = default_max_tokens if max_tokens is None else max_tokens
    _copy_common(body, out, ("temperature", "top_p", "stream"))
    if isinstance(out.get("temperature"), int | float):
        out["temperature"] = min(float(out["temperature"]), 1.0)
        out.pop("top_p", None)  # current Claude models refuse both; temperature is the usual dial
    stop = body.get("stop")
    if stop is not None:
        out["stop_sequences"] = (
            [stop] if isinstance(stop, str) else list(_expect_list(stop, "stop"))
        )
    if body.get("tools") is not None:
        out["tools"] = [
            _openai_tool(t, f"tools[{i}]")
            for i, t in enumerate(_expect_list(body["tools"], "tools"))
        ]
    choice = _openai_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None and "tools" in out:
        out["tool_choice"] = choice
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    return out


def _reject_openai_features(body: Mapping[str, Any]) -> None:
    for key in _OPENAI_REJECTED:
        if body.get(key) is not None:
            raise TranslationError(f"{key!r} is not supported by this model", key)
    if body.get("n") not in (None, 1):
        raise TranslationError("only n=1 is supported by this model", "n")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise TranslationError("logprobs are not supported by this model", "logprobs")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, Mapping) or fmt.get("type") != "text"):
        raise TranslationError("response_format is not supported by this model", "response_format")
    modalities = body.get("modalities")
    if modalities is not None and list(modalities) != ["text"]:
        raise TranslationError("only text output is supported by this model", "modalities")


def _openai_tool(tool: Any, param: str) -> dict[str, Any]:
    if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
        raise TranslationError("only function tools are supported", f"{param}.type")
    function = tool.get("function") or {}
    if not function.get("name"):
        raise TranslationError("a function tool needs a name", f"{param}.function.name")
    out: dict[str, Any] = {"name": function["name"]}
    if function.get("description") is not None:
        out["description"] = function["description"]
    out["input_schema"] = copy.deepcopy(
        function.get("parameters") or {"type": "object", "properties": {}}
    )
    return out


def _openai_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        out: dict[str, Any] | None = {"type": "auto"} if parallel is False else None
    elif isinstance(choice, str) and choice in _ANTHROPIC_TOOL_CHOICE:
        out = {"type": _ANTHROPIC_TOOL_CHOICE[choice]}
    elif isinstance(choice, Mapping) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if not name:
            raise TranslationError(
                "tool_choice.function.name is required", "tool_choice.function.name"
            )
        out = {"type": "tool", "name": name}
    else:
        raise TranslationError(f"unsupported tool_choice {choice!r}", "tool_choice")
    if out is not None and parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _openai_messages(
    messages: Sequence[Any],
) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    system: list[tuple[str, bool]] = []  # (text, came as a plain string)
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise TranslationError("a message must be an object", param)
        role = msg.get("role")
        if role in _OPENAI_SYSTEM_ROLES:
            texts = text_of_parts(msg.get("content"), f"{param}.content")
            system.extend((t, isinstance(msg.get("content"), str)) for t in texts)
        elif role == "user":
            _append(out, "user", _openai_user_blocks(msg.get("content"), f"{param}.content"))
        elif role == "tool":
            _append(out, "user", [_openai_tool_result(msg, param)])
        elif role == "assistant":
            blocks = _openai_assistant_blocks(msg, param)
            if blocks:  # an empty turn says nothing, and Anthropic refuses empty content
                _append(out, "assistant", blocks, merge=False)
        else:
            raise TranslationError(f"unsupported message role {role!r}", f"{param}.role")
    return _system_value(system), out


def _system_value(system: list[tuple[str, bool]]) -> str | list[dict[str, Any]] | None:
    if not system:
        return None
    if len(system) == 1 and system[0][1]:
        return system[0][0]
    return [{"type": "text", "text": text} for text, _ in system]


def _append(
    out: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]], merge: bool = True
) -> None:
    """Append a message; a user turn following a user turn (tool results then
    the user's own words) merges into one Anthropic message."""
    if merge and out and out[-1]["role"] == role and isinstance(out[-1]["content"], list):
        out[-1]["content"].extend(blocks)
    else:
        out.append({"role": role, "content": blocks})


def _openai_user_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    parts = _expect_list(content, param)
    return [user_part_to_block(p, f"{param}[{j}]") for j, p in enumerate(parts)]


def _openai_tool_result(msg: Mapping[str, Any], param: str) -> dict[str, Any]:
    if not msg.get("tool_call_id"):
        raise TranslationError("a tool message needs a tool_call_id", f"{param}.tool_call_id")
    content = msg.get("content")
    result: Any
    if isinstance(content, str) or content is None:
        result = content or ""
    else:
        result = [{"type": "text", "text": t} for t in text_of_parts(content, f"{param}.content")]
    return {"type": "tool_result", "tool_use_id": msg["tool_call_id"], "content": result}


def _openai_assistant_blocks(msg: Mapping[str, Any], param: str) -> list[dict[str, Any]]:
    blocks = thinking_blocks(msg, param)
    content = msg.get("content")
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    else:
        texts = text_of_parts(content, f"{param}.content")
        blocks.extend({"type": "text", "text": t} for t in texts)
    calls = msg.get("tool_calls") or []
    for j, call in enumerate(_expect_list(calls, f"{param}.tool_calls")):
        blocks.append(tool_call_to_tool_use(call, f"{param}.tool_calls[{j}]"))
    return blocks


# --------------------------------------------------------------- Anthropic → OpenAI


def anthropic_to_openai_chat(
    body: Mapping[str, Any],
    *,
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_completion_tokens",
) -> dict[str, Any]:
    """An Anthropic ``/v1/messages`` body as an OpenAI ``/v1/chat/completions`` body.

    A streaming request always asks for usage (``stream_options.include_usage``)
    because Anthropic streams always report it.
    """
    out: dict[str, Any] = {"model": body.get("model", "")}
    messages = list(_anthropic_system(body.get("system")))
    for i, msg in enumerate(_expect_list(body.get("messages"), "messages")):
        messages.extend(_anthropic_message(msg, f"messages[{i}]"))
    out["messages"] = messages
    if body.get("max_tokens") is not None:
        out[max_tokens_field] = body["max_tokens"]
    _copy_common(body, out, ("temperature", "top_p", "stream"))
    if body.get("stream"):
        out["stream_options"] = {"include_usage": True}
    if body.get("stop_sequences") is not None:
        out["stop"] = list(_expect_list(body["stop_sequences"], "stop_sequences"))
    if body.get("tools") is not None:
        tools = _expect_list(body["tools"], "tools")
        out["tools"] = [_anthropic_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]
    _anthropic_tool_choice(body.get("tool_choice"), out)
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str):
        out["user"] = user
    return out


def _anthropic_system(system: Any) -> Iterator[dict[str, Any]]:
    if system is None:
        return
    if isinstance(system, str):
        yield {"role": "system", "content": system}
        return
    texts = text_of_parts(system, "system")
    yield {"role": "system", "content": [{"type": "text", "text": t} for t in texts]}


def _anthropic_tool(tool: Any, param: str) -> dict[str, Any]:
    if not isinstance(tool, Mapping) or tool.get("type", "custom") != "custom":
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        raise TranslationError(
            f"server tool {kind!r} is not supported by this model", f"{param}.type"
        )
    function: dict[str, Any] = {"name": tool.get("name", "")}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    function["parameters"] = copy.deepcopy(tool.get("input_schema") or {})
    return {"type": "function", "function": function}


def _anthropic_tool_choice(choice: Any, out: dict[str, Any]) -> None:
    """OpenAI rejects ``tool_choice`` and ``parallel_tool_calls`` without
    ``tools``: without tools they are checked, then dropped."""
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    openai_choice: Any
    if kind in _OPENAI_TOOL_CHOICE:
        openai_choice = _OPENAI_TOOL_CHOICE[kind]
    elif kind == "tool":
        openai_choice = {"type": "function", "function": {"name": choice.get("name", "")}}
    else:
        raise TranslationError(f"unsupported tool_choice type {kind!r}", "tool_choice.type")
    if "tools" not in out:
        return
    out["tool_choice"] = openai_choice
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


def _anthropic_message(msg: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(msg, Mapping):
        raise TranslationError("a message must be an object", param)
    role, content = msg.get("role"), msg.get("content")
    if role not in ("user", "assistant"):
        raise TranslationError(f"unsupported message role {role!r}", f"{param}.role")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = _expect_list(content, f"{param}.content")
    if role == "assistant":
        return [_anthropic_assistant(blocks, f"{param}.content")]
    return _anthropic_user(blocks, f"{param}.content")


def _anthropic_user(blocks: Sequence[Any], param: str) -> list[dict[str, Any]]:
    """Tool results become ``tool`` messages, ahead of the user's own words."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        if isinstance(block, Mapping) and block.get("type") == "tool_result":
            tools.append(_anthropic_tool_result(block, f"{param}[{j}]"))
        else:
            parts.append(user_block_to_part(block, f"{param}[{j}]"))
    return tools + ([{"role": "user", "content": parts}] if parts else [])


def _anthropic_tool_result(block: Mapping[str, Any], param: str) -> dict[str, Any]:
    content = block.get("content")
    result: Any
    if isinstance(content, str) or content is None:
        result = content or ""
    else:
        result = [{"type": "text", "text": t} for t in text_of_parts(content, f"{param}.content")]
    return {"role": "tool", "tool_call_id": block.get("tool_use_id", ""), "content": result}


def _anthropic_assistant(blocks: Sequence[Any], param: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking: list[Mapping[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append(tool_use_to_tool_call(block))
        elif kind in THINKING_TYPES:
            thinking.append(block)
        else:
            raise TranslationError(
                f"unsupported assistant content block {kind!r}", f"{param}[{j}].type"
            )
    content: Any = (
        texts[0] if len(texts) == 1 else [{"type": "text", "text": t} for t in texts] or None
    )
    out: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        out["tool_calls"] = calls
    carry_thinking(out, thinking)
    return out


def strip_modelpool_extensions(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an OpenAI request without the modelpool thinking keys, for
    upstreams that reject unknown message fields."""
    out = dict(body)
    out["messages"] = [
        {k: v for k, v in m.items() if k not in (THINKING_KEY, "reasoning_content")}
        if isinstance(m, Mapping)
        else m
        for m in body.get("messages") or []
    ]
    return out
