"""One client request as the dispatcher sees it, and what a model needs to serve it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from modelpool.config.spec import ClientSpec
from modelpool.tokens import estimate

Api = Literal["openai", "anthropic"]

ENDPOINT_CAPABILITY = {
    "chat": "chat",
    "completions": "completions",
    "embeddings": "embeddings",
    "messages": "chat",
}
"""The capability a model must declare to serve an ingress endpoint."""

_IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})


@dataclass(frozen=True)
class ProxyRequest:
    endpoint: str
    """chat, completions, embeddings (OpenAI ingress) or messages (Anthropic ingress)."""
    route: str
    """The request's `model` field: a pool or a model name."""
    body: Mapping[str, Any]
    stream: bool
    client: ClientSpec | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    """Client headers forwarded to upstreams that understand them (anthropic-beta)."""
    trace: dict[str, Any] = field(default_factory=dict, compare=False)
    """What the dispatcher leaves for the access log (the request's bill)."""
    capabilities: frozenset[str] = field(init=False, compare=False)
    """What a model must declare to serve this request (every routing decision reads it)."""

    def __post_init__(self) -> None:
        needs = required_capabilities(self.endpoint, self.body, self.stream)
        object.__setattr__(self, "capabilities", needs)  # frozen: set once, here

    @property
    def api(self) -> Api:
        """The API the client speaks, and so the format of every answer and error."""
        return "anthropic" if self.endpoint == "messages" else "openai"

    @property
    def prompt_tokens(self) -> int:
        """The estimated size of the prompt, in tokens (read once, by a translated stream)."""
        return estimate(self.endpoint, self.body).input_tokens

    @property
    def include_usage(self) -> bool:
        """The client asked for a usage chunk at the end of its OpenAI stream."""
        options = self.body.get("stream_options")
        return isinstance(options, Mapping) and options.get("include_usage") is True


def required_capabilities(endpoint: str, body: Mapping[str, Any], stream: bool) -> frozenset[str]:
    """The endpoint's capability, plus stream, tools, vision, json_mode and reasoning when
    the request uses them."""
    needs = {ENDPOINT_CAPABILITY[endpoint]}
    if stream:
        needs.add("stream")
    if body.get("tools") or body.get("functions"):
        needs.add("tools")
    if _has_image(body.get("messages")):
        needs.add("vision")
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type") != "text":
        needs.add("json_mode")
    thinking = body.get("thinking")
    enabled = isinstance(thinking, Mapping) and thinking.get("type") != "disabled"
    if enabled or body.get("reasoning_effort") is not None:
        needs.add("reasoning")
    return frozenset(needs)


def _has_image(messages: Any) -> bool:
    if not isinstance(messages, list):
        return False
    # Parsed JSON holds dicts (no ABC check needed); text content is the common case.
    return any(
        isinstance(message, dict) and _parts_have_image(message.get("content"))
        for message in messages
    )


def _parts_have_image(content: Any) -> bool:
    return isinstance(content, list) and any(_is_image(part) for part in content)


def _is_image(part: Any) -> bool:
    if not isinstance(part, Mapping):
        return False
    if part.get("type") in _IMAGE_PARTS:
        return True
    # an Anthropic tool_result can carry images
    return part.get("type") == "tool_result" and _parts_have_image(part.get("content"))


def forwarded_headers(headers: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    return {name: headers[name] for name in names if name in headers}
