"""The public request shapes of the OpenAI and Anthropic HTTP APIs, checked like the real servers.

The fake upstream runs these checks on every request it is sent, so a test
fails when modelpool forwards a body a real upstream would refuse with a 400:
an OpenAI-only field sent to Anthropic, a modelpool extension key leaking into
an OpenAI message, a ``tool_result`` that answers no ``tool_use``, and so on.

Every public ``check_*`` function is pure: it returns the first problem as one
line, ``"<where>: <what>"`` (``where`` is a JSON path such as
``messages[1].content[0].id``, or ``body`` for the whole request), or None
when the body is acceptable. The rules follow the public API references and
the errors the real servers give; they are not a full schema (unknown keys
inside tools, for instance, are let through).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal, NoReturn

Api = Literal["openai", "anthropic"]

# ----------------------------------------------------------------------------- shared


class ShapeError(Exception):
    """The first problem found; its text is ``"<where>: <what>"``."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}")
        self.where = where
        self.what = what


def _fail(where: str, what: str) -> NoReturn:
    raise ShapeError(where, what)


def _run(check: Callable[[Any], None], body: Any) -> str | None:
    try:
        check(body)
    except ShapeError as exc:
        return str(exc)
    return None


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(where, f"must be an object, not {_kind(value)}")
    return value


def _list(value: Any, where: str, *, non_empty: bool = False) -> list[Any]:
    if not isinstance(value, list):
        _fail(where, f"must be a list, not {_kind(value)}")
    if non_empty and not value:
        _fail(where, "must not be empty")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        _fail(where, f"must be a string, not {_kind(value)}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        _fail(where, f"must be a boolean, not {_kind(value)}")
    return value


def _int(value: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(where, f"must be an integer, not {_kind(value)}")
    if minimum is not None and value < minimum:
        _fail(where, f"must be at least {minimum}, not {value}")
    return value


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(where, f"must be a number, not {_kind(value)}")
    if not low <= value <= high:
        _fail(where, f"must be between {low:g} and {high:g}, not {value}")
    return float(value)


def _one_of(value: Any, where: str, allowed: Collection[str]) -> str:
    if value not in allowed:
        _fail(where, f"must be one of {', '.join(sorted(allowed))}, not {value!r}")
    return str(value)


def _pattern(value: Any, where: str, pattern: re.Pattern[str]) -> str:
    if not pattern.fullmatch(_str(value, where)):
        _fail(where, f"must match {pattern.pattern}, not {value!r}")
    return str(value)


def _required(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        _fail(_at(where, key), "field required")
    return obj[key]


def _known_keys(obj: Mapping[str, Any], allowed: Collection[str], where: str, hint: str) -> None:
    for key in obj:
        if key not in allowed:
            _fail(_at(where, key), hint)


def _at(where: str, key: str) -> str:
    return key if where in ("", "body") else f"{where}.{key}"


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _str_list(value: Any, where: str) -> list[str]:
    items = _list(value, where)
    for i, item in enumerate(items):
        _str(item, f"{where}[{i}]")
    return items


Check = Callable[[Any, str], object]


def _check_present(body: Mapping[str, Any], checks: Mapping[str, Check], *, nulls: bool) -> None:
    """Run each key's check when the key is in ``body`` (and, with ``nulls``, not null)."""
    for key, check in checks.items():
        if key in body and not (nulls and body[key] is None):
            check(body[key], key)


# ----------------------------------------------------------------------------- routing


def api_of(path: str) -> Api | None:
    """Which API a request path belongs to; None for paths no check applies to."""
    if path.endswith("/messages"):
        return "anthropic"
    if path.endswith(("/chat/completions", "/completions", "/embeddings")):
        return "openai"
    return None


def check_request(path: str, body: Any) -> str | None:
    """The first problem of ``body`` sent to ``path``; None when fine or the path is unchecked."""
    if path.endswith("/messages"):
        return check_anthropic_messages(body)
    if path.endswith("/chat/completions"):
        return check_openai_chat(body)
    if path.endswith("/completions"):
        return check_openai_completions(body)
    if path.endswith("/embeddings"):
        return check_openai_embeddings(body)
    return None


# ----------------------------------------------------------------------------- Anthropic

ANTHROPIC_KEYS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
        "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
        "container", "mcp_servers",
        # Newer documented fields (MessageCreateParams of the anthropic SDK 2.x).
        "cache_control", "output_config", "inference_geo", "speed", "context_management",
    }
)  # fmt: skip
"""Every top-level field of ``POST /v1/messages``; the API refuses any other."""

OPENAI_ONLY_KEYS = frozenset(
    {
        "n", "stop", "stream_options", "max_completion_tokens", "response_format", "user",
        "frequency_penalty", "presence_penalty", "logprobs", "top_logprobs", "logit_bias", "seed",
        "parallel_tool_calls", "functions", "function_call", "modalities", "audio", "store",
        "reasoning_effort", "prediction", "web_search_options",
    }
)  # fmt: skip

_EXTRA = "Extra inputs are not permitted"
_ROLE_ONLY = {
    "tool_use": "assistant",
    "tool_result": "user",
    "thinking": "assistant",
    "redacted_thinking": "assistant",
    "server_tool_use": "assistant",
}
_BLOCK_KEYS: dict[str, frozenset[str]] = {
    "text": frozenset({"type", "text", "cache_control", "citations"}),
    "image": frozenset({"type", "source", "cache_control"}),
    "document": frozenset({"type", "source", "cache_control", "citations", "context", "title"}),
    "tool_use": frozenset({"type", "id", "name", "input", "cache_control"}),
    "server_tool_use": frozenset({"type", "id", "name", "input", "cache_control"}),
    "tool_result": frozenset({"type", "tool_use_id", "content", "is_error", "cache_control"}),
    "thinking": frozenset({"type", "thinking", "signature"}),
    "redacted_thinking": frozenset({"type", "data"}),
}
_TOOL_RESULT_TYPES = frozenset({"text", "image", "document", "search_result"})
_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DOCUMENT_SOURCES = frozenset({"base64", "text", "content", "url", "file"})
_TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")
_ANTHROPIC_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")
_SERVER_TOOL_TYPE = re.compile(r"[a-z_]+_\d{8}")
_TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})
_THINKING_TYPES = frozenset({"enabled", "disabled", "adaptive"})


