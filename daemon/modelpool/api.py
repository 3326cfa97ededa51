"""Thin aiohttp handlers for the OpenAI-compatible ingress endpoints.

A handler reads and checks the body, takes the routing table once, hands the
request to the dispatcher and relays what comes back. Streams are written
chunk by chunk as they arrive; nothing is buffered.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from modelpool.auth import authorize
from modelpool.dispatch import Dispatcher, ProxyRequest, Served
from modelpool.errors import BadRequest, PayloadTooLarge, UpstreamError
from modelpool.registry_view import models_listing
from modelpool.sse import UsageScan
from modelpool.table import TableHolder

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def read_json(request: web.Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, refusing more than ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds {limit}")
    raw = bytearray()
    while chunk := await request.content.readany():
        raw += chunk
        if len(raw) > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
    if not raw:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _require(body: dict[str, Any], key: str, kinds: tuple[type, ...], what: str) -> None:
    value = body.get(key)
    if value is None:
        raise BadRequest(f"missing required parameter {key!r}", param=key)
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise BadRequest(f"{key!r} must be {what}", param=key)


def check_body(endpoint: str, body: dict[str, Any]) -> bool:
    """Validate what routing needs; return whether the client asked for a stream."""
    _require(body, "model", (str,), "a string naming a pool or model")
    if endpoint == "chat":
        _require(body, "messages", (list,), "a list of messages")
        if not body["messages"] or not all(isinstance(m, dict) for m in body["messages"]):
            raise BadRequest("'messages' must be a non-empty list of objects", param="messages")
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
    def __init__(self, holder: TableHolder, dispatcher: Dispatcher) -> None:
        self._holder = holder
        self._dispatcher = dispatcher

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self.chat),
            web.post("/v1/completions", self.completions),
            web.post("/v1/embeddings", self.embeddings),
            web.get("/v1/models", self.models),
        ]

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "completions")

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "embeddings")

    async def models(self, request: web.Request) -> web.Response:
        table = self._holder.current
        client = table.authenticator.authenticate(request.headers)
        return web.json_response(models_listing(table, client), dumps=_dumps)

    async def _proxy(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        table = self._holder.current
        client = table.authenticator.authenticate(request.headers)
        body = await read_json(request, table.config.server.max_body_bytes)
        stream = check_body(endpoint, body)
        authorize(client, body["model"])
        proxy_request = ProxyRequest(endpoint, body["model"], body, stream, client)
        async with self._dispatcher.serve(table, proxy_request) as served:
            headers = {
                "x-modelpool-pool": served.pool,
                "x-modelpool-model": served.member.model.name,
                "x-modelpool-attempts": str(served.attempts),
                "x-modelpool-failovers": str(served.failovers),
            }
            if served.rest is None:
                return web.Response(
                    body=served.body, headers=headers, content_type="application/json"
                )
            return await _relay(request, served, headers)


async def _relay(
    request: web.Request, served: Served, headers: dict[str, str]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={**headers, **STREAM_HEADERS})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    await response.write(served.body)
    assert served.rest is not None
    usage = UsageScan()
    usage.feed(served.body)  # a short stream's usage can come in the same read as its head
    served.used_tokens = usage.total or served.used_tokens
    try:
        async for chunk in served.rest:
            await response.write(chunk)
            usage.feed(chunk)
            served.used_tokens = usage.total or served.used_tokens
    except UpstreamError as exc:
        # Bytes already went out: the status can't change, so say it in the stream.
        served.broken = exc
        error = {
            "error": {"message": exc.message, "type": "api_error", "code": "upstream_stream_error"}
        }
        await response.write(b"data: " + orjson.dumps(error) + b"\n\n")
    await response.write_eof()
    return response


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
