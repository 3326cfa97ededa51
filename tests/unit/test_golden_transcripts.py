"""Golden transcripts: the same conversation written out in both APIs, translated both ways.

Each file in ``tests/fixtures/golden/`` is one case, with the request, the response
and the stream written by hand in the OpenAI chat API and in the Anthropic Messages
API (``openai_request`` / ``anthropic_request``, ``openai_response`` /
``anthropic_response``, ``openai_stream`` / ``anthropic_stream``). Every case is
translated in both directions and compared with its golden counterpart.

The comparisons normalise only what is written down below as a documented
difference: the fields one API has and the other has not (``*_ONLY_*``), forms that
mean the same thing (a string content and a one-text-block content, the legacy
``max_tokens`` and ``max_completion_tokens``, consecutive Anthropic turns of one
role, which the API merges anyway), and what cannot survive a trip through OpenAI
(``STOP_REASON_VIA_OPENAI``, cache writes). Anything else that differs fails.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from anthropic.types import Message, MessageCreateParams, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk, CompletionCreateParams
from pydantic import TypeAdapter

from modelpool.providers.translate import (
    DEFAULT_MAX_TOKENS,
    REASONING_KEY,
    THINKING_KEY,
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    anthropic_message_to_openai,
    anthropic_to_openai_chat,
    openai_chat_to_anthropic,
    openai_completion_to_anthropic,
    openai_error_to_anthropic,
)

Ev = dict[str, Any]
GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
CASES: dict[str, Ev] = {
    path.stem: json.loads(path.read_text(encoding="utf-8"))
    for path in sorted(GOLDEN.glob("*.json"))
}
OK_CASES = [name for name, case in CASES.items() if not case.get("error")]
ERROR_CASES = [name for name, case in CASES.items() if case.get("error")]
THINKING_TYPES = ("thinking", "redacted_thinking")

_ANTHROPIC_REQUEST = TypeAdapter(MessageCreateParams)
_OPENAI_REQUEST = TypeAdapter(CompletionCreateParams)
_ANTHROPIC_EVENT = TypeAdapter(RawMessageStreamEvent)


def load(name: str) -> Ev:
    return copy.deepcopy(CASES[name])


# ================================================================ documented differences

OPENAI_ONLY_REQUEST_KEYS = frozenset(
    {
        "stream_options",
        "reasoning_effort",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "store",
        "metadata",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
        "verbosity",
        "web_search_options",
        "n",
        "response_format",
        "modalities",
        "logprobs",
    }
)
"""OpenAI request fields with no Anthropic counterpart: dropped on the way to Anthropic
(``n``, ``response_format``, ``modalities``, ``logprobs`` only at their text-only
defaults; other values are refused). ``stream_options`` comes back from Anthropic as
``{"include_usage": true}`` whenever ``stream`` is set."""
ANTHROPIC_ONLY_REQUEST_KEYS = frozenset(
    {"thinking", "top_k", "service_tier", "container", "mcp_servers", "context_management"}
)
"""Anthropic request fields with no OpenAI counterpart: dropped on the way to OpenAI."""
ANTHROPIC_ONLY_BLOCK_KEYS = frozenset({"cache_control", "is_error", "citations"})
"""Content-block fields OpenAI cannot carry (cache breakpoints, tool_result.is_error)."""
OPENAI_ONLY_RESPONSE_KEYS = frozenset({"created", "system_fingerprint", "service_tier"})
"""Response fields (besides ``logprobs``, ``annotations``, ``completion_tokens_details``
and ``prompt_tokens_details.audio_tokens``) that Anthropic has no counterpart for."""
STOP_REASON_VIA_OPENAI = {
    "stop_sequence": "end_turn",
    "pause_turn": "end_turn",
    "model_context_window_exceeded": "max_tokens",
}
"""Anthropic stop reasons OpenAI cannot tell apart, as they come back from OpenAI (and
``stop_sequence``, the matched sequence, comes back null)."""


# ================================================================ canonical forms


def _text_parts(content: Any) -> list[Ev]:
    """OpenAI content (string, null or parts) as a list of parts."""
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    parts = []
    for part in content:
        if part["type"] == "image_url":
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]["url"]}})
        else:
            parts.append({"type": "text", "text": part.get("text", part.get("refusal", ""))})
    return parts


def _canon_call(call: Mapping[str, Any], parsed: bool = True) -> Ev:
    arguments = call["function"].get("arguments") or ""
    if parsed:
        arguments = json.loads(arguments) if arguments else {}
    return {
        "id": call["id"],
        "type": "function",
        "function": {"name": call["function"]["name"], "arguments": arguments},
    }


def _canon_openai_message(msg: Mapping[str, Any]) -> Ev:
    role = msg["role"]
    out: Ev = {"role": role, "content": _text_parts(msg.get("content"))}
    if role == "tool":
        out["tool_call_id"] = msg["tool_call_id"]
    if msg.get("tool_calls"):
        out["tool_calls"] = [_canon_call(c) for c in msg["tool_calls"]]
    for key in (REASONING_KEY, THINKING_KEY):
        if msg.get(key):
            out[key] = msg[key]
    return out


def canon_openai_request(body: Mapping[str, Any]) -> Ev:
    out = {k: v for k, v in body.items() if k not in OPENAI_ONLY_REQUEST_KEYS}
    if "max_tokens" in out:
        legacy = out.pop("max_tokens")
        out.setdefault("max_completion_tokens", legacy)
    if out.get("parallel_tool_calls") is True:  # the default
        del out["parallel_tool_calls"]
    if "tools" not in out:
        out.pop("tool_choice", None)
        out.pop("parallel_tool_calls", None)
    else:
        out["tools"] = [
            t | {"function": {k: v for k, v in t["function"].items() if k != "strict"}}
            for t in out["tools"]
        ]
    if "temperature" in out:
        out["temperature"] = float(out["temperature"])
    system: list[Ev] = []
    messages: list[Ev] = []
    for msg in body["messages"]:
        if msg["role"] in ("system", "developer"):
            system += _text_parts(msg["content"])
        else:
            messages.append(_canon_openai_message(msg))
    out["messages"] = ([{"role": "system", "content": system}] if system else []) + messages
    return out


def _canon_block(block: Mapping[str, Any]) -> Ev:
    out = {k: v for k, v in block.items() if k not in ANTHROPIC_ONLY_BLOCK_KEYS}
    if out["type"] == "tool_result":
        content = out.get("content")
        if not content:
            out["content"] = []
        elif isinstance(content, str):
            out["content"] = [{"type": "text", "text": content}]
        else:
            out["content"] = [_canon_block(c) for c in content]
    return out


def canon_anthropic_request(body: Mapping[str, Any]) -> Ev:
    out = {k: v for k, v in body.items() if k not in ANTHROPIC_ONLY_REQUEST_KEYS}
    system = out.pop("system", None)
    if system:
        texts = [system] if isinstance(system, str) else [b["text"] for b in system]
        out["system"] = [{"type": "text", "text": t} for t in texts]
    messages: list[Ev] = []
    for msg in body["messages"]:
        content = msg["content"]
        blocks = (
            [{"type": "text", "text": content}]
            if isinstance(content, str)
            else [_canon_block(b) for b in content]
        )
        if messages and messages[-1]["role"] == msg["role"]:  # the API merges them too
            messages[-1]["content"] += blocks
        else:
            messages.append({"role": msg["role"], "content": blocks})
    out["messages"] = messages
    user = (out.pop("metadata", None) or {}).get("user_id")
    if user is not None:
        out["metadata"] = {"user_id": user}
    if "tools" in out:
        out["tools"] = [
            {k: v for k, v in t.items() if k != "cache_control" and (k, v) != ("type", "custom")}
            for t in out["tools"]
        ]
    else:
        out.pop("tool_choice", None)
    if "temperature" in out:
        out["temperature"] = float(out["temperature"])
    return out


def _canon_openai_usage(usage: Mapping[str, Any]) -> Ev:
    details = usage.get("prompt_tokens_details") or {}
    return {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "total_tokens": usage["total_tokens"],
        "cached_tokens": details.get("cached_tokens") or 0,
    }


def canon_openai_completion(completion: Mapping[str, Any], parsed: bool = False) -> Ev:
    """A chat.completion without what Anthropic has no counterpart for. ``parsed``
    compares tool-call arguments as JSON values (streams fragment them freely)."""
    if "error" in completion and not completion.get("choices"):
        return {"error": dict(completion["error"])}
    (choice,) = completion["choices"]
    msg = choice["message"]
    reply: Ev = {"role": msg.get("role") or "assistant", "content": msg.get("content") or None}
    if msg.get("refusal"):
        reply["refusal"] = msg["refusal"]
    if msg.get("tool_calls"):
        reply["tool_calls"] = [_canon_call(c, parsed) for c in msg["tool_calls"]]
    for key in (REASONING_KEY, THINKING_KEY):
        if msg.get(key):
            reply[key] = msg[key]
    out: Ev = {
        "id": completion["id"],
        "object": completion["object"],
        "model": completion["model"],
        "choices": [{"index": 0, "message": reply, "finish_reason": choice["finish_reason"]}],
    }
    if completion.get("usage") is not None:
        out["usage"] = _canon_openai_usage(completion["usage"])
    return out


def _canon_anthropic_usage(usage: Mapping[str, Any]) -> Ev:
    return {
        "input_tokens": usage["input_tokens"],
        "output_tokens": usage["output_tokens"],
        "cache_read_input_tokens": usage.get("cache_read_input_tokens") or 0,
        "cache_creation_input_tokens": usage.get("cache_creation_input_tokens") or 0,
    }


def canon_anthropic_message(message: Mapping[str, Any]) -> Ev:
    """A Message without what OpenAI has no counterpart for; adjacent text blocks
    merge (OpenAI content is one string)."""
    if message.get("type") == "error":
        error = message["error"]
        return {"type": "error", "error": {"type": error["type"], "message": error["message"]}}
    content: list[Ev] = []
    for block in message["content"]:
        if block["type"] == "text":
            if not block["text"]:
                continue
            if content and content[-1]["type"] == "text":
                content[-1] = {"type": "text", "text": content[-1]["text"] + block["text"]}
            else:
                content.append({"type": "text", "text": block["text"]})
        elif block["type"] == "tool_use":
            content.append({k: block[k] for k in ("type", "id", "name", "input")})
        else:
            content.append(dict(block))
    return {
        "id": message["id"],
        "type": "message",
        "role": "assistant",
        "model": message["model"],
        "content": content,
        "stop_reason": message["stop_reason"],
        "stop_sequence": message.get("stop_sequence"),
        "usage": _canon_anthropic_usage(message["usage"]),
    }


def via_openai(message: Ev) -> Ev:
    """A canonical Anthropic message as it comes back from a trip through OpenAI:
    indistinguishable stop reasons collapse, the matched stop sequence is lost, and
    cache writes come back as plain input tokens."""
    if message.get("type") == "error":
        return message
    out = copy.deepcopy(message)
    out["stop_reason"] = STOP_REASON_VIA_OPENAI.get(out["stop_reason"], out["stop_reason"])
    out["stop_sequence"] = None
    usage = out["usage"]
    usage["input_tokens"] += usage["cache_creation_input_tokens"]
    usage["cache_creation_input_tokens"] = 0
    return out


# ================================================================ validation with the SDK types


def _drain(value: Any) -> Any:
    """Force pydantic's lazy Iterable validators so every element is checked."""
    if isinstance(value, dict):
        return {k: _drain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_drain(v) for v in value]
    if isinstance(value, Iterator):
        return [_drain(v) for v in value]
    return value


