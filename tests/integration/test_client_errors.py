"""Bad client input gets a clear OpenAI-format error and never reaches an upstream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from fake_upstream import FakeUpstream
from proxy_harness import Daemon, StartDaemon, chat, hang_up, raw_request, single_pool_config

from modelpool.api_errors import error_middleware

LIMIT = 1024


@pytest.fixture
async def small(start_daemon: StartDaemon, fake: FakeUpstream) -> Daemon:
    """Pool ``p`` on the fake upstream, with max_body_bytes of 1KiB."""
    config = single_pool_config(fake.base_url)
    config["server"] = {"max_body_bytes": "1KiB"}
    return await start_daemon(config)


async def expect_error(
    response: aiohttp.ClientResponse, status: int, *words: str, param: str | None = None
) -> dict[str, Any]:
    assert response.status == status
    assert response.content_type == "application/json"
    error: dict[str, Any] = (await response.json())["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"]
    assert error["param"] == param
    assert "Traceback" not in error["message"]
    return error


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"model": "p", "messages": [', ("not valid JSON",)),
        (b"", ("empty",)),
        (b'[{"model": "p"}]', ("JSON object",)),
        (b'"p"', ("JSON object",)),
        (b"\xff\xfe", ("not valid JSON",)),
    ],
)
async def test_unparseable_bodies_are_400(
    raw: bytes, words: tuple[str, ...], daemon: Daemon, fake: FakeUpstream
) -> None:
    headers = {"Content-Type": "application/json"}
    async with daemon.http.post("/v1/chat/completions", data=raw, headers=headers) as response:
        error = await expect_error(response, 400, *words)
    assert error["type"] == "invalid_request_error"
    assert not fake.requests


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model"),
        ("/v1/chat/completions", {**chat(), "model": 7}, "model"),
        ("/v1/chat/completions", {"model": "p"}, "messages"),
        ("/v1/chat/completions", chat(messages="hello"), "messages"),
        ("/v1/chat/completions", chat(messages=[]), "messages"),
        ("/v1/chat/completions", chat(messages=["hello"]), "messages"),
        ("/v1/chat/completions", chat(stream="yes"), "stream"),
        ("/v1/chat/completions", chat(stream=1), "stream"),
        ("/v1/completions", {"model": "p"}, "prompt"),
        ("/v1/completions", {"model": "p", "prompt": 3}, "prompt"),
        ("/v1/embeddings", {"model": "p"}, "input"),
        ("/v1/embeddings", {"model": "p", "input": "x", "stream": True}, "stream"),
    ],
)
async def test_wrong_or_missing_fields_are_400_naming_the_param(
    path: str, body: dict[str, Any], param: str, daemon: Daemon, fake: FakeUpstream
) -> None:
    async with daemon.http.post(path, json=body) as response:
        await expect_error(response, 400, param, param=param)
    assert not fake.requests


async def test_unknown_pool_is_404_listing_what_exists(daemon: Daemon, fake: FakeUpstream) -> None:
    async with daemon.http.post("/v1/chat/completions", json=chat("gpt-5")) as response:
        error = await expect_error(response, 404, "'gpt-5'", "m, p", param="model")
    assert error["code"] == "model_not_found"
    assert not fake.requests


async def test_body_over_limit_with_content_length_is_413(
    small: Daemon, fake: FakeUpstream
) -> None:
    body = chat(messages=[{"role": "user", "content": "x" * (2 * LIMIT)}])
    async with small.http.post("/v1/chat/completions", json=body) as response:
        error = await expect_error(response, 413, str(LIMIT))
    assert error["code"] == "request_too_large"
    assert not fake.requests


async def test_chunked_body_over_limit_is_413(small: Daemon, fake: FakeUpstream) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        yield b'{"model": "p", "messages": [{"role": "user", "content": "'
        for _ in range(8):
            yield b"x" * 256
        yield b'"}]}'

    headers = {"Content-Type": "application/json"}
    async with small.http.post("/v1/chat/completions", data=pieces(), headers=headers) as response:
        assert "Content-Length" not in response.request_info.headers
        assert response.request_info.headers["Transfer-Encoding"] == "chunked"
        await expect_error(response, 413, str(LIMIT))
    assert not fake.requests


async def test_body_just_under_limit_is_served(small: Daemon, fake: FakeUpstream) -> None:
    body = chat(messages=[{"role": "user", "content": "x" * (LIMIT - 100)}])
    async with small.http.post("/v1/chat/completions", json=body) as response:
        assert response.status == 200
    assert len(fake.requests) == 1


async def test_unknown_path_is_404_json(daemon: Daemon) -> None:
    async with daemon.http.post("/v1/nonsense", json=chat()) as response:
        error = await expect_error(response, 404, "/v1/nonsense")
    assert error["type"] == "invalid_request_error"


async def test_wrong_method_is_405_json_with_allow(daemon: Daemon) -> None:
    async with daemon.http.get("/v1/chat/completions") as response:
        await expect_error(response, 405, "GET /v1/chat/completions")
        assert response.headers["Allow"] == "POST"
    async with daemon.http.post("/v1/models", json={}) as response:
        await expect_error(response, 405)
        assert "GET" in response.headers["Allow"]


CANARY_KEY = "sk-canary-in-a-header-0123456789"


async def unparsed(port: int, *, path: str = "/v1/chat/completions", **headers: str) -> Any:
    """(status, content type, JSON body) for a request whose head aiohttp cannot accept."""
    reader, writer = await raw_request(port, "POST", path, b"{}", headers)
    try:
        head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    finally:
        await hang_up(writer)
    status = int(head.split(b" ", 2)[1])
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    return status, fields[b"Content-Type"], orjson.loads(body)


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {CANARY_KEY}" + "x" * 20_000},
        {f"X-Filler-{i}": CANARY_KEY for i in range(200)},
    ],
    ids=["one-huge-header", "too-many-headers"],
)
async def test_an_oversized_head_is_a_431_in_json_that_repeats_nothing(
    daemon: Daemon, fake: FakeUpstream, caplog: pytest.LogCaptureFixture, headers: dict[str, str]
) -> None:
    caplog.set_level(logging.DEBUG)
    status, content_type, body = await unparsed(daemon.port, **headers)

    assert (status, content_type) == (431, b"application/json")
    assert body["type"] == "error"  # Anthropic's envelope ...
    assert body["error"]["code"] == "request_header_too_large"  # ... with OpenAI's fields
    assert set(body["error"]) == {"type", "message", "param", "code"}
    assert CANARY_KEY not in orjson.dumps(body).decode()
    assert all(CANARY_KEY not in r.getMessage() and not r.exc_info for r in caplog.records)
    assert any(getattr(r, "why", None) == "request_header_too_large" for r in caplog.records)
    assert fake.requests == []


async def test_a_request_that_is_not_http_is_a_400_in_json(daemon: Daemon) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
    try:
        head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    finally:
        await hang_up(writer)
    assert head.split(b" ", 2)[1] == b"400"
    assert orjson.loads(body)["error"]["code"] == "bad_request"


async def test_daemon_keeps_serving_after_bad_input(small: Daemon, fake: FakeUpstream) -> None:
    reader, writer = await raw_request(small.port, "POST", "/v1/chat/completions", b"{oops")
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    assert status_line.startswith(b"HTTP/1.1 400")

    async with small.http.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200
    assert small.in_flight() == 0
    assert len(fake.requests) == 1


async def test_an_unexpected_error_mid_stream_cuts_the_connection_cleanly() -> None:
    """Once a stream's headers are out, a second (500) response would corrupt it."""

    async def fails_mid_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"data: 1\n\n")
        raise RuntimeError("bug")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/", fails_mid_stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
    finally:
        await runner.cleanup()
