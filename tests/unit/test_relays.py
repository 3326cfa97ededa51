"""Stream relays: bytes in, the client's bytes out, usage counted, however reads split."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from modelpool.errors import UpstreamStreamBroken
from modelpool.providers.translate import Usage
from modelpool.relays import (
    AnthropicPassthrough,
    AnthropicToOpenAI,
    OpenAIPassthrough,
    OpenAIToAnthropic,
    StreamRelay,
)
from modelpool.sse import EventReader, data_event, named_event

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [choice],
    } | extra


def openai_stream(*, usage_chunk: bool) -> bytes:
    events = [chunk("Hel", usage=None), chunk("lo", usage=None), chunk(finish="stop", usage=None)]
    if usage_chunk:
        events.append(
            {"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": USAGE}
        )
    return b"".join(data_event(e) for e in events) + b"data: [DONE]\n\n"


def anthropic_stream() -> bytes:
    events = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 7, "output_tokens": 1, "cache_read_input_tokens": 2}}}),
        ("ping", {"type": "ping"}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hello"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 3}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    return b"".join(named_event(kind, data) for kind, data in events)


def splits(raw: bytes) -> list[list[bytes]]:
    """The stream whole, byte by byte, and cut at a few awkward places."""
    cuts = [[raw], [raw[i : i + 1] for i in range(len(raw))]]
    for size in (5, 17, 64):
        cuts.append([raw[i : i + size] for i in range(0, len(raw), size)])
    return cuts


def run(relay: StreamRelay, parts: list[bytes]) -> bytes:
    return b"".join(relay.feed(p) for p in parts) + relay.close()


def events_of(raw: bytes) -> list[tuple[str, Any]]:
    reader = EventReader()
    out = reader.feed(raw)
    assert reader.pending == b""
    return [(kind, data if data == b"[DONE]" else orjson.loads(data)) for kind, data in out]


@pytest.mark.parametrize("parts", splits(openai_stream(usage_chunk=True)))
def test_openai_passthrough_relays_bytes_unchanged_and_counts_usage(parts: list[bytes]) -> None:
    relay = OpenAIPassthrough("m", strip_usage=False)
    assert run(relay, parts) == b"".join(parts)
    assert relay.usage == Usage(input_tokens=7, output_tokens=3)


@pytest.mark.parametrize("parts", splits(openai_stream(usage_chunk=True)))
def test_usage_asked_for_the_client_is_counted_then_cut_out(parts: list[bytes]) -> None:
    relay = OpenAIPassthrough("m", strip_usage=True)
    assert run(relay, parts) == openai_stream(usage_chunk=False)
    assert relay.usage == Usage(input_tokens=7, output_tokens=3)


def test_stripping_relay_holds_only_an_unfinished_event() -> None:
    relay = OpenAIPassthrough("m", strip_usage=True)
    first = data_event(chunk("a"))
    assert relay.feed(first + first[:10]) == first
    assert relay.feed(first[10:]) == first


def test_stripping_relay_reads_crlf_streams() -> None:
    relay = OpenAIPassthrough("m", strip_usage=True)
    raw = openai_stream(usage_chunk=True).replace(b"\n", b"\r\n")
    out = run(relay, [raw])
    assert b'"usage":{' not in out
    assert out.endswith(b"data: [DONE]\n\n")
    assert relay.usage is not None


def test_an_endless_event_breaks_the_stream() -> None:
    relay = OpenAIPassthrough("m", strip_usage=True)
    relay.feed(b"data: " + b"x" * 1024)
    for _ in range(4094):  # just under the limit: held, nothing sent yet
        assert relay.feed(b"x" * 1024) == b""
    with pytest.raises(UpstreamStreamBroken, match="exceeds"):
        relay.feed(b"x" * 1024)


@pytest.mark.parametrize("parts", splits(anthropic_stream()))
def test_anthropic_passthrough_relays_bytes_unchanged_and_counts_usage(
    parts: list[bytes],
) -> None:
    relay = AnthropicPassthrough("claude")
    assert run(relay, parts) == anthropic_stream()
    assert relay.usage == Usage(input_tokens=7, output_tokens=3, cache_read_tokens=2)


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("parts", splits(anthropic_stream())[::2])
def test_anthropic_stream_becomes_openai_chunks(parts: list[bytes], include_usage: bool) -> None:
    relay = AnthropicToOpenAI("claude", include_usage=include_usage)
    events = events_of(run(relay, parts))

    assert events[-1] == ("message", b"[DONE]")
    chunks = [data for _, data in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert [f for f in finishes if f] == ["stop"]
    usage_chunks = [c for c in chunks if not c["choices"]]
    if include_usage:
        assert usage_chunks[0]["usage"]["prompt_tokens"] == 9
        assert usage_chunks[0]["usage"]["completion_tokens"] == 3
    else:
        assert usage_chunks == []
    assert relay.usage == Usage(input_tokens=7, output_tokens=3, cache_read_tokens=2)


@pytest.mark.parametrize("parts", splits(openai_stream(usage_chunk=True))[::2])
def test_openai_stream_becomes_anthropic_events(parts: list[bytes]) -> None:
    relay = OpenAIToAnthropic("m", input_tokens=5)
    events = events_of(run(relay, parts))

    kinds = [kind for kind, _ in events]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(kind == data["type"] for kind, data in events)
    assert events[0][1]["message"]["usage"]["input_tokens"] == 5
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "end_turn"
    assert final["usage"]["output_tokens"] == 3
    assert final["usage"]["input_tokens"] == 7
    assert relay.usage == Usage(input_tokens=7, output_tokens=3)


def test_a_truncated_upstream_stream_still_ends_well_formed() -> None:
    relay = OpenAIToAnthropic("m", input_tokens=5)
    out = relay.feed(data_event(chunk("Hel"))) + relay.close()
    kinds = [kind for kind, _ in events_of(out)]
    assert kinds[-2:] == ["message_delta", "message_stop"]


@pytest.mark.parametrize(
    ("relay", "garbage"),
    [
        (AnthropicToOpenAI("m", include_usage=False), b"event: message_start\ndata: {nope\n\n"),
        (OpenAIToAnthropic("m", input_tokens=0), b"data: {nope\n\n"),
        (AnthropicPassthrough("m"), b"event: message_delta\ndata: {nope\n\n"),
    ],
)
def test_garbage_from_the_upstream_breaks_the_stream(relay: StreamRelay, garbage: bytes) -> None:
    with pytest.raises(UpstreamStreamBroken, match="not JSON"):
        relay.feed(garbage)


def test_a_delta_for_a_block_never_started_breaks_the_stream() -> None:
    relay = AnthropicToOpenAI("m", include_usage=False)
    delta = {"type": "content_block_delta", "index": 3, "delta": {"type": "text_delta"}}
    with pytest.raises(UpstreamStreamBroken):
        relay.feed(named_event("content_block_delta", delta))


@pytest.mark.parametrize(
    ("relay", "shape"),
    [
        (OpenAIPassthrough("m", strip_usage=False), "openai"),
        (AnthropicToOpenAI("m", include_usage=False), "openai"),
        (AnthropicPassthrough("m"), "anthropic"),
        (OpenAIToAnthropic("m", input_tokens=0), "anthropic"),
    ],
)
def test_a_broken_stream_ends_with_an_error_event_in_the_clients_api(
    relay: StreamRelay, shape: str
) -> None:
    [(kind, data)] = events_of(relay.fail("upstream went away"))
    if shape == "openai":
        assert kind == "message"
        assert data["error"]["message"] == "upstream went away"
    else:
        assert kind == "error"
        assert data == {
            "type": "error",
            "error": {"type": "api_error", "message": "upstream went away"},
        }