def valid_openai_request(body: Ev) -> Ev:
    _drain(_OPENAI_REQUEST.validate_python(copy.deepcopy(body)))
    return body


def valid_anthropic_request(body: Ev) -> Ev:
    _drain(_ANTHROPIC_REQUEST.validate_python(copy.deepcopy(body)))
    return body


def valid_openai_response(body: Ev) -> Ev:
    if "error" in body:
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
    else:
        ChatCompletion.model_validate(body)
    return body


def valid_anthropic_response(body: Ev) -> Ev:
    if body.get("type") == "error":
        ErrorResponse.model_validate(body)
    else:
        Message.model_validate(body)
    return body


# ================================================================ streams: run, check, reassemble


def run(
    translator: AnthropicToOpenAIStream | OpenAIToAnthropicStream, events: Iterable[Ev]
) -> list[Ev]:
    out: list[Ev] = []
    for event in events:
        out += translator.feed(copy.deepcopy(event))
    return out + translator.finish()


def check_anthropic_stream(
    events: list[Ev], *, error: bool = False, full_usage: bool = True
) -> None:
    """One message_start first (with usage), blocks started, delta'd and stopped in
    order with indexes 0, 1, 2…, then one message_delta (stop_reason and the final
    usage: all four counts unless ``full_usage`` is off, as upstreams may send only
    output_tokens) and message_stop last; or, for a failing stream, the error event
    last."""
    for event in events:
        if event["type"] == "error":
            ErrorResponse.model_validate(event)
        elif event["type"] != "ping":  # not in the SDK's union; clients skip it
            _ANTHROPIC_EVENT.validate_python(event)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start"
    assert kinds.count("message_start") == 1
    usage = events[0]["message"]["usage"]
    assert isinstance(usage["input_tokens"], int)
    assert isinstance(usage["output_tokens"], int)
    if error:
        assert kinds[-1] == "error"
        assert kinds.count("error") == 1
        assert "message_delta" not in kinds
        assert "message_stop" not in kinds
        body = events[1:-1]
    else:
        assert kinds[-1] == "message_stop"
        assert kinds.count("message_stop") == 1
        assert kinds.count("message_delta") == 1
        assert kinds[-2] == "message_delta"
        final = events[-2]
        assert final["delta"]["stop_reason"] is not None
        assert "output_tokens" in final["usage"]
        if full_usage:
            assert set(final["usage"]) == {
                "input_tokens",
                "output_tokens",
                "cache_read_input_tokens",
                "cache_creation_input_tokens",
            }
        body = events[1:-2]
    open_index = _check_block_nesting(body)
    if not error:
        assert open_index is None


