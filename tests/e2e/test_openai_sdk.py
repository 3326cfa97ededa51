"""The official `openai` SDK against a real `modelpool run` on the offline example.

The shared daemon serves examples/pools.yaml with Ollama moved to a closed
port: pool `default` = [llama3 (down), mock-small], pool `embed` = [mock-embed].
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from e2e_daemon import Daemon, DaemonFactory

pytestmark = pytest.mark.e2e

PROMPT = "Tell me about connection pools"


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=daemon.v1, api_key="unused", max_retries=0, timeout=10) as sdk:
        yield sdk


def test_chat_completion_has_content_and_usage(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": PROMPT}]
    )

    assert completion.object == "chat.completion"
    assert completion.model == "mock-small"
    content = completion.choices[0].message.content
    assert content
    assert PROMPT in content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_streamed_chat_matches_the_non_streamed_reply(client: openai.OpenAI) -> None:
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": PROMPT}
    ]
    whole = client.chat.completions.create(model="default", messages=messages)
    stream = client.chat.completions.create(
        model="default", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    with_choices = [chunk for chunk in chunks if chunk.choices]
    assert len(with_choices) > 3, "the reply should arrive in several chunks"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in with_choices)
    assert streamed == whole.choices[0].message.content
    assert with_choices[-1].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert whole.usage is not None
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_streamed_response_carries_routing_headers(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}], stream=True
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["x-modelpool-pool"] == "default"
        assert response.headers["x-modelpool-model"] == "mock-small"
        text = "".join(
            chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices
        )
    assert text.endswith("You said: hi")


def test_legacy_completion(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="default", prompt="Say something")

    assert completion.object == "text_completion"
    assert completion.model == "mock-small"
    assert "Say something" in completion.choices[0].text
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0


def test_max_tokens_truncates_with_finish_reason_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": PROMPT}], max_tokens=3
    )

    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


def test_embeddings_have_dimensions_and_are_deterministic(client: openai.OpenAI) -> None:
    first = client.embeddings.create(model="embed", input=["alpha", "beta"])
    again = client.embeddings.create(model="embed", input=["alpha", "beta"])

    assert first.model == "mock-embed"
    assert [item.index for item in first.data] == [0, 1]
    alpha, beta = (item.embedding for item in first.data)
    assert len(alpha) == len(beta) == 8  # the mock provider's default dimensions
    assert all(-1.0 <= value <= 1.0 for value in alpha + beta)
    assert alpha != beta
    assert [item.embedding for item in again.data] == [alpha, beta]
    assert first.usage.prompt_tokens == 2


def test_embeddings_in_float_and_base64_formats_agree(client: openai.OpenAI) -> None:
    """The SDK asks for base64 unless told otherwise, and decodes it itself."""
    floats = client.embeddings.create(model="embed", input="gamma", encoding_format="float")
    decoded = client.embeddings.create(model="embed", input="gamma")
    explicit = client.embeddings.create(model="embed", input="gamma", encoding_format="base64")

    vector = floats.data[0].embedding
    assert all(isinstance(value, float) for value in vector)
    assert decoded.data[0].embedding == pytest.approx(vector, abs=1e-6)
    # Asked for explicitly, base64 is handed back as is: little-endian float32s.
    encoded: object = explicit.data[0].embedding  # typed list[float]; really a str
    assert isinstance(encoded, str)
    raw = base64.b64decode(encoded)
    assert struct.unpack(f"<{len(vector)}f", raw) == pytest.approx(vector, abs=1e-6)


def test_models_list_shows_pools_and_models_with_metadata(client: openai.OpenAI) -> None:
    listing = {model.id: model for model in client.models.list()}

    assert {"default", "embed", "llama3", "mock-small", "mock-embed"} <= set(listing)
    default = listing["default"].model_extra or {}
    assert default["modelpool"]["kind"] == "pool"
    assert default["modelpool"]["strategy"] == "priority"
    assert default["modelpool"]["members"] == ["llama3", "mock-small"]
    embed = listing["embed"].model_extra or {}
    assert embed["modelpool"]["capabilities"] == ["embeddings"]
    small = (listing["mock-small"].model_extra or {})["modelpool"]
    assert small["kind"] == "model"
    assert small["context_window"] == 32768
    assert small["price"]["input_per_mtok"] == pytest.approx(0.10)
    assert small["price"]["output_per_mtok"] == pytest.approx(0.40)


def test_models_list_reveals_no_upstream_urls(client: openai.OpenAI) -> None:
    raw = client.models.with_raw_response.list()
    text = json.dumps(raw.http_response.json())

    assert "127.0.0.1" not in text
    assert "base_url" not in text


def test_failover_is_visible_in_the_first_response_headers(
    offline_config: Path, daemon_factory: DaemonFactory
) -> None:
    """A fresh daemon: its very first request fails over from Ollama to the mock."""
    fresh = daemon_factory(offline_config)
    with openai.OpenAI(base_url=fresh.v1, api_key="unused", max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model="default", messages=[{"role": "user", "content": "hi"}]
        )
    completion = raw.parse()

    assert raw.status_code == 200
    assert raw.headers["x-modelpool-pool"] == "default"
    assert raw.headers["x-modelpool-model"] == "mock-small"
    assert raw.headers["x-modelpool-attempts"] == "2"
    assert completion.choices[0].message.content


def test_a_model_named_directly_is_served_without_failover(client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model="mock-embed", input="x")

    assert raw.headers["x-modelpool-model"] == "mock-embed"
    assert raw.headers["x-modelpool-attempts"] == "1"


def test_unknown_model_is_not_found_and_lists_known_names(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="lcoal", messages=[{"role": "user", "content": "x"}])

    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    for name in ("default", "embed", "llama3", "mock-small", "mock-embed"):
        assert name in caught.value.message


def test_malformed_request_is_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="default", messages="x")  # type: ignore[arg-type]

    assert caught.value.status_code == 400
    assert caught.value.param == "messages"
    # …and the daemon keeps serving.
    assert client.completions.create(model="default", prompt="still there").choices[0].text


async def test_async_client_serves_concurrent_requests(daemon: Daemon) -> None:
    async with openai.AsyncOpenAI(base_url=daemon.v1, api_key="unused", max_retries=0) as sdk:

        async def chat(n: int) -> str:
            completion = await sdk.chat.completions.create(
                model="default", messages=[{"role": "user", "content": f"request {n}"}]
            )
            return completion.choices[0].message.content or ""

        async def streamed() -> str:
            stream = await sdk.chat.completions.create(
                model="default", messages=[{"role": "user", "content": "streamed"}], stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        replies = await asyncio.wait_for(
            asyncio.gather(*(chat(n) for n in range(8)), streamed()), timeout=10
        )

    for n, reply in enumerate(replies[:8]):
        assert reply.endswith(f"You said: request {n}")
    assert replies[8].endswith("You said: streamed")
