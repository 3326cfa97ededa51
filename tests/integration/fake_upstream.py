"""A scriptable fake OpenAI-format and Anthropic-format upstream, served for real on 127.0.0.1.

The idea is Envoy's FakeUpstream and LiteLLM's fake endpoint server: a real
HTTP server the daemon talks to over a real socket, so connection pooling,
timeouts, streaming and disconnects are exercised for real, while the test
decides exactly what the upstream does and can read back what it received.

Scripting is per request path: ``fake.script(CHAT, Reply(status=500), Reply())``
answers the first chat request with a 500 and every later one with the
default answer (the last reply of a script repeats). Unscripted paths get a
plausible answer built from the request (JSON, or SSE when the request asked
for a stream): OpenAI's format, or Anthropic's for ``/v1/messages``.

Requests to the API paths are first checked against the public request shapes
of their API (:mod:`api_shapes`); one a real upstream would refuse is answered
with a 400 in that API's error format, without using up a scripted reply, and
recorded with the reason in :attr:`Received.rejected`. Tests that send odd
bodies on purpose turn this off with ``FakeUpstream(validate=False)``.

Every request is recorded as a :class:`Received`, whose ``closed`` event is
set when the client went away before the reply was complete (the server runs
with ``handler_cancellation=True``, so a closed connection cancels the
handler, exactly like the daemon's own server).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web
from api_shapes import api_of, check_request
from multidict import CIMultiDict, CIMultiDictProxy

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
MESSAGES = "/v1/messages"

HANG_LIMIT = 30.0
"""The longest any scripted wait lasts, so a broken test cannot hang forever."""


def sse(data: Any) -> bytes:
    """One SSE event carrying ``data`` (a JSON value, or a raw string such as [DONE])."""
    payload = data.encode() if isinstance(data, str) else orjson.dumps(data)
    return b"data: " + payload + b"\n\n"


def chat_chunk(content: str, model: str = "upstream", finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
    return sse({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
                "choices": [choice]})  # fmt: skip


def error_json(
    message: str, kind: str = "server_error", code: str | None = None, param: str | None = None
) -> Any:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# --------------------------------------------------------------------- OpenAI streams


def _chunk_data(
    delta: Mapping[str, Any], model: str, finish: str | None, with_usage: bool
) -> dict[str, Any]:
    choice = {"index": 0, "delta": dict(delta), "finish_reason": finish}
    data: dict[str, Any] = {
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
        "choices": [choice],
    }  # fmt: skip
    if with_usage:
        data["usage"] = None
    return data


def _usage_chunk(model: str, usage: Mapping[str, int]) -> bytes:
    """The last chunk of a stream asked for with ``stream_options.include_usage``."""
    return sse({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
                "choices": [], "usage": dict(usage)})  # fmt: skip


def openai_tool_stream(
    calls: Sequence[Mapping[str, Any]],
    *,
    model: str = "upstream",
    usage: Mapping[str, int] | None = None,
    pieces: int = 3,
) -> list[bytes]:
    """A chat stream of tool calls, as OpenAI sends it, ending in ``[DONE]``.

    Each call is ``{"name": ..., "arguments": str | dict, "id": ...}`` (``id``
    defaults to ``call_fake<i>``). A call's first delta carries its index, id,
    type, name and empty arguments; the arguments then follow in ``pieces``
    fragments carrying only the index. A finish chunk (``tool_calls``) closes
    the choice; with ``usage``, every chunk has ``"usage": null`` and a final
    ``choices: []`` chunk carries the usage, as with ``include_usage``.
    """
    with_usage = usage is not None
    role = {"role": "assistant", "content": None}
    chunks = []
    for index, call in enumerate(calls):
        arguments = call.get("arguments", "")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        head = {
            "index": index, "id": call.get("id", f"call_fake{index}"), "type": "function",
            "function": {"name": call["name"], "arguments": ""},
        }  # fmt: skip
        first = {**role, "tool_calls": [head]} if index == 0 else {"tool_calls": [head]}
        chunks.append(sse(_chunk_data(first, model, None, with_usage)))
        for fragment in _fragments(arguments, pieces):
            delta = {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
            chunks.append(sse(_chunk_data(delta, model, None, with_usage)))
    chunks.append(sse(_chunk_data({}, model, "tool_calls", with_usage)))
    if usage is not None:
        chunks.append(_usage_chunk(model, usage))
    return [*chunks, sse("[DONE]")]


def _fragments(text: str, pieces: int) -> list[str]:
    """``text`` cut into at most ``pieces`` non-empty, nearly equal parts (none when empty)."""
    size = max(1, -(-len(text) // max(1, pieces)))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _words(text: str) -> list[str]:
    """``text`` as word deltas, each with the whitespace before it: "a b" → ["a", " b"]."""
    return re.findall(r"\s*\S+|\s+$", text)


# --------------------------------------------------------------------- Anthropic answers

ANTHROPIC_USAGE = {
    "input_tokens": 3,
    "output_tokens": 2,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}
_message_ids = itertools.count(1)


def anthropic_error_json(kind: str, message: str) -> dict[str, Any]:
    """An Anthropic error body, e.g. ``anthropic_error_json("overloaded_error", "Overloaded")``."""
    return {"type": "error", "error": {"type": kind, "message": message}}


def anthropic_event(kind: str, data: Mapping[str, Any]) -> bytes:
    """One Anthropic SSE event: ``event: <kind>`` and its data (``type`` defaults to ``kind``)."""
    payload = orjson.dumps({"type": kind, **data})
    return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"


Block = Mapping[str, Any] | str
"""An Anthropic content block; a plain string stands for a text block."""


def _block(block: Block) -> dict[str, Any]:
    return {"type": "text", "text": block} if isinstance(block, str) else dict(block)


def anthropic_message(
    content_blocks: Sequence[Block],
    stop_reason: str | None = "end_turn",
    usage: Mapping[str, int] | None = None,
    model: str = "upstream",
    *,
    stop_sequence: str | None = None,
) -> dict[str, Any]:
    """A non-streamed Anthropic ``Message``; ``usage`` overrides keys of :data:`ANTHROPIC_USAGE`."""
    return {
        "id": f"msg_fake{next(_message_ids):04d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [_block(b) for b in content_blocks],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {**ANTHROPIC_USAGE, **(usage or {})},
    }


def anthropic_stream(
    blocks: Sequence[Block],
    stop_reason: str | None = "end_turn",
    usage: Mapping[str, int] | None = None,
    *,
    model: str = "upstream",
    stop_sequence: str | None = None,
    ping: bool = True,
) -> list[bytes]:
    """The full event sequence of a streamed Anthropic message with these content blocks.

    message_start (empty content, ``output_tokens`` 1), an optional ping, then
    per block content_block_start / deltas / content_block_stop, message_delta
    (stop reason and ``output_tokens``) and message_stop. Text streams as word
    ``text_delta``s; ``tool_use`` starts with ``input: {}`` and streams its input
    as ``input_json_delta`` fragments; ``thinking`` streams ``thinking_delta``s
    then one ``signature_delta``; ``redacted_thinking`` arrives whole.
    """
    full = {**ANTHROPIC_USAGE, **(usage or {})}
    start = anthropic_message([], None, {**full, "output_tokens": 1}, model)
    events = [anthropic_event("message_start", {"message": start})]
    if ping:
        events.append(anthropic_event("ping", {}))
    for index, block in enumerate(blocks):
        events += _block_events(index, _block(block))
    delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
    events.append(
        anthropic_event(
            "message_delta", {"delta": delta, "usage": {"output_tokens": full["output_tokens"]}}
        )
    )
    events.append(anthropic_event("message_stop", {}))
    return events


def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
    kind = block.get("type")
    deltas: list[dict[str, Any]] = []
    if kind == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": w} for w in _words(block["text"])]
    elif kind == "tool_use":
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        arguments = orjson.dumps(block.get("input", {})).decode()
        deltas = [{"type": "input_json_delta", "partial_json": f} for f in _fragments(arguments, 3)]
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": w} for w in _words(block["thinking"])]
        deltas.append({"type": "signature_delta", "signature": block.get("signature", "")})
    else:  # redacted_thinking, or anything else a test wants sent as it is
        start = block
    events = [anthropic_event("content_block_start", {"index": index, "content_block": start})]
    events += [anthropic_event("content_block_delta", {"index": index, "delta": d}) for d in deltas]
    events.append(anthropic_event("content_block_stop", {"index": index}))
    return events


@dataclass(frozen=True)
class Reply:
    """What the fake upstream does with one request."""

    status: int = 200
    json: Any = None
    """The JSON body; None means the default OpenAI answer for the path."""
    body: bytes | None = None
    """A raw body, sent instead of ``json``."""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to wait before sending the status and headers."""
    chunks: Sequence[bytes] | None = None
    """Send an SSE stream of these chunks (as given) instead of a JSON body."""
    chunk_delay: float = 0.0
    """Seconds between two chunks (none before the first)."""
    stall_after: int | None = None
    """Stop after this many chunks and hang until the client goes away."""
    drop: Literal["before_headers", "after_headers"] | None = None
    """Close the connection before any response, or after the headers (and chunks)."""

    @classmethod
    def error(
        cls, status: int, message: str = "upstream failure", *, retry_after: str | None = None
    ) -> Reply:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return cls(status=status, json=error_json(message), headers=headers)

    @classmethod
    def anthropic_error(
        cls, status: int, kind: str, message: str, retry_after: str | None = None
    ) -> Reply:
        """An Anthropic error answer, e.g. ``(529, "overloaded_error", "Overloaded")``."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return cls(status=status, json=anthropic_error_json(kind, message), headers=headers)

    @classmethod
    def stream(cls, *contents: str, chunk_delay: float = 0.0, **kwargs: Any) -> Reply:
        """A chat SSE stream of one chunk per content, then ``[DONE]``."""
        chunks = [chat_chunk(c) for c in contents] + [sse("[DONE]")]
        return cls(chunks=chunks, chunk_delay=chunk_delay, **kwargs)


@dataclass
class Received:
    """One request as the fake upstream saw it, and what became of it."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: CIMultiDictProxy[str]
    raw: bytes
    arrived_at: float
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the client closed the connection before the reply was complete."""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the handler finished, however it ended."""
    peer: Any = None
    """The client's (host, port): one value across requests means one kept-alive connection."""
    sent_at: list[float] = field(default_factory=list)
    """``time.monotonic()`` right after each stream chunk was written."""
    rejected: str | None = None
    """Why the request was answered with a 400 as malformed for its API; None when it was not."""

    @property
    def json(self) -> Any:
        return orjson.loads(self.raw) if self.raw else None