def _check_block_nesting(events: list[Ev]) -> int | None:
    """Blocks open one at a time with indexes 0, 1, 2…; deltas and stops name the
    open one. Returns the block left open, if any."""
    open_index: int | None = None
    next_index = 0
    for event in events:
        kind = event["type"]
        if kind == "content_block_start":
            assert open_index is None, "a block starts while another is open"
            assert event["index"] == next_index
            open_index, next_index = event["index"], next_index + 1
        elif kind == "content_block_delta":
            assert event["index"] == open_index
        elif kind == "content_block_stop":
            assert event["index"] == open_index
            open_index = None
        else:
            assert kind == "ping", kind
    return open_index


def _check_tool_call_deltas(chunks: list[Ev]) -> None:
    seen: dict[int, str] = {}
    for chunk in chunks:
        for call in chunk["choices"][0]["delta"].get("tool_calls") or []:
            assert isinstance(call["index"], int)
            if call["index"] not in seen:
                assert call["index"] == len(seen), "tool-call indexes in order of appearance"
                assert call["id"], "the first delta of a call has its id"
                assert call["function"]["name"], "the first delta of a call has its name"
                seen[call["index"]] = call["id"]
            elif call.get("id"):
                assert call["id"] == seen[call["index"]]


def check_openai_stream(chunks: list[Ev], *, include_usage: bool, error: bool = False) -> None:
    """The first chunk with a choice carries the role (and no other does), every
    tool-call delta has an index, indexes appear in order 0..n-1, the first delta of
    each call has its id and name, exactly one chunk has a finish_reason, and with
    include_usage the last chunk has ``choices: []`` and the usage. A failing stream
    ends with the error payload instead (no finish_reason, no usage chunk)."""
    if error:
        assert set(chunks[-1]) == {"error"}
        body = chunks[:-1]
    else:
        body = chunks
    for chunk in body:
        ChatCompletionChunk.model_validate(chunk)
    assert len({(c["id"], c["model"], c["created"]) for c in body}) <= 1
    with_choices = [c for c in body if c["choices"]]
    for chunk in with_choices:
        assert [choice["index"] for choice in chunk["choices"]] == [0]
    roles = [c for c in with_choices if "role" in c["choices"][0]["delta"]]
    assert roles == with_choices[:1]
    if roles:
        assert roles[0]["choices"][0]["delta"]["role"] == "assistant"
    _check_tool_call_deltas(with_choices)
    finishes = [c for c in with_choices if c["choices"][0]["finish_reason"]]
    if error:
        assert finishes == []
        assert all(c.get("usage") is None for c in body)
        return
    assert len(finishes) == 1
    assert finishes[0] is with_choices[-1]
    if include_usage:
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] is not None
        assert all(c["usage"] is None for c in chunks[:-1])
    else:
        assert all(c.get("usage") is None for c in chunks)


