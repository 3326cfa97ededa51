"""Request translation, OpenAI chat ⇄ Anthropic messages, both directions."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from anthropic.types import MessageCreateParams
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import CompletionCreateParams
from pydantic import TypeAdapter

from modelpool.providers.translate import (
    THINKING_KEY,
    TranslationError,
    anthropic_to_openai_chat,
    openai_chat_to_anthropic,
    strip_modelpool_extensions,
)

_ANTHROPIC = TypeAdapter(MessageCreateParams)
_OPENAI = TypeAdapter(CompletionCreateParams)


def _drain(value: Any) -> Any:
    """Force pydantic's lazy Iterable validators so every element is checked."""
    if isinstance(value, dict):
        return {k: _drain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_drain(v) for v in value]
    if isinstance(value, Iterator):
        return [_drain(v) for v in value]
    return value


def valid_anthropic(body: dict[str, Any]) -> dict[str, Any]:
    _drain(_ANTHROPIC.validate_python(copy.deepcopy(body)))
    return body


def valid_openai(body: dict[str, Any]) -> dict[str, Any]:
    _drain(_OPENAI.validate_python(copy.deepcopy(body)))
    return body


def o2a(body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return valid_anthropic(openai_chat_to_anthropic(valid_openai(body), **kw))


def a2o(body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return valid_openai(anthropic_to_openai_chat(valid_anthropic(body), **kw))


def oa(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages), **extra}


def an(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 100, "messages": list(messages), **extra}


USER: dict[str, Any] = {"role": "user", "content": "hi"}
PNG = "iVBORw0KGgo="
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}

# ----------------------------------------------------------------- system prompts


def test_openai_system_and_developer_become_system() -> None:
    out = o2a(oa({"role": "system", "content": "be brief"}, USER))
    assert out["system"] == "be brief"
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    out = o2a(
        oa(
            {"role": "system", "content": "a"},
            {"role": "developer", "content": [{"type": "text", "text": "b"}]},
            USER,
        )
    )
    assert out["system"] == [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]


def test_anthropic_system_string_and_blocks() -> None:
    out = a2o(an(USER, system="be brief"))
    assert out["messages"][0] == {"role": "system", "content": "be brief"}
    blocks = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    out = a2o(an(USER, system=blocks))
    assert out["messages"][0] == {"role": "system", "content": blocks}
    assert o2a(out)["system"] == blocks


# ----------------------------------------------------------------- content and images

CONTENT_CASES = [
    (
        {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
        {"type": "image", "source": {"type": "url", "url": "https://x/cat.png"}},
    ),
    (
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
    ),
    ({"type": "text", "text": "look"}, {"type": "text", "text": "look"}),
]


@pytest.mark.parametrize(("part", "block"), CONTENT_CASES)
def test_content_parts_both_ways(part: dict[str, Any], block: dict[str, Any]) -> None:
    out = o2a(oa({"role": "user", "content": [{"type": "text", "text": "see"}, part]}))
    assert out["messages"][0]["content"] == [{"type": "text", "text": "see"}, block]
    back = a2o(an({"role": "user", "content": [block]}))
    assert back["messages"] == [{"role": "user", "content": [part]}]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AA=="}}, "url"),
        ({"type": "image_url", "image_url": {"url": "data:image/png,raw"}}, "url"),
        ({"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}, "type"),
        ({"type": "file", "file": {"file_id": "f"}}, "type"),
    ],
)
def test_unsupported_content_raises(part: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as err:
        openai_chat_to_anthropic(oa({"role": "user", "content": [part]}))
    assert err.value.param is not None
    assert err.value.param.startswith("messages[0].content[0]")
    assert err.value.param.endswith(param)


def test_unsupported_anthropic_blocks_raise() -> None:
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
    with pytest.raises(TranslationError, match="document") as err:
        anthropic_to_openai_chat(an({"role": "user", "content": [doc]}))
    assert err.value.param == "messages[0].content[0].type"


# ----------------------------------------------------------------- tools and tool choice

OA_TOOL = {
    "type": "function",
    "function": {"name": "weather", "description": "Get weather", "parameters": WEATHER_SCHEMA},
}
AN_TOOL = {"name": "weather", "description": "Get weather", "input_schema": WEATHER_SCHEMA}


def test_tool_definitions_both_ways() -> None:
    assert o2a(oa(USER, tools=[OA_TOOL]))["tools"] == [AN_TOOL]
    assert a2o(an(USER, tools=[AN_TOOL]))["tools"] == [OA_TOOL]


TOOL_CHOICES = [
    ("auto", {"type": "auto"}),
    ("none", {"type": "none"}),
    ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "weather"}}, {"type": "tool", "name": "weather"}),
]


