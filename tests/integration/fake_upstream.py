"""A scriptable fake OpenAI-format upstream, served for real on 127.0.0.1.

The idea is Envoy's FakeUpstream and LiteLLM's fake endpoint server: a real
HTTP server the daemon talks to over a real socket, so connection pooling,
timeouts, streaming and disconnects are exercised for real, while the test
decides exactly what the upstream does and can read back what it received.

Scripting is per request path: ``fake.script(CHAT, Reply(status=500), Reply())``
answers the first chat request with a 500 and every later one with the
default answer (the last reply of a script repeats). Unscripted paths get a
plausible OpenAI answer built from the request (JSON, or SSE when the
request asked for a stream).

Every request is recorded as a :class:`Received`, whose ``closed`` event is
set when the client went away before the reply was complete (the server runs
with ``handler_cancellation=True``, so a closed connection cancels the
handler, exactly like the daemon's own server).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"

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


def error_json(message: str, kind: str = "server_error", code: str | None = None) -> Any:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


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

    @property
    def json(self) -> Any:
        return orjson.loads(self.raw) if self.raw else None


class FakeUpstream:
    """An OpenAI-format server on 127.0.0.1:<free port> that does what it is told."""

    def __init__(self) -> None:
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

    def script(self, path: str, *replies: Reply) -> None:
        """Answer requests to ``path`` with ``replies`` in order; the last one repeats."""
        assert replies, "script at least one reply"
        self._scripts[path] = list(replies)

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
        async with self._arrived:
            self.requests.append(received)
            self._arrived.notify_all()
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

    async def _respond(
        self, request: web.Request, received: Received, reply: Reply
    ) -> web.StreamResponse:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.drop == "before_headers":
            return await _hang_up(request)
        wants_stream = isinstance(received.json, dict) and received.json.get("stream") is True
        chunks = reply.chunks
        if chunks is None and reply.status == 200 and reply.json is None and wants_stream:
            chunks = default_stream(received.json)
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


def default_answer(received: Received) -> Any:
    """A minimal, valid OpenAI answer for the request's path, echoing its model."""
    body = received.json if isinstance(received.json, dict) else {}
    model = body.get("model", "unknown")
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


def default_stream(body: Mapping[str, Any]) -> list[bytes]:
    model = str(body.get("model", "unknown"))
    words = ["hello", " from", f" {model}"]
    return [chat_chunk(w, model) for w in words] + [sse("[DONE]")]
