"""Thin aiohttp handlers for the ingress endpoints: OpenAI's and Anthropic's Messages.

A handler reads and checks the body, takes the routing table once, hands the
request to the dispatcher and relays what comes back. Streams are written
chunk by chunk as they arrive; nothing is buffered. Which API the client
speaks decides only the checks here: translation is the dispatcher's
business (``modelpool.bridge``), error formats ``api_errors``'.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

from modelpool.access import STARTED, TRACE
from modelpool.auth import authorize
from modelpool.config.spec import ClientSpec
from modelpool.dispatch import Dispatcher, Served
from modelpool.drain import Drain, cut_short
from modelpool.errors import (
    BadRequest,
    PayloadTooLarge,
    RequestError,
    RequestTimeout,
    ShuttingDown,
    Unauthorized,
    UpstreamError,
)
from modelpool.metrics import Metrics
from modelpool.providers.anthropic import FORWARDED
from modelpool.registry_view import models_listing
from modelpool.request import ProxyRequest, forwarded_headers
from modelpool.table import RoutingTable, TableHolder
from modelpool.tokens import estimate
from modelpool.usage.record import ANONYMOUS, NO_MODEL, OTHER

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
BODY_TIMEOUT = 30.0
"""A client trickling its body holds a handler at most this long (slowloris)."""


async def read_json(request: web.Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, refusing more than ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds {limit}")
    content = request.content
    if content.is_eof():  # the usual case: the whole body came with the head
        raw: bytes | bytearray = content.read_nowait(-1)
        if len(raw) > limit:  # a chunked body announces no length
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    else:
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                raw = await _body(request, limit)
        except TimeoutError:
            raise RequestTimeout(f"request body not received within {BODY_TIMEOUT:g}s") from None
    if not raw:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


async def _body(request: web.Request, limit: int) -> bytes | bytearray:
    """The whole body: in one read when its length is announced (within ``limit``),
    else read on, counting, up to ``limit``."""
    if request.content_length == 0:
        return b""
    if request.content_length is not None:
        try:
            return await request.content.readexactly(request.content_length)
        except asyncio.IncompleteReadError:
            raise BadRequest("the request body ended before its Content-Length") from None
    raw = bytearray()
    while chunk := await request.content.readany():
        raw += chunk
        if len(raw) > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    return raw


def _require(body: dict[str, Any], key: str, kinds: tuple[type, ...], what: str) -> None:
    value = body.get(key)
    if value is None:
        raise BadRequest(f"missing required parameter {key!r}", param=key)
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise BadRequest(f"{key!r} must be {what}", param=key)


def _require_messages(body: dict[str, Any]) -> None:
    _require(body, "messages", (list,), "a list of messages")
    if not body["messages"] or not all(isinstance(m, dict) for m in body["messages"]):
        raise BadRequest("'messages' must be a non-empty list of objects", param="messages")


def check_body(endpoint: str, body: dict[str, Any]) -> bool:
    """Validate what routing needs; return whether the client asked for a stream."""
    _require(body, "model", (str,), "a string naming a pool or model")
    if endpoint == "chat":
        _require_messages(body)
    elif endpoint == "messages":
        _require_messages(body)
        _require(body, "max_tokens", (int,), "a positive integer")
        if body["max_tokens"] < 1:
            raise BadRequest("'max_tokens' must be a positive integer", param="max_tokens")
    elif endpoint == "completions":
        _require(body, "prompt", (str, list), "a string or a list")
    else:
        _require(body, "input", (str, list), "a string or a list")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", param="stream")
    if stream and endpoint == "embeddings":
        raise BadRequest("embeddings cannot be streamed", param="stream")
    return stream


class ProxyApi:
    def __init__(
        self, holder: TableHolder, dispatcher: Dispatcher, drain: Drain, metrics: Metrics
    ) -> None:
        self._holder = holder
        self._dispatcher = dispatcher
        self._drain = drain
        self._overhead = metrics.overhead
        self._requests = metrics.requests

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self.chat),
            web.post("/v1/completions", self.completions),
            web.post("/v1/embeddings", self.embeddings),
            web.post("/v1/messages", self.messages),
            web.post("/v1/messages/count_tokens", self.count_tokens),
            web.get("/v1/models", self.models),
        ]

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "completions")

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "embeddings")

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "messages")

    async def count_tokens(self, request: web.Request) -> web.Response:
        """Anthropic's token counter, answered from modelpool's own estimate (no upstream
        call, so it is free and instant; ``x-modelpool-estimate: true`` says what it is)."""
        table = self._holder.current
        client = table.authenticator.authenticate(request.headers)
        body = await read_json(request, table.config.server.max_body_bytes)
        _require(body, "model", (str,), "a string naming a pool or model")
        _require_messages(body)
        authorize(client, body["model"])
        self._dispatcher.resolve(table, body["model"])
        tokens = estimate("messages", body).input_tokens
        return web.json_response(
            {"input_tokens": tokens}, headers={"x-modelpool-estimate": "true"}, dumps=_dumps
        )

    async def models(self, request: web.Request) -> web.Response:
        table = self._holder.current
        client = table.authenticator.authenticate(request.headers)
        return web.json_response(models_listing(table, client), dumps=_dumps)

    async def _proxy(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        table = self._holder.current
        proxy_request = await self._admitted(request, table, endpoint)
        request[TRACE] = proxy_request.trace  # the access log reads the bill from it
        try:
            async with self._dispatcher.serve(table, proxy_request) as served:
                overhead = self._overhead_of(request, served)
                headers = {
                    "x-modelpool-pool": served.pool,
                    "x-modelpool-model": served.member.model.name,
                    "x-modelpool-attempts": str(served.attempts),
                    "x-modelpool-failovers": str(served.failovers),
                    "x-modelpool-overhead-ms": f"{overhead * 1000:.3f}",
                }
                if served.rest is None:
                    return web.Response(
                        body=served.body, headers=headers, content_type="application/json"
                    )
                return await _relay(request, served, headers, self._drain)
        except asyncio.CancelledError:
            if cut_short(self._drain):  # nothing sent yet: say so with a status
                message = "modelpool shut down before answering; retry"
                raise ShuttingDown(message, retry_after=1) from None
            raise

    async def _admitted(
        self, request: web.Request, table: RoutingTable, endpoint: str
    ) -> ProxyRequest:
        """The request as routing takes it: its client known, its body read and checked,
        its pool allowed. A refusal here is counted as a finished request, rejected."""
        client: ClientSpec | None = None
        body: dict[str, Any] | None = None
        try:
            client = table.authenticator.authenticate(request.headers)
            body = await read_json(request, table.config.server.max_body_bytes)
            stream = check_body(endpoint, body)
            authorize(client, body["model"])
        except RequestError as exc:
            who = OTHER if isinstance(exc, Unauthorized) else client.name if client else ANONYMOUS
            named = body.get("model") if body is not None else None
            pool = named if isinstance(named, str) and named in table.routes else OTHER
            self._requests.labels(who, pool, NO_MODEL, "rejected").inc()
            raise
        forwarded = forwarded_headers(request.headers, FORWARDED)
        return ProxyRequest(endpoint, body["model"], body, stream, client, forwarded)

    def _overhead_of(self, request: web.Request, served: Served) -> float:
        """modelpool's own time before the answer's head goes out: everything since the
        request arrived except waiting on upstreams (queueing and backoff included)."""
        started = request.get(STARTED)
        if started is None:
            return 0.0
        overhead: float = max(0.0, time.perf_counter() - started - served.upstream_seconds)
        self._overhead.observe(overhead)
        return overhead


async def _relay(
    request: web.Request, served: Served, headers: dict[str, str], drain: Drain
) -> web.StreamResponse:
    response = web.StreamResponse(headers={**headers, **STREAM_HEADERS})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    if served.body:
        await response.write(served.body)
    relay, rest = served.relay, served.rest
    assert relay is not None
    assert rest is not None
    try:
        async for chunk in rest:
            out = relay.feed(chunk)
            if out:
                await response.write(out)
        tail = relay.close()
    except UpstreamError as exc:
        # Bytes already went out: the status can't change, so say it in the stream.
        served.broken = exc
        tail = relay.fail(exc.message)
    except asyncio.CancelledError:
        if not cut_short(drain):
            raise  # the client went away: nobody to tell
        served.cut = True
        tail = relay.fail("modelpool is shutting down; the answer was cut short")
    if tail:
        await response.write(tail)
    await response.write_eof()
    return response


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
