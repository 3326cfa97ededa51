"""The request-shape checks the fake upstream applies (tests/integration/api_shapes.py).

Valid requests of each kind pass; each rule has a failing example and the
problem it must report, ``"<where>: <what>"``.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from api_shapes import (
    ANTHROPIC_ONLY_KEYS,
    api_of,
    check_anthropic_messages,
    check_openai_chat,
    check_openai_completions,
    check_openai_embeddings,
    check_request,
)

Edit = Callable[[Any], object]


def _walk(body: Any, path: str) -> tuple[Any, Any]:
    """The container holding ``path`` ("messages.1.content.0.id") and the last key."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    for key in parents:
        body = body[key]
    return body, last


def put(path: str, value: Any) -> Edit:
    """Set the value at ``path`` (a key, or a list index up to the list's length)."""

    def edit(body: Any) -> None:
        container, key = _walk(body, path)
        if isinstance(container, list) and key == len(container):
            container.append(value)
        else:
            container[key] = value

    return edit


def drop(path: str) -> Edit:
    """Remove the key (or list item) at ``path``."""

    def edit(body: Any) -> None:
        container, key = _walk(body, path)
        del container[key]

    return edit


def edited(base: dict[str, Any], *edits: Edit) -> dict[str, Any]:
    body = copy.deepcopy(base)
    for edit in edits:
        edit(body)
    return body


def assert_problem(problem: str | None, expected: str) -> None:
    assert problem is not None, f"accepted, expected {expected!r}"
    assert expected in problem, problem


# ============================================================================ Anthropic

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}

ANTHROPIC = {
    "model": "claude-test",
    "max_tokens": 64,
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Paris? See the picture."},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "A tool call.", "signature": "c2lnbmF0dXJl"},
                {"type": "redacted_thinking", "data": "ZW5jcnlwdGVk"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather",
                 "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_01B", "name": "get_weather",
                 "input": {"city": "Lyon"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_01B", "is_error": True,
                 "content": [{"type": "text", "text": "no data"}]},
                {"type": "text", "text": "Thanks."},
            ],
        },
        {"role": "assistant", "content": "Paris is sunny."},
        {"role": "user", "content": "And tomorrow?"},
    ],
    "metadata": {"user_id": "user-1"},
    "stop_sequences": ["END"],
    "stream": True,
    "temperature": 0.5,
    "top_p": 0.9,
    "top_k": 40,
    "tools": [WEATHER_TOOL, {"type": "web_search_20250305", "name": "web_search"}],
    "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    "service_tier": "auto",
}  # fmt: skip

ANTHROPIC_MINIMAL = {
    "model": "claude-test",
    "max_tokens": 1,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(ANTHROPIC, id="full"),
        pytest.param(ANTHROPIC_MINIMAL, id="minimal"),
        pytest.param(
            edited(ANTHROPIC_MINIMAL, put("messages.1", {"role": "assistant", "content": ""})),
            id="empty-final-assistant-prefill",
        ),
        pytest.param(
            edited(
                ANTHROPIC_MINIMAL,
                put("max_tokens", 4096),
                put("thinking", {"type": "enabled", "budget_tokens": 1024}),
            ),
            id="thinking",
        ),
        pytest.param(edited(ANTHROPIC_MINIMAL, put("system", "Be brief.")), id="string-system"),
        pytest.param(
            edited(
                ANTHROPIC_MINIMAL, put("tools", [WEATHER_TOOL]), put("tool_choice", {"type": "any"})
            ),
            id="tool-choice-any",
        ),
        pytest.param(
            edited(
                ANTHROPIC_MINIMAL,
                put(
                    "messages.0.content",
                    [
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "x"},
                        },
                        {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
                    ],
                ),
            ),
            id="document-and-file-image",
        ),
    ],
)
def test_valid_anthropic_requests_pass(body: dict[str, Any]) -> None:
    assert check_anthropic_messages(body) is None