def check_anthropic_messages(body: Any) -> str | None:
    """The first problem of a ``POST /v1/messages`` body, or None."""
    return _run(_anthropic_body, body)


def _anthropic_body(value: Any) -> None:
    body = _obj(value, "body")
    for key in body:
        if key not in ANTHROPIC_KEYS:
            hint = " (an OpenAI-only field)" if key in OPENAI_ONLY_KEYS else ""
            _fail(key, _EXTRA + hint)
    _str(_required(body, "model", "body"), "model")
    _int(_required(body, "max_tokens", "body"), "max_tokens", minimum=1)
    _anthropic_turns(_list(_required(body, "messages", "body"), "messages", non_empty=True))
    checks: dict[str, Check] = {
        "system": _anthropic_system,
        "metadata": _anthropic_metadata,
        "stop_sequences": _str_list,
        "stream": _bool,
        "temperature": lambda v, w: _number(v, w, 0.0, 1.0),
        "top_p": lambda v, w: _number(v, w, 0.0, 1.0),
        "top_k": lambda v, w: _int(v, w, minimum=0),
        "tools": _anthropic_tools,
        "thinking": lambda v, w: _anthropic_thinking(v, w, body["max_tokens"]),
        "service_tier": lambda v, w: _one_of(v, w, ("auto", "standard_only")),
    }
    _check_present(body, checks, nulls=False)
    if "tool_choice" in body:
        _anthropic_tool_choice(body["tool_choice"], body.get("tools"))


