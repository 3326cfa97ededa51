"""What a request needs from a model: capabilities and a context window."""

from __future__ import annotations

from typing import Any

import pytest

from modelpool.errors import UpstreamStatusError
from modelpool.request import ProxyRequest, required_capabilities
from modelpool.retry import judge
from modelpool.tokens import IMAGE_TOKENS, estimate

TOOL = {"type": "function", "function": {"name": "f", "parameters": {}}}
PNG = "data:image/png;base64," + "A" * 400_000


def user(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


@pytest.mark.parametrize(
    ("endpoint", "body", "stream", "needs"),
    [
        ("chat", {"messages": user("hi")}, False, {"chat"}),
        ("chat", {"messages": user("hi")}, True, {"chat", "stream"}),
        ("messages", {"messages": user("hi")}, True, {"chat", "stream"}),
        ("completions", {"prompt": "x"}, False, {"completions"}),
        ("embeddings", {"input": "x"}, False, {"embeddings"}),
        ("chat", {"messages": user("hi"), "tools": [TOOL]}, False, {"chat", "tools"}),
        ("chat", {"messages": user("hi"), "tools": []}, False, {"chat"}),
        (
            "chat",
            {"messages": user([{"type": "image_url", "image_url": {"url": PNG}}])},
            False,
            {"chat", "vision"},
        ),
        (
            "messages",
            {"messages": user([{"type": "image", "source": {"type": "url", "url": "x"}}])},
            False,
            {"chat", "vision"},
        ),
        (
            "messages",
            {
                "messages": user(
                    [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image"}]}]
                )
            },
            False,
            {"chat", "vision"},
        ),
        (
            "chat",
            {"messages": user("hi"), "response_format": {"type": "json_object"}},
            False,
            {"chat", "json_mode"},
        ),
        (
            "chat",
            {"messages": user("hi"), "response_format": {"type": "text"}},
            False,
            {"chat"},
        ),
        (
            "messages",
            {"messages": user("hi"), "thinking": {"type": "enabled", "budget_tokens": 1024}},
            False,
            {"chat", "reasoning"},
        ),
        ("chat", {"messages": user("hi"), "reasoning_effort": "low"}, False, {"chat", "reasoning"}),
    ],
)
def test_requests_need_what_they_use(
    endpoint: str, body: dict[str, Any], stream: bool, needs: set[str]
) -> None:
    assert required_capabilities(endpoint, body, stream) == needs


def test_request_api_follows_the_endpoint() -> None:
    assert ProxyRequest("messages", "p", {}, False).api == "anthropic"
    assert ProxyRequest("chat", "p", {}, False).api == "openai"
    asked = ProxyRequest("chat", "p", {"stream_options": {"include_usage": True}}, True)
    assert asked.include_usage
    assert not ProxyRequest("chat", "p", {"stream_options": None}, True).include_usage


def test_an_image_counts_as_a_fixed_number_of_tokens_not_its_base64_size() -> None:
    body = {"messages": user([{"type": "image_url", "image_url": {"url": PNG}}])}
    assert estimate("chat", body).input_tokens == IMAGE_TOKENS + 1  # + the role


def test_an_anthropic_system_prompt_counts_towards_the_prompt() -> None:
    bare = estimate("messages", {"messages": user("hi")}).input_tokens
    with_system = estimate("messages", {"messages": user("hi"), "system": "x" * 400})
    assert with_system.input_tokens == bare + 100


@pytest.mark.parametrize(
    "body",
    [
        b'{"error":{"message":"This model\'s maximum context length is 8192 tokens",'
        b'"code":"context_length_exceeded"}}',
        b'{"type":"error","error":{"type":"invalid_request_error",'
        b'"message":"prompt is too long: 210000 tokens > 200000 maximum"}}',
    ],
)
def test_a_context_length_refusal_is_worth_a_larger_model(body: bytes) -> None:
    verdict = judge(UpstreamStatusError("refused", status=400, body=body))
    assert verdict.retry
    assert not verdict.blame_model
    assert verdict.kind == "context_length"


def test_other_refusals_are_the_requests_fault() -> None:
    body = b'{"error":{"message":"temperature must be <= 2"}}'
    verdict = judge(UpstreamStatusError("refused", status=400, body=body))
    assert not verdict.retry
    assert verdict.kind == "status_4xx"
