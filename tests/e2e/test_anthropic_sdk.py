"""The official `anthropic` SDK against a real `modelpool run` on the offline example.

Pool `default` = [llama3 (Ollama, down), mock-small]: each call first fails
over from an OpenAI-format model that is not running to the mock, which
answers in the Messages API.
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest
from e2e_daemon import Daemon

pytestmark = pytest.mark.e2e

PROMPT = "Tell me about connection pools"


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=daemon.url, api_key="unused", max_retries=0, timeout=10
    ) as sdk:
        yield sdk


def test_a_message_fails_over_to_the_mock_and_echoes_the_prompt(
    client: anthropic.Anthropic,
) -> None:
    raw = client.messages.with_raw_response.create(
        model="default",
        max_tokens=200,
        system="You are terse.",
        messages=[{"role": "user", "content": PROMPT}],
    )
    message = raw.parse()
    assert raw.headers["x-modelpool-attempts"] == "2"
    assert message.model == "mock-small"
    assert message.content[0].type == "text"
    assert PROMPT in message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0


def test_a_streamed_message_matches_the_whole_one(client: anthropic.Anthropic) -> None:
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": PROMPT}]
    whole = client.messages.create(model="default", max_tokens=200, messages=messages)
    with client.messages.stream(model="default", max_tokens=200, messages=messages) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text  # type: ignore[union-attr]
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens


def test_max_tokens_cuts_the_reply_with_the_right_stop_reason(
    client: anthropic.Anthropic,
) -> None:
    message = client.messages.create(
        model="default", max_tokens=3, messages=[{"role": "user", "content": PROMPT}]
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


def test_count_tokens(client: anthropic.Anthropic) -> None:
    count = client.messages.count_tokens(
        model="default", messages=[{"role": "user", "content": "x" * 400}]
    )
    assert count.input_tokens == 101


def test_errors_are_the_sdks_own_exceptions(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(
            model="no-such-pool", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="embed", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert "chat" in caught.value.message