def _anthropic_turns(messages: list[Any]) -> None:
    """Each message, and the pairing of ``tool_use`` blocks with the next turn's results."""
    open_calls: list[str] = []  # tool_use ids of the previous (assistant) message
    for i, value in enumerate(messages):
        blocks = _anthropic_message(value, i, last=i == len(messages) - 1)
        answered = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        for tool_use_id in answered:
            if tool_use_id not in open_calls:
                _fail(
                    f"messages[{i}].content",
                    f"unexpected tool_use_id found in tool_result blocks: {tool_use_id}. Each"
                    " tool_result block must have a corresponding tool_use block in the"
                    " previous message",
                )
        unanswered = [c for c in open_calls if c not in answered]
        if unanswered:
            _fail(
                f"messages[{i - 1}]",
                "tool_use ids were found without tool_result blocks immediately after:"
                f" {', '.join(unanswered)}",
            )
        open_calls = [b["id"] for b in blocks if b["type"] == "tool_use"]


def _anthropic_message(value: Any, i: int, last: bool) -> list[Mapping[str, Any]]:
    """Checks message ``i``; returns its content blocks (none for string content)."""
    where = f"messages[{i}]"
    message = _obj(value, where)
    _known_keys(message, ("role", "content"), where, _EXTRA)
    role = _one_of(_required(message, "role", where), f"{where}.role", ("user", "assistant"))
    if i == 0 and role != "user":
        _fail(f"{where}.role", "the first message must use the 'user' role")
    content = _required(message, "content", where)
    return _anthropic_content(content, role, where, last and role == "assistant")


def _anthropic_content(
    content: Any, role: str, where: str, last_assistant: bool
) -> list[Mapping[str, Any]]:
    """The message's blocks (none for string content), each checked."""
    empty = "all messages must have non-empty content except for the optional final assistant"
    if isinstance(content, str):
        if not content and not last_assistant:
            _fail(f"{where}.content", empty + " message")
        return []
    blocks = _list(content, f"{where}.content")
    if not blocks and not last_assistant:
        _fail(f"{where}.content", empty + " message")
    for j, block in enumerate(blocks):
        _anthropic_block(block, role, f"{where}.content[{j}]")
    return blocks


def _anthropic_block(value: Any, role: str, where: str) -> None:
    block = _obj(value, where)
    kind = _required(block, "type", where)
    check = _BLOCK_CHECKS.get(kind) if isinstance(kind, str) else None
    if check is None:
        _fail(f"{where}.type", f"unknown content block type {kind!r}")
    if _ROLE_ONLY.get(kind, role) != role:
        _fail(f"{where}.type", f"{kind} blocks are only allowed in {_ROLE_ONLY[kind]} messages")
    _known_keys(block, _BLOCK_KEYS[kind], where, _EXTRA)
    check(block, where)


def _text_block(block: Mapping[str, Any], where: str) -> None:
    if not _str(_required(block, "text", where), f"{where}.text"):
        _fail(f"{where}.text", "text content blocks must be non-empty")


def _image_block(block: Mapping[str, Any], where: str) -> None:
    source = _obj(_required(block, "source", where), f"{where}.source")
    where = f"{where}.source"
    kind = _one_of(_required(source, "type", where), f"{where}.type", ("base64", "url", "file"))
    if kind == "base64":
        _known_keys(source, ("type", "media_type", "data"), where, _EXTRA)
        media = _required(source, "media_type", where)
        _one_of(media, f"{where}.media_type", _IMAGE_MEDIA_TYPES)
        _str(_required(source, "data", where), f"{where}.data")
    elif kind == "url":
        _known_keys(source, ("type", "url"), where, _EXTRA)
        _str(_required(source, "url", where), f"{where}.url")
    else:
        _str(_required(source, "file_id", where), f"{where}.file_id")


def _document_block(block: Mapping[str, Any], where: str) -> None:
    source = _obj(_required(block, "source", where), f"{where}.source")
    where = f"{where}.source"
    _one_of(_required(source, "type", where), f"{where}.type", _DOCUMENT_SOURCES)


