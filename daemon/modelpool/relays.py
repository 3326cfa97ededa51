"""Stream relays: an upstream's SSE bytes → the client's SSE bytes, usage counted on the way.

One relay per served stream. ``feed`` takes each upstream read and returns
what to send the client now; ``close`` returns what ends a stream the
upstream finished; ``fail`` returns the error event that ends a stream the
upstream broke after bytes went out. ``usage`` is the canonical usage the
upstream reported so far.

Same-API relays forward the upstream's bytes untouched (except the usage
chunk modelpool asked for on the client's behalf); cross-API relays parse
each event and re-encode the translation. Anything an upstream sends that
cannot be understood raises ``UpstreamStreamBroken``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import orjson

from modelpool.errors import UpstreamStreamBroken
from modelpool.providers.translate import (
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    TranslationError,
    Usage,
    merge_anthropic_delta_usage,
    usage_from_anthropic,
    usage_from_openai,
)
from modelpool.sse import DONE, EventReader, Unfinished, data_event, named_event


class StreamRelay(Protocol):
    usage: Usage | None
    events: int
    """Upstream data events seen so far: what a stream cut short is charged by."""

    def feed(self, chunk: bytes) -> bytes: ...

    def close(self) -> bytes: ...

    def fail(self, message: str) -> bytes: ...


def openai_error_event(message: str) -> bytes:
    error = {
        "message": message,
        "type": "api_error",
        "param": None,
        "code": "upstream_stream_error",
    }
    return data_event({"error": error})


def anthropic_error_event(message: str) -> bytes:
    return named_event(
        "error", {"type": "error", "error": {"type": "api_error", "message": message}}
    )


def _payload(data: bytes, model: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamStreamBroken(f"{model}: stream event is not JSON", model=model) from None


def _events(reader: EventReader, chunk: bytes, model: str) -> list[tuple[str, bytes]]:
    try:
        return reader.feed(chunk)
    except ValueError as exc:
        raise UpstreamStreamBroken(f"{model}: {exc}", model=model) from None


class OpenAIPassthrough:
    """OpenAI upstream → OpenAI client. Bytes go out as they came.

    When modelpool asked for usage the client did not (``strip_usage``), the
    usage-only chunk (``choices: []``) is cut out: the relay then forwards
    whole events only, holding an unfinished one until its end arrives.
    """

    __slots__ = ("_held", "_model", "_strip", "events", "usage")

    def __init__(self, model: str, *, strip_usage: bool) -> None:
        self._model = model
        self._strip = strip_usage
        self._held = Unfinished()
        self.usage: Usage | None = None
        self.events = 0

    def feed(self, chunk: bytes) -> bytes:
        self.events += chunk.count(b"data:")
        try:
            whole = self._whole(chunk)
        except ValueError as exc:
            raise UpstreamStreamBroken(f"{self._model}: {exc}", model=self._model) from None
        if b'"usage"' in whole:
            whole = self._scan(whole)
        return whole if self._strip else chunk

    def _whole(self, chunk: bytes) -> bytes:
        """The complete lines (events, when stripping) that this read finishes."""
        if b"\n" not in chunk:
            self._held.hold(chunk)
            return b""
        buffer = self._held.join(chunk)
        if self._strip:
            buffer = buffer.replace(b"\r\n", b"\n")
        sep = b"\n\n" if self._strip else b"\n"
        end = buffer.rfind(sep) + len(sep) if sep in buffer else 0
        self._held.hold(buffer[end:])
        return buffer[:end]

    def _scan(self, whole: bytes) -> bytes:
        kept = []
        for block in whole.split(b"\n\n"):
            usage = _usage_in(block)
            if usage is not None:
                self.usage = usage_from_openai(usage[0])
                if self._strip and usage[1]:
                    continue
            kept.append(block)
        return b"\n\n".join(kept)

    def close(self) -> bytes:
        rest = self._held.join(b"")
        return rest if self._strip else b""

    def fail(self, message: str) -> bytes:
        return openai_error_event(message)


def _usage_in(block: bytes) -> tuple[Mapping[str, Any], bool] | None:
    """The usage object in an event's data lines, and whether the event is usage only."""
    for line in block.split(b"\n"):
        if not line.startswith(b"data:") or b'"usage"' not in line:
            continue
        try:
            payload = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue
        usage = payload.get("usage") if isinstance(payload, dict) else None
        if isinstance(usage, dict):
            return usage, not payload.get("choices")
    return None