@pytest.mark.parametrize(("openai_choice", "anthropic_choice"), TOOL_CHOICES)
def test_tool_choice_both_ways(openai_choice: Any, anthropic_choice: dict[str, Any]) -> None:
    assert (
        o2a(oa(USER, tools=[OA_TOOL], tool_choice=openai_choice))["tool_choice"] == anthropic_choice
    )
    back = a2o(an(USER, tools=[AN_TOOL], tool_choice=anthropic_choice))
    assert back["tool_choice"] == openai_choice


def test_parallel_tool_calls_false_disables_parallel_use() -> None:
    out = o2a(oa(USER, tools=[OA_TOOL], parallel_tool_calls=False))
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    back = a2o(an(USER, tools=[AN_TOOL], tool_choice=out["tool_choice"]))
    assert back["parallel_tool_calls"] is False
    assert back["tool_choice"] == "auto"


def test_server_tools_and_unknown_choice_raise() -> None:
    with pytest.raises(TranslationError) as err:
        anthropic_to_openai_chat(an(USER, tools=[{"type": "web_search_20250305", "name": "s"}]))
    assert err.value.param == "tools[0].type"
    with pytest.raises(TranslationError):
        openai_chat_to_anthropic(oa(USER, tools=[OA_TOOL], tool_choice="sometimes"))


# ----------------------------------------------------------------- tool calls and results

OA_TOOL_TURN: list[dict[str, Any]] = [
    USER,
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
    {"role": "user", "content": "thanks"},
]
AN_TOOL_TURN: list[dict[str, Any]] = [
    {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Oslo"}},
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
            {
                "type": "tool_result",
                "tool_use_id": "call_2",
                "content": [{"type": "text", "text": "rain"}],
            },
            {"type": "text", "text": "thanks"},
        ],
    },
]


def test_parallel_tool_calls_and_merged_results_openai_to_anthropic() -> None:
    assert o2a(oa(*OA_TOOL_TURN, tools=[OA_TOOL]))["messages"] == AN_TOOL_TURN


def test_parallel_tool_calls_and_results_anthropic_to_openai() -> None:
    out = a2o(an(*AN_TOOL_TURN, tools=[AN_TOOL]))["messages"]
    expected = copy.deepcopy(OA_TOOL_TURN)
    expected[0] = {"role": "user", "content": [{"type": "text", "text": "hi"}]}
    expected[4] = {"role": "user", "content": [{"type": "text", "text": "thanks"}]}
    assert out == expected


def test_tool_call_without_text_has_null_content() -> None:
    msg = {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
    }
    out = a2o(
        an(USER, msg, {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]})
    )
    assert out["messages"][1]["content"] is None
    assert out["messages"][1]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert out["messages"][2] == {"role": "tool", "tool_call_id": "t", "content": ""}


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", "3"])
def test_bad_tool_call_arguments_raise(arguments: str) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(TranslationError) as err:
        openai_chat_to_anthropic(oa(USER, {"role": "assistant", "tool_calls": [call]}))
    assert err.value.param == "messages[1].tool_calls[0].function.arguments"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_tool_input_round_trips(tool_input: dict[str, Any]) -> None:
    use = {"type": "tool_use", "id": "t1", "name": "f", "input": tool_input}
    body = an(USER, {"role": "assistant", "content": [use]})
    openai_body = anthropic_to_openai_chat(body)
    assert (
        json.loads(openai_body["messages"][1]["tool_calls"][0]["function"]["arguments"])
        == tool_input
    )
    assert openai_chat_to_anthropic(openai_body)["messages"][1]["content"] == [use]


# ----------------------------------------------------------------- parameters


def test_sampling_and_limits_openai_to_anthropic() -> None:
    out = o2a(
        oa(
            USER,
            temperature=0.3,
            top_p=0.9,
            stop="END",
            max_tokens=50,
            stream=True,
            stream_options={"include_usage": True},
            user="u1",
        )
    )
    assert out["temperature"] == 0.3
    assert "top_p" not in out  # current Claude models refuse temperature and top_p together
    assert out["stop_sequences"] == ["END"]
    assert out["max_tokens"] == 50
    assert out["stream"] is True
    assert out["metadata"] == {"user_id": "u1"}
    assert "stream_options" not in out


@pytest.mark.parametrize(
    ("extra", "expected"),
    [({}, 777), ({"max_tokens": 5}, 5), ({"max_completion_tokens": 9, "max_tokens": 5}, 9)],
)
def test_max_tokens_default(extra: dict[str, Any], expected: int) -> None:
    assert o2a(oa(USER, **extra), default_max_tokens=777)["max_tokens"] == expected