def _tool_use_block(block: Mapping[str, Any], where: str) -> None:
    _pattern(_required(block, "id", where), f"{where}.id", _TOOL_ID)
    _str(_required(block, "name", where), f"{where}.name")
    _obj(_required(block, "input", where), f"{where}.input")


def _tool_result_block(block: Mapping[str, Any], where: str) -> None:
    _pattern(_required(block, "tool_use_id", where), f"{where}.tool_use_id", _TOOL_ID)
    if "is_error" in block:
        _bool(block["is_error"], f"{where}.is_error")
    content = block.get("content", "")
    if isinstance(content, str):
        return
    for k, value in enumerate(_list(content, f"{where}.content")):
        item = f"{where}.content[{k}]"
        part = _obj(value, item)
        kind = _one_of(_required(part, "type", item), f"{item}.type", _TOOL_RESULT_TYPES)
        if kind in _BLOCK_CHECKS:
            _known_keys(part, _BLOCK_KEYS[kind], item, _EXTRA)
            _BLOCK_CHECKS[kind](part, item)


def _thinking_block(block: Mapping[str, Any], where: str) -> None:
    _str(_required(block, "thinking", where), f"{where}.thinking")
    _str(_required(block, "signature", where), f"{where}.signature")


def _redacted_thinking_block(block: Mapping[str, Any], where: str) -> None:
    _str(_required(block, "data", where), f"{where}.data")


_BLOCK_CHECKS: dict[str, Callable[[Mapping[str, Any], str], None]] = {
    "text": _text_block,
    "image": _image_block,
    "document": _document_block,
    "tool_use": _tool_use_block,
    "server_tool_use": _tool_use_block,
    "tool_result": _tool_result_block,
    "thinking": _thinking_block,
    "redacted_thinking": _redacted_thinking_block,
}


def _anthropic_system(value: Any, where: str) -> None:
    if isinstance(value, str):
        return
    for i, item in enumerate(_list(value, where)):
        block = _obj(item, f"{where}[{i}]")
        _one_of(_required(block, "type", f"{where}[{i}]"), f"{where}[{i}].type", ("text",))
        _known_keys(block, _BLOCK_KEYS["text"], f"{where}[{i}]", _EXTRA)
        _text_block(block, f"{where}[{i}]")


def _anthropic_metadata(value: Any, where: str) -> None:
    metadata = _obj(value, where)
    _known_keys(metadata, ("user_id",), where, _EXTRA)
    if metadata.get("user_id") is not None:
        _str(metadata["user_id"], f"{where}.user_id")


def _anthropic_tools(value: Any, where: str) -> None:
    names: set[str] = set()
    for i, item in enumerate(_list(value, where)):
        at = f"{where}[{i}]"
        tool = _obj(item, at)
        kind = tool.get("type", "custom")
        if kind != "custom" and not (isinstance(kind, str) and _SERVER_TOOL_TYPE.fullmatch(kind)):
            _fail(f"{at}.type", f"unknown tool type {kind!r}")
        name = _pattern(_required(tool, "name", at), f"{at}.name", _ANTHROPIC_TOOL_NAME)
        if kind == "custom":
            schema = _obj(_required(tool, "input_schema", at), f"{at}.input_schema")
            if schema.get("type") != "object":
                _fail(f"{at}.input_schema.type", "must be 'object'")
        if name in names:
            _fail(where, f"tool names must be unique: {name!r} appears twice")
        names.add(name)


