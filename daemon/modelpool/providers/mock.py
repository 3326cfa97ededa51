"""The built-in offline ``mock`` provider: deterministic answers in either API.

It needs no network and no key, so ``examples/pools.yaml`` runs anywhere and
tests can script failures. Replies echo the last user message (or a fixed
``reply``), token counts are whitespace words, and ``failure_rate`` with a
``seed`` injects errors repeatably. It answers in the API it is asked in:
OpenAI format for chat/completions/embeddings calls, Anthropic Messages
format (a message, or a well-formed event stream) for messages calls.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import orjson

from modelpool.config.spec import MockBehaviour, ProviderSpec
from modelpool.errors import UpstreamStatusError
from modelpool.providers.base import Call, Dialect
from modelpool.providers.translate import OpenAIToAnthropicStream, openai_completion_to_anthropic
from modelpool.sse import named_event


def _words(text: str) -> int:
    return len(text.split())


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _prompt_text(body: Mapping[str, Any]) -> tuple[str, str]:
    """(all prompt text, the last user message) of a chat or completions body."""
    messages = body.get("messages")
    if isinstance(messages, list):
        texts = [_text_of(body.get("system"))]
        texts += [_text_of(m.get("content")) for m in messages if isinstance(m, dict)]
        users = [
            _text_of(m.get("content"))
            for m in messages
            if isinstance(m, dict) and m.get("role") == "user"
        ]
        return " ".join(texts), users[-1] if users else ""
    prompt = body.get("prompt", "")
    prompt = " ".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt)
    return prompt, prompt


def _request_id(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]


class MockResponse:
    """An in-memory response with the same surface as an HTTP one."""

    status = 200

    def __init__(self, parts: Sequence[bytes], *, stream: bool, chunk_delay: float) -> None:
        self.content_type = "text/event-stream" if stream else "application/json"
        self._parts = parts
        self._chunk_delay = chunk_delay

    async def read(self) -> bytes:
        return b"".join(self._parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        for i, part in enumerate(self._parts):
            if i and self._chunk_delay:
                await asyncio.sleep(self._chunk_delay)
            yield part

    def close(self) -> None:
        """Nothing to release."""


class MockProvider:
    dialect: Dialect = "any"

    def __init__(self, spec: ProviderSpec) -> None:
        self.behaviour: MockBehaviour = spec.mock
        self._rng = random.Random(self.behaviour.seed)

    async def send(self, call: Call) -> MockResponse:
        behaviour = self.behaviour
        if behaviour.latency:
            await asyncio.sleep(behaviour.latency)
        if behaviour.failure_rate and self._rng.random() < behaviour.failure_rate:
            raise self._failure(call.model)
        return self._answer(call)

    async def aclose(self) -> None:
        """Nothing to release."""

    def _answer(self, call: Call) -> MockResponse:
        behaviour = self.behaviour
        if call.endpoint == "embeddings":
            return MockResponse([self._embeddings(call)], stream=False, chunk_delay=0)
        reply, finish, usage = self._reply(call.body)
        kind = "text_completion" if call.endpoint == "completions" else "chat.completion"
        if call.stream:
            if call.endpoint == "messages":  # Anthropic streams always report usage
                with_usage = {**call.body, "stream_options": {"include_usage": True}}
                parts = _stream(with_usage, kind, reply, finish, usage)
                parts = _as_anthropic_stream(parts, usage["prompt_tokens"])
            else:
                parts = _stream(call.body, kind, reply, finish, usage)
            return MockResponse(parts, stream=True, chunk_delay=behaviour.chunk_delay)
        body = _complete(call.body, kind, reply, finish, usage)
        if call.endpoint == "messages":
            body = orjson.dumps(openai_completion_to_anthropic(orjson.loads(body)))
        return MockResponse([body], stream=False, chunk_delay=0)

    def _failure(self, model: str) -> UpstreamStatusError:
        status = self.behaviour.failure_status
        message = f"mock: injected failure ({status})"
        body = orjson.dumps({"error": {"message": message, "type": "mock_failure", "code": status}})
        retry_after = 1.0 if status in (429, 503, 529) else None
        return UpstreamStatusError(
            f"{model}: HTTP {status}: {message}",
            status=status,
            body=body,
            retry_after=retry_after,
            model=model,
        )

    def _reply(self, body: Mapping[str, Any]) -> tuple[str, str, dict[str, int]]:
        prompt, last = _prompt_text(body)
        text = (
            self.behaviour.reply
            or f"This is a mock reply from {body.get('model')}. You said: {last}"
        )
        words = text.split()
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and 0 < limit < len(words):
            words, finish = words[:limit], "length"
        reply = " ".join(words)
        usage = {"prompt_tokens": _words(prompt), "completion_tokens": len(words)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return reply, finish, usage

    def _embeddings(self, call: Call) -> bytes:
        raw = call.body.get("input", "")
        inputs = raw if isinstance(raw, list) else [raw]
        dims = self.behaviour.embedding_dimensions
        encode = _base64 if call.body.get("encoding_format") == "base64" else None
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(str(text), dims, encode)}
            for i, text in enumerate(inputs)
        ]
        tokens = sum(_words(str(text)) for text in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return orjson.dumps(
            {"object": "list", "data": data, "model": call.body.get("model"), "usage": usage}
        )


def _vector(
    text: str, dims: int, encode: Callable[[list[float]], str] | None = None
) -> list[float] | str:
    """A deterministic unit-free vector in [-1, 1) derived from the text."""
    out: list[float] = []
    counter = 0
    while len(out) < dims:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        out.extend(v / 2**31 for v in struct.unpack(">8i", digest))
        counter += 1
    vector = [round(v, 6) for v in out[:dims]]
    return encode(vector) if encode else vector


def _base64(vector: list[float]) -> str:
    """OpenAI's `encoding_format: base64`: little-endian float32s, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _as_anthropic_stream(parts: Sequence[bytes], input_tokens: int) -> list[bytes]:
    """The same answer as Anthropic stream events, one read per OpenAI chunk."""
    translator = OpenAIToAnthropicStream(input_tokens=input_tokens)
    out = []
    for part in parts:
        data = part.removeprefix(b"data: ").strip()
        events = [] if data == b"[DONE]" else translator.feed(orjson.loads(data))
        out.append(b"".join(named_event(e["type"], e) for e in events))
    out[-1] += b"".join(named_event(e["type"], e) for e in translator.finish())
    return [part for part in out if part]


def _complete(
    body: Mapping[str, Any], kind: str, reply: str, finish: str, usage: dict[str, int]
) -> bytes:
    if kind == "chat.completion":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": reply},
            "finish_reason": finish,
        }
    else:
        choice = {"index": 0, "text": reply, "finish_reason": finish, "logprobs": None}
    return orjson.dumps(
        {
            "id": f"mock-{_request_id(body)}",
            "object": kind,
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [choice],
            "usage": usage,
        }
    )


def _stream(
    body: Mapping[str, Any], kind: str, reply: str, finish: str, usage: dict[str, int]
) -> list[bytes]:
    chat = kind == "chat.completion"
    head = {
        "id": f"mock-{_request_id(body)}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": body.get("model"),
    }

    def event(delta: str | None, finish_reason: str | None, role: bool = False) -> bytes:
        if chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if delta is not None:
                d["content"] = delta
            choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish_reason}
        return b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n"

    words = reply.split(" ") if reply else []
    parts = [event(None, None, role=True)] if chat else []
    parts += [event(w if i == 0 else f" {w}", None) for i, w in enumerate(words)]
    parts.append(event(None, finish))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        parts.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return parts
