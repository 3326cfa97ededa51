"""Non-streaming responses: Anthropic message ⇄ OpenAI chat.completion."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion

from modelpool.providers.translate import (
    ANTHROPIC_TO_OPENAI_FINISH,
    OPENAI_TO_ANTHROPIC_STOP,
    THINKING_KEY,
    TranslationError,
    anthropic_message_to_openai,
    openai_completion_to_anthropic,
)

USAGE = {
    "input_tokens": 5,
    "output_tokens": 7,
    "cache_read_input_tokens": 20,
    "cache_creation_input_tokens": 3,
}


def message(content: list[dict[str, Any]], stop_reason: str = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": USAGE,
    }


def completion(reply: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-x",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **reply}, "finish_reason": finish}
        ],
        "usage": {
            "prompt_tokens": 30,
            "completion_tokens": 4,
            "total_tokens": 34,
            "prompt_tokens_details": {"cached_tokens": 10},
        },
    }


def to_openai(msg: dict[str, Any]) -> dict[str, Any]:
    out = anthropic_message_to_openai(Message.model_validate(msg).model_dump(), created=42)
    ChatCompletion.model_validate(out)
    return out


def to_anthropic(comp: dict[str, Any]) -> dict[str, Any]:
    out = openai_completion_to_anthropic(ChatCompletion.model_validate(comp).model_dump())
    Message.model_validate(out)
    return out


# exact tables ----------------------------------------------------------------

FINISH_TABLE = [
    ("end_turn", "stop"),
    ("max_tokens", "length"),
    ("stop_sequence", "stop"),
    ("tool_use", "tool_calls"),
    ("refusal", "content_filter"),
]
STOP_TABLE = [
    ("stop", "end_turn"),
    ("length", "max_tokens"),
    ("tool_calls", "tool_use"),
    ("content_filter", "refusal"),
]


@pytest.mark.parametrize(("stop_reason", "finish"), FINISH_TABLE)
def test_anthropic_stop_reason_maps_exactly(stop_reason: str, finish: str) -> None:
    assert ANTHROPIC_TO_OPENAI_FINISH[stop_reason] == finish
    content: list[dict[str, Any]] = [{"type": "text", "text": "x"}]
    if stop_reason == "tool_use":
        content.append({"type": "tool_use", "id": "t", "name": "f", "input": {}})
    assert to_openai(message(content, stop_reason))["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize(("finish", "stop_reason"), STOP_TABLE)
def test_openai_finish_reason_maps_exactly(finish: str, stop_reason: str) -> None:
    assert OPENAI_TO_ANTHROPIC_STOP[finish] == stop_reason
    reply: dict[str, Any] = {"content": "x"}
    if finish == "tool_calls":
        reply["tool_calls"] = [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ]
    assert to_anthropic(completion(reply, finish))["stop_reason"] == stop_reason


def test_tool_use_never_ends_with_stop() -> None:
    use = {"type": "tool_use", "id": "t", "name": "f", "input": {}}
    assert to_openai(message([use], "end_turn"))["choices"][0]["finish_reason"] == "tool_calls"
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert (
        to_anthropic(completion({"content": None, "tool_calls": [call]}, "stop"))["stop_reason"]
        == "tool_use"
    )


# anthropic → openai ------------------------------------------------------------


def test_text_tools_usage_id_model_to_openai() -> None:
    content: list[dict[str, Any]] = [
        {"type": "text", "text": "Let me check. "},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        {
            "type": "tool_use",
            "id": "toolu_2",
            "name": "weather",
            "input": {"city": "Oslo", "n": [1, 2]},
        },
    ]
    out = to_openai(message(content, "tool_use"))
    assert (out["id"], out["model"], out["created"]) == ("msg_1", "claude-x", 42)
    reply = out["choices"][0]["message"]
    assert reply["content"] == "Let me check. "
    calls = reply["tool_calls"]
    assert [c["id"] for c in calls] == ["toolu_1", "toolu_2"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        b["input"] for b in content[1:]
    ]
    assert out["usage"] == {
        "prompt_tokens": 28,
        "completion_tokens": 7,
        "total_tokens": 35,
        "prompt_tokens_details": {"cached_tokens": 20},
    }


def test_thinking_is_carried_to_openai_verbatim() -> None:
    thinking = {"type": "thinking", "thinking": "hmm", "signature": "c2ln"}
    redacted = {"type": "redacted_thinking", "data": "opaque"}
    out = to_openai(message([thinking, redacted, {"type": "text", "text": "42"}]))
    reply = out["choices"][0]["message"]
    assert reply["reasoning_content"] == "hmm"
    assert reply[THINKING_KEY] == [thinking, redacted]
    back = openai_completion_to_anthropic(out)
    assert back["content"] == [thinking, redacted, {"type": "text", "text": "42"}]


def test_empty_message_has_null_content() -> None:
    out = to_openai(message([], "max_tokens"))
    assert out["choices"][0]["message"]["content"] is None
    assert out["choices"][0]["finish_reason"] == "length"


# openai → anthropic ------------------------------------------------------------


def test_text_tools_usage_id_model_to_anthropic() -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": ""}},
    ]
    out = to_anthropic(completion({"content": "ok", "tool_calls": calls}, "tool_calls"))
    assert (out["id"], out["model"]) == ("chatcmpl-1", "gpt-x")
    assert out["content"] == [
        {"type": "text", "text": "ok"},
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "time", "input": {}},
    ]
    assert out["usage"] == {
        "input_tokens": 20,
        "output_tokens": 4,
        "cache_read_input_tokens": 10,
        "cache_creation_input_tokens": 0,
    }


def test_refusal_becomes_refusal_stop() -> None:
    out = to_anthropic(completion({"content": None, "refusal": "I can't."}, "stop"))
    assert out["content"] == [{"type": "text", "text": "I can't."}]
    assert out["stop_reason"] == "refusal"


def test_bad_arguments_and_no_choices_raise() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    with pytest.raises(TranslationError) as err:
        openai_completion_to_anthropic(
            completion({"content": None, "tool_calls": [call]}, "tool_calls")
        )
    assert err.value.param == "choices[0].message.tool_calls[0].function.arguments"
    with pytest.raises(TranslationError):
        openai_completion_to_anthropic({"id": "x", "choices": []})


def test_round_trip_anthropic_openai_anthropic() -> None:
    original = message(
        [
            {"type": "text", "text": "a"},
            {"type": "tool_use", "id": "t", "name": "f", "input": {"x": {"y": [1, None, "z"]}}},
        ],
        "tool_use",
    )
    back = to_anthropic(to_openai(original))
    assert back["content"] == original["content"]
    assert back["stop_reason"] == "tool_use"
    assert back["usage"]["cache_read_input_tokens"] == 20
    assert back["usage"]["input_tokens"] == 8  # cache writes fold into plain input via OpenAI
