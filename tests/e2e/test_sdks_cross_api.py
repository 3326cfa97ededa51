"""The official `openai` and `anthropic` SDKs against the real daemon, each served by a
model speaking the other API: text, streams, tools, usage, and failover across APIs.

Upstreams are the integration suite's validating fakes (threaded_fakes): fake 0
speaks Anthropic Messages at /v1/messages, fake 1 OpenAI chat at /v1/chat/completions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from e2e_daemon import Daemon, finish, start_daemon
from fake_upstream import (
    CHAT,
    MESSAGES,
    Reply,
    anthropic_message,
    anthropic_stream,
    openai_tool_stream,
)
from threaded_fakes import ThreadedFakes

pytestmark = pytest.mark.e2e

WEATHER_INPUT = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
OPENAI_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER_INPUT},
}
ANTHROPIC_TOOL: Any = {
    "name": "get_weather",
    "description": "Weather",
    "input_schema": WEATHER_INPUT,
}


@pytest.fixture(scope="module")
def fakes() -> Iterator[ThreadedFakes]:
    fakes = ThreadedFakes(2)
    try:
        yield fakes
    finally:
        fakes.close()


@pytest.fixture(autouse=True)
def fresh(fakes: ThreadedFakes) -> None:
    fakes.reset()


@pytest.fixture(scope="module")
def daemon(fakes: ThreadedFakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    anthropic_url = f"http://127.0.0.1:{fakes.fakes[0].port}"
    openai_url = f"http://127.0.0.1:{fakes.fakes[1].port}/v1"
    caps = ["chat", "stream", "tools", "vision"]
    config = {
        "version": 1,
        "providers": {
            "claude": {"type": "anthropic", "base_url": anthropic_url, "api_key": "sk-ant-test"},
            "gpt": {"type": "openai", "base_url": openai_url, "api_key": "sk-openai-test"},
        },
        "models": {
            "sonnet": {"provider": "claude", "upstream_model": "claude-x", "capabilities": caps},
            "gpt": {"provider": "gpt", "upstream_model": "gpt-x", "capabilities": caps},
        },
        "pools": {
            "anthropic-only": {"members": ["sonnet"], "retry": {"attempts": 1}},
            "openai-only": {"members": ["gpt"], "retry": {"attempts": 1}},
            "mixed": {
                "strategy": "priority",
                "members": ["sonnet", "gpt"],
                "retry": {"attempts": 2},
            },
        },
    }
    directory = tmp_path_factory.mktemp("cross")
    path = directory / "pools.yaml"
    path.write_text(json.dumps(config))
    running = start_daemon(path, directory / "log")
    try:
        yield running
    finally:
        finish(running)


@pytest.fixture
def oai(daemon: Daemon) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=daemon.v1, api_key="unused", max_retries=0, timeout=10) as sdk:
        yield sdk


@pytest.fixture
def claude(daemon: Daemon) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=daemon.url, api_key="unused", max_retries=0, timeout=10
    ) as sdk:
        yield sdk


# --------------------------------------------------------------- openai SDK → Anthropic model


def test_openai_sdk_chat_served_by_an_anthropic_model(
    oai: openai.OpenAI, fakes: ThreadedFakes
) -> None:
    completion = oai.chat.completions.create(
        model="anthropic-only",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        max_tokens=50,
        stop=["END"],
    )
    [received] = fakes.requests(0)
    assert received.path == MESSAGES
    assert received.rejected is None
    assert received.json["system"] == "Be brief."
    assert received.json["stop_sequences"] == ["END"]
    assert completion.choices[0].message.content == "hello from claude-x"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 2)


def test_openai_sdk_stream_served_by_an_anthropic_model(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="anthropic-only",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hello from claude-x"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2


def test_openai_sdk_tool_call_served_by_an_anthropic_model(
    oai: openai.OpenAI, fakes: ThreadedFakes
) -> None:
    tool_use = {
        "type": "tool_use",
        "id": "toolu_01",
        "name": "get_weather",
        "input": {"city": "Oslo"},
    }
    fakes.script(0, MESSAGES, Reply(json=anthropic_message(["Checking.", tool_use], "tool_use")))
    completion = oai.chat.completions.create(
        model="anthropic-only",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[OPENAI_TOOL],
        tool_choice="required",
    )
    assert fakes.requests(0)[0].json["tool_choice"] == {"type": "any"}
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.id == "toolu_01"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Oslo"}  # type: ignore[union-attr]

    # the tool result goes back in OpenAI shape and reaches Claude as a tool_result
    oai.chat.completions.create(
        model="anthropic-only",
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": "toolu_01", "content": "12°C"},
        ],
        tools=[OPENAI_TOOL],
    )
    sent = fakes.requests(0)[1]
    assert sent.rejected is None
    assert sent.json["messages"][-1]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "toolu_01",
        "content": "12°C",
    }


def test_openai_sdk_streams_parallel_tool_calls_from_an_anthropic_model(
    oai: openai.OpenAI, fakes: ThreadedFakes
) -> None:
    blocks = [
        "Checking both.",
        {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Lima"}},
    ]
    fakes.script(0, MESSAGES, Reply(chunks=anthropic_stream(blocks, "tool_use")))
    with oai.chat.completions.stream(
        model="anthropic-only",
        messages=[{"role": "user", "content": "Weather in Oslo and Lima?"}],
        tools=[OPENAI_TOOL],
    ) as stream:
        final = stream.get_final_completion()
    assert fakes.requests(0)[0].rejected is None
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking both."
    calls = choice.message.tool_calls or []
    assert [c.id for c in calls] == ["toolu_a", "toolu_b"]
    assert [json.loads(c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        {"city": "Oslo"},
        {"city": "Lima"},
    ]


# --------------------------------------------------------------- anthropic SDK → OpenAI model


def test_anthropic_sdk_message_served_by_an_openai_model(
    claude: anthropic.Anthropic, fakes: ThreadedFakes
) -> None:
    message = claude.messages.create(
        model="openai-only",
        max_tokens=50,
        system="Be brief.",
        messages=[{"role": "user", "content": "hi"}],
    )
    [received] = fakes.requests(1)
    assert received.path == CHAT
    assert received.rejected is None
    assert received.json["messages"][0] == {"role": "system", "content": "Be brief."}
    assert message.content[0].type == "text"
    assert message.content[0].text == "hello from gpt-x"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 2)


def test_anthropic_sdk_stream_with_parallel_tools_served_by_an_openai_model(
    claude: anthropic.Anthropic, fakes: ThreadedFakes
) -> None:
    calls = [
        {"name": "get_weather", "arguments": {"city": "Oslo"}},
        {"name": "get_weather", "arguments": {"city": "Lima"}},
    ]
    usage = {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}
    fakes.script(1, CHAT, Reply(chunks=openai_tool_stream(calls, usage=usage, pieces=5)))
    with claude.messages.stream(
        model="openai-only",
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather in Oslo and Lima?"}],
        tools=[ANTHROPIC_TOOL],
    ) as stream:
        final = stream.get_final_message()
    assert fakes.requests(1)[0].json["stream_options"] == {"include_usage": True}
    uses = [block for block in final.content if block.type == "tool_use"]
    assert [u.input for u in uses] == [{"city": "Oslo"}, {"city": "Lima"}]
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == 12
    assert final.usage.input_tokens == 40


def test_an_overloaded_anthropic_member_fails_over_inside_one_anthropic_sdk_call(
    claude: anthropic.Anthropic, fakes: ThreadedFakes
) -> None:
    fakes.script(0, MESSAGES, Reply.anthropic_error(529, "overloaded_error", "Overloaded"))
    raw = claude.messages.with_raw_response.create(
        model="mixed", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    message = raw.parse()
    assert raw.headers["x-modelpool-attempts"] == "2"
    assert raw.headers["x-modelpool-model"] == "gpt"
    assert message.content[0].text == "hello from gpt-x"  # type: ignore[union-attr]
    assert [r.path for r in fakes.requests(0)] == [MESSAGES]
    assert [r.path for r in fakes.requests(1)] == [CHAT]


def test_anthropic_sdk_sees_its_own_error_types(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(
            model="no-such-pool", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


# --------------------------------------------------------------- usage agrees, every pair


@pytest.mark.parametrize("pool", ["anthropic-only", "openai-only"])
def test_openai_sdk_streamed_usage_equals_the_whole_answers(
    oai: openai.OpenAI, fakes: ThreadedFakes, pool: str
) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    whole = oai.chat.completions.create(model=pool, messages=messages)
    chunks = list(
        oai.chat.completions.create(
            model=pool, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    assert whole.usage is not None
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


@pytest.mark.parametrize("pool", ["anthropic-only", "openai-only"])
def test_anthropic_sdk_streamed_usage_equals_the_whole_answers(
    claude: anthropic.Anthropic, fakes: ThreadedFakes, pool: str
) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    whole = claude.messages.create(model=pool, max_tokens=20, messages=messages)
    with claude.messages.stream(model=pool, max_tokens=20, messages=messages) as stream:
        final = stream.get_final_message()
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_thinking_blocks_survive_a_turn_through_the_openai_sdk(
    oai: openai.OpenAI, fakes: ThreadedFakes
) -> None:
    thinking = {"type": "thinking", "thinking": "Let me see…", "signature": "EqQBCgYIAhgCEAE="}
    fakes.script(
        0,
        MESSAGES,
        Reply(json=anthropic_message([thinking, "Done."])),
        Reply(json=anthropic_message(["Again."])),
    )
    first = oai.chat.completions.create(
        model="anthropic-only", messages=[{"role": "user", "content": "think"}]
    )
    assistant = first.choices[0].message.model_dump(exclude_none=True)
    oai.chat.completions.create(
        model="anthropic-only",
        messages=[
            {"role": "user", "content": "think"},
            assistant,  # type: ignore[list-item]
            {"role": "user", "content": "more"},
        ],
    )
    sent = fakes.requests(0)[1].json["messages"][1]["content"]
    assert sent[0] == thinking