ANTHROPIC_PROBLEMS = [
    # the body and its top-level fields
    ("empty-object", lambda b: b.clear(), "model: field required"),
    ("no-model", drop("model"), "model: field required"),
    ("model-not-string", put("model", 3), "model: must be a string, not int"),
    ("no-max-tokens", drop("max_tokens"), "max_tokens: field required"),
    ("max-tokens-zero", put("max_tokens", 0), "max_tokens: must be at least 1, not 0"),
    ("max-tokens-string", put("max_tokens", "64"), "max_tokens: must be an integer, not str"),
    ("max-tokens-bool", put("max_tokens", True), "max_tokens: must be an integer, not bool"),
    ("no-messages", drop("messages"), "messages: field required"),
    ("messages-empty", put("messages", []), "messages: must not be empty"),
    ("messages-object", put("messages", {}), "messages: must be a list, not dict"),
    ("unknown-key", put("frobnicate", 1), "frobnicate: Extra inputs are not permitted"),
    ("system-number", put("system", 1), "system: must be a list, not int"),
    ("system-null", put("system", None), "system: must be a list, not null"),
    ("system-image", put("system.0.type", "image"), "system[0].type: must be one of text"),
    ("system-empty-text", put("system.0.text", ""), "system[0].text: text content blocks must"),
    ("metadata-extra", put("metadata.tags", ["a"]), "metadata.tags: Extra inputs"),
    ("metadata-user-number", put("metadata.user_id", 1), "metadata.user_id: must be a string"),
    ("stop-sequences-string", put("stop_sequences", "END"), "stop_sequences: must be a list"),
    ("stop-sequences-number", put("stop_sequences.0", 1), "stop_sequences[0]: must be a string"),
    ("stream-string", put("stream", "true"), "stream: must be a boolean, not str"),
    ("temperature-high", put("temperature", 1.5), "temperature: must be between 0 and 1"),
    ("temperature-string", put("temperature", "hot"), "temperature: must be a number, not str"),
    ("top-p-high", put("top_p", 2), "top_p: must be between 0 and 1, not 2"),
    ("top-k-negative", put("top_k", -1), "top_k: must be at least 0"),
    ("service-tier", put("service_tier", "priority"), "service_tier: must be one of"),
    # messages
    ("message-not-object", put("messages.0", "hi"), "messages[0]: must be an object, not str"),
    ("role-system", put("messages.0.role", "system"), "messages[0].role: must be one of assistant, user, not 'system'"),  # noqa: E501
    ("role-tool", put("messages.2.role", "tool"), "messages[2].role: must be one of"),
    ("first-assistant", drop("messages.0"), "messages[0].role: the first message must use the 'user' role"),  # noqa: E501
    ("no-content", drop("messages.4.content"), "messages[4].content: field required"),
    ("content-number", put("messages.4.content", 7), "messages[4].content: must be a list, not int"),  # noqa: E501
    ("content-empty-string", put("messages.4.content", ""), "messages[4].content: all messages must have non-empty content"),  # noqa: E501
    ("content-empty-list", put("messages.3.content", []), "messages[3].content: all messages must have non-empty content"),  # noqa: E501
    ("message-tool-calls", put("messages.3.tool_calls", []), "messages[3].tool_calls: Extra inputs are not permitted"),  # noqa: E501
    ("message-name", put("messages.0.name", "bob"), "messages[0].name: Extra inputs"),
    # blocks
    ("block-not-object", put("messages.0.content.0", "hi"), "messages[0].content[0]: must be an object"),  # noqa: E501
    ("block-no-type", drop("messages.0.content.0.type"), "messages[0].content[0].type: field required"),  # noqa: E501
    ("block-image-url", put("messages.0.content.1", {"type": "image_url", "image_url": {"url": "u"}}), "messages[0].content[1].type: unknown content block type 'image_url'"),  # noqa: E501
    ("block-extra-key", put("messages.0.content.0.extra", 1), "messages[0].content[0].extra: Extra inputs"),  # noqa: E501
    ("text-missing", drop("messages.0.content.0.text"), "messages[0].content[0].text: field required"),  # noqa: E501
    ("text-empty", put("messages.0.content.0.text", ""), "messages[0].content[0].text: text content blocks must be non-empty"),  # noqa: E501
    ("text-number", put("messages.0.content.0.text", 5), "messages[0].content[0].text: must be a string"),  # noqa: E501
    ("image-no-source", drop("messages.0.content.1.source"), "messages[0].content[1].source: field required"),  # noqa: E501
    ("image-source-type", put("messages.0.content.1.source.type", "path"), "messages[0].content[1].source.type: must be one of base64, file, url"),  # noqa: E501
    ("image-no-media-type", drop("messages.0.content.1.source.media_type"), "messages[0].content[1].source.media_type: field required"),  # noqa: E501
    ("image-media-type", put("messages.0.content.1.source.media_type", "image/bmp"), "messages[0].content[1].source.media_type: must be one of"),  # noqa: E501
    ("image-no-data", drop("messages.0.content.1.source.data"), "messages[0].content[1].source.data: field required"),  # noqa: E501
    ("document-source-type", put("messages.0.content.2", {"type": "document", "source": {"type": "path"}}), "messages[0].content[2].source.type: must be one of"),  # noqa: E501
    ("image-no-url", drop("messages.0.content.2.source.url"), "messages[0].content[2].source.url: field required"),  # noqa: E501
    ("tool-use-in-user", put("messages.0.content.0", {"type": "tool_use", "id": "t", "name": "f", "input": {}}), "messages[0].content[0].type: tool_use blocks are only allowed in assistant messages"),  # noqa: E501
    ("tool-use-no-id", drop("messages.1.content.3.id"), "messages[1].content[3].id: field required"),  # noqa: E501
    ("tool-use-bad-id", put("messages.1.content.3.id", "call 1"), "messages[1].content[3].id: must match"),  # noqa: E501
    ("tool-use-no-name", drop("messages.1.content.3.name"), "messages[1].content[3].name: field required"),  # noqa: E501
    ("tool-use-input-string", put("messages.1.content.3.input", '{"city": "Paris"}'), "messages[1].content[3].input: must be an object, not str"),  # noqa: E501
    ("tool-result-in-assistant", put("messages.3.content", [{"type": "tool_result", "tool_use_id": "toolu_01A"}]), "messages[3].content[0].type: tool_result blocks are only allowed in user messages"),  # noqa: E501
    ("tool-result-no-id", drop("messages.2.content.0.tool_use_id"), "messages[2].content[0].tool_use_id: field required"),  # noqa: E501
    ("tool-result-unknown-id", put("messages.2.content.0.tool_use_id", "toolu_99"), "messages[2].content: unexpected tool_use_id found in tool_result blocks: toolu_99"),  # noqa: E501
    ("tool-result-is-error", put("messages.2.content.1.is_error", "yes"), "messages[2].content[1].is_error: must be a boolean"),  # noqa: E501
    ("tool-result-content", put("messages.2.content.1.content.0.type", "tool_use"), "messages[2].content[1].content[0].type: must be one of"),  # noqa: E501
    ("tool-result-missing", drop("messages.2.content.1"), "messages[1]: tool_use ids were found without tool_result blocks immediately after: toolu_01B"),  # noqa: E501
    ("tool-result-first-turn", put("messages.0.content", [{"type": "tool_result", "tool_use_id": "toolu_01A"}]), "messages[0].content: unexpected tool_use_id"),  # noqa: E501
    ("tool-use-then-assistant", put("messages.2.role", "assistant"), "messages[2].content[0].type: tool_result blocks are only allowed in user messages"),  # noqa: E501
    ("thinking-in-user", put("messages.0.content.0", {"type": "thinking", "thinking": "x", "signature": "s"}), "messages[0].content[0].type: thinking blocks are only allowed in assistant messages"),  # noqa: E501
    ("thinking-no-signature", drop("messages.1.content.0.signature"), "messages[1].content[0].signature: field required"),  # noqa: E501
    ("thinking-not-string", put("messages.1.content.0.thinking", None), "messages[1].content[0].thinking: must be a string, not null"),  # noqa: E501
    ("redacted-thinking-in-user", put("messages.0.content.0", {"type": "redacted_thinking", "data": "x"}), "messages[0].content[0].type: redacted_thinking blocks are only allowed in assistant"),  # noqa: E501
    ("redacted-thinking-no-data", drop("messages.1.content.1.data"), "messages[1].content[1].data: field required"),  # noqa: E501
    # tools, tool_choice, thinking
    ("tools-object", put("tools", WEATHER_TOOL), "tools: must be a list, not dict"),
    ("tool-no-name", drop("tools.0.name"), "tools[0].name: field required"),
    ("tool-bad-name", put("tools.0.name", "get.weather"), "tools[0].name: must match"),
    ("tool-no-schema", drop("tools.0.input_schema"), "tools[0].input_schema: field required"),
    ("tool-schema-string", put("tools.0.input_schema", "{}"), "tools[0].input_schema: must be an object"),  # noqa: E501
    ("tool-schema-type", put("tools.0.input_schema.type", "array"), "tools[0].input_schema.type: must be 'object'"),  # noqa: E501
    ("tool-openai-shape", put("tools.0", {"type": "function", "function": {"name": "f"}}), "tools[0].type: unknown tool type 'function'"),  # noqa: E501
    ("tool-names-repeat", put("tools.1", WEATHER_TOOL), "tools: tool names must be unique"),
    ("tool-choice-string", put("tool_choice", "auto"), "tool_choice: must be an object, not str"),
    ("tool-choice-required", put("tool_choice", {"type": "required"}), "tool_choice.type: must be one of any, auto, none, tool, not 'required'"),  # noqa: E501
    ("tool-choice-no-name", drop("tool_choice.name"), "tool_choice.name: field required"),
    ("tool-choice-unknown-tool", put("tool_choice.name", "nope"), "tool_choice.name: tool 'nope' is not among the provided tools"),  # noqa: E501
    ("tool-choice-without-tools", drop("tools"), "tool_choice: tool_choice 'tool' may only be specified while providing tools"),  # noqa: E501
    ("tool-choice-parallel", put("tool_choice.disable_parallel_tool_use", 1), "tool_choice.disable_parallel_tool_use: must be a boolean"),  # noqa: E501
    ("thinking-type", put("thinking", {"type": "on"}), "thinking.type: must be one of"),
    ("thinking-no-budget", put("thinking", {"type": "enabled"}), "thinking.budget_tokens: field required"),  # noqa: E501
    ("thinking-small-budget", put("thinking", {"type": "enabled", "budget_tokens": 512}), "thinking.budget_tokens: must be at least 1024"),  # noqa: E501
    ("thinking-budget-over-max", put("thinking", {"type": "enabled", "budget_tokens": 1024}), "max_tokens: must be greater than thinking.budget_tokens (1024)"),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "expected"),
    [pytest.param(edit, expected, id=name) for name, edit, expected in ANTHROPIC_PROBLEMS],
)
def test_anthropic_rule_violations_are_named(edit: Edit, expected: str) -> None:
    assert_problem(check_anthropic_messages(edited(ANTHROPIC, edit)), expected)