class FakeUpstream:
    """An OpenAI- and Anthropic-format server on 127.0.0.1:<free port> that does what it is told."""

    def __init__(self, *, validate: bool = True) -> None:
        self.validate = validate
        """Answer requests that do not fit their API's public shape with a 400 (see api_shapes)."""
        self.requests: list[Received] = []
        self._scripts: dict[str, list[Reply]] = {}
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.in_flight = 0
        """Requests being handled right now."""
        self.peak_in_flight = 0
        """The most requests ever handled at once."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> FakeUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def root(self) -> str:
        """``http://127.0.0.1:PORT``: a base_url for providers that add /v1 themselves."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: what OpenAI-style providers take."""
        return f"{self.root}/v1"

    # ------------------------------------------------------------------ scripting

    def reset(self) -> None:
        """Forget every request and script (a module-scoped fake shared by many tests)."""
        self.requests.clear()
        self._scripts.clear()

    def script(self, path: str, *replies: Reply) -> None:
        """Answer requests to ``path`` with ``replies`` in order; the last one repeats."""
        assert replies, "script at least one reply"
        self._scripts[path] = list(replies)

    @property
    def rejections(self) -> list[Received]:
        """The requests answered with a 400 because they did not fit their API's shape."""
        return [r for r in self.requests if r.rejected is not None]

    async def wait_for_requests(self, count: int, within: float = 2.0) -> list[Received]:
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return self.requests

    def _next_reply(self, path: str) -> Reply:
        script = self._scripts.get(path)
        if not script:
            return Reply()
        return script.pop(0) if len(script) > 1 else script[0]

    # ------------------------------------------------------------------ serving

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            raw=await request.read(),
            arrived_at=time.monotonic(),
            peer=request.transport.get_extra_info("peername") if request.transport else None,
        )
        received.rejected = self._problem(received)
        async with self._arrived:
            self.requests.append(received)
            self._arrived.notify_all()
        if received.rejected is not None:
            reply = rejection(received.path, received.rejected)
        else:
            reply = self._next_reply(request.path)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._respond(request, received, reply)
        except (asyncio.CancelledError, ConnectionResetError):
            received.closed.set()
            raise
        finally:
            self.in_flight -= 1
            received.done.set()

    def _problem(self, received: Received) -> str | None:
        """Why a real upstream would refuse this request as malformed; None if it would not."""
        if not self.validate or received.method != "POST" or api_of(received.path) is None:
            return None
        try:
            # The stdlib parser: orjson refuses integers beyond 64 bits, which JSON allows.
            body = json.loads(received.raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return f"body: not valid JSON ({exc})"
        return check_request(received.path, body)

    async def _respond(
        self, request: web.Request, received: Received, reply: Reply
    ) -> web.StreamResponse:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.drop == "before_headers":
            return await _hang_up(request)
        chunks = reply.chunks
        if chunks is None and reply.status == 200 and reply.json is None and reply.body is None:
            asked = _body_of(received)
            if asked.get("stream") is True:
                chunks = default_stream(asked, received.path)
        if chunks is not None:
            return await self._stream(request, received, reply, chunks)
        body = reply.body
        if body is None:
            data = reply.json if reply.json is not None else default_answer(received)
            body = orjson.dumps(data)
        if reply.drop == "after_headers":
            response = web.StreamResponse(status=reply.status, headers=reply.headers)
            response.content_length = len(body) + 100
            response.content_type = "application/json"
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            return await _hang_up(request)
        return web.Response(
            status=reply.status, body=body, headers=reply.headers, content_type="application/json"
        )

    async def _stream(
        self, request: web.Request, received: Received, reply: Reply, chunks: Sequence[bytes]
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for index, chunk in enumerate(chunks):
            if reply.stall_after is not None and index >= reply.stall_after:
                await asyncio.sleep(HANG_LIMIT)
            if index and reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            await response.write(chunk)
            received.sent_at.append(time.monotonic())
        if reply.drop == "after_headers":
            return await _hang_up(request)
        await response.write_eof()
        return response


async def _hang_up(request: web.Request) -> web.StreamResponse:
    """Close the connection mid-reply; the handler is cancelled when it is gone."""
    assert request.transport is not None
    request.transport.close()
    await asyncio.sleep(HANG_LIMIT)
    raise AssertionError("the connection outlived its own close")


def rejection(path: str, reason: str) -> Reply:
    """The 400 a real upstream gives a malformed request, in the format of the path's API."""
    if api_of(path) == "anthropic":
        return Reply(status=400, json=anthropic_error_json("invalid_request_error", reason))
    where = reason.split(": ", 1)[0]
    param = None if where == "body" else where
    return Reply(status=400, json=error_json(reason, "invalid_request_error", param=param))


def _body_of(received: Received) -> dict[str, Any]:
    """The request's JSON object, or an empty one when it is not one."""
    try:
        body = received.json
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def default_answer(received: Received) -> Any:
    """A minimal, valid answer for the request's path (OpenAI or Anthropic), echoing its model."""
    body = _body_of(received)
    model = body.get("model", "unknown")
    if api_of(received.path) == "anthropic":
        return anthropic_message([f"hello from {model}"], model=str(model))
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    if received.path.endswith("/embeddings"):
        inputs = body.get("input", "")
        count = len(inputs) if isinstance(inputs, list) else 1
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2]} for i in range(count)]
        return {"object": "list", "data": data, "model": model, "usage": usage}
    if received.path.endswith("/chat/completions"):
        message = {"role": "assistant", "content": f"hello from {model}"}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": f"hello from {model}", "finish_reason": "stop"}
        kind = "text_completion"
    return {"id": "fake-1", "object": kind, "model": model, "choices": [choice], "usage": usage}


def default_stream(body: Mapping[str, Any], path: str = CHAT) -> list[bytes]:
    """The default stream for ``path``: "hello", " from", " <model>".

    Anthropic's is a full message event sequence. OpenAI's is one chunk per
    word then ``[DONE]``; when the request set ``stream_options.include_usage``,
    every chunk carries ``"usage": null``, and a last ``choices: []`` chunk the
    usage, as OpenAI does.
    """
    model = str(body.get("model", "unknown"))
    if api_of(path) == "anthropic":
        return anthropic_stream([f"hello from {model}"], model=model)
    words = ["hello", " from", f" {model}"]
    options = body.get("stream_options")
    if not (isinstance(options, dict) and options.get("include_usage") is True):
        return [chat_chunk(w, model) for w in words] + [sse("[DONE]")]
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    chunks = [sse(_chunk_data({"content": w}, model, None, True)) for w in words]
    return [*chunks, _usage_chunk(model, usage), sse("[DONE]")]
