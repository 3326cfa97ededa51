"""Both APIs in, both APIs out: the daemon translating between OpenAI and Anthropic upstreams.

The fake upstreams validate every request against their API's public shape
(``api_shapes``), so a translation that produced an invalid body fails here.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fake_upstream import (
    CHAT,
    MESSAGES,
    FakeUpstream,
    Reply,
    anthropic_stream,
    error_json,
    openai_tool_stream,
)
from proxy_harness import API_KEY, CAPABILITIES, Daemon, StartDaemon, provider, read_sse

ANTHROPIC_CAN = {"chat", "stream", "tools", "vision", "json_mode"}
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
OPENAI_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": WEATHER["input_schema"],
    },
}


def config(*members: tuple[str, str, dict[str, Any]], **pool: Any) -> dict[str, Any]:
    """Pool ``p`` of (provider type, base url, model extras) members, tried in order."""
    providers, models = {}, {}
    for i, (kind, url, extra) in enumerate(members, start=1):
        providers[f"u{i}"] = provider(url, kind)
        capabilities = [c for c in CAPABILITIES if kind == "openai" or c in ANTHROPIC_CAN]
        models[f"m{i}"] = {
            "provider": f"u{i}",
            "upstream_model": f"up-m{i}",
            "capabilities": capabilities,
        } | extra
    pool = {"strategy": "priority", "members": list(models)} | pool
    return {"version": 1, "providers": providers, "models": models, "pools": {"p": pool}}


def anthropic_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "p",
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi"}],
    } | extra


def openai_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "p",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    } | extra


async def events(daemon: Daemon, path: str, body: dict[str, Any]) -> list[tuple[str, Any]]:
    async with daemon.http.post(path, json=body) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        raw = await read_sse(response)
    out = []
    for event in raw:
        lines = dict(line.split(b": ", 1) for line in event.raw.split(b"\n"))
        data = lines[b"data"]
        out.append(
            (
                lines.get(b"event", b"message").decode(),
                data if data == b"[DONE]" else orjson.loads(data),
            )
        )
    return out


@pytest.fixture
async def to_openai(start_daemon: StartDaemon, fake: FakeUpstream) -> Daemon:
    return await start_daemon(config(("openai", fake.base_url, {})))


@pytest.fixture
async def to_anthropic(start_daemon: StartDaemon, fake: FakeUpstream) -> Daemon:
    return await start_daemon(config(("anthropic", fake.root, {})))


# --------------------------------------------------------------- Anthropic client, OpenAI model


async def test_a_message_is_served_by_an_openai_model(
    to_openai: Daemon, fake: FakeUpstream
) -> None:
    async with to_openai.http.post("/v1/messages", json=anthropic_body()) as response:
        assert response.status == 200
        assert response.headers["x-modelpool-model"] == "m1"
        message = await response.json()

    [received] = fake.requests
    assert received.path == CHAT
    assert received.rejected is None
    assert received.json == {
        "model": "up-m1",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "max_completion_tokens": 64,
    }
    assert message["type"] == "message"
    assert message["role"] == "assistant"
    assert message["content"] == [{"type": "text", "text": "hello from up-m1"}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"]["input_tokens"] == 3
    assert message["usage"]["output_tokens"] == 2


async def test_a_streamed_message_from_an_openai_model_is_a_well_formed_event_sequence(
    to_openai: Daemon, fake: FakeUpstream
) -> None:
    out = await events(to_openai, "/v1/messages", anthropic_body(stream=True))

    assert fake.requests[0].json["stream_options"] == {"include_usage": True}
    kinds = [kind for kind, _ in out]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert all(kind == data["type"] for kind, data in out)
    text = "".join(d["delta"]["text"] for k, d in out if k == "content_block_delta")
    assert text == "hello from up-m1"
    final = out[-2][1]
    assert final["delta"]["stop_reason"] == "end_turn"
    assert final["usage"]["output_tokens"] == 2
    assert final["usage"]["input_tokens"] == 3


async def test_parallel_tool_calls_from_an_openai_model_become_tool_use_blocks(
    to_openai: Daemon, fake: FakeUpstream
) -> None:
    calls = [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Oslo", "units": "metric"}},
    ]
    usage = {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}
    fake.script(CHAT, Reply(chunks=openai_tool_stream(calls, usage=usage, pieces=4)))

    out = await events(to_openai, "/v1/messages", anthropic_body(stream=True, tools=[WEATHER]))

    sent = fake.requests[0].json
    assert sent["tools"] == [OPENAI_WEATHER]
    starts = [d["content_block"] for k, d in out if k == "content_block_start"]
    assert [s["type"] for s in starts] == ["tool_use", "tool_use"]
    assert [s["id"] for s in starts] == ["call_fake0", "call_fake1"]
    arguments: dict[int, str] = {}
    for kind, data in out:
        if kind == "content_block_delta":
            arguments[data["index"]] = (
                arguments.get(data["index"], "") + data["delta"]["partial_json"]
            )
    assert [orjson.loads(arguments[i]) for i in sorted(arguments)] == [
        c["arguments"] for c in calls
    ]
    assert out[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert out[-2][1]["usage"]["output_tokens"] == 9


# --------------------------------------------------------------- OpenAI client, Anthropic model


@pytest.mark.parametrize("stream", [False, True])
async def test_earlier_thinking_turns_do_not_reach_an_openai_model(
    to_openai: Daemon, fake: FakeUpstream, stream: bool
) -> None:
    """Claude's thinking blocks in the history have no OpenAI field: they are left out,
    not sent as unknown message keys an OpenAI upstream would refuse."""
    thought = {"type": "thinking", "thinking": "Paris, surely.", "signature": "c2lnbmF0dXJl"}
    history = [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": [thought, {"type": "text", "text": "Paris."}]},
        {"role": "user", "content": "And of Norway?"},
    ]
    body = anthropic_body(messages=history, stream=stream)

    async with to_openai.http.post("/v1/messages", json=body) as response:
        assert response.status == 200, await response.text()
        await response.read()

    [received] = fake.requests
    assert received.rejected is None
    assert received.json["messages"][2] == {"role": "assistant", "content": "Paris."}


async def test_a_chat_completion_is_served_by_an_anthropic_model(
    to_anthropic: Daemon, fake: FakeUpstream
) -> None:
    async with to_anthropic.http.post("/v1/chat/completions", json=openai_body()) as response:
        assert response.status == 200
        completion = await response.json()

    [received] = fake.requests
    assert received.path == MESSAGES
    assert received.rejected is None
    assert received.headers["x-api-key"] == API_KEY
    assert received.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in received.headers
    assert received.json == {
        "model": "up-m1",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 4096,
    }
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == "hello from up-m1"
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"]["prompt_tokens"] == 3
    assert completion["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("include_usage", [False, True])
async def test_a_streamed_chat_from_an_anthropic_model(
    to_anthropic: Daemon, fake: FakeUpstream, include_usage: bool
) -> None:
    extra: dict[str, Any] = {"stream": True}
    if include_usage:
        extra["stream_options"] = {"include_usage": True}
    out = await events(to_anthropic, "/v1/chat/completions", openai_body(**extra))

    assert "stream_options" not in fake.requests[0].json
    assert out[-1] == ("message", b"[DONE]")
    chunks = [data for _, data in out[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "hello from up-m1"
    usage = [c["usage"] for c in chunks if not c["choices"]]
    assert usage == (
        [{**usage[0], "prompt_tokens": 3, "completion_tokens": 2}] if include_usage else []
    )


async def test_tool_calls_from_an_anthropic_model_stream_with_indexes_and_whole_arguments(
    to_anthropic: Daemon, fake: FakeUpstream
) -> None:
    blocks = [
        "Let me check.",
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
    ]
    fake.script(MESSAGES, Reply(chunks=anthropic_stream(blocks, "tool_use")))

    out = await events(
        to_anthropic, "/v1/chat/completions", openai_body(stream=True, tools=[OPENAI_WEATHER])
    )

    assert fake.requests[0].json["tools"] == [WEATHER]
    calls: dict[int, dict[str, str]] = {}
    for _, chunk in out[:-1]:
        for call in chunk["choices"][0]["delta"].get("tool_calls") or []:
            entry = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.get("id") or ""
            entry["name"] += (call.get("function") or {}).get("name") or ""
            entry["arguments"] += (call.get("function") or {}).get("arguments") or ""
    assert sorted(calls) == [0, 1]
    assert [calls[i]["id"] for i in (0, 1)] == ["toolu_1", "toolu_2"]
    assert [orjson.loads(calls[i]["arguments"]) for i in (0, 1)] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]
    finishes = [c["choices"][0]["finish_reason"] for _, c in out[:-1] if c["choices"]]
    assert [f for f in finishes if f] == ["tool_calls"]


async def test_anthropic_beta_headers_reach_anthropic_models(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    daemon = await start_daemon(config(("anthropic", fake.root, {})))
    headers = {"anthropic-beta": "prompt-caching-2024-07-31"}
    async with daemon.http.post("/v1/messages", json=anthropic_body(), headers=headers) as response:
        assert response.status == 200
    assert fake.requests[0].headers["anthropic-beta"] == "prompt-caching-2024-07-31"


async def test_same_api_streams_pass_through_byte_for_byte(
    to_anthropic: Daemon, fake: FakeUpstream
) -> None:
    chunks = anthropic_stream(["one two"], usage={"cache_read_input_tokens": 5})
    fake.script(MESSAGES, Reply(chunks=chunks))
    async with to_anthropic.http.post("/v1/messages", json=anthropic_body(stream=True)) as response:
        raw = await response.read()
    assert raw == b"".join(chunks)
    assert fake.requests[0].json == {**anthropic_body(stream=True), "model": "up-m1"}


# --------------------------------------------------------------- errors in the client's API


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not valid JSON"),
        (
            orjson.dumps({"model": "p", "messages": [{"role": "user", "content": "x"}]}),
            400,
            "max_tokens",
        ),
        (orjson.dumps(anthropic_body(model="nope")), 404, "unknown pool"),
        (orjson.dumps(anthropic_body(max_tokens=0)), 400, "max_tokens"),
    ],
)
async def test_bad_messages_requests_get_anthropic_errors(
    to_openai: Daemon, body: bytes, status: int, words: str
) -> None:
    async with to_openai.http.post("/v1/messages", data=body) as response:
        assert response.status == status
        error = await response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == (
        "not_found_error" if status == 404 else "invalid_request_error"
    )
    assert words in error["error"]["message"]


async def test_an_openai_upstream_refusal_is_said_in_anthropic_format(
    to_openai: Daemon, fake: FakeUpstream
) -> None:
    refusal = error_json("temperature is out of range", "invalid_request_error")
    fake.script(CHAT, Reply(status=400, json=refusal))
    async with to_openai.http.post("/v1/messages", json=anthropic_body()) as response:
        assert response.status == 400
        error = await response.json()
    assert error == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "temperature is out of range"},
    }


async def test_an_anthropic_upstream_refusal_is_said_in_openai_format(
    to_anthropic: Daemon, fake: FakeUpstream
) -> None:
    fake.script(MESSAGES, Reply.anthropic_error(400, "invalid_request_error", "bad image"))
    async with to_anthropic.http.post("/v1/chat/completions", json=openai_body()) as response:
        assert response.status == 400
        error = await response.json()
    assert error["error"]["message"] == "bad image"
    assert error["error"]["type"] == "invalid_request_error"


async def test_when_everything_is_down_an_anthropic_client_gets_an_anthropic_503(
    start_daemon: StartDaemon, closed_port: int
) -> None:
    daemon = await start_daemon(config(("openai", f"http://127.0.0.1:{closed_port}/v1", {})))
    async with daemon.http.post("/v1/messages", json=anthropic_body()) as response:
        assert response.status == 503
        error = await response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "overloaded_error"
    assert "m1" in error["error"]["message"]


async def test_a_stream_broken_midway_ends_with_an_anthropic_error_event(
    to_openai: Daemon, fake: FakeUpstream
) -> None:
    chunks = [
        b'data: {"id":"c","object":"chat.completion.chunk","model":"x","choices":'
        b'[{"index":0,"delta":{"content":"partial"},"finish_reason":null}]}\n\n'
    ]
    fake.script(CHAT, Reply(chunks=chunks, drop="after_headers"))
    out = await events(to_openai, "/v1/messages", anthropic_body(stream=True))
    assert out[0][0] == "message_start"
    assert out[-1][0] == "error"
    assert out[-1][1]["error"]["type"] == "api_error"


# --------------------------------------------------------------- failover across APIs


async def test_an_overloaded_anthropic_member_fails_over_to_an_openai_member(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    fake.script(MESSAGES, Reply.anthropic_error(529, "overloaded_error", "Overloaded"))
    daemon = await start_daemon(
        config(("anthropic", fake.root, {}), ("openai", fake2.base_url, {}))
    )
    async with daemon.http.post("/v1/messages", json=anthropic_body(stream=True)) as response:
        assert response.status == 200
        assert response.headers["x-modelpool-attempts"] == "2"
        assert response.headers["x-modelpool-model"] == "m2"
        raw = await response.read()
    assert b"event: message_stop" in raw
    assert fake.requests[0].path == MESSAGES
    assert fake2.requests[0].path == CHAT


async def test_a_request_one_api_cannot_carry_goes_to_a_member_whose_api_can(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    daemon = await start_daemon(
        config(("anthropic", fake.root, {}), ("openai", fake2.base_url, {}))
    )
    async with daemon.http.post("/v1/chat/completions", json=openai_body(n=2)) as response:
        assert response.status == 200
        assert response.headers["x-modelpool-model"] == "m2"
        assert response.headers["x-modelpool-attempts"] == "1"
    assert fake.requests == []


async def test_a_request_no_member_can_carry_is_a_400_naming_the_parameter(
    to_anthropic: Daemon, fake: FakeUpstream
) -> None:
    async with to_anthropic.http.post("/v1/chat/completions", json=openai_body(n=2)) as response:
        assert response.status == 400
        error = await response.json()
    assert error["error"]["param"] == "n"
    assert "n=1" in error["error"]["message"]
    assert fake.requests == []


# --------------------------------------------------------------- capability routing


async def test_tools_skip_members_without_tools_and_images_skip_members_without_vision(
    start_daemon: StartDaemon, fake: FakeUpstream
) -> None:
    daemon = await start_daemon(
        config(
            ("openai", fake.base_url, {"capabilities": ["chat"]}),
            ("openai", fake.base_url, {"capabilities": ["chat", "tools"]}),
            ("openai", fake.base_url, {"capabilities": ["chat", "vision"]}),
        )
    )
    image = [{"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}]
    cases = [
        (openai_body(), "m1"),
        (openai_body(tools=[OPENAI_WEATHER]), "m2"),
        (openai_body(messages=[{"role": "user", "content": image}]), "m3"),
    ]
    for body, model in cases:
        async with daemon.http.post("/v1/chat/completions", json=body) as response:
            assert response.status == 200
            assert response.headers["x-modelpool-model"] == model
    both = openai_body(tools=[OPENAI_WEATHER], messages=[{"role": "user", "content": image}])
    async with daemon.http.post("/v1/chat/completions", json=both) as response:
        assert response.status == 400
        assert "tools, vision" in (await response.json())["error"]["message"]


async def test_a_prompt_beyond_a_members_context_window_skips_it(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    daemon = await start_daemon(
        config(
            ("openai", fake.base_url, {"context_window": 1000}),
            ("openai", fake2.base_url, {"context_window": 100_000}),
        )
    )
    long = openai_body(messages=[{"role": "user", "content": "word " * 2000}])
    async with daemon.http.post("/v1/chat/completions", json=long) as response:
        assert response.status == 200
        assert response.headers["x-modelpool-model"] == "m2"
    assert fake.requests == []
    huge = openai_body(messages=[{"role": "user", "content": "word " * 100_000}])
    async with daemon.http.post("/v1/chat/completions", json=huge) as response:
        assert response.status == 400
        error = await response.json()
    assert error["error"]["code"] == "context_length_exceeded"


async def test_a_context_length_error_moves_on_to_a_larger_member(
    start_daemon: StartDaemon, fake: FakeUpstream, fake2: FakeUpstream
) -> None:
    refusal = error_json(
        "This model's maximum context length is 8192 tokens", code="context_length_exceeded"
    )
    fake.script(CHAT, Reply(status=400, json=refusal))
    daemon = await start_daemon(
        config(
            ("openai", fake.base_url, {"context_window": 8192}),
            ("openai", fake.base_url, {"context_window": 8000}),
            ("openai", fake2.base_url, {"context_window": 200_000}),
        )
    )
    async with daemon.http.post("/v1/chat/completions", json=openai_body()) as response:
        assert response.status == 200
        assert response.headers["x-modelpool-model"] == "m3"
        assert response.headers["x-modelpool-attempts"] == "2"
    assert len(fake.requests) == 1  # m2's smaller window was not tried
    status = await (await daemon.http.get("/admin/status")).json()
    assert status["models"]["m1"]["breaker"]["state"] == "closed"  # not the model's fault


# --------------------------------------------------------------- usage, tokens, listing


async def test_usage_asked_for_on_the_clients_behalf_is_not_shown_to_it(
    to_openai: Daemon, fake: FakeUpstream
) -> None:
    out = await events(to_openai, "/v1/chat/completions", openai_body(stream=True))
    assert fake.requests[0].json["stream_options"] == {"include_usage": True}
    assert all(data == b"[DONE]" or data["choices"] for _, data in out)

    out = await events(
        to_openai,
        "/v1/chat/completions",
        openai_body(stream=True, stream_options={"include_usage": True}),
    )
    assert out[-2][1]["choices"] == []
    assert out[-2][1]["usage"]["total_tokens"] == 5


async def test_count_tokens_answers_an_estimate_without_calling_upstream(
    to_anthropic: Daemon, fake: FakeUpstream
) -> None:
    body = {"model": "p", "messages": [{"role": "user", "content": "x" * 400}]}
    async with to_anthropic.http.post("/v1/messages/count_tokens", json=body) as response:
        assert response.status == 200
        assert response.headers["x-modelpool-estimate"] == "true"
        assert await response.json() == {"input_tokens": 101}
    assert fake.requests == []


async def test_model_listing_shows_what_an_anthropic_model_can_serve(
    to_anthropic: Daemon,
) -> None:
    listing = await (await to_anthropic.http.get("/v1/models")).json()
    model = next(entry for entry in listing["data"] if entry["id"] == "m1")
    assert model["modelpool"]["capabilities"] == ["chat", "json_mode", "stream", "tools", "vision"]
