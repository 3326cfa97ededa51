"""Every way a member fails, streaming or not: the next member serves, request errors don't retry.

Member ``m1`` fails in one way, played by the shipped fault-injecting fake
upstream (or a closed port for a refused connection); ``m2`` is healthy.
The pool uses the priority strategy (``chain_config``), so ``m1`` is always
asked first. Each case counts what reached each upstream through the fake's
``GET /_stats``, so a retry that happened but was not reported would show.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from proxy_harness import StartDaemon, chain_config, chat, read_sse

from modelpool.fakeup import running, script_from

CHAT = "/v1/chat/completions"
CASE_BUDGET_S = 1.0
MODES = [pytest.param(False, id="plain"), pytest.param(True, id="stream")]


@dataclass(frozen=True)
class Failure:
    """How ``m1`` fails: a fake-upstream fault spec, or ``None`` for a refused connection."""

    fault: str | None
    timeouts: dict[str, str] = field(default_factory=dict)


RETRIED = {
    "429": Failure("status=429"),
    "429-retry-after": Failure("status=429,retry_after=1"),
    "500": Failure("status=500"),
    "502": Failure("status=502"),
    "503": Failure("status=503"),
    "503-retry-after": Failure("status=503,retry_after=1"),
    "504": Failure("status=504"),
    "529": Failure("status=529"),
    "529-retry-after": Failure("status=529,retry_after=1"),
    "connection-refused": Failure(None),
    "connection-reset": Failure("reset"),
    "read-timeout-first-byte": Failure("hang=5s", {"first_byte": "300ms"}),
    # a 200 that fails before any content: headers then silence, then nothing at all,
    # or an error object where the answer should be (non-streaming: the whole body)
    "stall-before-body": Failure("stall=0,max=5s", {"idle": "300ms"}),
    "closed-before-body": Failure("truncate=0"),
    "error-in-200": Failure("error_in_stream"),
}
NOT_RETRIED = [400, 413, 422]


async def stats(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/_stats") as response:
        assert response.status == 200
        data: dict[str, Any] = await response.json()
        return data


def closed_url() -> str:
    """A loopback base URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@asynccontextmanager
async def members(m1_fault: str | None) -> AsyncIterator[tuple[str, str, str | None]]:
    """Base URLs of m1 (failing) and m2 (healthy), and m1's fake root (None when refused)."""
    async with AsyncExitStack() as stack:
        m1_root = None
        if m1_fault is None:
            m1_url = f"{closed_url()}/v1"
        else:
            m1_root = await stack.enter_async_context(running(script_from([m1_fault])))
            m1_url = f"{m1_root}/v1"
        m2_root = await stack.enter_async_context(running(script_from(["ok"])))
        yield m1_url, f"{m2_root}/v1", m1_root


@pytest.mark.parametrize("stream", MODES)
@pytest.mark.parametrize("failure", RETRIED.values(), ids=RETRIED.keys())
async def test_the_next_member_serves(
    failure: Failure, stream: bool, start_daemon: StartDaemon
) -> None:
    async with members(failure.fault) as (m1_url, m2_url, m1_root):
        m2_root = m2_url.removesuffix("/v1")
        daemon = await start_daemon(chain_config([m1_url, m2_url], timeouts=failure.timeouts))
        started = time.monotonic()
        async with daemon.http.post(CHAT, json=chat(stream=stream)) as response:
            assert response.status == 200, await response.text()
            headers = response.headers
            assert headers["x-modelpool-pool"] == "p"
            assert headers["x-modelpool-model"] == "m2"
            assert headers["x-modelpool-attempts"] == "2"
            assert headers["x-modelpool-failovers"] == "1"
            if stream:
                assert headers["Content-Type"].startswith("text/event-stream")
                events = await read_sse(response, within=CASE_BUDGET_S)
                text = one_clean_stream([e.raw for e in events])
            else:
                body = await response.json()
                text = body["choices"][0]["message"]["content"]
        elapsed = time.monotonic() - started

        assert "up-m2" in text, text
        assert elapsed < CASE_BUDGET_S, f"took {elapsed:.2f}s"
        assert (await stats(daemon.http, m2_root))["total"] == 1
        if m1_root is not None:
            assert (await stats(daemon.http, m1_root))["total"] == 1


def one_clean_stream(events: list[bytes]) -> str:
    """The content of a stream that is whole: data events only, no error, ending in [DONE]."""
    data = [e.removeprefix(b"data: ") for e in events if not e.startswith(b":")]
    assert data, "no events"
    assert data[-1] == b"[DONE]", data[-1]
    assert data.count(b"[DONE]") == 1
    pieces = []
    for raw in data[:-1]:
        chunk = orjson.loads(raw)
        assert "error" not in chunk, chunk
        for choice in chunk.get("choices", []):
            pieces.append(choice["delta"].get("content") or "")
    return "".join(pieces)


@pytest.mark.parametrize("stream", MODES)
@pytest.mark.parametrize("status", NOT_RETRIED)
async def test_request_errors_are_not_retried(
    status: int, stream: bool, start_daemon: StartDaemon
) -> None:
    message = f"the request is wrong ({status})"
    async with members(f"status={status},message={message}") as (m1_url, m2_url, m1_root):
        assert m1_root is not None
        m2_root = m2_url.removesuffix("/v1")
        daemon = await start_daemon(chain_config([m1_url, m2_url]))
        started = time.monotonic()
        async with daemon.http.post(CHAT, json=chat(stream=stream)) as response:
            assert response.status == status
            assert response.headers["Content-Type"].startswith("application/json")
            body = await response.json()
        elapsed = time.monotonic() - started

        assert body["error"]["message"] == message
        assert elapsed < CASE_BUDGET_S, f"took {elapsed:.2f}s"
        assert (await stats(daemon.http, m1_root))["total"] == 1
        assert (await stats(daemon.http, m2_root))["total"] == 0


@pytest.mark.parametrize("fault", ["stall=1,max=5s", "drip=150ms"])
async def test_a_non_streaming_body_is_read_under_the_idle_timeout(
    fault: str, start_daemon: StartDaemon
) -> None:
    """Idle bounds each gap between body chunks, not the whole body.

    A body that stalls part-way fails over; one dripped in pieces 150ms apart
    (longer than the 300ms idle timeout in all) is served.
    """
    async with members(fault) as (m1_url, m2_url, _):
        config = chain_config([m1_url, m2_url], timeouts={"idle": "300ms"})
        daemon = await start_daemon(config)
        started = time.monotonic()
        async with daemon.http.post(CHAT, json=chat()) as response:
            assert response.status == 200
            served_by = response.headers["x-modelpool-model"]
            assert (await response.json())["choices"][0]["message"]["content"]
        elapsed = time.monotonic() - started
    assert served_by == ("m2" if fault.startswith("stall") else "m1")
    assert elapsed < CASE_BUDGET_S, f"took {elapsed:.2f}s"
