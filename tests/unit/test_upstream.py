"""The client seam: Retry-After parsing, upstream messages, and error mapping, against a
real HTTP server on 127.0.0.1 (aiohttp's) and scripted raw sockets for the faults."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy
from test_http1 import Peer, Scripted, Start, free_port, servers

from modelpool.config.secrets import Secret
from modelpool.config.spec import ProviderSpec, Timeouts
from modelpool.errors import UpstreamConnectError, UpstreamStatusError
from modelpool.providers.anthropic import AnthropicProvider
from modelpool.providers.base import Call
from modelpool.providers.openai import OpenAIProvider
from modelpool.upstream import HttpTransport, parse_retry_after, upstream_message

KEY = "sk-unit-test"

# --------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
    ],
)
def test_parse_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    parsed = parse_retry_after(when)
    assert parsed is not None
    assert 28 <= parsed <= 31


def test_parse_retry_after_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "quota exceeded", "type": "x"}}', "quota exceeded"),
        (b'{"type": "error", "error": {"type": "overloaded", "message": "busy"}}', "busy"),
        (b'{"error": "plain string"}', "plain string"),
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (b'{"detail": "other shape"}', ""),
        (b"", ""),
    ],
)
def test_upstream_message(body: bytes, message: str) -> None:
    assert upstream_message(body) == message


# --------------------------------------------------------------------------- a real upstream


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path_qs: str
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    parts: list[bytes] | None = None
    """Sent as a chunked stream, one write each, instead of ``body``."""


class Upstream:
    """An aiohttp server on 127.0.0.1 that records every request and gives ``answer``."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.answer = Answer()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, request.headers, body))
        answer = self.answer
        headers = {**answer.headers, "Content-Type": answer.content_type}
        if answer.parts is None:
            return web.Response(status=answer.status, body=answer.body, headers=headers)
        response = web.StreamResponse(status=answer.status, headers=headers)
        await response.prepare(request)
        for part in answer.parts:
            await response.write(part)
            await asyncio.sleep(0.001)
        await response.write_eof()
        return response

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    async def __aenter__(self) -> Upstream:
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with Upstream() as server:
        yield server


# --------------------------------------------------------------------------- error mapping


def make_provider(base: str, type_: str = "openai") -> OpenAIProvider:
    spec = ProviderSpec(name="up", type=type_, base_url=base, api_key=Secret(KEY))
    return OpenAIProvider(spec, HttpTransport(max_connections=4))


