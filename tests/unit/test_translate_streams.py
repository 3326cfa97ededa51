"""Stream translation: Anthropic events ⇄ OpenAI chat.completion.chunk dicts."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import Any

import pytest
from anthropic.types import RawMessageStreamEvent
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk
from pydantic import TypeAdapter

from modelpool.providers.translate import (
    THINKING_KEY,
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    TranslationError,
)

_EVENT = TypeAdapter(RawMessageStreamEvent)
Ev = dict[str, Any]

# --------------------------------------------------------------- builders


def anthropic_events(
    blocks: list[tuple[str, Any]],
    stop_reason: str = "end_turn",
    usage: dict[str, int] | None = None,
) -> list[Ev]:
    """An Anthropic stream. Each block is (kind, payload): ("text", [fragments]),
    ("tool", (id, name, [fragments])), ("thinking", (fragments, signature)),
    ("redacted", data)."""
    start_usage = {"input_tokens": 11, "output_tokens": 1, "cache_read_input_tokens": 4}
    message: Ev = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [],
    }
    message |= {"stop_reason": None, "stop_sequence": None, "usage": start_usage}
    events: list[Ev] = [{"type": "message_start", "message": message}, {"type": "ping"}]
    for index, (kind, payload) in enumerate(blocks):
        events += _anthropic_block(index, kind, payload)
    delta_usage = usage or {"output_tokens": 25}
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": delta_usage,
        }
    )
    events.append({"type": "message_stop"})
    return events


def _anthropic_block(index: int, kind: str, payload: Any) -> list[Ev]:
    def delta(d: Ev) -> Ev:
        return {"type": "content_block_delta", "index": index, "delta": d}

    if kind == "text":
        start: Ev = {"type": "text", "text": ""}
        deltas = [delta({"type": "text_delta", "text": f}) for f in payload]
    elif kind == "tool":
        tool_id, name, fragments = payload
        start = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
        deltas = [delta({"type": "input_json_delta", "partial_json": f}) for f in fragments]
    elif kind == "thinking":
        fragments, signature = payload
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [delta({"type": "thinking_delta", "thinking": f}) for f in fragments]
        deltas.append(delta({"type": "signature_delta", "signature": signature}))
    else:
        start, deltas = {"type": "redacted_thinking", "data": payload}, []
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *deltas,
        {"type": "content_block_stop", "index": index},
    ]


def openai_chunks(
    deltas: list[Ev], finish: str = "stop", usage: dict[str, Any] | None = None
) -> list[Ev]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x"}
    out = [base | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    out += [base | {"choices": [{"index": 0, "delta": d}]} for d in deltas]
    out.append(base | {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if usage is not None:
        out.append(base | {"choices": [], "usage": usage})
    return out


def run(
    translator: AnthropicToOpenAIStream | OpenAIToAnthropicStream, events: Iterable[Ev]
) -> list[Ev]:
    out: list[Ev] = []
    for event in events:
        out += translator.feed(event)
    return out + translator.finish()


# --------------------------------------------------------------- well-formedness


def check_anthropic(events: list[Ev]) -> None:
    for event in events:
        _EVENT.validate_python(event)
    assert events[0]["type"] == "message_start"
    assert events[-1]["type"] == "message_stop"
    assert [e["type"] for e in events].count("message_delta") == 1
    assert events[-2]["type"] == "message_delta"
    open_index: int | None = None
    next_index = 0
    for event in events[1:-2]:
        kind = event["type"]
        if kind == "content_block_start":
            assert open_index is None
            assert event["index"] == next_index
            open_index, next_index = event["index"], next_index + 1
        elif kind == "content_block_delta":
            assert event["index"] == open_index
        elif kind == "content_block_stop":
            assert event["index"] == open_index
            open_index = None
        else:
            assert kind == "ping", kind
    assert open_index is None


def check_openai(chunks: list[Ev], include_usage: bool) -> None:
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    with_choices = [c for c in chunks if c["choices"]]
    roles = [c for c in with_choices if "role" in c["choices"][0]["delta"]]
    assert roles == [with_choices[0]]
    finishes = [
        c["choices"][0]["finish_reason"] for c in with_choices if c["choices"][0]["finish_reason"]
    ]
    assert len(finishes) == 1
    assert with_choices[-1]["choices"][0]["finish_reason"] is not None
    seen: list[int] = []
    for chunk in with_choices:
        for call in chunk["choices"][0]["delta"].get("tool_calls") or []:
            if call["index"] not in seen:
                assert call["id"], "the first delta of a call has its id"
                assert call["function"]["name"], "the first delta of a call has its name"
                seen.append(call["index"])
    assert seen == list(range(len(seen)))
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] is not None
    else:
        assert all("usage" not in c or c["usage"] is None for c in chunks)


def openai_calls(chunks: list[Ev]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for call in choice["delta"].get("tool_calls") or []:
                entry = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                entry["id"] = call.get("id") or entry["id"]
                entry["name"] = call.get("function", {}).get("name") or entry["name"]
                entry["arguments"] += call.get("function", {}).get("arguments") or ""
    return calls


def anthropic_blocks(events: list[Ev]) -> list[Ev]:
    blocks: list[Ev] = []
    for event in events:
        if event["type"] == "content_block_start":
            blocks.append(dict(event["content_block"]) | {"partial_json": ""})
        elif event["type"] == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            for key in ("text", "partial_json", "thinking", "signature"):
                if key in delta:
                    block[key] = block.get(key, "") + delta[key]
    return blocks


# --------------------------------------------------------------- Anthropic → OpenAI


def test_text_stream_to_openai() -> None:
    events = anthropic_events([("text", ["Hel", "lo"])])
    chunks = run(AnthropicToOpenAIStream(include_usage=True, created=5), events)
    check_openai(chunks, include_usage=True)
    assert chunks[0]["id"] == "msg_1"
    assert chunks[0]["model"] == "claude-x"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 15,
        "completion_tokens": 25,
        "total_tokens": 40,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


def test_tools_stream_to_openai_indexes_and_finish() -> None:
    events = anthropic_events(
        [
            ("text", ["Checking"]),
            ("tool", ("toolu_a", "weather", ['{"ci', 'ty": "Paris"}'])),
            ("tool", ("toolu_b", "time", ["", "{}"])),
        ],
        "tool_use",
    )
    chunks = run(AnthropicToOpenAIStream(), events)
    check_openai(chunks, include_usage=False)
    calls = openai_calls(chunks)
    assert calls == {
        0: {"id": "toolu_a", "name": "weather", "arguments": '{"city": "Paris"}'},
        1: {"id": "toolu_b", "name": "time", "arguments": "{}"},
    }
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("refusal", "content_filter"),
    ],
)
def test_stream_stop_reasons_to_openai(stop_reason: str, finish: str) -> None:
    chunks = run(AnthropicToOpenAIStream(), anthropic_events([("text", ["x"])], stop_reason))
    assert chunks[-1]["choices"][0]["finish_reason"] == finish


def test_thinking_stream_to_openai() -> None:
    events = anthropic_events(
        [("thinking", (["let me ", "think"], "U0lH")), ("redacted", "blob"), ("text", ["42"])]
    )
    chunks = run(AnthropicToOpenAIStream(), events)
    check_openai(chunks, include_usage=False)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "let me think"
    carried = [b for d in deltas for b in d.get(THINKING_KEY, [])]
    assert carried == [
        {"type": "thinking", "thinking": "let me think", "signature": "U0lH"},
        {"type": "redacted_thinking", "data": "blob"},
    ]


def test_error_event_to_openai() -> None:
    translator = AnthropicToOpenAIStream()
    out = translator.feed(
        {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    )
    assert out == [
        {"error": {"message": "busy", "type": "overloaded_error", "param": None, "code": None}}
    ]
    assert translator.finish() == []


def test_truncated_anthropic_stream_is_closed() -> None:
    events = anthropic_events([("text", ["partial"])])[:4]
    chunks = run(AnthropicToOpenAIStream(include_usage=True), events)
    check_openai(chunks, include_usage=True)


def test_delta_without_start_raises() -> None:
    translator = AnthropicToOpenAIStream()
    with pytest.raises(TranslationError):
        translator.feed(
            {
                "type": "content_block_delta",
                "index": 3,
                "delta": {"type": "text_delta", "text": "x"},
            }
        )


# --------------------------------------------------------------- OpenAI → Anthropic

USAGE = {
    "prompt_tokens": 30,
    "completion_tokens": 9,
    "total_tokens": 39,
    "prompt_tokens_details": {"cached_tokens": 10},
}


def test_text_stream_to_anthropic_with_usage() -> None:
    chunks = openai_chunks([{"content": "Hel"}, {"content": "lo"}], usage=USAGE)
    events = run(OpenAIToAnthropicStream(input_tokens=17), chunks)
    check_anthropic(events)
    assert events[0]["message"]["id"] == "chatcmpl-1"
    assert events[0]["message"]["usage"]["input_tokens"] == 17
    assert anthropic_blocks(events)[0]["text"] == "Hello"
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    assert events[-2]["usage"] == {
        "input_tokens": 20,
        "output_tokens": 9,
        "cache_read_input_tokens": 10,
        "cache_creation_input_tokens": 0,
    }


def test_stream_without_usage_is_well_formed() -> None:
    events = run(OpenAIToAnthropicStream(), openai_chunks([{"content": "x"}], "length"))
    check_anthropic(events)
    assert events[-2]["delta"]["stop_reason"] == "max_tokens"
    assert events[-2]["usage"]["output_tokens"] == 0


def test_empty_stream_is_well_formed() -> None:
    events = run(OpenAIToAnthropicStream(model="m", message_id="msg_x"), [])
    check_anthropic(events)
    assert events[0]["message"]["model"] == "m"


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ],
)
def test_stream_finish_reasons_to_anthropic(finish: str, stop_reason: str) -> None:
    events = run(OpenAIToAnthropicStream(), openai_chunks([{"content": "x"}], finish))
    assert events[-2]["delta"]["stop_reason"] == stop_reason


def test_tool_deltas_without_index_or_id_on_later_chunks() -> None:
    deltas: list[Ev] = [
        {"content": "Let me check."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]},
        {
            "tool_calls": [
                {"index": 1, "id": "call_2", "function": {"name": "time", "arguments": "{}"}}
            ]
        },
    ]
    events = run(OpenAIToAnthropicStream(), openai_chunks(deltas, "tool_calls"))
    check_anthropic(events)
    blocks = anthropic_blocks(events)
    assert [(b["type"], b.get("id"), b.get("name")) for b in blocks] == [
        ("text", None, None),
        ("tool_use", "call_1", "weather"),
        ("tool_use", "call_2", "time"),
    ]
    assert [b["partial_json"] for b in blocks[1:]] == ['{"city": "Paris"}', "{}"]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_same_index_new_id_is_a_new_tool_call() -> None:
    deltas: list[Ev] = [
        {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}]},
        {
            "tool_calls": [
                {"index": 0, "id": "b", "function": {"name": "g", "arguments": '{"x":1}'}}
            ]
        },
    ]
    events = run(OpenAIToAnthropicStream(), openai_chunks(deltas, "tool_calls"))
    check_anthropic(events)
    assert [(b["id"], b["partial_json"]) for b in anthropic_blocks(events)] == [
        ("a", "{}"),
        ("b", '{"x":1}'),
    ]


def test_tool_name_arriving_late_holds_fragments() -> None:
    deltas: list[Ev] = [
        {"tool_calls": [{"index": 0, "id": "a", "function": {"arguments": '{"q"'}}]},
        {"tool_calls": [{"index": 0, "function": {"name": "search", "arguments": ": 1}"}}]},
    ]
    events = run(OpenAIToAnthropicStream(), openai_chunks(deltas, "tool_calls"))
    check_anthropic(events)
    assert anthropic_blocks(events)[0] | {} == {
        "type": "tool_use",
        "id": "a",
        "name": "search",
        "input": {},
        "partial_json": '{"q": 1}',
    }


def test_finish_stop_with_tool_calls_is_tool_use() -> None:
    deltas: list[Ev] = [
        {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}]}
    ]
    events = run(OpenAIToAnthropicStream(), openai_chunks(deltas, "stop"))
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_openai_error_chunk_to_anthropic() -> None:
    translator = OpenAIToAnthropicStream()
    out = translator.feed({"error": {"message": "boom", "type": "server_error"}})
    assert out == [{"type": "error", "error": {"type": "api_error", "message": "boom"}}]
    assert translator.finish() == []


def test_interleaved_tool_arguments_are_not_lost() -> None:
    """Call 0, call 1, call 0 again: the first call streams live (its block
    stays open), the second is held and sent whole at the end."""
    interleaved: list[Ev] = [
        {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]},
        {"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{"}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": "}"}}]},
    ]
    events = run(OpenAIToAnthropicStream(), openai_chunks(interleaved, "tool_calls"))
    check_anthropic(events)
    assert [(b["id"], b["name"], b["partial_json"]) for b in anthropic_blocks(events)] == [
        ("a", "f", "{}"),
        ("b", "g", "{}"),
    ]


# --------------------------------------------------------------- properties


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


json_obj = st.dictionaries(
    st.text(max_size=6),
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=10),
    max_size=4,
)
tool_args = st.builds(
    lambda d, indent: json.dumps(d, indent=indent), json_obj, st.sampled_from([None, 1])
)
cuts = st.lists(st.integers(min_value=0, max_value=500), max_size=8)


@given(st.lists(st.tuples(tool_args, cuts), min_size=1, max_size=4), st.booleans(), st.booleans())
def test_anthropic_tool_fragments_reassemble_exactly(
    tools: list[tuple[str, list[int]]], with_text: bool, include_usage: bool
) -> None:
    blocks: list[tuple[str, Any]] = [("text", ["hi ", "there"])] if with_text else []
    blocks += [
        ("tool", (f"toolu_{i}", f"fn{i}", split(args, c))) for i, (args, c) in enumerate(tools)
    ]
    chunks = run(
        AnthropicToOpenAIStream(include_usage=include_usage), anthropic_events(blocks, "tool_use")
    )
    check_openai(chunks, include_usage)
    calls = openai_calls(chunks)
    assert [calls[i]["arguments"] for i in range(len(tools))] == [args for args, _ in tools]
    assert [calls[i]["id"] for i in range(len(tools))] == [f"toolu_{i}" for i in range(len(tools))]


@given(
    st.lists(
        st.tuples(
            tool_args, cuts, st.lists(st.sampled_from(["index", "bare", "both"]), max_size=9)
        ),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
)
def test_openai_tool_fragments_reassemble_exactly(
    tools: list[tuple[str, list[int], list[str]]], with_usage: bool
) -> None:
    deltas: list[Ev] = []
    for i, (args, c, styles) in enumerate(tools):
        fragments = split(args, c)
        head = {
            "index": i,
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": f"fn{i}", "arguments": fragments[0]},
        }
        deltas.append({"tool_calls": [head]})
        for j, fragment in enumerate(fragments[1:]):
            style = styles[j] if j < len(styles) else "index"
            call: Ev = {"function": {"arguments": fragment}}
            if style in ("index", "both"):
                call["index"] = i
            if style == "both":
                call["id"] = f"call_{i}"
            deltas.append({"tool_calls": [call]})
    events = run(
        OpenAIToAnthropicStream(),
        openai_chunks(deltas, "tool_calls", USAGE if with_usage else None),
    )
    check_anthropic(events)
    blocks = anthropic_blocks(events)
    assert [b["partial_json"] for b in blocks] == [args for args, _, _ in tools]
    assert [b["id"] for b in blocks] == [f"call_{i}" for i in range(len(tools))]
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def merge_texts(blocks: list[Ev]) -> list[Ev]:
    """OpenAI has no block boundaries: adjacent text blocks come back as one,
    empty ones not at all."""
    out: list[Ev] = []
    for block in blocks:
        if block["type"] == "text" and not block["text"]:
            continue
        if block["type"] == "text" and out and out[-1]["type"] == "text":
            out[-1] = out[-1] | {"text": out[-1]["text"] + block["text"]}
        else:
            out.append(block)
    return out


block_strategy = st.one_of(
    st.builds(lambda t, c: ("text", split(t, c)), st.text(min_size=1), cuts),
    st.builds(lambda a, c: ("tool", ("toolu_x", "f", split(a, c))), tool_args, cuts),
    st.builds(lambda t, c, s: ("thinking", (split(t, c), s)), st.text(), cuts, st.text(min_size=1)),
    st.builds(lambda d: ("redacted", d), st.text(min_size=1)),
)


@given(
    st.lists(block_strategy, max_size=5),
    st.sampled_from(["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]),
)
def test_any_stream_survives_both_translations(
    blocks: list[tuple[str, Any]], stop_reason: str
) -> None:
    """Anthropic → OpenAI → Anthropic: both legs well-formed, content equal,
    thinking blocks byte for byte."""
    source = anthropic_events(blocks, stop_reason)
    chunks = run(AnthropicToOpenAIStream(include_usage=True), source)
    check_openai(chunks, include_usage=True)
    events = run(OpenAIToAnthropicStream(), chunks)
    check_anthropic(events)
    expected = merge_texts(anthropic_blocks(source))
    got = anthropic_blocks(events)
    strip = [{k: v for k, v in b.items() if k != "id"} for b in got]
    assert strip == [{k: v for k, v in b.items() if k != "id"} for b in expected]
    assert json.dumps(got, sort_keys=False) == json.dumps(
        [b | {"id": g["id"]} if "id" in b else b for b, g in zip(expected, got, strict=True)]
    )
    has_tools = any(kind == "tool" for kind, _ in blocks)
    expected_stop = {"stop_sequence": "end_turn"}.get(stop_reason, stop_reason)
    if has_tools and expected_stop == "end_turn":
        expected_stop = "tool_use"
    assert events[-2]["delta"]["stop_reason"] == expected_stop
    assert events[-2]["usage"]["output_tokens"] == 25
