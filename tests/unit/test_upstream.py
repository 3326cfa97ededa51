"""The client seam: Retry-After parsing, upstream messages, and error mapping (aioresponses)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from modelpool.config.secrets import Secret
from modelpool.config.spec import ProviderSpec, Timeouts
from modelpool.errors import UpstreamConnectError, UpstreamStatusError
from modelpool.providers.base import Call
from modelpool.providers.openai import OpenAIProvider
from modelpool.upstream import HttpTransport, parse_retry_after, upstream_message

BASE = "http://upstream.test/v1"
CHAT_URL = f"{BASE}/chat/completions"
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


# --------------------------------------------------------------------------- error mapping


class CompatResponse(aiohttp.ClientResponse):
    """aiohttp 3.14 made ``stream_writer`` required; aioresponses 0.7.9 does not pass it.

    pnuckowski/aioresponses#289; drop this once a fixed release is out.
    """

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class Mocked(aioresponses):
    """aioresponses that records calls without deep-copying the transport's trace context.

    aioresponses deep-copies each call's kwargs; ``trace_request_ctx`` holds the
    attempt's live asyncio deadline (and through it the event loop), and a copied
    event loop blows up when garbage-collected.
    """

    def _build_request_call(self, method: str = "GET", *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("trace_request_ctx", None)
        return super()._build_request_call(method, *args, **kwargs)


def make_provider(type_: str = "openai") -> OpenAIProvider:
    spec = ProviderSpec(name="up", type=type_, base_url=BASE, api_key=Secret(KEY))
    return OpenAIProvider(spec, HttpTransport(max_connections=4))


def chat_call(stream: bool = False) -> Call:
    body = {"model": "up-m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return Call("chat", body, stream, Timeouts(connect=1, first_byte=2, idle=2, total=5), "m")


@pytest.fixture
async def provider() -> AsyncIterator[OpenAIProvider]:
    provider = make_provider()
    yield provider
    await provider.transport.aclose()


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with Mocked() as mock:
        yield mock


async def test_success_sends_key_and_body_and_reads_the_answer(
    provider: OpenAIProvider, mocked: aioresponses
) -> None:
    mocked.post(
        CHAT_URL,
        status=200,
        body=b'{"ok": true}',
        content_type="application/json",
        response_class=CompatResponse,
    )
    response = await provider.send(chat_call())
    assert response.status == 200
    assert await response.read() == b'{"ok": true}'
    response.close()
    assert provider.transport.active == 0

    [request] = mocked.requests[("POST", URL(CHAT_URL))]
    assert request.kwargs["headers"]["Authorization"] == f"Bearer {KEY}"
    assert b'"model":"up-m"' in request.kwargs["data"]


async def test_stream_chunks_are_yielded(provider: OpenAIProvider, mocked: aioresponses) -> None:
    body = b"data: 1\n\ndata: 2\n\ndata: [DONE]\n\n"
    mocked.post(
        CHAT_URL,
        status=200,
        body=body,
        content_type="text/event-stream",
        response_class=CompatResponse,
    )
    response = await provider.send(chat_call(stream=True))
    assert response.content_type == "text/event-stream"
    assert b"".join([chunk async for chunk in response.chunks()]) == body
    response.close()


async def test_503_with_retry_after_is_a_status_error_carrying_it(
    provider: OpenAIProvider, mocked: aioresponses
) -> None:
    error = b'{"error": {"message": "overloaded, try later"}}'
    mocked.post(
        CHAT_URL,
        status=503,
        body=error,
        headers={"Retry-After": "12"},
        response_class=CompatResponse,
    )
    with pytest.raises(UpstreamStatusError) as caught:
        await provider.send(chat_call())
    assert caught.value.status == 503
    assert caught.value.retry_after == 12.0
    assert caught.value.body == error
    assert caught.value.model == "m"
    assert caught.value.message == "m: HTTP 503: overloaded, try later"
    assert provider.transport.active == 0


async def test_4xx_is_a_status_error_without_retry_after(
    provider: OpenAIProvider, mocked: aioresponses
) -> None:
    mocked.post(
        CHAT_URL,
        status=400,
        payload={"error": {"message": "bad 'temperature'"}},
        response_class=CompatResponse,
    )
    with pytest.raises(UpstreamStatusError) as caught:
        await provider.send(chat_call())
    assert caught.value.status == 400
    assert caught.value.retry_after is None
    assert "bad 'temperature'" in caught.value.message


@pytest.mark.parametrize(
    ("exception", "words"),
    [
        (aiohttp.ClientConnectionError("connection refused"), "connection refused"),
        (aiohttp.ServerDisconnectedError(), "closed the connection before responding"),
        (aiohttp.ConnectionTimeoutError(), "connect timeout after 1s"),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), "Connection reset"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else "",
)
async def test_transport_failures_are_connect_errors(
    exception: Exception, words: str, provider: OpenAIProvider, mocked: aioresponses
) -> None:
    mocked.post(CHAT_URL, exception=exception)
    with pytest.raises(UpstreamConnectError) as caught:
        await provider.send(chat_call())
    assert words in caught.value.message
    assert caught.value.message.startswith("m: ")
    assert provider.transport.active == 0


async def test_azure_posts_to_the_deployment_with_api_version_and_api_key() -> None:
    spec = ProviderSpec(
        name="az",
        type="azure_openai",
        base_url="https://example.openai.azure.com",
        api_key=Secret(KEY),
        api_version="2024-06-01",
    )
    provider = OpenAIProvider(spec, HttpTransport(max_connections=1))
    url = "https://example.openai.azure.com/openai/deployments/up-m/chat/completions"
    try:
        with Mocked() as mocked:
            mocked.post(
                f"{url}?api-version=2024-06-01",
                status=200,
                body=b"{}",
                response_class=CompatResponse,
            )
            response = await provider.send(chat_call())
            response.close()
            [request] = mocked.requests[("POST", URL(f"{url}?api-version=2024-06-01"))]
        assert request.kwargs["headers"]["api-key"] == KEY
        assert "Authorization" not in request.kwargs["headers"]
    finally:
        await provider.transport.aclose()