def _add_tool_fragments(calls: list[Ev], by_index: dict[int, Ev], fragments: list[Ev]) -> None:
    for fragment in fragments:
        index, call_id = fragment.get("index"), fragment.get("id")
        if index is not None and index in by_index:
            call = by_index[index]
        elif index is None and not call_id and calls:
            call = calls[-1]
        else:
            call = {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            calls.append(call)
            if index is not None:
                by_index[index] = call
        function = fragment.get("function") or {}
        call["id"] = call["id"] or call_id or ""
        call["function"]["name"] = call["function"]["name"] or function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""


def assemble_openai(chunks: list[Ev]) -> Ev:
    """What a client accumulates from chunks, as a chat.completion (plus ``error``).
    A tool-call delta without an index is matched as OpenAI-compatible servers mean
    it: a new id starts a call, anything else continues the latest one."""
    content: list[str] = []
    reasoning: list[str] = []
    thinking: list[Ev] = []
    calls: list[Ev] = []
    by_index: dict[int, Ev] = {}
    head: Ev = {}
    finish = usage = error = None
    for chunk in chunks:
        if "error" in chunk:
            error = chunk["error"]
            continue
        head = head or chunk
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            content.append(delta.get("content") or "")
            reasoning.append(delta.get(REASONING_KEY) or "")
            thinking += delta.get(THINKING_KEY) or []
            _add_tool_fragments(calls, by_index, delta.get("tool_calls") or [])
            finish = choice.get("finish_reason") or finish
    message: Ev = {"role": "assistant", "content": "".join(content) or None}
    if calls:
        message["tool_calls"] = calls
    if "".join(reasoning):
        message[REASONING_KEY] = "".join(reasoning)
    if thinking:
        message[THINKING_KEY] = thinking
    out: Ev = {
        "id": head.get("id"),
        "object": "chat.completion",
        "model": head.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    if usage is not None:
        out["usage"] = usage
    if error is not None:
        out["error"] = error
    return out


def openai_arguments(chunks: list[Ev]) -> list[str]:
    """Each tool call's concatenated argument fragments, in order of appearance."""
    calls = assemble_openai(chunks)["choices"][0]["message"].get("tool_calls") or []
    return [c["function"]["arguments"] for c in calls]


def assemble_anthropic(events: list[Ev]) -> Ev:
    """What a client accumulates from events, as a Message (plus ``error``)."""
    message: Ev = {}
    blocks: dict[int, Ev] = {}
    partial: dict[int, str] = {}
    usage: Ev = {}
    for event in events:
        kind = event["type"]
        if kind == "message_start":
            message = copy.deepcopy(event["message"])
            usage = dict(message["usage"])
        elif kind == "content_block_start":
            blocks[event["index"]] = copy.deepcopy(event["content_block"])
            partial[event["index"]] = ""
        elif kind == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            if delta["type"] == "input_json_delta":
                partial[event["index"]] += delta["partial_json"]
            else:
                key = {"text_delta": "text", "thinking_delta": "thinking"}.get(
                    delta["type"], "signature"
                )
                block[key] = block.get(key, "") + delta[key]
        elif kind == "content_block_stop":
            block = blocks[event["index"]]
            if block["type"] == "tool_use" and partial[event["index"]]:
                block["input"] = json.loads(partial[event["index"]])
        elif kind == "message_delta":
            message["stop_reason"] = event["delta"]["stop_reason"]
            message["stop_sequence"] = event["delta"].get("stop_sequence")
            usage |= {k: v for k, v in (event.get("usage") or {}).items() if v is not None}
        elif kind == "error":
            message["error"] = event["error"]
    message["content"] = [blocks[i] for i in sorted(blocks)]
    message["usage"] = usage
    return message


def anthropic_partial_json(events: list[Ev]) -> list[str]:
    """Each tool_use block's concatenated partial_json, in block order."""
    tools = {
        e["index"]: ""
        for e in events
        if e["type"] == "content_block_start" and e["content_block"]["type"] == "tool_use"
    }
    for event in events:
        if event["type"] == "content_block_delta" and event["index"] in tools:
            tools[event["index"]] += event["delta"]["partial_json"]
    return [tools[i] for i in sorted(tools)]


def tool_uses(message: Mapping[str, Any]) -> list[Ev]:
    return [b for b in message["content"] if b["type"] == "tool_use"]


# ================================================================ the fixtures themselves


def test_the_translation_guide_names_every_field_left_behind() -> None:
    """docs/translation.md is the user's list of what does not cross; it must not drift."""
    guide = (Path(__file__).parents[2] / "docs" / "translation.md").read_text()
    left_behind = OPENAI_ONLY_REQUEST_KEYS | ANTHROPIC_ONLY_REQUEST_KEYS | ANTHROPIC_ONLY_BLOCK_KEYS
    assert sorted(k for k in left_behind | OPENAI_ONLY_RESPONSE_KEYS if f"`{k}" not in guide) == []


def test_every_required_case_has_a_fixture() -> None:
    assert set(CASES) >= {
        "plain_text",
        "system_prompt",
        "multi_turn",
        "image_url_and_base64",
        "single_tool_call",
        "parallel_tool_calls",
        "text_and_tool_call",
        "tool_result_turn",
        "tool_call_deltas_without_index",
        "interleaved_parallel_tool_calls",
        "thinking_tool_use",
        "thinking_carried_across_turns",
        "stop_sequence",
        "max_tokens_length",
        "error_mid_stream",
        "error_before_content",
        "cache_write_and_read",
        "cache_read_openai",
    }
    for case in CASES.values():
        assert {
            "openai_request",
            "anthropic_request",
            "openai_response",
            "anthropic_response",
            "openai_stream",
            "anthropic_stream",
        } <= set(case)


@pytest.mark.parametrize("name", CASES)
def test_fixtures_are_valid_api_documents(name: str) -> None:
    case = load(name)
    valid_openai_request(case["openai_request"])
    valid_anthropic_request(case["anthropic_request"])
    valid_openai_response(case["openai_response"])
    valid_anthropic_response(case["anthropic_response"])
    strict = "tool_call_index_omitted" not in case.get("quirks", [])
    check_anthropic_stream(
        case["anthropic_stream"], error=bool(case.get("error")), full_usage=False
    )
    if strict:
        check_openai_stream(
            case["openai_stream"], include_usage=True, error=bool(case.get("error"))
        )


@pytest.mark.parametrize("name", OK_CASES)
def test_fixture_streams_agree_with_fixture_responses(name: str) -> None:
    case = load(name)
    assert canon_openai_completion(assemble_openai(case["openai_stream"]), True) == (
        canon_openai_completion(case["openai_response"], True)
    )
    assert canon_anthropic_message(assemble_anthropic(case["anthropic_stream"])) == (
        canon_anthropic_message(case["anthropic_response"])
    )


# ================================================================ requests


def expected_openai_request(case: Ev) -> Ev:
    """The golden OpenAI request as it comes from Anthropic: Anthropic always has a
    max_tokens, so an OpenAI request without one gets the Anthropic value (the default
    ``DEFAULT_MAX_TOKENS`` when it came from OpenAI)."""
    body = copy.deepcopy(case["openai_request"])
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_completion_tokens"] = case["anthropic_request"]["max_tokens"]
    return canon_openai_request(body)


@pytest.mark.parametrize("name", CASES)
def test_request_openai_to_anthropic(name: str) -> None:
    case = load(name)
    source = copy.deepcopy(case["openai_request"])
    out = valid_anthropic_request(openai_chat_to_anthropic(source))
    assert source == case["openai_request"], "the input is left untouched"
    assert canon_anthropic_request(out) == canon_anthropic_request(case["anthropic_request"])
    if not any(source.get(k) is not None for k in ("max_tokens", "max_completion_tokens")):
        assert out["max_tokens"] == DEFAULT_MAX_TOKENS
    assert "stream_options" not in out


@pytest.mark.parametrize("name", CASES)
def test_request_anthropic_to_openai(name: str) -> None:
    case = load(name)
    source = copy.deepcopy(case["anthropic_request"])
    out = valid_openai_request(anthropic_to_openai_chat(source))
    assert source == case["anthropic_request"], "the input is left untouched"
    assert canon_openai_request(out) == expected_openai_request(case)
    if source.get("stream"):
        assert out["stream_options"] == {"include_usage": True}
    else:
        assert "stream_options" not in out


@pytest.mark.parametrize("name", CASES)
def test_request_round_trips_keep_their_meaning(name: str) -> None:
    case = load(name)
    openai_again = anthropic_to_openai_chat(openai_chat_to_anthropic(case["openai_request"]))
    assert canon_openai_request(openai_again) == expected_openai_request(case)
    anthropic_again = openai_chat_to_anthropic(anthropic_to_openai_chat(case["anthropic_request"]))
    assert canon_anthropic_request(anthropic_again) == (
        canon_anthropic_request(case["anthropic_request"])
    )


# ================================================================ responses


@pytest.mark.parametrize("name", CASES)
def test_response_anthropic_to_openai(name: str) -> None:
    case = load(name)
    out = valid_openai_response(anthropic_message_to_openai(case["anthropic_response"]))
    assert canon_openai_completion(out) == canon_openai_completion(case["openai_response"])
    if not case.get("error"):
        calls = out["choices"][0]["message"].get("tool_calls") or []
        inputs = [b["input"] for b in tool_uses(case["anthropic_response"])]
        assert [json.loads(c["function"]["arguments"]) for c in calls] == inputs


@pytest.mark.parametrize("name", CASES)
def test_response_openai_to_anthropic(name: str) -> None:
    case = load(name)
    out = valid_anthropic_response(openai_completion_to_anthropic(case["openai_response"]))
    assert canon_anthropic_message(out) == via_openai(
        canon_anthropic_message(case["anthropic_response"])
    )


@pytest.mark.parametrize("name", CASES)
def test_response_round_trips(name: str) -> None:
    case = load(name)
    anthropic = case["anthropic_response"]
    again = openai_completion_to_anthropic(anthropic_message_to_openai(anthropic))
    assert canon_anthropic_message(again) == via_openai(canon_anthropic_message(anthropic))
    completion = case["openai_response"]
    back = anthropic_message_to_openai(openai_completion_to_anthropic(completion))
    assert canon_openai_completion(back, True) == canon_openai_completion(completion, True)


# ================================================================ streams


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("name", OK_CASES)
def test_stream_anthropic_to_openai(name: str, include_usage: bool) -> None:
    case = load(name)
    chunks = run(AnthropicToOpenAIStream(include_usage=include_usage), case["anthropic_stream"])
    check_openai_stream(chunks, include_usage=include_usage)
    got = canon_openai_completion(assemble_openai(chunks), True)
    non_streamed = canon_openai_completion(
        anthropic_message_to_openai(case["anthropic_response"]), True
    )
    golden = canon_openai_completion(case["openai_response"], True)
    if not include_usage:
        non_streamed.pop("usage")
        golden.pop("usage")
    assert got == non_streamed
    assert got == golden


@pytest.mark.parametrize("name", OK_CASES)
def test_stream_openai_to_anthropic(name: str) -> None:
    case = load(name)
    events = run(OpenAIToAnthropicStream(), case["openai_stream"])
    check_anthropic_stream(events)
    got = canon_anthropic_message(assemble_anthropic(events))
    non_streamed = openai_completion_to_anthropic(case["openai_response"])
    assert got == canon_anthropic_message(non_streamed)
    assert got == via_openai(canon_anthropic_message(case["anthropic_response"]))


@pytest.mark.parametrize("name", OK_CASES)
def test_streamed_tool_arguments_reassemble_exactly(name: str) -> None:
    """No fragment is dropped or reordered: each call's streamed arguments are the
    concatenation of the source's fragments for that call, and parse to the source's
    input / arguments."""
    case = load(name)
    source_partials = anthropic_partial_json(case["anthropic_stream"])
    chunks = run(AnthropicToOpenAIStream(include_usage=True), case["anthropic_stream"])
    inputs = [b["input"] for b in tool_uses(case["anthropic_response"])]
    got = openai_arguments(chunks)
    assert len(got) == len(inputs)
    for arguments, partial, value in zip(got, source_partials, inputs, strict=True):
        assert arguments == (partial or "{}")
        assert json.loads(arguments) == value

    source_arguments = openai_arguments(case["openai_stream"])
    events = run(OpenAIToAnthropicStream(), case["openai_stream"])
    calls = case["openai_response"]["choices"][0]["message"].get("tool_calls") or []
    got = anthropic_partial_json(events)
    assert len(got) == len(calls)
    for partial, arguments, call in zip(got, source_arguments, calls, strict=True):
        assert partial == arguments
        assert json.loads(partial) == json.loads(call["function"]["arguments"])
    ids = [b["id"] for b in tool_uses(assemble_anthropic(events))]
    assert ids == [c["id"] for c in calls]


@pytest.mark.parametrize("name", OK_CASES)
def test_stop_and_finish_reasons_map_exactly(name: str) -> None:
    case = load(name)
    finish = case["openai_response"]["choices"][0]["finish_reason"]
    stop = case["anthropic_response"]["stop_reason"]
    stop_via_openai = STOP_REASON_VIA_OPENAI.get(stop, stop)
    has_tools = bool(tool_uses(case["anthropic_response"]))
    assert (finish == "tool_calls") == has_tools
    assert (stop == "tool_use") == has_tools

    completion = anthropic_message_to_openai(case["anthropic_response"])
    assert completion["choices"][0]["finish_reason"] == finish
    assert openai_completion_to_anthropic(case["openai_response"])["stop_reason"] == (
        stop_via_openai
    )
    chunks = run(AnthropicToOpenAIStream(), case["anthropic_stream"])
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == finish
    events = run(OpenAIToAnthropicStream(), case["openai_stream"])
    assert events[-2]["delta"]["stop_reason"] == stop_via_openai


TOOL_CASES = [n for n in OK_CASES if tool_uses(CASES[n]["anthropic_response"])]


@pytest.mark.parametrize("name", TOOL_CASES)
def test_tool_use_never_ends_with_stop(name: str) -> None:
    """Upstreams that end a tool-call turn with stop / end_turn (some OpenAI-compatible
    servers do) still give tool_calls / tool_use."""
    case = load(name)
    completion = case["openai_response"]
    completion["choices"][0]["finish_reason"] = "stop"
    assert openai_completion_to_anthropic(completion)["stop_reason"] == "tool_use"
    stream = case["openai_stream"]
    for chunk in stream:
        for choice in chunk["choices"]:
            if choice["finish_reason"]:
                choice["finish_reason"] = "stop"
    assert run(OpenAIToAnthropicStream(), stream)[-2]["delta"]["stop_reason"] == "tool_use"

    message = case["anthropic_response"]
    message["stop_reason"] = "end_turn"
    assert anthropic_message_to_openai(message)["choices"][0]["finish_reason"] == "tool_calls"
    events = case["anthropic_stream"]
    for event in events:
        if event["type"] == "message_delta":
            event["delta"]["stop_reason"] = "end_turn"
    chunks = run(AnthropicToOpenAIStream(), events)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("name", OK_CASES)
def test_streamed_usage_equals_non_streamed_usage(name: str) -> None:
    """For each protocol pair, the final usage of the translated stream is the usage of
    the translated response, cache tokens included."""
    case = load(name)
    chunks = run(AnthropicToOpenAIStream(include_usage=True), case["anthropic_stream"])
    non_streamed = anthropic_message_to_openai(case["anthropic_response"])
    assert chunks[-1]["usage"] == non_streamed["usage"]
    assert _canon_openai_usage(chunks[-1]["usage"]) == (
        _canon_openai_usage(case["openai_response"]["usage"])
    )

    events = run(OpenAIToAnthropicStream(), case["openai_stream"])
    anthropic = openai_completion_to_anthropic(case["openai_response"])
    assert events[-2]["usage"] == anthropic["usage"]
    assert (
        events[-2]["usage"]
        == (via_openai(canon_anthropic_message(case["anthropic_response"]))["usage"])
    )


# ================================================================ thinking across a turn

THINKING_RESPONSE_CASES = [
    n
    for n in OK_CASES
    if any(b["type"] in THINKING_TYPES for b in CASES[n]["anthropic_response"]["content"])
]
THINKING_REQUEST_CASES = [
    n
    for n, case in CASES.items()
    if any(
        isinstance(m["content"], list) and any(b["type"] in THINKING_TYPES for b in m["content"])
        for m in case["anthropic_request"]["messages"]
    )
]


def _thinking_of(message: Mapping[str, Any]) -> list[Ev]:
    return [b for b in message["content"] if b["type"] in THINKING_TYPES]


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("name", THINKING_RESPONSE_CASES)
def test_thinking_survives_a_turn_through_openai_byte_for_byte(name: str, streamed: bool) -> None:
    """Anthropic answer → OpenAI client (which hands the assistant message back as it
    got it, JSON over the wire) → next Anthropic request: the thinking blocks and their
    signatures are the upstream's bytes."""
    case = load(name)
    if streamed:
        completion = assemble_openai(run(AnthropicToOpenAIStream(), case["anthropic_stream"]))
    else:
        completion = anthropic_message_to_openai(case["anthropic_response"])
    reply = orjson.loads(orjson.dumps(completion))["choices"][0]["message"]
    messages = [*case["openai_request"]["messages"], reply]
    messages += [
        {"role": "tool", "tool_call_id": c["id"], "content": "ok"}
        for c in reply.get("tool_calls") or []
    ]
    messages += [] if reply.get("tool_calls") else [{"role": "user", "content": "Thanks."}]
    next_request = openai_chat_to_anthropic(case["openai_request"] | {"messages": messages})
    assistant = [m for m in next_request["messages"] if m["role"] == "assistant"][-1]
    assert orjson.dumps(_thinking_of(assistant)) == orjson.dumps(
        _thinking_of(case["anthropic_response"])
    )


@pytest.mark.parametrize("name", THINKING_REQUEST_CASES)
def test_thinking_in_requests_byte_for_byte(name: str) -> None:
    case = load(name)
    source = case["anthropic_request"]
    wanted = [_thinking_of(m) for m in source["messages"] if m["role"] == "assistant"]
    openai_body = orjson.loads(orjson.dumps(anthropic_to_openai_chat(source)))
    for body in (openai_body, case["openai_request"]):
        back = openai_chat_to_anthropic(body)
        got = [_thinking_of(m) for m in back["messages"] if m["role"] == "assistant"]
        assert orjson.dumps(got) == orjson.dumps(wanted)


def test_carried_thinking_is_the_previous_answers() -> None:
    """thinking_carried_across_turns hands back thinking_tool_use's answer, in both APIs."""
    first, second = CASES["thinking_tool_use"], CASES["thinking_carried_across_turns"]
    assert (
        second["anthropic_request"]["messages"][1]["content"]
        == (first["anthropic_response"]["content"])
    )
    handed_back = second["openai_request"]["messages"][1]
    answered = first["openai_response"]["choices"][0]["message"]
    assert _canon_openai_message(handed_back) == _canon_openai_message(answered)


# ================================================================ errors


@pytest.mark.parametrize("name", ERROR_CASES)
def test_error_bodies_both_ways(name: str) -> None:
    case = load(name)
    assert anthropic_message_to_openai(case["anthropic_response"]) == case["openai_response"]
    assert openai_completion_to_anthropic(case["openai_response"]) == (
        canon_anthropic_message(case["anthropic_response"])
    )


def _without_pings(events: list[Ev]) -> list[Ev]:
    return [e for e in events if e["type"] != "ping"]


@pytest.mark.parametrize("name", ERROR_CASES)
def test_error_mid_stream_both_ways(name: str) -> None:
    case = load(name)
    translator = AnthropicToOpenAIStream(include_usage=True)
    chunks = run(translator, case["anthropic_stream"])
    check_openai_stream(chunks, include_usage=True, error=True)
    assert chunks[-1] == case["openai_stream"][-1]
    assert (
        assemble_openai(chunks)["choices"][0]["message"]
        == (assemble_openai(case["openai_stream"])["choices"][0]["message"])
    )
    assert translator.feed({"type": "message_stop"}) == []
    assert translator.finish() == []

    converse = OpenAIToAnthropicStream()
    events = run(converse, case["openai_stream"])
    check_anthropic_stream(events, error=True)
    golden = _without_pings(case["anthropic_stream"])
    got = _without_pings(events)
    # the same events, but for the input count the OpenAI stream never told
    assert got[1:] == golden[1:]
    assert got[0]["message"] | {"usage": None} == golden[0]["message"] | {"usage": None}
    assert converse.finish() == []


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ({"message": "m", "type": "server_error", "param": None, "code": None}, "api_error"),
        ({"message": "m", "type": "requests", "code": "rate_limit_exceeded"}, "rate_limit_error"),
        (
            {"message": "m", "type": "insufficient_quota", "code": "insufficient_quota"},
            "billing_error",
        ),
        (
            {"message": "m", "type": "invalid_request_error", "code": "invalid_api_key"},
            "authentication_error",
        ),
        (
            {"message": "m", "type": "invalid_request_error", "code": "model_not_found"},
            "not_found_error",
        ),
        ({"message": "m", "type": "invalid_request_error", "code": None}, "invalid_request_error"),
        ({"message": "m", "type": "overloaded_error"}, "overloaded_error"),
        ({"message": "m"}, "api_error"),
    ],
)
def test_openai_error_types_map_to_anthropic_types(error: Ev, kind: str) -> None:
    assert openai_error_to_anthropic({"error": error}) == {
        "type": "error",
        "error": {"type": kind, "message": "m"},
    }
    events = OpenAIToAnthropicStream().feed({"error": error})
    assert events[-1] == {"type": "error", "error": {"type": kind, "message": "m"}}