def test_top_p_alone_passes_to_anthropic() -> None:
    assert o2a(oa(USER, top_p=0.9))["top_p"] == 0.9


def test_an_empty_assistant_turn_is_left_out_for_anthropic() -> None:
    """Anthropic refuses a message with no content; an empty OpenAI turn carries nothing."""
    body = oa(
        USER,
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "still there?"},
        {"role": "assistant", "content": None},
    )
    assert o2a(body)["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "still there?"}],
        }
    ]


def test_temperature_above_anthropic_range_is_clamped() -> None:
    assert o2a(oa(USER, temperature=1.7))["temperature"] == 1.0


def test_sampling_and_limits_anthropic_to_openai() -> None:
    body = an(USER, temperature=0.2, top_p=0.5, stop_sequences=["a", "b"], stream=True)
    out = a2o(body)
    assert out["max_completion_tokens"] == 100
    assert (out["temperature"], out["top_p"], out["stop"]) == (0.2, 0.5, ["a", "b"])
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}
    assert a2o(body, max_tokens_field="max_tokens")["max_tokens"] == 100
    assert "stream_options" not in a2o(an(USER))


def test_stop_list_passes_through() -> None:
    assert o2a(oa(USER, stop=["x", "y"]))["stop_sequences"] == ["x", "y"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"functions": [{"name": "f"}]}, "functions"),
    ],
)
def test_unsupported_openai_parameters_raise(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as err:
        openai_chat_to_anthropic(oa(USER, **extra))
    assert err.value.param == param


def test_unknown_roles_raise() -> None:
    with pytest.raises(TranslationError) as err:
        openai_chat_to_anthropic(oa({"role": "function", "name": "f", "content": "x"}))
    assert err.value.param == "messages[0].role"


# ----------------------------------------------------------------- thinking blocks

thinking_block = st.builds(
    lambda text, sig: {"type": "thinking", "thinking": text, "signature": sig},
    st.text(),
    st.text(min_size=1),
)
redacted_block = st.builds(
    lambda data: {"type": "redacted_thinking", "data": data}, st.text(min_size=1)
)


@given(st.lists(thinking_block | redacted_block, min_size=1, max_size=4), st.text(min_size=1))
def test_thinking_blocks_round_trip_byte_for_byte(blocks: list[dict[str, Any]], reply: str) -> None:
    assistant = {
        "role": "assistant",
        "content": [
            *blocks,
            {"type": "text", "text": reply},
            {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}},
        ],
    }
    result = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "t", "content": "ok"}],
    }
    body = an(USER, assistant, result)
    source = orjson.dumps(body)
    openai_body = anthropic_to_openai_chat(body)
    carried = openai_body["messages"][1]
    assert carried["reasoning_content"] == "".join(b.get("thinking", "") for b in blocks)
    back = openai_chat_to_anthropic(orjson.loads(orjson.dumps(openai_body)))
    restored = back["messages"][1]["content"][: len(blocks)]
    assert orjson.dumps(restored) == orjson.dumps(blocks)
    assert orjson.dumps(body) == source  # input untouched


def test_strip_extensions_removes_thinking_keys() -> None:
    block = {"type": "thinking", "thinking": "hm", "signature": "sig"}
    body = anthropic_to_openai_chat(an(USER, {"role": "assistant", "content": [block]}))
    assert body["messages"][1][THINKING_KEY] == [block]
    stripped = strip_modelpool_extensions(body)
    assert THINKING_KEY not in stripped["messages"][1]
    assert "reasoning_content" not in stripped["messages"][1]
    assert THINKING_KEY in body["messages"][1]
    valid_openai(stripped)


def test_bad_thinking_extension_raises() -> None:
    msg = {"role": "assistant", "content": "x", THINKING_KEY: [{"type": "text", "text": "no"}]}
    with pytest.raises(TranslationError) as err:
        openai_chat_to_anthropic(oa(USER, msg))
    assert err.value.param == f"messages[1].{THINKING_KEY}"


# ----------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "body",
    [
        oa({"role": "system", "content": "sys"}, USER),
        oa(*OA_TOOL_TURN, tools=[OA_TOOL], tool_choice="required", temperature=0.5, stop=["x"]),
        oa(
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
                ],
            }
        ),
    ],
)
def test_openai_round_trip_is_semantically_equal(body: dict[str, Any]) -> None:
    again = anthropic_to_openai_chat(openai_chat_to_anthropic(body))
    again_twice = anthropic_to_openai_chat(openai_chat_to_anthropic(again))
    assert again_twice == again
    assert again.get("tools") == body.get("tools")
    assert [m["role"] for m in again["messages"]] == [m["role"] for m in body["messages"]]