@pytest.mark.parametrize(
    "key", ["n", "stop", "stream_options", "max_completion_tokens", "response_format", "user"]
)
def test_openai_only_fields_are_refused_by_anthropic(key: str) -> None:
    problem = check_anthropic_messages(edited(ANTHROPIC, put(key, 1)))
    assert problem == f"{key}: Extra inputs are not permitted (an OpenAI-only field)"


@pytest.mark.parametrize("body", [[], "hi", None, 3])
def test_an_anthropic_body_must_be_an_object(body: Any) -> None:
    assert_problem(check_anthropic_messages(body), "body: must be an object")


# ============================================================================ OpenAI chat

OPENAI_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}

OPENAI = {
    "model": "gpt-test",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
        {
            "role": "user",
            "name": "alice",
            "content": [
                {"type": "text", "text": "Weather in Paris? See the picture."},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png",
                                                    "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
        {"role": "assistant", "content": "Paris is sunny, Lyon is rainy."},
        {"role": "user", "content": "And tomorrow?"},
    ],
    "stream": True,
    "stream_options": {"include_usage": True},
    "max_tokens": 64,
    "max_completion_tokens": 64,
    "n": 1,
    "temperature": 1.5,
    "top_p": 0.9,
    "presence_penalty": -1,
    "stop": ["END", "STOP"],
    "tools": [OPENAI_TOOL],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "response_format": {"type": "text"},
    "metadata": {"team": "a"},
    "user": "user-1",
    "seed": 7,
}  # fmt: skip

OPENAI_MINIMAL = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(OPENAI, id="full"),
        pytest.param(OPENAI_MINIMAL, id="minimal"),
        pytest.param(
            edited(OPENAI_MINIMAL, put("stop", None), put("tools", None), put("stream", None)),
            id="nulls-are-absent",
        ),
        pytest.param(edited(OPENAI_MINIMAL, put("stop", "END")), id="string-stop"),
        pytest.param(
            edited(OPENAI_MINIMAL, put("tools", [OPENAI_TOOL]), put("tool_choice", "required")),
            id="tool-choice-required",
        ),
        pytest.param(
            edited(OPENAI_MINIMAL, put("guided_json", {}), put("chat_template_kwargs", {})),
            id="server-extensions-are-not-ours-to-refuse",
        ),
        pytest.param(
            edited(OPENAI, drop("messages.7"), drop("messages.6")), id="ends-with-tool-results"
        ),
    ],
)
def test_valid_openai_chat_requests_pass(body: dict[str, Any]) -> None:
    assert check_openai_chat(body) is None


