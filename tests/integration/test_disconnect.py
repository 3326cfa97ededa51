"""A client that goes away cancels its upstream request at once and leaves the daemon clean."""

from __future__ import annotations

import asyncio

import orjson
from fake_upstream import CHAT, FakeUpstream, Reply
from proxy_harness import Daemon, chat, hang_up, observed, raw_request

from modelpool.app import REGISTRY

STREAM_BODY = orjson.dumps(chat(stream=True))


async def read_until(reader: asyncio.StreamReader, marker: bytes, within: float = 2.0) -> bytes:
    """Bytes from ``reader`` up to and including the first ``marker``."""
    seen = b""
    async with asyncio.timeout(within):
        while marker not in seen:
            chunk = await reader.read(4096)
            assert chunk, f"connection closed before {marker!r}; got {seen!r}"
            seen += chunk
    return seen


async def assert_still_serves(daemon: Daemon) -> None:
    async with daemon.http.post("/v1/chat/completions", json=chat()) as response:
        assert response.status == 200


async def test_disconnect_mid_stream_cancels_the_upstream_promptly(
    daemon: Daemon, fake: FakeUpstream
) -> None:
    chunks = [f"w{i}" for i in range(30)]
    fake.script(CHAT, Reply.stream(*chunks, chunk_delay=0.1), Reply())
    reader, writer = await raw_request(daemon.port, "POST", "/v1/chat/completions", STREAM_BODY)
    head = await read_until(reader, b'"content":"w0"')
    assert head.startswith(b"HTTP/1.1 200")

    await hang_up(writer)
    upstream = fake.requests[0]
    await observed(upstream.closed, within=1.0)
    assert len(upstream.sent_at) < 15, "the upstream kept streaming to nobody"
    await daemon.settled()
    errors = sum(state.errors for state in daemon.app[REGISTRY].models())
    assert errors == 0, "a client leaving is not the model's failure"
    await assert_still_serves(daemon)


async def test_disconnect_during_a_stalled_stream_cancels_the_upstream(
    daemon: Daemon, fake: FakeUpstream
) -> None:
    """The client leaving must not wait for the (2s) idle timeout to notice."""
    fake.script(CHAT, Reply.stream("first", "never", stall_after=1), Reply())
    reader, writer = await raw_request(daemon.port, "POST", "/v1/chat/completions", STREAM_BODY)
    await read_until(reader, b'"content":"first"')

    await hang_up(writer)
    await observed(fake.requests[0].closed, within=1.0)
    await daemon.settled()
    await assert_still_serves(daemon)


async def test_disconnect_before_the_response_cancels_the_upstream(
    daemon: Daemon, fake: FakeUpstream
) -> None:
    fake.script(CHAT, Reply(delay=1.5), Reply())
    body = orjson.dumps(chat())
    _, writer = await raw_request(daemon.port, "POST", "/v1/chat/completions", body)
    await fake.wait_for_requests(1)

    await hang_up(writer)
    await observed(fake.requests[0].closed, within=1.0)
    await daemon.settled()
    await assert_still_serves(daemon)


async def test_sdk_style_close_of_a_stream_cancels_the_upstream(
    daemon: Daemon, fake: FakeUpstream
) -> None:
    """What an SDK does when the caller breaks out of a stream: close the response."""
    chunks = [f"w{i}" for i in range(30)]
    fake.script(CHAT, Reply.stream(*chunks, chunk_delay=0.1), Reply())
    response = await daemon.http.post("/v1/chat/completions", json=chat(stream=True))
    assert response.status == 200
    assert b'"content":"w0"' in await response.content.readuntil(b"\n\n")
    response.close()

    await observed(fake.requests[0].closed, within=1.0)
    await daemon.settled()
    await assert_still_serves(daemon)