def _anthropic_tool_choice(value: Any, tools: Any) -> None:
    choice = _obj(value, "tool_choice")
    _known_keys(choice, ("type", "name", "disable_parallel_tool_use"), "tool_choice", _EXTRA)
    kind = _one_of(_required(choice, "type", "tool_choice"), "tool_choice.type", _TOOL_CHOICES)
    if "disable_parallel_tool_use" in choice:
        _bool(choice["disable_parallel_tool_use"], "tool_choice.disable_parallel_tool_use")
    if kind in ("any", "tool") and not tools:
        _fail("tool_choice", f"tool_choice {kind!r} may only be specified while providing tools")
    if kind == "tool":
        name = _str(_required(choice, "name", "tool_choice"), "tool_choice.name")
        if name not in [t.get("name") for t in tools if isinstance(t, Mapping)]:
            _fail("tool_choice.name", f"tool {name!r} is not among the provided tools")


def _anthropic_thinking(value: Any, where: str, max_tokens: int) -> None:
    thinking = _obj(value, where)
    kind = _one_of(_required(thinking, "type", where), f"{where}.type", _THINKING_TYPES)
    if kind == "enabled":
        budget = _int(_required(thinking, "budget_tokens", where), f"{where}.budget_tokens", 1024)
        if budget >= max_tokens:
            _fail("max_tokens", f"must be greater than thinking.budget_tokens ({budget})")


# ----------------------------------------------------------------------------- OpenAI

ANTHROPIC_ONLY_KEYS = frozenset({"system", "stop_sequences", "top_k"})
"""Top-level Anthropic fields that are not part of OpenAI's API."""

OPENAI_MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "tool_calls", "tool_call_id", "refusal", "audio", "function_call"}
)
"""Every documented field of a chat message; strict servers refuse any other."""

_OPENAI_ROLES = ("system", "developer", "user", "assistant", "tool")
_USER_PARTS = frozenset({"text", "image_url", "input_audio", "file"})
_OPENAI_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_OPENAI_TOOL_CHOICES = ("none", "auto", "required")
_UNRECOGNIZED = "unrecognized request argument (an Anthropic-only field)"


def check_openai_chat(body: Any) -> str | None:
    """The first problem of a ``POST /v1/chat/completions`` body, or None."""
    return _run(_openai_chat, body)


def check_openai_completions(body: Any) -> str | None:
    """The first problem of a ``POST /v1/completions`` body, or None."""
    return _run(_openai_completions, body)


def check_openai_embeddings(body: Any) -> str | None:
    """The first problem of a ``POST /v1/embeddings`` body, or None."""
    return _run(_openai_embeddings, body)


def _openai_common(value: Any) -> Mapping[str, Any]:
    body = _obj(value, "body")
    for key in body:
        if key in ANTHROPIC_ONLY_KEYS:
            _fail(key, _UNRECOGNIZED)
    _str(_required(body, "model", "body"), "model")
    return body


def _openai_chat(value: Any) -> None:
    body = _openai_common(value)
    _openai_messages(_list(_required(body, "messages", "body"), "messages", non_empty=True))
    checks: dict[str, Check] = {
        "stream": _bool,
        "max_tokens": lambda v, w: _int(v, w, minimum=1),
        "max_completion_tokens": lambda v, w: _int(v, w, minimum=1),
        "n": lambda v, w: _int(v, w, minimum=1),
        "temperature": lambda v, w: _number(v, w, 0.0, 2.0),
        "top_p": lambda v, w: _number(v, w, 0.0, 1.0),
        "presence_penalty": lambda v, w: _number(v, w, -2.0, 2.0),
        "frequency_penalty": lambda v, w: _number(v, w, -2.0, 2.0),
        "stop": _openai_stop,
        "tools": _openai_tools,
        "parallel_tool_calls": _bool,
        "response_format": _openai_response_format,
    }
    _check_present(body, checks, nulls=True)
    _openai_stream_options(body)
    if body.get("tool_choice") is not None:
        _openai_tool_choice(body["tool_choice"], body.get("tools"))
    if body.get("parallel_tool_calls") is not None and not body.get("tools"):
        _fail("parallel_tool_calls", "only allowed when 'tools' are specified")