def chat_call(stream: bool = False, connect: float = 1) -> Call:
    body = {"model": "up-m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    timeouts = Timeouts(connect=connect, first_byte=2, idle=2, total=5)
    return Call("chat", body, stream, timeouts, "m")


@pytest.fixture
async def provider(upstream: Upstream) -> AsyncIterator[OpenAIProvider]:
    provider = make_provider(upstream.url("/v1"))
    yield provider
    provider.transport.close()


async def test_success_sends_key_and_body_and_reads_the_answer(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    upstream.answer = Answer(body=b'{"ok": true}')
    response = await provider.send(chat_call())
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.read() == b'{"ok": true}'
    response.close()
    assert provider.transport.active == 0

    [request] = upstream.seen
    assert (request.method, request.path_qs) == ("POST", "/v1/chat/completions")
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Host"] == f"127.0.0.1:{upstream.server.port}"
    assert b'"model":"up-m"' in request.body


async def test_stream_chunks_are_yielded(provider: OpenAIProvider, upstream: Upstream) -> None:
    parts = [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]
    upstream.answer = Answer(parts=parts, content_type="text/event-stream")
    response = await provider.send(chat_call(stream=True))
    assert response.content_type == "text/event-stream"
    assert b"".join([chunk async for chunk in response.chunks()]) == b"".join(parts)
    response.close()
    assert provider.transport.active == 0


async def test_503_with_retry_after_is_a_status_error_carrying_it(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    error = b'{"error": {"message": "overloaded, try later"}}'
    upstream.answer = Answer(status=503, body=error, headers={"Retry-After": "12"})
    with pytest.raises(UpstreamStatusError) as caught:
        await provider.send(chat_call())
    assert caught.value.status == 503
    assert caught.value.retry_after == 12.0
    assert caught.value.body == error
    assert caught.value.model == "m"
    assert caught.value.message == "m: HTTP 503: overloaded, try later"
    assert provider.transport.active == 0


async def test_4xx_is_a_status_error_without_retry_after(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    upstream.answer = Answer(status=400, body=b'{"error": {"message": "bad \'temperature\'"}}')
    with pytest.raises(UpstreamStatusError) as caught:
        await provider.send(chat_call())
    assert caught.value.status == 400
    assert caught.value.retry_after is None
    assert "bad 'temperature'" in caught.value.message


# each sets up a failing upstream and returns its base URL
Failure = Callable[[Start, pytest.MonkeyPatch], Awaitable[str]]


async def refused(serve: Start, monkeypatch: pytest.MonkeyPatch) -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


async def _scripted(serve: Start, script: Callable[[Peer], Awaitable[None]]) -> str:
    server: Scripted = await serve(script)
    return server.url("/v1")


async def disconnected(serve: Start, monkeypatch: pytest.MonkeyPatch) -> str:
    async def script(peer: Peer) -> None:
        await peer.request()  # then hang up without a word

    return await _scripted(serve, script)


async def reset(serve: Start, monkeypatch: pytest.MonkeyPatch) -> str:
    async def script(peer: Peer) -> None:
        await peer.request()
        peer.reset()

    return await _scripted(serve, script)


async def connect_timeout(serve: Start, monkeypatch: pytest.MonkeyPatch) -> str:
    async def never(*args: object, **kwargs: object) -> None:
        await asyncio.sleep(10)

    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", never)
    return "http://127.0.0.1:9/v1"


async def malformed(serve: Start, monkeypatch: pytest.MonkeyPatch) -> str:
    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"220 smtp.example.com ESMTP\r\n\r\n")
        await peer.until_closed()

    return await _scripted(serve, script)


@pytest.mark.parametrize(
    ("failure", "words"),
    [
        (refused, "cannot connect: Connection refused"),
        (disconnected, "upstream closed the connection before responding"),
        (reset, "upstream closed the connection before responding"),
        (connect_timeout, "connect timeout after 0.2s"),
        (malformed, "malformed response from the upstream"),
    ],
    ids=lambda value: value.__name__ if callable(value) else "",
)
async def test_transport_failures_are_connect_errors(
    failure: Failure, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with servers() as serve:
        base = await failure(serve, monkeypatch)
        provider = make_provider(base)
        with pytest.raises(UpstreamConnectError) as caught:
            await provider.send(chat_call(connect=0.2))
        provider.transport.close()
    assert words in caught.value.message
    assert caught.value.message.startswith("m: ")
    assert "127.0.0.1" not in caught.value.message  # messages reach clients: no address
    assert provider.transport.active == 0


async def test_azure_posts_to_the_deployment_with_api_version_and_api_key(
    upstream: Upstream,
) -> None:
    spec = ProviderSpec(
        name="az",
        type="azure_openai",
        base_url=upstream.url(),
        api_key=Secret(KEY),
        api_version="2024-06-01",
    )
    provider = OpenAIProvider(spec, HttpTransport(max_connections=1))
    try:
        response = await provider.send(chat_call())
        response.close()
    finally:
        provider.transport.close()
    [request] = upstream.seen
    assert request.method == "POST"
    assert request.path_qs == "/openai/deployments/up-m/chat/completions?api-version=2024-06-01"
    assert request.headers["api-key"] == KEY
    assert "Authorization" not in request.headers


async def test_anthropic_posts_messages_with_its_headers(upstream: Upstream) -> None:
    spec = ProviderSpec(
        name="an", type="anthropic", base_url=upstream.url("/v1"), api_key=Secret(KEY)
    )
    provider = AnthropicProvider(spec, HttpTransport(max_connections=1))
    body = {"model": "claude-x", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    timeouts = Timeouts(connect=1, first_byte=2, idle=2, total=5)
    call = Call("messages", body, False, timeouts, "m", {"anthropic-beta": "tools-1"})
    try:
        response = await provider.send(call)
        assert await response.read() == b"{}"
        response.close()
    finally:
        provider.transport.close()
    [request] = upstream.seen
    assert (request.method, request.path_qs) == ("POST", "/v1/messages")
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["anthropic-beta"] == "tools-1"
    assert "Authorization" not in request.headers
    assert b'"model":"claude-x"' in request.body
