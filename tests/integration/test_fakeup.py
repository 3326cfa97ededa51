"""The shipped fake upstream, served in-process on 127.0.0.1:0 and hit with a real aiohttp client.

Each fault is checked the way a client experiences it: a reset is a
connection error, a hang is a client-side timeout, a truncated stream ends
without [DONE] and with a payload error, and so on.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import orjson
import pytest

from modelpool.fakeup import running, script_from

CHAT = "/v1/chat/completions"
SHORT = aiohttp.ClientTimeout(total=0.3)
HELLO = {"model": "m1", "messages": [{"role": "user", "content": "say hello please"}]}
STREAM = {**HELLO, "stream": True}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as client:
        yield client


def fake(*specs: str) -> AbstractAsyncContextManager[str]:
    """A fake upstream playing ``specs`` in order, on a free loopback port."""
    return running(script_from(list(specs)))


async def events(response: aiohttp.ClientResponse) -> list[str]:
    """Every non-empty line of an SSE body (data lines and comment lines)."""
    return [line.decode().strip() async for line in response.content if line.strip()]


def data_of(lines: list[str]) -> list[Any]:
    return [
        line[6:] if line == "data: [DONE]" else orjson.loads(line[6:])
        for line in lines
        if line.startswith("data: ")
    ]


async def eventually(check: Callable[[], Awaitable[bool]], tries: int = 100) -> None:
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still not true after {tries} tries")


async def collect(response: aiohttp.ClientResponse, lines: list[str]) -> None:
    """Append each non-empty line to ``lines`` as it arrives, so a failure keeps what came."""
    async for line in response.content:
        lines += [line.decode().strip()] if line.strip() else []


# --------------------------------------------------------------------------- healthy answers


async def test_ok_answers_every_endpoint_with_usage(session: aiohttp.ClientSession) -> None:
    async with fake("ok") as url:
        async with session.post(url + CHAT, json=HELLO) as r:
            chat = await r.json()
        assert chat["choices"][0]["message"]["content"] == "This is a fake answer from m1."
        assert chat["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}
        async with session.post(url + "/v1/completions", json={"model": "c", "prompt": "a b"}) as r:
            completion = await r.json()
        assert completion["object"] == "text_completion"
        assert completion["usage"]["prompt_tokens"] == 2
        embed = {"model": "e", "input": ["one", "two words"], "dimensions": 4}
        async with session.post(url + "/v1/embeddings", json=embed) as r:
            first = await r.json()
        async with session.post(url + "/v1/embeddings", json=embed) as r:
            assert await r.json() == first
        assert [len(d["embedding"]) for d in first["data"]] == [4, 4]
        assert first["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
        async with session.get(url + "/v1/models") as r:
            assert [m["id"] for m in (await r.json())["data"]] == ["fake-model"]


async def test_streams_end_with_a_usage_chunk_when_asked(session: aiohttp.ClientSession) -> None:
    body = {**STREAM, "max_tokens": 3, "stream_options": {"include_usage": True}}
    async with fake() as url, session.post(url + CHAT, json=body) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        chunks = data_of(await events(r))
    assert chunks[-1] == "[DONE]"
    assert chunks[-2]["choices"] == []
    assert chunks[-2]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert chunks[-3]["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-2])
    assert text == "This is a"


async def test_bad_requests_get_openai_errors(session: aiohttp.ClientSession) -> None:
    async with fake() as url:
        async with session.post(url + "/v1/nothing", json={}) as r:
            assert r.status == 404
            assert "Unknown request URL" in (await r.json())["error"]["message"]
        async with session.post(url + CHAT, data=b"{not json") as r:
            assert r.status == 400
            assert (await r.json())["error"]["type"] == "invalid_request_error"


# --------------------------------------------------------------------------- faults


async def test_latency_delays_the_answer(session: aiohttp.ClientSession) -> None:
    async with fake("latency=150ms") as url:
        started = time.monotonic()
        async with session.post(url + CHAT, json=HELLO) as r:
            assert r.status == 200
        assert time.monotonic() - started >= 0.15


async def test_status_with_retry_after(session: aiohttp.ClientSession) -> None:
    spec = "status=429,retry_after=2,retry_after_ms=1500,message=slow down"
    async with fake(spec) as url, session.post(url + CHAT, json=HELLO) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "2"
        assert r.headers["retry-after-ms"] == "1500"
        error = (await r.json())["error"]
    assert error == {
        "message": "slow down",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529])
async def test_server_statuses(session: aiohttp.ClientSession, status: int) -> None:
    async with fake(f"status={status}") as url, session.post(url + CHAT, json=STREAM) as r:
        assert r.status == status
        assert "error" in await r.json()


async def test_reset_is_a_connection_error(session: aiohttp.ClientSession) -> None:
    async with fake("reset", "ok") as url:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.post(url + CHAT, json=HELLO) as r:
                await r.read()
        async with session.post(url + CHAT, json=HELLO) as r:
            assert r.status == 200


async def test_hang_times_out_on_the_client(session: aiohttp.ClientSession) -> None:
    async with fake("hang") as url:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(url + CHAT, json=HELLO, timeout=SHORT) as r:
                await r.read()
        assert time.monotonic() - started < 0.6

        async def abandoned() -> bool:
            async with session.get(url + "/_stats") as r:
                stats = await r.json()
            return bool(stats["abandoned"] == 1 and stats["in_flight"] == 0)

        await eventually(abandoned)


async def test_hang_is_bounded_by_its_max(session: aiohttp.ClientSession) -> None:
    async with fake("hang=100ms") as url:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.post(url + CHAT, json=HELLO) as r:
                await r.read()


async def test_drip_with_pings_sends_comment_lines(session: aiohttp.ClientSession) -> None:
    async with fake("drip=40ms,ping=15ms") as url:
        started = time.monotonic()
        async with session.post(url + CHAT, json={**STREAM, "max_tokens": 2}) as r:
            lines = await events(r)
        elapsed = time.monotonic() - started
    data_lines = [i for i, line in enumerate(lines) if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert len(data_lines) == 5  # role, 2 words, finish, [DONE]
    assert elapsed >= 4 * 0.04
    for before, after in itertools.pairwise(data_lines):
        assert lines[before + 1 : after] == [": ping", ": ping"]


async def test_drip_slows_a_plain_json_body(session: aiohttp.ClientSession) -> None:
    async with fake("drip=50ms") as url:
        started = time.monotonic()
        async with session.post(url + CHAT, json=HELLO) as r:
            assert (await r.json())["object"] == "chat.completion"
        assert time.monotonic() - started >= 3 * 0.05


async def test_truncate_ends_a_stream_without_done(session: aiohttp.ClientSession) -> None:
    async with fake("truncate=3") as url, session.post(url + CHAT, json=STREAM) as r:
        assert r.status == 200
        lines: list[str] = []
        with pytest.raises(aiohttp.ClientPayloadError):
            await collect(r, lines)
    assert len(lines) == 3
    assert "data: [DONE]" not in lines


async def test_truncate_cuts_a_json_body_short(session: aiohttp.ClientSession) -> None:
    async with fake("truncate=2") as url, session.post(url + CHAT, json=HELLO) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


async def test_error_in_stream_is_the_first_event(session: aiohttp.ClientSession) -> None:
    spec = "error_in_stream,message=overloaded"
    async with fake(spec) as url, session.post(url + CHAT, json=STREAM) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        first = data_of(await events(r))[0]
    assert first["error"]["message"] == "overloaded"


async def test_error_in_stream_without_a_stream_is_a_200_error_body(
    session: aiohttp.ClientSession,
) -> None:
    async with fake("error_in_stream") as url, session.post(url + CHAT, json=HELLO) as r:
        assert r.status == 200
        assert (await r.json())["error"]["type"] == "server_error"


async def test_invalid_json_is_a_200_with_garbage(session: aiohttp.ClientSession) -> None:
    async with fake("invalid_json") as url, session.post(url + CHAT, json=HELLO) as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(await r.read())


async def test_stall_keeps_the_connection_open_and_silent(session: aiohttp.ClientSession) -> None:
    timeout = aiohttp.ClientTimeout(total=2, sock_read=0.2)
    async with fake("stall=2") as url:
        async with session.post(url + CHAT, json=STREAM, timeout=timeout) as r:
            received = [await r.content.readline() for _ in range(4)]  # two events, two blanks
            with pytest.raises(asyncio.TimeoutError):
                await r.content.readline()
        assert [line for line in received if line.strip()][1].startswith(b"data: {")


async def test_stall_with_pings_is_alive_but_says_nothing(session: aiohttp.ClientSession) -> None:
    timeout = aiohttp.ClientTimeout(total=2, sock_read=0.2)
    lines: list[str] = []
    async with (
        fake("stall=1,ping=30ms,max=150ms") as url,
        session.post(url + CHAT, json=STREAM, timeout=timeout) as r,
    ):
        with pytest.raises(aiohttp.ClientPayloadError):
            await collect(r, lines)
    assert lines[0].startswith("data: {")
    assert lines[1:] == [": ping"] * 4


# --------------------------------------------------------------------------- controls


async def test_the_script_can_be_replaced_at_run_time(session: aiohttp.ClientSession) -> None:
    async with fake() as url:
        async with session.post(url + "/_fault", json=["status=503*2", "ok"]) as r:
            assert (await r.json())["script"]["steps"][0] == {"status": 503, "count": 2}
        statuses = []
        for _ in range(3):
            async with session.post(url + CHAT, json=HELLO) as r:
                statuses.append(r.status)
        assert statuses == [503, 503, 200]
        async with session.get(url + "/_fault") as r:
            view = await r.json()
        assert view["served"] == [2, 1]
        assert view["position"] == 1
        async with session.post(url + "/_fault", json={"steps": ["nonsense"]}) as r:
            assert r.status == 400
            assert "no fault named" in (await r.json())["error"]["message"]
        async with session.delete(url + "/_fault") as r:
            assert (await r.json())["script"]["steps"] == []


async def test_path_steps_leave_other_paths_alone(session: aiohttp.ClientSession) -> None:
    async with fake("status=500,path=/v1/embeddings") as url:
        async with session.post(url + CHAT, json=HELLO) as r:
            assert r.status == 200
        async with session.post(url + "/v1/embeddings", json={"input": "x"}) as r:
            assert r.status == 500


async def test_stats_count_requests_and_redact_keys(session: aiohttp.ClientSession) -> None:
    async with fake("status=500", "ok") as url:
        for key in ("sk-first-key-AAAA", "sk-second-key-BBBB", "sk-second-key-BBBB"):
            headers = {"Authorization": f"Bearer {key}"}
            async with session.post(url + CHAT, json=HELLO, headers=headers):
                pass
        async with session.get(url + "/v1/models"):
            pass
        async with session.get(url + "/_stats") as r:
            stats = await r.json()
        assert stats["total"] == 4
        assert stats["requests"] == {CHAT: {"status": 1, "ok": 2}, "/v1/models": {"ok": 1}}
        assert stats["authorization"] == {"…AAAA": 1, "…BBBB": 2}
        assert "sk-" not in orjson.dumps(stats).decode()
        async with session.post(url + "/_reset") as r:
            assert (await r.json())["total"] == 0
        async with session.get(url + "/_fault") as r:
            assert (await r.json())["served"] == [0, 0]