def _openai_stream_options(body: Mapping[str, Any]) -> None:
    if body.get("stream_options") is None:
        return
    if body.get("stream") is not True:
        _fail("stream_options", "only allowed when 'stream' is enabled")
    options = _obj(body["stream_options"], "stream_options")
    if "include_usage" in options:
        _bool(options["include_usage"], "stream_options.include_usage")


def _openai_messages(messages: list[Any]) -> None:
    """Each message, and the pairing of assistant tool calls with the tool messages after them.

    Tool messages must directly follow the assistant message whose calls they
    answer, and every call must be answered before the conversation goes on.
    """
    calls: list[str] = []  # the tool call ids of the assistant message before these tool ones
    open_calls: list[str] = []  # those of them not answered yet
    for i, value in enumerate(messages):
        where = f"messages[{i}]"
        message = _obj(value, where)
        _known_keys(message, OPENAI_MESSAGE_KEYS, where, _EXTRA)
        role = _one_of(_required(message, "role", where), f"{where}.role", _OPENAI_ROLES)
        if message.get("name") is not None:
            _str(message["name"], f"{where}.name")
        if role == "tool":
            call_id = _openai_tool_message(message, where)
            if call_id not in calls:
                _fail(
                    f"{where}.tool_call_id",
                    f"{call_id!r} answers no tool call of the preceding assistant message",
                )
            open_calls = [c for c in open_calls if c != call_id]
            continue
        if open_calls:
            _fail(
                where,
                "an assistant message with 'tool_calls' must be followed by tool messages"
                f" responding to each 'tool_call_id'; missing: {', '.join(open_calls)}",
            )
        calls = open_calls = _OPENAI_ROLE_CHECKS[role](message, where)


def _openai_text_parts(value: Any, where: str, kinds: Collection[str] = ("text",)) -> None:
    """String content, or a list of parts of the given kinds."""
    if isinstance(value, str):
        return
    for j, item in enumerate(_list(value, where, non_empty=True)):
        part = _obj(item, f"{where}[{j}]")
        kind = _one_of(_required(part, "type", f"{where}[{j}]"), f"{where}[{j}].type", kinds)
        _PART_CHECKS[kind](part, f"{where}[{j}]")


def _openai_system(message: Mapping[str, Any], where: str) -> list[str]:
    _openai_text_parts(_required(message, "content", where), f"{where}.content")
    return []


def _openai_user(message: Mapping[str, Any], where: str) -> list[str]:
    _openai_text_parts(_required(message, "content", where), f"{where}.content", _USER_PARTS)
    return []


def _openai_assistant(message: Mapping[str, Any], where: str) -> list[str]:
    """Checks the message; returns the ids of its tool calls."""
    calls = message.get("tool_calls")
    content = message.get("content")
    if content is None and calls is None and message.get("function_call") is None:
        _fail(f"{where}.content", "required unless 'tool_calls' or 'function_call' is specified")
    if content is not None:
        _openai_text_parts(content, f"{where}.content", ("text", "refusal"))
    if calls is None:
        return []
    ids = []
    for k, call in enumerate(_list(calls, f"{where}.tool_calls", non_empty=True)):
        ids.append(_openai_tool_call(call, f"{where}.tool_calls[{k}]"))
    return ids


def _openai_tool_call(value: Any, where: str) -> str:
    call = _obj(value, where)
    _known_keys(call, ("id", "type", "function"), where, _EXTRA)
    call_id = _str(_required(call, "id", where), f"{where}.id")
    _one_of(_required(call, "type", where), f"{where}.type", ("function",))
    function = _obj(_required(call, "function", where), f"{where}.function")
    _known_keys(function, ("name", "arguments"), f"{where}.function", _EXTRA)
    _str(_required(function, "name", f"{where}.function"), f"{where}.function.name")
    _str(_required(function, "arguments", f"{where}.function"), f"{where}.function.arguments")
    return call_id


def _openai_tool_message(message: Mapping[str, Any], where: str) -> str:
    _openai_text_parts(_required(message, "content", where), f"{where}.content")
    return _str(_required(message, "tool_call_id", where), f"{where}.tool_call_id")