OPENAI_PROBLEMS = [
    # the body and its top-level fields
    ("no-model", drop("model"), "model: field required"),
    ("model-not-string", put("model", None), "model: must be a string, not null"),
    ("no-messages", drop("messages"), "messages: field required"),
    ("messages-empty", put("messages", []), "messages: must not be empty"),
    ("stream-string", put("stream", "true"), "stream: must be a boolean, not str"),
    ("stream-options-without-stream", put("stream", False), "stream_options: only allowed when 'stream' is enabled"),  # noqa: E501
    ("stream-options-not-object", put("stream_options", True), "stream_options: must be an object"),
    ("include-usage-string", put("stream_options.include_usage", "yes"), "stream_options.include_usage: must be a boolean"),  # noqa: E501
    ("max-tokens-zero", put("max_tokens", 0), "max_tokens: must be at least 1, not 0"),
    ("max-tokens-float", put("max_tokens", 1.5), "max_tokens: must be an integer, not float"),
    ("max-completion-tokens", put("max_completion_tokens", -1), "max_completion_tokens: must be at least 1"),  # noqa: E501
    ("n-zero", put("n", 0), "n: must be at least 1"),
    ("temperature-high", put("temperature", 2.5), "temperature: must be between 0 and 2"),
    ("top-p-high", put("top_p", 1.5), "top_p: must be between 0 and 1"),
    ("penalty", put("frequency_penalty", 3), "frequency_penalty: must be between -2 and 2"),
    ("stop-five", put("stop", ["a", "b", "c", "d", "e"]), "stop: at most 4 stop sequences"),
    ("stop-number", put("stop", 4), "stop: must be a list, not int"),
    ("stop-item-number", put("stop.1", 4), "stop[1]: must be a string, not int"),
    ("response-format", put("response_format", {"type": "xml"}), "response_format.type: must be one of"),  # noqa: E501
    # messages
    ("message-not-object", put("messages.0", "hi"), "messages[0]: must be an object"),
    ("no-role", drop("messages.0.role"), "messages[0].role: field required"),
    ("role-human", put("messages.2.role", "human"), "messages[2].role: must be one of assistant, developer, system, tool, user, not 'human'"),  # noqa: E501
    ("reasoning-content", put("messages.6.reasoning_content", "hmm"), "messages[6].reasoning_content: Extra inputs are not permitted"),  # noqa: E501
    ("modelpool-thinking", put("messages.3.modelpool_thinking", []), "messages[3].modelpool_thinking: Extra inputs are not permitted"),  # noqa: E501
    ("name-number", put("messages.2.name", 1), "messages[2].name: must be a string"),
    ("system-no-content", drop("messages.0.content"), "messages[0].content: field required"),
    ("system-image", put("messages.1.content.0.type", "image_url"), "messages[1].content[0].type: must be one of text"),  # noqa: E501
    ("user-no-content", drop("messages.7.content"), "messages[7].content: field required"),
    ("user-content-null", put("messages.7.content", None), "messages[7].content: must be a list, not null"),  # noqa: E501
    ("user-content-empty-list", put("messages.7.content", []), "messages[7].content: must not be empty"),  # noqa: E501
    ("user-anthropic-image", put("messages.2.content.1", {"type": "image", "source": {}}), "messages[2].content[1].type: must be one of file, image_url, input_audio, text, not 'image'"),  # noqa: E501
    ("user-text-missing", drop("messages.2.content.0.text"), "messages[2].content[0].text: field required"),  # noqa: E501
    ("image-url-string", put("messages.2.content.1.image_url", "https://x/a.png"), "messages[2].content[1].image_url: must be an object, not str"),  # noqa: E501
    ("image-url-no-url", drop("messages.2.content.1.image_url.url"), "messages[2].content[1].image_url.url: field required"),  # noqa: E501
    ("image-url-detail", put("messages.2.content.1.image_url.detail", "max"), "messages[2].content[1].image_url.detail: must be one of"),  # noqa: E501
    ("assistant-nothing", drop("messages.3.tool_calls"), "messages[3].content: required unless 'tool_calls' or 'function_call' is specified"),  # noqa: E501
    ("assistant-anthropic-blocks", put("messages.6.content", [{"type": "tool_use", "id": "x"}]), "messages[6].content[0].type: must be one of refusal, text"),  # noqa: E501
    ("tool-calls-empty", put("messages.3.tool_calls", []), "messages[3].tool_calls: must not be empty"),  # noqa: E501
    ("tool-call-no-id", drop("messages.3.tool_calls.0.id"), "messages[3].tool_calls[0].id: field required"),  # noqa: E501
    ("tool-call-type", put("messages.3.tool_calls.0.type", "tool_use"), "messages[3].tool_calls[0].type: must be one of function"),  # noqa: E501
    ("tool-call-no-name", drop("messages.3.tool_calls.0.function.name"), "messages[3].tool_calls[0].function.name: field required"),  # noqa: E501
    ("tool-call-arguments-object", put("messages.3.tool_calls.0.function.arguments", {"city": "Paris"}), "messages[3].tool_calls[0].function.arguments: must be a string, not dict"),  # noqa: E501
    ("tool-call-extra", put("messages.3.tool_calls.0.input", {}), "messages[3].tool_calls[0].input: Extra inputs"),  # noqa: E501
    ("tool-no-call-id", drop("messages.4.tool_call_id"), "messages[4].tool_call_id: field required"),  # noqa: E501
    ("tool-unknown-call-id", put("messages.4.tool_call_id", "call_9"), "messages[4].tool_call_id: 'call_9' answers no tool call of the preceding assistant message"),  # noqa: E501
    ("tool-no-content", drop("messages.4.content"), "messages[4].content: field required"),
    ("tool-result-missing", drop("messages.5"), "messages[5]: an assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'; missing: call_2"),  # noqa: E501
    ("tool-message-too-late", put("messages.7", {"role": "tool", "tool_call_id": "call_1", "content": "again"}), "messages[7].tool_call_id: 'call_1' answers no tool call of the preceding"),  # noqa: E501
    ("tool-message-first", put("messages.0", {"role": "tool", "tool_call_id": "call_1", "content": "x"}), "messages[0].tool_call_id: 'call_1' answers no tool call"),  # noqa: E501
    # tools and tool_choice
    ("tools-object", put("tools", OPENAI_TOOL), "tools: must be a list, not dict"),
    ("tool-no-type", drop("tools.0.type"), "tools[0].type: field required"),
    ("tool-anthropic-shape", put("tools.0", {"name": "f", "input_schema": {"type": "object"}}), "tools[0].type: field required"),  # noqa: E501
    ("tool-no-function", drop("tools.0.function"), "tools[0].function: field required"),
    ("tool-nameless", put("tools.0.function", {}), "tools[0].function.name: field required"),
    ("tool-bad-name", put("tools.0.function.name", "get weather"), "tools[0].function.name: must match"),  # noqa: E501
    ("tool-parameters-string", put("tools.0.function.parameters", "{}"), "tools[0].function.parameters: must be an object"),  # noqa: E501
    ("tool-choice-any", put("tool_choice", "any"), "tool_choice: must be one of auto, none, required, not 'any'"),  # noqa: E501
    ("tool-choice-anthropic", put("tool_choice", {"type": "tool", "name": "get_weather"}), "tool_choice.type: must be one of function"),  # noqa: E501
    ("tool-choice-no-name", drop("tool_choice.function.name"), "tool_choice.function.name: field required"),  # noqa: E501
    ("tool-choice-without-tools", drop("tools"), "tool_choice: only allowed when 'tools' are specified"),  # noqa: E501
    ("parallel-without-tools", lambda b: [b.pop("tools"), b.pop("tool_choice")], "parallel_tool_calls: only allowed when 'tools' are specified"),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "expected"),
    [pytest.param(edit, expected, id=name) for name, edit, expected in OPENAI_PROBLEMS],
)
def test_openai_chat_rule_violations_are_named(edit: Edit, expected: str) -> None:
    assert_problem(check_openai_chat(edited(OPENAI, edit)), expected)