# ================================================================ interleaved tool calls


def _chunk(delta: Ev, finish: str | None = None, usage: Ev | None = None) -> Ev:
    base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    if usage is not None:
        return base | {"choices": [], "usage": usage}
    return base | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in itertools.pairwise([0, *points, len(text)])]


_json_objects = st.dictionaries(
    st.text(max_size=5),
    st.none() | st.booleans() | st.integers(-(10**9), 10**9) | st.text(max_size=8),
    max_size=4,
).map(lambda d: json.dumps(d, ensure_ascii=False))


@given(
    st.lists(
        st.tuples(_json_objects, st.lists(st.integers(0, 200), max_size=6)),
        min_size=2,
        max_size=4,
    ),
    st.data(),
)
def test_any_interleaving_of_parallel_tool_calls_is_lossless(
    calls: list[tuple[str, list[int]]], data: st.DataObject
) -> None:
    """Fragments of parallel calls in any order (each call's own fragments in order),
    several in one chunk or not, text anywhere: every call comes out whole, as one
    block, in order of first appearance, and the stream stays well-formed."""
    queues: list[list[Ev]] = []
    for i, (arguments, cuts) in enumerate(calls):
        fragments = _split(arguments, cuts)
        head = {"index": i, "id": f"call_{i}", "type": "function"}
        head["function"] = {"name": f"fn_{i}", "arguments": fragments[0]}
        queues.append([head] + [{"index": i, "function": {"arguments": f}} for f in fragments[1:]])
    pending = [0] * len(queues)
    deltas: list[Ev] = []
    texts: list[str] = []
    order: list[int] = []  # calls in order of first appearance
    while any(pending[i] < len(q) for i, q in enumerate(queues)):
        live = [i for i, q in enumerate(queues) if pending[i] < len(q)]
        picked = data.draw(st.lists(st.sampled_from(live), min_size=1, max_size=3))
        group = []
        for i in picked:
            if pending[i] < len(queues[i]):
                group.append(queues[i][pending[i]])
                pending[i] += 1
                if i not in order:
                    order.append(i)
        delta: Ev = {"tool_calls": group}
        if data.draw(st.booleans()) and data.draw(st.booleans()):
            delta["content"] = f"<{len(texts)}>"
            texts.append(delta["content"])
        deltas.append(delta)
    chunks = [_chunk({"role": "assistant", "content": ""})]
    chunks += [_chunk(d) for d in deltas]
    chunks += [
        _chunk({}, "tool_calls"),
        _chunk({}, usage={"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}),
    ]
    events = run(OpenAIToAnthropicStream(), chunks)
    check_anthropic_stream(events)
    message = assemble_anthropic(events)
    partials = anthropic_partial_json(events)
    assert [(b["id"], b["name"]) for b in tool_uses(message)] == [
        (f"call_{i}", f"fn_{i}") for i in order
    ]
    assert partials == [calls[i][0] for i in order]
    text = "".join(b["text"] for b in message["content"] if b["type"] == "text")
    assert text == "".join(texts)
    assert message["stop_reason"] == "tool_use"
    assert message["usage"]["output_tokens"] == 7


def test_fragments_after_the_finish_reason_are_not_lost() -> None:
    """Blocks close only when the stream ends, so a server that sends a fragment after
    its finish_reason chunk (before [DONE]) loses nothing."""
    chunks = [
        _chunk(
            {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]}
        ),
        _chunk(
            {"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{"}}]}
        ),
        _chunk({}, "tool_calls"),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"x": 1}'}}]}),
        _chunk({"tool_calls": [{"index": 1, "function": {"arguments": "}"}}]}),
    ]
    events = run(OpenAIToAnthropicStream(), chunks)
    check_anthropic_stream(events)
    assert anthropic_partial_json(events) == ['{"x": 1}', "{}"]


