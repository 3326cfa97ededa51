"""Incremental stream translation on parsed SSE events (dicts in, dicts out).

Each translator is fed the upstream's events one at a time and returns the
events to send downstream; :meth:`finish` closes the sequence (it is safe to
call after a complete stream, and makes a truncated one well-formed). SSE
framing is the caller's business: OpenAI chunks go out as ``data:`` lines,
Anthropic events as ``event: <type>`` plus ``data:``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from modelpool.providers.translate.content import (
    REASONING_KEY,
    THINKING_KEY,
    THINKING_TYPES,
    dump_json,
)
from modelpool.providers.translate.errors import TranslationError
from modelpool.providers.translate.reasons import anthropic_stop_reason, openai_finish_reason
from modelpool.providers.translate.responses import (
    anthropic_error_to_openai,
    openai_error_to_anthropic,
)
from modelpool.providers.translate.usage import (
    Usage,
    merge_anthropic_delta_usage,
    usage_from_anthropic,
    usage_from_openai,
    usage_to_anthropic,
    usage_to_openai,
)

Event = dict[str, Any]


@dataclass
class _Block:
    kind: str
    tool_index: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    arguments_sent: bool = False


class AnthropicToOpenAIStream:
    """Anthropic Messages stream events → OpenAI ``chat.completion.chunk`` dicts.

    Thinking text streams as ``delta.reasoning_content``; each finished
    thinking block is sent whole in ``delta.modelpool_thinking`` (a list) so
    that a client can hand it back verbatim. An ``error`` event becomes an
    ``{"error": {...}}`` payload and ends the stream. A tool call whose block
    streamed no argument text at all (a tool without parameters) gets ``"{}"``
    when its block stops, as in the non-streamed translation: every call's
    arguments parse as JSON.
    """

    def __init__(self, *, include_usage: bool = False, created: int | None = None) -> None:
        self._include_usage = include_usage
        self._created = int(time.time()) if created is None else created
        self._id = ""
        self._model = ""
        self._usage = Usage()
        self._blocks: dict[int, _Block] = {}
        self._tools = 0
        self._started = self._finished = self._closed = False

    def feed(self, event: Mapping[str, Any]) -> list[Event]:
        if self._closed:
            return []
        handler = self._handlers.get(event.get("type", ""))
        return handler(self, event) if handler else []

    def finish(self) -> list[Event]:
        if self._closed:
            return []
        out = self._start()
        if not self._finished:
            out += self._finish_chunk(None)
        if self._include_usage:
            out.append(self._chunk_base() | {"choices": [], "usage": usage_to_openai(self._usage)})
        self._closed = True
        return out

    # -- events

    def _on_message_start(self, event: Mapping[str, Any]) -> list[Event]:
        message = event.get("message") or {}
        self._id = message.get("id", self._id)
        self._model = message.get("model", self._model)
        self._usage = usage_from_anthropic(message.get("usage"))
        return self._start()

    def _on_block_start(self, event: Mapping[str, Any]) -> list[Event]:
        out = self._start()
        block = dict(event.get("content_block") or {})
        kind = block.get("type", "")
        state = _Block(kind, raw=block)
        self._blocks[event.get("index", 0)] = state
        if kind == "text" and block.get("text"):
            out.append(self._chunk({"content": block["text"]}))
        elif kind == "tool_use":
            state.tool_index = self._tools
            self._tools += 1
            arguments = dump_json(block["input"]) if block.get("input") else ""
            state.arguments_sent = bool(arguments)
            call = {"index": state.tool_index, "id": block.get("id", ""), "type": "function"}
            call["function"] = {"name": block.get("name", ""), "arguments": arguments}
            out.append(self._chunk({"tool_calls": [call]}))
        return out

    def _on_block_delta(self, event: Mapping[str, Any]) -> list[Event]:
        state = self._blocks.get(event.get("index", 0))
        if state is None:
            raise TranslationError(
                "content_block_delta for a block that was never started", "index"
            )
        delta = event.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "input_json_delta" and delta.get("partial_json"):
            if state.tool_index is None:  # a server tool's input: nothing OpenAI can show
                return []
            state.arguments_sent = True
            fragment = {"index": state.tool_index, "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [fragment]})]
        if kind == "thinking_delta":
            state.raw["thinking"] = state.raw.get("thinking", "") + delta.get("thinking", "")
            return [self._chunk({REASONING_KEY: delta.get("thinking", "")})]
        if kind == "signature_delta":
            state.raw["signature"] = state.raw.get("signature", "") + delta.get("signature", "")
        return []

    def _on_block_stop(self, event: Mapping[str, Any]) -> list[Event]:
        state = self._blocks.get(event.get("index", 0))
        if state is None:
            return []
        if state.kind in THINKING_TYPES:
            return [self._chunk({THINKING_KEY: [state.raw]})]
        if state.tool_index is not None and not state.arguments_sent:
            state.arguments_sent = True
            fragment = {"index": state.tool_index, "function": {"arguments": "{}"}}
            return [self._chunk({"tool_calls": [fragment]})]
        return []

    def _on_message_delta(self, event: Mapping[str, Any]) -> list[Event]:
        self._usage = merge_anthropic_delta_usage(self._usage, event.get("usage"))
        stop_reason = (event.get("delta") or {}).get("stop_reason")
        return [] if self._finished else self._start() + self._finish_chunk(stop_reason)

    def _on_message_stop(self, event: Mapping[str, Any]) -> list[Event]:
        return self.finish()

    def _on_error(self, event: Mapping[str, Any]) -> list[Event]:
        self._closed = True
        return [anthropic_error_to_openai(event)]

    _handlers: ClassVar[
        dict[str, Callable[[AnthropicToOpenAIStream, Mapping[str, Any]], list[Event]]]
    ] = {
        "message_start": _on_message_start,
        "content_block_start": _on_block_start,
        "content_block_delta": _on_block_delta,
        "content_block_stop": _on_block_stop,
        "message_delta": _on_message_delta,
        "message_stop": _on_message_stop,
        "error": _on_error,
    }

    # -- chunks

    def _chunk_base(self) -> Event:
        base: Event = {"id": self._id, "object": "chat.completion.chunk", "created": self._created}
        return base | {"model": self._model}

    def _chunk(self, delta: Event, finish_reason: str | None = None) -> Event:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        chunk = self._chunk_base() | {"choices": [choice]}
        return chunk | {"usage": None} if self._include_usage else chunk

    def _start(self) -> list[Event]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _finish_chunk(self, stop_reason: str | None) -> list[Event]:
        self._finished = True
        finish = openai_finish_reason(stop_reason, has_tool_calls=self._tools > 0)
        return [self._chunk({}, finish)]


@dataclass
class _Tool:
    id: str
    name: str = ""
    block: int | None = None
    fragments: list[str] = field(default_factory=list)
    """Argument text received but not sent yet."""


@dataclass
class _HeldText:
    parts: list[str]


_Held = _HeldText | dict[str, Any] | _Tool
"""Something held back until the end of the stream: text, a thinking block, a tool call."""


class OpenAIToAnthropicStream:
    """OpenAI ``chat.completion.chunk`` dicts → Anthropic Messages stream events.

    ``message_start`` reports the usage of the first chunk if it has one, else
    the caller's ``input_tokens`` estimate; the final ``message_delta`` carries
    the upstream's usage when the stream reported it.

    Tool-call fragments are matched to their call by ``index`` (unless they
    bring a different ``id``), then by ``id``; a fragment with neither
    continues the latest call. OpenAI never says that a tool call is complete
    and an Anthropic block cannot be reopened, so only the first tool call
    streams live: its block opens once its name is known (earlier fragments
    are held, never dropped) and stays open until the stream ends. Whatever
    arrives after the first tool call started (text, thinking blocks, further
    tool calls and their fragments, in any interleaving) is held and sent as
    whole blocks, in order of arrival, by :meth:`finish`. No fragment can ever
    arrive for a block that is already closed.
    """

    def __init__(self, *, message_id: str = "", model: str = "", input_tokens: int = 0) -> None:
        self._id = message_id
        self._model = model
        self._usage = Usage(input_tokens=input_tokens)
        self._next_block = 0
        self._open: tuple[int, str] | None = None  # (block index, "text" | "thinking" | tool id)
        self._by_index: dict[int, _Tool] = {}
        self._by_id: dict[str, _Tool] = {}
        self._tools: list[_Tool] = []
        self._held: list[_Held] = []
        self._finish_reason: str | None = None
        self._started = self._done = False

    def feed(self, chunk: Mapping[str, Any]) -> list[Event]:
        if self._done:
            return []
        if chunk.get("error") is not None:
            return self._error(chunk)
        if chunk.get("usage"):
            self._usage = usage_from_openai(chunk["usage"])
        out = self._start(chunk)
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) == 0:
                out += self._choice(choice)
        return out

    def finish(self) -> list[Event]:
        if self._done:
            return []
        out = self._start({})
        if self._tools and self._tools[0].block is None:
            out += self._open_tool(self._tools[0])
        out += self._close()
        for item in self._held:
            out += self._emit_held(item)
        self._held = []
        stop = anthropic_stop_reason(self._finish_reason, has_tool_calls=bool(self._tools))
        delta = {"stop_reason": stop, "stop_sequence": None}
        out.append(
            {"type": "message_delta", "delta": delta, "usage": usage_to_anthropic(self._usage)}
        )
        out.append({"type": "message_stop"})
        self._done = True
        return out

    def _start(self, chunk: Mapping[str, Any]) -> list[Event]:
        if self._started:
            return []
        self._started = True
        self._id = self._id or chunk.get("id", "")
        self._model = self._model or chunk.get("model", "")
        message = {"id": self._id, "type": "message", "role": "assistant", "model": self._model}
        message |= {"content": [], "stop_reason": None, "stop_sequence": None}
        message["usage"] = usage_to_anthropic(replace(self._usage, output_tokens=0))
        return [{"type": "message_start", "message": message}]

    def _error(self, chunk: Mapping[str, Any]) -> list[Event]:
        self._done = True
        return [openai_error_to_anthropic(chunk)]

    def _choice(self, choice: Mapping[str, Any]) -> list[Event]:
        delta = choice.get("delta") or {}
        out: list[Event] = []
        for block in delta.get(THINKING_KEY) or []:
            if isinstance(block, Mapping) and block.get("type") in THINKING_TYPES:
                out += self._thinking(block)
        for key in ("content", "refusal"):
            if delta.get(key):
                out += self._text(delta[key])
        if delta.get("refusal") and not self._finish_reason:
            self._finish_reason = "content_filter"
        for call in delta.get("tool_calls") or []:
            out += self._tool_delta(call)
        if choice.get("finish_reason"):
            self._finish_reason = self._finish_reason or choice["finish_reason"]
        return out

    # -- blocks

    def _begin(self, key: str, content_block: Event) -> list[Event]:
        out = self._close()
        index = self._next_block
        self._next_block += 1
        self._open = (index, key)
        return [
            *out,
            {"type": "content_block_start", "index": index, "content_block": content_block},
        ]

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        index = self._open[0]
        self._open = None
        return [{"type": "content_block_stop", "index": index}]

    def _delta(self, delta: Event) -> Event:
        assert self._open is not None
        return {"type": "content_block_delta", "index": self._open[0], "delta": delta}

    def _text(self, text: str) -> list[Event]:
        if self._tools:
            if self._held and isinstance(self._held[-1], _HeldText):
                self._held[-1].parts.append(text)
            else:
                self._held.append(_HeldText([text]))
            return []
        out = (
            []
            if self._open and self._open[1] == "text"
            else self._begin("text", {"type": "text", "text": ""})
        )
        return [*out, self._delta({"type": "text_delta", "text": text})]

    def _thinking(self, block: Mapping[str, Any]) -> list[Event]:
        if self._tools:
            self._held.append(dict(block))
            return []
        return self._thinking_block(block)

    def _thinking_block(self, block: Mapping[str, Any]) -> list[Event]:
        if block.get("type") == "redacted_thinking":
            return self._begin("thinking", dict(block)) + self._close()
        out = self._begin("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        out.append(self._delta({"type": "thinking_delta", "thinking": block.get("thinking", "")}))
        out.append(
            self._delta({"type": "signature_delta", "signature": block.get("signature", "")})
        )
        return out + self._close()

    def _emit_held(self, item: _Held) -> list[Event]:
        if isinstance(item, _HeldText):
            out = self._begin("text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": "".join(item.parts)}))
            return out + self._close()
        if isinstance(item, _Tool):
            return self._open_tool(item) + self._close()
        return self._thinking_block(item)

    # -- tool calls

    def _tool_delta(self, call: Mapping[str, Any]) -> list[Event]:
        tool, new = self._resolve_tool(call)
        function = call.get("function") or {}
        tool.name = tool.name or function.get("name") or ""
        arguments = function.get("arguments") or ""
        if tool is not self._tools[0]:
            if new:
                self._held.append(tool)
            if arguments:
                tool.fragments.append(arguments)
            return []
        if tool.block is None:
            if arguments:
                tool.fragments.append(arguments)
            return self._open_tool(tool) if tool.name else []
        return (
            [self._delta({"type": "input_json_delta", "partial_json": arguments})]
            if arguments
            else []
        )

    def _resolve_tool(self, call: Mapping[str, Any]) -> tuple[_Tool, bool]:
        """Match a fragment to its tool call (and say whether the call is new):
        by ``index`` (unless it brings a different ``id``: some servers reuse
        index 0), else by ``id``, else the latest call. An unseen index or id
        starts a new call. An empty ``id`` counts as none."""
        index, tool_id = call.get("index"), call.get("id") or None
        if index is not None:
            known = self._by_index.get(index)
            if known is not None and (tool_id is None or tool_id == known.id):
                return known, False
        elif tool_id is None and self._tools:
            return self._tools[-1], False
        elif tool_id in self._by_id:
            return self._by_id[tool_id], False
        tool = _Tool(id=tool_id or f"toolu_modelpool_{len(self._tools)}")
        if index is not None:
            self._by_index[index] = tool
        self._by_id[tool.id] = tool
        self._tools.append(tool)
        return tool, True

    def _open_tool(self, tool: _Tool) -> list[Event]:
        start = {"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}}
        out = self._begin(tool.id, start)
        tool.block = self._next_block - 1
        if tool.fragments:
            partial = "".join(tool.fragments)
            out.append(self._delta({"type": "input_json_delta", "partial_json": partial}))
            tool.fragments = []
        return out