@pytest.mark.parametrize("key", sorted(ANTHROPIC_ONLY_KEYS))
def test_anthropic_only_fields_are_refused_by_openai(key: str) -> None:
    problem = check_openai_chat(edited(OPENAI_MINIMAL, put(key, ["x"])))
    assert problem == f"{key}: unrecognized request argument (an Anthropic-only field)"


def test_an_openai_body_must_be_an_object() -> None:
    assert check_openai_chat([OPENAI_MINIMAL]) == "body: must be an object, not list"


# ============================================================================ completions


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "prompt": "Once upon"},
        {"model": "m", "prompt": ["a", "b"], "max_tokens": 3, "stream": True,
         "stream_options": {"include_usage": True}},
        {"model": "m", "prompt": [1, 2, 3], "max_tokens": None},
    ],
)  # fmt: skip
def test_valid_completions_pass(body: dict[str, Any]) -> None:
    assert check_openai_completions(body) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"prompt": "x"}, "model: field required"),
        ({"model": "m"}, "prompt: field required"),
        ({"model": "m", "prompt": 3}, "prompt: must be a string or a list, not int"),
        ({"model": "m", "prompt": "x", "stream": 1}, "stream: must be a boolean"),
        ({"model": "m", "prompt": "x", "max_tokens": -1}, "max_tokens: must be at least 0"),
        ({"model": "m", "prompt": "x", "stream_options": {}}, "stream_options: only allowed when"),
        ({"model": "m", "prompt": "x", "system": "s"}, "system: unrecognized request argument"),
        ("prompt", "body: must be an object, not str"),
    ],
)
def test_completions_problems(body: Any, expected: str) -> None:
    assert_problem(check_openai_completions(body), expected)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "input": "hello"},
        {"model": "m", "input": ["a", "b"], "encoding_format": "float"},
        {"model": "m", "input": [[1, 2], [3]]},
    ],
)
def test_valid_embeddings_pass(body: dict[str, Any]) -> None:
    assert check_openai_embeddings(body) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"input": "x"}, "model: field required"),
        ({"model": "m"}, "input: field required"),
        ({"model": "m", "input": []}, "input: must not be empty"),
        ({"model": "m", "input": {"text": "x"}}, "input: must be a string or a list, not dict"),
        ({"model": "m", "input": None}, "input: must be a string or a list, not null"),
        ({"model": "m", "input": "x", "top_k": 3}, "top_k: unrecognized request argument"),
    ],
)
def test_embeddings_problems(body: Any, expected: str) -> None:
    assert_problem(check_openai_embeddings(body), expected)


# ============================================================================ routing


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/messages", "anthropic"),
        ("/v1/chat/completions", "openai"),
        ("/openai/v1/chat/completions", "openai"),
        ("/v1/completions", "openai"),
        ("/v1/embeddings", "openai"),
        ("/v1/models", None),
        ("/v1/messages/count_tokens", None),
        ("/health", None),
    ],
)
def test_api_of_path(path: str, api: str | None) -> None:
    assert api_of(path) == api


def test_check_request_picks_the_check_by_path() -> None:
    assert check_request("/v1/messages", ANTHROPIC_MINIMAL) is None
    assert_problem(check_request("/v1/messages", OPENAI_MINIMAL), "max_tokens: field required")
    assert check_request("/v1/chat/completions", OPENAI_MINIMAL) is None
    assert_problem(check_request("/v1/chat/completions", {"model": "m"}), "messages: field")
    assert_problem(check_request("/v1/completions", OPENAI_MINIMAL), "prompt: field required")
    assert_problem(check_request("/v1/embeddings", OPENAI_MINIMAL), "input: field required")
    assert check_request("/v1/models", {"anything": "goes"}) is None