class AnthropicPassthrough:
    """Anthropic upstream → Anthropic client: bytes as they came, usage from
    ``message_start`` and ``message_delta``."""

    __slots__ = ("_model", "_reader", "events", "usage")

    def __init__(self, model: str) -> None:
        self._model = model
        self._reader = EventReader()
        self.usage: Usage | None = None
        self.events = 0

    def feed(self, chunk: bytes) -> bytes:
        self.events += chunk.count(b"data:")
        for kind, data in _events(self._reader, chunk, self._model):
            if kind in ("message_start", "message_delta"):
                self.usage = _anthropic_usage(self.usage, kind, _payload(data, self._model))
        return chunk

    def close(self) -> bytes:
        return b""

    def fail(self, message: str) -> bytes:
        return anthropic_error_event(message)


def _anthropic_usage(usage: Usage | None, kind: str, event: Any) -> Usage | None:
    if not isinstance(event, dict):
        return usage
    if kind == "message_start":
        message = event.get("message")
        return usage_from_anthropic(message.get("usage") if isinstance(message, dict) else None)
    return merge_anthropic_delta_usage(usage or Usage(), event.get("usage"))


class AnthropicToOpenAI:
    """Anthropic upstream → OpenAI client."""

    __slots__ = ("_model", "_reader", "_translator", "events", "usage")

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self._model = model
        self._reader = EventReader()
        self._translator = AnthropicToOpenAIStream(include_usage=include_usage)
        self.usage: Usage | None = None
        self.events = 0

    def feed(self, chunk: bytes) -> bytes:
        self.events += chunk.count(b"data:")
        out = []
        for kind, data in _events(self._reader, chunk, self._model):
            if kind == "ping":
                continue
            event = _payload(data, self._model)
            if not isinstance(event, dict):
                continue
            if kind in ("message_start", "message_delta"):
                self.usage = _anthropic_usage(self.usage, kind, event)
            try:
                chunks = self._translator.feed(event)
            except TranslationError as exc:
                raise UpstreamStreamBroken(f"{self._model}: {exc}", model=self._model) from None
            out += [data_event(c) for c in chunks]
        return b"".join(out)

    def close(self) -> bytes:
        return b"".join(data_event(c) for c in self._translator.finish()) + DONE

    def fail(self, message: str) -> bytes:
        return openai_error_event(message)


class OpenAIToAnthropic:
    """OpenAI upstream → Anthropic client."""

    __slots__ = ("_model", "_reader", "_translator", "events", "usage")

    def __init__(self, model: str, *, input_tokens: int) -> None:
        self._model = model
        self._reader = EventReader()
        self._translator = OpenAIToAnthropicStream(input_tokens=input_tokens)
        self.usage: Usage | None = None
        self.events = 0

    def feed(self, chunk: bytes) -> bytes:
        self.events += chunk.count(b"data:")
        out = []
        for _, data in _events(self._reader, chunk, self._model):
            if data == b"[DONE]":
                continue
            payload = _payload(data, self._model)
            if not isinstance(payload, dict):
                continue
            if isinstance(payload.get("usage"), dict):
                self.usage = usage_from_openai(payload["usage"])
            try:
                events = self._translator.feed(payload)
            except TranslationError as exc:
                raise UpstreamStreamBroken(f"{self._model}: {exc}", model=self._model) from None
            out += [named_event(e["type"], e) for e in events]
        return b"".join(out)

    def close(self) -> bytes:
        return b"".join(named_event(e["type"], e) for e in self._translator.finish())

    def fail(self, message: str) -> bytes:
        return anthropic_error_event(message)