def test_text_after_a_tool_call_is_held_not_lost() -> None:
    chunks = [
        _chunk({"content": "Checking. "}),
        _chunk(
            {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]}
        ),
        _chunk({"content": "(one moment)"}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}),
        _chunk({}, "tool_calls"),
    ]
    events = run(OpenAIToAnthropicStream(), chunks)
    check_anthropic_stream(events)
    message = assemble_anthropic(events)
    assert [(b["type"], b.get("text"), b.get("input")) for b in message["content"]] == [
        ("text", "Checking. ", None),
        ("tool_use", None, {}),
        ("text", "(one moment)", None),
    ]
    assert message["stop_reason"] == "tool_use"


# ================================================================ smaller fixes found on the way


def test_tool_choice_without_tools_is_dropped_towards_openai() -> None:
    """OpenAI refuses tool_choice (and parallel_tool_calls) without tools."""
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    }
    out = valid_openai_request(anthropic_to_openai_chat(body))
    assert "tool_choice" not in out
    assert "parallel_tool_calls" not in out


def test_null_max_completion_tokens_falls_back_to_max_tokens() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    assert openai_chat_to_anthropic(body | {"max_completion_tokens": None})["max_tokens"] == 5


def test_message_start_reports_the_first_chunks_usage_split_like_anthropic() -> None:
    """Servers that report usage on every chunk: message_start counts cached prompt
    tokens as cache reads, not as plain input (the final message_delta does too)."""
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 0,
        "total_tokens": 100,
        "prompt_tokens_details": {"cached_tokens": 60},
    }
    events = OpenAIToAnthropicStream().feed(_chunk({"role": "assistant"}) | {"usage": usage})
    assert events[0]["message"]["usage"] == {
        "input_tokens": 40,
        "output_tokens": 0,
        "cache_read_input_tokens": 60,
        "cache_creation_input_tokens": 0,
    }


def test_server_tool_input_is_not_sent_as_a_tool_call() -> None:
    """input_json_delta of a block that is not a (client) tool_use has no OpenAI index."""
    translator = AnthropicToOpenAIStream()
    start = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    translator.feed({"type": "content_block_start", "index": 0, "content_block": start})
    delta = {"type": "input_json_delta", "partial_json": '{"query": "x"}'}
    assert translator.feed({"type": "content_block_delta", "index": 0, "delta": delta}) == []
