"""The aiohttp → ASGI bridge under /mcp: scope, request body, streamed and whole responses,
headers, and a client that leaves (told as http.disconnect, the app is not cancelled)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from modelpool.api_errors import error_middleware
from modelpool.mcp.asgi import AsgiApp, Message, Receive, Scope, Send, call_asgi

Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serve an ASGI app at /asgi behind the bridge, as the daemon runs (handler_cancellation)."""
    runners: list[web.AppRunner] = []

    async def start(asgi: AsgiApp, linger: float = 2.0, **extra: Any) -> str:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await call_asgi(asgi, request, extra or None, linger=linger)

        app = web.Application(middlewares=[error_middleware])
        app.router.add_route("*", "/asgi", handler)
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/asgi"

    yield start
    for runner in runners:
        await runner.cleanup()


async def read_body(receive: Receive) -> tuple[bytes, int]:
    body, messages = b"", 0
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        body += message["body"]
        messages += 1
        if not message["more_body"]:
            return body, messages


async def respond(send: Send, status: int, body: bytes, headers: list[Any] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})
    await send({"type": "http.response.body", "body": body})


async def test_scope_body_and_a_whole_response(serve: Serve) -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.update(scope)
        seen["body"], seen["messages"] = await read_body(receive)
        await respond(send, 201, b'{"ok":true}', [(b"content-type", b"application/json")])

    url = await serve(app, state={"who": "me"})
    big = b"x" * 300_000  # arrives in several chunks
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}?a=1&b=%20", data=big, headers={"X-Thing": "One"}) as response,
    ):
        assert response.status == 201
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Content-Length"] == "11"
        assert await response.json() == {"ok": True}
    assert seen["type"] == "http"
    assert seen["method"] == "POST"
    assert (seen["path"], seen["raw_path"]) == ("/asgi", b"/asgi")
    assert seen["query_string"] == b"a=1&b=%20"
    assert (b"x-thing", b"One") in seen["headers"]
    assert seen["client"][0] == "127.0.0.1"
    assert seen["server"][0] == "127.0.0.1"
    assert seen["state"] == {"who": "me"}
    assert seen["body"] == big
    assert seen["messages"] >= 1


async def test_a_streamed_response_goes_out_chunk_by_chunk(serve: Serve) -> None:
    next_chunk = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await asyncio.wait_for(next_chunk.wait(), 5)  # only once the client has the first
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    url = await serve(app)
    async with aiohttp.ClientSession() as http, http.post(url, data=b"{}") as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert await response.content.readuntil(b"\n\n") == b"data: 1\n\n"
        next_chunk.set()
        assert await response.content.read() == b"data: 2\n\n"


async def test_headers_repeat_and_hop_by_hop_ones_are_aiohttps_own(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
            (b"connection", b"close"),
            (b"transfer-encoding", b"gzip"),
            (b"mcp-session-id", b"abc"),
        ]
        await respond(send, 200, b"ok", headers)

    url = await serve(app)
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]
        assert response.headers["mcp-session-id"] == "abc"
        assert "Transfer-Encoding" not in response.headers
        assert await response.read() == b"ok"


async def test_a_start_without_a_body_is_an_empty_response(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 202, "headers": []})

    url = await serve(app)
    async with aiohttp.ClientSession() as http, http.post(url, data=b"{}") as response:
        assert response.status == 202
        assert await response.read() == b""


async def test_an_app_that_stops_mid_body_has_its_body_ended(serve: Serve) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})

    url = await serve(app)
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert await response.read() == b"partial"


@pytest.mark.parametrize(
    "broken",
    [
        [],  # nothing sent
        [{"type": "http.response.body", "body": b"x"}],  # body before start
    ],
)
async def test_an_app_that_breaks_the_protocol_is_a_500_without_a_trace(
    serve: Serve, broken: list[Message]
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        for message in broken:
            await send(message)

    url = await serve(app)
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 500
        assert (await response.json())["error"]["code"] == "internal_error"


async def test_a_client_that_leaves_is_a_disconnect_not_a_cancellation(serve: Serve) -> None:
    started, told = asyncio.Event(), asyncio.Event()
    outcome: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        started.set()
        try:
            assert await receive() == {"type": "http.disconnect"}
            told.set()
            # writes after the client left are dropped, not raised
            await send({"type": "http.response.body", "body": b"late", "more_body": False})
            outcome.append("finished")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    url = await serve(app)
    async with aiohttp.ClientSession() as http:
        response = await http.post(url, data=b"{}")
        await asyncio.wait_for(started.wait(), 5)
        response.close()  # hang up mid-response
    await asyncio.wait_for(told.wait(), 5)
    for _ in range(100):
        if outcome:
            break
        await asyncio.sleep(0.01)
    assert outcome == ["finished"]


async def test_an_app_that_ignores_the_disconnect_is_cancelled_after_lingering(
    serve: Serve,
) -> None:
    started, ended = asyncio.Event(), asyncio.Event()
    outcome: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        finally:
            ended.set()

    url = await serve(app, linger=0.2)
    async with aiohttp.ClientSession() as http:
        response = await http.get(url)
        await asyncio.wait_for(started.wait(), 5)
        response.close()
    await asyncio.wait_for(ended.wait(), 5)
    assert outcome == ["cancelled"]