_OPENAI_ROLE_CHECKS: dict[str, Callable[[Mapping[str, Any], str], list[str]]] = {
    "system": _openai_system,
    "developer": _openai_system,
    "user": _openai_user,
    "assistant": _openai_assistant,
}


def _text_part(part: Mapping[str, Any], where: str) -> None:
    _str(_required(part, "text", where), f"{where}.text")


def _refusal_part(part: Mapping[str, Any], where: str) -> None:
    _str(_required(part, "refusal", where), f"{where}.refusal")


def _image_url_part(part: Mapping[str, Any], where: str) -> None:
    image = _obj(_required(part, "image_url", where), f"{where}.image_url")
    _str(_required(image, "url", f"{where}.image_url"), f"{where}.image_url.url")
    if "detail" in image:
        _one_of(image["detail"], f"{where}.image_url.detail", ("auto", "low", "high"))


def _input_audio_part(part: Mapping[str, Any], where: str) -> None:
    audio = _obj(_required(part, "input_audio", where), f"{where}.input_audio")
    _str(_required(audio, "data", f"{where}.input_audio"), f"{where}.input_audio.data")
    _str(_required(audio, "format", f"{where}.input_audio"), f"{where}.input_audio.format")


def _file_part(part: Mapping[str, Any], where: str) -> None:
    _obj(_required(part, "file", where), f"{where}.file")


_PART_CHECKS: dict[str, Callable[[Mapping[str, Any], str], None]] = {
    "text": _text_part,
    "refusal": _refusal_part,
    "image_url": _image_url_part,
    "input_audio": _input_audio_part,
    "file": _file_part,
}


def _openai_stop(value: Any, where: str) -> None:
    if isinstance(value, str):
        return
    if len(_str_list(value, where)) > 4:
        _fail(where, "at most 4 stop sequences are allowed")


def _openai_tools(value: Any, where: str) -> None:
    for i, item in enumerate(_list(value, where)):
        at = f"{where}[{i}]"
        tool = _obj(item, at)
        _one_of(_required(tool, "type", at), f"{at}.type", ("function",))
        function = _obj(_required(tool, "function", at), f"{at}.function")
        name = _required(function, "name", f"{at}.function")
        _pattern(name, f"{at}.function.name", _OPENAI_TOOL_NAME)
        if function.get("parameters") is not None:
            _obj(function["parameters"], f"{at}.function.parameters")


def _openai_tool_choice(value: Any, tools: Any) -> None:
    if not tools:
        _fail("tool_choice", "only allowed when 'tools' are specified")
    if isinstance(value, str):
        _one_of(value, "tool_choice", _OPENAI_TOOL_CHOICES)
        return
    choice = _obj(value, "tool_choice")
    _one_of(_required(choice, "type", "tool_choice"), "tool_choice.type", ("function",))
    function = _obj(_required(choice, "function", "tool_choice"), "tool_choice.function")
    _str(_required(function, "name", "tool_choice.function"), "tool_choice.function.name")


def _openai_response_format(value: Any, where: str) -> None:
    kinds = ("text", "json_object", "json_schema")
    _one_of(_required(_obj(value, where), "type", where), f"{where}.type", kinds)


def _openai_completions(value: Any) -> None:
    body = _openai_common(value)
    prompt = _required(body, "prompt", "body")
    if not isinstance(prompt, str | list):
        _fail("prompt", f"must be a string or a list, not {_kind(prompt)}")
    _check_present(body, {"stream": _bool}, nulls=True)
    if body.get("max_tokens") is not None:
        _int(body["max_tokens"], "max_tokens", minimum=0)
    _openai_stream_options(body)


def _openai_embeddings(value: Any) -> None:
    body = _openai_common(value)
    inputs = _required(body, "input", "body")
    if not isinstance(inputs, str | list):
        _fail("input", f"must be a string or a list, not {_kind(inputs)}")
    if not inputs:
        _fail("input", "must not be empty")
